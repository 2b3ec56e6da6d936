//! Prometheus metrics for the aggregator. No account ids in labels.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

#[derive(Clone)]
pub struct AggregatorMetrics {
    pub registry: Registry,
    /// Records read, by stream (usage, account).
    pub records: IntCounterVec,
    /// Events by outcome: counted, duplicate, dead_lettered.
    pub events: IntCounterVec,
    pub batch_failures: IntCounter,
    pub batch_seconds: Histogram,
    pub redis_commands: IntCounter,
    pub last_commit_unix: IntGauge,
    /// Partitions the consumer group gave this aggregator, as of its last look (every second
    /// while it waits for records).
    pub assigned_partitions: IntGauge,
    pub state_accounts: IntGauge,
    pub state_evictions: IntCounter,
    pub partitions_dropped: IntCounterVec,
    /// Wall time spent in each stage of the batch loop: where a slow aggregator waits.
    pub stage_seconds: CounterVec,
    /// How long a flush of one partition took from its start, `until` its snapshots were
    /// written (what the read path sees) and until its checkpoint was (which waits for
    /// ClickHouse): the hot state's share of freshness after the fold.
    pub flush_seconds: HistogramVec,
    /// How long one snapshot's write took from its call until Redis's answer was read: Redis's
    /// own time for the script, the calls queued before it on the server and on the connection,
    /// and the wait of the task that reads the answer for a core. A flush of `n` accounts
    /// takes about `n / in_flight` of them.
    pub snapshot_write_seconds: Histogram,
    /// Usage events per ClickHouse insert: batches that wait while an insert runs go in the next
    /// one together (`crate::inserter`).
    pub insert_events: Histogram,
    /// Usage events handed to the ClickHouse insert task and not yet inserted. While ClickHouse
    /// stalls it climbs; past `aggregator.clickhouse_backlog_events` (or
    /// `crate::inserter::MAX_WAITING_BATCHES` batches) the events wait as their offsets, to be
    /// read back from Kafka (`crate::refetch`), and the consumer goes on. A
    /// climb that does not stop is a ClickHouse that is down or slower than the traffic; the
    /// log must keep the events until it catches up (the topic's retention).
    pub clickhouse_waiting_events: IntGauge,
    /// How old each record was when the consumer received it, by its Kafka timestamp (set by
    /// its producer, ingest, when it was produced), by stream: the broker's share of the hot
    /// state's freshness, before the aggregator's (`flush_seconds`). Across hosts it includes
    /// their clocks' skew.
    pub record_age_seconds: HistogramVec,
}

/// The stages of the batch loop, in order, as `stage` label values.
/// The insert task's time inserting into ClickHouse, in `stage_seconds` beside the loop's
/// [`STAGES`] but not one of them: the task runs alongside the loop (`crate::inserter`).
pub const INSERT_STAGE: &str = "clickhouse_insert";

pub const STAGES: [&str; 10] = [
    "collect",
    "decode",
    "dedup",
    "clickhouse",
    "load",
    "fold",
    "accounts",
    "flush",
    "flush_wait",
    "commit",
];

impl AggregatorMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let records = IntCounterVec::new(
            Opts::new("meterline_aggregator_records_total", "Kafka records read"),
            &["stream"],
        )
        .expect("metric");
        let events = IntCounterVec::new(
            Opts::new(
                "meterline_aggregator_events_total",
                "Events by outcome: counted, duplicate, dead_lettered",
            ),
            &["outcome"],
        )
        .expect("metric");
        let batch_failures = IntCounter::new(
            "meterline_aggregator_batch_failures_total",
            "Failed attempts to write a batch (retried)",
        )
        .expect("metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "meterline_aggregator_batch_seconds",
                "Time to write one batch to every sink",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("metric");
        let redis_commands = IntCounter::new(
            "meterline_aggregator_redis_commands_total",
            "Script calls the hot state store sent to Redis (claims, account loads, snapshots, checkpoints)",
        )
        .expect("metric");
        let last_commit_unix = IntGauge::new(
            "meterline_aggregator_last_commit_unixtime",
            "When offsets were last committed (handed to the client: usage and account offsets are committed in the background, and a failed commit is logged)",
        )
        .expect("metric");
        let assigned_partitions = IntGauge::new(
            "meterline_aggregator_assigned_partitions",
            "Partitions of the event topics assigned to this aggregator by the consumer group",
        )
        .expect("metric");
        let state_accounts = IntGauge::new(
            "meterline_aggregator_state_accounts",
            "Accounts the hot state store holds in memory, over every usage partition",
        )
        .expect("metric");
        let state_evictions = IntCounter::new(
            "meterline_aggregator_state_evictions_total",
            "Accounts forgotten after a flush to keep within the store's resident budget (loaded again at their next event)",
        )
        .expect("metric");
        let partitions_dropped = IntCounterVec::new(
            Opts::new(
                "meterline_aggregator_partitions_dropped_total",
                "Usage partitions whose state was dropped and read again from the checkpoint: fenced (a newer owner), conflict (a snapshot that did not continue the stored one), lost (a flush task that failed)",
            ),
            &["reason"],
        )
        .expect("metric");
        let stage_seconds = CounterVec::new(
            Opts::new(
                "meterline_aggregator_stage_seconds_total",
                "Wall time spent per stage of the batch loop (collect, decode, dedup, clickhouse, load, fold, accounts, flush, flush_wait, commit), and by the ClickHouse insert task alongside it (clickhouse_insert)",
            ),
            &["stage"],
        )
        .expect("metric");
        let flush_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meterline_aggregator_flush_seconds",
                "Time from the start of a partition's flush until its snapshots were written (until=snapshots) and until its checkpoint was (until=checkpoint); and from the oldest change it holds (the first event folded after the partition's previous flush was taken) until its snapshots were written (until=snapshots_since_change), the longest any of its events waited in the aggregator once folded",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
            ]),
            &["until"],
        )
        .expect("metric");
        let snapshot_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "meterline_aggregator_snapshot_write_seconds",
                "Time from one account snapshot's call to Redis until its answer was read (Redis's own time, the calls queued before it, and the wait for a core to read the answer)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("metric");
        let insert_events = Histogram::with_opts(
            HistogramOpts::new(
                "meterline_aggregator_clickhouse_insert_events",
                "Usage events per ClickHouse insert (batches waiting while an insert runs go in the next one together)",
            )
            .buckets(vec![
                100.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0, 60_000.0,
                100_000.0, 150_000.0,
            ]),
        )
        .expect("metric");
        let clickhouse_waiting_events = IntGauge::new(
            "meterline_aggregator_clickhouse_waiting_events",
            format!(
                "Usage events handed to the ClickHouse insert task and not yet inserted; past aggregator.clickhouse_backlog_events (or {} batches) they wait as offsets and are read back from Kafka when ClickHouse catches up",
                crate::inserter::MAX_WAITING_BATCHES
            ),
        )
        .expect("metric");
        let record_age_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meterline_aggregator_record_age_seconds",
                "Age of each record when the consumer received it, from its Kafka timestamp (its producer's clock, ingest's): the broker's share of the hot state's freshness",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["stream"],
        )
        .expect("metric");
        for m in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events.clone()),
            Box::new(batch_failures.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(redis_commands.clone()),
            Box::new(last_commit_unix.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(assigned_partitions.clone()),
            Box::new(state_accounts.clone()),
            Box::new(state_evictions.clone()),
            Box::new(partitions_dropped.clone()),
            Box::new(flush_seconds.clone()),
            Box::new(snapshot_write_seconds.clone()),
            Box::new(insert_events.clone()),
            Box::new(clickhouse_waiting_events.clone()),
            Box::new(record_age_seconds.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Self {
            registry,
            records,
            events,
            batch_failures,
            batch_seconds,
            redis_commands,
            last_commit_unix,
            assigned_partitions,
            state_accounts,
            state_evictions,
            partitions_dropped,
            stage_seconds,
            flush_seconds,
            snapshot_write_seconds,
            insert_events,
            clickhouse_waiting_events,
            record_age_seconds,
        }
    }

    /// Adds the time since `started` to `stage`, and restarts the clock.
    pub fn lap(&self, stage: &'static str, started: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.stage_seconds
            .with_label_values(&[stage])
            .inc_by((now - *started).as_secs_f64());
        *started = now;
    }

    /// Adds `took` to `stage` and leaves it out of the clock's next lap: a wait inside another
    /// stage, counted apart from it.
    pub fn set_apart(
        &self,
        stage: &'static str,
        took: std::time::Duration,
        clock: &mut std::time::Instant,
    ) {
        self.stage_seconds
            .with_label_values(&[stage])
            .inc_by(took.as_secs_f64());
        *clock += took;
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for AggregatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
