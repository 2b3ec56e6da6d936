//! Micro-benchmarks of the window fold, with the binary's allocator (mimalloc):
//! `cargo bench -p meterline-aggregator`.
//!
//! - `fold`: today's fold, a batch of 20,000 usage events over 10,000 accounts into one Redis
//!   delta;
//! - `state store`: the same batch into layout v2's in-memory state (issue 21; target ≥ 500,000
//!   events/s on one thread), once with the accounts already in memory (steady state) and once
//!   into an empty store (every account new);
//! - `flush`: what a flush does for each changed account: copy what its snapshot is built from
//!   and mark it written (in the consumer's loop, `Partition::take`), then build the snapshot
//!   (on the flush's task), for the 10,000 accounts of such a batch.

use chrono::Utc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterline_aggregator::fold::{fold_event, RedisDelta};
use meterline_aggregator::state::account::AccountState;
use meterline_schemas::keys::Keys;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{IpHasher, UsageEvent, UsageEventInput};
use std::collections::HashMap;

fn events(n: usize, accounts: usize) -> Vec<UsageEvent> {
    let now = Utc::now();
    let hasher = IpHasher::new("bench-key");
    let models = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"];
    (0..n)
        .map(|i| {
            let model = models[i % 3];
            let json = serde_json::json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": (now - chrono::Duration::seconds((i % 600) as i64)).to_rfc3339(),
                "account_id": format!("acct-{:06}", i % accounts),
                "api_key_id": "key-1", "gateway_id": "gw-1", "region": "eu-west-1", "cloud": "aws",
                "provider": "openai", "model": model,
                "input_tokens": 1200, "output_tokens": 300, "cost_micros": 4500, "status": 200,
                "session_id": format!("s-{}", i % 7), "user_id": format!("u-{}", i % 5),
                "client_ip": "203.0.113.7"
            })
            .to_string();
            from_json_naming_field::<UsageEventInput>(&json)
                .unwrap()
                .validate(now, &hasher)
                .unwrap()
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let batch = events(20_000, 10_000);
    let keys = Keys::new("ml:");
    let now = Utc::now();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(20);
    g.bench_function("20,000 events over 10,000 accounts", |b| {
        b.iter(|| {
            let mut delta = RedisDelta::default();
            for e in black_box(&batch) {
                fold_event(&mut delta, &keys, e, now);
            }
            delta.len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("state store");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(20);
    let fold_all = |store: &mut HashMap<String, AccountState>| {
        for e in black_box(&batch) {
            let account = match store.get_mut(e.account_id.as_str()) {
                Some(a) => a,
                None => store.entry(e.account_id.as_str().to_owned()).or_default(),
            };
            account.fold(e, now);
        }
        store.len()
    };
    let mut warm = HashMap::new();
    fold_all(&mut warm);
    g.bench_function("20,000 events over 10,000 accounts in memory", |b| {
        b.iter(|| fold_all(&mut warm))
    });
    g.bench_function("20,000 events over 10,000 new accounts", |b| {
        b.iter(|| fold_all(&mut HashMap::new()))
    });
    g.finish();

    // The accounts in memory, each changed by a batch since its last flush.
    let changed = || {
        let mut changed = warm.clone();
        fold_all(&mut changed);
        changed
    };
    let mut g = c.benchmark_group("flush");
    g.throughput(Throughput::Elements(warm.len() as u64));
    g.sample_size(20);
    g.bench_function("10,000 changed accounts: copy, mark written, build", |b| {
        b.iter_batched(
            changed,
            |mut changed| {
                for account in changed.values_mut() {
                    let pending = account.pending();
                    account.written(now);
                    black_box(pending.snapshot(now));
                }
                changed
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function(
        "10,000 changed accounts: copy, mark written (the loop's part)",
        |b| {
            b.iter_batched(
                changed,
                |mut changed| {
                    let copies: Vec<AccountState> = changed
                        .values_mut()
                        .map(|account| {
                            let pending = account.pending();
                            account.written(now);
                            pending
                        })
                        .collect();
                    (changed, copies)
                },
                BatchSize::LargeInput,
            )
        },
    );
    g.finish();
}

criterion_group!(fold, benches);
criterion_main!(fold);
