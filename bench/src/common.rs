//! What the benchmarks share: child processes of the `meterline` binary, the usage batches
//! they post, percentiles and resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

/// The `meterline` binary the benchmark starts as child processes: the one built next to this
/// benchmark (`cargo build --release -p meterline -p meterline-bench --bins`).
pub(crate) fn meterline_exe() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("meterline");
    anyhow::ensure!(
        exe.exists(),
        "{} not found: build it beside this benchmark (cargo build --release --bin meterline)",
        exe.display()
    );
    Ok(exe)
}

/// Child processes, stopped when dropped (an early error must not leave them running).
pub(crate) struct ChildProcesses(pub(crate) Vec<(String, std::process::Child)>);

impl Drop for ChildProcesses {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // SIGTERM first: the aggregator commits what it has written and leaves the group.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for (role, child) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(%role, "did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs each child `meterline` under this command, split at spaces (`heaptrack -o /tmp/ht`).
pub(crate) const CHILD_WRAPPER_ENV: &str = "BENCH_CHILD_WRAPPER";

/// Starts `meterline <command>` with `env` on top of ours, at CPU niceness `nice` (not under
/// a [`CHILD_WRAPPER_ENV`] wrapper), logging to `.local/log/bench-<role>.log`.
pub(crate) fn spawn_child(
    role: &str,
    command: &str,
    env: &[(String, String)],
    nice: i32,
    config_path: Option<&std::path::Path>,
) -> Result<std::process::Child> {
    let exe = meterline_exe()?;
    // A profiler to run the child under, for profiling runs only (BENCHMARKS.md): its peak
    // RSS is then the wrapper's, and a wrapper that does not pass signals on may leave the
    // child running.
    let wrap = std::env::var(CHILD_WRAPPER_ENV).unwrap_or_default();
    let mut cmd =
        if let Some((program, args)) = wrap.split_whitespace().collect::<Vec<_>>().split_first() {
            let mut cmd = std::process::Command::new(program);
            cmd.args(args).arg(exe);
            cmd
        } else if nice == 0 {
            std::process::Command::new(exe)
        } else {
            let mut cmd = std::process::Command::new("nice");
            cmd.arg("-n").arg(nice.to_string()).arg(exe);
            cmd
        };
    std::fs::create_dir_all(".local/log")?;
    let log = std::fs::File::create(format!(".local/log/bench-{role}.log"))?;
    cmd.arg(command)
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(path) = config_path {
        cmd.env(meterline::config::CONFIG_PATH_ENV, path);
    }
    cmd.spawn()
        .with_context(|| format!("starting `meterline {command}` ({role})"))
}

pub(crate) async fn wait_healthy(http: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{base} not healthy after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) const MODELS: [&str; 4] = ["gpt-4o-mini", "gpt-4o", "claude-3-haiku", "llama-3-8b"];

pub(crate) fn usage_batch(rng: &mut StdRng, accounts: usize, n: usize) -> String {
    let now = Utc::now().to_rfc3339();
    let events: Vec<_> = (0..n)
        .map(|_| {
            let a = rng.random_range(0..accounts);
            let region = ["us-east-1", "eu-west-1", "ap-south-1"][a % 3];
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": now,
                "account_id": format!("bench-{a}"),
                "api_key_id": format!("key-{a}"),
                "gateway_id": "gw-bench",
                "region": region,
                "cloud": "aws",
                "provider": "openai",
                "model": MODELS[rng.random_range(0..MODELS.len())],
                "input_tokens": rng.random_range(10..4000),
                "output_tokens": rng.random_range(10..1000),
                "cost_micros": rng.random_range(10..5000),
                "status": 200,
                "session_id": format!("s-{a}-{}", rng.random_range(0..5)),
            })
        })
        .collect();
    serde_json::Value::Array(events).to_string()
}

/// The `p` quantile of sorted microseconds, in milliseconds.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// This process's resident memory in MiB.
pub(crate) fn rss_mib() -> f64 {
    proc_status_mib("self", "VmRSS:")
}

/// A memory line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) in MiB; NaN if unreadable.
pub(crate) fn proc_status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) so far of every process on the machine, summed by the name the
/// kernel gives it (`/proc/<pid>/comm`: `tansu`, `clickhouse-serv`, `redis-server`, `meterline`,
/// `meterline-bench`…), and of the whole machine under `"all"` (`/proc/stat`, busy time of every
/// core). Read before and after a run ([`cpu_shares`]) it says which process took the cores:
/// the broker, ClickHouse, Redis and the aggregator share them here. A process that exits
/// during the run takes its time with it, so read the second one while they all still run.
pub(crate) fn cpu_by_process() -> std::collections::BTreeMap<String, f64> {
    // Clock ticks: `USER_HZ`, 100 on every Linux architecture userspace sees here.
    const TICKS: f64 = 100.0;
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        // Processes only: `self` and `thread-self` are this process again.
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split at the
        // last `)`; utime and stime are the 14th and 15th fields, the 12th and 13th after it.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ticks: f64 = stat[close + 1..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<f64>().ok())
            .sum();
        *out.entry(comm.to_owned()).or_insert(0.0) += ticks / TICKS;
    }
    if let Some(cpu) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    {
        // `cpu user nice system idle iowait irq softirq steal …`: busy is user, nice, system,
        // irq and softirq (steal is time the hypervisor gave another guest).
        let busy: f64 = cpu
            .split_whitespace()
            .skip(1)
            .take(7)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .filter_map(|(_, t)| t.parse::<f64>().ok())
            .sum();
        out.insert("all".into(), busy / TICKS);
    }
    out
}

/// Which processes took the machine's CPU between two [`cpu_by_process`] readings, over
/// `wall` seconds: `busy 1.86 of 2 cores: tansu 0.61, clickhouse-serv 0.52, …` (cores used on
/// average), the largest first, those under 0.01 of a core left out.
pub(crate) fn cpu_shares(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    wall: f64,
) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let used = |name: &str| {
        (after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0))
            .max(0.0)
            / wall
    };
    let mut by: Vec<(&str, f64)> = after
        .keys()
        .filter(|n| *n != "all")
        .map(|n| (n.as_str(), used(n)))
        .filter(|(_, c)| *c >= 0.01)
        .collect();
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    let by: Vec<String> = by.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
    format!(
        "busy {:.2} of {cores} cores: {}",
        used("all"),
        by.join(", ")
    )
}

/// A histogram's count and mean, and the upper bounds of the buckets its p50 and p99 fall in
/// (coarse: a bucket's bound, not the value): `37 flushes, mean 412 ms, p50 ≤ 500 ms, p99 ≤
/// 1000 ms`.
pub(crate) fn histogram_line(h: &prometheus::Histogram, what: &str) -> String {
    use prometheus::core::Collector;
    use prometheus::Encoder;
    let (n, sum) = (h.get_sample_count() as f64, h.get_sample_sum());
    if n == 0.0 {
        return format!("no {what}");
    }
    // The buckets read through the text format: the protobuf model behind `collect` differs
    // with the crate's features, which differ between the benchmark's builds.
    let mut text = Vec::new();
    if prometheus::TextEncoder::new()
        .encode(&h.collect(), &mut text)
        .is_err()
    {
        return format!("no {what}");
    }
    let buckets: Vec<(f64, f64)> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?;
            Some((le.parse::<f64>().ok()?, count.parse::<f64>().ok()?))
        })
        .collect();
    let bound = |q: f64| {
        let rank = (q * n).ceil();
        buckets
            .iter()
            .find(|(_, count)| *count >= rank)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    format!(
        "{n} {what}, mean {:.0} ms, p50 ≤ {:.0} ms, p99 ≤ {:.0} ms",
        1000.0 * sum / n,
        1000.0 * bound(0.5),
        1000.0 * bound(0.99)
    )
}

/// The aggregator's wall time by stage, as printed: `(12.3 s): collect 6 %, decode 2 %, …`.
pub(crate) fn stage_breakdown(stages: &[(&str, f64)]) -> String {
    let total: f64 = stages.iter().map(|(_, secs)| secs).sum();
    let shares: Vec<String> = stages
        .iter()
        .map(|(name, secs)| format!("{name} {:.0} %", 100.0 * secs / total.max(1e-9)))
        .collect();
    format!("({total:.1} s): {}", shares.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stage_breakdown_gives_each_stage_its_share_of_the_total() {
        assert_eq!(
            super::stage_breakdown(&[("collect", 1.0), ("fold", 3.0)]),
            "(4.0 s): collect 25 %, fold 75 %"
        );
        assert_eq!(
            super::stage_breakdown(&[("fold", 0.0)]),
            "(0.0 s): fold 0 %"
        );
    }

    #[test]
    fn a_histogram_line_names_the_buckets_of_its_median_and_p99() {
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("h", "h").buckets(vec![0.1, 0.5, 1.0]),
        )
        .unwrap();
        assert_eq!(super::histogram_line(&h, "flushes"), "no flushes");
        // 98 at 50 ms, one at 300 ms and one at 900 ms: the median is in the first bucket,
        // the 99th of 100 in the second.
        for _ in 0..98 {
            h.observe(0.05);
        }
        h.observe(0.3);
        h.observe(0.9);
        assert_eq!(
            super::histogram_line(&h, "flushes"),
            "100 flushes, mean 61 ms, p50 ≤ 100 ms, p99 ≤ 500 ms"
        );
    }
}
