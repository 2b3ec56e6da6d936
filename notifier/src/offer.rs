//! Which plan an offer names: a pure rule over the tiers configuration, so a notice, a deal
//! alert and a HubSpot deal never sell a plan the account already has.
//!
//! | signal | the plan offered |
//! |---|---|
//! | `plugin_gate` | the lowest plan whose tier includes the plugin (`TiersConfig::lowest_plan_including`; Enterprise for every plugin by default) |
//! | `deal_ready`, `escalation` | Enterprise: deal readiness and the escalation thresholds are the brief's Enterprise hand-off |
//! | `rate_limit_sustained`, `power_user`, `limit_stage`, `pql` | the account's tier's `upgrade_to` |
//!
//! In every case the plan offered must be above the account's plan; when it is not (the
//! account already has the plugin, is on Enterprise, or its tier has no `upgrade_to`) there is
//! no offer, and a signal that only makes sense as an offer goes nowhere ([`NoOffer`] says
//! why). Trust-and-safety signals sell nothing and never ask.

use meterline_schemas::{Plan, SignalKind};
use serde_json::Value;

use meterline_schemas::limits::TiersConfig;

/// Why a signal carries no offer for this account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoOffer(pub String);

impl std::fmt::Display for NoOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plan a signal of `kind` offers an account on `current`; `evidence` is the signal's
/// evidence (a plugin gate names its plugin there).
pub fn plan_offered(
    tiers: &TiersConfig,
    kind: SignalKind,
    current: Plan,
    evidence: &Value,
) -> Result<Plan, NoOffer> {
    let plugin = evidence.get("plugin").and_then(Value::as_str);
    let offered = match (kind, plugin) {
        (SignalKind::PluginGate, Some(plugin)) => {
            let lowest = tiers.lowest_plan_including(plugin).ok_or_else(|| {
                NoOffer(format!(
                    "no plan includes the plugin {plugin:?} (tiers.<plan>.plugins)"
                ))
            })?;
            if lowest <= current {
                return Err(NoOffer(format!(
                    "the {current} plan already includes {plugin}"
                )));
            }
            lowest
        }
        (SignalKind::DealReady | SignalKind::Escalation, _) => Plan::Enterprise,
        _ => tiers.get(current).upgrade_plan().ok_or_else(|| {
            NoOffer(format!(
                "the {current} plan has nothing higher to sell (tiers.{current}.upgrade_to is empty)"
            ))
        })?,
    };
    if offered <= current {
        return Err(NoOffer(format!(
            "the account is already on {current}; nothing higher to sell"
        )));
    }
    Ok(offered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiers_with(pro_plugins: &[&str]) -> TiersConfig {
        let mut t = TiersConfig::default();
        t.pro.plugins = pro_plugins.iter().map(|p| (*p).to_owned()).collect();
        t
    }

    /// Plan × plugin × tiers configuration: the offer is the lowest plan including the plugin,
    /// and never one the account has.
    #[test]
    fn a_plugin_gate_offers_the_lowest_plan_that_includes_the_plugin() {
        use Plan::*;
        // (case, tiers.pro.plugins, account plan, plugin, offer)
        type Case = (
            &'static str,
            &'static [&'static str],
            Plan,
            &'static str,
            Result<Plan, &'static str>,
        );
        let cases: [Case; 9] = [
            // (case, tiers.pro.plugins, account plan, plugin, offer)
            (
                "free, defaults: guardrails",
                &[],
                Free,
                "guardrails",
                Ok(Enterprise),
            ),
            (
                "free, defaults: audit_logger",
                &[],
                Free,
                "audit_logger",
                Ok(Enterprise),
            ),
            ("pro, defaults", &[], Pro, "guardrails", Ok(Enterprise)),
            (
                "enterprise has it",
                &[],
                Enterprise,
                "guardrails",
                Err("already includes"),
            ),
            (
                "free, pro includes it",
                &["guardrails"],
                Free,
                "guardrails",
                Ok(Pro),
            ),
            (
                "pro includes another",
                &["guardrails"],
                Free,
                "multi_cloud_router",
                Ok(Enterprise),
            ),
            (
                "pro has it",
                &["guardrails"],
                Pro,
                "guardrails",
                Err("already includes"),
            ),
            (
                "no plan has it",
                &[],
                Free,
                "teleporter",
                Err("no plan includes"),
            ),
            (
                "no plan has it, pro",
                &[],
                Pro,
                "teleporter",
                Err("no plan includes"),
            ),
        ];
        for (case, pro_plugins, plan, plugin, want) in cases {
            let got = plan_offered(
                &tiers_with(pro_plugins),
                SignalKind::PluginGate,
                plan,
                &json!({"plugin": plugin}),
            );
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{case}"),
                (Err(NoOffer(why)), Err(w)) => assert!(why.contains(w), "{case}: {why}"),
                (g, w) => panic!("{case}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn upgrade_notices_name_the_tiers_upgrade_and_enterprise_gets_none() {
        let t = TiersConfig::default();
        for kind in [
            SignalKind::RateLimitSustained,
            SignalKind::PowerUser,
            SignalKind::LimitStage,
            SignalKind::Pql,
        ] {
            let at = |p| plan_offered(&t, kind, p, &json!({}));
            assert_eq!(at(Plan::Free), Ok(Plan::Pro), "{kind}");
            assert_eq!(at(Plan::Pro), Ok(Plan::Enterprise), "{kind}");
            assert!(at(Plan::Enterprise)
                .unwrap_err()
                .0
                .contains("tiers.enterprise.upgrade_to is empty"));
        }
    }

    #[test]
    fn sales_signals_sell_enterprise_to_anyone_below_it() {
        let t = TiersConfig::default();
        for kind in [SignalKind::DealReady, SignalKind::Escalation] {
            assert_eq!(
                plan_offered(&t, kind, Plan::Free, &json!({})),
                Ok(Plan::Enterprise)
            );
            assert_eq!(
                plan_offered(&t, kind, Plan::Pro, &json!({})),
                Ok(Plan::Enterprise)
            );
            assert!(plan_offered(&t, kind, Plan::Enterprise, &json!({})).is_err());
        }
    }
}
