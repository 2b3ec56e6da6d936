//! The resident memory one account's state takes in the aggregator's store, with the binary's
//! allocator (mimalloc): 30,000 accounts shaped like `bench aggregate`'s (`pipeline::event`),
//! each with `N` events folded and written, measured as the growth of the process's RSS.
//!
//! `cargo run --release -p meterline-aggregator --example state_bytes -- N` (BENCHMARKS.md).
use chrono::Utc;
use meterline_aggregator::state::account::AccountState;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{IpHasher, UsageEvent, UsageEventInput};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// A linear congruential generator: enough to vary models, sessions and users.
struct Lcg(u64);
impl Lcg {
    fn random_range(&mut self, r: std::ops::Range<usize>) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        r.start + ((self.0 >> 33) as usize) % (r.end - r.start)
    }
}

const MODELS: [&str; 4] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-3-5-sonnet",
    "llama-3.1-70b",
];
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];

fn event(rng: &mut Lcg, a: usize, now: chrono::DateTime<Utc>, h: &IpHasher) -> UsageEvent {
    let json = serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": now.to_rfc3339(),
        "account_id": format!("bench-abcdef12-{a}"),
        "api_key_id": format!("key-{a}"),
        "gateway_id": format!("gw-{}", a % 8),
        "region": REGIONS[a % 3], "cloud": "aws", "provider": "openai",
        "model": MODELS[rng.random_range(0..MODELS.len())],
        "input_tokens": 100, "output_tokens": 100, "cost_micros": 100, "status": 200,
        "session_id": format!("s-{a}-{}", rng.random_range(0..5)),
        "user_id": format!("u-{}", rng.random_range(0..20)),
        "client_ip": format!("198.51.100.{}", a % 250 + 1),
    });
    from_json_naming_field::<UsageEventInput>(&json.to_string())
        .unwrap()
        .validate(now, h)
        .unwrap()
}

fn main() {
    let per: usize = std::env::args().nth(1).map_or(4, |s| s.parse().unwrap());
    let n = 30_000;
    let mut rng = Lcg(5);
    let h = IpHasher::new("k");
    let now = Utc::now();
    let events: Vec<Vec<UsageEvent>> = (0..n)
        .map(|a| (0..per).map(|_| event(&mut rng, a, now, &h)).collect())
        .collect();
    let before = rss_kib();
    let mut states: Vec<(Box<str>, AccountState)> = Vec::with_capacity(n);
    for (a, es) in events.iter().enumerate() {
        let mut s = AccountState::default();
        for e in es {
            s.fold(e, now);
        }
        let _ = s.snapshot(now);
        s.written(now);
        states.push((format!("bench-abcdef12-{a}").into(), s));
    }
    let after = rss_kib();
    println!(
        "{per} events per account: {} bytes of RSS per account",
        (after - before) * 1024 / n
    );
    std::hint::black_box(&states);
}
