//! Writing the state store to Redis in layout v2, with fencing (design §2.4–2.5);
//! `tests/hot_state_fencing.rs` runs two writers against a real Redis.
//!
//! Four scripts, each touching one slot:
//! - `claim.lua` raises the partition's epoch (`{pt:N}ckpt:<topic>` field `e`) and returns it
//!   with the checkpointed offset: each new owner of a partition writes under a higher epoch;
//! - `claim_account.lua` raises the epoch in an account's `cur` header to the writer's, or
//!   answers `FENCED` (and first moves a `cur` hash written before 2026-12-05 into the value);
//! - `snap.lua` writes an account's absolute snapshot behind the guard its header describes:
//!   a lower epoch is `FENCED`, an offset already stored is `HAVE`, a snapshot that does not
//!   continue the stored one is `CONFLICT`;
//! - `ckpt.lua` writes the partition's checkpoint (offset, scorer queue, account index, seen
//!   ids) only while the partition's epoch is still the writer's.
//!
//! A zombie (a writer that lost its partition but still holds state) is stopped in two places:
//! its checkpoint is refused in the partition's slot, and its snapshots are refused in the slot
//! of every account the new owner has claimed, written or loaded.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use meterline_schemas::keys::hot::{self, HotKeys};
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::WindowCounters;
use redis::aio::ConnectionLike;
use redis::Script;

use super::account::{AccountState, MemberSet, Snapshot};
use crate::SinkError;

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
/// `cur_header.lua`, `cur`'s header, is the prelude of the two scripts that read or write it.
static CLAIM_ACCOUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("cur_header.lua"),
        include_str!("claim_account.lua")
    ))
});
/// `sliced.lua` is the two writing scripts' shared prelude.
static SNAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("sliced.lua"),
        include_str!("cur_header.lua"),
        include_str!("snap.lua")
    ))
});
static CKPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("sliced.lua"),
        include_str!("ckpt.lua")
    ))
});

/// What `snap.lua` did with an account's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written.
    Applied,
    /// Already stored up to this offset (a repeated call): nothing to do.
    Have,
    /// The stored snapshot is not the one this writer continued: reload the account.
    Conflict,
    /// A newer assignment owns the account: stop writing this partition.
    Fenced,
}

/// Writes one partition's accounts and checkpoint. Clones share the connection.
#[derive(Clone)]
pub struct StateWriter<C> {
    conn: C,
    keys: HotKeys,
    topic: String,
    partition: i32,
    /// Where each snapshot's round trip goes, once [`Self::timed`] was called.
    round_trips: Option<prometheus::Histogram>,
}

impl<C: ConnectionLike + Send> StateWriter<C> {
    pub fn new(conn: C, keys: HotKeys, topic: impl Into<String>, partition: i32) -> Self {
        Self {
            conn,
            keys,
            topic: topic.into(),
            partition,
            round_trips: None,
        }
    }

    /// Observes in `h` how long each snapshot took from its call until its answer was read.
    pub fn timed(mut self, h: Option<prometheus::Histogram>) -> Self {
        self.round_trips = h;
        self
    }

    /// `_tp` of the snapshots this writer stores.
    fn topic_partition(&self) -> String {
        format!("{}:{}", self.topic, self.partition)
    }

    /// Takes the partition: its new epoch, and the offset checkpointed so far (-1 for none).
    /// The partition's share of the scorer's queue is listed for the scorer first.
    pub async fn claim(&mut self) -> Result<(i64, i64), SinkError> {
        redis::cmd("SADD")
            .arg(self.keys.scorer_queues())
            .arg(self.keys.dirty(self.partition))
            .query_async::<()>(&mut self.conn)
            .await?;
        let key = self.keys.checkpoint(self.partition, &self.topic);
        Ok(CLAIM.key(key).invoke_async(&mut self.conn).await?)
    }

    /// Takes an account for `epoch`: the offset of its stored snapshot in this partition (-1 for
    /// none), or `None` if a newer epoch holds it.
    pub async fn claim_account(
        &mut self,
        epoch: i64,
        account: &str,
    ) -> Result<Option<i64>, SinkError> {
        Ok(self
            .claim_and_read(epoch, account, false)
            .await?
            .map(|(o, _)| o))
    }

    /// Claims an account for `epoch` and loads it back ([`AccountState::load`]), in one call: its
    /// state and the offset its snapshot holds in this partition (-1 for none, and then an empty
    /// state), or `None` if a newer epoch holds it.
    pub async fn load_account(
        &mut self,
        epoch: i64,
        account: &str,
    ) -> Result<Option<(AccountState, i64)>, SinkError> {
        Ok(self
            .claim_and_read(epoch, account, true)
            .await?
            .map(|(o, state)| (state, o)))
    }

    async fn claim_and_read(
        &mut self,
        epoch: i64,
        account: &str,
        load: bool,
    ) -> Result<Option<(i64, AccountState)>, SinkError> {
        type Reply = (
            String,
            String,
            String,
            Vec<String>,
            Vec<(String, Vec<String>)>,
            Vec<(String, Vec<String>)>,
        );
        let (status, tp, o, cur, sessions, dims): Reply = CLAIM_ACCOUNT
            .key(self.keys.cur(account))
            .key(self.keys.cur_hash(account))
            .arg(epoch)
            .arg(self.topic_partition())
            .arg(if load { "1" } else { "0" })
            .arg(hot::CUR_HEADER_MAX)
            .invoke_async(&mut self.conn)
            .await?;
        if status != "OK" {
            return Ok(None);
        }
        let o = if tp == self.topic_partition() {
            o.parse().unwrap_or(-1)
        } else {
            -1
        };
        if !load || o < 0 {
            return Ok(Some((o, AccountState::default())));
        }
        let counters = |flat: Vec<String>| -> WindowCounters {
            flat.chunks_exact(2)
                .filter_map(|kv| Some((kv[0].clone(), kv[1].parse().ok()?)))
                .collect()
        };
        let sessions: HashMap<String, WindowCounters> = sessions
            .into_iter()
            .map(|(id, flat)| (id, counters(flat)))
            .collect();
        let dims: BTreeMap<DateTime<Utc>, Vec<String>> = dims
            .into_iter()
            .filter_map(|(stamp, fields)| Some((Grain::Month.parse_stamp(&stamp)?, fields)))
            .collect();
        Ok(Some((
            o,
            AccountState::load(&counters(cur), &sessions, &dims),
        )))
    }

    /// Writes `state`, which continues the snapshot stored at `o_prev` up to the account's
    /// event at `o_new`, as of `now`. Once stored (or found stored already), the state forgets
    /// what the snapshot wrote once ([`AccountState::written`]).
    pub async fn write_account(
        &mut self,
        epoch: i64,
        account: &str,
        (o_prev, o_new): (i64, i64),
        state: &mut AccountState,
        now: DateTime<Utc>,
    ) -> Result<Written, SinkError> {
        self.write(epoch, account, (Some(o_prev), o_new), state, now)
            .await
    }

    /// Writes a state that holds every event of the account ([`AccountState::whole`]) as
    /// stored up to `o`, whatever is stored: `rebuild-hot-state`, with the aggregators stopped.
    /// Only a newer epoch stops it.
    pub async fn write_whole(
        &mut self,
        epoch: i64,
        account: &str,
        o: i64,
        state: &mut AccountState,
        now: DateTime<Utc>,
    ) -> Result<Written, SinkError> {
        self.write(epoch, account, (None, o), state, now).await
    }

    async fn write(
        &mut self,
        epoch: i64,
        account: &str,
        (o_prev, o_new): (Option<i64>, i64),
        state: &mut AccountState,
        now: DateTime<Utc>,
    ) -> Result<Written, SinkError> {
        let written = self
            .write_taken(epoch, account, (o_prev, o_new), &state.snapshot(now))
            .await?;
        if matches!(written, Written::Applied | Written::Have) {
            state.written(now);
        }
        Ok(written)
    }

    /// Writes a snapshot taken from an account's state (which has already forgotten what it
    /// writes once: [`AccountState::written`]), continuing the one stored at `o_prev` up to the
    /// account's event at `o_new`. Writing it again answers `HAVE`.
    pub async fn write_snapshot(
        &mut self,
        epoch: i64,
        account: &str,
        (o_prev, o_new): (i64, i64),
        snapshot: &Snapshot,
    ) -> Result<Written, SinkError> {
        self.write_taken(epoch, account, (Some(o_prev), o_new), snapshot)
            .await
    }

    async fn write_taken(
        &mut self,
        epoch: i64,
        account: &str,
        (o_prev, o_new): (Option<i64>, i64),
        snapshot: &Snapshot,
    ) -> Result<Written, SinkError> {
        let call = self.snap_call(epoch, account, (o_prev, o_new), snapshot);
        let called = std::time::Instant::now();
        let reply: String = call.invoke_async(&mut self.conn).await?;
        if let Some(h) = &self.round_trips {
            h.observe(called.elapsed().as_secs_f64());
        }
        match reply.as_str() {
            "OK" => Ok(Written::Applied),
            "HAVE" => Ok(Written::Have),
            "CONFLICT" => Ok(Written::Conflict),
            "FENCED" => Ok(Written::Fenced),
            other => Err(SinkError::Redis(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "snap.lua answered something unknown",
                other.to_owned(),
            )))),
        }
    }

    /// `snap.lua`'s keys and arguments for `snapshot` (the layout is in the script's header).
    fn snap_call(
        &self,
        epoch: i64,
        account: &str,
        (o_prev, o_new): (Option<i64>, i64),
        snapshot: &Snapshot,
    ) -> redis::ScriptInvocation<'static> {
        let keys = &self.keys;
        // KEYS, each once: cur and its former hash first, then in order of first use.
        let mut names: Vec<String> = vec![keys.cur(account), keys.cur_hash(account)];
        let mut index: HashMap<String, usize> =
            HashMap::from([(names[0].clone(), 1), (names[1].clone(), 2)]);
        let mut key = |name: String| -> usize {
            *index.entry(name.clone()).or_insert_with(|| {
                names.push(name);
                names.len()
            })
        };
        let month_expiry = |m: DateTime<Utc>| Grain::Month.expires_at(m);

        let mut a: Vec<Vec<u8>> = Vec::new();
        fn push(a: &mut Vec<Vec<u8>>, v: impl redis::ToRedisArgs) {
            a.extend(v.to_redis_args());
        }
        push(&mut a, epoch);
        push(&mut a, self.topic_partition());
        match o_prev {
            Some(o) => push(&mut a, o),
            None => push(&mut a, "force"),
        }
        push(&mut a, o_new);
        fn expiry(a: &mut Vec<Vec<u8>>, at: Option<i64>) {
            match at {
                Some(at) => push(a, at),
                // snap.lua leaves the key's expiry as it is.
                None => push(a, ""),
            }
        }
        push(&mut a, snapshot.cur_expires_at);
        push(&mut a, hot::CUR_HEADER_MAX);
        a.push(hot::cur_value(
            epoch,
            o_new,
            &self.topic_partition(),
            &snapshot.cur,
        ));

        push(&mut a, snapshot.dims.len());
        for (m, fields) in &snapshot.dims {
            push(&mut a, key(keys.dims(account, *m)));
            push(&mut a, fields.len());
            for f in fields {
                push(&mut a, f);
            }
            expiry(
                &mut a,
                snapshot.dims_expiry.contains(m).then(|| month_expiry(*m)),
            );
        }
        push(&mut a, snapshot.sessions.len());
        for session in &snapshot.sessions {
            push(&mut a, key(keys.session(account, &session.id)));
            push(&mut a, session.fields.len());
            for (f, v) in &session.fields {
                push(&mut a, f);
                push(&mut a, v);
            }
            expiry(&mut a, session.set_expiry.then_some(session.expires_at));
        }
        push(&mut a, snapshot.moves.len());
        for m in &snapshot.moves {
            push(&mut a, key(keys.closed(account, m.grain, m.start)));
            push(&mut a, m.fields.len());
            for (f, v) in &m.fields {
                push(&mut a, f);
                push(&mut a, v);
            }
            push(&mut a, m.grain.expires_at(m.start));
        }
        push(&mut a, snapshot.late.len());
        for w in &snapshot.late {
            push(&mut a, key(keys.closed(account, w.grain, w.start)));
            push(&mut a, w.fields.len());
            for (f, v) in &w.fields {
                push(&mut a, f);
                push(&mut a, v);
            }
            push(&mut a, w.grain.expires_at(w.start));
        }
        push(&mut a, snapshot.late_members.len());
        for m in &snapshot.late_members {
            let (set, expires) = match m.set {
                MemberSet::ClosedMonth(month) => (
                    keys.closed(account, Grain::Month, month),
                    month_expiry(month),
                ),
                MemberSet::Dims(month) => (keys.dims(account, month), month_expiry(month)),
            };
            push(&mut a, key(set));
            push(&mut a, &m.field);
            push(&mut a, key(keys.closed(account, m.grain, m.start)));
            push(&mut a, &m.count_field);
            push(&mut a, expires);
        }

        let mut call = SNAP.prepare_invoke();
        for name in names {
            call.key(name);
        }
        for v in a {
            call.arg(v);
        }
        call
    }

    /// The partition's epoch and checkpointed offset as stored (0 and -1 when unset), without
    /// claiming it.
    pub async fn stored_checkpoint(&mut self) -> Result<(i64, i64), SinkError> {
        let (e, o): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys.checkpoint(self.partition, &self.topic))
            .arg("e")
            .arg("o")
            .query_async(&mut self.conn)
            .await?;
        Ok((e.unwrap_or(0), o.unwrap_or(-1)))
    }

    /// The ids the checkpoints hold for events of the day starting `day` (in no particular
    /// order, an id possibly more than once), with those of the set that held them before the
    /// [`super::seen`] format.
    pub async fn seen_ids(&mut self, day: DateTime<Utc>) -> Result<Vec<String>, SinkError> {
        let key = self.keys.counted_ids(self.partition, day);
        let values: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await?;
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.seen(self.partition, day))
            .query_async(&mut self.conn)
            .await?;
        for value in values {
            super::seen::decode_into(&value, &mut ids)
                .map_err(|e| SinkError::HotState(format!("{key}: {e}")))?;
        }
        Ok(ids)
    }

    /// Checkpoints the partition at `o_new` with the accounts changed since the last one (for
    /// the scorer's queue and the account index); false if a newer epoch holds the partition.
    pub async fn checkpoint(
        &mut self,
        epoch: i64,
        o_new: i64,
        changed: &[&str],
        seen: &BTreeMap<DateTime<Utc>, super::seen::Ids>,
    ) -> Result<bool, SinkError> {
        let mut call = CKPT.prepare_invoke();
        call.key(self.keys.checkpoint(self.partition, &self.topic))
            .key(self.keys.dirty(self.partition))
            .key(self.keys.accounts(self.partition));
        for day in seen.keys() {
            call.key(self.keys.counted_ids(self.partition, *day));
        }
        call.arg(epoch)
            .arg(o_new)
            .arg(changed.len())
            .arg(changed)
            .arg(changed.len())
            .arg(changed)
            .arg(seen.len());
        for (day, ids) in seen {
            call.arg(ids.value()).arg(
                day.timestamp() + 86_400 + meterline_schemas::keys::SEEN_RETENTION_AFTER_DAY_SECS,
            );
        }
        let reply: String = call.invoke_async(&mut self.conn).await?;
        Ok(reply == "OK")
    }
}
