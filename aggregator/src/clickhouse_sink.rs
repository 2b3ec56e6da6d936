//! Raw events into ClickHouse. Each batch is one INSERT per table, and the rollups and the
//! offset watermarks are filled by materialized views inside that same INSERT.

use std::collections::HashMap;

use clickhouse::{Client, Row};
use meterline_schemas::{AccountEvent, UsageEvent};
use serde::{Deserialize, Serialize};

use crate::decode::Decoded;
use crate::SinkError;

/// A row of `usage_events`, fields in column order (validation is off for ClickHouse 18.16).
#[derive(Debug, Row, Serialize)]
pub struct UsageRow<'a> {
    pub event_id: &'a str,
    pub occurred_at: u32,
    pub received_at: u32,
    pub account_id: &'a str,
    pub api_key_id: &'a str,
    pub gateway_id: &'a str,
    pub region: &'a str,
    pub cloud: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
    pub latency_ms: Option<u32>,
    pub status: Option<u16>,
    pub session_id: &'a str,
    pub user_id: &'a str,
    pub plugins: &'a [String],
    pub pii_detected: u8,
    pub client_ip_hash: &'a str,
    pub device_id: &'a str,
    pub prompt_hash: &'a str,
    pub kafka_partition: u32,
    pub kafka_offset: u64,
    pub kafka_topic: &'a str,
}

fn secs(micros: i64) -> u32 {
    u32::try_from(micros.div_euclid(1_000_000)).unwrap_or(0)
}

impl<'a> UsageRow<'a> {
    pub fn new(d: &'a Decoded<UsageEvent>, topic: &'a str) -> Self {
        let e = &d.event;
        Self {
            event_id: &e.event_id,
            occurred_at: secs(e.occurred_at),
            received_at: secs(e.received_at),
            account_id: e.account_id.as_str(),
            api_key_id: &e.api_key_id,
            gateway_id: &e.gateway_id,
            region: &e.region,
            cloud: &e.cloud,
            provider: &e.provider,
            model: &e.model,
            input_tokens: e.input_tokens as u64,
            output_tokens: e.output_tokens as u64,
            cost_micros: e.cost_micros.unwrap_or(0) as u64,
            latency_ms: e.latency_ms.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
            status: e.status.map(|s| s as u16),
            session_id: e.session_id.as_deref().unwrap_or(""),
            user_id: e.user_id.as_deref().unwrap_or(""),
            plugins: &e.plugins,
            pii_detected: u8::from(e.pii_detected),
            client_ip_hash: e.client_ip_hash.as_deref().unwrap_or(""),
            device_id: e.device_id.as_deref().unwrap_or(""),
            prompt_hash: e.prompt_hash.as_deref().unwrap_or(""),
            kafka_partition: d.partition as u32,
            kafka_offset: d.offset as u64,
            kafka_topic: topic,
        }
    }
}

/// A row of the ClickHouse `account_events` table.
#[derive(Debug, Row, Serialize)]
pub struct AccountRow<'a> {
    pub event_id: &'a str,
    pub occurred_at: u32,
    pub received_at: u32,
    pub account_id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub plan: &'a str,
    pub seats: Option<i64>,
    pub email_domain: &'a str,
    pub company_size: Option<i64>,
    pub signup_ip_hash: &'a str,
    pub device_id: &'a str,
    pub browser_signature: &'a str,
    pub notice_id: &'a str,
    pub actor: &'a str,
    pub reason: &'a str,
    pub abuse_score: Option<i64>,
    pub kafka_partition: u32,
    pub kafka_offset: u64,
    pub kafka_topic: &'a str,
}

impl<'a> AccountRow<'a> {
    pub fn new(d: &'a Decoded<AccountEvent>, topic: &'a str) -> Self {
        let e = &d.event;
        Self {
            event_id: &e.event_id,
            occurred_at: secs(e.occurred_at),
            received_at: secs(e.received_at),
            account_id: e.account_id.as_str(),
            kind: e.kind.as_str(),
            plan: e.plan.map(|p| p.as_str()).unwrap_or(""),
            seats: e.seats,
            email_domain: e.email_domain.as_deref().unwrap_or(""),
            company_size: e.company_size,
            signup_ip_hash: e.signup_ip_hash.as_deref().unwrap_or(""),
            device_id: e.device_id.as_deref().unwrap_or(""),
            browser_signature: e.browser_signature.as_deref().unwrap_or(""),
            notice_id: e.notice_id.as_deref().unwrap_or(""),
            actor: e.actor.as_deref().unwrap_or(""),
            reason: e.reason.as_deref().unwrap_or(""),
            abuse_score: e.abuse_score,
            kafka_partition: d.partition as u32,
            kafka_offset: d.offset as u64,
            kafka_topic: topic,
        }
    }
}

/// The most monthly partitions of `account_events` one INSERT touches. ClickHouse 24.x refuses
/// an INSERT whose rows fall in more partitions than `max_partitions_per_insert_block`
/// (default 100), and account events may be of any age: an imported customer base spans
/// years of signups.
pub const MAX_MONTHS_PER_INSERT: usize = 100;

/// The `toYYYYMM` partition of an event time (microseconds, UTC).
fn month_of(micros: i64) -> u32 {
    use chrono::Datelike;
    let at = chrono::DateTime::from_timestamp(micros.div_euclid(1_000_000), 0).unwrap_or_default();
    at.year() as u32 * 100 + at.month()
}

/// Cuts rows, kept in batch order, into consecutive runs with at most `max` distinct months
/// each: one INSERT per run. Consecutive runs keep the offset watermark exact: a batch holds
/// each Kafka partition's records in offset order, so whatever runs were inserted before a
/// failure hold a prefix of every partition's records, and a retry skips exactly those.
fn month_runs(months: &[u32], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, m) in months.iter().enumerate() {
        if !seen.contains(m) && seen.len() == max.max(1) {
            runs.push(start..i);
            start = i;
            seen.clear();
        }
        seen.insert(*m);
    }
    if start < months.len() {
        runs.push(start..months.len());
    }
    runs
}

#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    /// The topics the rows come from: each row records its topic, and the watermark is per
    /// topic, so a renamed or recreated topic (offsets from 0 again) is not mistaken for
    /// records already inserted.
    usage_topic: String,
    account_topic: String,
}

/// Which stream a watermark is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Usage,
    Account,
}

#[derive(Debug, Row, Deserialize)]
struct Watermark {
    kafka_partition: u32,
    max_offset: u64,
}

impl ClickHouseSink {
    pub fn new(client: Client, usage_topic: &str, account_topic: &str) -> Self {
        Self {
            client,
            usage_topic: usage_topic.to_owned(),
            account_topic: account_topic.to_owned(),
        }
    }

    fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Usage => &self.usage_topic,
            Stream::Account => &self.account_topic,
        }
    }

    /// The highest offset per partition of `stream`'s topic that ClickHouse already holds.
    pub async fn watermarks(&self, stream: Stream) -> Result<HashMap<i32, i64>, SinkError> {
        let rows: Vec<Watermark> = self
            .client
            .query("SELECT kafka_partition, maxMerge(max_offset) AS max_offset FROM topic_watermarks WHERE kafka_topic = ? GROUP BY kafka_partition")
            .bind(self.topic(stream))
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|w| (w.kafka_partition as i32, w.max_offset as i64))
            .collect())
    }

    /// Those of `events` that `stream`'s watermarks leave to insert: each above the highest
    /// offset ClickHouse holds of its partition (an earlier attempt, or an earlier owner, may
    /// have inserted a prefix). Both streams' inserts go through this.
    pub async fn above_watermarks<'a, T: 'a>(
        &self,
        stream: Stream,
        events: impl IntoIterator<Item = &'a Decoded<T>>,
    ) -> Result<Vec<&'a Decoded<T>>, SinkError> {
        let watermarks = self.watermarks(stream).await?;
        Ok(events
            .into_iter()
            .filter(|d| watermarks.get(&d.partition).is_none_or(|w| d.offset > *w))
            .collect())
    }

    pub async fn insert_usage(&self, events: &[&Decoded<UsageEvent>]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<UsageRow<'_>>("usage_events").await?;
        for e in events {
            insert.write(&UsageRow::new(e, &self.usage_topic)).await?;
        }
        insert.end().await?;
        Ok(())
    }

    pub async fn insert_accounts(
        &self,
        events: &[&Decoded<AccountEvent>],
    ) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let months: Vec<u32> = events
            .iter()
            .map(|d| month_of(d.event.occurred_at))
            .collect();
        for run in month_runs(&months, MAX_MONTHS_PER_INSERT) {
            let mut insert = self
                .client
                .insert::<AccountRow<'_>>("account_events")
                .await?;
            for e in &events[run] {
                insert
                    .write(&AccountRow::new(e, &self.account_topic))
                    .await?;
            }
            insert.end().await?;
        }
        Ok(())
    }

    /// `experiment_assigned` events. The event id is the experiment and account, so writing
    /// the same assignment twice (a crash before it was marked recorded) leaves one row in
    /// `experiment_assignments_final`.
    pub async fn insert_assignments(
        &self,
        assignments: &[crate::experiments::store::PendingAssignment],
    ) -> Result<(), SinkError> {
        if assignments.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<AssignmentRow<'_>>("experiment_assignments")
            .await?;
        for a in assignments {
            let event_id = format!("experiment_assigned:{}:{}", a.experiment, a.account_id);
            insert
                .write(&AssignmentRow {
                    event_id: &event_id,
                    assigned_at: a.assigned_at.timestamp().max(0) as u32,
                    experiment: &a.experiment,
                    variant: &a.variant,
                    is_control: u8::from(a.is_control),
                    account_id: &a.account_id,
                    signed_up_at: a.signed_up_at.timestamp().max(0) as u32,
                    plan: &a.plan,
                    overrides: &a.limits,
                })
                .await?;
        }
        insert.end().await?;
        Ok(())
    }
}

/// A row of the ClickHouse `experiment_assignments` table.
#[derive(Debug, Row, Serialize)]
pub struct AssignmentRow<'a> {
    pub event_id: &'a str,
    pub assigned_at: u32,
    pub experiment: &'a str,
    pub variant: &'a str,
    pub is_control: u8,
    pub account_id: &'a str,
    pub signed_up_at: u32,
    pub plan: &'a str,
    pub overrides: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_rows_are_cut_into_consecutive_runs_of_few_months() {
        // (months in batch order, at most this many per insert, the runs as (start, end))
        type Runs = Vec<(usize, usize)>;
        let cases: Vec<(Vec<u32>, usize, Runs)> = vec![
            (vec![], 2, vec![]),
            (vec![202611; 5], 1, vec![(0, 5)]),
            (vec![202611, 202501, 202611, 202501], 2, vec![(0, 4)]),
            (
                vec![202611, 202501, 201907, 202611],
                2,
                vec![(0, 2), (2, 4)],
            ),
            (vec![1, 2, 3, 4, 5], 2, vec![(0, 2), (2, 4), (4, 5)]),
            (vec![1, 2, 3, 1, 2, 3], 3, vec![(0, 6)]),
        ];
        let runs = |months: &[u32], max| -> Runs {
            month_runs(months, max)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect()
        };
        for (months, max, want) in cases {
            assert_eq!(runs(&months, max), want, "{months:?} by {max}");
        }
        // A customer base's signups over ten years: 120 months, two inserts.
        let months: Vec<u32> = (0..120).map(|i| 201601 + (i / 12) * 100 + i % 12).collect();
        assert_eq!(
            runs(&months, MAX_MONTHS_PER_INSERT),
            vec![(0, 100), (100, 120)]
        );
    }

    #[test]
    fn the_month_is_the_utc_month_of_the_event() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros()
        };
        assert_eq!(month_of(at("2025-03-31T23:59:59Z")), 202503);
        assert_eq!(month_of(at("2025-04-01T00:30:00+01:00")), 202503);
        assert_eq!(month_of(0), 197001);
    }
}
