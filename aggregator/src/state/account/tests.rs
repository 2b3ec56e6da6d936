use chrono::Duration;
use meterline_schemas::AccountId;

use super::*;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// One request of `acct-1` at `t` (the partition's and the inserter's tests reuse it).
pub(crate) fn event(t: DateTime<Utc>, model: &str, session: &str, user: &str) -> UsageEvent {
    UsageEvent {
        event_id: "e".into(),
        occurred_at: t.timestamp_micros(),
        received_at: t.timestamp_micros(),
        account_id: AccountId::parse("acct-1").unwrap(),
        api_key_id: "k1".into(),
        gateway_id: "g".into(),
        region: "eu-west-1".into(),
        cloud: "aws".into(),
        provider: "openai".into(),
        model: model.into(),
        input_tokens: 100,
        output_tokens: 10,
        cost_micros: Some(7),
        latency_ms: None,
        status: Some(200),
        session_id: Some(session.into()),
        user_id: Some(user.into()),
        plugins: vec![],
        pii_detected: false,
        client_ip_hash: None,
        device_id: None,
        prompt_hash: None,
    }
}

#[test]
fn events_add_up_in_place_and_members_count_once() {
    let now = at(2026, 12, 3, 10, 0, 30);
    let mut a = AccountState::default();
    a.fold(&event(now, "gpt-4o", "s-1", "u-1"), now);
    a.fold(&event(now, "gpt-4o", "s-1", "u-2"), now);
    a.fold(&event(now, "claude-3-haiku", "s-2", "u-1"), now);
    let cur = a.cur_fields(now);
    let get = |f: &str| cur.get(f).copied();
    assert_eq!(get("M:202612:req"), Some(3));
    assert_eq!(get("d:20261203:in"), Some(300));
    assert_eq!(get("h:2026120310:out"), Some(30));
    assert_eq!(get("m:202612031000:cost"), Some(21));
    assert_eq!(get("M:202612:err"), None, "zeros are left out");
    assert_eq!(get("M:202612:m:gpt-4o:req"), Some(2));
    assert_eq!(get("d:20261203:m:claude-3-haiku:in"), Some(100));
    assert_eq!(
        get("h:2026120310:m:gpt-4o:req"),
        None,
        "hours carry no models"
    );
    assert_eq!(get("M:202612:n:users"), Some(2));
    assert_eq!(get("M:202612:n:sessions"), Some(2));
    assert_eq!(get("M:202612:n:models"), Some(2));
    assert_eq!(get("M:202612:n:regions"), Some(1));
    assert_eq!(get("M:202612:n:ip_hashes"), None, "no ip hash was given");
    assert_eq!(get("d:20261203:n:sessions"), Some(2));
    assert_eq!(
        a.session_fields("s-1"),
        Some(
            [
                ("req", 2),
                ("in", 200),
                ("out", 20),
                ("cost", 14),
                ("m:gpt-4o:in", 200),
                ("m:gpt-4o:out", 20)
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
        )
    );
    assert_eq!(a.session_fields("s-9"), None);

    let month = at(2026, 12, 1, 0, 0, 0);
    let new = a.take_new_members();
    // The short lists' new members are in their window's list, written whole with `cur`.
    let mut listed: Vec<(Dim, &str)> = Vec::new();
    for w in a.windows.iter().filter(|w| w.grain == Grain::Month) {
        listed.extend(w.listed().iter().map(|(dim, m)| (*dim, &**m)));
    }
    assert_eq!(
        listed,
        [
            (Dim::Models, "gpt-4o"),
            (Dim::Providers, "openai"),
            (Dim::Regions, "eu-west-1"),
            (Dim::Clouds, "aws"),
            (Dim::Models, "claude-3-haiku"),
        ]
    );
    let dims: Vec<&str> = new
        .iter()
        .map(|NewMember { month: m, field }| {
            assert_eq!(*m, month);
            field.as_str()
        })
        .collect();
    assert_eq!(
        dims,
        // In fold order: the day (its session) before the month.
        [
            "ds:03:s-1",
            "users:u-1",
            "api_keys:k1",
            "sessions:s-1",
            "users:u-2",
            "ds:03:s-2",
            "sessions:s-2",
        ]
    );
    assert!(a.take_new_members().is_empty(), "each is given once");
    a.fold(&event(now, "gpt-4o", "s-1", "u-1"), now);
    assert!(a.take_new_members().is_empty(), "known members are not new");
}

/// What `cur` holds once `snap.lua` has written `s`: its value, as a reader decodes it.
fn stored_cur(s: &Snapshot) -> WindowCounters {
    let value = hot::cur_value(3, 7, "usage:0", &s.cur);
    hot::decode_cur(&value).fields
}

#[test]
fn a_window_moves_to_its_closed_hash_once_and_later_events_add_to_it() {
    let t = at(2026, 12, 3, 10, 0, 30);
    let mut a = AccountState::default();
    a.fold(&event(t, "gpt-4o", "s-1", "u-1"), t);
    a.fold(&event(t, "gpt-4o", "s-1", "u-2"), t);
    let first = a.snapshot(t);
    assert!(first.moves.is_empty() && first.late.is_empty());
    a.written(t);

    // Three minutes after it started, the minute moves: its whole value goes to its closed
    // hash, and `cur` is written without it.
    let later = at(2026, 12, 3, 10, 3, 0);
    let s = a.snapshot(later);
    assert_eq!(
        s.moves,
        [Moved {
            grain: Grain::Minute,
            start: at(2026, 12, 3, 10, 0, 0),
            fields: [("cost", 14), ("in", 200), ("out", 20), ("req", 2)]
                .into_iter()
                .map(|(f, v)| (f.to_owned(), v))
                .collect(),
        }]
    );
    assert!(!stored_cur(&s).contains_key("m:202612031000:req"));
    assert_eq!(
        stored_cur(&s).get("h:2026120310:req"),
        Some(&2),
        "an unchanged window is written again: cur is written whole"
    );
    assert_eq!(stored_cur(&s).get("M:202612:v:models:gpt-4o"), Some(&1));
    assert_eq!(
        a.cur_fields(later).get("h:2026120310:req"),
        Some(&2),
        "the hour stays"
    );
    a.written(later);
    assert!(a.snapshot(later).moves.is_empty(), "a window moves once");

    // An event for the moved minute opens a late window: the snapshot adds the event alone.
    a.fold(&event(t, "gpt-4o", "s-1", "u-3"), later);
    let s = a.snapshot(later);
    assert_eq!(
        s.late,
        [LateWindow {
            grain: Grain::Minute,
            start: at(2026, 12, 3, 10, 0, 0),
            fields: [("cost", 7), ("in", 100), ("out", 10), ("req", 1)]
                .into_iter()
                .map(|(f, v)| (f.to_owned(), v))
                .collect(),
        }]
    );
    assert_eq!(
        s.cur_fields().get("h:2026120310:req"),
        Some(&3),
        "live windows count it whole"
    );
    assert_eq!(s.cur_fields().get("M:202612:n:users"), Some(&3));
    assert!(s.late_members.is_empty(), "minutes count no members");
    a.written(later);
    assert!(a.snapshot(later).late.is_empty(), "written once");
}

#[test]
fn late_members_go_where_the_closed_window_keeps_them() {
    // December is closed by January's sixth minute; an event of December 31 23:00 opens a
    // late month, day, hour and minute (kept two hours).
    let now = at(2027, 1, 1, 0, 6, 0);
    let dec = at(2026, 12, 1, 0, 0, 0);
    let day = at(2026, 12, 31, 0, 0, 0);
    let mut a = AccountState::default();
    a.fold(
        &event(at(2026, 12, 31, 23, 0, 0), "gpt-4o", "s-1", "u-1"),
        now,
    );
    let s = a.snapshot(now);
    assert!(
        s.cur_fields().keys().all(|f| f.starts_with("s:")),
        "{:?}",
        s.cur_fields()
    );
    assert_eq!(
        s.late
            .iter()
            .map(|w| (w.grain, w.start))
            .collect::<Vec<_>>(),
        [
            (Grain::Month, dec),
            (Grain::Day, day),
            (Grain::Hour, at(2026, 12, 31, 23, 0, 0)),
            (Grain::Minute, at(2026, 12, 31, 23, 0, 0)),
        ]
    );
    let members: Vec<(MemberSet, &str, Grain, &str)> = s
        .late_members
        .iter()
        .map(|m| (m.set, m.field.as_str(), m.grain, m.count_field.as_str()))
        .collect();
    assert_eq!(
        members,
        [
            (MemberSet::Dims(dec), "ds:31:s-1", Grain::Day, "n:sessions"),
            (
                MemberSet::ClosedMonth(dec),
                "v:models:gpt-4o",
                Grain::Month,
                "n:models"
            ),
            (
                MemberSet::ClosedMonth(dec),
                "v:providers:openai",
                Grain::Month,
                "n:providers"
            ),
            (
                MemberSet::ClosedMonth(dec),
                "v:regions:eu-west-1",
                Grain::Month,
                "n:regions"
            ),
            (
                MemberSet::ClosedMonth(dec),
                "v:clouds:aws",
                Grain::Month,
                "n:clouds"
            ),
            (MemberSet::Dims(dec), "users:u-1", Grain::Month, "n:users"),
            (
                MemberSet::Dims(dec),
                "api_keys:k1",
                Grain::Month,
                "n:api_keys"
            ),
            (
                MemberSet::Dims(dec),
                "sessions:s-1",
                Grain::Month,
                "n:sessions"
            ),
        ]
    );
    assert!(
        a.new_members().is_empty(),
        "late members are not counted in memory"
    );
}

#[test]
fn windows_leave_cur_on_time() {
    let t = at(2026, 12, 31, 23, 59, 10);
    let mut a = AccountState::default();
    a.fold(&event(t, "gpt-4o", "s-1", "u-1"), t);
    let has = |now: DateTime<Utc>, f: &str| a.cur_fields(now).contains_key(f);
    // A minute stays three minutes after it starts.
    assert!(has(at(2027, 1, 1, 0, 1, 59), "m:202612312359:req"));
    assert!(!has(at(2027, 1, 1, 0, 2, 0), "m:202612312359:req"));
    // The hour, the day and the month stay five minutes after they end.
    for f in ["h:2026123123:req", "d:20261231:req", "M:202612:req"] {
        assert!(has(at(2027, 1, 1, 0, 4, 59), f), "{f}");
        assert!(!has(at(2027, 1, 1, 0, 5, 0), f), "{f}");
    }
}

#[test]
fn a_late_event_skips_windows_already_expired() {
    let now = at(2026, 12, 3, 10, 0, 0);
    let late = now - Duration::hours(3);
    let mut a = AccountState::default();
    a.fold(&event(late, "gpt-4o", "s-1", "u-1"), now);
    let cur = a.cur_fields(now);
    // The minute (two hours' retention) is gone, and three hours ago it had left `cur` anyway;
    // the hour is kept but closed; the day and month count it.
    assert!(a.windows.iter().all(|w| w.grain != Grain::Minute));
    assert!(a.windows.iter().any(|w| w.grain == Grain::Hour));
    assert!(!cur.contains_key("h:2026120307:req"));
    assert_eq!(cur.get("d:20261203:req"), Some(&1));
    // Sessions keep 24 hours after their event.
    assert!(a.session_fields("s-1").is_some());
    let mut b = AccountState::default();
    b.fold(
        &event(now - Duration::hours(25), "gpt-4o", "s-1", "u-1"),
        now,
    );
    assert_eq!(b.session_fields("s-1"), None);
}

#[test]
fn a_session_expires_a_day_after_its_latest_event_rounded_up_to_the_hour() {
    let now = at(2026, 12, 3, 10, 20, 0);
    let mut a = AccountState::default();
    a.fold(
        &event(at(2026, 12, 3, 9, 15, 30), "gpt-4o", "s-1", "u-1"),
        now,
    );
    a.fold(
        &event(at(2026, 12, 3, 10, 0, 0), "gpt-4o", "s-2", "u-1"),
        now,
    );
    let sessions = a.sessions(now);
    let expiries: Vec<(&str, i64)> = sessions
        .iter()
        .map(|s| (s.id.as_str(), s.expires_at))
        .collect();
    assert_eq!(
        expiries,
        [
            ("s-1", at(2026, 12, 4, 10, 0, 0).timestamp()),
            ("s-2", at(2026, 12, 4, 10, 0, 0).timestamp()),
        ]
    );
    assert_eq!(
        sessions[0].fields,
        a.session_fields("s-1")
            .unwrap()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    // Past its day, a session is no longer written.
    assert!(a
        .sessions(at(2026, 12, 4, 9, 15, 30))
        .iter()
        .all(|s| s.id != "s-1"));
}

mod reload {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    struct Shape {
        age: i64,
        model: &'static str,
        region: &'static str,
        user: Option<&'static str>,
        session: Option<&'static str>,
        api_key: &'static str,
        ip: Option<&'static str>,
        status: i32,
        input: i64,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        let pick = |xs: &'static [&'static str]| proptest::sample::select(xs);
        (
            0i64..120,
            pick(&["gpt-4o", "gpt-4o-mini", "claude-3-haiku"]),
            pick(&["eu-west-1", "us-east-1"]),
            proptest::option::of(pick(&["u-1", "u-2", "u-3"])),
            proptest::option::of(pick(&["s-1", "s-2", "s-3"])),
            pick(&["k-1", "k-2"]),
            proptest::option::of(pick(&["ip-1", "ip-2"])),
            prop_oneof![Just(200), Just(500)],
            0i64..1000,
        )
            .prop_map(
                |(age, model, region, user, session, api_key, ip, status, input)| Shape {
                    age,
                    model,
                    region,
                    user,
                    session,
                    api_key,
                    ip,
                    status,
                    input,
                },
            )
    }

    fn ev(s: &Shape, now: DateTime<Utc>) -> UsageEvent {
        let mut e = event(
            now - Duration::seconds(s.age),
            s.model,
            s.session.unwrap_or_default(),
            s.user.unwrap_or_default(),
        );
        e.session_id = s.session.map(str::to_owned);
        e.user_id = s.user.map(str::to_owned);
        e.region = s.region.into();
        e.api_key_id = s.api_key.into();
        e.client_ip_hash = s.ip.map(str::to_owned);
        e.status = Some(s.status);
        e.input_tokens = s.input;
        e
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A flush copies [`AccountState::pending`] in the consumer's loop and builds the
        /// snapshot from the copy on its task: the same snapshot as the whole state's, with
        /// windows changed, leaving `cur` (up to three days later) or late, before and after a
        /// write.
        #[test]
        fn a_snapshot_built_from_the_pending_copy_is_the_whole_states(
            first in proptest::collection::vec(shape(), 0..40),
            second in proptest::collection::vec(shape(), 0..40),
            gap in 0i64..(3 * 86_400),
            which_now in 0..2usize,
        ) {
            let now = [at(2026, 12, 15, 12, 30, 30), at(2027, 1, 1, 0, 1, 0)][which_now];
            let later = now + Duration::seconds(gap);
            let mut a = AccountState::default();
            for s in &first {
                a.fold(&ev(s, now), now);
            }
            prop_assert_eq!(a.pending().snapshot(now), a.snapshot(now));
            // cur's lines, written straight, hold the fields the names functions make.
            prop_assert_eq!(a.snapshot(now).cur_fields(), a.fields_in_cur(now, true));
            a.written(now);
            for s in &second {
                a.fold(&ev(s, now), later);
            }
            prop_assert_eq!(a.pending().snapshot(later), a.snapshot(later));
        }

        /// Design §6 commit 4: "an evicted and reloaded account compared equal". The
        /// snapshot is taken as `StateWriter` writes it; `now` is mid-month or the first
        /// minute of a year, when December's windows are still in `cur`.
        #[test]
        fn an_account_reloaded_from_its_snapshot_folds_on_exactly_like_the_one_that_wrote_it(
            first in proptest::collection::vec(shape(), 0..40),
            second in proptest::collection::vec(shape(), 0..40),
            which_now in 0..2usize,
        ) {
            let now = [at(2026, 12, 15, 12, 30, 30), at(2027, 1, 1, 0, 1, 0)][which_now];
            let mut original = AccountState::default();
            for s in &first {
                original.fold(&ev(s, now), now);
            }
            let written = original.snapshot(now);
            original.written(now);
            let sessions: HashMap<String, WindowCounters> = written
                .sessions
                .iter()
                .map(|s| (s.id.clone(), s.fields.iter().cloned().collect()))
                .collect();
            let mut loaded = AccountState::load(&stored_cur(&written), &sessions, &written.dims);
            prop_assert_eq!(loaded.cur_fields(now), original.cur_fields(now));
            prop_assert_eq!(loaded.sessions(now), original.sessions(now));
            for s in &second {
                original.fold(&ev(s, now), now);
                loaded.fold(&ev(s, now), now);
            }
            prop_assert_eq!(loaded.cur_fields(now), original.cur_fields(now));
            prop_assert_eq!(loaded.sessions(now), original.sessions(now));
            // The same snapshot, but for the expiries: the writer sent its sessions' and dims'
            // already, the reloaded state does not know that and sends them once. (`cur`'s
            // lines are compared as fields: their order follows the windows' in memory.)
            let (from_loaded, from_original) = (loaded.snapshot(now), original.snapshot(now));
            let without_expiries = |mut s: Snapshot| {
                s.dims_expiry.clear();
                for session in &mut s.sessions {
                    session.set_expiry = false;
                }
                let cur = s.cur_fields();
                s.cur.clear();
                (cur, s)
            };
            prop_assert_eq!(without_expiries(from_loaded), without_expiries(from_original));
            prop_assert_eq!(loaded.take_new_members(), original.take_new_members());
        }
    }
}
