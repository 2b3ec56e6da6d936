-- Seed 000's results for the growth team: the tables and per-row views `meterline report growth`
-- aggregates (with its --since / --until / --plan filters; a view takes no parameters on
-- ClickHouse 18.16, so each view has one row per account, notice, move or episode and the report
-- filters and counts). docs/analytics.md documents each one.
--
-- Old-ClickHouse notes as in 0006: one JOIN per SELECT, so joins nest; an unmatched ANY LEFT JOIN
-- yields default values, so per-account facts are joined as arrays (empty when nothing matched)
-- or with a flag column. And a lambda never captures a column: ClickHouse 18.16 drops a column
-- that a query over the view does not name even when a lambda uses it ("Unknown identifier"),
-- so each one is passed in as an argument, `replicate(column, array)`.

-- Dashboard notices with their kind, copied from PostgreSQL `dashboard_notices` by the notifier
-- (owner: notifier, `notifier/src/notice_history.rs`). ClickHouse's notice_shown / notice_clicked
-- account events carry only the notice_id; this table names its kind. A copy retried after a
-- crash writes the same row again (same notice_id and values), which ReplacingMergeTree folds.
CREATE TABLE IF NOT EXISTS notice_history (
    notice_id  String,
    account_id String,
    kind       String,
    created_at DateTime('UTC')
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(created_at)
ORDER BY notice_id;

-- Grace use: an account went past 100 % of a limit into the hidden overage buffer. One row per
-- account, limit and window (`window_id` as in limit_events: YYYYMM or YYYYMMDD); `first_at` is
-- when the account first used grace in that window, `used` and `limit_value` the usage and the
-- limit then. Owner: ingest's read path (its quota-event recorder); written by 0013's
-- materialized view `grace_usage_writer` from `quota_events`' `grace_used` rows. The sorting key
-- is the row's identity, so a retried write folds away; read with GROUP BY (or `grace_episodes`).
CREATE TABLE IF NOT EXISTS grace_usage (
    account_id  String,
    plan        String,
    limit_name  String,
    window_id   String,
    first_at    DateTime('UTC'),
    used        Float64,
    limit_value Float64
) ENGINE = ReplacingMergeTree()
ORDER BY (account_id, limit_name, window_id);

-- Each account's plan history as spells, and its upward steps (free < pro < enterprise), from its
-- `signup` and `plan_changed` events. `spells`: (entered_at, left_at, plan), a new spell only
-- when the plan differs from the previous one; the current spell ends at 2100-01-01.
-- `upgrades`: (converted_at, from_plan, to_plan), the same steps as the `conversions` view.
CREATE VIEW IF NOT EXISTS account_paths AS
SELECT account_id, spells,
       arrayMap(j -> tuple(tupleElement(spells[j], 1), tupleElement(spells[j - 1], 3), tupleElement(spells[j], 3)),
           arrayFilter(j -> j > 1
               AND indexOf(['free', 'pro', 'enterprise'], tupleElement(spells[j], 3))
                 > indexOf(['free', 'pro', 'enterprise'], tupleElement(spells[j - 1], 3)),
               arrayEnumerate(spells))) AS upgrades
FROM (
    SELECT account_id,
           arraySort(groupArray(tuple(occurred_at, event_id, plan))) AS history,
           arrayFilter(i -> i = 1 OR tupleElement(history[i], 3) != tupleElement(history[i - 1], 3),
               arrayEnumerate(history)) AS starts,
           arrayMap(j -> tuple(tupleElement(history[starts[j]], 1),
                   if(j < length(starts), tupleElement(history[starts[j + 1]], 1), toDateTime('2100-01-01 00:00:00', 'UTC')),
                   tupleElement(history[starts[j]], 3)),
               arrayEnumerate(starts)) AS spells
    FROM account_events
    WHERE type IN ('signup', 'plan_changed') AND plan != ''
    GROUP BY account_id
);

-- One row per plan spell: which plan an account was on from `entered_at` until `left_at`
-- (exclusive). The waterfall's denominators: the accounts on a plan during a period.
CREATE VIEW IF NOT EXISTS plan_spells AS
SELECT account_id, tupleElement(spell, 1) AS entered_at, tupleElement(spell, 2) AS left_at,
       tupleElement(spell, 3) AS plan
FROM account_paths
ARRAY JOIN spells AS spell;

-- The notice funnel: one row per dashboard notice that was shown, with its kind (from
-- notice_history; '' until the notifier copied it), the account's plan when it was first shown,
-- whether it was clicked, and whether the account moved to a higher plan within 14 days
-- (14 × 24 h, inclusive) of the first showing: `upgraded_14d`, and `clicked_upgraded_14d` when it
-- was also clicked (the funnel's last step).
CREATE VIEW IF NOT EXISTS notice_funnel AS
SELECT notice_id, account_id, kind, first_shown_at, clicked, first_clicked_at,
       tupleElement(arrayFirst((s, t) -> tupleElement(s, 1) <= t AND t < tupleElement(s, 2), spells, replicate(first_shown_at, spells)), 3) AS plan,
       arrayExists((u, t) -> tupleElement(u, 1) >= t AND tupleElement(u, 1) <= t + 14 * 86400, upgrades, replicate(first_shown_at, upgrades)) AS upgraded_14d,
       clicked AND upgraded_14d AS clicked_upgraded_14d
FROM (
    SELECT notice_id, account_id, kind, first_shown_at, clicked, first_clicked_at
    FROM (
        SELECT notice_id, account_id, first_shown_at, clicked, first_clicked_at
        FROM (
            SELECT notice_id, any(account_id) AS account_id, min(occurred_at) AS first_shown_at
            FROM account_events
            WHERE type = 'notice_shown' AND notice_id != ''
            GROUP BY notice_id
        )
        ANY LEFT JOIN (
            SELECT notice_id, 1 AS clicked, min(occurred_at) AS first_clicked_at
            FROM account_events
            WHERE type = 'notice_clicked' AND notice_id != ''
            GROUP BY notice_id
        ) USING notice_id
    )
    ANY LEFT JOIN (
        SELECT notice_id, any(kind) AS kind FROM notice_history GROUP BY notice_id
    ) USING notice_id
)
ANY LEFT JOIN (
    SELECT account_id, spells, upgrades FROM account_paths
) USING account_id;

-- The score lead time: one row per account that moved to Enterprise (its first move there),
-- with the plan it came from and the first time its deal readiness score was above 70 at or
-- before the move (ClickHouse `account_scores`). `deal_ready` is 0 when it never was; then
-- `lead_days` is nan. `lead_days` = (moved_at - first_deal_ready_at) / 86400.
CREATE VIEW IF NOT EXISTS enterprise_lead_times AS
SELECT account_id, moved_at, from_plan,
       length(ready) > 0 AS deal_ready,
       if(deal_ready, arrayReduce('min', ready), toDateTime(0, 'UTC')) AS first_deal_ready_at,
       if(deal_ready, (moved_at - first_deal_ready_at) / 86400, nan) AS lead_days
FROM (
    SELECT account_id, moved_at, from_plan, arrayFilter((t, m) -> t <= m, ready_times, replicate(moved_at, ready_times)) AS ready
    FROM (
        SELECT account_id, min(converted_at) AS moved_at, argMin(from_plan, converted_at) AS from_plan
        FROM conversions
        WHERE to_plan = 'enterprise'
        GROUP BY account_id
    )
    ANY LEFT JOIN (
        SELECT account_id, groupArray(scored_at) AS ready_times
        FROM account_scores
        WHERE deal_readiness > 70
        GROUP BY account_id
    ) USING account_id
);

-- Time from first request to close: one row per account that moved from free to a paid plan
-- (its first such move), with its first usage (the minute of its first request, from
-- `usage_minute`). `used` is 0 when it had no usage before the move; then `days` is nan.
CREATE VIEW IF NOT EXISTS paid_closes AS
SELECT account_id, closed_at, to_plan, used, first_request_at,
       if(used, (closed_at - first_request_at) / 86400, nan) AS days
FROM (
    SELECT account_id, closed_at, to_plan, first_request_at,
           has_usage = 1 AND first_request_at <= closed_at AS used
    FROM (
        SELECT account_id, min(converted_at) AS closed_at, argMin(to_plan, converted_at) AS to_plan
        FROM conversions
        WHERE from_plan = 'free'
        GROUP BY account_id
    )
    ANY LEFT JOIN (
        SELECT account_id, 1 AS has_usage, min(window_start) AS first_request_at
        FROM usage_minute
        GROUP BY account_id
    ) USING account_id
);

-- Usage per account and hour with the plan the account was on at the start of that hour ('' when
-- its plan history is unknown): what each plan costs to serve.
CREATE VIEW IF NOT EXISTS plan_usage_hourly AS
SELECT account_id, window_start, requests, cost_micros,
       tupleElement(arrayFirst((s, t) -> tupleElement(s, 1) <= t AND t < tupleElement(s, 2), spells, replicate(window_start, spells)), 3) AS plan
FROM (
    SELECT account_id, window_start, sum(requests) AS requests, sum(cost_micros) AS cost_micros
    FROM usage_hour
    GROUP BY account_id, window_start
)
ANY LEFT JOIN (
    SELECT account_id, spells FROM account_paths
) USING account_id;

-- Limit hit → conversion: one row per account and plan on which it hit a limit (the last stage,
-- 100 %), with its first hit there, and whether it later (at or after that hit) moved from that
-- plan to a higher one.
CREATE VIEW IF NOT EXISTS limit_hit_outcomes AS
SELECT account_id, plan, first_hit_at, first_limit,
       arrayExists((u, p, t) -> tupleElement(u, 2) = p AND tupleElement(u, 1) >= t, upgrades,
           replicate(plan, upgrades), replicate(first_hit_at, upgrades)) AS converted
FROM (
    SELECT account_id, plan, min(occurred_at) AS first_hit_at, argMin(limit_name, occurred_at) AS first_limit
    FROM limit_events
    WHERE kind = 'hit'
    GROUP BY account_id, plan
)
ANY LEFT JOIN (
    SELECT account_id, upgrades FROM account_paths
) USING account_id;

-- Grace use per account, limit and window (duplicates folded), and whether the account later (at
-- or after its first grace use) moved from that plan to a higher one.
CREATE VIEW IF NOT EXISTS grace_episodes AS
SELECT account_id, plan, limit_name, window_id, first_at, used, limit_value,
       arrayExists((u, p, t) -> tupleElement(u, 2) = p AND tupleElement(u, 1) >= t, upgrades,
           replicate(plan, upgrades), replicate(first_at, upgrades)) AS converted
FROM (
    SELECT account_id, limit_name, window_id, any(plan) AS plan, min(first_at) AS first_at,
           max(used) AS used, any(limit_value) AS limit_value
    FROM grace_usage
    GROUP BY account_id, limit_name, window_id
)
ANY LEFT JOIN (
    SELECT account_id, upgrades FROM account_paths
) USING account_id;
