//! `meterline tokens …` and `meterline gateways …`: API tokens in PostgreSQL.

use anyhow::{Context, Result};
use clap::Subcommand;
use meterline_ingest::Scope;

use crate::{migrate, services, Config};

#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token and print it. It is shown only this once.
    Add {
        name: String,
        /// ingest, read, admin, console (the web console, to look) or review (the web console,
        /// to act); repeat for several.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// Limit the token to this account: it can never read another.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a token.
    Revoke { name: String },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s)
        .ok_or_else(|| format!("{s:?} is not a scope; use ingest, read, admin, console or review"))
}

#[derive(Subcommand)]
pub enum GatewayAction {
    /// Create a token for a gateway and print it. It is shown only this once.
    Add { name: String },
    /// Revoke a gateway's token.
    Revoke { name: String },
}

pub async fn tokens(config: &Config, action: TokenAction) -> Result<()> {
    let pool = migrate::connect_postgres(config).await?;
    let store = services::token_store(config, &pool);
    match action {
        TokenAction::Add {
            name,
            scopes,
            account,
        } => {
            if let Some(a) = &account {
                meterline_schemas::AccountId::parse(a)
                    .map_err(|e| anyhow::anyhow!("--account: {e}"))?;
            }
            let token = store
                .create(&name, &scopes, account.as_deref())
                .await
                .context("creating the token")?;
            eprintln!("token {name:?} added; store it now, it is not shown again:");
            println!("{token}");
        }
        TokenAction::Revoke { name } => {
            store.revoke(&name).await.context("revoking the token")?;
            println!("token {name:?} revoked");
        }
    }
    Ok(())
}

pub async fn gateways(config: &Config, action: GatewayAction) -> Result<()> {
    let pool = migrate::connect_postgres(config).await?;
    let store = services::token_store(config, &pool);
    match action {
        GatewayAction::Add { name } => {
            let token = store
                .create(&name, &[Scope::Ingest], None)
                .await
                .context("creating the token")?;
            eprintln!("gateway {name:?} added; store this token now, it is not shown again:");
            println!("{token}");
        }
        GatewayAction::Revoke { name } => {
            store.revoke(&name).await.context("revoking the token")?;
            println!("gateway {name:?} revoked");
        }
    }
    Ok(())
}
