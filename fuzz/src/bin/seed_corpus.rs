//! Writes the seed corpora (`cargo run --bin seed_corpus` from `fuzz/`): valid events as JSON
//! and as framed Avro records, so the fuzzer starts from the real shapes.

use std::fs;
use std::path::Path;

use chrono::{TimeZone, Utc};
use meterline_schemas::avro::{encode, parse_schema, ACCOUNT_EVENT_SCHEMA, USAGE_EVENT_SCHEMA};
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{AccountEventInput, IpHasher, UsageEventInput};

const USAGE: &[&str] = &[
    r#"{"event_id":"0b9f6c1e-8a4e-4f7e-9a51-2f3c4d5e6f70","occurred_at":"2026-11-23T11:59:00Z","account_id":"acct-1","api_key_id":"key-1","gateway_id":"gw-1","region":"us-east-1","cloud":"aws","provider":"openai","model":"gpt-4o-mini","input_tokens":120,"output_tokens":40,"cost_micros":90,"latency_ms":300,"status":200,"session_id":"s-1","user_id":"u-1","plugins":["web-search"],"pii_detected":false,"client_ip":"198.51.100.7","device_id":"d-1","prompt_hash":"ph-1"}"#,
    r#"{"event_id":"1b9f6c1e-8a4e-4f7e-9a51-2f3c4d5e6f71","occurred_at":"2026-11-23T11:00:00+01:00","account_id":"acct-2","api_key_id":"key-2","gateway_id":"gw-1","region":"eu-west-1","cloud":"gcp","provider":"anthropic","model":"claude-3-haiku","input_tokens":0,"output_tokens":0,"status":429}"#,
];

const ACCOUNT: &[&str] = &[
    r#"{"event_id":"2b9f6c1e-8a4e-4f7e-9a51-2f3c4d5e6f72","occurred_at":"2026-11-23T11:00:00Z","account_id":"acct-1","type":"signup","plan":"free","email_domain":"example.com","company_size":40,"signup_ip":"203.0.113.9","device_id":"d-1","browser_signature":"b-1"}"#,
    r#"{"event_id":"3b9f6c1e-8a4e-4f7e-9a51-2f3c4d5e6f73","occurred_at":"2026-11-23T11:30:00Z","account_id":"acct-1","type":"plan_changed","plan":"pro"}"#,
    r#"{"event_id":"4b9f6c1e-8a4e-4f7e-9a51-2f3c4d5e6f74","occurred_at":"2026-11-23T11:40:00Z","account_id":"acct-1","type":"notice_clicked","notice_id":"5b9f6c1e-8a4e-4f7e-9a51-2f3c4d5e6f75"}"#,
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let json_dir = root.join("event_json");
    let avro_dir = root.join("avro_decode");
    fs::create_dir_all(&json_dir).unwrap();
    fs::create_dir_all(&avro_dir).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    let hasher = IpHasher::new(b"fuzz");
    let usage_schema = parse_schema(USAGE_EVENT_SCHEMA).unwrap();
    let account_schema = parse_schema(ACCOUNT_EVENT_SCHEMA).unwrap();
    for (i, text) in USAGE.iter().enumerate() {
        fs::write(json_dir.join(format!("usage-{i}.json")), text).unwrap();
        let e = from_json_naming_field::<UsageEventInput>(text)
            .unwrap()
            .validate(now, &hasher)
            .unwrap();
        fs::write(
            avro_dir.join(format!("usage-{i}.avro")),
            encode(1, &usage_schema, &e).unwrap(),
        )
        .unwrap();
    }
    for (i, text) in ACCOUNT.iter().enumerate() {
        fs::write(json_dir.join(format!("account-{i}.json")), text).unwrap();
        let e = from_json_naming_field::<AccountEventInput>(text)
            .unwrap()
            .validate(now, &hasher)
            .unwrap();
        fs::write(
            avro_dir.join(format!("account-{i}.avro")),
            encode(2, &account_schema, &e).unwrap(),
        )
        .unwrap();
    }
    println!("seed corpora written under {}", root.display());
}
