use chrono::TimeZone;

use super::*;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn counters(pairs: &[(&str, i64)]) -> WindowCounters {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn every_key_of_an_account_shares_its_slot_and_every_key_of_a_partition_its_own() {
    let k = HotKeys::new("ml:").unwrap();
    let t = at(2026, 12, 31, 23, 59, 0);
    let account_keys = [
        k.cur("acct-1"),
        k.cur_hash("acct-1"),
        k.session("acct-1", "s-9"),
        k.dims("acct-1", Grain::Month.window_start(t)),
        k.closed("acct-1", Grain::Minute, t),
        k.closed("acct-1", Grain::Month, Grain::Month.window_start(t)),
        k.quota_marker("acct-1", "deny:day_requests:100:20261231"),
    ];
    assert_eq!(
        account_keys,
        [
            "ml:u:{acct-1}:live",
            "ml:u:{acct-1}:cur",
            "ml:u:{acct-1}:s:s-9",
            "ml:u:{acct-1}:M:202612:dims",
            "ml:u:{acct-1}:m:202612312359",
            "ml:u:{acct-1}:M:202612",
            "ml:q:{acct-1}:deny:day_requests:100:20261231",
        ]
    );
    for key in &account_keys {
        assert_eq!(hash_tag(key), "acct-1", "{key}");
    }
    let partition_keys = [
        k.checkpoint(3, "usage-events"),
        k.counted_ids(3, Grain::Day.window_start(t)),
        k.seen(3, Grain::Day.window_start(t)),
        k.accounts(3),
        k.dirty(3),
    ];
    assert_eq!(
        partition_keys,
        [
            "ml:{pt:3}ckpt:usage-events",
            "ml:{pt:3}ids:20261231",
            "ml:{pt:3}seen:20261231",
            "ml:{pt:3}accounts",
            "ml:{pt:3}dirty",
        ]
    );
    for key in &partition_keys {
        assert_eq!(hash_tag(key), "pt:3", "{key}");
    }
    assert_eq!(k.scorer_queues(), "ml:queues");
    assert_eq!(k.scorer_own(), "ml:dirty");
}

#[test]
fn a_prefix_with_a_brace_is_refused_by_name() {
    for bad in ["ml{x}:", "ml}:", "{"] {
        let e = HotKeys::new(bad).unwrap_err();
        assert!(e.to_string().starts_with("redis.key_prefix:"), "{e}");
    }
    assert!(HotKeys::new("").is_ok());
}

#[test]
fn the_hash_tag_follows_the_cluster_rule() {
    // The Redis Cluster specification's own examples.
    for (key, tag) in [
        ("{user1000}.following", "user1000"),
        ("foo{}{bar}", "foo{}{bar}"),
        ("foo{{bar}}zap", "{bar"),
        ("foo{bar}{zap}", "bar"),
        ("no-tag", "no-tag"),
        ("open{only", "open{only"),
    ] {
        assert_eq!(hash_tag(key), tag, "{key}");
    }
}

#[test]
fn field_names() {
    let t = at(2027, 1, 2, 3, 4, 5);
    assert_eq!(
        stamp(Grain::Minute, Grain::Minute.window_start(t)),
        "m:202701020304"
    );
    assert_eq!(
        field(Grain::Day, Grain::Day.window_start(t), "m:gpt-4o:in"),
        "d:20270102:m:gpt-4o:in"
    );
    assert_eq!(
        field(
            Grain::Month,
            Grain::Month.window_start(t),
            &count_name(Dim::ApiKeys)
        ),
        "M:202701:n:api_keys"
    );
    assert_eq!(
        member_name(Dim::Regions, "eu-west-1"),
        "v:regions:eu-west-1"
    );
    assert_eq!(dims_member(Dim::Users, "u-7"), "users:u-7");
    assert_eq!(
        day_session_member(Grain::Day.window_start(t), "s-1"),
        "ds:02:s-1"
    );
}

/// An account's `cur` at 00:01:30 on 1 January: December has not left yet (it leaves five
/// minutes after it ends), January has begun.
fn new_year_cur() -> WindowCounters {
    counters(&[
        ("M:202612:req", 500),
        ("M:202612:n:sessions", 40),
        ("d:20261231:req", 30),
        ("M:202701:req", 7),
        ("M:202701:err", 1),
        ("M:202701:m:gpt-4o:req", 7),
        ("M:202701:m:gpt-4o:in", 700),
        ("M:202701:n:sessions", 2),
        ("M:202701:n:models", 1),
        ("M:202701:v:models:gpt-4o", 1),
        ("M:202701:v:regions:eu-west-1", 1),
        ("M:202701:v:regions:us-east-1", 1),
        ("d:20270101:req", 7),
        ("d:20270101:n:sessions", 2),
        ("h:2027010100:req", 7),
        ("m:202701010001:req", 4),
        ("m:202701010000:req", 3),
        ("m:202612312359:req", 9),
    ])
}

#[test]
fn raw_usage_reads_the_current_windows_and_nothing_older() {
    let now = at(2027, 1, 1, 0, 1, 30);
    let raw = raw_usage(
        &new_year_cur(),
        Some(SessionRead {
            counters: counters(&[("req", 2)]),
            known_this_month: true,
            known_today: false,
        }),
        now,
    );
    assert_eq!(
        raw,
        RawUsage {
            month: counters(&[
                ("req", 7),
                ("err", 1),
                ("m:gpt-4o:req", 7),
                ("m:gpt-4o:in", 700)
            ]),
            day: counters(&[("req", 7)]),
            session: Some(counters(&[("req", 2)])),
            day_sessions: 2,
            month_sessions: 2,
            session_known_today: false,
            session_known_this_month: true,
            requests_this_minute: 4,
            requests_last_minute: 3,
        }
    );
    // A minute later the previous minute is 00:01, and nothing is known of 00:02 yet.
    let later = raw_usage(&new_year_cur(), None, at(2027, 1, 1, 0, 2, 0));
    assert_eq!(
        (later.requests_this_minute, later.requests_last_minute),
        (0, 4)
    );
    assert_eq!(later.session, None);
    // An empty `cur` (a new account, or the first seconds of a day the aggregator has not
    // written yet) reads as nothing used, as missing keys do today.
    assert_eq!(
        raw_usage(&WindowCounters::new(), None, now),
        RawUsage::default()
    );
}

#[test]
fn a_window_is_read_from_cur_while_it_is_there_and_from_its_closed_hash_after() {
    let cur = new_year_cur();
    let dec = Grain::Month.window_start(at(2026, 12, 5, 0, 0, 0));
    let closed = counters(&[("req", 123)]);
    // Still in `cur`: the closed hash (if one were there) is not looked at.
    assert_eq!(
        window(&cur, Some(&closed), Grain::Month, dec),
        counters(&[("req", 500)])
    );
    let nov = Grain::Month.window_start(at(2026, 11, 5, 0, 0, 0));
    assert_eq!(window(&cur, Some(&closed), Grain::Month, nov), closed);
    assert_eq!(window(&cur, None, Grain::Month, nov), WindowCounters::new());
    let hour = Grain::Hour.window_start(at(2027, 1, 1, 0, 0, 0));
    assert_eq!(
        window(&cur, None, Grain::Hour, hour),
        counters(&[("req", 7)])
    );
}

#[test]
fn the_month_lists_come_sorted_from_this_month_only() {
    let now = at(2027, 1, 1, 0, 1, 30);
    let mut cur = new_year_cur();
    cur.insert("M:202612:v:models:old-model".into(), 1);
    assert_eq!(
        month_lists(&cur, now),
        MonthLists {
            models: vec!["gpt-4o".into()],
            providers: vec![],
            regions: vec!["eu-west-1".into(), "us-east-1".into()],
            clouds: vec![],
        }
    );
}

#[test]
fn cur_reads_back_its_guard_and_fields_and_its_header_has_fixed_offsets() {
    let fields = counters(&[
        ("M:202612:req", 3),
        ("M:202612:m:gpt 4 o:in", -7),
        ("M:202612:v:regions:eu west 1", 1),
        ("s:sess:1", 1_764_865_200),
    ]);
    let value = encode_cur(
        42,
        1_234_567,
        "usage-events:5",
        fields.iter().map(|(f, v)| (f.as_str(), *v)),
    );
    assert_eq!(
        decode_cur(&value),
        Cur {
            epoch: 42,
            offset: 1_234_567,
            topic_partition: "usage-events:5".into(),
            fields: fields.clone(),
        }
    );
    // snap.lua and claim_account.lua read the epoch at bytes 1–20 and the offset at 22–41, and
    // a claim rewrites the epoch in place.
    let text = String::from_utf8(value).unwrap();
    assert_eq!(&text[..20], format!("{:>20}", 42));
    assert_eq!(&text[21..41], format!("{:>20}", 1_234_567));
    assert!(text.find('\n').unwrap() < CUR_HEADER_MAX);
    // A claim's header alone, with no writer yet.
    let claimed = encode_cur(7, -1, "", std::iter::empty());
    assert_eq!(
        decode_cur(&claimed),
        Cur {
            epoch: 7,
            offset: -1,
            ..Cur::default()
        }
    );
}

#[test]
fn a_reader_takes_the_value_when_there_is_one_else_the_hash_written_before_it() {
    let hash = vec![
        ("_e".to_owned(), "3".to_owned()),
        ("d:20261204:req".to_owned(), "5".to_owned()),
    ];
    assert_eq!(
        read_cur(None, hash.clone()),
        counters(&[("d:20261204:req", 5)])
    );
    let value = encode_cur(4, 9, "t:0", [("d:20261204:req", 6)]);
    assert_eq!(
        read_cur(Some(value), hash),
        counters(&[("d:20261204:req", 6)])
    );
}

proptest::proptest! {
    /// Any field without a control character, and any value, reads back as written.
    #[test]
    fn cur_round_trips(
        epoch in 0i64..i64::MAX,
        offset in -1i64..i64::MAX,
        tp in "[a-zA-Z0-9._-]{1,40}:[0-9]{1,4}",
        fields in proptest::collection::hash_map("[^\\p{Cc}]{1,40}", proptest::num::i64::ANY, 0..40),
    ) {
        let value = encode_cur(epoch, offset, &tp, fields.iter().map(|(f, v)| (f.as_str(), *v)));
        let cur = decode_cur(&value);
        proptest::prop_assert_eq!(cur, Cur { epoch, offset, topic_partition: tp, fields });
    }
}

#[test]
fn cur_lines_name_each_field_as_the_names_functions_do() {
    let day = at(2026, 12, 4, 0, 0, 0);
    let stamp = stamp(Grain::Day, day);
    let mut lines = CurLines::default();
    lines.counter(&stamp, "req", 3);
    lines.model(&stamp, "gpt 4o", "in", 40);
    lines.count(&stamp, Dim::Sessions, 2);
    lines.member(&stamp, Dim::Regions, "eu-west-1");
    lines.session("s:1", 1_764_806_400);
    let lines = lines.into_bytes();
    let want = counters(&[
        (&field(Grain::Day, day, "req"), 3),
        (&field(Grain::Day, day, "m:gpt 4o:in"), 40),
        (&field(Grain::Day, day, &count_name(Dim::Sessions)), 2),
        (
            &field(Grain::Day, day, &member_name(Dim::Regions, "eu-west-1")),
            1,
        ),
        (&session_mark("s:1"), 1_764_806_400),
    ]);
    assert_eq!(decode_cur_lines(&lines), want);
    assert_eq!(decode_cur(&cur_value(5, 6, "t:1", &lines)).fields, want);
}
