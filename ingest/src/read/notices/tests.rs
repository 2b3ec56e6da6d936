//! The in-memory rules of the notice cache: one notice per account (the most recent), expiry by
//! the clock alone, reloads that replace only the accounts they name.

use chrono::TimeZone;

use super::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 23, minute, 0).unwrap()
}

/// A notice created at minute `created`, expiring at minute `expires`.
fn notice(id: u128, created: u32, expires: u32) -> DashboardNotice {
    DashboardNotice {
        notice_id: Uuid::from_u128(id),
        kind: "rate_limit_sustained".into(),
        message: format!("notice {id}"),
        upgrade_url: "https://up.example/upgrade?plan=pro".into(),
        plan: "pro".into(),
        created_at: at(created),
        expires_at: at(expires),
    }
}

fn rows(v: &[(&str, DashboardNotice)]) -> Vec<(String, DashboardNotice)> {
    v.iter()
        .map(|(a, n)| ((*a).to_owned(), n.clone()))
        .collect()
}

fn ids(board: &Board, accounts: &[&str], now: DateTime<Utc>) -> Vec<Option<u128>> {
    accounts
        .iter()
        .map(|a| board.current(a, now).map(|n| n.notice_id.as_u128()))
        .collect()
}

#[test]
fn a_lookup_answers_the_accounts_latest_notice_until_it_expires() {
    let mut board = Board::default();
    board.replace(rows(&[
        ("a", notice(1, 0, 30)),
        // Two for one account, in either order: the more recent one is the one offered.
        ("b", notice(2, 5, 40)),
        ("b", notice(3, 10, 20)),
        ("c", notice(5, 10, 20)),
        ("c", notice(4, 5, 40)),
    ]));
    let accounts = ["a", "b", "c", "nobody"];
    // (now, expected notice per account)
    let cases: [(u32, [Option<u128>; 4]); 4] = [
        (11, [Some(1), Some(3), Some(5), None]),
        (19, [Some(1), Some(3), Some(5), None]),
        // Expired by the clock alone: no notification, no reload.
        (20, [Some(1), None, None, None]),
        (30, [None, None, None, None]),
    ];
    for (minute, want) in cases {
        assert_eq!(
            ids(&board, &accounts, at(minute)),
            want,
            "at minute {minute}"
        );
    }
}

#[test]
fn a_reload_replaces_exactly_the_accounts_it_names() {
    // (what PostgreSQL now holds for the reloaded accounts, the accounts reloaded, expected
    // notices for a, b, c afterwards)
    type Case = (
        &'static [(&'static str, u128)],
        &'static [&'static str],
        [Option<u128>; 3],
    );
    let cases: [Case; 5] = [
        // `a`'s notice was shown: gone; nothing else moves.
        (&[], &["a"], [None, Some(2), None]),
        // A new notice for `c`.
        (&[("c", 7)], &["c"], [Some(1), Some(2), Some(7)]),
        // `b` got a newer notice: it replaces the older one.
        (&[("b", 8)], &["b"], [Some(1), Some(8), None]),
        // A batch: `a` clicked, `b` unchanged, `c` new.
        (
            &[("b", 2), ("c", 9)],
            &["a", "b", "c"],
            [None, Some(2), Some(9)],
        ),
        // A notification for an account with nothing unseen, or unknown: harmless.
        (&[], &["zzz"], [Some(1), Some(2), None]),
    ];
    for (held, reloaded, want) in cases {
        let mut board = Board::default();
        board.replace(rows(&[("a", notice(1, 0, 50)), ("b", notice(2, 1, 50))]));
        let fresh = held
            .iter()
            .map(|(a, id)| ((*a).to_owned(), notice(*id, 10, 50)))
            .collect();
        let reloaded: Vec<String> = reloaded.iter().map(|a| (*a).to_owned()).collect();
        board.apply(&reloaded, fresh);
        assert_eq!(
            ids(&board, &["a", "b", "c"], at(20)),
            want,
            "reloading {reloaded:?} with {held:?}"
        );
    }
}

#[test]
fn memory_holds_only_unexpired_notices_after_pruning_and_a_resync_forgets_the_rest() {
    let mut board = Board::default();
    board.replace(rows(&[
        ("a", notice(1, 0, 10)),
        ("b", notice(2, 0, 20)),
        ("c", notice(3, 0, 30)),
    ]));
    board.prune(at(20));
    assert_eq!(board.0.len(), 1, "only c's notice is still current");
    assert_eq!(ids(&board, &["c"], at(20)), [Some(3)]);
    // A full reload is the truth: what it does not name is gone.
    board.replace(rows(&[("d", notice(4, 0, 40))]));
    assert_eq!(ids(&board, &["c", "d"], at(21)), [None, Some(4)]);
    assert_eq!(board.0.len(), 1);
}
