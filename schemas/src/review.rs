//! A person in the loop before enforcement: the review states of an account, what each means
//! for a quota decision, and when the scorer moves an account into review.
//!
//! ```text
//!            scorer: abuse score ≥ suspected                 a person
//!   (none) ───────────────────────────────► suspected ──────────────► confirmed  → deny
//!     ▲                                       │   │ a person
//!     │ scorer: a whole quiet day (expired)   │   └─────────────────► cleared    → allow
//!     └───────────────────────────────────────┘
//!   scorer: the high-confidence rule (a free account younger than 2 h, score ≥ 80)
//!   (none | suspected | cleared) ──────────────────────────────► auto_denied → deny (free only)
//! ```
//!
//! | state | who sets it | free | pro, enterprise |
//! |---|---|---|---|
//! | none, `cleared` | a person clears | normal limits | normal limits |
//! | `suspected` | the scorer | **restricted**: the tier's limits × `review.suspected_limit_factor`, served the fallback model | normal (only queued for a person) |
//! | `auto_denied` | the scorer's high-confidence rule | `deny` | normal: paying accounts are never denied automatically |
//! | `confirmed` | a person confirms | `deny` | `deny` (a person decided) |
//!
//! [`enforcement`] is that table; the read path applies it in every decision, so a paying
//! account is never denied without a person even if the scorer (or its configuration) put one in
//! review.
//!
//! **Episodes.** The abuse score has daily components (sessions today, the gaps between them,
//! today's input diversity) that start again from zero each UTC day, so one behaviour raises
//! suspicion day after day. An *episode* is an unbroken run of suspicion: it starts the first
//! time the scorer suspects the account (with no episode open) and stays open as long as the
//! account is suspected again within `review.episode_quiet_days` whole UTC days (default 1: on
//! the same day or the next). Once that many whole days pass without suspicion, the episode is
//! over: a `suspected` account leaves review (`review_expired`), and the next suspicion starts a
//! new episode. A person's `cleared` holds for the rest of its episode: more of the same
//! traffic flags nothing, unless the abuse score reaches the score the account was cleared at
//! plus `review.rescore_margin` points.
//!
//! Every move is an account event (`review_suspected`, `review_auto_denied`, `review_expired`,
//! `review_confirmed`, `review_cleared`) with an actor and a reason, written to the
//! `account-events` topic; the aggregator applies it to the `accounts` row (whose trigger tells
//! the read path) and ClickHouse keeps the history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::domain::{AccountEventType, Plan};
use crate::limits::{ConfigError, LimitName, TierConfig, RATE_LIMIT_NAME};

/// The actor the scorer's own moves are recorded under.
pub const SCORER_ACTOR: &str = "meterline:scorer";
/// The actor of the high-confidence rule's denials.
pub const RULE_ACTOR: &str = "meterline:high-confidence-rule";

/// Where an account stands in review. No state (`None` where it is an `Option`) means it is
/// not in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    /// The scorer suspects abuse; a person has not decided yet.
    Suspected,
    /// The high-confidence rule denied it without a person; a person may confirm or clear.
    AutoDenied,
    /// A person confirmed the abuse.
    Confirmed,
    /// A person cleared the account.
    Cleared,
}

impl ReviewState {
    pub const ALL: [ReviewState; 4] = [
        ReviewState::Suspected,
        ReviewState::AutoDenied,
        ReviewState::Confirmed,
        ReviewState::Cleared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Suspected => "suspected",
            ReviewState::AutoDenied => "auto_denied",
            ReviewState::Confirmed => "confirmed",
            ReviewState::Cleared => "cleared",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The account event that puts an account in this state.
    pub fn event(self) -> AccountEventType {
        match self {
            ReviewState::Suspected => AccountEventType::ReviewSuspected,
            ReviewState::AutoDenied => AccountEventType::ReviewAutoDenied,
            ReviewState::Confirmed => AccountEventType::ReviewConfirmed,
            ReviewState::Cleared => AccountEventType::ReviewCleared,
        }
    }
}

/// The state a review event leads to: `Some(None)` takes the account out of review
/// (`review_expired`); `None` for an event that is not a review event.
pub fn state_after(kind: AccountEventType) -> Option<Option<ReviewState>> {
    match kind {
        AccountEventType::ReviewSuspected => Some(Some(ReviewState::Suspected)),
        AccountEventType::ReviewAutoDenied => Some(Some(ReviewState::AutoDenied)),
        AccountEventType::ReviewConfirmed => Some(Some(ReviewState::Confirmed)),
        AccountEventType::ReviewCleared => Some(Some(ReviewState::Cleared)),
        AccountEventType::ReviewExpired => Some(None),
        _ => None,
    }
}

/// What a review state does to a quota decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// The tier's limits, as for anyone.
    Normal,
    /// Stricter limits and the fallback model ([`ReviewConfig::restrict`]).
    Restricted,
    /// `deny`, with this reason.
    Deny(&'static str),
}

/// The deny reason when a person confirmed abuse.
pub const DENY_CONFIRMED: &str = "abuse_confirmed";
/// The deny reason when the high-confidence rule denied a free account.
pub const DENY_HIGH_CONFIDENCE: &str = "abuse_high_confidence";
/// The reason a suspected account's decisions carry.
pub const SUSPECTED_REASON: &str = "abuse_suspected";

/// The table in the module documentation. Only a person's confirmation denies a paying account.
pub fn enforcement(state: Option<ReviewState>, plan: Plan) -> Enforcement {
    let paying = plan != Plan::Free;
    match state {
        None | Some(ReviewState::Cleared) => Enforcement::Normal,
        Some(ReviewState::Suspected) if paying => Enforcement::Normal,
        Some(ReviewState::Suspected) => Enforcement::Restricted,
        Some(ReviewState::AutoDenied) if paying => Enforcement::Normal,
        Some(ReviewState::AutoDenied) => Enforcement::Deny(DENY_HIGH_CONFIDENCE),
        Some(ReviewState::Confirmed) => Enforcement::Deny(DENY_CONFIRMED),
    }
}

/// `[review]`: how a suspected account is treated and when the scorer puts one in review.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    /// A suspected free account's limits (and requests per minute) are the tier's (or its
    /// overrides) times this; counts are rounded down. Above 0, at most 1.
    pub suspected_limit_factor: f64,
    /// The model a suspected free account is served; empty: its tier's fallback model.
    pub suspected_model: String,
    /// Within an episode, a cleared account is suspected again only once its abuse score
    /// reaches the score it was cleared at plus this many points.
    pub rescore_margin: u32,
    /// Whole UTC days without suspicion that end an episode.
    pub episode_quiet_days: u32,
    /// The high-confidence rule, which denies without a person: on or off.
    pub auto_deny: bool,
    /// It applies to free accounts younger than this many hours...
    pub auto_deny_max_age_hours: f64,
    /// ...whose abuse score is at least this.
    pub auto_deny_min_score: u32,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            suspected_limit_factor: 0.25,
            suspected_model: String::new(),
            rescore_margin: 20,
            episode_quiet_days: 1,
            auto_deny: true,
            auto_deny_max_age_hours: 2.0,
            auto_deny_min_score: 80,
        }
    }
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: format!("review.{key}"),
        reason: reason.into(),
    }
}

impl ReviewConfig {
    /// The rules types cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = self.suspected_limit_factor;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(bad(
                "suspected_limit_factor",
                format!("{f} must be above 0 and at most 1 (stricter, never looser)"),
            ));
        }
        if self.rescore_margin < 1 {
            return Err(bad(
                "rescore_margin",
                "must be at least 1, or a cleared account would be flagged again at once",
            ));
        }
        if self.episode_quiet_days < 1 {
            return Err(bad("episode_quiet_days", "must be at least 1"));
        }
        let h = self.auto_deny_max_age_hours;
        if !(h.is_finite() && h > 0.0) {
            return Err(bad(
                "auto_deny_max_age_hours",
                format!("{h} must be above 0"),
            ));
        }
        if self.auto_deny_min_score > 100 {
            return Err(bad(
                "auto_deny_min_score",
                format!(
                    "{} is above 100, the highest score",
                    self.auto_deny_min_score
                ),
            ));
        }
        if self.suspected_model.trim() != self.suspected_model {
            return Err(bad("suspected_model", "has leading or trailing spaces"));
        }
        Ok(())
    }

    /// The tier a restricted account is decided against: every limit and the per-minute rate
    /// times the factor (counts rounded down, unlimited stays unlimited), and only the fallback
    /// model allowed, so any other model is degraded to it.
    pub fn restrict(&self, tier: &TierConfig) -> TierConfig {
        let mut t = tier.clone();
        for (name, v) in t.limits.iter_mut() {
            *v = self.scale(name, *v);
        }
        t.requests_per_minute = self.scale(RATE_LIMIT_NAME, t.requests_per_minute);
        if !self.suspected_model.is_empty() {
            t.fallback_model = self.suspected_model.clone();
        }
        if !t.fallback_model.is_empty() {
            t.allowed_models = vec![t.fallback_model.clone()];
        }
        // Suspected abuse gets no hidden overage buffer: the cutoff comes at 100 %.
        t.grace_percent = 0.0;
        t
    }

    /// One limit (by name) of a restricted account.
    pub fn scale(&self, name: &str, v: f64) -> f64 {
        if v < 0.0 {
            return v;
        }
        let scaled = v * self.suspected_limit_factor;
        let count =
            name == RATE_LIMIT_NAME || LimitName::parse(name).is_ok_and(|n| !n.metric.is_budget());
        if count {
            scaled.floor()
        } else {
            scaled
        }
    }

    /// Whether an episode is still open at `now`, given when the account was last suspected
    /// (before this scoring).
    pub fn episode_open(&self, last_suspected: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last_suspected.is_some_and(|t| {
            (now.date_naive() - t.date_naive()).num_days() <= i64::from(self.episode_quiet_days)
        })
    }

    /// The high-confidence rule: a free account younger than `auto_deny_max_age_hours` with an
    /// abuse score of at least `auto_deny_min_score`. Never a paying account.
    pub fn high_confidence(&self, plan: Plan, score: u32, age_hours: Option<f64>) -> bool {
        self.auto_deny
            && plan == Plan::Free
            && score >= self.auto_deny_min_score
            && age_hours.is_some_and(|a| a < self.auto_deny_max_age_hours)
    }

    /// What the scorer records after scoring an account, if anything. See the module
    /// documentation for the states and episodes.
    pub fn next_action(&self, current: &ReviewRecord, a: &Assessment) -> Option<ReviewAction> {
        let open = self.episode_open(a.last_suspected_at, a.at);
        if !a.suspected {
            return (current.state == Some(ReviewState::Suspected) && !open)
                .then_some(ReviewAction::Expire);
        }
        let flag = if self.high_confidence(a.plan, a.score, a.age_hours) {
            ReviewAction::AutoDeny
        } else {
            ReviewAction::Suspect
        };
        match current.state {
            None => Some(flag),
            // A suspicion that becomes a high-confidence case is denied at once.
            Some(ReviewState::Suspected) => (flag == ReviewAction::AutoDeny).then_some(flag),
            // Denied: a person decides from here.
            Some(ReviewState::AutoDenied | ReviewState::Confirmed) => None,
            Some(ReviewState::Cleared) => {
                let risen = a.score >= current.score.unwrap_or(0) + self.rescore_margin;
                (!open || risen).then_some(flag)
            }
        }
    }
}

/// An account's review as PostgreSQL holds it (the `accounts` row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewRecord {
    pub state: Option<ReviewState>,
    /// The abuse score the state was recorded at: a suspicion's score, or the score a person
    /// cleared it at (the baseline for `rescore_margin`).
    pub score: Option<u32>,
    /// Review events applied to the account so far: part of the scorer's event ids, so the
    /// same decision made twice before the first is applied is one event.
    pub seq: i64,
}

/// What the scorer knows after scoring an account.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub plan: Plan,
    pub score: u32,
    /// The scorer's verdict (the abuse score at the threshold, not a power user, the plan in
    /// the rule's scope).
    pub suspected: bool,
    pub age_hours: Option<f64>,
    pub at: DateTime<Utc>,
    /// When the scorer last suspected the account, before this scoring.
    pub last_suspected_at: Option<DateTime<Utc>>,
}

/// A move the scorer makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewAction {
    Suspect,
    AutoDeny,
    Expire,
}

impl ReviewAction {
    pub fn event(self) -> AccountEventType {
        match self {
            ReviewAction::Suspect => AccountEventType::ReviewSuspected,
            ReviewAction::AutoDeny => AccountEventType::ReviewAutoDenied,
            ReviewAction::Expire => AccountEventType::ReviewExpired,
        }
    }

    pub fn actor(self) -> &'static str {
        match self {
            ReviewAction::AutoDeny => RULE_ACTOR,
            _ => SCORER_ACTOR,
        }
    }
}

/// The event id of the scorer's move `kind` on `account` after `seq` review events: the same
/// move made twice before the first is applied (the scorer runs every second; the aggregator
/// applies within a batch) has the same id, and the aggregator counts it once.
pub fn scorer_event_id(account: &str, kind: AccountEventType, seq: i64) -> String {
    let digest = Sha256::digest(format!(
        "meterline:review:{account}:{}:{seq}",
        kind.as_str()
    ));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests;
