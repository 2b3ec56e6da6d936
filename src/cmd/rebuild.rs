//! `meterline rebuild-hot-state`: the Redis hot state again from ClickHouse's raw events.

use anyhow::{Context, Result};

use crate::Config;

pub async fn run(config: &Config) -> Result<()> {
    let redis = meterline_aggregator::redis_sink::RedisSink::connect(
        &config.redis.url,
        meterline_schemas::keys::Keys::new(config.redis.key_prefix.clone()),
    )
    .await
    .context("connecting to Redis")?;
    let started = std::time::Instant::now();
    let done = meterline_aggregator::rebuild::rebuild_hot_state(
        &config.clickhouse.client(),
        &redis,
        chrono::Utc::now(),
        |n| eprintln!("{n} events read"),
    )
    .await
    .context("rebuilding the hot state")?;
    println!(
        "hot state rebuilt in {:.1} s: {} events over {} accounts read from ClickHouse, {} of them already counted in Redis",
        started.elapsed().as_secs_f64(),
        done.events,
        done.accounts,
        done.already_counted
    );
    Ok(())
}
