//! The guard: no change may lower a limit that an assigned account already has.
//!
//! The brief's first rule of limit testing is that a takeaway costs more than it teaches. The
//! three ways an experiment could take a limit away are each checked against the accounts it
//! has already assigned, and a refusal lists the accounts and limits (the first few, and how
//! many in all), so whoever asked can see exactly what they would have done:
//!
//! * editing a variant to a lower value (or adding a limit below what the plan gives);
//! * a second, overlapping experiment on the same plan and limit with a lower value: an account
//!   that signs up into both would otherwise be moved down by the later assignment;
//! * stopping with `--revert-limits` when the plan's default is below what the variant gave.

use std::fmt;

use super::{limit_rank, show_limit};

/// One account's limit that a change would lower.
#[derive(Debug, Clone, PartialEq)]
pub struct Lowered {
    pub account_id: String,
    pub limit: String,
    pub from: Option<f64>,
    pub to: Option<f64>,
}

/// A refused change and every account limit it would have lowered.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// What was asked, in words: "editing variant `big` of `q4`".
    pub change: String,
    pub lowered: Vec<Lowered>,
}

/// How many lowered limits a refusal message lists before it summarises.
const LISTED: usize = 10;

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accounts: std::collections::BTreeSet<&str> =
            self.lowered.iter().map(|l| l.account_id.as_str()).collect();
        write!(
            f,
            "refused: {} would lower limits that {} assigned account(s) already have (never reduce a limit on an existing account):",
            self.change,
            accounts.len()
        )?;
        for l in self.lowered.iter().take(LISTED) {
            write!(
                f,
                "\n  {}: {} {} -> {}",
                l.account_id,
                l.limit,
                show_limit(l.from),
                show_limit(l.to)
            )?;
        }
        if self.lowered.len() > LISTED {
            write!(f, "\n  … and {} more", self.lowered.len() - LISTED)?;
        }
        Ok(())
    }
}

/// Whether moving a limit from `from` to `to` lowers it (`None` and `-1` are unlimited).
pub fn lowers(from: Option<f64>, to: Option<f64>) -> bool {
    limit_rank(to) < limit_rank(from)
}

/// `Err` with the refusal when anything in `lowered` is non-empty.
pub fn check(change: String, lowered: Vec<Lowered>) -> Result<(), Refusal> {
    if lowered.is_empty() {
        Ok(())
    } else {
        Err(Refusal { change, lowered })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_is_judged_with_unlimited_on_top() {
        assert!(lowers(Some(30.0), Some(20.0)));
        assert!(!lowers(Some(20.0), Some(30.0)));
        assert!(!lowers(Some(20.0), Some(20.0)));
        assert!(lowers(None, Some(1e12)));
        assert!(lowers(Some(-1.0), Some(5.0)));
        assert!(!lowers(Some(5.0), Some(-1.0)));
        assert!(!lowers(Some(5.0), None));
    }

    #[test]
    fn a_refusal_names_accounts_and_limits_and_summarises_the_rest() {
        let lowered: Vec<Lowered> = (0..12)
            .map(|i| Lowered {
                account_id: format!("acct-{i:02}"),
                limit: "month_requests".into(),
                from: Some(30.0),
                to: Some(20.0),
            })
            .collect();
        let text = check("editing variant `big` of `q4`".into(), lowered)
            .unwrap_err()
            .to_string();
        assert!(text.starts_with("refused: editing variant `big` of `q4` would lower limits that 12 assigned account(s)"), "{text}");
        assert!(text.contains("acct-00: month_requests 30 -> 20"), "{text}");
        assert!(text.contains("… and 2 more"), "{text}");
        assert!(!text.contains("acct-11"), "{text}");
    }
}
