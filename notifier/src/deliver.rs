//! Sending: Slack incoming webhooks, the HubSpot CRM API and the local sink (email's SMTP
//! sender is [`crate::email::smtp`]). Every failure says whether trying again can help, and
//! when.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{header, Response, StatusCode};
use serde_json::{json, Value};

use crate::config::{HubSpotConfig, NotifierConfig, SlackConfig};
use crate::message::DealRequest;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// The service asked us to slow down (429); try again after this long.
    #[error("rate limited; retry after {after:?}: {detail}")]
    RateLimited { after: Duration, detail: String },
    /// 5xx, a timeout or a dropped connection: worth trying again with backoff.
    #[error("{0}")]
    Transient(String),
    /// A 4xx that will not change by trying again (bad token, deleted webhook, bad request),
    /// or an SMTP 5xx.
    #[error("{0}")]
    Permanent(String),
    /// Not to be sent at all: an email whose account unsubscribed or has no contact email
    /// (any more). Recorded as `skipped` with this reason.
    #[error("{0}")]
    Skipped(String),
}

/// What a successful send did, for the outbox's `delivered_to`.
pub type Delivered = String;

fn retry_after(resp: &Response, default: Duration) -> Duration {
    resp.headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// Turns a non-success response into the right kind of error. The request's URL is not in the
/// message: for Slack it is the credential.
async fn failure(service: &str, what: &str, resp: Response) -> SendError {
    let status = resp.status();
    let after = retry_after(&resp, Duration::from_secs(10));
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(500);
    let detail = format!("{service} {what}: HTTP {status}: {body}");
    if status == StatusCode::TOO_MANY_REQUESTS {
        SendError::RateLimited { after, detail }
    } else if status.is_server_error()
        || status == StatusCode::CONFLICT
        || status == StatusCode::REQUEST_TIMEOUT
    {
        SendError::Transient(detail)
    } else {
        SendError::Permanent(detail)
    }
}

fn transport(service: &str, what: &str, e: reqwest::Error) -> SendError {
    // reqwest's error text can carry the URL; strip it.
    SendError::Transient(format!("{service} {what}: {}", e.without_url()))
}

#[derive(Clone)]
pub struct Slack {
    http: reqwest::Client,
    config: SlackConfig,
}

impl Slack {
    pub fn new(http: reqwest::Client, config: SlackConfig) -> Self {
        Self { http, config }
    }

    /// True when `channel` has a webhook; otherwise its messages go to the local sink.
    pub fn configured(&self, channel: &str) -> bool {
        self.config
            .webhooks
            .get(channel)
            .is_some_and(|w| !w.is_empty())
    }

    /// Posts a Block Kit message to the channel's incoming webhook.
    pub async fn post(&self, channel: &str, message: &Value) -> Result<Delivered, SendError> {
        let webhook = self
            .config
            .webhooks
            .get(channel)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                SendError::Permanent(format!("slack: channel {channel:?} has no webhook"))
            })?;
        let url = format!(
            "{}{}",
            self.config.base_url.trim_end_matches('/'),
            webhook.expose()
        );
        let resp = self
            .http
            .post(url)
            .json(message)
            .send()
            .await
            .map_err(|e| transport("slack", "webhook", e))?;
        if resp.status().is_success() {
            Ok(format!("slack:{channel}"))
        } else {
            Err(failure("slack", "webhook", resp).await)
        }
    }
}

/// The records an account maps to in HubSpot, as far as we know them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HubSpotIds {
    pub deal_id: Option<String>,
    pub company_id: Option<String>,
}

#[derive(Clone)]
pub struct HubSpot {
    http: reqwest::Client,
    config: HubSpotConfig,
}

impl HubSpot {
    pub fn new(http: reqwest::Client, config: HubSpotConfig) -> Self {
        Self { http, config }
    }

    pub fn configured(&self) -> bool {
        !self.config.token.is_empty()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        what: &str,
        body: Option<&Value>,
    ) -> Result<Value, SendError> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.config.token.expose())
            .header(header::ACCEPT, "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport("hubspot", what, e))?;
        if !resp.status().is_success() {
            return Err(failure("hubspot", what, resp).await);
        }
        let text = resp
            .text()
            .await
            .map_err(|e| transport("hubspot", what, e))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| SendError::Transient(format!("hubspot {what}: unreadable answer: {e}")))
    }

    async fn search_one(
        &self,
        object: &str,
        filters: Value,
        properties: Value,
    ) -> Result<Option<String>, SendError> {
        let body = json!({
            "filterGroups": [{"filters": filters}],
            "properties": properties,
            "limit": 1,
        });
        let found = self
            .call(
                reqwest::Method::POST,
                &format!("/crm/v3/objects/{object}/search"),
                &format!("{object} search"),
                Some(&body),
            )
            .await?;
        Ok(found["results"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["id"].as_str().map(String::from)))
    }

    /// Finds the company by email domain, or creates it.
    async fn company(&self, domain: &str) -> Result<String, SendError> {
        let filters = json!([{"propertyName": "domain", "operator": "EQ", "value": domain}]);
        if let Some(id) = self
            .search_one("companies", filters, json!(["domain", "name"]))
            .await?
        {
            return Ok(id);
        }
        let body = json!({"properties": {"domain": domain, "name": domain}});
        let created = self
            .call(
                reqwest::Method::POST,
                "/crm/v3/objects/companies",
                "company create",
                Some(&body),
            )
            .await?;
        created["id"].as_str().map(String::from).ok_or_else(|| {
            SendError::Transient("hubspot company create: no id in the answer".into())
        })
    }

    /// Creates or updates the account's open deal and associates it with its company. A deal
    /// with no company (`d.no_company`) is created with its properties only: the CRM v3 create
    /// takes `associations` as optional, and none is made afterwards.
    /// `save` is called with the ids as soon as HubSpot has returned them.
    pub async fn sync_deal<F, Fut>(
        &self,
        d: &DealRequest,
        known: HubSpotIds,
        save: F,
    ) -> Result<Delivered, SendError>
    where
        F: Fn(HubSpotIds) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let c = &self.config;
        // A public email domain is no company: no search, no create, no association (the
        // deal's description says why), even if an older sync saved one for the account.
        let company_id = match (&known.company_id, &d.email_domain) {
            _ if d.no_company.is_some() => None,
            (Some(id), _) => Some(id.clone()),
            (None, Some(domain)) => Some(self.company(domain).await?),
            (None, None) => None,
        };
        let mut deal_id = known.deal_id.clone();
        if deal_id.is_none() {
            let filters = json!([
                {"propertyName": c.account_id_property, "operator": "EQ", "value": d.account_id},
                {"propertyName": "hs_is_closed", "operator": "EQ", "value": "false"},
            ]);
            deal_id = self
                .search_one(
                    "deals",
                    filters,
                    json!(["dealname", "dealstage", c.account_id_property]),
                )
                .await?;
        }
        let update = json!({"properties": {
            c.score_property.as_str(): d.score.to_string(),
            "description": d.description,
        }});
        let (deal_id, created) = match deal_id {
            Some(id) => {
                match self
                    .call(
                        reqwest::Method::PATCH,
                        &format!("/crm/v3/objects/deals/{id}"),
                        "deal update",
                        Some(&update),
                    )
                    .await
                {
                    Ok(_) => (id, false),
                    // Deleted in HubSpot since we saved it: forget it; the next attempt searches.
                    Err(SendError::Permanent(e)) if e.contains("HTTP 404") => {
                        save(HubSpotIds {
                            deal_id: None,
                            company_id: company_id.clone(),
                        })
                        .await;
                        return Err(SendError::Transient(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let body = json!({"properties": {
                    "dealname": d.deal_name,
                    "pipeline": c.pipeline,
                    "dealstage": c.deal_stage,
                    "amount": c.deal_amount,
                    c.account_id_property.as_str(): d.account_id,
                    c.score_property.as_str(): d.score.to_string(),
                    "description": d.description,
                }});
                let created = self
                    .call(
                        reqwest::Method::POST,
                        "/crm/v3/objects/deals",
                        "deal create",
                        Some(&body),
                    )
                    .await?;
                let id = created["id"].as_str().map(String::from).ok_or_else(|| {
                    SendError::Transient("hubspot deal create: no id in the answer".into())
                })?;
                (id, true)
            }
        };
        save(HubSpotIds {
            deal_id: Some(deal_id.clone()),
            company_id: company_id.clone(),
        })
        .await;
        if let Some(company) = &company_id {
            if created || known.company_id.is_none() {
                self.call(
                    reqwest::Method::PUT,
                    &format!(
                        "/crm/v4/objects/deals/{deal_id}/associations/default/companies/{company}"
                    ),
                    "association",
                    None,
                )
                .await?;
            }
        }
        Ok(format!("hubspot:deal:{deal_id}"))
    }
}

/// The local sink: one pretty JSON file per message under `data_dir`, named by notification id,
/// so sending again rewrites the same file.
#[derive(Clone)]
pub struct LocalSink {
    pub dir: PathBuf,
}

impl LocalSink {
    pub fn new(config: &NotifierConfig) -> Self {
        Self {
            dir: PathBuf::from(&config.data_dir),
        }
    }

    pub async fn write(
        &self,
        id: i64,
        destination: &str,
        account: &str,
        kind: &str,
        request: &Value,
    ) -> Result<Delivered, SendError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| SendError::Transient(format!("local sink {}: {e}", self.dir.display())))?;
        let name = format!("{id:08}-{}.json", destination.replace(':', "-"));
        let path = self.dir.join(name);
        let doc = json!({
            "notification_id": id,
            "destination": destination,
            "account_id": account,
            "kind": kind,
            "request": request,
        });
        let text = serde_json::to_string_pretty(&doc).expect("JSON values serialise");
        tokio::fs::write(&path, text)
            .await
            .map_err(|e| SendError::Transient(format!("local sink {}: {e}", path.display())))?;
        tracing::info!(notification = id, destination, kind, file = %path.display(), "notification written to the local sink (no outside service configured)");
        Ok(format!("local:{}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_delay_defaults_when_the_header_is_missing_or_bad() {
        let resp = |v: Option<&str>| {
            let mut b = http::Response::builder().status(429);
            if let Some(v) = v {
                b = b.header("Retry-After", v);
            }
            Response::from(b.body("").unwrap())
        };
        let d = Duration::from_secs(10);
        assert_eq!(retry_after(&resp(Some("2")), d), Duration::from_secs(2));
        assert_eq!(
            retry_after(&resp(Some("0.5")), d),
            Duration::from_millis(500)
        );
        assert_eq!(retry_after(&resp(Some("soon")), d), d);
        assert_eq!(retry_after(&resp(None), d), d);
    }
}
