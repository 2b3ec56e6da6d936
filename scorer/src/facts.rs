//! What the rules know about one account, gathered from the three stores by [`crate::load`].
//! Plain data, so every rule is a pure function of it and can be tested at its boundaries.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use meterline_schemas::limits::RawUsage;
use meterline_schemas::Plan;
use serde::Serialize;

/// One UTC day of an account's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DayUsage {
    pub day: DateTime<Utc>,
    pub requests: u64,
    /// Input + output tokens.
    pub raw_tokens: u64,
    /// Weighted by model and tier, as the limits count them.
    pub weighted_tokens: f64,
    /// Spend, in millionths of a US dollar.
    pub cost_micros: u64,
}

/// A session seen today.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSpan {
    pub session_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One API key seen from many client IPs within one minute, with what the key looked like over
/// the last 24 hours: whether those addresses stay (a fleet) or come and go (a crowd).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyMinute {
    pub api_key_id: String,
    pub minute: DateTime<Utc>,
    pub distinct_ips: u64,
    /// Distinct client-IP hashes on the key in the last 24 hours.
    pub ips_24h: u64,
    /// Distinct (non-empty) device ids on the key in the last 24 hours.
    pub devices_24h: u64,
    /// Distinct (non-empty) session ids on the key in the last 24 hours.
    pub sessions_24h: u64,
}

/// Another account matching this one's signup fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FingerprintMatch {
    pub other_account: String,
    /// Which of `signup_ip_hash`, `device_id`, `browser_signature` are equal.
    pub signals: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccountFacts {
    pub account_id: String,
    pub now: DateTime<Utc>,
    // PostgreSQL: the account.
    pub plan: Plan,
    pub overrides: BTreeMap<String, f64>,
    pub seats: Option<u64>,
    pub company_size: Option<u64>,
    pub email_domain: Option<String>,
    /// The email domain is a public one (`gmail.com`, …): it says nothing about a company.
    pub email_domain_public: bool,
    pub signed_up_at: Option<DateTime<Utc>>,
    /// Accounts with this account's email domain, itself included; 1 for a public domain,
    /// which is never rolled up.
    pub domain_accounts: u64,
    pub fingerprint_matches: Vec<FingerprintMatch>,
    /// Plugins whose gate has been raised before (they stay desired).
    pub plugins_desired_before: BTreeSet<String>,
    // Redis: the hot state.
    pub raw: RawUsage,
    pub month_raw_tokens: u64,
    pub month_regions: BTreeSet<String>,
    // ClickHouse: history.
    /// The last 30 UTC days, oldest first, today last; days without usage are zero.
    pub daily: Vec<DayUsage>,
    /// Weighted tokens of each of the previous calendar months, most recent first.
    pub previous_months_weighted: Vec<f64>,
    pub providers_7d: u64,
    pub clouds_7d: u64,
    pub pii_requests_7d: u64,
    pub users_30d: u64,
    pub gate_hits_30d: u64,
    pub sessions_today: Vec<SessionSpan>,
    pub prompts_today: u64,
    pub distinct_prompts_today: u64,
    /// Requests per minute over the last 30 minutes, oldest first, the current minute last.
    pub minutes: Vec<(DateTime<Utc>, u64)>,
    pub shared_keys: Vec<KeyMinute>,
    /// The population's median session length today, in seconds.
    pub median_session_secs: Option<f64>,
    /// `upgrade_page_viewed` account events in the last 30 days.
    pub upgrade_views_30d: u64,
    /// The 30-day spend (micro-dollars) at which an active account on this plan is in the top
    /// `power_spend_top_share`; `None` when no account on the plan spent anything.
    pub plan_spend_top_micros: Option<u64>,
}

impl AccountFacts {
    /// An account with no usage and no profile, for tests to fill in.
    pub fn empty(account_id: &str, now: DateTime<Utc>) -> Self {
        Self {
            account_id: account_id.to_owned(),
            now,
            plan: Plan::Free,
            overrides: BTreeMap::new(),
            seats: None,
            company_size: None,
            email_domain: None,
            email_domain_public: false,
            signed_up_at: None,
            domain_accounts: 1,
            fingerprint_matches: vec![],
            plugins_desired_before: BTreeSet::new(),
            raw: RawUsage::default(),
            month_raw_tokens: 0,
            month_regions: BTreeSet::new(),
            daily: vec![],
            previous_months_weighted: vec![],
            providers_7d: 0,
            clouds_7d: 0,
            pii_requests_7d: 0,
            users_30d: 0,
            gate_hits_30d: 0,
            sessions_today: vec![],
            prompts_today: 0,
            distinct_prompts_today: 0,
            minutes: vec![],
            shared_keys: vec![],
            median_session_secs: None,
            upgrade_views_30d: 0,
            plan_spend_top_micros: None,
        }
    }

    pub fn team_size(&self) -> u64 {
        self.seats.unwrap_or(0).max(self.users_30d)
    }

    /// Requests over [`Self::daily`] (the last 30 days).
    pub fn requests_30d(&self) -> u64 {
        self.daily.iter().map(|d| d.requests).sum()
    }

    /// Spend over [`Self::daily`] (the last 30 days), in micro-dollars.
    pub fn spend_30d_micros(&self) -> u64 {
        self.daily.iter().map(|d| d.cost_micros).sum()
    }

    pub fn age_hours(&self) -> Option<f64> {
        self.signed_up_at
            .map(|s| (self.now - s).num_seconds() as f64 / 3600.0)
    }
}
