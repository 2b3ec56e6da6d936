//! The templates and the stylesheet, compiled into the binary.
//!
//! MiniJinja escapes every value written into an `.html` template (its default auto-escape
//! rule), so an account id, a reason or a model name containing markup shows as text. Nothing
//! here marks a value safe. The one inline picture, the usage chart, is SVG written by the
//! template too, so its labels are escaped the same way.
//!
//! Every page is sent with a Content-Security-Policy that allows only the console's own
//! stylesheet: no script runs, whatever a value contains.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

use crate::error::Result;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("home.html", include_str!("../templates/home.html")),
    ("account.html", include_str!("../templates/account.html")),
    ("list.html", include_str!("../templates/list.html")),
    (
        "review_queue.html",
        include_str!("../templates/review_queue.html"),
    ),
    (
        "review_account.html",
        include_str!("../templates/review_account.html"),
    ),
    ("outbox.html", include_str!("../templates/outbox.html")),
    ("health.html", include_str!("../templates/health.html")),
    (
        "experiments.html",
        include_str!("../templates/experiments.html"),
    ),
    (
        "experiment.html",
        include_str!("../templates/experiment.html"),
    ),
    ("growth.html", include_str!("../templates/growth.html")),
    ("audit.html", include_str!("../templates/audit.html")),
    ("macros.html", include_str!("../templates/macros.html")),
];

const STYLESHEET: &str = include_str!("../static/console.css");

/// The security headers every console page carries.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    fn new() -> Self {
        let mut env = Environment::new();
        // `{{ id|pathseg }}`: a value as one URL path segment.
        env.add_filter("pathseg", |s: String| crate::config::percent_encode(&s));
        for (name, source) in TEMPLATES {
            // The sources are compiled in: a syntax error is a build defect, caught by the
            // `every_template_parses` test.
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name}: {e:#}"));
        }
        Self { env }
    }

    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String> {
        Ok(self.env.get_template(name)?.render(ctx)?)
    }
}

static GLOBAL: LazyLock<Templates> = LazyLock::new(Templates::new);

pub fn global() -> &'static Templates {
    &GLOBAL
}

/// A rendered page with its headers.
pub struct Page(pub String);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "same-origin"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            self.0,
        )
            .into_response()
    }
}

/// Renders `name` with `ctx`.
pub fn page<S: Serialize>(name: &str, ctx: S) -> Result<Page> {
    Ok(Page(global().render(name, ctx)?))
}

/// `GET /console/console.css`.
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLESHEET,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let t = Templates::new();
        for (name, _) in TEMPLATES {
            t.env.get_template(name).unwrap();
        }
    }

    #[test]
    fn every_template_file_is_compiled_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                TEMPLATES.iter().any(|(n, _)| *n == name),
                "templates/{name} is not in TEMPLATES"
            );
        }
    }

    #[test]
    fn values_are_escaped() {
        let html = global()
            .render(
                "error.html",
                minijinja::context! { status => 400, message => "<script>alert(1)</script>" },
            )
            .unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
    }
}
