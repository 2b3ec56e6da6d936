//! The hot state's v2 layout (`meterline_schemas::keys::hot`) gives the read path the same
//! answers as today's keys, before anything is moved to it (issue 21, design §6 commit 2).
//!
//! Random events are folded two ways at the same `now`:
//! - today's way: [`fold_event`]'s deltas applied to an in-memory model of Redis, read back as
//!   `HotState::usage` and `HotState::month_dimensions` read it (the same keys and commands);
//! - v2: `cur`, the sessions and `dims` built from the layout's documentation by [`V2`] below,
//!   which shares no code with the fold, read back by `hot::raw_usage` and `hot::month_lists`.
//!
//! - the state store: [`AccountState`] folds the same events, and its snapshot (`cur`, the
//!   session hashes, and the `dims` fields and `v:` members it hands over as new) is read back
//!   the same way.
//!
//! The [`RawUsage`]s must be equal, field for field, for every account and every session a
//! check can name (including one never seen). The times of `now` include the first seconds of a
//! year, the last second of a month, and mid-month; events are spread over the last 40 days
//! with many in the last minutes, so minute, day and month boundaries and expired windows are
//! all crossed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use meterline_aggregator::fold::{fold_event, occurred_at, RedisDelta};
use meterline_aggregator::state::account::AccountState;
use meterline_schemas::keys::hot::{self, SessionRead};
use meterline_schemas::keys::{Dim, Grain, Keys, SESSION_RETENTION_SECS};
use meterline_schemas::limits::{RawUsage, WindowCounters};
use meterline_schemas::{AccountId, UsageEvent};
use proptest::prelude::*;

const ACCOUNTS: [&str; 2] = ["acct-a", "acct-b"];
const SESSIONS: [&str; 4] = ["s-1", "s-2", "s-3", "s-never"];

/// Today's keys in memory: what `fold_event`'s deltas do to Redis (expiries aside: reads happen
/// at `now`, and the fold itself skips windows already expired by then).
#[derive(Default)]
struct TodayRedis {
    hashes: HashMap<String, WindowCounters>,
    sets: HashMap<String, BTreeSet<String>>,
}

impl TodayRedis {
    fn apply(&mut self, d: &RedisDelta) {
        for (key, fields) in &d.counters {
            let h = self.hashes.entry(key.clone()).or_default();
            for (f, by) in fields {
                *h.entry(f.clone()).or_default() += by;
            }
        }
        for (key, members) in &d.sets {
            self.sets
                .entry(key.clone())
                .or_default()
                .extend(members.iter().cloned());
        }
    }

    fn hash(&self, key: &str) -> WindowCounters {
        self.hashes.get(key).cloned().unwrap_or_default()
    }

    fn set(&self, key: &str) -> BTreeSet<String> {
        self.sets.get(key).cloned().unwrap_or_default()
    }

    /// What `ingest::read::HotState::usage` reads for a check.
    fn raw_usage(
        &self,
        k: &Keys,
        account: &str,
        session: Option<&str>,
        now: DateTime<Utc>,
    ) -> RawUsage {
        let month = Grain::Month.window_start(now);
        let day = Grain::Day.window_start(now);
        let minute = Grain::Minute.window_start(now);
        let day_sessions = self.set(&k.day_sessions(account, day));
        let month_sessions = self.set(&k.month_set(account, month, Dim::Sessions));
        let req = |start| {
            self.hash(&k.window(account, Grain::Minute, start))
                .get("req")
                .copied()
        };
        RawUsage {
            month: self.hash(&k.window(account, Grain::Month, month)),
            day: self.hash(&k.window(account, Grain::Day, day)),
            session: session.map(|s| self.hash(&k.session(account, s))),
            day_sessions: day_sessions.len() as u64,
            month_sessions: month_sessions.len() as u64,
            session_known_today: session.is_some_and(|s| day_sessions.contains(s)),
            session_known_this_month: session.is_some_and(|s| month_sessions.contains(s)),
            requests_this_minute: req(minute).unwrap_or(0),
            requests_last_minute: req(minute - Duration::minutes(1)).unwrap_or(0),
        }
    }

    /// What `HotState::month_dimensions` lists (and the scorer's clouds), sorted.
    fn month_lists(&self, k: &Keys, account: &str, now: DateTime<Utc>) -> hot::MonthLists {
        let month = Grain::Month.window_start(now);
        let list = |dim| {
            self.set(&k.month_set(account, month, dim))
                .into_iter()
                .collect()
        };
        hot::MonthLists {
            models: list(Dim::Models),
            providers: list(Dim::Providers),
            regions: list(Dim::Regions),
            clouds: list(Dim::Clouds),
        }
    }
}

/// The v2 hashes of one account, built the way `keys::hot`'s documentation describes them:
/// absolute values per stamped field, distinct counts next to their members.
#[derive(Default)]
struct V2 {
    cur: WindowCounters,
    sessions: HashMap<String, WindowCounters>,
    /// month stamp → `dims` fields.
    dims: HashMap<String, BTreeSet<String>>,
    /// (window stamp, dimension) → members, to keep `n:<dim>` right.
    members: HashMap<(String, Dim), BTreeSet<String>>,
}

impl V2 {
    fn add(&mut self, f: String, by: i64) {
        *self.cur.entry(f).or_default() += by;
    }

    fn distinct(&mut self, grain: Grain, start: DateTime<Utc>, dim: Dim, member: &str) {
        if member.is_empty() {
            return;
        }
        let stamp = hot::stamp(grain, start);
        let set = self.members.entry((stamp, dim)).or_default();
        if set.insert(member.to_owned()) {
            self.add(hot::field(grain, start, &hot::count_name(dim)), 1);
            if grain == Grain::Month && hot::LISTED_DIMS.contains(&dim) {
                self.cur
                    .insert(hot::field(grain, start, &hot::member_name(dim, member)), 1);
            }
        }
        if grain == Grain::Month && !hot::LISTED_DIMS.contains(&dim) {
            self.dims
                .entry(Grain::Month.stamp(start))
                .or_default()
                .insert(hot::dims_member(dim, member));
        }
    }

    fn fold(&mut self, e: &UsageEvent, now: DateTime<Utc>) {
        let at = Utc.timestamp_opt(e.occurred_at_secs(), 0).unwrap();
        let counters = [
            ("req", 1),
            ("err", i64::from(e.status.is_some_and(|s| s >= 400))),
            ("in", e.input_tokens),
            ("out", e.output_tokens),
            ("cost", e.cost_micros.unwrap_or(0)),
        ];
        for grain in Grain::ALL {
            let start = grain.window_start(at);
            // A window past its retention is not kept, in either layout.
            if grain.expires_at(start) <= now.timestamp() {
                continue;
            }
            for (name, v) in counters {
                self.add(hot::field(grain, start, name), v);
            }
            if matches!(grain, Grain::Day | Grain::Month) {
                for (name, v) in [("req", 1), ("in", e.input_tokens), ("out", e.output_tokens)] {
                    self.add(
                        hot::field(grain, start, &format!("m:{}:{name}", e.model)),
                        v,
                    );
                }
            }
            if grain == Grain::Month {
                let optional = |m: &Option<String>| m.clone().unwrap_or_default();
                for (dim, member) in [
                    (Dim::Models, e.model.clone()),
                    (Dim::Providers, e.provider.clone()),
                    (Dim::Regions, e.region.clone()),
                    (Dim::Clouds, e.cloud.clone()),
                    (Dim::Users, optional(&e.user_id)),
                    (Dim::ApiKeys, e.api_key_id.clone()),
                    (Dim::IpHashes, optional(&e.client_ip_hash)),
                    (Dim::Sessions, optional(&e.session_id)),
                ] {
                    self.distinct(grain, start, dim, &member);
                }
            }
            if grain == Grain::Day {
                if let Some(s) = &e.session_id {
                    self.distinct(grain, start, Dim::Sessions, s);
                    self.dims
                        .entry(Grain::Month.stamp(Grain::Month.window_start(at)))
                        .or_default()
                        .insert(hot::day_session_member(start, s));
                }
            }
        }
        if let Some(s) = &e.session_id {
            if at.timestamp() + SESSION_RETENTION_SECS > now.timestamp() {
                let h = self.sessions.entry(s.clone()).or_default();
                let per_model = [
                    (format!("m:{}:in", e.model), e.input_tokens),
                    (format!("m:{}:out", e.model), e.output_tokens),
                ];
                let named = counters.map(|(name, v)| (name.to_owned(), v));
                for (name, v) in named.into_iter().chain(per_model) {
                    if v != 0 {
                        *h.entry(name).or_default() += v;
                    }
                }
            }
        }
    }

    /// What a v2 check naming `session` reads beside `cur`.
    fn session_read(&self, session: &str, now: DateTime<Utc>) -> SessionRead {
        let dims = self
            .dims
            .get(&Grain::Month.stamp(Grain::Month.window_start(now)))
            .cloned()
            .unwrap_or_default();
        SessionRead {
            counters: self.sessions.get(session).cloned().unwrap_or_default(),
            known_this_month: dims.contains(&hot::dims_member(Dim::Sessions, session)),
            known_today: dims.contains(&hot::day_session_member(
                Grain::Day.window_start(now),
                session,
            )),
        }
    }
}

/// What the state store would write for one account ([`AccountState::snapshot`]), and the
/// state that reads the session hashes.
struct Snapshot {
    state: AccountState,
    cur: WindowCounters,
    /// month start → `dims` fields.
    dims: BTreeMap<DateTime<Utc>, Vec<String>>,
}

impl Snapshot {
    fn of(state: AccountState, now: DateTime<Utc>) -> Self {
        let written = state.snapshot(now);
        // Through the value Redis holds, as a reader decodes it.
        let value = hot::cur_value(1, 0, "usage:0", &written.cur);
        Self {
            state,
            cur: hot::decode_cur(&value).fields,
            dims: written.dims,
        }
    }

    fn session_read(&self, session: &str, now: DateTime<Utc>) -> SessionRead {
        let dims = self
            .dims
            .get(&Grain::Month.window_start(now))
            .cloned()
            .unwrap_or_default();
        SessionRead {
            counters: self.state.session_fields(session).unwrap_or_default(),
            known_this_month: dims.contains(&hot::dims_member(Dim::Sessions, session)),
            known_today: dims.contains(&hot::day_session_member(
                Grain::Day.window_start(now),
                session,
            )),
        }
    }
}

/// The reader's clocks: mid-month, the first seconds of a year, a month's last second, and a
/// minute's first second at the end of November.
fn nows() -> [DateTime<Utc>; 4] {
    [
        Utc.with_ymd_and_hms(2026, 12, 15, 12, 30, 30).unwrap(),
        Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 20).unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 0).unwrap(),
    ]
}

#[derive(Debug, Clone)]
struct Shape {
    account: usize,
    /// Seconds before `now`.
    age: i64,
    model: &'static str,
    provider: &'static str,
    region: &'static str,
    cloud: &'static str,
    user: Option<&'static str>,
    api_key: &'static str,
    ip: Option<&'static str>,
    session: Option<usize>,
    status: Option<i32>,
    input: i64,
    output: i64,
    cost: Option<i64>,
}

fn shape() -> impl Strategy<Value = Shape> {
    let pick = |xs: &'static [&'static str]| proptest::sample::select(xs);
    (
        (
            0..ACCOUNTS.len(),
            // Most in the last minutes, some over days, a few up to 40 days back.
            prop_oneof![4 => 0i64..240, 2 => 0i64..259_200, 1 => 0i64..3_456_000],
            pick(&["gpt-4o", "gpt-4o-mini", "claude-3-haiku"]),
            pick(&["openai", "anthropic"]),
            pick(&["eu-west-1", "us-east-1", "ap-south-1"]),
            pick(&["aws", "gcp"]),
            proptest::option::of(pick(&["u-1", "u-2", "u-3"])),
        ),
        (
            pick(&["k-1", "k-2", "k-3"]),
            proptest::option::of(pick(&["ip-1", "ip-2"])),
            // The last session name is never used by an event.
            proptest::option::of(0..SESSIONS.len() - 1),
            proptest::option::of(prop_oneof![Just(200), Just(429), Just(500)]),
            0i64..1_000,
            0i64..300,
            proptest::option::of(0i64..5_000),
        ),
    )
        .prop_map(
            |(
                (account, age, model, provider, region, cloud, user),
                (api_key, ip, session, status, input, output, cost),
            )| Shape {
                account,
                age,
                model,
                provider,
                region,
                cloud,
                user,
                api_key,
                ip,
                session,
                status,
                input,
                output,
                cost,
            },
        )
}

fn event(i: usize, s: &Shape, now: DateTime<Utc>) -> UsageEvent {
    let at = now - Duration::seconds(s.age);
    UsageEvent {
        event_id: format!("e-{i}"),
        occurred_at: at.timestamp_micros(),
        received_at: now.timestamp_micros(),
        account_id: AccountId::parse(ACCOUNTS[s.account]).unwrap(),
        api_key_id: s.api_key.into(),
        gateway_id: "gw".into(),
        region: s.region.into(),
        cloud: s.cloud.into(),
        provider: s.provider.into(),
        model: s.model.into(),
        input_tokens: s.input,
        output_tokens: s.output,
        cost_micros: s.cost,
        latency_ms: None,
        status: s.status,
        session_id: s.session.map(|n| SESSIONS[n].to_owned()),
        user_id: s.user.map(str::to_owned),
        plugins: vec![],
        pii_detected: false,
        client_ip_hash: s.ip.map(str::to_owned),
        device_id: None,
        prompt_hash: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_v2_layout_gives_every_check_the_same_raw_usage_as_today(
        shapes in proptest::collection::vec(shape(), 0..80),
        which_now in 0..4usize,
    ) {
        let now = nows()[which_now];
        let keys = Keys::new("t:");
        let events: Vec<UsageEvent> =
            shapes.iter().enumerate().map(|(i, s)| event(i, s, now)).collect();

        let mut today = TodayRedis::default();
        let mut v2: HashMap<&str, V2> = HashMap::new();
        let mut store: HashMap<&str, AccountState> = HashMap::new();
        for e in &events {
            let mut d = RedisDelta::default();
            fold_event(&mut d, &keys, e, now);
            today.apply(&d);
            prop_assert!(occurred_at(e) <= now);
            let account = *ACCOUNTS.iter().find(|a| **a == e.account_id.as_str()).unwrap();
            v2.entry(account).or_default().fold(e, now);
            store.entry(account).or_default().fold(e, now);
        }

        for account in ACCOUNTS {
            let state = v2.remove(account).unwrap_or_default();
            let snapshot = Snapshot::of(store.remove(account).unwrap_or_default(), now);
            let mut checks: Vec<Option<&str>> = vec![None];
            checks.extend(SESSIONS.iter().copied().map(Some));
            for session in checks {
                let want = today.raw_usage(&keys, account, session, now);
                let got = hot::raw_usage(
                    &state.cur,
                    session.map(|s| state.session_read(s, now)),
                    now,
                );
                prop_assert_eq!(&got, &want, "{} session {:?} at {}", account, session, now);
                let stored = hot::raw_usage(
                    &snapshot.cur,
                    session.map(|s| snapshot.session_read(s, now)),
                    now,
                );
                prop_assert_eq!(stored, want, "state store: {} session {:?}", account, session);
            }
            let lists = today.month_lists(&keys, account, now);
            prop_assert_eq!(hot::month_lists(&state.cur, now), lists.clone());
            prop_assert_eq!(hot::month_lists(&snapshot.cur, now), lists);
            // `month` and `day` of the check's day are the windows today's keys hold, and a
            // past window reads the same from `cur` as from today's key (none has closed here).
            for back in [1i64, 2, 40] {
                let t = now - Duration::days(back);
                for grain in [Grain::Day, Grain::Month] {
                    let start = grain.window_start(t);
                    if grain.expires_at(start) > now.timestamp() {
                        prop_assert_eq!(
                            hot::window(&state.cur, None, grain, start),
                            today.hash(&keys.window(account, grain, start)),
                            "{:?} {} of {}", grain, start, account
                        );
                    }
                }
            }
        }
    }
}
