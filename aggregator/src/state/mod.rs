//! The state store of hot-state layout v2 (issue 21; `docs/design/hot-state-v2.md` §3).
//! **Not wired yet**: the running aggregator still folds into Redis increments
//! ([`crate::fold`]). What is here is the in-memory part, pure and tested on its own:
//!
//! - [`account::AccountState`]: one account's live windows, sessions and distinct members,
//!   folded in place, event by event, with no Redis call and no key string per event;
//! - its snapshot: the absolute fields of the account's `cur` hash and session hashes in the
//!   layout of [`meterline_schemas::keys::hot`], so a write is one `HSET` per hash however many
//!   events it covers, and writing it twice changes nothing.
//!
//! - [`writer::StateWriter`]: the snapshot, the partition's claim and checkpoint written by
//!   Lua scripts that fence a writer from an older assignment (`tests/hot_state_fencing.rs`).
//!
//! `aggregator/tests/hot_layout.rs` checks that what the snapshot holds gives the read path the
//! same answers as today's keys; `benches/fold.rs` (`state store`) measures the fold.
//! The partition's deduplication and flush policy, loading an account back from Redis, and the
//! wiring into the consumer follow (design §6, commits 4–7).

pub mod account;
pub mod writer;
