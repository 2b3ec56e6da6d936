//! Writing the state store to Redis in layout v2, with fencing (design §2.4–2.5). **Not wired
//! into the running aggregator yet**; `tests/hot_state_fencing.rs` runs two writers against a
//! real Redis.
//!
//! Four scripts, each touching one slot:
//! - `claim.lua` raises the partition's epoch (`{pt:N}ckpt:<topic>` field `e`) and returns it
//!   with the checkpointed offset: each new owner of a partition writes under a higher epoch;
//! - `claim_account.lua` raises an account's `_e` to the writer's epoch, or answers `FENCED`;
//! - `snap.lua` writes an account's absolute snapshot behind the guard its header describes:
//!   a lower epoch is `FENCED`, an offset already stored is `HAVE`, a snapshot that does not
//!   continue the stored one is `CONFLICT`;
//! - `ckpt.lua` writes the partition's checkpoint (offset, scorer queue, account index, seen
//!   ids) only while the partition's epoch is still the writer's.
//!
//! A zombie (a writer that lost its partition but still holds state) is stopped in two places:
//! its checkpoint is refused in the partition's slot, and its snapshots are refused in the slot
//! of every account the new owner has claimed, written or loaded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::WindowCounters;
use redis::aio::ConnectionLike;
use redis::Script;

use super::account::{AccountState, Snapshot};
use crate::SinkError;

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
static CLAIM_ACCOUNT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("claim_account.lua")));
static SNAP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("snap.lua")));
static CKPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("ckpt.lua")));

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

/// Writes one partition's accounts and checkpoint.
pub struct StateWriter<C> {
    conn: C,
    keys: HotKeys,
    topic: String,
    partition: i32,
}

impl<C: ConnectionLike + Send> StateWriter<C> {
    pub fn new(conn: C, keys: HotKeys, topic: impl Into<String>, partition: i32) -> Self {
        Self {
            conn,
            keys,
            topic: topic.into(),
            partition,
        }
    }

    /// `_tp` of the snapshots this writer stores.
    fn topic_partition(&self) -> String {
        format!("{}:{}", self.topic, self.partition)
    }

    /// Takes the partition: its new epoch, and the offset checkpointed so far (-1 for none).
    pub async fn claim(&mut self) -> Result<(i64, i64), SinkError> {
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
        let reply: Vec<String> = CLAIM_ACCOUNT
            .key(self.keys.cur(account))
            .arg(epoch)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(match reply.as_slice() {
            [ok, tp, o] if ok == "OK" => Some(if *tp == self.topic_partition() {
                o.parse().unwrap_or(-1)
            } else {
                -1
            }),
            _ => None,
        })
    }

    /// Claims an account for `epoch` and loads it back ([`AccountState::load`]): its state and
    /// the offset its snapshot holds in this partition (-1 for none, and then an empty state),
    /// or `None` if a newer epoch holds it.
    pub async fn load_account(
        &mut self,
        epoch: i64,
        account: &str,
    ) -> Result<Option<(AccountState, i64)>, SinkError> {
        let Some(o) = self.claim_account(epoch, account).await? else {
            return Ok(None);
        };
        if o < 0 {
            return Ok(Some((AccountState::default(), -1)));
        }
        let cur: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.cur(account))
            .query_async(&mut self.conn)
            .await?;
        let cur: WindowCounters = cur
            .into_iter()
            .filter(|(f, _)| !f.starts_with('_'))
            .filter_map(|(f, v)| Some((f, v.parse().ok()?)))
            .collect();
        let mut months = BTreeSet::new();
        let mut sessions = HashMap::new();
        for field in cur.keys() {
            if let Some(session) = field.strip_prefix("s:") {
                let h: WindowCounters = redis::cmd("HGETALL")
                    .arg(self.keys.session(account, session))
                    .query_async(&mut self.conn)
                    .await?;
                sessions.insert(session.to_owned(), h);
            } else if let Some(stamp) = field.strip_prefix("M:").and_then(|r| r.get(..6)) {
                months.extend(Grain::Month.parse_stamp(stamp));
            }
        }
        let mut dims = BTreeMap::new();
        for month in months {
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(self.keys.dims(account, month))
                .query_async(&mut self.conn)
                .await?;
            dims.insert(month, fields);
        }
        Ok(Some((AccountState::load(&cur, &sessions, &dims), o)))
    }

    /// Writes `state`, which continues the snapshot stored at `o_prev` up to the account's
    /// event at `o_new`, as of `now`. Its new members are marked written once stored.
    pub async fn write_account(
        &mut self,
        epoch: i64,
        account: &str,
        (o_prev, o_new): (i64, i64),
        state: &mut AccountState,
        now: DateTime<Utc>,
    ) -> Result<Written, SinkError> {
        let month = Grain::Month.window_start(now);
        let Snapshot {
            cur,
            dims,
            sessions,
        } = state.snapshot(now);
        let mut cur: Vec<(String, i64)> = cur.into_iter().collect();
        cur.sort_unstable();

        let mut call = SNAP.prepare_invoke();
        call.key(self.keys.cur(account));
        for m in dims.keys() {
            call.key(self.keys.dims(account, *m));
        }
        for session in &sessions {
            call.key(self.keys.session(account, &session.id));
        }
        call.arg(epoch)
            .arg(self.topic_partition())
            .arg(o_prev)
            .arg(o_new)
            .arg(Grain::Month.expires_at(month))
            .arg(cur.len());
        for (f, v) in &cur {
            call.arg(f).arg(v);
        }
        call.arg(dims.len());
        for (m, fields) in &dims {
            call.arg(fields.len())
                .arg(fields)
                .arg(Grain::Month.expires_at(*m));
        }
        call.arg(sessions.len());
        for session in &sessions {
            call.arg(session.fields.len());
            for (f, v) in &session.fields {
                call.arg(f).arg(v);
            }
            call.arg(session.expires_at);
        }
        let reply: String = call.invoke_async(&mut self.conn).await?;
        let written = match reply.as_str() {
            "OK" => Written::Applied,
            "HAVE" => Written::Have,
            "CONFLICT" => Written::Conflict,
            "FENCED" => Written::Fenced,
            other => {
                return Err(SinkError::Redis(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "snap.lua answered something unknown",
                    other.to_owned(),
                ))))
            }
        };
        if matches!(written, Written::Applied | Written::Have) {
            state.members_written();
        }
        Ok(written)
    }

    /// Checkpoints the partition at `o_new` with the accounts changed since the last one (for
    /// the scorer's queue and the account index); false if a newer epoch holds the partition.
    pub async fn checkpoint(
        &mut self,
        epoch: i64,
        o_new: i64,
        changed: &[&str],
        seen: &BTreeMap<DateTime<Utc>, Vec<String>>,
    ) -> Result<bool, SinkError> {
        let mut call = CKPT.prepare_invoke();
        call.key(self.keys.checkpoint(self.partition, &self.topic))
            .key(self.keys.dirty(self.partition))
            .key(self.keys.accounts(self.partition));
        for day in seen.keys() {
            call.key(self.keys.seen(self.partition, *day));
        }
        call.arg(epoch)
            .arg(o_new)
            .arg(changed.len())
            .arg(changed)
            .arg(changed.len())
            .arg(changed)
            .arg(seen.len());
        for (day, ids) in seen {
            call.arg(ids.len()).arg(ids).arg(
                day.timestamp() + 86_400 + meterline_schemas::keys::SEEN_RETENTION_AFTER_DAY_SECS,
            );
        }
        let reply: String = call.invoke_async(&mut self.conn).await?;
        Ok(reply == "OK")
    }
}
