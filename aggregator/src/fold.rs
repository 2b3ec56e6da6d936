//! The previous hot-state layout's fold ([`meterline_schemas::keys::Keys`]): a batch of new
//! usage events becomes the Redis increments that count them. **No component runs it since
//! layout v2** ([`crate::state`]); it stays as the reference `tests/hot_layout.rs` proves layout
//! v2 against (the same events give every quota check the same answer), with [`occurred_at`],
//! which both use.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeZone, Utc};
use meterline_schemas::UsageEvent;

use meterline_schemas::keys::{
    field, Dim, Grain, Keys, SEEN_RETENTION_AFTER_DAY_SECS, SESSION_RETENTION_SECS,
};

/// Changes to apply to Redis, atomically.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedisDelta {
    /// key → field → increment.
    pub counters: BTreeMap<String, BTreeMap<String, i64>>,
    /// key → members to add.
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// key → expiry (Unix seconds), moved on every write but only ever later, never earlier:
    /// for keys that live a while after their latest write (sessions).
    pub expiries: BTreeMap<String, i64>,
    /// key → expiry (Unix seconds) that follows from the key's name (a window, a day's or a
    /// month's set), so it is set once, by the write that creates the key, and never looked at
    /// again: one Redis call per key and write saved.
    pub fixed_expiries: BTreeMap<String, i64>,
}

/// What a set member costs inside a script, as a share of one Redis call: members go to one
/// `SADD` in hundreds, but each is still converted and inserted.
const CALLS_PER_SET_MEMBER: f64 = 1.0 / 3.0;

impl RedisDelta {
    // The lookups come first so that a key or field already in the delta (most of them, in a
    // batch) costs no allocation.
    fn incr(&mut self, key: &str, field: &str, by: i64) {
        if by == 0 {
            return;
        }
        let fields = match self.counters.get_mut(key) {
            Some(f) => f,
            None => self.counters.entry(key.to_owned()).or_default(),
        };
        match fields.get_mut(field) {
            Some(v) => *v += by,
            None => {
                fields.insert(field.to_owned(), by);
            }
        }
    }

    fn add(&mut self, key: &str, member: &str) {
        let members = match self.sets.get_mut(key) {
            Some(m) => m,
            None => self.sets.entry(key.to_owned()).or_default(),
        };
        if !members.contains(member) {
            members.insert(member.to_owned());
        }
    }

    fn expire(&mut self, key: &str, at: i64) {
        match self.expiries.get_mut(key) {
            Some(e) => *e = (*e).max(at),
            None => {
                self.expiries.insert(key.to_owned(), at);
            }
        }
    }

    fn expire_fixed(&mut self, key: &str, at: i64) {
        if !self.fixed_expiries.contains_key(key) {
            self.fixed_expiries.insert(key.to_owned(), at);
        }
    }

    /// How many counter increments and set members this delta holds.
    pub fn len(&self) -> usize {
        self.counters.values().map(|f| f.len()).sum::<usize>()
            + self.sets.values().map(|s| s.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About how many Redis calls the script applying this delta makes: the measure of how
    /// long it holds Redis (1.2–2.5 µs a call here, the more the more keys are new), during
    /// which nobody else is served.
    /// One per counter field and per set, a third per set member, two per moving expiry (read
    /// it, then move it); fixed expiries cost a call only when a key is created.
    pub fn redis_calls(&self) -> usize {
        let members: usize = self.sets.values().map(|s| s.len()).sum();
        self.counters.values().map(|f| f.len()).sum::<usize>()
            + self.sets.len()
            + (members as f64 * CALLS_PER_SET_MEMBER).ceil() as usize
            + 2 * self.expiries.len()
    }
}

pub fn occurred_at(e: &UsageEvent) -> DateTime<Utc> {
    Utc.timestamp_opt(e.occurred_at_secs(), 0)
        .single()
        .unwrap_or_default()
}

/// Adds one event's counters to every window it falls in, skipping windows whose keys would
/// already have expired (a late event for a minute long gone still counts in ClickHouse and
/// in the day and month, just not in a minute bucket nobody can read any more).
pub fn fold_event(delta: &mut RedisDelta, keys: &Keys, e: &UsageEvent, now: DateTime<Utc>) {
    let at = occurred_at(e);
    let account = e.account_id.as_str();
    let fields: [(&str, i64); 5] = [
        (field::REQUESTS, 1),
        (field::ERRORS, i64::from(e.is_error())),
        (field::INPUT_TOKENS, e.input_tokens),
        (field::OUTPUT_TOKENS, e.output_tokens),
        (field::COST_MICROS, e.cost_micros.unwrap_or(0)),
    ];
    // The scorer re-scores accounts whose hot state changed.
    delta.add(&keys.dirty(), account);
    let model_req = field::model(&e.model, field::REQUESTS);
    let model_in = field::model(&e.model, field::INPUT_TOKENS);
    let model_out = field::model(&e.model, field::OUTPUT_TOKENS);
    for grain in Grain::ALL {
        let start = grain.window_start(at);
        let expires = grain.expires_at(start);
        if expires <= now.timestamp() {
            continue;
        }
        let key = keys.window(account, grain, start);
        for (f, v) in fields {
            delta.incr(&key, f, v);
        }
        if grain.has_model_fields() {
            delta.incr(&key, &model_req, 1);
            delta.incr(&key, &model_in, e.input_tokens);
            delta.incr(&key, &model_out, e.output_tokens);
        }
        delta.expire_fixed(&key, expires);

        if grain == Grain::Month {
            let mut dim = |name: Dim, member: Option<&str>| {
                if let Some(m) = member.filter(|m| !m.is_empty()) {
                    let k = keys.month_set(account, start, name);
                    delta.add(&k, m);
                    delta.expire_fixed(&k, expires);
                }
            };
            dim(Dim::Models, Some(&e.model));
            dim(Dim::Providers, Some(&e.provider));
            dim(Dim::Regions, Some(&e.region));
            dim(Dim::Clouds, Some(&e.cloud));
            dim(Dim::Users, e.user_id.as_deref());
            dim(Dim::ApiKeys, Some(&e.api_key_id));
            dim(Dim::IpHashes, e.client_ip_hash.as_deref());
            // Per-month session counts are a limit (`month_sessions`).
            dim(Dim::Sessions, e.session_id.as_deref());
        }
        if grain == Grain::Day {
            if let Some(s) = e.session_id.as_deref() {
                let k = keys.day_sessions(account, start);
                delta.add(&k, s);
                delta.expire_fixed(&k, expires);
            }
        }
    }
    if let Some(s) = e.session_id.as_deref() {
        let expires = at.timestamp() + SESSION_RETENTION_SECS;
        if expires > now.timestamp() {
            let key = keys.session(account, s);
            for (f, v) in fields {
                delta.incr(&key, f, v);
            }
            delta.incr(&key, &model_in, e.input_tokens);
            delta.incr(&key, &model_out, e.output_tokens);
            delta.expire(&key, expires);
        }
    }
}

/// Folds `events`, which must be grouped by account, into deltas of about `calls_per_delta`
/// Redis calls each ([`RedisDelta::redis_calls`]), one delta at a time so that a caller
/// applying them as they come holds only a few in memory.
///
/// A delta is cut between accounts once it reaches `calls_per_delta`, and inside an account's
/// events only once it reaches twice that: an account's events folded together share their
/// window fields, so cutting a busy account costs repeated fields, but one account alone must
/// not hold Redis for long either. Each event's counters and its seen mark are always in the
/// same delta, so applying each delta atomically keeps "counted" and "marked seen" together.
pub fn account_deltas<'a, I>(
    events: I,
    keys: &Keys,
    now: DateTime<Utc>,
    calls_per_delta: usize,
) -> AccountDeltas<'_, I::IntoIter>
where
    I: IntoIterator<Item = &'a UsageEvent>,
{
    AccountDeltas {
        events: events.into_iter().peekable(),
        keys,
        now,
        calls_per_delta,
        consumed: 0,
    }
}

/// The iterator [`account_deltas`] returns.
pub struct AccountDeltas<'k, I: Iterator> {
    events: std::iter::Peekable<I>,
    keys: &'k Keys,
    now: DateTime<Utc>,
    calls_per_delta: usize,
    consumed: usize,
}

impl<I: Iterator> AccountDeltas<'_, I> {
    /// How many events the deltas returned so far hold.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl<'a, I: Iterator<Item = &'a UsageEvent>> Iterator for AccountDeltas<'_, I> {
    type Item = RedisDelta;

    fn next(&mut self) -> Option<RedisDelta> {
        let mut delta = RedisDelta::default();
        let mut current: Option<&str> = None;
        while let Some(e) = self.events.peek() {
            let account = e.account_id.as_str();
            if current.is_some() {
                let limit = if current == Some(account) {
                    2 * self.calls_per_delta
                } else {
                    self.calls_per_delta
                };
                if delta.redis_calls() >= limit {
                    break;
                }
            }
            current = Some(account);
            let e = self.events.next().expect("peeked");
            self.consumed += 1;
            fold_event(&mut delta, self.keys, e, self.now);
            mark_seen(&mut delta, self.keys, e);
        }
        (!delta.is_empty()).then_some(delta)
    }
}

/// Records `event_id` as counted, in the set for its `occurred_at` day.
pub fn mark_seen(delta: &mut RedisDelta, keys: &Keys, e: &UsageEvent) {
    let day = Grain::Day.window_start(occurred_at(e));
    let key = keys.seen(day);
    delta.add(&key, &e.event_id);
    delta.expire_fixed(
        &key,
        Grain::Day.next_window(day).timestamp() + SEEN_RETENTION_AFTER_DAY_SECS,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_schemas::AccountId;

    fn event(
        id: &str,
        account: &str,
        at: DateTime<Utc>,
        model: &str,
        input: i64,
        status: Option<i32>,
    ) -> UsageEvent {
        UsageEvent {
            event_id: id.into(),
            occurred_at: at.timestamp_micros(),
            received_at: at.timestamp_micros(),
            account_id: AccountId::parse(account).unwrap(),
            api_key_id: "k1".into(),
            gateway_id: "g".into(),
            region: "r1".into(),
            cloud: "aws".into(),
            provider: "openai".into(),
            model: model.into(),
            input_tokens: input,
            output_tokens: 2,
            cost_micros: Some(5),
            latency_ms: None,
            status,
            session_id: Some("s1".into()),
            user_id: None,
            plugins: vec![],
            pii_detected: false,
            client_ip_hash: None,
            device_id: None,
            prompt_hash: None,
        }
    }

    #[test]
    fn events_fold_into_every_window_with_per_model_fields_in_days_and_months() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap();
        let keys = Keys::new("p:");
        let mut d = RedisDelta::default();
        fold_event(
            &mut d,
            &keys,
            &event("1", "a", now, "gpt", 10, Some(500)),
            now,
        );
        fold_event(
            &mut d,
            &keys,
            &event("2", "a", now, "claude", 7, Some(200)),
            now,
        );
        let minute = &d.counters["p:u:a:m:202611221230"];
        assert_eq!(minute["req"], 2);
        assert_eq!(minute["err"], 1);
        assert_eq!(minute["in"], 17);
        assert_eq!(minute["out"], 4);
        assert_eq!(minute["cost"], 10);
        for short in ["p:u:a:m:202611221230", "p:u:a:h:2026112212"] {
            assert!(
                !d.counters[short].keys().any(|f| f.starts_with("m:")),
                "{short} has no per-model fields"
            );
        }
        for long in ["p:u:a:d:20261122", "p:u:a:M:202611"] {
            let w = &d.counters[long];
            assert_eq!(w["req"], 2, "{long}");
            assert_eq!(w["m:gpt:in"], 10, "{long}");
            assert_eq!(w["m:gpt:out"], 2, "{long}");
            assert_eq!(w["m:claude:req"], 1, "{long}");
        }
        assert_eq!(d.sets["p:u:a:M:202611:models"].len(), 2);
        assert!(
            !d.sets.contains_key("p:u:a:M:202611:users"),
            "absent users are not members"
        );
        let session = &d.counters["p:u:a:s:s1"];
        assert_eq!(session["in"], 17);
        assert_eq!(session["m:claude:in"], 7);
        // A window's expiry follows from its name: set once, when the key is created. A
        // session's moves with its latest event.
        assert_eq!(
            d.fixed_expiries["p:u:a:m:202611221230"],
            now.timestamp() + 7200
        );
        assert_eq!(
            d.fixed_expiries["p:u:a:M:202611:models"],
            d.fixed_expiries["p:u:a:M:202611"]
        );
        assert!(!d.expiries.contains_key("p:u:a:m:202611221230"));
        assert_eq!(d.expiries["p:u:a:s:s1"], now.timestamp() + 86_400);
        assert!(!d.fixed_expiries.contains_key("p:u:a:s:s1"));
    }

    #[test]
    fn late_events_skip_windows_that_have_expired() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap();
        let late = now - chrono::Duration::hours(3);
        let mut d = RedisDelta::default();
        fold_event(
            &mut d,
            &Keys::new(""),
            &event("1", "a", late, "gpt", 1, None),
            now,
        );
        assert!(!d.counters.contains_key("u:a:m:202611220930"));
        assert_eq!(d.counters["u:a:h:2026112209"]["req"], 1);
        assert_eq!(d.counters["u:a:d:20261122"]["req"], 1);
        assert!(
            !d.counters["u:a:d:20261122"].contains_key("err"),
            "no status is not an error"
        );
    }

    #[test]
    fn a_delta_counts_its_redis_calls() {
        let mut d = RedisDelta::default();
        d.incr("h", "req", 1);
        d.incr("h", "in", 5);
        d.incr("h", "req", 1);
        for m in ["a", "b", "c", "d"] {
            d.add("s", m);
        }
        d.expire("h", 10);
        d.expire_fixed("s", 10);
        // Two fields, one set of four members (a third of a call each, rounded up), one
        // moving expiry (read, then move); the fixed expiry costs nothing up front.
        assert_eq!(d.redis_calls(), 2 + 1 + 2 + 2);
    }

    #[test]
    fn a_busy_account_is_cut_between_its_events_at_twice_the_budget() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap();
        let keys = Keys::new("");
        let events: Vec<UsageEvent> = (0..200)
            .map(|i| event(&format!("e{i}"), "busy", now, "gpt", 1, None))
            .collect();
        let budget = 30;
        let deltas: Vec<RedisDelta> = account_deltas(&events, &keys, now, budget).collect();
        assert!(deltas.len() > 1, "one account's 200 events are cut");
        let mut ids = 0;
        for d in &deltas {
            // An event's worth over the limit at most: the cut falls between events.
            assert!(d.redis_calls() < 2 * budget + 40, "{}", d.redis_calls());
            let seen = d.sets["seen:20261122"].len();
            assert_eq!(d.counters["u:busy:d:20261122"]["req"], seen as i64);
            ids += seen;
        }
        assert_eq!(ids, 200, "every event in exactly one delta");
    }

    #[test]
    fn deltas_hold_whole_accounts() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap();
        let keys = Keys::new("");
        let events: Vec<UsageEvent> = ["a", "a", "a", "b", "c", "c"]
            .iter()
            .enumerate()
            .map(|(i, acct)| event(&i.to_string(), acct, now, "gpt", 1, None))
            .collect();
        // A budget of 30 calls cuts at every account boundary (one event is more than that),
        // and not inside these small accounts (three events stay under twice that).
        let deltas: Vec<RedisDelta> = account_deltas(&events, &keys, now, 30).collect();
        assert_eq!(deltas.len(), 3);
        for (delta, (account, ids)) in deltas.iter().zip([
            ("a", vec!["0", "1", "2"]),
            ("b", vec!["3"]),
            ("c", vec!["4", "5"]),
        ]) {
            assert_eq!(
                delta.sets["seen:20261122"].iter().collect::<Vec<_>>(),
                ids,
                "{account}"
            );
            assert_eq!(
                delta.counters[&format!("u:{account}:d:20261122")]["req"],
                ids.len() as i64
            );
        }
        // A large limit keeps everything in one delta.
        assert_eq!(account_deltas(&events, &keys, now, 10_000).count(), 1);
    }

    #[test]
    fn seen_marks_go_in_the_occurred_day_set() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 59).unwrap();
        let mut d = RedisDelta::default();
        mark_seen(
            &mut d,
            &Keys::new("x:"),
            &event("e1", "a", at, "m", 1, None),
        );
        assert!(d.sets["x:seen:20261122"].contains("e1"));
        assert_eq!(
            d.fixed_expiries["x:seen:20261122"],
            Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
                .unwrap()
                .timestamp()
                + 36 * 86400
        );
    }
}
