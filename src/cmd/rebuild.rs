//! `meterline rebuild-hot-state`: the Redis hot state again from ClickHouse's raw events.

use anyhow::{Context, Result};
use meterline_aggregator::clickhouse_sink::ClickHouseSink;
use meterline_aggregator::rebuild::{rebuild_hot_state, Target};
use meterline_schemas::keys::hot::HotKeys;

use crate::Config;

pub async fn run(config: &Config) -> Result<()> {
    let target = Target {
        conn: config
            .redis
            .connect()
            .await
            .context("connecting to Redis")?,
        keys: HotKeys::new(config.redis.key_prefix.clone()).context("redis.key_prefix")?,
        topic: config.kafka.usage_topic.clone(),
        partitions: config.kafka.partitions,
    };
    let clickhouse = ClickHouseSink::new(
        config.clickhouse.client(),
        &config.kafka.usage_topic,
        &config.kafka.account_topic,
    );
    let started = std::time::Instant::now();
    let done = rebuild_hot_state(
        &config.clickhouse.client(),
        &clickhouse,
        &target,
        chrono::Utc::now(),
        |n| eprintln!("{n} events read"),
    )
    .await
    .context("rebuilding the hot state")?;
    println!(
        "hot state rebuilt in {:.1} s: {} events over {} accounts read from ClickHouse and written to Redis ({} left out: they no longer parse); {} partitions checkpointed at ClickHouse's watermark",
        started.elapsed().as_secs_f64(),
        done.events,
        done.accounts,
        done.skipped,
        done.partitions
    );
    Ok(())
}
