//! `meterline experiments …`: the growth crate's command line against this configuration.

use anyhow::Result;
use meterline_growth::experiments::{self, ExperimentAction, ExperimentsContext};

use crate::{migrate, Config};

pub async fn run(config: &Config, action: ExperimentAction) -> Result<()> {
    let ctx = ExperimentsContext {
        pool: migrate::connect_postgres(config).await?,
        clickhouse: config.clickhouse.client(),
        tiers: config.tiers.clone(),
    };
    experiments::run(&ctx, action).await
}
