//! The previous hot-state layout's writer. Since layout v2 ([`crate::state`]) no component uses
//! it: it stays with [`crate::fold`] as the reference of `tests/redis_sink.rs` and
//! `tests/hot_layout.rs`.
//!
//! It writes [`RedisDelta`]s through a Lua script, so that each delta's counters, set members,
//! expiries and "seen" marks land together or not at all.
//!
//! Redis serves one command at a time, and a script is one command: while it runs, every
//! gateway's quota check waits. Two things keep that wait short. The caller keeps each delta to
//! about a hundred Redis calls. And this writer keeps at
//! most [`SCRIPTS_IN_FLIGHT`] script calls outstanding: Redis reads a client's pipelined
//! commands 16 KB at a time and runs every complete one before it turns to the next client, so
//! with 32 scripts pipelined a check waited behind several of them on each turn. (At one script
//! in flight the quota check's p99 fell from 2.1–2.9 ms to 1.1 ms with the same scripts; see
//! BENCHMARKS.md and `scripts/redis-pipelining-probe.py`.)

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::stream::{FuturesOrdered, StreamExt};
use redis::aio::ConnectionManager;

use crate::fold::{occurred_at, RedisDelta};
use crate::SinkError;
use meterline_schemas::keys::{field, Grain, Keys};

/// Applies a flat list of operations:
///
/// * `H key n f1 d1 … fn dn` increments hash fields;
/// * `HC key at n f1 d1 …` the same for a hash whose every write increments `req`, so the write
///   that creates it is the one whose `req` comes back equal to its increment: that one sets the
///   expiry `at`, and later writes need not look at it;
/// * `S key n m1 … mn` adds set members;
/// * `SC key at n m1 …` the same, and when any member was new the key may be too, so it gets the
///   expiry `at` unless it has one (`NX`); a set that gained nothing already had its members,
///   and its expiry with them;
/// * `E key at` moves the expiry later (never earlier, so a late event cannot shorten the life
///   of a key that a newer one extended).
const APPLY_SCRIPT: &str = r#"
local i = 1
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  local key = ARGV[i + 1]
  -- `HC`, `SC` and `E` carry an expiry right after the key.
  local at = nil
  local j = i + 2
  if op == 'HC' or op == 'SC' or op == 'E' then
    at = ARGV[j]
    j = j + 1
  end
  if op == 'H' or op == 'HC' then
    local cnt = tonumber(ARGV[j])
    j = j + 1
    local created = false
    for _ = 1, cnt do
      local v = redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1])
      if at and ARGV[j] == 'req' and v == tonumber(ARGV[j + 1]) then
        created = true
      end
      j = j + 2
    end
    if created then
      redis.call('EXPIREAT', key, at)
    end
    i = j
  elseif op == 'S' or op == 'SC' then
    local first = j + 1
    local last = first + tonumber(ARGV[j]) - 1
    local added = 0
    local s = first
    while s <= last do
      local e = math.min(s + 499, last)
      added = added + redis.call('SADD', key, unpack(ARGV, s, e))
      s = e + 1
    end
    if at and added > 0 then
      redis.call('EXPIREAT', key, at, 'NX')
    end
    i = last + 1
  elseif op == 'E' then
    local later = tonumber(at)
    local cur = redis.call('EXPIRETIME', key)
    if cur == -1 or (cur >= 0 and cur < later) then
      redis.call('EXPIREAT', key, later)
    end
    i = j
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return 1
"#;

/// Largest number of arguments per script call: keeps each call small enough not to block
/// Redis for long.
const MAX_ARGS_PER_CALL: usize = 20_000;

/// Script calls sent and not yet answered, at most. One, so that a quota check arriving while
/// a script runs waits for that script and not for a queue of them. (Two in flight raised the
/// checks' p99 by about half a millisecond and did not raise aggregation throughput, which on
/// this machine is bound by the CPU the broker, ClickHouse and Redis share.)
pub const SCRIPTS_IN_FLIGHT: usize = 1;

/// Event ids per SMISMEMBER (about 0.25 ms of Redis time), sent one at a time like the scripts.
const SEEN_IDS_PER_CALL: usize = 200;

#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    keys: Keys,
}

impl RedisSink {
    pub async fn connect(url: &str, keys: Keys) -> Result<Self, SinkError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self { conn, keys })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Which of `events` (id, occurred_at) were already counted.
    pub async fn already_seen(
        &self,
        events: &[(&str, DateTime<Utc>)],
    ) -> Result<HashSet<String>, SinkError> {
        let mut by_day: HashMap<String, Vec<&str>> = HashMap::new();
        for (id, at) in events {
            by_day
                .entry(self.keys.seen(Grain::Day.window_start(*at)))
                .or_default()
                .push(id);
        }
        // One SMISMEMBER over a whole batch held Redis for 8 ms, and pipelined pieces held it
        // just as long; sent one at a time, other clients are served between them.
        let mut asked: Vec<(&str, &[&str])> = Vec::new();
        for (key, ids) in &by_day {
            for piece in ids.chunks(SEEN_IDS_PER_CALL) {
                asked.push((key, piece));
            }
        }
        let calls = asked
            .iter()
            .map(|(key, piece)| {
                let mut cmd = redis::cmd("SMISMEMBER");
                cmd.arg(*key).arg(*piece);
                cmd
            })
            .collect();
        let answers: Vec<Vec<bool>> = query_in_order(&self.conn, calls).await?;
        let mut seen = HashSet::new();
        for ((_, ids), flags) in asked.iter().zip(answers) {
            for (id, flag) in ids.iter().zip(flags) {
                if flag {
                    seen.insert((*id).to_owned());
                }
            }
        }
        Ok(seen)
    }

    /// Applies every delta, each atomically. A delta that fits in one script call needs no
    /// transaction: Redis runs a script whole, serving no one else meanwhile and never half of
    /// it. Those calls go [`SCRIPTS_IN_FLIGHT`] at a time, and Redis serves other clients (the
    /// gateways' quota checks) between them, which is why the caller keeps each delta small. A
    /// delta too big for one call goes in its own MULTI/EXEC. Returns the number of Redis
    /// commands sent.
    pub async fn apply_all(&self, deltas: &[RedisDelta]) -> Result<usize, SinkError> {
        let mut commands = 0;
        let mut single_calls = Vec::with_capacity(deltas.len());
        for delta in deltas {
            let mut calls = script_calls(delta);
            match calls.len() {
                0 => {}
                1 => single_calls.extend(calls.pop()),
                _ => commands += self.apply_calls_atomically(&calls).await?,
            }
        }
        commands += single_calls.len();
        let _: Vec<()> = query_in_order(&self.conn, single_calls).await?;
        Ok(commands)
    }

    /// Applies `delta` atomically. Returns the number of Redis commands sent (for the
    /// commands-per-event figure).
    pub async fn apply(&self, delta: &RedisDelta) -> Result<usize, SinkError> {
        self.apply_all(std::slice::from_ref(delta)).await
    }

    async fn apply_calls_atomically(&self, calls: &[redis::Cmd]) -> Result<usize, SinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for call in calls {
            pipe.add_command(call.clone()).ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(calls.len() + 2)
    }
}

/// Sends `calls` with at most [`SCRIPTS_IN_FLIGHT`] unanswered at a time; their answers in
/// order. Stops at the first error (calls already answered stay applied; each is atomic).
async fn query_in_order<T: redis::FromRedisValue + Send + 'static>(
    conn: &ConnectionManager,
    calls: Vec<redis::Cmd>,
) -> redis::RedisResult<Vec<T>> {
    let mut answers = Vec::with_capacity(calls.len());
    let mut pending = FuturesOrdered::new();
    for call in calls {
        if pending.len() >= SCRIPTS_IN_FLIGHT {
            answers.push(pending.next().await.expect("non-empty")?);
        }
        let mut conn = conn.clone();
        pending.push_back(async move { call.query_async::<T>(&mut conn).await });
    }
    while let Some(answer) = pending.next().await {
        answers.push(answer?);
    }
    Ok(answers)
}

/// Script calls under construction: a new call starts when the next operation would take the
/// current one past [`MAX_ARGS_PER_CALL`].
struct ScriptCalls {
    calls: Vec<redis::Cmd>,
    args: usize,
}

impl ScriptCalls {
    fn new() -> Self {
        Self {
            calls: Vec::new(),
            args: 0,
        }
    }

    /// The call to write an operation of `args` arguments into.
    fn room_for(&mut self, args: usize) -> &mut redis::Cmd {
        if self.calls.is_empty() || (self.args > 0 && self.args + args > MAX_ARGS_PER_CALL) {
            let mut call = redis::cmd("EVAL");
            call.arg(APPLY_SCRIPT).arg(0);
            self.calls.push(call);
            self.args = 0;
        }
        self.args += args;
        self.calls.last_mut().expect("just ensured")
    }
}

/// The script calls that apply `delta`: one unless it holds more than [`MAX_ARGS_PER_CALL`]
/// arguments, in which case very wide hashes and very large sets are split too, so that no
/// operation exceeds a call. None for an empty delta.
fn script_calls(delta: &RedisDelta) -> Vec<redis::Cmd> {
    if delta.is_empty() {
        return Vec::new();
    }
    let mut calls = ScriptCalls::new();
    // Fixed expiries ride on the write that creates their key; any other goes as a moving one,
    // which is just as right for a fixed value (it only ever sets a later expiry).
    let mut expiries: Vec<(&String, i64)> = delta.expiries.iter().map(|(k, at)| (k, *at)).collect();
    for (key, fields) in &delta.counters {
        let at = delta
            .fixed_expiries
            .get(key)
            .filter(|_| fields.contains_key(field::REQUESTS));
        let fields: Vec<_> = fields.iter().collect();
        for chunk in fields.chunks(MAX_ARGS_PER_CALL / 4) {
            let call = calls.room_for(3 + usize::from(at.is_some()) + 2 * chunk.len());
            match at {
                Some(at) => call.arg("HC").arg(key).arg(*at),
                None => call.arg("H").arg(key),
            };
            call.arg(chunk.len());
            for (f, v) in chunk {
                call.arg(*f).arg(**v);
            }
        }
    }
    for (key, members) in &delta.sets {
        let at = delta.fixed_expiries.get(key);
        let members: Vec<_> = members.iter().collect();
        for chunk in members.chunks(MAX_ARGS_PER_CALL / 2) {
            let call = calls.room_for(3 + usize::from(at.is_some()) + chunk.len());
            match at {
                Some(at) => call.arg("SC").arg(key).arg(*at),
                None => call.arg("S").arg(key),
            };
            call.arg(chunk.len()).arg(chunk);
        }
    }
    for (key, at) in &delta.fixed_expiries {
        let on_create = delta
            .counters
            .get(key)
            .is_some_and(|f| f.contains_key(field::REQUESTS))
            || delta.sets.contains_key(key);
        if !on_create {
            expiries.push((key, *at));
        }
    }
    for (key, at) in expiries {
        calls.room_for(3).arg("E").arg(key).arg(at);
    }
    calls.calls
}

/// Convenience for callers that hold events.
pub fn seen_query(events: &[meterline_schemas::UsageEvent]) -> Vec<(&str, DateTime<Utc>)> {
    events
        .iter()
        .map(|e| (e.event_id.as_str(), occurred_at(e)))
        .collect()
}
