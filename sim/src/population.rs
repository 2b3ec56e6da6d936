//! The simulated population: each account's behaviour, picked from the seed, and what the
//! ground truth expects of it.

use chrono::{DateTime, Datelike, Duration as ChronoDuration, TimeZone, Utc};
use meterline_schemas::SignalKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The signal kinds `--check` holds to its thresholds.
pub const CHECKED: [SignalKind; 4] = [
    SignalKind::DealReady,
    SignalKind::AbuseSuspected,
    SignalKind::KeySharing,
    SignalKind::MultiAccount,
];

/// The kinds the ground truth predicts for every account (the checked ones and power users);
/// other kinds (limit stages, plugin gates, PQLs, rate limiting) are reported but not judged.
pub const PREDICTED: [SignalKind; 5] = [
    SignalKind::DealReady,
    SignalKind::AbuseSuspected,
    SignalKind::KeySharing,
    SignalKind::MultiAccount,
    SignalKind::PowerUser,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    Steady,
    Trajectory,
    Collision,
    Pro,
    Converter,
    Churner,
    Pii,
    EnterpriseReady,
    PowerUser,
    Abuser,
    SharedKey,
    MultiAccount,
}

impl Behaviour {
    /// Share of the population, in per mille.
    pub(crate) const MIX: [(Behaviour, u32); 12] = [
        (Behaviour::Steady, 440),
        (Behaviour::Trajectory, 80),
        (Behaviour::Collision, 40),
        (Behaviour::Pro, 100),
        (Behaviour::Converter, 40),
        (Behaviour::Churner, 30),
        (Behaviour::Pii, 30),
        (Behaviour::EnterpriseReady, 10),
        (Behaviour::PowerUser, 40),
        (Behaviour::Abuser, 70),
        (Behaviour::SharedKey, 50),
        (Behaviour::MultiAccount, 70),
    ];

    /// The signals this behaviour must raise (the kinds the ground truth asserts).
    pub fn expected(self) -> &'static [SignalKind] {
        match self {
            Behaviour::EnterpriseReady => &[SignalKind::DealReady],
            Behaviour::Abuser => &[SignalKind::AbuseSuspected],
            Behaviour::SharedKey => &[SignalKind::KeySharing],
            Behaviour::MultiAccount => &[SignalKind::MultiAccount],
            Behaviour::PowerUser => &[SignalKind::PowerUser],
            _ => &[],
        }
    }
}

/// One simulated account; a line of the ground-truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthLine {
    pub account_id: String,
    pub behaviour: Behaviour,
    pub expected: Vec<String>,
    /// The multi-account cluster, for the accounts in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct SimAccount {
    pub index: usize,
    pub id: String,
    pub behaviour: Behaviour,
    pub cluster: Option<usize>,
    pub(crate) seed: u64,
}

impl SimAccount {
    pub fn truth(&self) -> TruthLine {
        TruthLine {
            account_id: self.id.clone(),
            behaviour: self.behaviour,
            expected: self
                .behaviour
                .expected()
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            cluster: self.cluster,
        }
    }
}

/// The population: every behaviour at least twice (multi-accounts in pairs), the rest by the
/// mix, deterministically from `seed`.
pub fn population(seed: u64, n: usize, tag: &str) -> Vec<SimAccount> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<Behaviour> = Behaviour::MIX.iter().flat_map(|(b, _)| [*b, *b]).collect();
    let total: u32 = Behaviour::MIX.iter().map(|(_, w)| w).sum();
    while kinds.len() < n {
        let mut pick = rng.random_range(0..total);
        for (b, w) in Behaviour::MIX {
            if pick < w {
                kinds.push(b);
                break;
            }
            pick -= w;
        }
    }
    // Multi-accounts come in pairs.
    if kinds
        .iter()
        .filter(|b| **b == Behaviour::MultiAccount)
        .count()
        % 2
        == 1
    {
        kinds.push(Behaviour::MultiAccount);
    }
    kinds.sort();
    let mut in_cluster = 0usize;
    kinds
        .into_iter()
        .enumerate()
        .map(|(index, behaviour)| {
            let cluster = (behaviour == Behaviour::MultiAccount).then(|| {
                in_cluster += 1;
                (in_cluster - 1) / 2
            });
            SimAccount {
                index,
                id: format!("sim-{tag}-{index:05}"),
                behaviour,
                cluster,
                seed: seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            }
        })
        .collect()
}

/// The clock a simulation runs against.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: DateTime<Utc>,
    pub today: DateTime<Utc>,
    pub month: DateTime<Utc>,
}

impl Clock {
    pub fn at(now: DateTime<Utc>) -> Self {
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc();
        let month = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .expect("first of the month");
        Self { now, today, month }
    }

    pub(crate) fn day(&self, days_ago: u32) -> DateTime<Utc> {
        self.today - ChronoDuration::days(i64::from(days_ago))
    }

    /// `minutes` before now, but not before today began: "today" activity stays today.
    pub(crate) fn recent(&self, minutes: i64) -> DateTime<Utc> {
        (self.now - ChronoDuration::minutes(minutes)).max(self.today)
    }
}
