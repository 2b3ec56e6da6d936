//! `--check`: the raised signals against the ground truth, as precision and recall per kind,
//! and three outcomes that must never happen, each a count with the account ids:
//!
//! * **paying accounts denied**: a Pro or Enterprise account for which `/v1/quota/check`
//!   (through the read path, at the end of the run) answers `deny`;
//! * **Enterprise accounts prospected**: an Enterprise account with an outbox row of a sales or
//!   upgrade kind (anything but the trust-and-safety kinds), a HubSpot deal, or a dashboard
//!   notice;
//! * **notices naming a plan the account already has**: a dashboard notice whose plan, or a plan
//!   its text names, is not above the lowest plan the account held during the simulated days
//!   (a converter may have been offered Pro before it bought it).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;

use meterline_schemas::{Plan, SignalKind};

use crate::population::Behaviour;
use crate::truth::*;

/// Precision and recall of one signal kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindScore {
    pub kind: String,
    pub expected: usize,
    pub raised: usize,
    pub true_positives: usize,
    pub precision: f64,
    pub recall: f64,
    pub checked: bool,
    /// Expected and not raised.
    pub missed: Vec<String>,
    /// Raised and not expected.
    pub unexpected: Vec<String>,
    /// Behaviour (or edge side) → [missed, unexpected]: where the errors come from.
    pub errors_by_behaviour: BTreeMap<String, [usize; 2]>,
}

/// The outcomes that must never happen (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyFindings {
    pub paying_denied: Vec<String>,
    pub enterprise_prospected: Vec<String>,
    pub notices_naming_held_plan: Vec<String>,
}

impl PolicyFindings {
    pub fn is_clean(&self) -> bool {
        self.paying_denied.is_empty()
            && self.enterprise_prospected.is_empty()
            && self.notices_naming_held_plan.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub kinds: Vec<KindScore>,
    /// Power users the scorer suspected of abuse (must be none).
    pub power_users_flagged: Vec<String>,
    pub policy: PolicyFindings,
    pub min_precision: f64,
    pub min_recall: f64,
    pub passed: bool,
}

fn ids(v: &[String]) -> String {
    const SHOWN: usize = 5;
    if v.is_empty() {
        return String::new();
    }
    let mut s = v.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > SHOWN {
        s.push_str(&format!(", … (+{})", v.len() - SHOWN));
    }
    format!("  {s}")
}

impl CheckReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<22} {:>8} {:>7} {:>5} {:>10} {:>7}\n",
            "signal", "expected", "raised", "hits", "precision", "recall"
        );
        for k in &self.kinds {
            if !k.checked {
                out.push_str(&format!(
                    "{:<22} {:>8} {:>7} {:>5} {:>10} {:>7}  (not predicted by the ground truth)\n",
                    k.kind, "-", k.raised, "-", "-", "-"
                ));
                continue;
            }
            let flag = if k.precision >= self.min_precision && k.recall >= self.min_recall {
                "  ok"
            } else {
                "  BELOW THRESHOLD"
            };
            out.push_str(&format!(
                "{:<22} {:>8} {:>7} {:>5} {:>10.3} {:>7.3}{flag}\n",
                k.kind, k.expected, k.raised, k.true_positives, k.precision, k.recall
            ));
        }
        for k in self.kinds.iter().filter(|k| {
            k.checked && (k.precision < self.min_precision || k.recall < self.min_recall)
        }) {
            let side = |slot: usize| -> String {
                let v: Vec<String> = k
                    .errors_by_behaviour
                    .iter()
                    .filter(|(_, n)| n[slot] > 0)
                    .map(|(b, n)| format!("{b} {}", n[slot]))
                    .collect();
                if v.is_empty() {
                    "none".into()
                } else {
                    v.join(", ")
                }
            };
            out.push_str(&format!(
                "  {}: missed: {}; raised unexpectedly: {}\n",
                k.kind,
                side(0),
                side(1)
            ));
        }
        let p = &self.policy;
        for (what, v) in [
            ("power users suspected of abuse", &self.power_users_flagged),
            ("paying accounts denied", &p.paying_denied),
            ("Enterprise accounts prospected", &p.enterprise_prospected),
            (
                "notices naming a plan already held",
                &p.notices_naming_held_plan,
            ),
        ] {
            out.push_str(&format!("{what:<36} {:>5}{}\n", v.len(), ids(v)));
        }
        out.push_str(&format!(
            "check (precision >= {}, recall >= {} for {}; none of the four above): {}\n",
            self.min_precision,
            self.min_recall,
            CHECKED.map(SignalKind::as_str).join(", "),
            if self.passed { "PASSED" } else { "FAILED" }
        ));
        out
    }
}

fn cause(t: &TruthLine) -> String {
    t.edge.clone().unwrap_or_else(|| {
        serde_json::to_value(t.behaviour)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    })
}

/// Compares raised signals (account, kind) with the ground truth.
pub fn score_signals(
    truth: &[TruthLine],
    raised: &BTreeSet<(String, String)>,
    policy: PolicyFindings,
    min_precision: f64,
    min_recall: f64,
) -> CheckReport {
    let by_id: BTreeMap<&str, &TruthLine> =
        truth.iter().map(|t| (t.account_id.as_str(), t)).collect();
    let expected: BTreeSet<(String, String)> = truth
        .iter()
        .flat_map(|t| t.expected.iter().map(|k| (t.account_id.clone(), k.clone())))
        .collect();
    let kinds: BTreeSet<&str> = raised
        .iter()
        .map(|(_, k)| k.as_str())
        .chain(CHECKED.map(SignalKind::as_str))
        .collect();
    let mut scores = Vec::new();
    let mut passed = true;
    for kind in kinds {
        let e: BTreeSet<&String> = expected
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(a, _)| a)
            .collect();
        let r: BTreeSet<&String> = raised
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(a, _)| a)
            .collect();
        let hits = e.intersection(&r).count();
        let precision = if r.is_empty() {
            if e.is_empty() {
                1.0
            } else {
                0.0
            }
        } else {
            hits as f64 / r.len() as f64
        };
        let recall = if e.is_empty() {
            1.0
        } else {
            hits as f64 / e.len() as f64
        };
        let checked = CHECKED.iter().any(|k| k.as_str() == kind);
        if checked && (precision < min_precision || recall < min_recall) {
            passed = false;
        }
        let missed: Vec<String> = e.difference(&r).map(|a| (*a).clone()).collect();
        let unexpected: Vec<String> = r.difference(&e).map(|a| (*a).clone()).collect();
        let mut errors_by_behaviour: BTreeMap<String, [usize; 2]> = BTreeMap::new();
        for (list, slot) in [(&missed, 0), (&unexpected, 1)] {
            for a in list {
                let c = by_id
                    .get(a.as_str())
                    .map_or_else(|| "not simulated".to_owned(), |t| cause(t));
                errors_by_behaviour.entry(c).or_default()[slot] += 1;
            }
        }
        scores.push(KindScore {
            kind: kind.to_owned(),
            expected: e.len(),
            raised: r.len(),
            true_positives: hits,
            precision,
            recall,
            checked,
            missed,
            unexpected,
            errors_by_behaviour,
        });
    }
    let power_users_flagged: Vec<String> = truth
        .iter()
        .filter(|t| t.facts.power_user.is_some())
        .filter(|t| {
            raised.contains(&(
                t.account_id.clone(),
                SignalKind::AbuseSuspected.as_str().to_owned(),
            ))
        })
        .map(|t| t.account_id.clone())
        .collect();
    passed &= power_users_flagged.is_empty() && policy.is_clean();
    CheckReport {
        kinds: scores,
        power_users_flagged,
        policy,
        min_precision,
        min_recall,
        passed,
    }
}

/// The plans a notice names: its plan column and the plan names its text uses as words.
pub fn plans_named(plan: &str, message: &str) -> BTreeSet<Plan> {
    let mut named: BTreeSet<Plan> = Plan::parse("plan", &plan.to_ascii_lowercase())
        .ok()
        .into_iter()
        .collect();
    for word in message.split(|c: char| !c.is_ascii_alphanumeric()) {
        match word {
            "Free" => named.insert(Plan::Free),
            "Pro" => named.insert(Plan::Pro),
            "Enterprise" => named.insert(Plan::Enterprise),
            _ => false,
        };
    }
    named
}

/// A notice is wrong when it names a plan the account held all along (or a lower one).
pub fn notice_names_held_plan(lowest_plan: Plan, plan: &str, message: &str) -> bool {
    plans_named(plan, message)
        .into_iter()
        .any(|p| p <= lowest_plan)
}

/// The Enterprise accounts among `truth` that appear in `prospected` (accounts with a sales
/// outbox row, a HubSpot deal or a notice), and the accounts with a notice naming a plan they
/// already hold.
pub fn policy_from_rows(
    truth: &[TruthLine],
    prospected: &BTreeSet<String>,
    notices: &[(String, String, String)],
    denied: Vec<String>,
) -> PolicyFindings {
    let by_id: BTreeMap<&str, &TruthLine> =
        truth.iter().map(|t| (t.account_id.as_str(), t)).collect();
    let enterprise_prospected = prospected
        .iter()
        .filter(|a| {
            by_id
                .get(a.as_str())
                .is_some_and(|t| t.plan == Plan::Enterprise)
        })
        .cloned()
        .collect();
    let notices_naming_held_plan: BTreeSet<String> = notices
        .iter()
        .filter(|(a, plan, message)| {
            by_id
                .get(a.as_str())
                .is_some_and(|t| notice_names_held_plan(t.lowest_plan, plan, message))
        })
        .map(|(a, _, _)| a.clone())
        .collect();
    PolicyFindings {
        paying_denied: denied,
        enterprise_prospected,
        notices_naming_held_plan: notices_naming_held_plan.into_iter().collect(),
    }
}

/// Reads a ground-truth file.
pub fn read_truth(path: &std::path::Path) -> Result<Vec<TruthLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Counts of the behaviours, for the summary.
pub fn behaviour_counts(truth: &[TruthLine]) -> BTreeMap<Behaviour, usize> {
    let mut m = BTreeMap::new();
    for t in truth {
        *m.entry(t.behaviour).or_insert(0) += 1;
    }
    m
}
