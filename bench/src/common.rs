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

/// Every process's pid and `/proc/<pid>` directory (`self` and `thread-self`, this process
/// again, left out).
fn process_dirs() -> impl Iterator<Item = (String, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            pid.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| (pid, entry.path()))
        })
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
    for (_, dir) in process_dirs() {
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
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
    // Whole milliseconds from 10 up; below, enough decimals for a round trip to Redis.
    let ms = |secs: f64| {
        let ms = 1000.0 * secs;
        match ms {
            m if m >= 10.0 => format!("{m:.0}"),
            m if m >= 1.0 => format!("{m:.1}"),
            m => format!("{m:.2}"),
        }
    };
    format!(
        "{n} {what}, mean {} ms, p50 ≤ {} ms, p99 ≤ {} ms",
        ms(sum / n),
        ms(bound(0.5)),
        ms(bound(0.99))
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
        // A round trip to Redis keeps its decimals.
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("h", "h").buckets(vec![0.00025, 0.002]),
        )
        .unwrap();
        h.observe(0.0002);
        h.observe(0.0012);
        assert_eq!(
            super::histogram_line(&h, "snapshots"),
            "2 snapshots, mean 0.70 ms, p50 ≤ 0.25 ms, p99 ≤ 2.0 ms"
        );
    }
}

/// How long this process's threads and the machine's other processes ran and waited for a
/// core, and how long the machine had a task waiting for one: what [`cpu_wait_line`] compares
/// between two readings. Each figure is seconds on a core, seconds runnable but waiting for
/// one, and times put on a core, from `/proc/<pid>/task/<tid>/schedstat` (the kernel's
/// scheduler accounting); threads that end between two readings take theirs with them.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuWaits {
    /// This process's threads by name (`tokio-rt-worker`, `rdk:broker1`…).
    pub threads: std::collections::BTreeMap<String, (f64, f64, u64)>,
    /// Every other process's threads together, by the process's name (`tansu`,
    /// `clickhouse-serv`, `redis-server`…).
    pub processes: std::collections::BTreeMap<String, (f64, f64, u64)>,
    /// `/proc/pressure/cpu`'s `some` total in seconds: time in which at least one task on the
    /// machine was runnable and waited for a core. NaN where the kernel has no PSI.
    pub machine_some: f64,
    /// `/proc/stat`'s steal time in seconds, over every core: time the hypervisor ran something
    /// else on this machine's virtual cores while they had work. On the development VM it comes
    /// as a core stopped for about 100 ms at a time, under load.
    pub steal: f64,
}

/// Adds the schedstat of every thread under `tasks` (a `/proc/<pid>/task` directory) to
/// `into`, under the thread's own name or under `name` if given.
fn add_tasks(
    tasks: &std::path::Path,
    name: Option<&str>,
    into: &mut std::collections::BTreeMap<String, (f64, f64, u64)>,
) {
    for entry in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        let Ok(sched) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let key = match name {
            Some(n) => n.to_owned(),
            None => match std::fs::read_to_string(entry.path().join("comm")) {
                Ok(comm) => comm.trim().to_owned(),
                Err(_) => continue,
            },
        };
        if let Some((run, wait, slices)) = parse_schedstat(&sched) {
            let t = into.entry(key).or_insert((0.0, 0.0, 0));
            t.0 += run;
            t.1 += wait;
            t.2 += slices;
        }
    }
}

/// Reads [`CpuWaits`] now.
pub(crate) fn cpu_waits() -> CpuWaits {
    let mut threads = std::collections::BTreeMap::new();
    add_tasks(std::path::Path::new("/proc/self/task"), None, &mut threads);
    let me = std::process::id().to_string();
    let mut processes = std::collections::BTreeMap::new();
    for (pid, dir) in process_dirs() {
        if pid == me {
            continue;
        }
        if let Ok(comm) = std::fs::read_to_string(dir.join("comm")) {
            add_tasks(&dir.join("task"), Some(comm.trim()), &mut processes);
        }
    }
    let machine_some = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|s| parse_pressure_some(&s))
        .unwrap_or(f64::NAN);
    let steal = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_steal(&s))
        .unwrap_or(f64::NAN);
    CpuWaits {
        threads,
        processes,
        machine_some,
        steal,
    }
}

/// The steal time of `/proc/stat`'s first line (`cpu user nice system idle iowait irq softirq
/// steal …`, in `USER_HZ` ticks, 100 a second), in seconds.
fn parse_steal(s: &str) -> Option<f64> {
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let ticks: f64 = line.split_whitespace().nth(7)?.parse().ok()?;
    Some(ticks / 100.0)
}

/// `run_ns wait_ns timeslices` → seconds on a core, seconds waiting, timeslices.
fn parse_schedstat(s: &str) -> Option<(f64, f64, u64)> {
    let mut f = s.split_whitespace();
    let run: f64 = f.next()?.parse().ok()?;
    let wait: f64 = f.next()?.parse().ok()?;
    let slices: u64 = f.next()?.parse().ok()?;
    Some((run / 1e9, wait / 1e9, slices))
}

/// The `total=` (µs) of `/proc/pressure/cpu`'s `some` line, in seconds.
fn parse_pressure_some(s: &str) -> Option<f64> {
    let line = s.lines().find(|l| l.starts_with("some "))?;
    let total = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?;
    Some(total.parse::<f64>().ok()? / 1e6)
}

/// Between two [`cpu_waits`] readings over `wall` seconds: the share of the run in which the
/// machine had a task waiting for a core; then this process's threads by name and the other
/// processes by name, the busiest first: cores used, cores' worth of waiting, and the mean
/// wait each time one was put on a core (`tokio-rt-worker: ran 0.60, waited 0.20 cores, 2.00
/// ms a wait`). Those under 0.01 of a core in both are left out.
pub(crate) fn cpu_wait_line(before: &CpuWaits, after: &CpuWaits, wall: f64) -> String {
    format!(
        "a task on the machine waited for a core {:.0} % of the run (PSI cpu some); the hypervisor took {:.2} cores (steal); this process's threads by name: {}; the other processes: {}",
        100.0 * (after.machine_some - before.machine_some) / wall,
        (after.steal - before.steal) / wall,
        wait_shares(&before.threads, &after.threads, wall),
        wait_shares(&before.processes, &after.processes, wall),
    )
}

fn wait_shares(
    before: &std::collections::BTreeMap<String, (f64, f64, u64)>,
    after: &std::collections::BTreeMap<String, (f64, f64, u64)>,
    wall: f64,
) -> String {
    let mut by: Vec<(&str, f64, f64, f64)> = after
        .iter()
        .map(|(name, &(run, wait, slices))| {
            let (r0, w0, s0) = before.get(name).copied().unwrap_or((0.0, 0.0, 0));
            let (run, wait) = ((run - r0).max(0.0), (wait - w0).max(0.0));
            let slices = slices.saturating_sub(s0).max(1) as f64;
            (
                name.as_str(),
                run / wall,
                wait / wall,
                1000.0 * wait / slices,
            )
        })
        .filter(|(_, run, wait, _)| *run >= 0.01 || *wait >= 0.01)
        .collect();
    by.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    let by: Vec<String> = by
        .iter()
        .map(|(name, run, wait, per)| {
            format!("{name}: ran {run:.2}, waited {wait:.2} cores, {per:.2} ms a wait")
        })
        .collect();
    if by.is_empty() {
        "none".into()
    } else {
        by.join("; ")
    }
}

#[cfg(test)]
mod cpu_wait_tests {
    use super::*;

    #[test]
    fn schedstat_and_pressure_lines_are_read_in_seconds() {
        assert_eq!(
            parse_schedstat("2500000000 500000000 1234\n"),
            Some((2.5, 0.5, 1234))
        );
        assert_eq!(parse_schedstat("12 34"), None);
        let psi = "some avg10=76.87 avg60=33.90 avg300=9.00 total=29455614\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_some(psi), Some(29.455614));
        assert_eq!(parse_pressure_some("full total=3\n"), None);
        let stat =
            "cpu  7450 12 1030 90000 40 0 60 250 0 0\ncpu0 3700 6 510 45000 20 0 30 125 0 0\n";
        assert_eq!(parse_steal(stat), Some(2.5));
        assert_eq!(parse_steal("cpu0 1 2 3\n"), None);
    }

    #[test]
    fn processes_are_listed_by_pid_with_this_one_among_them_once() {
        let pids: Vec<String> = process_dirs().map(|(pid, _)| pid).collect();
        let me = std::process::id().to_string();
        assert_eq!(pids.iter().filter(|p| **p == me).count(), 1, "{pids:?}");
        assert!(pids.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())));
        // This process's own threads are read under `threads`, the others' under their names.
        let w = cpu_waits();
        assert!(!w.threads.is_empty());
        assert!(!w.processes.is_empty(), "some other process runs");
    }

    #[test]
    fn the_line_gives_each_threads_share_between_two_readings() {
        let reading = |run: f64, wait: f64, slices: u64, some: f64| CpuWaits {
            threads: [("tokio-rt-worker".to_owned(), (run, wait, slices))].into(),
            processes: [("redis-server".to_owned(), (run / 2.0, wait / 2.0, slices))].into(),
            machine_some: some,
            steal: some / 2.0,
        };
        let line = cpu_wait_line(
            &reading(1.0, 1.0, 100, 2.0),
            &reading(7.0, 3.0, 1100, 2.0),
            10.0,
        );
        assert!(
            line.starts_with("a task on the machine waited for a core 0 % of the run"),
            "{line}"
        );
        assert!(
            line.contains("threads by name: tokio-rt-worker: ran 0.60, waited 0.20 cores, 2.00 ms a wait; the other processes: redis-server: ran 0.30, waited 0.10 cores, 1.00 ms a wait"),
            "{line}"
        );
        let line = cpu_wait_line(&reading(0.0, 0.0, 0, 1.0), &reading(0.0, 0.0, 0, 6.0), 10.0);
        assert!(line.contains("50 % of the run"), "{line}");
        assert!(
            line.contains("the hypervisor took 0.25 cores (steal)"),
            "{line}"
        );
        assert!(
            line.ends_with("threads by name: none; the other processes: none"),
            "an idle thread or process is left out: {line}"
        );
    }
}
