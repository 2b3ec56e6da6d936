-- A person in the loop before enforcement (meterline_schemas::review). The review state is
-- applied by the aggregator from review account events (the scorer's suspicions and the
-- high-confidence rule, people's confirmations and clearances); the read path denies or
-- restricts from it. `abuse_flagged_at` stays the scorer's own flag (the score is at the
-- suspected threshold now) and no longer decides anything in the read path.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS review_state TEXT
    CHECK (review_state IN ('suspected', 'auto_denied', 'confirmed', 'cleared'));
-- When the state was entered (the event's time): the queue's "since".
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS review_changed_at TIMESTAMPTZ;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS review_actor TEXT;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS review_reason TEXT;
-- The abuse score the state was recorded at; for `cleared`, the baseline a new suspicion in the
-- same episode must exceed by review.rescore_margin.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS review_score INT;
-- Review events applied to the account: part of the scorer's deterministic event ids.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS review_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS accounts_review ON accounts (review_state, review_changed_at)
    WHERE review_state IS NOT NULL;

-- The scorer's bookkeeping for review episodes: when it last found the account suspected.
ALTER TABLE account_scores ADD COLUMN IF NOT EXISTS last_suspected_at TIMESTAMPTZ;

-- The read path's profile now follows the review state (the abuse flag no longer matters to
-- it, so changing it no longer notifies).
DROP TRIGGER IF EXISTS accounts_notify ON accounts;
CREATE TRIGGER accounts_notify AFTER INSERT OR DELETE OR UPDATE OF plan, review_state ON accounts
    FOR EACH ROW EXECUTE FUNCTION meterline_notify_account();
