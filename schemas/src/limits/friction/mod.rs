//! Progressive friction: the text for a person that a quota decision carries, with the
//! numbers filled in (seed 002: an indicator at 70 %, a nudge at 85 %, an explicit upgrade
//! prompt at 95 %, a warm cutoff at 100 % that says which limit, how much was used, when it
//! resets and how to upgrade).
//!
//! [`decide`](super::decide) answers with structure only: numbers, no words. [`Friction`]
//! adds the words: [`Friction::annotate`] sets the decision's `message` and `stage_name`.
//! It holds the compiled templates, so it is built once from the configuration
//! ([`Friction::new`], which also validates every template against sample values and names
//! the configuration key of the one that fails) and shared by the read path.
//!
//! Which template a decision gets:
//!
//! | decision | template |
//! |---|---|
//! | `allow` with a warning on a limit (including grace) | the warning's stage: `stages.<percent>` |
//! | `allow` with the per-minute rate over its limit | `rate_limit` |
//! | `degrade`, `model_not_allowed` | `model_not_allowed` |
//! | `degrade`, `budget_spent` / `budget_near` | `budget_spent` / `budget_near` |
//! | `degrade`, `abuse_suspected` | none |
//! | `limit_reached` on a limit | the last stage (`stages.100` by default) |
//! | `limit_reached` on a model the tier has no fallback for | `model_not_allowed` |
//! | `deny`, plain `allow` | none |
//!
//! Each is looked up in `[tiers.<plan>.messages]` first, then `[quota.messages]`, then the
//! built-in text of a default stage ([`config`]). A template that renders to nothing gives no
//! message. Templates are [MiniJinja](https://docs.rs/minijinja) (Jinja2) with the variables
//! of [`TemplateVars`], formatted for people by [`words`]; undefined variables are errors.

pub mod config;
pub mod words;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use super::decision::{Decision, DecisionKind, DegradeReason, LimitNotice};
use super::names::{ALLOWED_MODELS_NAME, RATE_LIMIT_NAME};
use super::tiers::{ConfigError, QuotaConfig, TiersConfig};
use crate::domain::Plan;

pub use config::{default_stage_names, MessageOverrides, Messages};

/// The variables every template gets (all always defined; empty strings where a value does
/// not apply, so `{% if upgrade_url %}` tests for a plan above).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TemplateVars {
    /// The limit for people: "daily requests", "monthly tokens", "per-session spend".
    pub limit: String,
    /// The limit's configuration name: `day_requests`.
    pub limit_name: String,
    /// How much is used, for people: "4,850", "$4.80".
    pub used: String,
    /// The limit: "5,000", "$5.00".
    pub limit_value: String,
    /// What is left (0 past the limit).
    pub remaining: String,
    /// Whole percent used, rounded down.
    pub percent: u64,
    /// The stage reached, in percent (0 for messages not about a stage).
    pub stage: u32,
    /// "resets at 00:00 UTC (in 3 h 12 min)", "resets on 1 December (in 9 days)", "resets
    /// when a new session starts"; empty when the limit does not reset.
    pub resets: String,
    /// "00:00 UTC".
    pub reset_time: String,
    /// "1 December".
    pub reset_date: String,
    /// "3 h 12 min".
    pub resets_in: String,
    /// RFC 3339, empty when it does not reset.
    pub resets_at: String,
    /// The account's plan: "Free".
    pub plan: String,
    /// The plan above: "Pro"; empty on the top tier.
    pub upgrade_plan: String,
    /// Where to upgrade; empty on the top tier.
    pub upgrade_url: String,
    pub requested_model: String,
    /// The model a degraded request is served with; empty when the tier has none.
    pub fallback_model: String,
}

/// Which message a decision calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Stage(u32),
    ModelNotAllowed,
    BudgetSpent,
    BudgetNear,
    RateLimit,
}

impl Kind {
    /// The key under `[quota.messages]` / `[tiers.<plan>.messages]`.
    fn key(self) -> String {
        match self {
            Kind::Stage(s) => format!("stages.{s}"),
            Kind::ModelNotAllowed => "model_not_allowed".into(),
            Kind::BudgetSpent => "budget_spent".into(),
            Kind::BudgetNear => "budget_near".into(),
            Kind::RateLimit => "rate_limit".into(),
        }
    }
}

/// What a plan's messages need to know about its tier.
#[derive(Debug, Clone, Default)]
struct PlanWords {
    upgrade_plan: String,
    upgrade_url: String,
    fallback_model: String,
}

const PLANS: [Plan; 3] = [Plan::Free, Plan::Pro, Plan::Enterprise];

/// The compiled message templates and stage names. Build once with [`Friction::new`].
pub struct Friction {
    env: Environment<'static>,
    /// (plan, kind) → the template's name in `env` (its configuration key).
    templates: HashMap<(Plan, Kind), String>,
    stage_names: BTreeMap<u32, String>,
    plans: HashMap<Plan, PlanWords>,
}

impl std::fmt::Debug for Friction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Friction")
            .field("templates", &self.templates)
            .field("stage_names", &self.stage_names)
            .finish_non_exhaustive()
    }
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A tier's override of `kind`, if it has one.
fn tier_override(m: &MessageOverrides, kind: Kind) -> Option<&String> {
    match kind {
        Kind::Stage(s) => m.stages.get(&s.to_string()),
        Kind::ModelNotAllowed => m.model_not_allowed.as_ref(),
        Kind::BudgetSpent => m.budget_spent.as_ref(),
        Kind::BudgetNear => m.budget_near.as_ref(),
        Kind::RateLimit => m.rate_limit.as_ref(),
    }
}

/// `[quota.messages]`' template for `kind`, or the built-in one of a default stage.
fn quota_template(m: &Messages, kind: Kind) -> Option<String> {
    match kind {
        Kind::Stage(s) => m
            .stages
            .get(&s.to_string())
            .cloned()
            .or_else(|| config::builtin_stage_template(s).map(str::to_owned)),
        Kind::ModelNotAllowed => Some(m.model_not_allowed.clone()),
        Kind::BudgetSpent => Some(m.budget_spent.clone()),
        Kind::BudgetNear => Some(m.budget_near.clone()),
        Kind::RateLimit => Some(m.rate_limit.clone()),
    }
}

/// Values that exercise every variable, for checking templates at load.
fn samples() -> [TemplateVars; 2] {
    let full = TemplateVars {
        limit: "daily requests".into(),
        limit_name: "day_requests".into(),
        used: "4,850".into(),
        limit_value: "5,000".into(),
        remaining: "150".into(),
        percent: 97,
        stage: 95,
        resets: "resets at 00:00 UTC (in 3 h 12 min)".into(),
        reset_time: "00:00 UTC".into(),
        reset_date: "23 November".into(),
        resets_in: "3 h 12 min".into(),
        resets_at: "2026-11-23T00:00:00Z".into(),
        plan: "Free".into(),
        upgrade_plan: "Pro".into(),
        upgrade_url: "https://meterline.example/upgrade?plan=pro".into(),
        requested_model: "gpt-4o".into(),
        fallback_model: "gpt-4o-mini".into(),
    };
    // The top tier, a session limit: no plan above, no reset time, no fallback.
    let bare = TemplateVars {
        upgrade_plan: String::new(),
        upgrade_url: String::new(),
        fallback_model: String::new(),
        reset_time: String::new(),
        reset_date: String::new(),
        resets_in: String::new(),
        resets_at: String::new(),
        ..full.clone()
    };
    [full, bare]
}

impl Friction {
    /// Compiles every template the configuration can call for and renders each against
    /// sample values; the first that fails is reported under its configuration key.
    pub fn new(quota: &QuotaConfig, tiers: &TiersConfig) -> Result<Self, ConfigError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Plain text, not HTML: a gateway escapes it for wherever it shows it.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let mut stage_names = BTreeMap::new();
        for s in &quota.stages {
            let name = quota
                .stage_names
                .get(&s.to_string())
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| {
                    bad(
                        format!("quota.stage_names.{s}"),
                        "every stage in quota.stages needs a name",
                    )
                })?;
            stage_names.insert(*s, name.clone());
        }
        let mut kinds: Vec<Kind> = quota.stages.iter().map(|s| Kind::Stage(*s)).collect();
        kinds.extend([
            Kind::ModelNotAllowed,
            Kind::BudgetSpent,
            Kind::BudgetNear,
            Kind::RateLimit,
        ]);
        let mut templates = HashMap::new();
        let mut plans = HashMap::new();
        for plan in PLANS {
            let tier = tiers.get(plan);
            let at = format!("tiers.{}.messages", plan.as_str());
            for key in tier.messages.stages.keys() {
                if !key.parse::<u32>().is_ok_and(|s| quota.stages.contains(&s)) {
                    return Err(bad(
                        format!("{at}.stages.{key}"),
                        "not one of the stages in quota.stages",
                    ));
                }
            }
            for kind in &kinds {
                let (name, source) = match tier_override(&tier.messages, *kind) {
                    Some(t) => (format!("{at}.{}", kind.key()), t.clone()),
                    None => (
                        format!("quota.messages.{}", kind.key()),
                        quota_template(&quota.messages, *kind).ok_or_else(|| {
                            bad(
                                format!("quota.messages.{}", kind.key()),
                                "every stage in quota.stages needs a message template",
                            )
                        })?,
                    ),
                };
                if env.get_template(&name).is_err() {
                    env.add_template_owned(name.clone(), source)
                        .map_err(|e| bad(&name, format!("template does not parse: {e}")))?;
                    let t = env.get_template(&name).expect("just added");
                    for vars in samples() {
                        t.render(&vars)
                            .map_err(|e| bad(&name, format!("template does not render: {e}")))?;
                    }
                }
                templates.insert((plan, *kind), name);
            }
            let up = tier.upgrade_plan();
            plans.insert(
                plan,
                PlanWords {
                    upgrade_plan: up.map(words::plan_label).unwrap_or_default().into(),
                    upgrade_url: up.map(|p| quota.upgrade_link(p)).unwrap_or_default(),
                    fallback_model: tier.fallback_model.clone(),
                },
            );
        }
        Ok(Self {
            env,
            templates,
            stage_names,
            plans,
        })
    }

    /// The name of a stage (`indicator`, `nudge`, `upgrade_prompt`, `cutoff` by default).
    pub fn stage_name(&self, stage: u32) -> Option<&str> {
        self.stage_names.get(&stage).map(String::as_str)
    }

    /// Sets `message` and `stage_name` on a decision made at `now` for `requested_model`.
    pub fn annotate(&self, decision: &mut Decision, now: DateTime<Utc>) {
        let Some((kind, notice)) = what_to_say(decision) else {
            return;
        };
        if let Kind::Stage(s) = kind {
            decision.stage_name = self.stage_name(s).map(str::to_owned);
        }
        let vars = self.vars(decision, notice.as_ref(), now);
        decision.message = self.render(decision.plan, kind, &vars);
    }

    /// The values for one decision's message.
    pub fn vars(
        &self,
        decision: &Decision,
        notice: Option<&LimitNotice>,
        now: DateTime<Utc>,
    ) -> TemplateVars {
        let plan = self.plans.get(&decision.plan).cloned().unwrap_or_default();
        let requested_model = decision
            .degraded
            .as_ref()
            .map(|d| d.requested_model.clone())
            .unwrap_or_else(|| decision.model.clone());
        let fallback_model = decision
            .degraded
            .as_ref()
            .map(|d| d.fallback_model.clone())
            .unwrap_or(plan.fallback_model);
        let mut vars = TemplateVars {
            plan: words::plan_label(decision.plan).into(),
            upgrade_plan: plan.upgrade_plan,
            upgrade_url: plan.upgrade_url,
            requested_model,
            fallback_model,
            ..TemplateVars::default()
        };
        if let Some(n) = notice {
            let metric = words::metric_of(&n.limit);
            let reset = words::reset(&n.limit, n.resets_at, now);
            vars.limit = words::limit_label(&n.limit);
            vars.limit_name = n.limit.clone();
            vars.used = words::amount(metric, n.used);
            vars.limit_value = words::amount(metric, n.limit_value);
            vars.remaining = words::amount(metric, (n.limit_value - n.used).max(0.0));
            vars.percent = words::percent(n.used, n.limit_value);
            vars.stage = n.stage;
            vars.resets = reset.phrase;
            vars.reset_time = reset.time;
            vars.reset_date = reset.date;
            vars.resets_in = reset.relative;
            vars.resets_at = n
                .resets_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
        }
        vars
    }

    fn render(&self, plan: Plan, kind: Kind, vars: &TemplateVars) -> Option<String> {
        let name = self.templates.get(&(plan, kind))?;
        let text = self.env.get_template(name).ok()?.render(vars).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// The message a decision calls for, and the limit it is about.
fn what_to_say(d: &Decision) -> Option<(Kind, Option<LimitNotice>)> {
    match d.decision {
        DecisionKind::Allow => {
            let w = d.warning.as_ref()?;
            if w.limit == RATE_LIMIT_NAME {
                Some((Kind::RateLimit, Some(w.clone())))
            } else {
                Some((Kind::Stage(w.stage), Some(w.clone())))
            }
        }
        DecisionKind::Degrade => {
            let g = d.degraded.as_ref()?;
            match g.reason {
                DegradeReason::ModelNotAllowed => Some((Kind::ModelNotAllowed, None)),
                DegradeReason::BudgetSpent => Some((Kind::BudgetSpent, g.budget.clone())),
                DegradeReason::BudgetNear => Some((Kind::BudgetNear, g.budget.clone())),
                DegradeReason::AbuseSuspected => None,
            }
        }
        DecisionKind::LimitReached => {
            let r = d.limit_reached.as_ref()?;
            if r.notice.limit == ALLOWED_MODELS_NAME {
                Some((Kind::ModelNotAllowed, None))
            } else {
                Some((Kind::Stage(r.notice.stage), Some(r.notice.clone())))
            }
        }
        DecisionKind::Deny => None,
    }
}

#[cfg(test)]
mod tests;
