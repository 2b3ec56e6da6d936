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

/// Starts `meterline <command>` with `env` on top of ours, at CPU niceness `nice`, logging to
/// `.local/log/bench-<role>.log`.
pub(crate) fn spawn_child(
    role: &str,
    command: &str,
    env: &[(String, String)],
    nice: i32,
    config_path: Option<&std::path::Path>,
) -> Result<std::process::Child> {
    let exe = meterline_exe()?;
    let mut cmd = if nice == 0 {
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
}
