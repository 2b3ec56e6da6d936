//! The state store of hot-state layout v2 (issue 21; `docs/design/hot-state-v2.md` §3), which
//! the consumer drives through [`store::HotStore`]:
//!
//! - [`account::AccountState`]: one account's live windows, sessions and distinct members,
//!   folded in place, event by event, with no Redis call and no key string per event. Its
//!   snapshot holds the absolute fields of the account's `cur` hash and session hashes in the
//!   layout of [`meterline_schemas::keys::hot`], the windows that leave `cur` (moved whole to
//!   their closed hashes), and increments for windows already closed (late events), so a write
//!   is one script call however many events it covers;
//! - [`writer::StateWriter`]: the snapshot, the partition's claim and checkpoint, and loading an
//!   account back, written and read by Lua scripts that fence a writer from an older assignment
//!   (`tests/hot_state_fencing.rs`);
//! - [`partition::Partition`]: one Kafka partition's accounts, its deduplication (made durable
//!   by the checkpoint, which stores its ids in the [`seen`] format), and its flush policy.
//!
//! `aggregator/tests/hot_layout.rs` checks that what the snapshot holds gives the read path the
//! same answers as today's keys; `tests/state_store.rs` runs a partition through crashes,
//! replays, late events and window moves against a real Redis and compares every window with
//! sums computed from the log; `benches/fold.rs` (`state store`) measures the fold. Eviction and
//! the background claim follow (design §6, commit 7).

pub mod account;
pub mod partition;
pub mod seen;
pub mod store;
pub mod writer;

/// Runs CPU-bound work (folding a 20,000-event batch, copying what a flush writes) without
/// holding up the runtime's other tasks: in `meterline run` the aggregator shares the runtime
/// with ingest and the read path, whose quota checks would otherwise wait behind it. On a
/// multi-threaded runtime the worker hands its queue to another thread first; a current-thread
/// runtime (unit and integration tests) just runs it.
pub(crate) fn off_the_async_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
