-- Notices copied to ClickHouse `notice_history` (the growth team's notice funnel per kind):
-- set by the notifier's notice-history task only after the ClickHouse insert succeeded, so a
-- failed or interrupted copy leaves the notice to be copied again (the same row; ClickHouse
-- folds it on notice_id).
ALTER TABLE dashboard_notices ADD COLUMN IF NOT EXISTS history_recorded_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS dashboard_notices_history_pending
    ON dashboard_notices (created_at) WHERE history_recorded_at IS NULL;
