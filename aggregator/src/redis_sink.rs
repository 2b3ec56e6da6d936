//! Writes [`RedisDelta`]s through a Lua script, so that each delta's counters, set members,
//! expiries and "seen" marks land together or not at all. The caller keeps deltas small (see
//! `batch::REDIS_CHANGES_PER_CALL`): Redis serves no one else while a script runs.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use crate::fold::{occurred_at, RedisDelta};
use crate::keys::{Grain, Keys};
use crate::SinkError;

/// Applies a flat list of operations. `H key n f1 d1 … fn dn` increments hash fields,
/// `S key n m1 … mn` adds set members, `E key at` moves the expiry later (never earlier, so
/// a late event cannot shorten the life of a key that a newer one extended).
const APPLY_SCRIPT: &str = r#"
local i = 1
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  local key = ARGV[i + 1]
  if op == 'H' then
    local cnt = tonumber(ARGV[i + 2])
    local j = i + 3
    for _ = 1, cnt do
      redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1])
      j = j + 2
    end
    i = j
  elseif op == 'S' then
    local cnt = tonumber(ARGV[i + 2])
    local first = i + 3
    local last = first + cnt - 1
    local s = first
    while s <= last do
      local e = math.min(s + 499, last)
      redis.call('SADD', key, unpack(ARGV, s, e))
      s = e + 1
    end
    i = last + 1
  elseif op == 'E' then
    local at = tonumber(ARGV[i + 2])
    local cur = redis.call('EXPIRETIME', key)
    if cur == -1 or (cur >= 0 and cur < at) then
      redis.call('EXPIREAT', key, at)
    end
    i = i + 3
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return 1
"#;

/// Largest number of arguments per script call: keeps each call small enough not to block
/// Redis for long.
const MAX_ARGS_PER_CALL: usize = 20_000;

/// Script calls per pipelined round trip.
pub const DELTAS_PER_ROUND_TRIP: usize = 32;

/// Event ids per SMISMEMBER: about 0.4 ms of Redis time each.
const SEEN_IDS_PER_CALL: usize = 1_000;

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
        // One SMISMEMBER over a whole batch held Redis for 8 ms; in pieces, pipelined, other
        // clients are served between them.
        let mut pipe = redis::pipe();
        let mut asked: Vec<&[&str]> = Vec::new();
        for (key, ids) in &by_day {
            for piece in ids.chunks(SEEN_IDS_PER_CALL) {
                pipe.cmd("SMISMEMBER").arg(key).arg(piece);
                asked.push(piece);
            }
        }
        let mut conn = self.conn.clone();
        let answers: Vec<Vec<bool>> = pipe.query_async(&mut conn).await?;
        let mut seen = HashSet::new();
        for (ids, flags) in asked.iter().zip(answers) {
            for (id, flag) in ids.iter().zip(flags) {
                if flag {
                    seen.insert((*id).to_owned());
                }
            }
        }
        Ok(seen)
    }

    /// Adds accounts to the scorer's dirty set.
    pub async fn mark_dirty(&self, accounts: &[&str]) -> Result<(), SinkError> {
        if accounts.is_empty() {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(self.keys.dirty())
            .arg(accounts)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Applies every delta, each atomically, in one round trip. A delta that fits in one
    /// script call needs no transaction: Redis runs a script whole, serving no one else
    /// meanwhile and never half of it. Those calls are pipelined together, and Redis serves
    /// other clients (the gateways' quota checks) between them, which is why the caller keeps
    /// each delta small. A delta too big for one call goes in its own MULTI/EXEC. Returns the
    /// number of Redis commands sent.
    pub async fn apply_all(&self, deltas: &[RedisDelta]) -> Result<usize, SinkError> {
        let mut commands = 0;
        // A few dozen calls per round trip: enough to hide the latency, few enough that the
        // encoded pipeline stays a few megabytes.
        for group in deltas.chunks(DELTAS_PER_ROUND_TRIP) {
            let mut pipe = redis::pipe();
            let mut pipelined = 0;
            for delta in group {
                if delta.is_empty() {
                    continue;
                }
                if script_args(delta) <= MAX_ARGS_PER_CALL {
                    let cmd = pipe.cmd("EVAL").arg(APPLY_SCRIPT).arg(0);
                    for (key, fields) in &delta.counters {
                        cmd.arg("H").arg(key).arg(fields.len());
                        for (f, v) in fields {
                            cmd.arg(f).arg(*v);
                        }
                    }
                    for (key, members) in &delta.sets {
                        cmd.arg("S").arg(key).arg(members.len());
                        for m in members {
                            cmd.arg(m);
                        }
                    }
                    for (key, at) in &delta.expiries {
                        cmd.arg("E").arg(key).arg(*at);
                    }
                    pipe.ignore();
                    pipelined += 1;
                } else {
                    commands += self.apply_calls_atomically(&script_calls(delta)).await?;
                }
            }
            if pipelined > 0 {
                let mut conn = self.conn.clone();
                let () = pipe.query_async(&mut conn).await?;
                commands += pipelined;
            }
        }
        Ok(commands)
    }

    /// Applies `delta` atomically. Returns the number of Redis commands sent (for the
    /// commands-per-event figure).
    pub async fn apply(&self, delta: &RedisDelta) -> Result<usize, SinkError> {
        self.apply_all(std::slice::from_ref(delta)).await
    }

    async fn apply_calls_atomically(&self, calls: &[Vec<String>]) -> Result<usize, SinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for args in calls {
            pipe.cmd("EVAL").arg(APPLY_SCRIPT).arg(0).arg(args).ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(calls.len() + 2)
    }
}

/// The number of script arguments `delta` takes in one call.
fn script_args(delta: &RedisDelta) -> usize {
    delta
        .counters
        .values()
        .map(|f| 3 + 2 * f.len())
        .sum::<usize>()
        + delta.sets.values().map(|m| 3 + m.len()).sum::<usize>()
        + 3 * delta.expiries.len()
}

/// The script calls that apply `delta`: one unless it holds more than [`MAX_ARGS_PER_CALL`]
/// arguments.
fn script_calls(delta: &RedisDelta) -> Vec<Vec<String>> {
    if delta.is_empty() {
        return Vec::new();
    }
    let mut calls: Vec<Vec<String>> = vec![Vec::new()];
    let mut push = |op: Vec<String>| {
        let cur = calls.last_mut().expect("non-empty");
        if !cur.is_empty() && cur.len() + op.len() > MAX_ARGS_PER_CALL {
            calls.push(Vec::new());
        }
        calls.last_mut().expect("non-empty").extend(op);
    };
    for (key, fields) in &delta.counters {
        // Very wide hashes are split so that one op never exceeds a call.
        let fields: Vec<_> = fields.iter().collect();
        for chunk in fields.chunks(MAX_ARGS_PER_CALL / 4) {
            let mut op = vec!["H".to_owned(), key.clone(), chunk.len().to_string()];
            for (f, v) in chunk {
                op.push((*f).clone());
                op.push(v.to_string());
            }
            push(op);
        }
    }
    for (key, members) in &delta.sets {
        for chunk in members
            .iter()
            .collect::<Vec<_>>()
            .chunks(MAX_ARGS_PER_CALL / 2)
        {
            let mut op = vec!["S".to_owned(), key.clone(), chunk.len().to_string()];
            op.extend(chunk.iter().map(|m| (*m).clone()));
            push(op);
        }
    }
    for (key, at) in &delta.expiries {
        push(vec!["E".to_owned(), key.clone(), at.to_string()]);
    }
    calls
}

/// Convenience for callers that hold events.
pub fn seen_query(events: &[meterline_schemas::UsageEvent]) -> Vec<(&str, DateTime<Utc>)> {
    events
        .iter()
        .map(|e| (e.event_id.as_str(), occurred_at(e)))
        .collect()
}
