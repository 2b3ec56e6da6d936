//! The 30-day usage summary a sales alert carries, from ClickHouse's daily rollup.

use chrono::{DateTime, Duration, Utc};
use clickhouse::Row;
use serde::Deserialize;

use crate::message::UsageSummary;

#[derive(Debug, Row, Deserialize)]
struct SummaryRow {
    requests: u64,
    tokens: u64,
    models: u64,
    regions: u64,
    tokens_last_7d: u64,
    tokens_prior_7d: u64,
}

/// The account's last 30 days (today and the 29 before), with the last two weeks' tokens for
/// the week-over-week trend.
pub async fn summary(
    ch: &clickhouse::Client,
    account: &str,
    now: DateTime<Utc>,
) -> Result<UsageSummary, clickhouse::error::Error> {
    let today = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let from = (today - Duration::days(29)).timestamp();
    let week = (today - Duration::days(6)).timestamp();
    let prior = (today - Duration::days(13)).timestamp();
    let rows = ch
        .query(
            "SELECT sum(requests) AS requests, \
                    sum(input_tokens + output_tokens) AS tokens, \
                    uniqExact(model) AS models, \
                    uniqExactMerge(regions) AS regions, \
                    sumIf(input_tokens + output_tokens, window_start >= toDateTime(?)) AS tokens_last_7d, \
                    sumIf(input_tokens + output_tokens, window_start >= toDateTime(?) AND window_start < toDateTime(?)) AS tokens_prior_7d \
             FROM usage_day WHERE account_id = ? AND window_start >= toDateTime(?)",
        )
        .bind(week)
        .bind(prior)
        .bind(week)
        .bind(account)
        .bind(from)
        .fetch_all::<SummaryRow>()
        .await?;
    Ok(rows
        .into_iter()
        .next()
        .map(|r| UsageSummary {
            requests: r.requests,
            tokens: r.tokens,
            models: r.models,
            regions: r.regions,
            tokens_last_7d: r.tokens_last_7d,
            tokens_prior_7d: r.tokens_prior_7d,
        })
        .unwrap_or_default())
}
