//! Text for people: `meterline scores ACCOUNT` and `meterline notifications list`.

use std::fmt::Write;

use meterline_scorer::rules::Score;
use meterline_scorer::score::Scores;

fn section(out: &mut String, name: &str, s: &Score) {
    let _ = writeln!(out, "{name}: {}/100", s.value);
    if s.reasons.is_empty() {
        let _ = writeln!(out, "  (no rule fired)");
    }
    for r in &s.reasons {
        let _ = writeln!(out, "  +{:<3} {}: {}", r.points, r.rule, r.detail);
    }
}

pub fn scores_text(s: &Scores) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "account {} ({} plan), scored {}",
        s.account_id,
        s.plan.as_str(),
        s.scored_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    section(&mut out, "deal readiness", &s.deal_readiness);
    section(&mut out, "PQL", &s.pql);
    section(&mut out, "abuse", &s.abuse);
    if s.abuse_suspected {
        let _ = writeln!(out, "  => suspected abuse");
    }
    if let Some(p) = &s.power_user {
        let _ = writeln!(out, "power user: {}", p.detail);
    }
    let _ = writeln!(out, "limits:");
    for l in &s.limits {
        let st = &l.status;
        let _ = write!(
            out,
            "  {:<24} {:>14} of {:<14}",
            st.name,
            st.used.map_or("-".into(), |u| format!("{u:.0}")),
            if st.limit < 0.0 {
                "unlimited".into()
            } else {
                format!("{:.0}", st.limit)
            }
        );
        if let Some(stage) = st.stage {
            let _ = write!(out, " stage {stage} %");
        }
        if let Some(shape) = l.shape {
            let _ = write!(out, " ({shape:?})");
        }
        if let Some(h) = l.hours_to_limit {
            let _ = write!(out, " ~{h:.0} h to the limit");
        }
        let _ = writeln!(out);
    }
    for t in &s.plugin_triggers {
        let _ = writeln!(
            out,
            "plugin desired: {} ({}): {}",
            t.plugin, t.trigger, t.evidence
        );
    }
    if let Some(r) = &s.rate_limit_sustained {
        let _ = writeln!(
            out,
            "rate limit: over for {} minutes since {} (peak {}/min)",
            r.minutes_over, r.start, r.peak_rpm
        );
    }
    for k in &s.shared_keys {
        let _ = writeln!(
            out,
            "shared key: {} from {} IPs at {}",
            k.api_key_id, k.distinct_ips, k.minute
        );
    }
    for m in &s.multi_accounts {
        let _ = writeln!(
            out,
            "multi-account: matches {} on {}",
            m.other_account,
            m.signals.join(", ")
        );
    }
    for t in &s.tags {
        let _ = writeln!(out, "escalation: {t}");
    }
    for n in &s.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The outbox as a table: one line per notification, its last error under it.
pub fn notifications_table(rows: &[meterline_notifier::outbox::Listed]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no notifications\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<11} {:<28} {:<22} {:<24} {:>3}  created",
        "id", "status", "destination", "kind", "account", "try"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>6}  {:<11} {:<28} {:<22} {:<24} {:>3}  {}",
            r.id,
            r.status,
            r.destination,
            r.kind,
            r.account_id,
            r.attempts,
            r.created_at.format("%Y-%m-%d %H:%M:%S")
        );
        if let Some(e) = &r.last_error {
            let _ = writeln!(out, "        last error: {e}");
        }
        if let Some(to) = &r.delivered_to {
            let _ = writeln!(out, "        delivered to: {to}");
        }
        if let Some(d) = &r.detail {
            let _ = writeln!(out, "        routing: {d}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use meterline_notifier::outbox::{Listed, OutboxStatus};
    use meterline_schemas::SignalKind;

    #[test]
    fn a_notification_shows_its_error_where_it_went_and_what_routing_decided() {
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 16, 30, 0).unwrap();
        let row = Listed {
            id: 7,
            account_id: "acct-1".into(),
            destination: "hubspot".into(),
            kind: SignalKind::DealReady,
            signal_id: "acct-1:deal_ready:202612:75".into(),
            status: OutboxStatus::Sent,
            attempts: 1,
            last_error: None,
            delivered_to: Some("deal 42".into()),
            detail: Some("no company: gmail.com is a public email domain".into()),
            created_at: at,
            next_attempt_at: at,
            sent_at: Some(at),
        };
        let text = notifications_table(&[row]);
        assert!(text.contains("        delivered to: deal 42\n"), "{text}");
        assert!(
            text.contains("        routing: no company: gmail.com is a public email domain\n"),
            "{text}"
        );
        assert!(!text.contains("last error"), "{text}");
    }
}
