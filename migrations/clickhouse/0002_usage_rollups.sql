-- Per-account rollups at minute, hour, day and month grain, by event time, so a late event
-- lands in the window it belongs to. One row per (account, window, model): the per-model
-- breakdown. Distinct counts are exact uniq states, which merge across models and rows.
-- Rows for one key are summed when ClickHouse merges parts, so always query with GROUP BY
-- (or through the usage_<grain>_totals views below).

CREATE TABLE IF NOT EXISTS usage_minute (
    window_start  DateTime('UTC'),
    account_id    String,
    model         String,
    requests      UInt64,
    errors        UInt64,
    input_tokens  UInt64,
    output_tokens UInt64,
    cost_micros   UInt64,
    pii_requests  UInt64,
    providers     AggregateFunction(uniqExact, String),
    regions       AggregateFunction(uniqExact, String),
    clouds        AggregateFunction(uniqExact, String),
    users         AggregateFunction(uniqExactIf, String, UInt8),
    api_keys      AggregateFunction(uniqExact, String),
    ip_hashes     AggregateFunction(uniqExactIf, String, UInt8),
    sessions      AggregateFunction(uniqExactIf, String, UInt8)
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, model);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT
    toStartOfMinute(occurred_at) AS window_start,
    account_id,
    model,
    count() AS requests,
    countIf(ifNull(status, 0) >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    countIf(pii_detected = 1) AS pii_requests,
    uniqExactState(provider) AS providers,
    uniqExactState(region) AS regions,
    uniqExactState(cloud) AS clouds,
    uniqExactIfState(user_id, user_id != '') AS users,
    uniqExactState(api_key_id) AS api_keys,
    uniqExactIfState(client_ip_hash, client_ip_hash != '') AS ip_hashes,
    uniqExactIfState(session_id, session_id != '') AS sessions
FROM usage_events
GROUP BY window_start, account_id, model;

CREATE VIEW IF NOT EXISTS usage_minute_totals AS
SELECT
    account_id,
    window_start,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    sum(pii_requests) AS pii_requests,
    uniqExact(model) AS models,
    uniqExactMerge(providers) AS providers,
    uniqExactMerge(regions) AS regions,
    uniqExactMerge(clouds) AS clouds,
    uniqExactIfMerge(users) AS users,
    uniqExactMerge(api_keys) AS api_keys,
    uniqExactIfMerge(ip_hashes) AS ip_hashes,
    uniqExactIfMerge(sessions) AS sessions
FROM usage_minute
GROUP BY account_id, window_start;

CREATE TABLE IF NOT EXISTS usage_hour (
    window_start  DateTime('UTC'),
    account_id    String,
    model         String,
    requests      UInt64,
    errors        UInt64,
    input_tokens  UInt64,
    output_tokens UInt64,
    cost_micros   UInt64,
    pii_requests  UInt64,
    providers     AggregateFunction(uniqExact, String),
    regions       AggregateFunction(uniqExact, String),
    clouds        AggregateFunction(uniqExact, String),
    users         AggregateFunction(uniqExactIf, String, UInt8),
    api_keys      AggregateFunction(uniqExact, String),
    ip_hashes     AggregateFunction(uniqExactIf, String, UInt8),
    sessions      AggregateFunction(uniqExactIf, String, UInt8)
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, model);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hour_mv TO usage_hour AS
SELECT
    toStartOfHour(occurred_at) AS window_start,
    account_id,
    model,
    count() AS requests,
    countIf(ifNull(status, 0) >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    countIf(pii_detected = 1) AS pii_requests,
    uniqExactState(provider) AS providers,
    uniqExactState(region) AS regions,
    uniqExactState(cloud) AS clouds,
    uniqExactIfState(user_id, user_id != '') AS users,
    uniqExactState(api_key_id) AS api_keys,
    uniqExactIfState(client_ip_hash, client_ip_hash != '') AS ip_hashes,
    uniqExactIfState(session_id, session_id != '') AS sessions
FROM usage_events
GROUP BY window_start, account_id, model;

CREATE VIEW IF NOT EXISTS usage_hour_totals AS
SELECT
    account_id,
    window_start,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    sum(pii_requests) AS pii_requests,
    uniqExact(model) AS models,
    uniqExactMerge(providers) AS providers,
    uniqExactMerge(regions) AS regions,
    uniqExactMerge(clouds) AS clouds,
    uniqExactIfMerge(users) AS users,
    uniqExactMerge(api_keys) AS api_keys,
    uniqExactIfMerge(ip_hashes) AS ip_hashes,
    uniqExactIfMerge(sessions) AS sessions
FROM usage_hour
GROUP BY account_id, window_start;

CREATE TABLE IF NOT EXISTS usage_day (
    window_start  DateTime('UTC'),
    account_id    String,
    model         String,
    requests      UInt64,
    errors        UInt64,
    input_tokens  UInt64,
    output_tokens UInt64,
    cost_micros   UInt64,
    pii_requests  UInt64,
    providers     AggregateFunction(uniqExact, String),
    regions       AggregateFunction(uniqExact, String),
    clouds        AggregateFunction(uniqExact, String),
    users         AggregateFunction(uniqExactIf, String, UInt8),
    api_keys      AggregateFunction(uniqExact, String),
    ip_hashes     AggregateFunction(uniqExactIf, String, UInt8),
    sessions      AggregateFunction(uniqExactIf, String, UInt8)
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, model);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_day_mv TO usage_day AS
SELECT
    toStartOfDay(occurred_at) AS window_start,
    account_id,
    model,
    count() AS requests,
    countIf(ifNull(status, 0) >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    countIf(pii_detected = 1) AS pii_requests,
    uniqExactState(provider) AS providers,
    uniqExactState(region) AS regions,
    uniqExactState(cloud) AS clouds,
    uniqExactIfState(user_id, user_id != '') AS users,
    uniqExactState(api_key_id) AS api_keys,
    uniqExactIfState(client_ip_hash, client_ip_hash != '') AS ip_hashes,
    uniqExactIfState(session_id, session_id != '') AS sessions
FROM usage_events
GROUP BY window_start, account_id, model;

CREATE VIEW IF NOT EXISTS usage_day_totals AS
SELECT
    account_id,
    window_start,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    sum(pii_requests) AS pii_requests,
    uniqExact(model) AS models,
    uniqExactMerge(providers) AS providers,
    uniqExactMerge(regions) AS regions,
    uniqExactMerge(clouds) AS clouds,
    uniqExactIfMerge(users) AS users,
    uniqExactMerge(api_keys) AS api_keys,
    uniqExactIfMerge(ip_hashes) AS ip_hashes,
    uniqExactIfMerge(sessions) AS sessions
FROM usage_day
GROUP BY account_id, window_start;

CREATE TABLE IF NOT EXISTS usage_month (
    window_start  DateTime('UTC'),
    account_id    String,
    model         String,
    requests      UInt64,
    errors        UInt64,
    input_tokens  UInt64,
    output_tokens UInt64,
    cost_micros   UInt64,
    pii_requests  UInt64,
    providers     AggregateFunction(uniqExact, String),
    regions       AggregateFunction(uniqExact, String),
    clouds        AggregateFunction(uniqExact, String),
    users         AggregateFunction(uniqExactIf, String, UInt8),
    api_keys      AggregateFunction(uniqExact, String),
    ip_hashes     AggregateFunction(uniqExactIf, String, UInt8),
    sessions      AggregateFunction(uniqExactIf, String, UInt8)
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, model);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_month_mv TO usage_month AS
SELECT
    toDateTime(toStartOfMonth(occurred_at), 'UTC') AS window_start,
    account_id,
    model,
    count() AS requests,
    countIf(ifNull(status, 0) >= 400) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    countIf(pii_detected = 1) AS pii_requests,
    uniqExactState(provider) AS providers,
    uniqExactState(region) AS regions,
    uniqExactState(cloud) AS clouds,
    uniqExactIfState(user_id, user_id != '') AS users,
    uniqExactState(api_key_id) AS api_keys,
    uniqExactIfState(client_ip_hash, client_ip_hash != '') AS ip_hashes,
    uniqExactIfState(session_id, session_id != '') AS sessions
FROM usage_events
GROUP BY window_start, account_id, model;

CREATE VIEW IF NOT EXISTS usage_month_totals AS
SELECT
    account_id,
    window_start,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_micros) AS cost_micros,
    sum(pii_requests) AS pii_requests,
    uniqExact(model) AS models,
    uniqExactMerge(providers) AS providers,
    uniqExactMerge(regions) AS regions,
    uniqExactMerge(clouds) AS clouds,
    uniqExactIfMerge(users) AS users,
    uniqExactMerge(api_keys) AS api_keys,
    uniqExactIfMerge(ip_hashes) AS ip_hashes,
    uniqExactIfMerge(sessions) AS sessions
FROM usage_month
GROUP BY account_id, window_start;
