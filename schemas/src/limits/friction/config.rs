//! The friction configuration: `[quota.stage_names]`, `[quota.messages]` (the default texts)
//! and each tier's `[tiers.<plan>.messages]` (its overrides), with the built-in English texts.
//!
//! A stage's template is keyed by the stage's percentage (`70`, `85`, …): the tier's, else
//! `[quota]`'s. Every stage in `quota.stages` needs a name and a template; the built-in ones
//! cover the default stages 70, 85, 95 and 100.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[quota.messages]`: the text for people that each kind of decision carries. Templates are
/// MiniJinja (Jinja2) with the variables [`super::TemplateVars`] lists.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Messages {
    /// A requested model the tier does not include (degraded to the fallback, or refused
    /// when the tier has none).
    pub model_not_allowed: String,
    /// A budget (tokens, cost) spent: degraded to the fallback model.
    pub budget_spent: String,
    /// A budget near its end, steered to the fallback (`budget_steer`).
    pub budget_near: String,
    /// Over the per-minute rate (soft: the request is served).
    pub rate_limit: String,
    /// Stage percentage → template for a limit at that stage (the warning or the cutoff).
    pub stages: BTreeMap<String, String>,
}

/// `[tiers.<plan>.messages]`: a tier's own texts, each replacing `[quota.messages]`' for
/// accounts on that plan. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_not_allowed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_spent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_near: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, String>,
}

impl MessageOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The 70 % indicator.
pub const INDICATOR: &str = "You have used {{ used }} of your {{ limit_value }} {{ limit }} \
({{ percent }} %). Your allowance {{ resets }}.";

/// The 85 % nudge.
pub const NUDGE: &str = "Running low: {{ used }} of your {{ limit_value }} {{ limit }} used, \
{{ remaining }} left. Your allowance {{ resets }}.{% if upgrade_url %} {{ upgrade_plan }} \
gives you more: {{ upgrade_url }}{% endif %}";

/// The 95 % upgrade prompt.
pub const UPGRADE_PROMPT: &str = "Almost out: {{ remaining }} of your {{ limit_value }} \
{{ limit }} left ({{ percent }} % used). Your allowance {{ resets }}.{% if upgrade_url %} \
Upgrade to {{ upgrade_plan }} now to keep going without interruption: {{ upgrade_url }}\
{% endif %}";

/// The 100 % warm cutoff: which limit, how much was used, when it resets, how to upgrade.
/// It never says how much was used past the limit: the grace buffer stays hidden.
pub const CUTOFF: &str = "You have used all {{ limit_value }} of your {{ limit }} on the \
{{ plan }} plan. Your allowance {{ resets }}.{% if upgrade_url %} Upgrade to \
{{ upgrade_plan }} to continue right away: {{ upgrade_url }}{% endif %}";

const MODEL_NOT_ALLOWED: &str = "{{ requested_model }} is not included in the {{ plan }} \
plan{% if fallback_model %}, so {{ fallback_model }} answered instead{% endif %}.\
{% if upgrade_url %} Upgrade to {{ upgrade_plan }} to use it: {{ upgrade_url }}{% endif %}";

const BUDGET_SPENT: &str = "You have used all {{ limit_value }} of your {{ limit }}, so \
{{ fallback_model }} answers instead of {{ requested_model }} for now. Your allowance \
{{ resets }}.{% if upgrade_url %} Upgrade to {{ upgrade_plan }} to keep using \
{{ requested_model }}: {{ upgrade_url }}{% endif %}";

const BUDGET_NEAR: &str = "You have used {{ percent }} % of your {{ limit }}, so \
{{ fallback_model }} answers instead of {{ requested_model }} to make the rest last. Your \
allowance {{ resets }}.{% if upgrade_url %} Upgrade to {{ upgrade_plan }} to keep using \
{{ requested_model }}: {{ upgrade_url }}{% endif %}";

const RATE_LIMIT: &str = "You are sending {{ used }} requests a minute, more than the \
{{ limit_value }} of the {{ plan }} plan. They still go through for now.{% if upgrade_url %} \
{{ upgrade_plan }} allows more: {{ upgrade_url }}{% endif %}";

/// The built-in template of a default stage.
pub fn builtin_stage_template(stage: u32) -> Option<&'static str> {
    match stage {
        70 => Some(INDICATOR),
        85 => Some(NUDGE),
        95 => Some(UPGRADE_PROMPT),
        100 => Some(CUTOFF),
        _ => None,
    }
}

impl Default for Messages {
    fn default() -> Self {
        Self {
            model_not_allowed: MODEL_NOT_ALLOWED.into(),
            budget_spent: BUDGET_SPENT.into(),
            budget_near: BUDGET_NEAR.into(),
            rate_limit: RATE_LIMIT.into(),
            stages: [70, 85, 95, 100]
                .into_iter()
                .filter_map(|s| Some((s.to_string(), builtin_stage_template(s)?.to_owned())))
                .collect(),
        }
    }
}

/// `[quota.stage_names]`' defaults: the stage name a decision carries for gateways.
pub fn default_stage_names() -> BTreeMap<String, String> {
    [
        (70, "indicator"),
        (85, "nudge"),
        (95, "upgrade_prompt"),
        (100, "cutoff"),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n.to_owned()))
    .collect()
}
