-- The console's lists (console/src/pages/lists.rs) cut the scorer's table by what its scores
-- hold. Evaluating the JSON on every row was most of a list's time with 100,000 accounts
-- (BENCHMARKS.md; PostgreSQL skipped 0013's expression indexes at 30 % selectivity and read
-- every row), so each condition becomes a generated column, computed when the scorer writes
-- the row, with a partial index on it: a list and its count read only their own accounts.
DROP INDEX IF EXISTS account_scores_near_limit;
DROP INDEX IF EXISTS account_scores_power_user;
DROP INDEX IF EXISTS account_scores_escalation;
DROP INDEX IF EXISTS account_scores_evidence;
ALTER TABLE account_scores
    ADD COLUMN IF NOT EXISTS near_limit BOOLEAN
        GENERATED ALWAYS AS (jsonb_path_exists(scores, '$.limits[*] ? (@.stage != null)')) STORED,
    ADD COLUMN IF NOT EXISTS power_user BOOLEAN
        GENERATED ALWAYS AS (jsonb_path_exists(scores, '$.power_user.rule')) STORED,
    ADD COLUMN IF NOT EXISTS escalation BOOLEAN
        GENERATED ALWAYS AS (jsonb_path_exists(scores, '$.tags[*]')) STORED,
    -- Key-sharing or fingerprint evidence (the review queue's second part).
    ADD COLUMN IF NOT EXISTS abuse_evidence BOOLEAN
        GENERATED ALWAYS AS (jsonb_path_exists(scores, '$.shared_keys[*]')
                             OR jsonb_path_exists(scores, '$.multi_accounts[*]')) STORED;
CREATE INDEX IF NOT EXISTS account_scores_near_limit ON account_scores (abuse DESC NULLS LAST, account_id) WHERE near_limit;
CREATE INDEX IF NOT EXISTS account_scores_power_user ON account_scores (account_id) WHERE power_user;
CREATE INDEX IF NOT EXISTS account_scores_escalation ON account_scores (account_id) WHERE escalation;
CREATE INDEX IF NOT EXISTS account_scores_evidence ON account_scores (abuse DESC, account_id) WHERE abuse_evidence;
