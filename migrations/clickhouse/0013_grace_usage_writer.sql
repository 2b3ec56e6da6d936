-- Grace use lands in `grace_usage` (0012). When a quota check is served from a tier's hidden
-- overage buffer (past 100 % of a limit, within `grace_percent`), the read path's recorder writes
-- a `grace_used` quota event (stage 100) at most once per account, limit and window, the same way
-- as its other quota events (a Redis marker until the window resets; `event_id` from the dedup
-- key). This view copies each such row into `grace_usage` as it is inserted: `first_at` is the
-- event's time, `used` and `limit_value` the usage (before that request) and the limit then.
-- A row inserted again after a crash between the insert and the marker is copied again with the
-- same values; `grace_usage`'s ReplacingMergeTree folds it and `grace_episodes` groups by the key.
-- Works on ClickHouse 18.16 and 24 alike (a plain filter, no window functions).
CREATE MATERIALIZED VIEW IF NOT EXISTS grace_usage_writer TO grace_usage AS
SELECT account_id, plan, limit_name, window_id, occurred_at AS first_at, used, limit_value
FROM quota_events
WHERE event_type = 'grace_used';
