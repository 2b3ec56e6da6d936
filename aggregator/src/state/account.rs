//! One account's hot state in memory, and its snapshot in layout v2.
//!
//! The fold keeps, per live window, the five base counters, the per-model counters (days and
//! months) and the distinct counts; per session, its counters. Distinct members are remembered
//! as 64-bit fingerprints of (window, dimension, member) with SipHash-1-3 under fixed keys, so
//! an event whose members are all known allocates nothing. Two members of one account's window
//! collide with probability about n²/2⁶⁵ (3·10⁻¹² at n = 10,000); a collision would under-count
//! one distinct count by one (design §3.1).
//!
//! The month's short lists (models, providers, regions, clouds) are kept with the month as
//! strings and go into `cur` as `v:` fields with every write. Members of the other dimensions
//! that first appear are kept as strings until they are written into the month's `dims` hash
//! ([`NewMember`]).
//!
//! Windows follow the same retention rule as today's fold: an event adds nothing to a window
//! whose key would already have expired at `now`.
//!
//! # A window's life
//!
//! A window is **live** while the state holds its whole value: it was created while it was
//! still in `cur` (design §2.2), or loaded from `cur`. A snapshot writes it to `cur`, absolute
//! (every snapshot writes the whole of `cur`, one value: `keys::hot::encode_cur`).
//! Once it is over it **moves**: the snapshot that first finds it out of `cur` writes its
//! fields to its closed hash and leaves them out of `cur` ([`Moved`]), and once that snapshot is
//! stored ([`AccountState::written`]) the state forgets it.
//!
//! An event for a window the state does not hold and that has left `cur` (a late event, or one
//! replayed after a reload) opens a **late** window: it holds only what was added since the
//! last write, and the snapshot adds it to the closed hash ([`LateWindow`]); its distinct
//! members are set in Redis only if absent, and counted only then ([`LateMember`]). Increments
//! are not idempotent by themselves: the writer's offset guard makes each snapshot land once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use chrono::{DateTime, TimeZone, Utc};
use meterline_schemas::keys::{hot, Dim, Grain, SESSION_RETENTION_SECS};
use meterline_schemas::limits::WindowCounters;
use meterline_schemas::UsageEvent;

/// The base counters' field names, in the order of [`Window::base`].
const BASE: [&str; 5] = ["req", "err", "in", "out", "cost"];

/// A minute leaves `cur` this long after it starts (design §2.2).
const MINUTE_IN_CUR_SECS: i64 = 180;
/// An hour, day or month leaves `cur` this long after it ends.
const CLOSED_IN_CUR_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq)]
struct ModelCounters {
    model: Box<str>,
    /// Requests, input and output tokens.
    values: [i64; 3],
}

/// A window: the base counters of every grain, and for days and months, what only they count
/// ([`Detail`], boxed).
///
/// Most of an account's windows are minutes and hours, which count the base counters only;
/// with the day's and month's fields inline, every window took 224 bytes, and the windows were
/// the largest part of an account held in memory (about 2.4 KB for an account with one event,
/// of which 900 bytes were its four windows).
#[derive(Debug, Clone, PartialEq)]
struct Window {
    grain: Grain,
    start: DateTime<Utc>,
    base: [i64; 5],
    /// Days and months only (made with the window, so two states holding the same windows
    /// compare equal).
    detail: Option<Box<Detail>>,
    /// Opened after the window had left `cur`: it holds increments since the last write, not
    /// the window's value (see the module documentation).
    late: bool,
}

/// What a day or a month counts beyond the base counters.
#[derive(Debug, Clone, Default, PartialEq)]
struct Detail {
    models: Vec<ModelCounters>,
    /// Distinct counts, by [`Dim::ALL`] index: all eight for a month, sessions for a day.
    counts: [u64; 8],
    /// Fingerprints of the distinct members counted ([`fingerprint`]).
    members: HashSet<u64>,
    /// A month's members of the listed dimensions ([`hot::LISTED_DIMS`]), which move with it.
    listed: Vec<(Dim, Box<str>)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Session {
    base: [i64; 5],
    /// Model, input and output tokens.
    models: Vec<(Box<str>, [i64; 2])>,
    /// The latest event's time (Unix seconds).
    last_event: i64,
    /// Changed since the last write: only changed sessions are written again.
    dirty: bool,
    /// The expiry the last write set on the session's hash (0: none yet): set again only when
    /// it moves.
    expiry_written: i64,
}

impl Session {
    /// Whether the session is still kept at `now` (Unix seconds): within a day of its latest
    /// event.
    fn kept(&self, now: i64) -> bool {
        self.last_event + SESSION_RETENTION_SECS > now
    }

    /// When its hash expires (Unix seconds): 24 hours after its latest event, rounded up to the
    /// hour, so the expiry moves at most hourly.
    fn expires_at(&self) -> i64 {
        let expires = self.last_event + SESSION_RETENTION_SECS;
        expires + (3600 - expires.rem_euclid(3600)) % 3600
    }

    /// Its hash's fields, as today's (zeros left out).
    fn fields(&self) -> WindowCounters {
        let mut out: WindowCounters = BASE
            .iter()
            .zip(self.base)
            .filter(|(_, v)| *v != 0)
            .map(|(name, v)| ((*name).to_owned(), v))
            .collect();
        for (model, [input, output]) in &self.models {
            for (counter, v) in [("in", *input), ("out", *output)] {
                if v != 0 {
                    out.insert(format!("m:{model}:{counter}"), v);
                }
            }
        }
        out
    }

    /// Its hash as a snapshot writes it, fields sorted.
    fn snapshot(&self, id: &str) -> SessionSnapshot {
        let mut fields: Vec<(String, i64)> = self.fields().into_iter().collect();
        fields.sort_unstable();
        SessionSnapshot {
            id: id.to_owned(),
            fields,
            expires_at: self.expires_at(),
            set_expiry: true,
        }
    }
}

/// A member seen for the first time in a live window, not yet written: a field of the month's
/// `dims` hash ([`hot::dims_member`], [`hot::day_session_member`]). A new member of the month's
/// short lists needs no entry: it is in its window's list, which every snapshot writes whole
/// into `cur`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    pub month: DateTime<Utc>,
    pub field: String,
}

/// A session's hash as a snapshot writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub id: String,
    /// The hash's fields, sorted, zeros left out.
    pub fields: Vec<(String, i64)>,
    /// When the hash expires (Unix seconds).
    pub expires_at: i64,
    /// Whether the write sets that expiry (it moved since the last write).
    pub set_expiry: bool,
}

/// A window leaving `cur`: its fields (without the stamp) go to its closed hash, absolute, and
/// `cur` is written without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub grain: Grain,
    pub start: DateTime<Utc>,
    /// Counters, per-model counters, distinct counts and listed members, sorted, zeros left
    /// out.
    pub fields: Vec<(String, i64)>,
}

/// Increments for a closed window's hash (a late window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateWindow {
    pub grain: Grain,
    pub start: DateTime<Utc>,
    /// Field and increment, sorted, zeros left out.
    pub fields: Vec<(String, i64)>,
}

/// Where a late window's member is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberSet {
    /// The closed hash of the month starting there (`v:` members of the listed dimensions).
    ClosedMonth(DateTime<Utc>),
    /// The `dims` hash of the month starting there.
    Dims(DateTime<Utc>),
}

/// A distinct member of a late window: set `field` = 1 in `set` if absent, and only then add
/// one to `count_field` of the closed hash of (`grain`, `start`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateMember {
    pub set: MemberSet,
    pub field: String,
    pub grain: Grain,
    pub start: DateTime<Utc>,
    pub count_field: String,
}

/// Everything a write of one account stores, as of one moment: [`AccountState::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The whole of `cur`, as its lines (`keys::hot::CurLines`):
    /// `AccountState::cur_fields` and the months' `v:` member fields (the windows moving out
    /// now are left out). [`Self::cur_fields`] reads them back.
    pub cur: Vec<u8>,
    /// Windows leaving `cur` now.
    pub moves: Vec<Moved>,
    /// Month start → the new fields of that month's `dims` hash.
    pub dims: BTreeMap<DateTime<Utc>, Vec<String>>,
    /// The open sessions' hashes, by id.
    pub sessions: Vec<SessionSnapshot>,
    /// Increments for closed windows.
    pub late: Vec<LateWindow>,
    /// Members of late windows, counted if new.
    pub late_members: Vec<LateMember>,
    /// `cur`'s expiry, set with every write (a `SET` replaces the expiry).
    pub cur_expires_at: i64,
    /// The months of [`Self::dims`] whose hash's expiry the write sets (not set by an earlier
    /// write).
    pub dims_expiry: BTreeSet<DateTime<Utc>>,
}

impl Snapshot {
    /// [`Self::cur`] as fields.
    pub fn cur_fields(&self) -> WindowCounters {
        hot::decode_cur_lines(&self.cur)
    }
}

/// One account's live windows and sessions; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountState {
    windows: Vec<Window>,
    /// Boxed: a map of sessions inline took 104 bytes a bucket, and held at least four buckets for
    /// one session.
    sessions: HashMap<Box<str>, Box<Session>>,
    new_members: Vec<NewMember>,
    late_members: Vec<LateMember>,
    /// Every window is whole (never late): the state folds all of the account's events, as
    /// `rebuild-hot-state` does, so closed windows move to their hashes absolute.
    whole: bool,
    /// The months whose `dims` hash's expiry a write has set.
    dims_expiry_written: Vec<DateTime<Utc>>,
}

/// A member's fingerprint within its window: SipHash-1-3 under fixed keys, the same value for
/// the same member within a build, which is all that is needed (fingerprints live in memory and
/// are rebuilt from Redis's strings).
fn fingerprint(dim: Dim, member: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dim.hash(&mut h);
    member.hash(&mut h);
    h.finish()
}

/// Pushes `v` growing `to` by one element only: an account's vectors are short (a few windows,
/// models, sessions' models) and held for many accounts, where doubling left a third to a half
/// of them unused (heaptrack, `bench aggregate --accounts 100000`: 48 MB of windows). A new
/// element is rare next to the events that update it, so the copies this costs do not show.
fn push_exact<T>(to: &mut Vec<T>, v: T) {
    to.reserve_exact(1);
    to.push(v);
}

fn dim_index(dim: Dim) -> usize {
    Dim::ALL.iter().position(|d| *d == dim).expect("every dim")
}

/// Whether the window of `grain` starting at `start` is still kept in `cur` at `now`: a minute
/// for three minutes after it starts, the others for five minutes after they end.
pub fn in_cur(grain: Grain, start: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let until = match grain {
        Grain::Minute => start.timestamp() + MINUTE_IN_CUR_SECS,
        g => g.next_window(start).timestamp() + CLOSED_IN_CUR_SECS,
    };
    now.timestamp() < until
}

impl Window {
    fn empty(grain: Grain, start: DateTime<Utc>, late: bool) -> Self {
        Self {
            grain,
            start,
            base: [0; 5],
            detail: grain.has_model_fields().then(Box::default),
            late,
        }
    }

    /// The window's [`Detail`], made if it has none (a field of a day or month found on
    /// another grain when loading).
    fn detail_mut(&mut self) -> &mut Detail {
        self.detail.get_or_insert_with(Box::default)
    }

    fn models(&self) -> &[ModelCounters] {
        self.detail.as_deref().map_or(&[], |d| &d.models)
    }

    fn listed(&self) -> &[(Dim, Box<str>)] {
        self.detail.as_deref().map_or(&[], |d| &d.listed)
    }

    fn counts(&self) -> [u64; 8] {
        self.detail.as_deref().map_or([0; 8], |d| d.counts)
    }

    /// [`Self::fields`] with `listed`, as lines of `cur` behind the window's stamp.
    fn write_lines(&self, lines: &mut hot::CurLines) {
        let stamp = hot::stamp(self.grain, self.start);
        for (name, v) in BASE.iter().zip(self.base) {
            if v != 0 {
                lines.counter(&stamp, name, v);
            }
        }
        for m in self.models() {
            for (counter, v) in ["req", "in", "out"].iter().zip(m.values) {
                if v != 0 {
                    lines.model(&stamp, &m.model, counter, v);
                }
            }
        }
        for (dim, n) in Dim::ALL.iter().zip(self.counts()) {
            if n != 0 {
                lines.count(&stamp, *dim, n as i64);
            }
        }
        for (dim, member) in self.listed() {
            lines.member(&stamp, *dim, member);
        }
    }

    /// The window's fields without its stamp, zeros left out; with `listed`, the month's `v:`
    /// members too (as 1).
    fn fields(&self, listed: bool) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        let mut put = |name: String, v: i64| {
            if v != 0 {
                out.push((name, v));
            }
        };
        for (name, v) in BASE.iter().zip(self.base) {
            put((*name).to_owned(), v);
        }
        for m in self.models() {
            for (counter, v) in ["req", "in", "out"].iter().zip(m.values) {
                put(format!("m:{}:{counter}", m.model), v);
            }
        }
        for (dim, n) in Dim::ALL.iter().zip(self.counts()) {
            put(hot::count_name(*dim), n as i64);
        }
        if listed {
            for (dim, member) in self.listed() {
                put(hot::member_name(*dim, member), 1);
            }
        }
        out.sort_unstable();
        out
    }
}

impl AccountState {
    /// A state that will fold every event the account has (see `whole`): what
    /// `rebuild-hot-state` writes, absolute everywhere, so writing it twice changes nothing.
    pub fn whole() -> Self {
        Self {
            whole: true,
            ..Self::default()
        }
    }

    /// Counts `e` as of `now`.
    pub fn fold(&mut self, e: &UsageEvent, now: DateTime<Utc>) {
        let at = Utc
            .timestamp_opt(e.occurred_at_secs(), 0)
            .single()
            .unwrap_or_default();
        let base = [
            1,
            i64::from(e.is_error()),
            e.input_tokens,
            e.output_tokens,
            e.cost_micros.unwrap_or(0),
        ];
        let now_secs = now.timestamp();
        for grain in Grain::ALL {
            let start = grain.window_start(at);
            if grain.expires_at(start) <= now_secs {
                continue;
            }
            let i = self.window_index(grain, start, now);
            let w = &mut self.windows[i];
            for (total, v) in w.base.iter_mut().zip(base) {
                *total += v;
            }
            if grain.has_model_fields() {
                let values = [1, e.input_tokens, e.output_tokens];
                let models = &mut w.detail_mut().models;
                match models.iter_mut().find(|m| *m.model == *e.model) {
                    Some(m) => {
                        for (total, v) in m.values.iter_mut().zip(values) {
                            *total += v;
                        }
                    }
                    None => push_exact(
                        models,
                        ModelCounters {
                            model: e.model.as_str().into(),
                            values,
                        },
                    ),
                }
            }
            match grain {
                Grain::Month => {
                    for (dim, member) in [
                        (Dim::Models, e.model.as_str()),
                        (Dim::Providers, e.provider.as_str()),
                        (Dim::Regions, e.region.as_str()),
                        (Dim::Clouds, e.cloud.as_str()),
                        (Dim::Users, e.user_id.as_deref().unwrap_or_default()),
                        (Dim::ApiKeys, e.api_key_id.as_str()),
                        (
                            Dim::IpHashes,
                            e.client_ip_hash.as_deref().unwrap_or_default(),
                        ),
                        (Dim::Sessions, e.session_id.as_deref().unwrap_or_default()),
                    ] {
                        self.distinct(i, dim, member);
                    }
                }
                Grain::Day => {
                    if let Some(s) = e.session_id.as_deref() {
                        self.distinct(i, Dim::Sessions, s);
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = e.session_id.as_deref() {
            if at.timestamp() + SESSION_RETENTION_SECS > now_secs {
                let session = match self.sessions.get_mut(s) {
                    Some(session) => session,
                    None => self.sessions.entry(s.into()).or_default(),
                };
                for (total, v) in session.base.iter_mut().zip(base) {
                    *total += v;
                }
                session.last_event = session.last_event.max(at.timestamp());
                session.dirty = true;
                let tokens = [e.input_tokens, e.output_tokens];
                match session.models.iter_mut().find(|(m, _)| **m == *e.model) {
                    Some((_, t)) => {
                        t[0] += tokens[0];
                        t[1] += tokens[1];
                    }
                    None => push_exact(&mut session.models, (e.model.as_str().into(), tokens)),
                }
            }
        }
    }

    fn find_window(&self, grain: Grain, start: DateTime<Utc>) -> Option<usize> {
        self.windows
            .iter()
            .position(|w| w.grain == grain && w.start == start)
    }

    /// The window's index, opened (live or late, by `now`) if the state does not hold it.
    fn window_index(&mut self, grain: Grain, start: DateTime<Utc>, now: DateTime<Utc>) -> usize {
        self.find_window(grain, start).unwrap_or_else(|| {
            let late = !self.whole && !in_cur(grain, start, now);
            push_exact(&mut self.windows, Window::empty(grain, start, late));
            self.windows.len() - 1
        })
    }

    /// Counts `member` once in window `i` (a month, or a day's sessions).
    fn distinct(&mut self, i: usize, dim: Dim, member: &str) {
        let w = &mut self.windows[i];
        if member.is_empty() || !w.detail_mut().members.insert(fingerprint(dim, member)) {
            return;
        }
        let (grain, start) = (w.grain, w.start);
        let month = Grain::Month.window_start(start);
        let listed = grain == Grain::Month && hot::LISTED_DIMS.contains(&dim);
        let field = || match (grain, listed) {
            (Grain::Day, _) => hot::day_session_member(start, member),
            (_, true) => hot::member_name(dim, member),
            (_, false) => hot::dims_member(dim, member),
        };
        if w.late {
            self.late_members.push(LateMember {
                set: if listed {
                    MemberSet::ClosedMonth(month)
                } else {
                    MemberSet::Dims(month)
                },
                field: field(),
                grain,
                start,
                count_field: hot::count_name(dim),
            });
            return;
        }
        let detail = w.detail_mut();
        detail.counts[dim_index(dim)] += 1;
        if listed {
            push_exact(&mut detail.listed, (dim, member.into()));
        } else {
            self.new_members.push(NewMember {
                month,
                field: field(),
            });
        }
    }

    /// The absolute fields of `cur` at `now` for every live window still kept there (zeros
    /// left out), with the `s:` marks of the open sessions, without the `v:` member fields.
    /// Tests only: a snapshot writes [`Self::cur_lines`].
    #[cfg(test)]
    pub(crate) fn cur_fields(&self, now: DateTime<Utc>) -> WindowCounters {
        self.fields_in_cur(now, false)
    }

    /// [`Self::cur_fields`], with `listed` the `v:` member fields too: the whole of `cur`, named
    /// by `keys::hot`'s name functions, the reference a property test holds
    /// [`Self::cur_lines`] to.
    #[cfg(test)]
    fn fields_in_cur(&self, now: DateTime<Utc>, listed: bool) -> WindowCounters {
        let mut out = WindowCounters::new();
        for w in self
            .windows
            .iter()
            .filter(|w| !w.late && in_cur(w.grain, w.start, now))
        {
            let stamp = hot::stamp(w.grain, w.start);
            for (name, v) in w.fields(listed) {
                out.insert(format!("{stamp}:{name}"), v);
            }
        }
        for (id, s) in &self.sessions {
            if s.kept(now.timestamp()) {
                out.insert(hot::session_mark(id), s.last_event);
            }
        }
        out
    }

    /// The whole of `cur` at `now` as its lines: the same fields as `fields_in_cur(now, true)`
    /// (a property test holds them equal), written straight into one buffer.
    fn cur_lines(&self, now: DateTime<Utc>) -> Vec<u8> {
        let mut lines = hot::CurLines::default();
        for w in self
            .windows
            .iter()
            .filter(|w| !w.late && in_cur(w.grain, w.start, now))
        {
            w.write_lines(&mut lines);
        }
        for (id, s) in &self.sessions {
            if s.kept(now.timestamp()) {
                lines.session(id, s.last_event);
            }
        }
        lines.into_bytes()
    }

    /// The account as written: `cur` (with its `v:` members and session marks), the hashes of
    /// the sessions `cur` marks open, and the fields of its months' `dims` hashes. What it
    /// holds for the windows still in `cur` and the open sessions equals the state that wrote
    /// it, so folding the same events into both gives the same snapshots. Closed windows are
    /// not loaded: an event for one opens a late window.
    pub fn load(
        cur: &WindowCounters,
        sessions: &HashMap<String, WindowCounters>,
        dims: &BTreeMap<DateTime<Utc>, Vec<String>>,
    ) -> AccountState {
        let mut a = AccountState::default();
        for (field, v) in cur {
            let Some((code, rest)) = field.split_once(':') else {
                continue;
            };
            if code == "s" {
                let s = a.sessions.entry(rest.into()).or_default();
                s.last_event = *v;
                if let Some(h) = sessions.get(rest) {
                    for (f, n) in h {
                        if let Some(i) = BASE.iter().position(|b| b == f) {
                            s.base[i] = *n;
                        } else if let Some((model, counter)) =
                            f.strip_prefix("m:").and_then(|m| m.rsplit_once(':'))
                        {
                            let i = usize::from(counter == "out");
                            match s.models.iter_mut().find(|(m, _)| **m == *model) {
                                Some((_, t)) => t[i] = *n,
                                None => {
                                    let mut t = [0; 2];
                                    t[i] = *n;
                                    push_exact(&mut s.models, (model.into(), t));
                                }
                            }
                        }
                    }
                }
                continue;
            }
            let (Some(grain), Some((stamp, name))) = (Grain::from_code(code), rest.split_once(':'))
            else {
                continue;
            };
            let Some(start) = grain.parse_stamp(stamp) else {
                continue;
            };
            // Loaded windows are live: they are in `cur`, whole.
            let i = a.find_window(grain, start).unwrap_or_else(|| {
                push_exact(&mut a.windows, Window::empty(grain, start, false));
                a.windows.len() - 1
            });
            let w = &mut a.windows[i];
            if let Some(member) = name.strip_prefix("v:") {
                if let Some((dim, member)) = member.split_once(':') {
                    if let Some(dim) = Dim::parse(dim) {
                        let detail = w.detail_mut();
                        detail.members.insert(fingerprint(dim, member));
                        push_exact(&mut detail.listed, (dim, member.into()));
                    }
                }
                continue;
            }
            if let Some(i) = BASE.iter().position(|b| *b == name) {
                w.base[i] = *v;
            } else if let Some(dim) = name.strip_prefix("n:").and_then(Dim::parse) {
                w.detail_mut().counts[dim_index(dim)] = (*v).max(0) as u64;
            } else if let Some((model, counter)) =
                name.strip_prefix("m:").and_then(|m| m.rsplit_once(':'))
            {
                let Some(i) = ["req", "in", "out"].iter().position(|c| *c == counter) else {
                    continue;
                };
                let models = &mut w.detail_mut().models;
                match models.iter_mut().find(|m| *m.model == *model) {
                    Some(m) => m.values[i] = *v,
                    None => {
                        let mut values = [0; 3];
                        values[i] = *v;
                        push_exact(
                            models,
                            ModelCounters {
                                model: model.into(),
                                values,
                            },
                        );
                    }
                }
            }
        }
        for d in a.windows.iter_mut().filter_map(|w| w.detail.as_deref_mut()) {
            d.listed.sort_unstable();
        }
        for (month, fields) in dims {
            for f in fields {
                let (grain, start, dim, member) = if let Some(rest) = f.strip_prefix("ds:") {
                    let Some((dd, session)) = rest.split_once(':') else {
                        continue;
                    };
                    let Ok(dd) = dd.parse::<i64>() else { continue };
                    let day = *month + chrono::Duration::days(dd - 1);
                    (Grain::Day, day, Dim::Sessions, session)
                } else if let Some((dim, member)) = f.split_once(':') {
                    let Some(dim) = Dim::parse(dim) else { continue };
                    (Grain::Month, *month, dim, member)
                } else {
                    continue;
                };
                // Members of windows not in `cur` are not needed: those windows are closed.
                if let Some(i) = a.find_window(grain, start) {
                    a.windows[i]
                        .detail_mut()
                        .members
                        .insert(fingerprint(dim, member));
                }
            }
        }
        a
    }

    /// A session's hash, as today's (zeros left out); `None` if the account has no such
    /// session in memory.
    pub fn session_fields(&self, session_id: &str) -> Option<WindowCounters> {
        self.sessions.get(session_id).map(|s| s.fields())
    }

    /// What a write of the account stores at `now`: the whole of `cur`, the sessions changed
    /// since the last write (the others are stored as they are), the windows leaving `cur`, the
    /// late increments and the new members of `dims`. It stays pending until
    /// [`Self::written`].
    pub fn snapshot(&self, now: DateTime<Utc>) -> Snapshot {
        // The new `v:` members are in their windows' lists already.
        let cur = self.cur_lines(now);
        let mut dims: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
        for NewMember { month, field } in &self.new_members {
            dims.entry(*month).or_default().push(field.clone())
        }
        let mut moves = Vec::new();
        let mut late = Vec::new();
        for w in &self.windows {
            if w.late {
                late.push(LateWindow {
                    grain: w.grain,
                    start: w.start,
                    fields: w.fields(false),
                });
            } else if !in_cur(w.grain, w.start, now) {
                moves.push(Moved {
                    grain: w.grain,
                    start: w.start,
                    fields: w.fields(true),
                });
            }
        }
        moves.sort_unstable_by_key(|m| (m.start, m.grain.code()));
        late.sort_unstable_by_key(|m| (m.start, m.grain.code()));
        // Only the sessions changed since the last write are written again.
        let mut sessions: Vec<SessionSnapshot> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.dirty && s.kept(now.timestamp()))
            .map(|(id, s)| SessionSnapshot {
                set_expiry: s.expiry_written != s.expires_at(),
                ..s.snapshot(id)
            })
            .collect();
        sessions.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let dims_expiry = dims
            .keys()
            .filter(|m| !self.dims_expiry_written.contains(m))
            .copied()
            .collect();
        Snapshot {
            cur,
            moves,
            dims,
            sessions,
            late,
            late_members: self.late_members.clone(),
            cur_expires_at: Grain::Month.expires_at(Grain::Month.window_start(now)),
            dims_expiry,
        }
    }

    /// What [`Self::snapshot`] reads, copied: the windows (without their members'
    /// fingerprints, which a snapshot does not read), the sessions, the members not written yet
    /// and the expiries written. `pending().snapshot(now) == snapshot(now)`, held by a property
    /// test. A flush copies this in the consumer's loop and builds the snapshot on its own
    /// task: the copy is a few integers and names per window, where the snapshot formats every
    /// field name into a map.
    pub fn pending(&self) -> AccountState {
        let windows = self
            .windows
            .iter()
            .map(|w| Window {
                grain: w.grain,
                start: w.start,
                base: w.base,
                detail: w.detail.as_deref().map(|d| {
                    Box::new(Detail {
                        models: d.models.clone(),
                        counts: d.counts,
                        members: HashSet::new(),
                        listed: d.listed.clone(),
                    })
                }),
                late: w.late,
            })
            .collect();
        let sessions = self.sessions.clone();
        AccountState {
            windows,
            sessions,
            new_members: self.new_members.clone(),
            late_members: self.late_members.clone(),
            whole: self.whole,
            dims_expiry_written: self.dims_expiry_written.clone(),
        }
    }

    /// About how many bytes a copy from [`Self::pending`] holds on the heap, each string with
    /// its allocation and entry (for the flushes' memory budget: an estimate, not an exact
    /// count).
    pub fn approx_pending_bytes(&self) -> usize {
        const WINDOW: usize = std::mem::size_of::<Window>();
        const DETAIL: usize = std::mem::size_of::<Detail>();
        let windows: usize = self
            .windows
            .iter()
            .map(|w| {
                WINDOW
                    + w.detail.as_ref().map_or(0, |_| DETAIL)
                    + w.models().len() * 48
                    + w.listed().len() * 40
            })
            .sum();
        let members: usize = self.new_members.iter().map(|m| 48 + m.field.len()).sum();
        windows + self.sessions.len() * 128 + members + self.late_members.len() * 128
    }

    /// The members first seen since the last call, to write with the next snapshot.
    #[cfg(test)]
    pub fn take_new_members(&mut self) -> Vec<NewMember> {
        std::mem::take(&mut self.new_members)
    }

    /// The members first seen and not yet written.
    #[cfg(test)]
    pub fn new_members(&self) -> &[NewMember] {
        &self.new_members
    }

    /// The snapshot taken at `now` is stored: forgets what it wrote once (new members, late
    /// windows and their members), the windows it moved out of `cur`, and the sessions past
    /// their day.
    pub fn written(&mut self, now: DateTime<Utc>) {
        for s in self.sessions.values_mut() {
            if s.dirty && s.kept(now.timestamp()) {
                s.expiry_written = s.expires_at();
            }
        }
        for NewMember { month, .. } in &self.new_members {
            if !self.dims_expiry_written.contains(month) {
                self.dims_expiry_written.push(*month);
            }
        }
        // Only this month's and the last one's `dims` are written to.
        let oldest =
            Grain::Month.window_start(Grain::Month.window_start(now) - chrono::Duration::days(1));
        self.dims_expiry_written.retain(|m| *m >= oldest);
        // Freed, not cleared: most are a fresh account's first members, rarely followed by
        // more, and a cleared vector would keep its room for every account held.
        self.new_members = Vec::new();
        self.late_members = Vec::new();
        self.windows
            .retain(|w| !w.late && in_cur(w.grain, w.start, now));
        self.windows.shrink_to_fit();
        self.sessions.retain(|_, s| s.kept(now.timestamp()));
        for s in self.sessions.values_mut() {
            s.dirty = false;
        }
    }

    /// Whether the state holds nothing (every window moved, every session past its day).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.sessions.is_empty()
    }

    /// Every session still kept at `now`: its id, its hash's fields (as
    /// [`Self::session_fields`]) and when the hash expires (Unix seconds): 24 hours after its
    /// latest event, rounded up to the hour, so the expiry moves at most hourly. (A snapshot
    /// builds only the sessions changed since the last write.)
    pub fn sessions(&self, now: DateTime<Utc>) -> Vec<SessionSnapshot> {
        let mut out: Vec<SessionSnapshot> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.kept(now.timestamp()))
            .map(|(id, s)| s.snapshot(id))
            .collect();
        out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;
