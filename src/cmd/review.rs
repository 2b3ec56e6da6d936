//! `meterline review list|show|confirm|clear`: the review queue, for a person. The same as
//! the admin-scoped `/v1/review` endpoints; both go through `meterline_ingest::read::review`.
//!
//! A decision is produced to the `account-events` topic as a `review_confirmed` or
//! `review_cleared` event with the actor and the reason; the aggregator applies it, and the
//! read path answers accordingly within seconds.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use meterline_ingest::app::TopicSchema;
use meterline_ingest::read::review::{self, ReviewEntry, Verdict};
use meterline_ingest::EventProducer;
use meterline_schemas::review::ReviewState;
use meterline_schemas::{avro, AccountId};

use crate::{migrate, services, Config};

#[derive(Subcommand)]
pub enum ReviewAction {
    /// Accounts in review, most recent first: state, since when, abuse score and its reasons.
    List {
        /// Only this state: suspected, auto_denied, confirmed or cleared.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One account's review: state, the evidence (abuse reasons and inputs), the history.
    Show {
        account: String,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Confirm abuse: quota checks answer deny within seconds.
    Confirm {
        account: String,
        /// Who decides (your email or handle).
        #[arg(long)]
        actor: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Clear an account in review: normal limits again, and the same episode does not flag it
    /// again unless its abuse score rises by review.rescore_margin.
    Clear {
        account: String,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: String,
    },
}

fn account_id(s: &str) -> Result<AccountId> {
    AccountId::parse(s).map_err(|e| anyhow!("{e}"))
}

pub async fn run(config: &Config, action: ReviewAction) -> Result<()> {
    let pool = migrate::connect_postgres(config).await?;
    match action {
        ReviewAction::List { state, limit, json } => {
            let state = state
                .map(|s| {
                    ReviewState::parse(&s).ok_or_else(|| {
                        anyhow!("--state: {s:?} is not one of suspected, auto_denied, confirmed, cleared")
                    })
                })
                .transpose()?;
            let rows = review::list(&pool, state, None, limit)
                .await
                .context("reading the review queue")?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", table(&rows));
            }
        }
        ReviewAction::Show { account, json } => {
            let account = account_id(&account)?;
            let detail = review::show(&pool, &account)
                .await
                .context("reading the review")?
                .ok_or_else(|| anyhow!("account {account} is unknown and has not been scored"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                println!("account   {}  ({})", detail.account_id, detail.plan);
                match &detail.review {
                    Some(r) => {
                        println!(
                            "review    {} since {} by {}: {}",
                            r.state.as_str(),
                            r.since.to_rfc3339(),
                            r.actor.as_deref().unwrap_or("-"),
                            r.reason.as_deref().unwrap_or("-")
                        );
                    }
                    None => println!("review    not in review"),
                }
                if let Some(abuse) = &detail.abuse {
                    println!(
                        "abuse     {} (suspected now: {}), scored {}",
                        abuse["value"],
                        detail
                            .abuse_suspected
                            .map(|b| b.to_string())
                            .unwrap_or_else(|| "-".into()),
                        detail.scored_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                    );
                    for r in abuse["reasons"].as_array().into_iter().flatten() {
                        println!(
                            "          {} (+{}): {}",
                            r["rule"].as_str().unwrap_or("?"),
                            r["points"],
                            r["detail"].as_str().unwrap_or("")
                        );
                    }
                }
                if let Some(inputs) = &detail.inputs {
                    println!("inputs    {inputs}");
                }
                println!("history");
                for h in &detail.history {
                    println!(
                        "          {}  {:<19} {:<32} score {:<4} {}",
                        h.occurred_at.to_rfc3339(),
                        h.kind,
                        h.actor.as_deref().unwrap_or("-"),
                        h.abuse_score
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        h.reason.as_deref().unwrap_or("")
                    );
                }
            }
        }
        ReviewAction::Confirm {
            account,
            actor,
            reason,
        } => decide(config, &pool, &account, Verdict::Confirm, &actor, &reason).await?,
        ReviewAction::Clear {
            account,
            actor,
            reason,
        } => decide(config, &pool, &account, Verdict::Clear, &actor, &reason).await?,
    }
    Ok(())
}

async fn decide(
    config: &Config,
    pool: &sqlx::PgPool,
    account: &str,
    verdict: Verdict,
    actor: &str,
    reason: &str,
) -> Result<()> {
    let account = account_id(account)?;
    let text = avro::ACCOUNT_EVENT_SCHEMA;
    let schema_id = services::registry(config, pool)
        .register(&format!("{}-value", config.kafka.account_topic), text)
        .await
        .context("registering the account-event schema")?;
    let topic = TopicSchema {
        topic: config.kafka.account_topic.clone(),
        schema_id,
        schema: Arc::new(avro::parse_schema(text)?),
    };
    let producer = EventProducer::new(
        &config.kafka,
        Duration::from_millis(config.ingest.produce_timeout_ms),
    )
    .context("creating the Kafka producer")?;
    let event = review::decide(pool, &producer, &topic, &account, verdict, actor, reason)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "{} {account} by {} (abuse score {}): recorded as event {}; quota checks follow within seconds",
        event.kind.as_str(),
        event.actor.as_deref().unwrap_or(""),
        event
            .abuse_score
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        event.event_id
    );
    Ok(())
}

/// The queue as a table for a terminal.
fn table(rows: &[ReviewEntry]) -> String {
    let mut out = format!(
        "{:<32} {:<10} {:<11} {:<25} {:>5} {:>5}  {}\n",
        "account", "plan", "state", "since", "score", "now", "by / reasons"
    );
    for r in rows {
        let score = |s: Option<i32>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<32} {:<10} {:<11} {:<25} {:>5} {:>5}  {}: {}\n",
            r.account_id,
            r.plan,
            r.state.as_str(),
            r.since.format("%Y-%m-%d %H:%M:%S UTC"),
            score(r.recorded_score),
            score(r.abuse_score),
            r.actor.as_deref().unwrap_or("-"),
            if r.abuse_reasons.is_empty() {
                r.reason.clone().unwrap_or_default()
            } else {
                r.abuse_reasons.join("; ")
            }
        ));
    }
    if rows.is_empty() {
        out.push_str("(no account in review)\n");
    }
    out
}
