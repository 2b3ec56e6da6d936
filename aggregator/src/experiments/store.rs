//! Experiments in PostgreSQL: define, inspect, edit, stop, and assign at signup.
//!
//! Every change runs in one transaction that first locks the experiment's row (`FOR UPDATE`);
//! assignment takes the same row `FOR SHARE`, so an edit and a signup never interleave and an
//! account never lands on a variant's old values after an edit raised them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meterline_schemas::limits::TiersConfig;
use sqlx::{PgConnection, PgPool, Row};

use super::guard::{self, lowers, Lowered};
use super::{
    check_limit, choose_variant, invalid, limit_rank, show_limit, tier_default, ExperimentError,
    ExperimentSpec, VariantSpec,
};

pub use super::state::{Experiment, ExperimentState};

fn source(experiment: &str) -> String {
    format!("experiment:{experiment}")
}

async fn variants_of(
    conn: &mut PgConnection,
    experiment: &str,
) -> Result<Vec<VariantSpec>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, weight, is_control, limits FROM experiment_variants WHERE experiment = $1 ORDER BY name",
    )
    .bind(experiment)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| VariantSpec {
            name: r.get("name"),
            weight: r.get::<i32, _>("weight").max(0) as u32,
            control: r.get("is_control"),
            limits: serde_json::from_value(r.get::<serde_json::Value, _>("limits"))
                .unwrap_or_default(),
        })
        .collect())
}

async fn load(
    conn: &mut PgConnection,
    name: &str,
    lock: bool,
) -> Result<Experiment, ExperimentError> {
    let sql = if lock {
        "SELECT name, description, plan, starts_at, ends_at, stopped_at, created_at FROM experiments WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT name, description, plan, starts_at, ends_at, stopped_at, created_at FROM experiments WHERE name = $1"
    };
    let row = sqlx::query(sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ExperimentError::NotFound(name.to_owned()))?;
    let variants = variants_of(conn, name).await?;
    let assigned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT variant, count(*) FROM experiment_assignments WHERE experiment = $1 GROUP BY variant",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let mut counts: BTreeMap<String, i64> = variants.iter().map(|v| (v.name.clone(), 0)).collect();
    counts.extend(assigned);
    Ok(Experiment {
        spec: ExperimentSpec {
            name: row.get("name"),
            description: row.get("description"),
            plan: row.get("plan"),
            starts_at: row.get("starts_at"),
            ends_at: row.get("ends_at"),
            variants,
        },
        stopped_at: row.get("stopped_at"),
        created_at: row.get("created_at"),
        assigned: counts,
    })
}

/// One experiment by name.
pub async fn get(pool: &PgPool, name: &str) -> Result<Experiment, ExperimentError> {
    let mut conn = pool.acquire().await?;
    load(&mut conn, name, false).await
}

/// Every experiment, newest start first.
pub async fn list(pool: &PgPool) -> Result<Vec<Experiment>, ExperimentError> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM experiments ORDER BY starts_at DESC, name")
            .fetch_all(pool)
            .await?;
    let mut conn = pool.acquire().await?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        out.push(load(&mut conn, &n, false).await?);
    }
    Ok(out)
}

/// Stores a new experiment. Refused when an overlapping experiment on the same plan already
/// gives assigned accounts a higher value of a limit this one sets lower.
pub async fn create(pool: &PgPool, spec: &ExperimentSpec) -> Result<(), ExperimentError> {
    spec.validate()?;
    let mut tx = pool.begin().await?;
    // Serialises experiment creation, so two overlapping ones cannot both pass the check.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('meterline.experiments'))")
        .execute(&mut *tx)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM experiments WHERE name = $1)")
            .bind(&spec.name)
            .fetch_one(&mut *tx)
            .await?;
    if exists {
        return Err(ExperimentError::Exists(spec.name.clone()));
    }
    let overlapping: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM experiments WHERE stopped_at IS NULL AND plan = $1
           AND (ends_at IS NULL OR ends_at > $2) AND ($3::timestamptz IS NULL OR starts_at < $3)
         ORDER BY name",
    )
    .bind(&spec.plan)
    .bind(spec.starts_at)
    .bind(spec.ends_at)
    .fetch_all(&mut *tx)
    .await?;
    let mut lowered = Vec::new();
    let mut others = Vec::new();
    for other in &overlapping {
        for limit in spec.limit_names() {
            // The lowest value any of this experiment's variants would assign.
            let Some(lowest) = spec
                .variants
                .iter()
                .filter_map(|v| v.limits.get(limit).copied())
                .min_by(|a, b| limit_rank(Some(*a)).total_cmp(&limit_rank(Some(*b))))
            else {
                continue;
            };
            let held: Vec<(String, f64)> = sqlx::query_as(
                "SELECT o.account_id, o.value FROM experiment_assignments a
                   JOIN account_limit_overrides o ON o.account_id = a.account_id AND o.limit_name = $2
                  WHERE a.experiment = $1 ORDER BY o.account_id",
            )
            .bind(other)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let before = lowered.len();
            lowered.extend(
                held.into_iter()
                    .filter(|(_, v)| lowers(Some(*v), Some(lowest)))
                    .map(|(account_id, v)| Lowered {
                        account_id,
                        limit: limit.to_owned(),
                        from: Some(v),
                        to: Some(lowest),
                    }),
            );
            if lowered.len() > before && !others.contains(other) {
                others.push(other.clone());
            }
        }
    }
    guard::check(
        format!(
            "creating `{}` on the same plan and limits as running experiment(s) {} (an account that signs up into both would get the lower value)",
            spec.name,
            others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
        ),
        lowered,
    )
    .map_err(ExperimentError::Refused)?;
    sqlx::query(
        "INSERT INTO experiments (name, description, plan, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(&spec.plan)
    .bind(spec.starts_at)
    .bind(spec.ends_at)
    .execute(&mut *tx)
    .await?;
    for v in &spec.variants {
        sqlx::query(
            "INSERT INTO experiment_variants (experiment, name, weight, is_control, limits) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&spec.name)
        .bind(&v.name)
        .bind(v.weight as i32)
        .bind(v.control)
        .bind(serde_json::to_value(&v.limits).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Sets limits in one variant, for future signups and for the accounts already in it.
/// Refused if any assigned account would end up with a lower limit than it has now (its
/// override, or the plan's default when it has none). Returns how many accounts were updated.
pub async fn edit_variant(
    pool: &PgPool,
    name: &str,
    variant: &str,
    limits: &BTreeMap<String, f64>,
    tiers: &TiersConfig,
) -> Result<u64, ExperimentError> {
    if limits.is_empty() {
        return Err(invalid("--set", "name at least one LIMIT=VALUE"));
    }
    for (k, v) in limits {
        check_limit(&format!("--set {k}"), k, *v)?;
    }
    let mut tx = pool.begin().await?;
    let experiment = load(&mut tx, name, true).await?;
    let Some(current) = experiment.spec.variants.iter().find(|v| v.name == variant) else {
        return Err(invalid(
            "--variant",
            format!("{name:?} has no variant {variant:?}"),
        ));
    };
    let tier = tiers.get(experiment.spec.plan());
    let mut lowered = Vec::new();
    for (limit, to) in limits {
        let held: Vec<(String, Option<f64>)> = sqlx::query_as(
            "SELECT a.account_id, o.value FROM experiment_assignments a
               LEFT JOIN account_limit_overrides o ON o.account_id = a.account_id AND o.limit_name = $3
              WHERE a.experiment = $1 AND a.variant = $2 ORDER BY a.account_id",
        )
        .bind(name)
        .bind(variant)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        for (account_id, value) in held {
            let from = value.or_else(|| tier_default(tier, limit));
            if lowers(from, Some(*to)) {
                lowered.push(Lowered {
                    account_id,
                    limit: limit.clone(),
                    from,
                    to: Some(*to),
                });
            }
        }
    }
    guard::check(format!("editing variant `{variant}` of `{name}`"), lowered)
        .map_err(ExperimentError::Refused)?;
    let mut merged = current.limits.clone();
    merged.extend(limits.iter().map(|(k, v)| (k.clone(), *v)));
    sqlx::query("UPDATE experiment_variants SET limits = $3 WHERE experiment = $1 AND name = $2")
        .bind(name)
        .bind(variant)
        .bind(serde_json::to_value(&merged).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
    let mut updated = 0;
    for (limit, value) in limits {
        updated = sqlx::query(
            "INSERT INTO account_limit_overrides (account_id, limit_name, value, source, plan)
             SELECT account_id, $3, $4, $5, $6 FROM experiment_assignments WHERE experiment = $1 AND variant = $2
             ON CONFLICT (account_id, limit_name) DO UPDATE
                SET value = EXCLUDED.value, source = EXCLUDED.source, plan = EXCLUDED.plan, updated_at = now()",
        )
        .bind(name)
        .bind(variant)
        .bind(limit)
        .bind(value)
        .bind(source(name))
        .bind(&experiment.spec.plan)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    sqlx::query("UPDATE experiments SET updated_at = now() WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(updated)
}

/// What a stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub assigned: i64,
    /// Overrides removed (with `--revert-limits`).
    pub reverted: u64,
}

/// Stops assigning. Assigned accounts keep their limits, unless `revert_limits` asks to give
/// them the plan's defaults back, which is refused wherever a default is lower.
pub async fn stop(
    pool: &PgPool,
    name: &str,
    revert_limits: bool,
    tiers: &TiersConfig,
) -> Result<Stopped, ExperimentError> {
    let mut tx = pool.begin().await?;
    let experiment = load(&mut tx, name, true).await?;
    if experiment.stopped_at.is_some() && !revert_limits {
        return Err(invalid("name", format!("{name:?} is already stopped")));
    }
    let mut reverted = 0;
    if revert_limits {
        let tier = tiers.get(experiment.spec.plan());
        let held: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT account_id, limit_name, value FROM account_limit_overrides
              WHERE source = $1 ORDER BY account_id, limit_name",
        )
        .bind(source(name))
        .fetch_all(&mut *tx)
        .await?;
        let lowered: Vec<Lowered> = held
            .into_iter()
            .filter_map(|(account_id, limit, value)| {
                let to = tier_default(tier, &limit);
                lowers(Some(value), to).then_some(Lowered {
                    account_id,
                    limit,
                    from: Some(value),
                    to,
                })
            })
            .collect();
        guard::check(
            format!(
                "stopping `{name}` with --revert-limits (the {} plan's defaults are lower)",
                experiment.spec.plan
            ),
            lowered,
        )
        .map_err(ExperimentError::Refused)?;
        reverted = sqlx::query("DELETE FROM account_limit_overrides WHERE source = $1")
            .bind(source(name))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    sqlx::query(
        "UPDATE experiments SET stopped_at = COALESCE(stopped_at, now()), updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Stopped {
        assigned: experiment.assigned.values().sum(),
        reverted,
    })
}

/// Assigns a just-signed-up account to every running experiment it is eligible for, inside
/// the transaction that applied its signup: its earliest signup is at or after the start (and
/// before the end), and it signed up on the experiment's plan. Writes the variant's limits
/// as the account's overrides; an existing override is only ever raised. Returns
/// (experiment, variant) for each new assignment.
pub async fn assign_at_signup(
    conn: &mut PgConnection,
    account_id: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let account: Option<(Option<DateTime<Utc>>, String)> =
        sqlx::query_as("SELECT signed_up_at, plan FROM accounts WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((Some(signed_up_at), plan)) = account else {
        return Ok(Vec::new());
    };
    let eligible: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM experiments
          WHERE stopped_at IS NULL AND plan = $2 AND starts_at <= $1 AND (ends_at IS NULL OR ends_at > $1)
          ORDER BY name FOR SHARE",
    )
    .bind(signed_up_at)
    .bind(&plan)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for experiment in eligible {
        let variants = variants_of(conn, &experiment).await?;
        let Some(variant) = choose_variant(&experiment, account_id, &variants) else {
            continue;
        };
        let inserted = sqlx::query(
            "INSERT INTO experiment_assignments (experiment, account_id, variant, signed_up_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (experiment, account_id) DO NOTHING",
        )
        .bind(&experiment)
        .bind(account_id)
        .bind(&variant.name)
        .bind(signed_up_at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        for (limit, value) in &variant.limits {
            // -1 (unlimited) ranks above every number.
            sqlx::query(
                "INSERT INTO account_limit_overrides (account_id, limit_name, value, source, plan)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (account_id, limit_name) DO UPDATE
                    SET value = EXCLUDED.value, source = EXCLUDED.source, plan = EXCLUDED.plan, updated_at = now()
                  WHERE (CASE WHEN EXCLUDED.value = -1 THEN 'Infinity'::float8 ELSE EXCLUDED.value END)
                      > (CASE WHEN account_limit_overrides.value = -1 THEN 'Infinity'::float8 ELSE account_limit_overrides.value END)",
            )
            .bind(account_id)
            .bind(limit)
            .bind(value)
            .bind(source(&experiment))
            .bind(&plan)
            .execute(&mut *conn)
            .await?;
        }
        out.push((experiment, variant.name.clone()));
    }
    Ok(out)
}

/// An assignment not yet recorded in ClickHouse as an `experiment_assigned` event.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAssignment {
    pub experiment: String,
    pub account_id: String,
    pub variant: String,
    pub is_control: bool,
    pub signed_up_at: DateTime<Utc>,
    pub assigned_at: DateTime<Utc>,
    pub plan: String,
    /// The variant's limits as JSON.
    pub limits: String,
}

/// Up to `limit` assignments waiting for their ClickHouse event, oldest first.
pub async fn pending_assignments(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<PendingAssignment>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.experiment, a.account_id, a.variant, v.is_control, a.signed_up_at, a.assigned_at,
                e.plan, v.limits::text AS limits
           FROM experiment_assignments a
           JOIN experiments e ON e.name = a.experiment
           JOIN experiment_variants v ON v.experiment = a.experiment AND v.name = a.variant
          WHERE a.recorded_at IS NULL
          ORDER BY a.assigned_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PendingAssignment {
            experiment: r.get("experiment"),
            account_id: r.get("account_id"),
            variant: r.get("variant"),
            is_control: r.get("is_control"),
            signed_up_at: r.get("signed_up_at"),
            assigned_at: r.get("assigned_at"),
            plan: r.get("plan"),
            limits: r.get("limits"),
        })
        .collect())
}

/// Marks assignments as recorded, once ClickHouse holds their events.
pub async fn mark_recorded(pool: &PgPool, done: &[PendingAssignment]) -> Result<(), sqlx::Error> {
    if done.is_empty() {
        return Ok(());
    }
    let experiments: Vec<&str> = done.iter().map(|p| p.experiment.as_str()).collect();
    let accounts: Vec<&str> = done.iter().map(|p| p.account_id.as_str()).collect();
    sqlx::query(
        "UPDATE experiment_assignments a SET recorded_at = now()
           FROM UNNEST($1::text[], $2::text[]) AS d(experiment, account_id)
          WHERE a.experiment = d.experiment AND a.account_id = d.account_id",
    )
    .bind(&experiments)
    .bind(&accounts)
    .execute(pool)
    .await?;
    Ok(())
}

/// Parses `LIMIT=VALUE` pairs from the command line.
pub fn parse_settings(pairs: &[String]) -> Result<BTreeMap<String, f64>, ExperimentError> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| invalid(format!("--set {p}"), "expected LIMIT=VALUE"))?;
        let value: f64 = v
            .trim()
            .parse()
            .map_err(|_| invalid(format!("--set {p}"), format!("{v:?} is not a number")))?;
        check_limit(&format!("--set {p}"), k.trim(), value)?;
        out.insert(k.trim().to_owned(), value);
    }
    Ok(out)
}

/// A variant's limits, for tables: `month_requests=30, day_requests=unlimited`.
pub fn limits_text(limits: &BTreeMap<String, f64>) -> String {
    if limits.is_empty() {
        return "plan defaults".into();
    }
    limits
        .iter()
        .map(|(k, v)| format!("{k}={}", show_limit(Some(*v))))
        .collect::<Vec<_>>()
        .join(", ")
}
