//! Gathers [`AccountFacts`] for a batch of accounts: one query per kind of fact for the whole
//! batch (ClickHouse, PostgreSQL), one pipelined round trip per account (Redis).
//!
//! Two facts look past the batch, each one query per batch: the population's median session
//! length today, and per plan the 30-day spend that puts an active account in the top
//! `power_spend_top_share` (plans from ClickHouse `account_events`, the latest `signup` or
//! `plan_changed` naming one; none is free). Public email domains ([`PublicDomains`]) are
//! marked and left out of the domain rollup.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::{self, HotKeys};
use meterline_schemas::keys::{field, Grain};
use meterline_schemas::limits::{QuotaConfig, RawUsage, TiersConfig};
use meterline_schemas::public_domains::PublicDomains;
use meterline_schemas::{AccountEventType, AccountId, Plan, SignalKind};
use sqlx::PgPool;

use crate::config::ScorerConfig;
use crate::facts::{AccountFacts, DayUsage, FingerprintMatch, KeyMinute, SessionSpan};
use crate::ScoreError;

#[derive(Clone)]
pub struct Stores {
    pub clickhouse: clickhouse::Client,
    /// The hot state (layout v2) and the scorer's queue ([`crate::queue`]), standalone or
    /// cluster.
    pub redis: HotConn,
    pub hot: HotKeys,
    pub pg: PgPool,
    /// `[accounts] public_domains`: never rolled up, never worth domain points.
    pub public_domains: Arc<PublicDomains>,
}

/// `(?,?,…)`: one placeholder per account, for `account_id IN (?,?,…)`.
///
/// Every value in these queries is bound with [`clickhouse::query::Query::bind`] (the crate
/// quotes and escapes it), never spliced into the SQL. A list is bound value by value
/// ([`bind_accounts`]) because ClickHouse 18.16 does not take an array on the right of `IN`.
fn in_placeholders(n: usize) -> String {
    format!("({})", vec!["?"; n].join(","))
}

/// Binds the accounts, in order, to the next `accounts.len()` placeholders: the query's
/// `IN` list has to be its first placeholders.
fn bind_accounts(
    query: clickhouse::query::Query,
    accounts: &[AccountId],
) -> clickhouse::query::Query {
    accounts.iter().fold(query, |q, a| q.bind(a.as_str()))
}

fn at(secs: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(i64::from(secs), 0)
        .single()
        .unwrap_or_default()
}

mod rows;
use rows::*;

impl Stores {
    /// The scorer's queue, on the hot state's connection.
    pub fn queue(&self) -> crate::queue::Queue {
        crate::queue::Queue::new(self.redis.clone(), self.hot.clone())
    }

    /// The population's median session length today (seconds), for the power-user rule.
    pub async fn median_session_secs(&self, now: DateTime<Utc>) -> Result<Option<f64>, ScoreError> {
        let day = Grain::Day.window_start(now).timestamp();
        let v: f64 = self
            .clickhouse
            .query(
                "SELECT toFloat64(median(len)) FROM (SELECT toFloat64(max(occurred_at)) - toFloat64(min(occurred_at)) AS len \
                 FROM usage_events WHERE occurred_at >= toDateTime(?) AND session_id != '' GROUP BY account_id, session_id)",
            )
            .bind(day)
            .fetch_one()
            .await?;
        Ok(v.is_finite().then_some(v).filter(|v| *v > 0.0))
    }

    /// Per plan, the 30-day spend (micro-dollars) at which an active account (one with
    /// requests in the last 30 days) is in the top `share` of its plan's.
    pub async fn plan_spend_tops(
        &self,
        now: DateTime<Utc>,
        share: f64,
    ) -> Result<HashMap<Plan, u64>, ScoreError> {
        let from30 = (Grain::Day.window_start(now) - Duration::days(29)).timestamp();
        let rows: Vec<PlanSpend> = self
            .clickhouse
            .query(
                "SELECT plan, toUInt64(quantileExact(?)(spend)) AS top FROM ( \
                   SELECT account_id, spend, if(p = '', 'free', p) AS plan FROM ( \
                     SELECT account_id, sum(cost_micros) AS spend FROM usage_day \
                     WHERE window_start >= toDateTime(?) GROUP BY account_id HAVING sum(requests) > 0 \
                   ) ANY LEFT JOIN ( \
                     SELECT account_id, argMax(plan, occurred_at) AS p FROM account_events \
                     WHERE type IN (?, ?) AND plan != '' GROUP BY account_id \
                   ) USING account_id \
                 ) GROUP BY plan",
            )
            .bind(1.0 - share)
            .bind(from30)
            .bind(AccountEventType::Signup.as_str())
            .bind(AccountEventType::PlanChanged.as_str())
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Plan::parse("plan", &r.plan).ok().map(|p| (p, r.top)))
            .collect())
    }

    /// Accounts with usage this month or a row in PostgreSQL: the daily full pass.
    pub async fn all_accounts(&self, now: DateTime<Utc>) -> Result<Vec<String>, ScoreError> {
        let month = Grain::Month.window_start(now).timestamp();
        let mut ids: BTreeSet<String> = self
            .clickhouse
            .query(
                "SELECT DISTINCT account_id FROM usage_month WHERE window_start >= toDateTime(?)",
            )
            .bind(month)
            .fetch_all::<String>()
            .await?
            .into_iter()
            .collect();
        let pg: Vec<(String,)> = sqlx::query_as("SELECT account_id FROM accounts")
            .fetch_all(&self.pg)
            .await?;
        ids.extend(pg.into_iter().map(|(a,)| a));
        Ok(ids.into_iter().collect())
    }

    pub async fn facts(
        &self,
        accounts: &[AccountId],
        now: DateTime<Utc>,
        quota: &QuotaConfig,
        tiers: &TiersConfig,
        config: &ScorerConfig,
    ) -> Result<Vec<AccountFacts>, ScoreError> {
        if accounts.is_empty() {
            return Ok(vec![]);
        }
        let mut facts: BTreeMap<String, AccountFacts> = accounts
            .iter()
            .map(|a| (a.as_str().to_owned(), AccountFacts::empty(a.as_str(), now)))
            .collect();
        self.load_postgres(&mut facts).await?;
        for f in facts.values_mut() {
            self.load_hot_state(f).await?;
        }
        self.load_history(accounts, &mut facts, now, quota, tiers, config)
            .await?;
        let median = self.median_session_secs(now).await?;
        let tops = self
            .plan_spend_tops(now, config.power_spend_top_share)
            .await?;
        for f in facts.values_mut() {
            f.median_session_secs = median;
            f.plan_spend_top_micros = tops.get(&f.plan).copied();
        }
        Ok(facts.into_values().collect())
    }

    async fn load_postgres(
        &self,
        facts: &mut BTreeMap<String, AccountFacts>,
    ) -> Result<(), ScoreError> {
        let ids: Vec<String> = facts.keys().cloned().collect();
        let rows: Vec<AccountRow> = sqlx::query_as(
            "SELECT account_id, plan, seats, company_size, email_domain, signed_up_at, signup_ip_hash, device_id, browser_signature \
             FROM accounts WHERE account_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pg)
        .await?;
        let mut fingerprints = Vec::new();
        for (id, plan, seats, company, domain, signed_up, ip, device, browser) in rows {
            let Some(f) = facts.get_mut(&id) else {
                continue;
            };
            f.plan = Plan::parse("plan", &plan).unwrap_or(Plan::Free);
            f.seats = seats.map(|s| s.max(0) as u64);
            f.company_size = company.map(|s| s.max(0) as u64);
            f.email_domain_public = domain
                .as_deref()
                .is_some_and(|d| self.public_domains.is_public(d));
            f.email_domain = domain;
            f.signed_up_at = signed_up;
            fingerprints.push((id, ip, device, browser));
        }
        let overrides: Vec<(String, String, f64)> = sqlx::query_as(
            // An override scoped to a plan (an experiment's) applies only while the account is on it.
            "SELECT o.account_id, o.limit_name, o.value FROM account_limit_overrides o LEFT JOIN accounts a USING (account_id) \
             WHERE o.account_id = ANY($1) AND (o.plan IS NULL OR o.plan = COALESCE(a.plan, 'free'))",
        )
        .bind(&ids)
        .fetch_all(&self.pg)
        .await?;
        for (id, name, v) in overrides {
            if let Some(f) = facts.get_mut(&id) {
                f.overrides.insert(name, v);
            }
        }
        // Company domains only: a public one is never rolled up.
        let domains: Vec<String> = facts
            .values()
            .filter(|f| !f.email_domain_public)
            .filter_map(|f| f.email_domain.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT email_domain, count(*) FROM accounts WHERE email_domain = ANY($1) GROUP BY email_domain",
        )
        .bind(&domains)
        .fetch_all(&self.pg)
        .await?;
        let counts: HashMap<String, i64> = counts.into_iter().collect();
        for f in facts.values_mut().filter(|f| !f.email_domain_public) {
            if let Some(n) = f.email_domain.as_ref().and_then(|d| counts.get(d)) {
                f.domain_accounts = (*n).max(1) as u64;
            }
        }
        for (id, ip, device, browser) in fingerprints {
            if ip.is_none() && device.is_none() && browser.is_none() {
                continue;
            }
            let matches: Vec<(String, bool, bool, bool)> = sqlx::query_as(
                "SELECT account_id, COALESCE(signup_ip_hash = $2, false), COALESCE(device_id = $3, false), COALESCE(browser_signature = $4, false) \
                 FROM accounts WHERE account_id <> $1 AND (signup_ip_hash = $2 OR device_id = $3 OR browser_signature = $4)",
            )
            .bind(&id)
            .bind(&ip)
            .bind(&device)
            .bind(&browser)
            .fetch_all(&self.pg)
            .await?;
            if let Some(f) = facts.get_mut(&id) {
                f.fingerprint_matches = matches
                    .into_iter()
                    .map(|(other, ip, dev, br)| FingerprintMatch {
                        other_account: other,
                        signals: [
                            (ip, "signup_ip_hash"),
                            (dev, "device_id"),
                            (br, "browser_signature"),
                        ]
                        .into_iter()
                        .filter(|(m, _)| *m)
                        .map(|(_, n)| n.to_owned())
                        .collect(),
                    })
                    .collect();
            }
        }
        let desired: Vec<(String, String)> = sqlx::query_as(
            "SELECT account_id, episode FROM account_signals WHERE kind = $2 AND account_id = ANY($1)",
        )
        .bind(&ids)
        .bind(SignalKind::PluginGate.as_str())
        .fetch_all(&self.pg)
        .await?;
        for (id, plugin) in desired {
            if let Some(f) = facts.get_mut(&id) {
                f.plugins_desired_before.insert(plugin);
            }
        }
        Ok(())
    }

    async fn load_hot_state(&self, f: &mut AccountFacts) -> Result<(), ScoreError> {
        // `cur`, or the hash an account not written since 2026-12-05 still has.
        let (cur, hash): (Option<Vec<u8>>, Vec<(String, String)>) = redis::pipe()
            .get(self.hot.cur(f.account_id.as_str()))
            .hgetall(self.hot.cur_hash(f.account_id.as_str()))
            .query_async(&mut self.redis.clone())
            .await?;
        let cur = hot::read_cur(cur, hash);
        let raw = hot::raw_usage(&cur, None, f.now);
        f.month_raw_tokens = (raw.month.get(field::INPUT_TOKENS).copied().unwrap_or(0)
            + raw.month.get(field::OUTPUT_TOKENS).copied().unwrap_or(0))
        .max(0) as u64;
        f.month_regions = hot::month_lists(&cur, f.now).regions.into_iter().collect();
        f.raw = RawUsage {
            month: raw.month,
            day: raw.day,
            day_sessions: raw.day_sessions,
            month_sessions: raw.month_sessions,
            ..RawUsage::default()
        };
        Ok(())
    }

    async fn load_history(
        &self,
        accounts: &[AccountId],
        facts: &mut BTreeMap<String, AccountFacts>,
        now: DateTime<Utc>,
        quota: &QuotaConfig,
        tiers: &TiersConfig,
        config: &ScorerConfig,
    ) -> Result<(), ScoreError> {
        let ids = in_placeholders(accounts.len());
        let query = |sql: &str| bind_accounts(self.clickhouse.query(sql), accounts);
        let today = Grain::Day.window_start(now);
        let from30 = (today - Duration::days(29)).timestamp();
        let from7 = (today - Duration::days(6)).timestamp();
        let month = Grain::Month.window_start(now);

        // Days: the last 30, per model, weighted by each account's tier.
        let rows: Vec<ModelWindow> = query(&format!(
            "SELECT account_id, toUInt32(window_start) AS window_start, model, sum(requests) AS requests, \
             sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
             sum(cost_micros) AS cost_micros FROM usage_day \
             WHERE account_id IN {ids} AND window_start >= toDateTime(?) \
             GROUP BY account_id, window_start, model"
        ))
        .bind(from30)
        .fetch_all()
            .await?;
        for f in facts.values_mut() {
            f.daily = (0..30)
                .map(|i| DayUsage {
                    day: today - Duration::days(29 - i),
                    ..DayUsage::default()
                })
                .collect();
        }
        for r in rows {
            let Some(f) = facts.get_mut(&r.account_id) else {
                continue;
            };
            let mult = tiers.get(f.plan).weight_multiplier;
            let idx = (at(r.window_start) - (today - Duration::days(29))).num_days();
            if let Some(d) = usize::try_from(idx).ok().and_then(|i| f.daily.get_mut(i)) {
                d.requests += r.requests;
                d.cost_micros += r.cost_micros;
                d.raw_tokens += r.input_tokens + r.output_tokens;
                d.weighted_tokens +=
                    quota.model_tokens(&r.model, r.input_tokens as f64, r.output_tokens as f64)
                        * mult;
            }
        }

        // Previous calendar months, for power users.
        let months = config.power_limit_months as u32;
        let mut first = month;
        for _ in 0..months {
            first = Grain::Month.window_start(first - Duration::days(1));
        }
        let rows: Vec<ModelWindow> = query(&format!(
            "SELECT account_id, toUInt32(window_start) AS window_start, model, sum(requests) AS requests, \
             sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
             sum(cost_micros) AS cost_micros FROM usage_month \
             WHERE account_id IN {ids} AND window_start >= toDateTime(?) AND window_start < toDateTime(?) \
             GROUP BY account_id, window_start, model"
        ))
        .bind(first.timestamp())
        .bind(month.timestamp())
        .fetch_all()
            .await?;
        let mut per_month: HashMap<(String, u32), f64> = HashMap::new();
        for r in rows {
            let Some(f) = facts.get(&r.account_id) else {
                continue;
            };
            let mult = tiers.get(f.plan).weight_multiplier;
            *per_month
                .entry((r.account_id.clone(), r.window_start))
                .or_default() +=
                quota.model_tokens(&r.model, r.input_tokens as f64, r.output_tokens as f64) * mult;
        }
        for f in facts.values_mut() {
            let mut m = month;
            f.previous_months_weighted = (0..months)
                .map(|_| {
                    m = Grain::Month.window_start(m - Duration::days(1));
                    per_month
                        .get(&(f.account_id.clone(), m.timestamp() as u32))
                        .copied()
                        .unwrap_or(0.0)
                })
                .collect();
        }

        // 7 days: providers, clouds, PII.
        let rows: Vec<Dims7> = query(&format!(
            "SELECT account_id, toUInt64(uniqExactMerge(providers)) AS providers, toUInt64(uniqExactMerge(clouds)) AS clouds, \
             sum(pii_requests) AS pii FROM usage_day WHERE account_id IN {ids} AND window_start >= toDateTime(?) \
             GROUP BY account_id"
        ))
        .bind(from7)
        .fetch_all()
            .await?;
        for r in rows {
            if let Some(f) = facts.get_mut(&r.account_id) {
                f.providers_7d = r.providers;
                f.clouds_7d = r.clouds;
                f.pii_requests_7d = r.pii;
            }
        }

        // 30 days: distinct users.
        let rows: Vec<AccountCount> = query(&format!(
            "SELECT account_id, toUInt64(uniqExactIfMerge(users)) AS n FROM usage_day \
             WHERE account_id IN {ids} AND window_start >= toDateTime(?) GROUP BY account_id"
        ))
        .bind(from30)
        .fetch_all()
        .await?;
        for r in rows {
            if let Some(f) = facts.get_mut(&r.account_id) {
                f.users_30d = r.n;
            }
        }

        // 30 days: upgrade page views (account events).
        let rows: Vec<AccountCount> = query(&format!(
            "SELECT account_id, toUInt64(uniqExact(event_id)) AS n FROM account_events \
             WHERE account_id IN {ids} AND type = ? AND occurred_at >= toDateTime(?) GROUP BY account_id"
        ))
        .bind(AccountEventType::UpgradePageViewed.as_str())
        .bind(from30)
        .fetch_all()
        .await?;
        for r in rows {
            if let Some(f) = facts.get_mut(&r.account_id) {
                f.upgrade_views_30d = r.n;
            }
        }

        // 30 days: requests naming a gated plugin. The plugin list is bound as an array; it
        // comes before the accounts in the text, so it is bound first.
        let gated = &config.gates.gated_plugins;
        if !gated.is_empty() {
            let sql = format!(
                "SELECT account_id, countIf(arrayExists(p -> has(?, p), plugins)) AS n FROM usage_events \
                 WHERE account_id IN {ids} AND occurred_at >= toDateTime(?) GROUP BY account_id"
            );
            let rows: Vec<AccountCount> =
                bind_accounts(self.clickhouse.query(&sql).bind(gated), accounts)
                    .bind(from30)
                    .fetch_all()
                    .await?;
            for r in rows {
                if let Some(f) = facts.get_mut(&r.account_id) {
                    f.gate_hits_30d = r.n;
                }
            }
        }

        // Today: sessions and prompts.
        let day = today.timestamp();
        let rows: Vec<Session> = query(&format!(
            "SELECT account_id, session_id, toUInt32(min(occurred_at)) AS start, toUInt32(max(occurred_at)) AS end \
             FROM usage_events WHERE account_id IN {ids} AND occurred_at >= toDateTime(?) AND session_id != '' \
             GROUP BY account_id, session_id"
        ))
        .bind(day)
        .fetch_all()
            .await?;
        for r in rows {
            if let Some(f) = facts.get_mut(&r.account_id) {
                f.sessions_today.push(SessionSpan {
                    session_id: r.session_id,
                    start: at(r.start),
                    end: at(r.end),
                });
            }
        }
        let rows: Vec<Prompts> = query(&format!(
            "SELECT account_id, countIf(prompt_hash != '') AS total, toUInt64(uniqExactIf(prompt_hash, prompt_hash != '')) AS uniq_prompts \
             FROM usage_events WHERE account_id IN {ids} AND occurred_at >= toDateTime(?) GROUP BY account_id"
        ))
        .bind(day)
        .fetch_all()
            .await?;
        for r in rows {
            if let Some(f) = facts.get_mut(&r.account_id) {
                f.prompts_today = r.total;
                f.distinct_prompts_today = r.uniq_prompts;
            }
        }

        // The last hour: keys used from many IPs within a minute.
        let hour_ago = (now - Duration::hours(1)).timestamp();
        let rows: Vec<KeyRow> = query(&format!(
            "SELECT account_id, api_key_id, toUInt32(toStartOfMinute(occurred_at)) AS minute, \
             toUInt64(uniqExact(client_ip_hash)) AS ips FROM usage_events \
             WHERE account_id IN {ids} AND occurred_at >= toDateTime(?) AND client_ip_hash != '' \
             GROUP BY account_id, api_key_id, minute HAVING ips >= ?"
        ))
        .bind(hour_ago)
        .bind(config.abuse.key_sharing_ips_per_minute)
        .fetch_all()
        .await?;
        let candidates = !rows.is_empty();
        for r in rows {
            if let Some(f) = facts.get_mut(&r.account_id) {
                f.shared_keys.push(KeyMinute {
                    api_key_id: r.api_key_id,
                    minute: at(r.minute),
                    distinct_ips: r.ips,
                    ..KeyMinute::default()
                });
            }
        }
        // For those keys, the last 24 hours: do the addresses stay (a fleet) or churn (a crowd)?
        if candidates {
            let day_ago = (now - Duration::hours(24)).timestamp();
            let rows: Vec<KeyDayRow> = query(&format!(
                "SELECT account_id, api_key_id, toUInt64(uniqExact(client_ip_hash)) AS ips, \
                 toUInt64(uniqExactIf(device_id, device_id != '')) AS devices, \
                 toUInt64(uniqExactIf(session_id, session_id != '')) AS sessions FROM usage_events \
                 WHERE account_id IN {ids} AND occurred_at >= toDateTime(?) AND client_ip_hash != '' \
                 GROUP BY account_id, api_key_id"
            ))
            .bind(day_ago)
            .fetch_all()
            .await?;
            for r in rows {
                let Some(f) = facts.get_mut(&r.account_id) else {
                    continue;
                };
                for k in f
                    .shared_keys
                    .iter_mut()
                    .filter(|k| k.api_key_id == r.api_key_id)
                {
                    k.ips_24h = r.ips;
                    k.devices_24h = r.devices;
                    k.sessions_24h = r.sessions;
                }
            }
        }

        // The last 30 minutes, per minute, zero-filled.
        let start = Grain::Minute.window_start(now) - Duration::minutes(29);
        let rows: Vec<MinuteRow> = query(&format!(
            "SELECT account_id, toUInt32(window_start) AS minute, sum(requests) AS requests FROM usage_minute \
             WHERE account_id IN {ids} AND window_start >= toDateTime(?) GROUP BY account_id, window_start"
        ))
        .bind(start.timestamp())
        .fetch_all()
            .await?;
        let mut per_minute: HashMap<(String, u32), u64> = HashMap::new();
        for r in rows {
            per_minute.insert((r.account_id, r.minute), r.requests);
        }
        for f in facts.values_mut() {
            f.minutes = (0..30)
                .map(|i| {
                    let m = start + Duration::minutes(i);
                    let n = per_minute
                        .get(&(f.account_id.clone(), m.timestamp() as u32))
                        .copied()
                        .unwrap_or(0);
                    (m, n)
                })
                .collect();
        }
        Ok(())
    }
}
