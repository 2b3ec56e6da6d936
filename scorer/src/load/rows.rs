//! The rows the batch queries read: one struct per ClickHouse query shape, and the PostgreSQL
//! account row.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::Deserialize;

#[derive(Row, Deserialize)]
pub(super) struct ModelWindow {
    pub(super) account_id: String,
    pub(super) window_start: u32,
    pub(super) model: String,
    pub(super) requests: u64,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cost_micros: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct Dims7 {
    pub(super) account_id: String,
    pub(super) providers: u64,
    pub(super) clouds: u64,
    pub(super) pii: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct AccountCount {
    pub(super) account_id: String,
    pub(super) n: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct Session {
    pub(super) account_id: String,
    pub(super) session_id: String,
    pub(super) start: u32,
    pub(super) end: u32,
}

#[derive(Row, Deserialize)]
pub(super) struct Prompts {
    pub(super) account_id: String,
    pub(super) total: u64,
    pub(super) uniq_prompts: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct KeyRow {
    pub(super) account_id: String,
    pub(super) api_key_id: String,
    pub(super) minute: u32,
    pub(super) ips: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct KeyDayRow {
    pub(super) account_id: String,
    pub(super) api_key_id: String,
    pub(super) ips: u64,
    pub(super) devices: u64,
    pub(super) sessions: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct PlanSpend {
    pub(super) plan: String,
    pub(super) top: u64,
}

#[derive(Row, Deserialize)]
pub(super) struct MinuteRow {
    pub(super) account_id: String,
    pub(super) minute: u32,
    pub(super) requests: u64,
}

pub(super) type AccountRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    Option<String>,
);
