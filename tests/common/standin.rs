//! Local HTTP servers standing in for Slack incoming webhooks and the HubSpot CRM API. They
//! record every request exactly as it arrived (method, path, headers, JSON body, time) and keep
//! just enough HubSpot state (companies, deals, associations, search by property) for the
//! notifier's find-or-create logic to be exercised. Faults are scripted per test.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub const HUBSPOT_TOKEN: &str = "pat-na1-test-token";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
    pub at: Instant,
    /// The status the stand-in answered.
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Recorded>,
    pub companies: Vec<(String, Map<String, Value>)>,
    pub deals: Vec<(String, Map<String, Value>)>,
    pub associations: Vec<(String, String)>,
    /// Answers for the next HubSpot requests, in order: (status, Retry-After seconds).
    pub hubspot_faults: VecDeque<(u16, Option<u64>)>,
    /// While set, every HubSpot request gets this status.
    pub hubspot_down: Option<u16>,
    pub slack_down: Option<u16>,
    next_id: u64,
}

#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl StandIn {
    pub async fn start() -> StandIn {
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..Default::default()
        }));
        let s = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { handle(&s, method, uri, headers, body) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn slack_posts(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/services/") && r.status == 200)
            .collect()
    }

    pub fn hubspot_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/crm/"))
            .collect()
    }

    pub fn deal_creates(&self) -> Vec<Recorded> {
        self.hubspot_requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/crm/v3/objects/deals" && r.status == 201)
            .collect()
    }

    pub fn deals(&self) -> Vec<(String, Map<String, Value>)> {
        self.state.lock().unwrap().deals.clone()
    }

    pub fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap())
    }

    /// Waits until `check` holds (and fails past `timeout`, listing the requests so far).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&StandIn) -> bool,
    ) {
        super::wait_for(what, timeout, || async {
            if check(self) {
                return Ok(());
            }
            Err(self
                .requests()
                .iter()
                .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                .collect::<Vec<_>>())
        })
        .await
    }
}

fn matches(props: &Map<String, Value>, filters: &Value) -> bool {
    filters.as_array().is_some_and(|fs| {
        fs.iter().all(|f| {
            f["operator"] == "EQ"
                && props.get(f["propertyName"].as_str().unwrap_or_default()) == Some(&f["value"])
        })
    })
}

fn handle(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    let mut s = state.lock().unwrap();
    let mut retry_after = None;
    let (status, answer): (u16, Value) = if path.starts_with("/services/") {
        match s.slack_down {
            Some(code) => (code, json!("service_unavailable")),
            None if method == Method::POST && body.get("blocks").is_some() => (200, json!("ok")),
            None => (400, json!("invalid_blocks")),
        }
    } else if header("authorization").as_deref() != Some(&format!("Bearer {HUBSPOT_TOKEN}")) {
        (
            401,
            json!({"status": "error", "category": "INVALID_AUTHENTICATION"}),
        )
    } else if let Some(code) = s.hubspot_down {
        (
            code,
            json!({"status": "error", "message": "internal error"}),
        )
    } else if let Some((code, after)) = s.hubspot_faults.pop_front() {
        retry_after = after;
        (
            code,
            json!({"status": "error", "category": "RATE_LIMITS", "message": "You have reached your secondly limit."}),
        )
    } else {
        hubspot(&mut s, &method, &path, &body)
    };
    s.requests.push(Recorded {
        method: method.to_string(),
        path,
        authorization: header("authorization"),
        content_type: header("content-type"),
        body,
        at: Instant::now(),
        status,
    });
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        match answer {
            Value::String(t) => t,
            v => v.to_string(),
        },
    )
        .into_response();
    if let Some(a) = retry_after {
        resp.headers_mut()
            .insert("retry-after", a.to_string().parse().unwrap());
    }
    resp
}

fn hubspot(s: &mut State, method: &Method, path: &str, body: &Value) -> (u16, Value) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let props = |b: &Value| b["properties"].as_object().cloned().unwrap_or_default();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["crm", "v3", "objects", object, "search"]) => {
            let filters = &body["filterGroups"][0]["filters"];
            let store = if *object == "companies" {
                &s.companies
            } else {
                &s.deals
            };
            let results: Vec<Value> = store
                .iter()
                .filter(|(_, p)| matches(p, filters))
                .map(|(id, p)| json!({"id": id, "properties": p}))
                .collect();
            (200, json!({"total": results.len(), "results": results}))
        }
        ("POST", ["crm", "v3", "objects", object]) => {
            s.next_id += 1;
            let id = s.next_id.to_string();
            let mut p = props(body);
            if *object == "deals" {
                p.entry("hs_is_closed").or_insert(json!("false"));
                s.deals.push((id.clone(), p.clone()));
            } else {
                s.companies.push((id.clone(), p.clone()));
            }
            (201, json!({"id": id, "properties": p}))
        }
        ("PATCH", ["crm", "v3", "objects", "deals", id]) => {
            match s.deals.iter_mut().find(|(d, _)| d == id) {
                Some((_, p)) => {
                    for (k, v) in props(body) {
                        p.insert(k, v);
                    }
                    (200, json!({"id": id, "properties": p}))
                }
                None => (
                    404,
                    json!({"status": "error", "category": "OBJECT_NOT_FOUND"}),
                ),
            }
        }
        (
            "PUT",
            ["crm", "v4", "objects", "deals", deal, "associations", "default", "companies", company],
        ) => {
            s.associations
                .push(((*deal).to_owned(), (*company).to_owned()));
            (
                200,
                json!({"status": "COMPLETE", "results": [{"from": {"id": deal}, "to": {"id": company}, "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 341}}]}),
            )
        }
        _ => (
            404,
            json!({"status": "error", "message": format!("no route {method} {path}")}),
        ),
    }
}
