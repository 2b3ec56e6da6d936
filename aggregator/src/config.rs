use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    pub group_id: String,
    /// Static group membership (`group.instance.id`). A restarted aggregator that comes back
    /// with the same id takes over its partitions at once instead of waiting for the broker to
    /// expire the dead member (tansu does not expire it at all). Every aggregator running at
    /// the same time needs its own id; empty turns static membership off.
    pub instance_id: String,
    /// A batch is written when it holds this many records…
    pub batch_max_events: usize,
    /// …or when its first record has waited this long (or sooner: once no further record is
    /// ready for 5 ms, the fetch's records are all in).
    pub batch_max_wait_ms: u64,
    /// Upper bound of the backoff between attempts to write a failed batch.
    pub retry_max_backoff_ms: u64,
    /// Accounts the hot state store keeps in memory over all its partitions. Past it, after a
    /// flush and before a batch's accounts are loaded, the least recently used accounts whose
    /// state is written are forgotten; each is loaded again from Redis at its next event (one
    /// call). Accounts with events not yet written stay; a partition past its share flushes
    /// them at once and waits for them to be written before loading the next batch's accounts,
    /// so the store holds at most this and one batch's accounts.
    pub state_max_accounts: usize,
    /// Snapshots a partition's flush sends to Redis at a time (`FlushPolicy::in_flight`). More
    /// shortens a flush while Redis has room, so the quota counters follow the events sooner
    /// under load, at the price of more built snapshots held at once (BENCHMARKS.md measures 8,
    /// 16 and 32).
    pub state_snapshots_in_flight: usize,
    /// Usage events folded and not yet in ClickHouse kept in memory for the insert task (about
    /// 0.5 KB each; 150,000 by default, room for the inserts to grow while ClickHouse is
    /// behind). Past them, or past `crate::inserter::MAX_WAITING_BATCHES` batches, a stall's
    /// events wait as their offsets (bytes each) and are read back from Kafka when ClickHouse
    /// catches up (`crate::refetch`), at most `crate::inserter::READ_BACK_EVENTS` (60,000) at
    /// a time. A ClickHouse stall holds back only the checkpoints (and the offsets committed):
    /// the quota counters keep following the events until a partition has
    /// `FlushPolicy::max_seen` (500,000) ids waiting for its checkpoint, about 5 minutes at
    /// 10,000 events/s over 6 partitions and 50 minutes at 1,000.
    pub clickhouse_backlog_events: usize,
    /// How long an insert into ClickHouse may wait for more batches after its first, until it
    /// holds 7,500 events (`crate::inserter::GATHER_EVENTS`; an eighth of a smaller
    /// `clickhouse_backlog_events`). ClickHouse's cost per event falls steeply
    /// with the insert's size (each insert is a new part in `usage_events` and in every rollup,
    /// merged later), and only the checkpoints wait for it, not the hot state.
    pub clickhouse_insert_linger_ms: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            group_id: "meterline-aggregator".into(),
            instance_id: "aggregator-0".into(),
            batch_max_events: 20_000,
            batch_max_wait_ms: 100,
            retry_max_backoff_ms: 5_000,
            state_max_accounts: crate::state::partition::FlushPolicy::default().max_resident,
            state_snapshots_in_flight: crate::state::partition::FlushPolicy::default().in_flight,
            clickhouse_backlog_events: crate::inserter::MAX_WAITING_EVENTS,
            clickhouse_insert_linger_ms: 1_000,
        }
    }
}
