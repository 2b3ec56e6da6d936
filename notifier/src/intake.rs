//! From `account-signals` to the outbox. An offset is committed only after the signal's
//! notifications are in PostgreSQL; a record that cannot be decoded is kept in
//! `notifier_rejected_signals` with the reason, never dropped silently.

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::Utc;
use meterline_infra::RegistryError;
use meterline_schemas::avro::{self, Schema};
use meterline_schemas::signal::{SignalDecodeError, UnknownSignalKind};
use meterline_schemas::{AccountSignal, SignalKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::TRUST_AND_SAFETY_KINDS;
use crate::message;
use crate::outbox::{self, NewNotification, OutboxStatus, Queued};
use crate::route::{self, AccountInfo, Destination};
use crate::{Notifier, NotifyError};

/// What became of one signal record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Per destination: queued, duplicate or held.
    Routed(Vec<(String, Queued)>),
    /// No route for this kind, or a rule said no: plan scope (nothing higher to sell the
    /// account), the sales_assist rule, an empty expansion route. A kind this build does not
    /// know has no route either.
    Unrouted,
    Rejected(String),
}

/// A record that did not decode to a signal.
enum Undecoded {
    /// A well-formed record of a kind this build does not know: there is no route for it.
    UnknownKind {
        signal_id: String,
        kind: UnknownSignalKind,
    },
    /// Not a signal record: kept in `notifier_rejected_signals` with this reason.
    Rejected(String),
}

pub struct Intake {
    notifier: Notifier,
    consumer: StreamConsumer,
    reader: Schema,
}

impl Intake {
    pub fn new(notifier: Notifier, base: &ClientConfig, topic: &str) -> Result<Self, NotifyError> {
        let mut cc = base.clone();
        cc.set("group.id", &notifier.config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        if !notifier.config.instance_id.is_empty() {
            cc.set("group.instance.id", &notifier.config.instance_id);
        }
        let consumer: StreamConsumer = cc.create()?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            notifier,
            consumer,
            reader: avro::parse_schema(avro::ACCOUNT_SIGNAL_SCHEMA).expect("bundled schema parses"),
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), NotifyError> {
        tracing::info!(group = %self.notifier.config.group_id, "notifier intake started");
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = self.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading account-signals failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let max = Duration::from_secs(10);
            let mut delays = crate::backoff(Duration::from_millis(200), max).build();
            loop {
                match self.handle(&msg).await {
                    Ok(_) => break,
                    Err(e) => {
                        // Nothing is committed: the record is handled again until it lands.
                        tracing::warn!(error = %e, partition = msg.partition(), offset = msg.offset(), "could not queue a signal's notifications; retrying");
                        let delay = delays.next().unwrap_or(max);
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            if let Err(e) = self.consumer.commit_message(&msg, CommitMode::Async) {
                // The notifications are stored; a replay after a crash finds them and does nothing.
                tracing::warn!(error = %e, "committing the signal offset failed");
            }
        }
    }

    async fn handle(&self, msg: &BorrowedMessage<'_>) -> Result<Outcome, NotifyError> {
        let payload = msg.payload().unwrap_or_default();
        match self.decode(payload).await? {
            Ok(signal) => {
                let span = tracing::info_span!("signal", account_id = %signal.account_id, kind = %signal.kind, signal_id = %signal.signal_id);
                accept(&self.notifier, &signal).instrument(span).await
            }
            Err(Undecoded::UnknownKind { signal_id, kind }) => {
                self.notifier
                    .metrics
                    .signals
                    .with_label_values(&["unrouted"])
                    .inc();
                tracing::debug!(%signal_id, %kind, "no route for this signal");
                Ok(Outcome::Unrouted)
            }
            Err(Undecoded::Rejected(reason)) => {
                sqlx::query(
                    "INSERT INTO notifier_rejected_signals (topic, partition, kafka_offset, reason, payload) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(msg.topic())
                .bind(msg.partition())
                .bind(msg.offset())
                .bind(&reason)
                .bind(payload)
                .execute(&self.notifier.pg)
                .await?;
                self.notifier
                    .metrics
                    .signals
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(partition = msg.partition(), offset = msg.offset(), %reason, "undecodable signal kept in notifier_rejected_signals");
                Ok(Outcome::Rejected(reason))
            }
        }
    }

    /// `Ok(Err(_))` for a record that will never decode to a signal; `Err` when the registry
    /// could not be asked (retry).
    async fn decode(
        &self,
        payload: &[u8],
    ) -> Result<Result<AccountSignal, Undecoded>, NotifyError> {
        let (id, body) = match avro::split_frame(payload) {
            Ok(v) => v,
            Err(e) => return Ok(Err(Undecoded::Rejected(e.to_string()))),
        };
        let writer = match self.notifier.registry.fetch(id).await {
            Ok(w) => w,
            Err(RegistryError::UnknownSchemaId(id)) => {
                return Ok(Err(Undecoded::Rejected(format!("unknown schema id {id}"))))
            }
            Err(e) => return Err(NotifyError::Registry(e.to_string())),
        };
        Ok(
            AccountSignal::decode(&writer, &self.reader, body).map_err(|e| match e {
                SignalDecodeError::UnknownKind { signal_id, kind } => {
                    Undecoded::UnknownKind { signal_id, kind }
                }
                SignalDecodeError::Malformed(e) => Undecoded::Rejected(e.to_string()),
            }),
        )
    }
}

/// An `accounts` row: plan, seats, email domain, company size, whether it has a contact email
/// (not the address: routing does not need it), when it unsubscribed from email.
type AccountRow = (
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    bool,
    Option<chrono::DateTime<Utc>>,
);

async fn account_info(n: &Notifier, account: &str) -> Result<AccountInfo, NotifyError> {
    let row: Option<AccountRow> = sqlx::query_as(
        "SELECT plan, seats, email_domain, company_size, contact_email IS NOT NULL, email_unsubscribed_at \
         FROM accounts WHERE account_id = $1",
    )
    .bind(account)
    .fetch_optional(&n.pg)
    .await?;
    Ok(row
        .map(
            |(
                plan,
                seats,
                email_domain,
                company_size,
                has_contact_email,
                email_unsubscribed_at,
            )| {
                AccountInfo {
                    plan: Some(plan),
                    seats,
                    email_domain,
                    company_size,
                    has_contact_email,
                    email_unsubscribed_at,
                }
            },
        )
        .unwrap_or_default())
}

/// Routes one signal and queues its notifications, all in one transaction.
pub async fn accept(n: &Notifier, signal: &AccountSignal) -> Result<Outcome, NotifyError> {
    let c = &n.config;
    let account = account_info(n, &signal.account_id).await?;
    let routed = route::route(c, &n.tiers, signal, &account);
    if routed.destinations.is_empty() {
        n.metrics.signals.with_label_values(&["unrouted"]).inc();
        match &routed.skipped {
            Some(why) => tracing::info!(plan = %routed.plan, %why, "signal not routed"),
            None => tracing::debug!("no route for this signal"),
        }
        return Ok(Outcome::Unrouted);
    }
    let aim = message::Aim::new(c, routed.plan, routed.offer, routed.expansion);
    let needs_usage = routed
        .destinations
        .iter()
        .any(|d| !matches!(d, Destination::Notice | Destination::Email));
    let usage = if needs_usage {
        crate::usage::summary(&n.clickhouse, &signal.account_id, Utc::now()).await?
    } else {
        Default::default()
    };
    let at = signal.raised_at();
    let score = match signal.kind {
        k if TRUST_AND_SAFETY_KINDS.contains(&k) => signal.abuse,
        SignalKind::Pql => signal.pql,
        _ => signal.deal_readiness,
    };
    let console_url = n
        .console_base_url
        .as_deref()
        .map(|base| message::console_link(base, &signal.account_id));
    let mut tx = n.pg.begin().await?;
    outbox::lock_account(&mut tx, &signal.account_id).await?;
    let mut results = Vec::new();
    let mut queued_any = false;
    for d in routed.destinations {
        let cooldown = route::cooldown(c, signal.kind, &d);
        let notice_id = uuid::Uuid::new_v4();
        let expansion = routed.expansion.then(|| {
            format!(
                "an existing {} customer's growth: sent to the expansion route, not prospected",
                routed.plan
            )
        });
        // Set for an email that is recorded but not sent (no address, unsubscribed).
        let mut skipped = None;
        // Notices, deals and emails sell a plan; routing only lets them through with one to sell.
        let (payload, detail, notice) = match (&d, aim.offer) {
            (Destination::Slack(_), _) => {
                let mut m = message::slack_message(signal, &account, &usage, &aim);
                if let Some(url) = &console_url {
                    message::add_console_button(&mut m, url);
                }
                (m, expansion, None)
            }
            (Destination::HubSpot, Some((plan, offer))) => {
                let mut deal =
                    message::deal_request(signal, &account, &usage, plan, offer, &n.public_domains);
                if let Some(url) = &console_url {
                    message::add_console_line(&mut deal, url);
                }
                let detail = deal.no_company.clone();
                (
                    serde_json::to_value(deal).expect("serialisable"),
                    detail,
                    None,
                )
            }
            (Destination::Notice, Some((plan, offer))) => {
                let notice = message::notice(c, signal, plan, offer);
                (
                    json!({"notice_id": notice_id, "kind": signal.kind, "message": notice.message, "upgrade_url": notice.upgrade_url, "plan": notice.plan}),
                    None,
                    Some(notice),
                )
            }
            (Destination::Email, Some((_, offer))) => {
                let token = n.unsubscribe.token(&signal.account_id);
                let rendered = match route::email_skip(&account) {
                    Some(why) => Err(why),
                    None => {
                        crate::email::render::render(&c.email, signal, offer, &token).map_err(|e| {
                            tracing::error!(error = %e, "email not rendered; recorded as skipped");
                            format!("email skipped: not rendered: {e}")
                        })
                    }
                };
                match rendered {
                    Ok(m) => (serde_json::to_value(m).expect("serialisable"), None, None),
                    Err(why) => {
                        skipped = Some(why.clone());
                        (json!({ "skipped": why }), Some(why), None)
                    }
                }
            }
            (_, None) => {
                tracing::info!(destination = %d.as_string(), plan = %routed.plan, "nothing to sell this account; skipped");
                continue;
            }
        };
        let new = NewNotification {
            account_id: signal.account_id.clone(),
            destination: d.clone(),
            kind: signal.kind,
            signal_id: signal.signal_id.clone(),
            cooldown: cooldown.clone(),
            at,
            score,
            payload,
            detail,
        };
        let result = if let Some(notice) = notice {
            let delivered = format!("notice:{notice_id}");
            let r = outbox::enqueue(&mut tx, &new, OutboxStatus::Sent, Some(&delivered)).await?;
            if matches!(r, Queued::Queued(_)) {
                sqlx::query(
                    "INSERT INTO dashboard_notices \
                       (notice_id, account_id, kind, message, upgrade_url, plan, signal_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(notice_id)
                .bind(&signal.account_id)
                .bind(signal.kind.as_str())
                .bind(&notice.message)
                .bind(&notice.upgrade_url)
                .bind(&notice.plan)
                .bind(&signal.signal_id)
                .bind(at)
                .bind(at + cooldown.period)
                .execute(&mut *tx)
                .await?;
            }
            r
        } else if skipped.is_some() {
            outbox::enqueue(&mut tx, &new, OutboxStatus::Skipped, None).await?
        } else {
            let r = outbox::enqueue(&mut tx, &new, OutboxStatus::Pending, None).await?;
            queued_any |= matches!(r, Queued::Queued(_));
            r
        };
        let outcome = match &result {
            Queued::Queued(_) if skipped.is_some() => "skipped",
            Queued::Queued(_) => "queued",
            Queued::Duplicate => "duplicate",
            Queued::Held(_) => "held",
        };
        n.metrics.signals.with_label_values(&[outcome]).inc();
        match &result {
            Queued::Held(why) => {
                tracing::info!(destination = %d.as_string(), %why, "notification held by its cooldown")
            }
            Queued::Duplicate => {
                tracing::info!(destination = %d.as_string(), "signal already notified; replay ignored")
            }
            Queued::Queued(id) if skipped.is_some() => {
                tracing::info!(destination = %d.as_string(), notification = id, why = skipped.as_deref().unwrap_or_default(), "notification recorded as skipped")
            }
            Queued::Queued(id) => {
                tracing::info!(destination = %d.as_string(), notification = id, "notification queued")
            }
        }
        results.push((d.as_string(), result));
    }
    tx.commit().await?;
    if queued_any {
        n.wake.notify_one();
    }
    Ok(Outcome::Routed(results))
}
