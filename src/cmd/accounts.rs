//! `meterline accounts import FILE`: telling Meterline about existing customers.
//!
//! A customer base (a CRM export, a billing system's list) becomes account events, the same
//! events a gateway posts to `POST /v1/account-events`, so the aggregator applies them like any
//! other: PostgreSQL `accounts` gets each customer's plan, seats, domain, company size and
//! signup time, ClickHouse `account_events` their history.
//!
//! The file is CSV with a header row, or JSON lines (one object per line), chosen by its
//! extension (`.csv`; `.jsonl`, `.ndjson`, `.json`) or `--format csv|jsonl`. One customer per
//! row:
//!
//! | column | rule |
//! |---|---|
//! | `account_id` | required, as in ingest |
//! | `plan` | required: `free`, `pro` or `enterprise` (the plan the customer is on now) |
//! | `signed_up_at` | required: RFC 3339, or a date (`2025-01-31`, midnight UTC); any age, at most 5 minutes ahead |
//! | `plan_since` | optional: when the current plan started, not before `signed_up_at` |
//! | `seats`, `company_size` | optional whole numbers |
//! | `email_domain` | optional: the part after `@` |
//! | `contact_email` | optional: where the email channel writes to (personal data, never printed) |
//!
//! Each row becomes a `signup` at `signed_up_at` with the plan, the domain and the company
//! size; with `plan_since` (later than the signup) the signup is a free one and a
//! `plan_changed` to the plan follows at `plan_since`. The seats go on the row's latest event.
//! Every event is validated by the code ingest runs ([`AccountEventInput::validate`]); a
//! row's refusal names its line, the field and the reason, and the valid rows around it are
//! imported. A second row for an account already in the file is refused.
//!
//! **Running it twice is safe.** An event's id is a UUID v5 of the account, the event type and
//! the event time, so the same row always makes the same events: the aggregator deduplicates
//! them by id (PostgreSQL `account_events`, for good), and rows whose events it has already
//! applied are counted as *already present* and not sent at all. The flip side: a row changed
//! in the file but with the same times makes the same ids, and the change is not applied; a
//! later change is an account event of its own (`plan_changed`, `seats_changed`) with its own
//! time. The aggregator orders every field by event time, so an imported `plan_since` older
//! than a plan change Meterline already has does not undo that change.
//!
//! Events are produced with ingest's producer settings (idempotent, `acks=all`), a few
//! thousand rows at a time, and every chunk is acknowledged before the next is read.
//!
//! Exit status: 0 when every row was imported or already present; 2 when some rows were
//! refused (the others are imported: fix the refused rows and run the file again); 1 when the
//! import stopped (unreadable file, bad header, Kafka did not acknowledge), in which case
//! running it again is the fix.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::Subcommand;
use meterline_ingest::app::TopicSchema;
use meterline_ingest::producer::OutgoingRecord;
use meterline_ingest::EventProducer;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{avro, AccountEvent, AccountEventInput, FieldError, IpHasher};
use serde::Deserialize;
use sqlx::PgPool;

use crate::{migrate, services, Config};

#[derive(Subcommand)]
pub enum AccountsAction {
    /// Import existing customers from a CSV or JSON-lines file (one per row: account_id, plan,
    /// signed_up_at, and optionally plan_since, seats, email_domain, company_size, contact_email). Safe to
    /// run twice. Exit status 2 when some rows were refused (the others are imported).
    Import(ImportArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The customer file.
    pub file: PathBuf,
    /// The file's format; by default from its extension (.csv; .jsonl, .ndjson, .json).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    fn of_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// Rows validated and produced at a time (each makes one or two events).
const ROWS_PER_CHUNK: usize = 5_000;

/// How long Kafka may take to acknowledge a record of the import. Longer than ingest's
/// `produce_timeout_ms`: no gateway is waiting, and a chunk is thousands of records.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The namespace of the import's event ids (UUID v5). Fixed for good: changing it would make
/// a second import of the same file new events.
const EVENT_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c2b7e_5d3a_4c1e_9a8b_2e4f6a8c0d13);

/// The columns of a row, as read, every one optional so a missing one is named.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRow {
    pub account_id: Option<String>,
    pub plan: Option<String>,
    pub seats: Option<u64>,
    pub email_domain: Option<String>,
    pub company_size: Option<u64>,
    pub contact_email: Option<String>,
    pub signed_up_at: Option<String>,
    pub plan_since: Option<String>,
}

const COLUMNS: [&str; 8] = [
    "account_id",
    "plan",
    "seats",
    "email_domain",
    "company_size",
    "contact_email",
    "signed_up_at",
    "plan_since",
];
const REQUIRED_COLUMNS: [&str; 3] = ["account_id", "plan", "signed_up_at"];

/// A row that was not imported: its line in the file and why (`field: reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: u64,
    pub error: String,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Rows in the file (blank lines aside).
    pub read: usize,
    /// Rows with at least one event Kafka now holds that the aggregator had not applied.
    pub imported: usize,
    /// Rows whose events the aggregator had all applied already (an earlier import).
    pub already_present: usize,
    /// Account events produced.
    pub events: usize,
    pub refused: Vec<Refusal>,
}

/// UUID version 5 (RFC 9562): SHA-1 of the namespace and the name.
fn uuid_v5(namespace: uuid::Uuid, name: &[u8]) -> uuid::Uuid {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(namespace.as_bytes());
    sha.update(name);
    let digest = sha.digest().bytes();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The id of the import's `kind` event for `account` at `at`: the same row, the same id.
fn event_id(account: &str, kind: &str, at: DateTime<Utc>) -> uuid::Uuid {
    let name = format!("{account}/{kind}/{}", at.timestamp_micros());
    uuid_v5(EVENT_ID_NAMESPACE, name.as_bytes())
}

/// An RFC 3339 timestamp, or a date (midnight UTC).
fn parse_time(field: &str, raw: Option<&str>) -> Result<DateTime<Utc>, FieldError> {
    let raw = raw.ok_or_else(|| FieldError::required(field))?;
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(FieldError::new(
        field,
        format!("{raw:?} is not an RFC 3339 timestamp or a date (YYYY-MM-DD)"),
    ))
}

/// The account events a row stands for, validated by ingest's code. An error names the row's
/// column (`signed_up_at`, not the event's `occurred_at`).
pub fn events_of(
    row: CustomerRow,
    now: DateTime<Utc>,
    hasher: &IpHasher,
) -> Result<Vec<AccountEvent>, FieldError> {
    let account = row
        .account_id
        .clone()
        .ok_or_else(|| FieldError::required("account_id"))?;
    let plan = row
        .plan
        .clone()
        .ok_or_else(|| FieldError::required("plan"))?;
    let signed_up_at = parse_time("signed_up_at", row.signed_up_at.as_deref())?;
    let plan_since = row
        .plan_since
        .as_deref()
        .map(|raw| parse_time("plan_since", Some(raw)))
        .transpose()?;
    if plan_since.is_some_and(|p| p < signed_up_at) {
        return Err(FieldError::new(
            "plan_since",
            "before signed_up_at (a plan starts at or after the signup)",
        ));
    }
    // A plan since the signup is a signup on that plan.
    let plan_since = plan_since.filter(|p| *p > signed_up_at);
    let event = |kind: &str, at: DateTime<Utc>, field: &'static str| {
        let input = AccountEventInput {
            event_id: Some(event_id(&account, kind, at).to_string()),
            occurred_at: Some(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            account_id: Some(account.clone()),
            kind: Some(kind.to_owned()),
            ..Default::default()
        };
        (input, field)
    };
    let mut inputs = Vec::with_capacity(2);
    let (mut signup, signup_field) = event("signup", signed_up_at, "signed_up_at");
    signup.email_domain = row.email_domain;
    signup.company_size = row.company_size;
    signup.contact_email = row.contact_email;
    match plan_since {
        None => {
            signup.plan = Some(plan);
            signup.seats = row.seats;
            inputs.push((signup, signup_field));
        }
        Some(since) => {
            signup.plan = Some("free".to_owned());
            inputs.push((signup, signup_field));
            let (mut change, field) = event("plan_changed", since, "plan_since");
            change.plan = Some(plan);
            change.seats = row.seats;
            inputs.push((change, field));
        }
    }
    inputs
        .into_iter()
        .map(|(input, time_field)| {
            input.validate(now, hasher).map_err(|e| {
                if e.field == "occurred_at" {
                    FieldError::new(time_field, e.reason)
                } else {
                    e
                }
            })
        })
        .collect()
}

/// The rows of a file, each with its line number.
type Rows = Box<dyn Iterator<Item = (u64, Result<CustomerRow, FieldError>)> + Send>;

/// Reads CSV: a header row naming the columns (any order; `COLUMNS`), then one customer per
/// row. An empty cell is an absent value. A header with an unknown or without a required
/// column stops the import: every row would be wrong.
fn csv_rows(bytes: Vec<u8>) -> Result<Rows> {
    // The reader's own line count leaves out blank lines, and a record's position is where
    // the blank lines before it start; a refusal must name the line an editor shows, so lines
    // are counted here from the record's byte offset, past any blank lines.
    let mut newlines = Vec::new();
    let mut after_blank = HashMap::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            if bytes[start..i].iter().all(u8::is_ascii_whitespace) {
                after_blank.insert(start as u64, i as u64 + 1);
            }
            newlines.push(i as u64);
            start = i + 1;
        }
    }
    let line_at = move |mut byte: u64| {
        loop {
            if newlines.binary_search(&byte).is_ok() {
                // The `\n` of a `\r\n` that ended the record before.
                byte += 1;
            } else if let Some(next) = after_blank.get(&byte) {
                byte = *next;
            } else {
                break;
            }
        }
        newlines.partition_point(|&nl| nl < byte) as u64 + 1
    };
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(std::io::Cursor::new(bytes));
    let header: Vec<String> = csv
        .headers()
        .context("reading the CSV header")?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    for h in &header {
        if !COLUMNS.contains(&h.as_str()) {
            bail!(
                "CSV header: column {h:?} is not one of {}",
                COLUMNS.join(", ")
            );
        }
    }
    for c in REQUIRED_COLUMNS {
        if !header.iter().any(|h| h == c) {
            bail!(
                "CSV header: no {c} column (required: {})",
                REQUIRED_COLUMNS.join(", ")
            );
        }
    }
    let width = header.len();
    let rows = csv.into_records().filter_map(move |record| {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| line_at(p.byte())).unwrap_or(0);
                return Some((
                    line,
                    Err(FieldError::new("", format!("not a CSV row: {e}"))),
                ));
            }
        };
        let line = record.position().map(|p| line_at(p.byte())).unwrap_or(0);
        if record.iter().all(str::is_empty) {
            return None;
        }
        if record.len() != width {
            return Some((
                line,
                Err(FieldError::new(
                    "",
                    format!("{} fields, the header has {width}", record.len()),
                )),
            ));
        }
        Some((line, csv_row(&header, &record)))
    });
    Ok(Box::new(rows))
}

fn csv_row(header: &[String], record: &csv::StringRecord) -> Result<CustomerRow, FieldError> {
    fn number(field: &str, text: Option<&str>) -> Result<Option<u64>, FieldError> {
        text.map(|v| {
            v.parse::<u64>().map_err(|_| {
                FieldError::new(field, format!("{v:?} is not a whole number (0 or more)"))
            })
        })
        .transpose()
    }
    let mut row = CustomerRow::default();
    for (column, value) in header.iter().zip(record.iter()) {
        let text = (!value.is_empty()).then_some(value);
        let owned = text.map(str::to_owned);
        match column.as_str() {
            "account_id" => row.account_id = owned,
            "plan" => row.plan = owned,
            "seats" => row.seats = number("seats", text)?,
            "email_domain" => row.email_domain = owned,
            "company_size" => row.company_size = number("company_size", text)?,
            "contact_email" => row.contact_email = owned,
            "signed_up_at" => row.signed_up_at = owned,
            "plan_since" => row.plan_since = owned,
            _ => unreachable!("the header was checked"),
        }
    }
    Ok(row)
}

/// Reads JSON lines: one object per line; blank lines are skipped. A field of the wrong type
/// or an unknown field refuses the row, naming it.
fn jsonl_rows(reader: impl std::io::Read + Send + 'static) -> Rows {
    let lines = std::io::BufReader::new(reader).lines();
    let rows = lines.enumerate().filter_map(|(i, line)| {
        let n = i as u64 + 1;
        match line {
            Err(e) => Some((n, Err(FieldError::new("", format!("unreadable line: {e}"))))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some((n, from_json_naming_field::<CustomerRow>(&l))),
        }
    });
    Box::new(rows)
}

/// Reads the file and turns it into rows, one at a time.
fn rows_of(args: &ImportArgs) -> Result<Rows> {
    let format = args
        .format
        .or_else(|| Format::of_path(&args.file))
        .with_context(|| {
            format!(
            "{}: cannot tell the format from the extension; give --format csv or --format jsonl",
            args.file.display()
        )
        })?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    match format {
        Format::Csv => csv_rows(bytes),
        Format::Jsonl => Ok(jsonl_rows(std::io::Cursor::new(bytes))),
    }
}

/// Where the import's events go: the account-events topic with its registered schema.
struct Sink {
    pool: PgPool,
    producer: EventProducer,
    topic: TopicSchema,
}

impl Sink {
    async fn new(config: &Config) -> Result<Self> {
        let pool = migrate::connect_postgres(config).await?;
        let topic = config.kafka.account_topic.clone();
        let schema_id = services::registry(config, &pool)
            .register(&format!("{topic}-value"), avro::ACCOUNT_EVENT_SCHEMA)
            .await
            .with_context(|| format!("registering the schema for {topic}"))?;
        let topic = TopicSchema {
            topic,
            schema_id,
            schema: Arc::new(avro::parse_schema(avro::ACCOUNT_EVENT_SCHEMA)?),
        };
        let producer = EventProducer::new(&config.kafka, DELIVERY_TIMEOUT)
            .context("creating the Kafka producer")?;
        Ok(Self {
            pool,
            producer,
            topic,
        })
    }

    /// The ids among `ids` the aggregator has applied (PostgreSQL `account_events`).
    async fn applied(&self, ids: &[String]) -> Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT event_id::text FROM account_events WHERE event_id = ANY($1::uuid[])",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .context("looking up events already applied (PostgreSQL account_events)")?;
        Ok(rows.into_iter().collect())
    }

    /// Sends the rows' events the aggregator has not applied yet, and waits for every ack.
    async fn send(
        &self,
        rows: &[(u64, Vec<AccountEvent>)],
        summary: &mut ImportSummary,
    ) -> Result<()> {
        let ids: Vec<String> = rows
            .iter()
            .flat_map(|(_, events)| events.iter().map(|e| e.event_id.clone()))
            .collect();
        let applied = self.applied(&ids).await?;
        let mut records = Vec::with_capacity(ids.len());
        let mut imported = 0;
        for (_, events) in rows {
            let before = records.len();
            for e in events.iter().filter(|e| !applied.contains(&e.event_id)) {
                records.push(OutgoingRecord {
                    key: e.account_id.as_str().to_owned(),
                    payload: avro::encode(self.topic.schema_id, &self.topic.schema, e)
                        .context("encoding an account event")?,
                });
            }
            if records.len() > before {
                imported += 1;
            } else {
                summary.already_present += 1;
            }
        }
        if !records.is_empty() {
            let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
            self.producer
                .produce_all(&self.topic.topic, &records)
                .await
                .with_context(|| {
                    format!(
                        "Kafka did not acknowledge the rows of lines {first} to {last}; \
                         the rows before line {first} are imported, and running the import again is safe"
                    )
                })?;
        }
        summary.imported += imported;
        summary.events += records.len();
        Ok(())
    }
}

/// Imports the file: validates every row, sends the valid rows' events and waits for Kafka to
/// acknowledge them. Refused rows are in the summary; an `Err` means the import stopped.
pub async fn import(config: &Config, args: &ImportArgs) -> Result<ImportSummary> {
    let rows = rows_of(args)?;
    let sink = Sink::new(config).await?;
    let hasher = IpHasher::new(&config.privacy.ip_hash_key);
    let now = Utc::now();
    let mut summary = ImportSummary::default();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut chunk: Vec<(u64, Vec<AccountEvent>)> = Vec::with_capacity(ROWS_PER_CHUNK);
    for (line, row) in rows {
        summary.read += 1;
        let events = row.and_then(|row| {
            let events = events_of(row, now, &hasher)?;
            let account = events[0].account_id.as_str();
            if let Some(first) = first_line.get(account) {
                return Err(FieldError::new(
                    "account_id",
                    format!("{account:?} is already on line {first}"),
                ));
            }
            first_line.insert(account.to_owned(), line);
            Ok(events)
        });
        match events {
            Ok(events) => chunk.push((line, events)),
            Err(e) => summary.refused.push(Refusal {
                line,
                error: e.to_string(),
            }),
        }
        if chunk.len() == ROWS_PER_CHUNK {
            sink.send(&chunk, &mut summary).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        sink.send(&chunk, &mut summary).await?;
    }
    sink.pool.close().await;
    Ok(summary)
}

/// `meterline accounts …`. Returns the process's exit status (see the module docs).
pub async fn run(config: &Config, action: AccountsAction) -> Result<i32> {
    match action {
        AccountsAction::Import(args) => {
            let started = Instant::now();
            let summary = import(config, &args).await?;
            for r in &summary.refused {
                eprintln!("line {}: {}", r.line, r.error);
            }
            println!(
                "{}: {} rows read, {} imported, {} already present, {} refused ({} account events sent in {:.1} s)",
                args.file.display(),
                summary.read,
                summary.imported,
                summary.already_present,
                summary.refused.len(),
                summary.events,
                started.elapsed().as_secs_f64(),
            );
            Ok(if summary.refused.is_empty() { 0 } else { 2 })
        }
    }
}

#[cfg(test)]
mod tests;
