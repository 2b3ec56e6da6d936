-- Quota decisions worth counting: `quota_warning_shown`, `model_downgrade_triggered` and
-- `limit_reached`. Written by the read path at most once per account, limit, stage and window
-- (`dedup_key`); `event_id` is derived from that key, so a retry after a crash between the
-- insert and the Redis marker writes the same row again and ReplacingMergeTree folds it away.
-- Count with uniqExact(event_id), or read with FINAL.
CREATE TABLE IF NOT EXISTS quota_events (
    event_id        String,
    occurred_at     DateTime('UTC'),
    account_id      String,
    event_type      String,
    plan            String,
    limit_name      String,
    stage           UInt8,
    window_id       String,
    used            Float64,
    limit_value     Float64,
    requested_model String,
    served_model    String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, event_type, limit_name, event_id);
