-- Growth analytics: limit A/B experiments and the limit-health views the growth team queries.
-- docs/analytics.md documents each one with example queries.
--
-- Old-ClickHouse notes (this SQL also runs on 18.16): one JOIN per SELECT, so joins nest;
-- an unmatched LEFT JOIN yields default values rather than NULL, so each joined side carries
-- a flag column (`hit`, `converted`, `churned`) that is 0 exactly when nothing matched.

-- `experiment_assigned` events: one row per account assigned to a limit experiment, written
-- by the aggregator when the account's signup is applied (owner: aggregator). A retry after a
-- crash writes the same row again (same event_id, same sorting key); read with
-- `experiment_assignments_final` or GROUP BY.
CREATE TABLE IF NOT EXISTS experiment_assignments (
    event_id     String,
    assigned_at  DateTime('UTC'),
    experiment   String,
    variant      String,
    is_control   UInt8,
    account_id   String,
    signed_up_at DateTime('UTC'),
    plan         String,
    overrides    String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(signed_up_at)
ORDER BY (experiment, account_id, event_id);

CREATE VIEW IF NOT EXISTS experiment_assignments_final AS
SELECT experiment, account_id, any(variant) AS variant, any(is_control) AS is_control,
       min(signed_up_at) AS signed_up_at, min(assigned_at) AS assigned_at, any(plan) AS plan,
       any(overrides) AS overrides
FROM experiment_assignments
GROUP BY experiment, account_id;

-- Each limit stage an account reached, per limit and window (owner: scorer). `occurred_at` is
-- when usage crossed the stage, by event time (to the minute for day and month limits); `kind`
-- is `approached` below the last stage and `hit` at it.
CREATE TABLE IF NOT EXISTS limit_stage_crossings (
    event_id    String,
    occurred_at DateTime('UTC'),
    observed_at DateTime('UTC'),
    account_id  String,
    plan        String,
    limit_name  String,
    window_id   String,
    stage       UInt8,
    kind        String,
    used        Float64,
    limit_value Float64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(observed_at)
ORDER BY (account_id, limit_name, window_id, stage, event_id);

-- One row per stage crossing, duplicates from retries folded.
CREATE VIEW IF NOT EXISTS limit_events AS
SELECT account_id, limit_name, window_id, stage, any(kind) AS kind, min(occurred_at) AS occurred_at,
       any(plan) AS plan, max(used) AS used, any(limit_value) AS limit_value
FROM limit_stage_crossings
GROUP BY account_id, limit_name, window_id, stage;

-- Usage per account per UTC day.
CREATE VIEW IF NOT EXISTS account_daily AS
SELECT account_id, toDate(window_start) AS day, requests, errors, input_tokens, output_tokens,
       cost_micros, models, providers, regions, sessions
FROM usage_day_totals;

-- Plan changes to a higher plan (free < pro < enterprise), from the account's plan history.
CREATE VIEW IF NOT EXISTS conversions AS
SELECT account_id, tupleElement(step, 1) AS converted_at, tupleElement(step, 2) AS from_plan,
       tupleElement(step, 3) AS to_plan
FROM (
    SELECT account_id,
           arraySort(groupArray(tuple(occurred_at, event_id, plan))) AS history,
           arrayMap(i -> tuple(tupleElement(history[i], 1), tupleElement(history[i - 1], 3), tupleElement(history[i], 3)),
               arrayFilter(i -> i > 1
                   AND indexOf(['free', 'pro', 'enterprise'], tupleElement(history[i], 3))
                     > indexOf(['free', 'pro', 'enterprise'], tupleElement(history[i - 1], 3)),
                   arrayEnumerate(history))) AS steps
    FROM account_events
    WHERE type IN ('signup', 'plan_changed') AND plan != ''
    GROUP BY account_id
)
ARRAY JOIN steps AS step;

-- When an account churned: its `churned` event, or 30 days after its last usage (or its signup,
-- if it never used anything) once those 30 days have passed. The earlier of the two.
CREATE VIEW IF NOT EXISTS churn AS
SELECT account_id, min(at) AS churned_at, argMin(why, at) AS reason
FROM (
    SELECT account_id, occurred_at AS at, 'churned_event' AS why
    FROM account_events
    WHERE type = 'churned'
    UNION ALL
    SELECT account_id, last_active + 30 * 86400 AS at, 'inactive_30_days' AS why
    FROM (
        SELECT account_id, max(active_at) AS last_active
        FROM (
            SELECT account_id, window_start AS active_at FROM usage_day
            UNION ALL
            SELECT account_id, occurred_at AS active_at FROM account_events WHERE type = 'signup'
        )
        GROUP BY account_id
    )
    WHERE last_active + 30 * 86400 <= now()
)
GROUP BY account_id;

-- One row per account assigned to an experiment, with what happened to it afterwards:
-- its first limit hit on the experiment's plan, its first conversion, its churn, and what its
-- usage cost while it was on that plan (before it converted).
CREATE VIEW IF NOT EXISTS experiment_accounts AS
SELECT experiment, variant, is_control, account_id, signed_up_at, plan,
       hit, first_hit_at, converted, converted_at, churned, churned_at, free_cost_micros
FROM (
    SELECT experiment, variant, is_control, account_id, signed_up_at, plan,
           hit, first_hit_at, converted, converted_at, churned, churned_at
    FROM (
        SELECT experiment, variant, is_control, account_id, signed_up_at, plan,
               hit, first_hit_at, converted, converted_at
        FROM (
            SELECT experiment, variant, is_control, account_id, signed_up_at, plan, hit, first_hit_at
            FROM experiment_assignments_final
            ANY LEFT JOIN (
                SELECT account_id, plan, 1 AS hit, min(occurred_at) AS first_hit_at
                FROM limit_events
                WHERE kind = 'hit'
                GROUP BY account_id, plan
            ) USING (account_id, plan)
        )
        ANY LEFT JOIN (
            SELECT account_id, 1 AS converted, min(converted_at) AS converted_at
            FROM conversions
            GROUP BY account_id
        ) USING account_id
    )
    ANY LEFT JOIN (
        SELECT account_id, 1 AS churned, churned_at FROM churn
    ) USING account_id
)
ANY LEFT JOIN (
    SELECT account_id, sum(cost_micros) AS free_cost_micros
    FROM (
        SELECT account_id, window_start, cost_micros
        FROM usage_minute
        ANY LEFT JOIN (
            SELECT account_id, 1 AS converted, min(converted_at) AS converted_at
            FROM conversions
            GROUP BY account_id
        ) USING account_id
        WHERE converted = 0 OR window_start < converted_at
    )
    GROUP BY account_id
) USING account_id;

-- The limit-health metrics per experiment and variant: the counts behind every rate, so a
-- rate can be recomputed (and given an interval) from them. `meterline experiments report`
-- reads this view. Rates: limit_hit_rate = hit_accounts / accounts; hit_conversion_rate =
-- hit_converted / hit_accounts; hit_churn_rate = hit_churned / hit_accounts;
-- no_hit_conversion_rate = no_hit_converted / (accounts - hit_accounts).
CREATE VIEW IF NOT EXISTS cohort_metrics AS
SELECT experiment, variant, is_control,
       accounts, hit_accounts, hit_converted, hit_churned, no_hit_converted,
       hit_accounts / accounts AS limit_hit_rate,
       if(hit_accounts = 0, nan, hit_converted / hit_accounts) AS hit_conversion_rate,
       if(hit_accounts = 0, nan, hit_churned / hit_accounts) AS hit_churn_rate,
       if(accounts = hit_accounts, nan, no_hit_converted / (accounts - hit_accounts)) AS no_hit_conversion_rate,
       if(length(hours) = 0, nan,
          if(length(hours) % 2 = 1, hours[intDiv(length(hours), 2) + 1],
             (hours[intDiv(length(hours), 2)] + hours[intDiv(length(hours), 2) + 1]) / 2)) AS median_hours_to_limit,
       free_cost_micros / accounts / 1000000 AS free_cost_usd_per_account
FROM (
    SELECT experiment, variant, any(is_control) AS is_control,
           count() AS accounts,
           sum(hit) AS hit_accounts,
           sum(hit AND converted AND converted_at >= first_hit_at) AS hit_converted,
           sum(hit AND churned AND churned_at >= first_hit_at) AS hit_churned,
           sum(NOT hit AND converted) AS no_hit_converted,
           arraySort(groupArrayIf((first_hit_at - signed_up_at) / 3600, hit = 1)) AS hours,
           sum(free_cost_micros) AS free_cost_micros
    FROM experiment_accounts
    GROUP BY experiment, variant
);
