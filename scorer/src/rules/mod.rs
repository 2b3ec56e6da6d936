//! The rules, one file per family. Each is a pure function of [`AccountFacts`] and its
//! configuration, and every score lists the reasons it adds up from.
//!
//! [`AccountFacts`]: crate::facts::AccountFacts

pub mod abuse;
pub mod deal;
pub mod gates;
pub mod power;
pub mod pql;
pub mod proximity;

use serde::Serialize;

/// One rule that fired: its name, what it added and the inputs that made it fire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub rule: String,
    pub points: u32,
    pub detail: String,
}

/// A 0–100 score with the reasons it adds up from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    pub value: u32,
    pub reasons: Vec<Reason>,
}

impl Score {
    pub(crate) fn add(&mut self, rule: &str, points: u32, detail: String) {
        self.reasons.push(Reason {
            rule: rule.into(),
            points,
            detail,
        });
        self.value = (self.value + points).min(100);
    }
}

/// The median of `v` (which it sorts), or `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}
