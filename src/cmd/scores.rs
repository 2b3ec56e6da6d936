//! `meterline scores ACCOUNT`: one account scored now, with the reasons (nothing is stored).

use anyhow::{Context, Result};

use crate::{migrate, services, Config};

pub async fn run(config: &Config, account: String, json: bool) -> Result<()> {
    let account = meterline_schemas::AccountId::parse(&account)
        .map_err(|e| anyhow::anyhow!("ACCOUNT: {e}"))?;
    let pool = migrate::connect_postgres(config).await?;
    let scorer = services::scorer(config, &pool, Default::default()).await?;
    let scores = scorer.compute(std::slice::from_ref(&account)).await?;
    let s = scores.first().context("no scores computed")?;
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        print!("{}", crate::report::scores_text(s));
    }
    Ok(())
}
