//! `meterline report …`: the growth crate's reports against this configuration's ClickHouse.

use anyhow::Result;
use meterline_growth::report::{self, ReportAction};

use crate::Config;

pub async fn run(config: &Config, action: ReportAction) -> Result<()> {
    match action {
        ReportAction::Growth(args) => report::run(&config.clickhouse.client(), &args).await,
    }
}
