//! The hot state's layout ("v2", issue 21; `docs/design/hot-state-v2.md` §2) as pure code: the
//! aggregator's state store writes it, the read path and the scorer read it. It gives the read
//! path the same [`RawUsage`] as the previous layout ([`super::Keys`]) for the same events
//! (`aggregator/tests/hot_layout.rs`).
//!
//! # Keys
//!
//! Every key of one account carries the account as its Redis Cluster hash tag (`{account}`), so
//! a script or a pipeline for one account touches one slot; the keys of one Kafka partition
//! carry `{pt:<N>}`. Nothing global is on the hot path: the scorer's queue is kept per partition,
//! and only the scorer's own share and the list of shares are single keys.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>u:{<a>}:live` | string | `cur`: the live windows, as stamped fields (below), in one value ([`encode_cur`]) |
//! | `<p>u:{<a>}:cur` | hash | `cur` as written before 2026-12-05 (layout v2, one hash field per field): read when `live` is absent, moved into `live` at the account's next claim, expired by 2027-04-11 |
//! | `<p>u:{<a>}:s:<session>` | hash | one session's counters, as today |
//! | `<p>u:{<a>}:M:<YYYYMM>:dims` | hash | the month's high-cardinality members, field = 1: `users:<u>`, `api_keys:<k>`, `ip_hashes:<h>`, `sessions:<s>`, and the day's sessions as `ds:<DD>:<s>` |
//! | `<p>u:{<a>}:<g>:<stamp>` | hash | a **closed** window (no longer in `cur`), today's fields |
//! | `<p>{pt:<N>}ckpt:<topic>` | hash | `e` (the partition's epoch), `o` (the last offset whose effects are durable) |
//! | `<p>{pt:<N>}ids:<YYYYMMDD>` | list | ids counted from partition N, by `occurred_at` day: one value per checkpoint, holding its ids |
//! | `<p>{pt:<N>}seen:<YYYYMMDD>` | set | the same ids as members, as written before 2026-12-04: read at a claim, no longer written |
//! | `<p>{pt:<N>}accounts` | set | accounts ever flushed from N |
//! | `<p>{pt:<N>}dirty` | set | accounts changed since the scorer drained this share of its queue (partition N's checkpoints and account events) |
//! | `<p>dirty` | set | the scorer's own share: accounts it puts back after a failure, and the daily full pass |
//! | `<p>queues` | set | the names of the shares above in use |
//! | `<p>q:{<a>}:…` | string | the read path's quota marker |
//!
//! # `cur` as one value
//!
//! `cur` was a hash until 2026-12-05. A snapshot then cost Redis 36 µs: the guard's `HMGET`,
//! an `HSET` of every changed field and an `EXPIREAT`, inside a script whose arguments were
//! every field and value (BENCHMARKS.md, "Where the hot state's freshness goes"). The state
//! store holds the whole of `cur` in memory, so a snapshot now writes it whole, as one string:
//!
//! ```text
//! <epoch, 20 wide> <offset, 20 wide> <topic:partition>\n
//! <field> <value>\n   (one line per field)
//! ```
//!
//! The header is the writer's guard (`_e`, `_o`, `_tp` of the hash): a script reads it with one
//! `GETRANGE` and a claim raises the epoch in place with `SETRANGE` (fixed width, so the rest
//! does not move). A field is a window's stamped counter or a session mark, never a control
//! character (labels are refused with one at ingest, `domain::label`), and its value, an
//! integer, is after the line's last space. A reader `GET`s the value and [`decode_cur`]s it.
//!
//! # Fields of `cur`
//!
//! A window's fields are its counter names behind its stamp, `<g>:<stamp>:` ([`stamp`]):
//! - every grain: `req`, `err`, `in`, `out`, `cost`;
//! - day and month: `m:<model>:req|in|out`, and distinct counts `n:<dim>` (the month all eight
//!   [`Dim`]s, the day `n:sessions`);
//! - month only: `v:<dim>:<member>` = 1 for models, providers, regions and clouds, the short
//!   lists `/usage` and the scorer read ([`month_lists`]);
//! - and, outside any window, `s:<session>` = the latest event's time of each open session
//!   ([`session_mark`]).
//!
//! A window leaves `cur` for its closed hash once it is over (a minute 3 minutes after it
//! starts, the others 5 minutes after they end; an idle account's closed windows stay in `cur`
//! until its next write), so a window is in exactly one of the two;
//! [`window`] reads it from either. The windows a quota check reads (this month, this day, this
//! minute and the previous one) are always still in `cur`, so [`raw_usage`] needs `cur` alone,
//! plus the session's hash and two `dims` fields when a check names a session: one round trip to
//! one slot.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, Utc};

use super::{Dim, Grain};
use crate::limits::{RawUsage, WindowCounters};

/// Why a key prefix cannot serve the v2 layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis.key_prefix: {0:?} contains a brace, which would change the keys' hash slots")]
pub struct PrefixError(pub String);

/// Builds the v2 key names under one prefix.
#[derive(Debug, Clone)]
pub struct HotKeys {
    prefix: String,
}

impl HotKeys {
    /// Refuses a prefix with `{` or `}`: Redis Cluster hashes a key by its first `{…}`, so such
    /// a prefix would put every account in one slot.
    pub fn new(prefix: impl Into<String>) -> Result<Self, PrefixError> {
        let prefix = prefix.into();
        if prefix.contains(['{', '}']) {
            return Err(PrefixError(prefix));
        }
        Ok(Self { prefix })
    }

    fn account(&self, account: &str) -> String {
        format!("{}u:{{{account}}}:", self.prefix)
    }

    /// The account's live windows, one value ([`encode_cur`]).
    pub fn cur(&self, account: &str) -> String {
        format!("{}live", self.account(account))
    }

    /// The account's live windows as a hash, as written before 2026-12-05: read where
    /// [`Self::cur`] is absent, until the last of them expires (2027-04-11).
    pub fn cur_hash(&self, account: &str) -> String {
        format!("{}cur", self.account(account))
    }

    pub fn session(&self, account: &str, session_id: &str) -> String {
        format!("{}s:{session_id}", self.account(account))
    }

    /// The month's high-cardinality members ([`dims_member`], [`day_session_member`]).
    pub fn dims(&self, account: &str, month_start: DateTime<Utc>) -> String {
        format!(
            "{}M:{}:dims",
            self.account(account),
            Grain::Month.stamp(month_start)
        )
    }

    /// A window that has left `cur`.
    pub fn closed(&self, account: &str, grain: Grain, start: DateTime<Utc>) -> String {
        format!("{}{}", self.account(account), stamp(grain, start))
    }

    fn partition(&self, partition: i32) -> String {
        format!("{}{{pt:{partition}}}", self.prefix)
    }

    /// The partition's epoch and checkpoint.
    pub fn checkpoint(&self, partition: i32, topic: &str) -> String {
        format!("{}ckpt:{topic}", self.partition(partition))
    }

    /// Ids counted from the partition whose events occurred on the day starting `day_start`: a
    /// list with one value per checkpoint, holding that checkpoint's ids (the aggregator's
    /// `state::seen` format).
    pub fn counted_ids(&self, partition: i32, day_start: DateTime<Utc>) -> String {
        format!(
            "{}ids:{}",
            self.partition(partition),
            Grain::Day.stamp(day_start)
        )
    }

    /// The set that held [`Self::counted_ids`]'s ids before 2026-12-04. Nothing writes it any
    /// more; a claim still reads it until it expires (36 days after its day).
    pub fn seen(&self, partition: i32, day_start: DateTime<Utc>) -> String {
        format!(
            "{}seen:{}",
            self.partition(partition),
            Grain::Day.stamp(day_start)
        )
    }

    /// Accounts ever flushed from the partition.
    pub fn accounts(&self, partition: i32) -> String {
        format!("{}accounts", self.partition(partition))
    }

    /// The partition's share of the scorer's work queue: the accounts its checkpoints and its
    /// account events changed.
    pub fn dirty(&self, partition: i32) -> String {
        format!("{}dirty", self.partition(partition))
    }

    /// The names of every share of the scorer's queue in use (a set): each partition's, added
    /// when it is first claimed or its account events first queue an account, and the
    /// scorer's own ([`Self::scorer_own`]). Written once per partition and owner, read by the
    /// scorer each round: not on the hot path.
    pub fn scorer_queues(&self) -> String {
        format!("{}queues", self.prefix)
    }

    /// The scorer's own share of its queue: what it puts back after a failed round, and the
    /// daily full pass.
    pub fn scorer_own(&self) -> String {
        format!("{}dirty", self.prefix)
    }

    /// The read path's marker of one recorded quota decision of `account`; `rest` is the rest of
    /// its deduplication key (`{decision}:{limit}:{stage}:{window}`).
    pub fn quota_marker(&self, account: &str, rest: &str) -> String {
        format!("{}q:{{{account}}}:{rest}", self.prefix)
    }
}

/// The part of `key` Redis Cluster hashes: the text between the first `{` and the next `}`
/// when it is not empty, else the whole key (the Redis Cluster specification's rule).
pub fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

/// A window's field prefix in `cur`, without the trailing colon: `M:202612`, `d:20261203`,
/// `h:2026120314`, `m:202612031405`.
pub fn stamp(grain: Grain, start: DateTime<Utc>) -> String {
    format!("{}:{}", grain.code(), grain.stamp(start))
}

/// `<g>:<stamp>:<name>`, a field of `cur`: `name` is a counter (`req`), a per-model counter
/// (`m:gpt-4o:in`), a count ([`count_name`]) or a member ([`member_name`]).
pub fn field(grain: Grain, start: DateTime<Utc>, name: &str) -> String {
    format!("{}:{name}", stamp(grain, start))
}

/// The field of `cur` that names an open session and holds its latest event's time (Unix
/// seconds): `s:<session>`. A loader finds the session hashes to read from these.
pub fn session_mark(session_id: &str) -> String {
    format!("s:{session_id}")
}

/// The name of a distinct count: `n:<dim>`.
pub fn count_name(dim: Dim) -> String {
    format!("n:{}", dim.as_str())
}

/// The name of a month's short-list member: `v:<dim>:<member>`.
pub fn member_name(dim: Dim, member: &str) -> String {
    format!("v:{}:{member}", dim.as_str())
}

/// The dimensions whose members are listed in `cur` (the rest go to `dims`).
pub const LISTED_DIMS: [Dim; 4] = [Dim::Models, Dim::Providers, Dim::Regions, Dim::Clouds];

/// A month member's field in `dims`: `<dim>:<member>`.
pub fn dims_member(dim: Dim, member: &str) -> String {
    format!("{}:{member}", dim.as_str())
}

/// A day's session in the month's `dims`: `ds:<DD>:<session>`.
pub fn day_session_member(day_start: DateTime<Utc>, session_id: &str) -> String {
    format!("ds:{:02}:{session_id}", day_start.day())
}

/// The window of `grain` starting at `start`, with today's fields (`req`, …, `m:<model>:…`):
/// from `cur` when it is still there, else from its closed hash (`closed`, empty or absent if
/// it has none). Counts and member lists are not window counters and are left out, and so are
/// zeros: a snapshot may write `err = 0`, where today's increments never create the field.
pub fn window(
    cur: &WindowCounters,
    closed: Option<&WindowCounters>,
    grain: Grain,
    start: DateTime<Utc>,
) -> WindowCounters {
    let counters = |fields: &mut dyn Iterator<Item = (&str, i64)>| -> WindowCounters {
        fields
            .filter(|(name, v)| *v != 0 && !name.starts_with("n:") && !name.starts_with("v:"))
            .map(|(name, v)| (name.to_owned(), v))
            .collect()
    };
    let prefix = format!("{}:", stamp(grain, start));
    let live = counters(
        &mut cur
            .iter()
            .filter_map(|(f, v)| Some((f.strip_prefix(&prefix)?, *v))),
    );
    if live.is_empty() {
        closed
            .map(|c| counters(&mut c.iter().map(|(f, v)| (f.as_str(), *v))))
            .unwrap_or_default()
    } else {
        live
    }
}

/// A hot-state hash as read (`HGETALL`) into counters: the writer's own fields (`_e`, `_tp`,
/// `_o`) left out, and so is anything that is not an integer.
pub fn counters(raw: impl IntoIterator<Item = (String, String)>) -> WindowCounters {
    raw.into_iter()
        .filter(|(f, _)| !f.starts_with('_'))
        .filter_map(|(f, v)| Some((f, v.parse().ok()?)))
        .collect()
}

/// The width of the epoch and of the offset in `cur`'s header.
const HEADER_NUMBER: usize = 20;

/// The most bytes `cur`'s header takes: its two numbers and spaces, a topic name (at most 249
/// bytes in Kafka), `:`, a partition and the newline. A script reads this much to find it.
pub const CUR_HEADER_MAX: usize = 2 * (HEADER_NUMBER + 1) + 249 + 1 + 11 + 1;

/// `cur` as stored: the guard of the snapshot that wrote it, and its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cur {
    /// The epoch of the partition owner that last claimed or wrote the account.
    pub epoch: i64,
    /// The offset of the last event the snapshot holds, in `topic_partition` (-1 for none).
    pub offset: i64,
    /// `<topic>:<partition>` of the writer (empty when only a claim has written).
    pub topic_partition: String,
    pub fields: WindowCounters,
}

/// `cur`'s value: the header, then `<field> <value>\n` per field.
pub fn encode_cur<'a>(
    epoch: i64,
    offset: i64,
    topic_partition: &str,
    fields: impl IntoIterator<Item = (&'a str, i64)>,
) -> Vec<u8> {
    use std::io::Write;
    let mut lines = Vec::new();
    for (field, value) in fields {
        let _ = writeln!(lines, "{field} {value}");
    }
    cur_value(epoch, offset, topic_partition, &lines)
}

/// `cur`'s value from its header's parts and its lines ([`CurLines`]).
pub fn cur_value(epoch: i64, offset: i64, topic_partition: &str, lines: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out =
        Vec::with_capacity(2 * (HEADER_NUMBER + 1) + topic_partition.len() + 1 + lines.len());
    let _ = writeln!(
        out,
        "{epoch:>w$} {offset:>w$} {topic_partition}",
        w = HEADER_NUMBER
    );
    out.extend_from_slice(lines);
    out
}

/// `cur`'s lines, written a field at a time with each name as [`field`], [`count_name`],
/// [`member_name`] and [`session_mark`] make it, but without making the name first: a snapshot
/// writes every field of `cur`, and formatting each name into a string of its own, then the
/// line, cost the aggregator more than the value saved Redis.
#[derive(Debug, Default)]
pub struct CurLines(Vec<u8>);

impl CurLines {
    /// `<stamp>:<name> <v>`: a base counter (`req`, …).
    pub fn counter(&mut self, stamp: &str, name: &str, v: i64) {
        use std::io::Write;
        let _ = writeln!(self.0, "{stamp}:{name} {v}");
    }

    /// `<stamp>:m:<model>:<counter> <v>`.
    pub fn model(&mut self, stamp: &str, model: &str, counter: &str, v: i64) {
        use std::io::Write;
        let _ = writeln!(self.0, "{stamp}:m:{model}:{counter} {v}");
    }

    /// `<stamp>:n:<dim> <v>` ([`count_name`]).
    pub fn count(&mut self, stamp: &str, dim: Dim, v: i64) {
        use std::io::Write;
        let _ = writeln!(self.0, "{stamp}:n:{} {v}", dim.as_str());
    }

    /// `<stamp>:v:<dim>:<member> 1` ([`member_name`]).
    pub fn member(&mut self, stamp: &str, dim: Dim, member: &str) {
        use std::io::Write;
        let _ = writeln!(self.0, "{stamp}:v:{}:{member} 1", dim.as_str());
    }

    /// `s:<session> <at>` ([`session_mark`]).
    pub fn session(&mut self, session_id: &str, at: i64) {
        use std::io::Write;
        let _ = writeln!(self.0, "s:{session_id} {at}");
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a value [`encode_cur`] wrote. A header that does not parse reads as epoch 0, offset -1
/// and no writer; a line without an integer after its last space is left out, as [`counters`]
/// leaves out a hash field that is not an integer.
pub fn decode_cur(value: &[u8]) -> Cur {
    let text = String::from_utf8_lossy(value);
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let number =
        |range: std::ops::Range<usize>| -> Option<i64> { header.get(range)?.trim().parse().ok() };
    Cur {
        epoch: number(0..HEADER_NUMBER).unwrap_or(0),
        offset: number(HEADER_NUMBER + 1..2 * HEADER_NUMBER + 1).unwrap_or(-1),
        topic_partition: header
            .get(2 * (HEADER_NUMBER + 1)..)
            .unwrap_or_default()
            .to_owned(),
        fields: lines_to_counters(lines),
    }
}

/// `cur`'s lines without a header ([`CurLines`]) as counters, read as [`decode_cur`] reads them.
pub fn decode_cur_lines(lines: &[u8]) -> WindowCounters {
    lines_to_counters(String::from_utf8_lossy(lines).split('\n'))
}

fn lines_to_counters<'a>(lines: impl Iterator<Item = &'a str>) -> WindowCounters {
    lines
        .filter_map(|line| {
            let (field, v) = line.rsplit_once(' ')?;
            Some((field.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// `cur`'s counters from what a reader fetched: the value of [`HotKeys::cur`] when there is one,
/// else the hash [`HotKeys::cur_hash`] (an account not written since 2026-12-05).
pub fn read_cur(
    value: Option<Vec<u8>>,
    hash: impl IntoIterator<Item = (String, String)>,
) -> WindowCounters {
    match value {
        Some(v) => decode_cur(&v).fields,
        None => counters(hash),
    }
}

/// What a quota check naming a session reads beside `cur`: the session's hash
/// (`HGETALL <p>u:{<a>}:s:<session>`) and whether this month's `dims` hold the session and the
/// day's session (`HMGET <dims> sessions:<s> ds:<DD>:<s>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRead {
    pub counters: WindowCounters,
    pub known_this_month: bool,
    pub known_today: bool,
}

/// The read path's [`RawUsage`] at `now`, from `cur` (and the session, if one was named): the
/// same value today's seven to nine keys give for the same events.
pub fn raw_usage(
    cur: &WindowCounters,
    session: Option<SessionRead>,
    now: DateTime<Utc>,
) -> RawUsage {
    let month = Grain::Month.window_start(now);
    let day = Grain::Day.window_start(now);
    let minute = Grain::Minute.window_start(now);
    let get = |f: String| cur.get(&f).copied().unwrap_or(0);
    let sessions = count_name(Dim::Sessions);
    let (known_today, known_this_month) = session
        .as_ref()
        .map_or((false, false), |s| (s.known_today, s.known_this_month));
    RawUsage {
        month: window(cur, None, Grain::Month, month),
        day: window(cur, None, Grain::Day, day),
        session: session.map(|s| s.counters),
        day_sessions: get(field(Grain::Day, day, &sessions)).max(0) as u64,
        month_sessions: get(field(Grain::Month, month, &sessions)).max(0) as u64,
        session_known_today: known_today,
        session_known_this_month: known_this_month,
        requests_this_minute: get(field(Grain::Minute, minute, "req")),
        requests_last_minute: get(field(Grain::Minute, minute - Duration::minutes(1), "req")),
    }
}

/// This month's distinct members of the listed dimensions, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthLists {
    pub models: Vec<String>,
    pub providers: Vec<String>,
    pub regions: Vec<String>,
    pub clouds: Vec<String>,
}

/// The month's lists at `now`, from the `v:` fields of `cur`.
pub fn month_lists(cur: &WindowCounters, now: DateTime<Utc>) -> MonthLists {
    let prefix = format!("{}:v:", stamp(Grain::Month, Grain::Month.window_start(now)));
    let list = |dim: Dim| -> Vec<String> {
        let dim_prefix = format!("{prefix}{}:", dim.as_str());
        cur.keys()
            .filter_map(|f| f.strip_prefix(&dim_prefix).map(str::to_owned))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    MonthLists {
        models: list(Dim::Models),
        providers: list(Dim::Providers),
        regions: list(Dim::Regions),
        clouds: list(Dim::Clouds),
    }
}

#[cfg(test)]
mod tests;
