use super::*;
use meterline_schemas::{AccountEventType, Plan};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn row() -> CustomerRow {
    CustomerRow {
        account_id: Some("cust-1".into()),
        plan: Some("enterprise".into()),
        seats: Some(40),
        email_domain: Some("Acme.example".into()),
        company_size: Some(800),
        contact_email: None,
        signed_up_at: Some("2025-06-01T09:30:00Z".into()),
        plan_since: None,
    }
}

fn events(row: CustomerRow) -> Result<Vec<AccountEvent>, String> {
    events_of(row, now(), &IpHasher::new("k")).map_err(|e| e.to_string())
}

#[test]
fn uuid_v5_matches_the_rfc() {
    // RFC 9562's namespace for DNS names; Python's uuid.uuid5(NAMESPACE_DNS, "python.org").
    let dns = uuid::Uuid::from_u128(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8);
    assert_eq!(
        uuid_v5(dns, b"python.org").to_string(),
        "886313e1-3b8a-5372-9b90-0c9aee199e5d"
    );
}

#[test]
fn a_row_without_plan_since_is_a_signup_on_its_plan() {
    let e = events(row()).unwrap();
    assert_eq!(e.len(), 1);
    let s = &e[0];
    assert_eq!(s.kind, AccountEventType::Signup);
    assert_eq!(s.plan, Some(Plan::Enterprise));
    assert_eq!(s.seats, Some(40));
    assert_eq!(s.email_domain.as_deref(), Some("acme.example"));
    assert_eq!(s.company_size, Some(800));
    assert_eq!(
        s.occurred_at,
        parse_time("t", Some("2025-06-01T09:30:00Z"))
            .unwrap()
            .timestamp_micros()
    );
}

#[test]
fn plan_since_makes_a_free_signup_and_a_plan_change() {
    let mut r = row();
    r.plan_since = Some("2026-03-10".into());
    let e = events(r).unwrap();
    let kinds: Vec<_> = e.iter().map(|e| (e.kind, e.plan, e.seats)).collect();
    assert_eq!(
        kinds,
        vec![
            (AccountEventType::Signup, Some(Plan::Free), None),
            (
                AccountEventType::PlanChanged,
                Some(Plan::Enterprise),
                Some(40)
            ),
        ]
    );
    assert_eq!(
        e[1].occurred_at,
        parse_time("t", Some("2026-03-10T00:00:00Z"))
            .unwrap()
            .timestamp_micros()
    );
    // A plan since the signup itself is one signup on that plan.
    let mut r = row();
    r.plan_since = r.signed_up_at.clone();
    assert_eq!(events(r).unwrap().len(), 1);
}

#[test]
fn the_same_row_makes_the_same_ids_whatever_the_time_zone() {
    let a = events(row()).unwrap();
    let mut r = row();
    r.signed_up_at = Some("2025-06-01T11:30:00+02:00".into());
    r.seats = Some(41);
    let b = events(r).unwrap();
    assert_eq!(a[0].event_id, b[0].event_id);
    let mut r = row();
    r.account_id = Some("cust-2".into());
    assert_ne!(a[0].event_id, events(r).unwrap()[0].event_id);
    let mut r = row();
    r.plan_since = Some("2026-01-01T00:00:00Z".into());
    let c = events(r).unwrap();
    assert_ne!(a[0].event_id, c[1].event_id);
}

#[test]
fn a_bad_row_names_the_column_and_the_reason() {
    type Change = fn(&mut CustomerRow);
    // (what, the change to a good row, the refusal)
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "no account",
            |r| r.account_id = None,
            "account_id: required",
        ),
        (
            "bad account",
            |r| r.account_id = Some("a b".into()),
            "account_id: character ' ' is not allowed; use [A-Za-z0-9._:-]",
        ),
        ("no plan", |r| r.plan = None, "plan: required"),
        (
            "bad plan",
            |r| r.plan = Some("gold".into()),
            "plan: \"gold\" is not one of free, pro, enterprise",
        ),
        (
            "no signup",
            |r| r.signed_up_at = None,
            "signed_up_at: required",
        ),
        (
            "bad signup",
            |r| r.signed_up_at = Some("last tuesday".into()),
            "signed_up_at: \"last tuesday\" is not an RFC 3339 timestamp or a date (YYYY-MM-DD)",
        ),
        (
            "future signup",
            |r| r.signed_up_at = Some("2026-11-23".into()),
            "signed_up_at: more than 5 minutes in the future",
        ),
        (
            "before 1970",
            |r| r.signed_up_at = Some("1969-07-20".into()),
            "signed_up_at: before 1970-01-01T00:00:00Z, where the event history starts",
        ),
        (
            "bad plan_since",
            |r| r.plan_since = Some("March".into()),
            "plan_since: \"March\" is not an RFC 3339 timestamp or a date (YYYY-MM-DD)",
        ),
        (
            "plan before signup",
            |r| r.plan_since = Some("2025-01-01".into()),
            "plan_since: before signed_up_at (a plan starts at or after the signup)",
        ),
        (
            "future plan",
            |r| r.plan_since = Some("2026-12-01".into()),
            "plan_since: more than 5 minutes in the future",
        ),
        (
            "bad domain",
            |r| r.email_domain = Some("bob@acme.example".into()),
            "email_domain: \"bob@acme.example\" is not a domain name (give the part after @)",
        ),
        (
            "huge seats",
            |r| r.seats = Some(1 << 40),
            "seats: must be at most 100000000",
        ),
    ];
    for (what, change, want) in cases {
        let mut r = row();
        change(&mut r);
        assert_eq!(events(r).unwrap_err(), want, "{what}");
    }
}

fn read_all(rows: Rows) -> Vec<(u64, Result<CustomerRow, String>)> {
    rows.map(|(l, r)| (l, r.map_err(|e| e.to_string())))
        .collect()
}

#[test]
fn csv_rows_have_their_line_numbers_and_typed_columns() {
    let text = "\u{feff}account_id,plan,Seats,email_domain,company_size,signed_up_at,plan_since\n\
                cust-1,pro,3,acme.example,50,2025-01-01,\n\
                \n\
                \"cust-2\",enterprise,-4,b.example,,2025-01-01,2026-03-01\n\
                cust-3,free,1\n\
                cust-4,free,,,x,2025-01-01,\r\n\
                \r\n\
                \n\
                cust-5,gold,,,,2025-01-01,\r\n";
    let rows = read_all(csv_rows(text.as_bytes().to_vec()).unwrap());
    let want_first = CustomerRow {
        account_id: Some("cust-1".into()),
        plan: Some("pro".into()),
        seats: Some(3),
        email_domain: Some("acme.example".into()),
        company_size: Some(50),
        signed_up_at: Some("2025-01-01".into()),
        ..Default::default()
    };
    assert_eq!(
        rows,
        vec![
            (2, Ok(want_first)),
            (
                4,
                Err("seats: \"-4\" is not a whole number (0 or more)".into())
            ),
            (5, Err("3 fields, the header has 7".into())),
            (
                6,
                Err("company_size: \"x\" is not a whole number (0 or more)".into())
            ),
            (
                9,
                Ok(CustomerRow {
                    account_id: Some("cust-5".into()),
                    plan: Some("gold".into()),
                    signed_up_at: Some("2025-01-01".into()),
                    ..Default::default()
                })
            ),
        ]
    );
}

#[test]
fn a_csv_header_must_name_known_and_required_columns() {
    let err = |text: &str| {
        csv_rows(text.as_bytes().to_vec())
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        err("account_id,plan,signed_up_at,company_szie\n").as_deref(),
        Some("CSV header: column \"company_szie\" is not one of account_id, plan, seats, email_domain, company_size, contact_email, signed_up_at, plan_since")
    );
    assert_eq!(
        err("account_id,signed_up_at\n").as_deref(),
        Some("CSV header: no plan column (required: account_id, plan, signed_up_at)")
    );
    assert_eq!(err("signed_up_at,plan,account_id\n"), None);
}

#[test]
fn json_lines_name_a_wrong_type_or_an_unknown_field() {
    let text = "{\"account_id\":\"cust-1\",\"plan\":\"pro\",\"seats\":3,\"signed_up_at\":\"2025-01-01\"}\n\
                \n\
                {\"account_id\":\"cust-2\",\"plan\":\"pro\",\"seats\":-3}\n\
                {\"account_id\":\"cust-3\",\"plna\":\"pro\"}\n\
                [1]\n";
    let rows = read_all(jsonl_rows(std::io::Cursor::new(text.as_bytes().to_vec())));
    let lines: Vec<u64> = rows.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![1, 3, 4, 5]);
    assert_eq!(rows[0].1.as_ref().unwrap().seats, Some(3));
    assert_eq!(
        rows[1].1.as_ref().unwrap_err(),
        "seats: invalid value: integer `-3`, expected u64"
    );
    assert!(
        rows[2]
            .1
            .as_ref()
            .unwrap_err()
            .contains("unknown field `plna`"),
        "{:?}",
        rows[2].1
    );
    assert!(rows[3]
        .1
        .as_ref()
        .unwrap_err()
        .starts_with("event must be a JSON object"));
}

#[test]
fn the_format_follows_the_extension() {
    for (path, want) in [
        ("c.csv", Some(Format::Csv)),
        ("c.CSV", Some(Format::Csv)),
        ("c.jsonl", Some(Format::Jsonl)),
        ("c.ndjson", Some(Format::Jsonl)),
        ("c.json", Some(Format::Jsonl)),
        ("c.txt", None),
        ("c", None),
    ] {
        assert_eq!(Format::of_path(Path::new(path)), want, "{path}");
    }
}

#[test]
fn a_contact_email_goes_on_the_signup_and_a_bad_one_is_refused_by_name() {
    let mut r = row();
    r.contact_email = Some("Ana@Acme.example".into());
    r.plan_since = Some("2026-03-10".into());
    let e = events(r.clone()).unwrap();
    assert_eq!(e[0].kind, AccountEventType::Signup);
    assert!(e[0].contact_email.is_some());
    assert_eq!(e[1].kind, AccountEventType::PlanChanged);
    assert!(e[1].contact_email.is_none());

    r.contact_email = Some("not an address".into());
    let err = events(r).unwrap_err();
    assert!(err.starts_with("contact_email: "), "{err}");
    assert!(
        !err.contains("not an address"),
        "the address is personal data: {err}"
    );
}
