-- The exactly-once watermark, per topic. `ingest_watermarks` kept the highest offset per source
-- (`usage` / `account`) and partition, whatever the topic: after the topic was renamed or
-- recreated, its offsets start again from 0, every new event sat at or below the old
-- watermark, and the aggregator skipped it in ClickHouse as "already inserted" (Redis still
-- counted it). Each raw row now records its topic and the watermark is per (topic, partition).
--
-- Rows written before this migration have an empty topic, so their offsets no longer count
-- for any topic: upgrade with the aggregators stopped after a clean commit (what a
-- deployment does anyway), and nothing below the committed offsets is read again.
ALTER TABLE usage_events ADD COLUMN kafka_topic String DEFAULT '';
ALTER TABLE account_events ADD COLUMN kafka_topic String DEFAULT '';

CREATE TABLE IF NOT EXISTS topic_watermarks (
    kafka_topic     String,
    kafka_partition UInt32,
    max_offset      AggregateFunction(max, UInt64)
) ENGINE = AggregatingMergeTree()
ORDER BY (kafka_topic, kafka_partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS topic_watermarks_usage_mv TO topic_watermarks AS
SELECT kafka_topic, kafka_partition, maxState(kafka_offset) AS max_offset
FROM usage_events GROUP BY kafka_topic, kafka_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS topic_watermarks_account_mv TO topic_watermarks AS
SELECT kafka_topic, kafka_partition, maxState(kafka_offset) AS max_offset
FROM account_events GROUP BY kafka_topic, kafka_partition;

-- The old per-source watermark is no longer read.
DROP TABLE IF EXISTS ingest_watermarks_usage_mv;
DROP TABLE IF EXISTS ingest_watermarks_account_mv;
DROP TABLE IF EXISTS ingest_watermarks;
