//! `/openapi.json` documents exactly the routes the server answers.

mod common;

use std::collections::BTreeSet;

use common::*;
use meterline::services::Components;
use meterline_ingest::app::PUBLIC_ROUTES;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let mut app = spawn_with(
        isolated_config(&unique_suffix()),
        Components::none().ingest(),
    )
    .await;
    let resp = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = PUBLIC_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, routed, "openapi.json and PUBLIC_ROUTES differ");

    // Every documented route is served (whatever it answers, it is not 404 or 405)...
    for (method, path) in &documented {
        let url = app.url(&path.replace("{id}", "acct-1"));
        let resp = match method.as_str() {
            "get" => app.http.get(&url),
            "post" => app.http.post(&url).body("[]"),
            other => panic!("unexpected method {other}"),
        }
        .send()
        .await
        .unwrap();
        let status = resp.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} answered {status}"
        );
    }
    // ...and what is not documented is not served.
    for (method, path) in [("get", "/v1/quota/check"), ("get", "/v1/accounts")] {
        let resp = match method {
            "get" => app.http.get(app.url(path)),
            _ => unreachable!(),
        }
        .send()
        .await
        .unwrap();
        assert!(
            [404, 405].contains(&resp.status().as_u16()),
            "{method} {path} is served but not documented"
        );
    }
    // Every operation documents its responses, and every $ref resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
    app.stop().await;
}
