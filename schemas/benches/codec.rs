//! Micro-benchmarks of ingest's per-event work: JSON parse and validate, and the Avro encode
//! (ingest) and decode (aggregator) of one usage event. `cargo bench -p meterline-schemas`.

use chrono::Utc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{avro, usage_codec, IpHasher, UsageEvent, UsageEventInput};

fn event_json() -> String {
    serde_json::json!({
        "event_id": "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a12",
        "occurred_at": Utc::now().to_rfc3339(),
        "account_id": "acct-000042",
        "api_key_id": "key-1",
        "gateway_id": "gw-eu-1",
        "region": "eu-west-1",
        "cloud": "aws",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cost_micros": 4500,
        "latency_ms": 830,
        "status": 200,
        "session_id": "s-1",
        "user_id": "u-7",
        "plugins": ["guardrails"],
        "pii_detected": false,
        "client_ip": "203.0.113.7",
        "prompt_hash": "9f86d081884c7d65"
    })
    .to_string()
}

fn benches(c: &mut Criterion) {
    let json = event_json();
    let hasher = IpHasher::new("bench-key");
    let now = Utc::now();
    c.bench_function("json parse + validate (one usage event)", |b| {
        b.iter(|| {
            let input: UsageEventInput = from_json_naming_field(black_box(&json)).unwrap();
            input.validate(now, &hasher).unwrap()
        })
    });
    let event: UsageEvent = from_json_naming_field::<UsageEventInput>(&json)
        .unwrap()
        .validate(now, &hasher)
        .unwrap();
    let schema = avro::parse_schema(avro::USAGE_EVENT_SCHEMA).unwrap();
    c.bench_function("avro encode (one usage event)", |b| {
        b.iter(|| avro::encode(7, &schema, black_box(&event)).unwrap())
    });
    let bytes = avro::encode(7, &schema, &event).unwrap();
    c.bench_function("avro decode (one usage event)", |b| {
        b.iter(|| {
            let (_, body) = avro::split_frame(black_box(&bytes)).unwrap();
            avro::decode_body::<UsageEvent>(&schema, &schema, body).unwrap()
        })
    });
    c.bench_function("avro encode + decode (one usage event)", |b| {
        b.iter(|| {
            let bytes = avro::encode(7, &schema, black_box(&event)).unwrap();
            let (_, body) = avro::split_frame(&bytes).unwrap();
            avro::decode_body::<UsageEvent>(&schema, &schema, body).unwrap()
        })
    });
    // What ingest and the aggregator run: the hand-written codec for the v1 schema.
    c.bench_function("usage_codec encode (one usage event)", |b| {
        b.iter(|| usage_codec::encode(7, black_box(&event)))
    });
    c.bench_function("usage_codec decode (one usage event)", |b| {
        b.iter(|| usage_codec::decode_body(black_box(&bytes[avro::HEADER_LEN..])).unwrap())
    });
    c.bench_function("usage_codec encode + decode (one usage event)", |b| {
        b.iter(|| {
            let bytes = usage_codec::encode(7, black_box(&event));
            usage_codec::decode_body(&bytes[avro::HEADER_LEN..]).unwrap()
        })
    });
}

criterion_group!(codec, benches);
criterion_main!(codec, codec_parts);

fn parts(c: &mut Criterion) {
    let json = event_json();
    let hasher = IpHasher::new("bench-key");
    let event: UsageEvent = from_json_naming_field::<UsageEventInput>(&json)
        .unwrap()
        .validate(Utc::now(), &hasher)
        .unwrap();
    let schema = avro::parse_schema(avro::USAGE_EVENT_SCHEMA).unwrap();
    let bytes = avro::encode(7, &schema, &event).unwrap();
    let body = &bytes[5..];
    c.bench_function("part: check_exact", |b| {
        b.iter(|| avro::check_exact(&schema, black_box(body)).unwrap())
    });
    c.bench_function("part: from_avro_datum", |b| {
        b.iter(|| {
            let mut cur = black_box(body);
            apache_avro::from_avro_datum(&schema, &mut cur, None).unwrap()
        })
    });
    let value = apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap();
    c.bench_function("part: from_value", |b| {
        b.iter(|| apache_avro::from_value::<UsageEvent>(black_box(&value)).unwrap())
    });
    let other = avro::parse_schema(avro::USAGE_EVENT_SCHEMA).unwrap();
    c.bench_function("part: schema eq", |b| {
        b.iter(|| black_box(&schema) == black_box(&other))
    });
}
criterion_group!(codec_parts, parts);
