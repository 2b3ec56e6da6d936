//! `meterline notifications list|retry`: the notifier's outbox.

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{migrate, Config};

#[derive(Subcommand)]
pub enum NotificationAction {
    /// List notifications, newest first.
    List {
        /// Only this status: pending, sending, sent, dead or unconfirmed.
        #[arg(long)]
        status: Option<String>,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead (or unconfirmed) notifications again with fresh attempts: the ids given, or
    /// every dead one with --all-dead.
    Retry {
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
    },
}

pub async fn run(config: &Config, action: NotificationAction) -> Result<()> {
    let pool = migrate::connect_postgres(config).await?;
    match action {
        NotificationAction::List {
            status,
            account,
            limit,
            json,
        } => {
            let status = status
                .map(|s| s.parse::<meterline_notifier::outbox::OutboxStatus>())
                .transpose()
                .map_err(|e| anyhow::anyhow!("--status: {e}"))?;
            let rows = meterline_notifier::outbox::list(&pool, status, account.as_deref(), limit)
                .await
                .context("reading the outbox")?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", crate::report::notifications_table(&rows));
            }
        }
        NotificationAction::Retry { ids, all_dead } => {
            if ids.is_empty() && !all_dead {
                anyhow::bail!("name the notifications to retry (ids from `meterline notifications list --status dead`), or pass --all-dead");
            }
            let requeued = meterline_notifier::outbox::retry(&pool, &ids).await?;
            println!(
                "{} notification(s) queued again: {:?}",
                requeued.len(),
                requeued
            );
        }
    }
    Ok(())
}
