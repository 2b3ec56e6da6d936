//! The web console over plain HTTP: sign in with a token, keep the session cookie, read the
//! CSRF token out of a page, post forms. Redirects are not followed, so a test sees each `303`
//! and where it points.

use meterline_ingest::Scope;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use super::TestApp;

/// A browser-less console user.
pub struct ConsoleUser {
    pub http: reqwest::Client,
    pub base: String,
    /// `name=value` of the session cookie, once signed in.
    pub cookie: Option<String>,
}

/// What a console request answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

/// The value of the first `name="csrf"` hidden field of a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_owned())
}

/// `name=value` of a `Set-Cookie` header.
pub fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or("").trim().to_owned()
}

impl ConsoleUser {
    pub fn new(app: &TestApp) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.url(""),
            cookie: None,
        }
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let set_cookies = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        Answer {
            status,
            location,
            set_cookies,
            body: resp.text().await.unwrap_or_default(),
        }
    }

    /// `GET path` with the session cookie (if any) and `extra` cookies.
    pub async fn get(&self, path: &str) -> Answer {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        Self::answer(req.send().await.expect("console GET")).await
    }

    /// `POST path` with a form, the session cookie (if any) and `extra_cookie`.
    pub async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        extra_cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        let cookies: Vec<&str> = self
            .cookie
            .iter()
            .map(String::as_str)
            .chain(extra_cookie)
            .collect();
        if !cookies.is_empty() {
            req = req.header(COOKIE, cookies.join("; "));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req.send().await.expect("console POST")).await
    }

    /// Signs in with `token` through the form (its double-submit cookie and field), sending
    /// `headers` with the POST; returns the sign-in answer. On a `303` the session cookie is
    /// kept.
    pub async fn sign_in_with(&mut self, token: &str, headers: &[(&str, &str)]) -> Answer {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let login_cookie = pair(
            form.set_cookies
                .iter()
                .find(|c| c.starts_with("meterline_console_login="))
                .expect("the login form sets its CSRF cookie"),
        );
        let csrf = csrf_of(&form.body).expect("the login form has a csrf field");
        let answer = self
            .post(
                "/console/login",
                &[("token", token), ("csrf", &csrf)],
                Some(&login_cookie),
                headers,
            )
            .await;
        if answer.status == 303 {
            let session = answer
                .set_cookies
                .iter()
                .find(|c| c.starts_with("meterline_console="))
                .expect("a session cookie");
            self.cookie = Some(pair(session));
        }
        answer
    }

    pub async fn sign_in(&mut self, token: &str) -> Answer {
        self.sign_in_with(token, &[]).await
    }

    /// The CSRF token of the session, read from a page.
    pub async fn csrf(&self) -> String {
        let page = self.get("/console").await;
        assert_eq!(page.status, 200, "{}", page.body);
        csrf_of(&page.body).expect("a signed-in page carries the csrf token")
    }
}

/// A token of `scopes` named `name-<suffix>`: (its name, the token).
pub async fn token(app: &TestApp, name: &str, scopes: &[Scope]) -> (String, String) {
    let pool = app.pg().await;
    let name = format!("{name}-{}", super::unique_suffix());
    let token = meterline::services::token_store(&app.config, &pool)
        .create(&name, scopes, None)
        .await
        .unwrap();
    (name, token)
}
