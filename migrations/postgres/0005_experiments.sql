-- Limit A/B experiments (owner: `meterline experiments`; assignments: aggregator at signup).

CREATE TABLE IF NOT EXISTS experiments (
    name        TEXT PRIMARY KEY,
    description TEXT        NOT NULL DEFAULT '',
    -- Only accounts that sign up on this plan take part; the overrides apply while they are on it.
    plan        TEXT        NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'enterprise')),
    starts_at   TIMESTAMPTZ NOT NULL,
    ends_at     TIMESTAMPTZ,
    -- Set by `experiments stop`: no more assignments; assigned accounts keep their limits.
    stopped_at  TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);

CREATE TABLE IF NOT EXISTS experiment_variants (
    experiment TEXT    NOT NULL REFERENCES experiments (name) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    weight     INTEGER NOT NULL CHECK (weight > 0),
    is_control BOOLEAN NOT NULL DEFAULT false,
    -- limit name → value (-1 unlimited), as in account_limit_overrides.
    limits     JSONB   NOT NULL DEFAULT '{}',
    PRIMARY KEY (experiment, name)
);
CREATE UNIQUE INDEX IF NOT EXISTS experiment_one_control ON experiment_variants (experiment) WHERE is_control;

-- Which variant each account landed in. `recorded_at` is set once the `experiment_assigned`
-- event is in ClickHouse; rows without it are written there by the aggregator's next batch.
CREATE TABLE IF NOT EXISTS experiment_assignments (
    experiment   TEXT        NOT NULL REFERENCES experiments (name) ON DELETE CASCADE,
    account_id   TEXT        NOT NULL,
    variant      TEXT        NOT NULL,
    signed_up_at TIMESTAMPTZ NOT NULL,
    assigned_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    recorded_at  TIMESTAMPTZ,
    PRIMARY KEY (experiment, account_id)
);
CREATE INDEX IF NOT EXISTS experiment_assignments_unrecorded ON experiment_assignments (assigned_at) WHERE recorded_at IS NULL;
CREATE INDEX IF NOT EXISTS experiment_assignments_account ON experiment_assignments (account_id);

-- An override can be limited to one plan: an experiment's overrides stop applying when the
-- account moves to another plan (a converted account gets its new plan's limits).
ALTER TABLE account_limit_overrides ADD COLUMN IF NOT EXISTS plan TEXT;

-- Each limit stage an account reached, per window (owner: scorer). The ClickHouse
-- `limit_stage_crossings` row is written first; this row then stops the scorer writing it again.
CREATE TABLE IF NOT EXISTS limit_stage_crossings (
    account_id  TEXT        NOT NULL,
    limit_name  TEXT        NOT NULL,
    window_id   TEXT        NOT NULL,
    stage       INTEGER     NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, limit_name, window_id, stage)
);
