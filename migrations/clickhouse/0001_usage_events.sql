-- Raw usage events: one row per unique event. Partitioned by month so that retention is a
-- matter of dropping partitions (no TTL: it must run on ClickHouse 18.16 too).
CREATE TABLE IF NOT EXISTS usage_events (
    event_id        String,
    occurred_at     DateTime('UTC'),
    received_at     DateTime('UTC'),
    account_id      String,
    api_key_id      String,
    gateway_id      String,
    region          String,
    cloud           String,
    provider        String,
    model           String,
    input_tokens    UInt64,
    output_tokens   UInt64,
    cost_micros     UInt64,
    latency_ms      Nullable(UInt32),
    status          Nullable(UInt16),
    session_id      String,
    user_id         String,
    plugins         Array(String),
    pii_detected    UInt8,
    client_ip_hash  String,
    device_id       String,
    prompt_hash     String,
    kafka_partition UInt32,
    kafka_offset    UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at, event_id);

-- Account lifecycle history for the growth team (the current state lives in PostgreSQL).
CREATE TABLE IF NOT EXISTS account_events (
    event_id          String,
    occurred_at       DateTime('UTC'),
    received_at       DateTime('UTC'),
    account_id        String,
    type              String,
    plan              String,
    seats             Nullable(Int64),
    email_domain      String,
    company_size      Nullable(Int64),
    signup_ip_hash    String,
    device_id         String,
    browser_signature String,
    kafka_partition   UInt32,
    kafka_offset      UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at, event_id);

-- The highest Kafka offset written per source and partition. It is filled by materialized
-- views in the same INSERT as the rows, so after a crash the aggregator knows exactly which
-- records ClickHouse already holds and does not insert them twice.
CREATE TABLE IF NOT EXISTS ingest_watermarks (
    source          String,
    kafka_partition UInt32,
    max_offset      AggregateFunction(max, UInt64)
) ENGINE = AggregatingMergeTree()
ORDER BY (source, kafka_partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS ingest_watermarks_usage_mv TO ingest_watermarks AS
SELECT 'usage' AS source, kafka_partition, maxState(kafka_offset) AS max_offset
FROM usage_events GROUP BY kafka_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS ingest_watermarks_account_mv TO ingest_watermarks AS
SELECT 'account' AS source, kafka_partition, maxState(kafka_offset) AS max_offset
FROM account_events GROUP BY kafka_partition;
