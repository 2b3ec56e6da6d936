//! `--check`: the signals the pipeline raised against the ground truth, as precision and recall
//! per kind.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;

use meterline_schemas::SignalKind;

use crate::population::*;

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
    /// Whether the ground truth predicts this kind at all.
    pub predicted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub kinds: Vec<KindScore>,
    /// Power users the scorer suspected of abuse (must be none).
    pub power_users_flagged: Vec<String>,
    pub passed: bool,
}

impl CheckReport {
    pub fn table(&self, min_precision: f64, min_recall: f64) -> String {
        let mut out = format!(
            "{:<22} {:>8} {:>7} {:>5} {:>10} {:>7}\n",
            "signal", "expected", "raised", "hits", "precision", "recall"
        );
        for k in &self.kinds {
            if !k.predicted {
                out.push_str(&format!(
                    "{:<22} {:>8} {:>7} {:>5} {:>10} {:>7}  (not predicted by the ground truth)\n",
                    k.kind, "-", k.raised, "-", "-", "-"
                ));
                continue;
            }
            let flag = if !k.checked {
                ""
            } else if k.precision >= min_precision && k.recall >= min_recall {
                "  ok"
            } else {
                "  BELOW THRESHOLD"
            };
            out.push_str(&format!(
                "{:<22} {:>8} {:>7} {:>5} {:>10.3} {:>7.3}{flag}\n",
                k.kind, k.expected, k.raised, k.true_positives, k.precision, k.recall
            ));
        }
        out.push_str(&format!(
            "power users flagged as abusers: {}\n",
            if self.power_users_flagged.is_empty() {
                "none".to_owned()
            } else {
                self.power_users_flagged.join(", ")
            }
        ));
        out.push_str(&format!(
            "check (precision >= {min_precision}, recall >= {min_recall} for {}): {}\n",
            CHECKED.map(SignalKind::as_str).join(", "),
            if self.passed { "PASSED" } else { "FAILED" }
        ));
        out
    }
}

/// Compares raised signals (account, kind) with the ground truth.
pub fn score_signals(
    truth: &[TruthLine],
    raised: &BTreeSet<(String, String)>,
    min_precision: f64,
    min_recall: f64,
) -> CheckReport {
    let expected: BTreeSet<(String, String)> = truth
        .iter()
        .flat_map(|t| t.expected.iter().map(|k| (t.account_id.clone(), k.clone())))
        .collect();
    let kinds: BTreeSet<&str> = expected
        .iter()
        .chain(raised.iter())
        .map(|(_, k)| k.as_str())
        .chain(PREDICTED.map(SignalKind::as_str))
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
        scores.push(KindScore {
            kind: kind.to_owned(),
            expected: e.len(),
            raised: r.len(),
            true_positives: hits,
            precision,
            recall,
            checked,
            predicted: PREDICTED.iter().any(|k| k.as_str() == kind),
        });
    }
    let power_users_flagged: Vec<String> = truth
        .iter()
        .filter(|t| t.behaviour == Behaviour::PowerUser)
        .filter(|t| {
            raised.contains(&(
                t.account_id.clone(),
                SignalKind::AbuseSuspected.as_str().to_owned(),
            ))
        })
        .map(|t| t.account_id.clone())
        .collect();
    passed &= power_users_flagged.is_empty();
    CheckReport {
        kinds: scores,
        power_users_flagged,
        passed,
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
