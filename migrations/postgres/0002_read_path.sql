-- The read path (quota decisions, /usage) keeps account profiles in process. These changes
-- let it see what moves them: a plan change, a limit override, an abuse flag.

-- Set and cleared by the scorer; only a flagged account may be denied service.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS abuse_flagged_at TIMESTAMPTZ;

-- Per-account limits that replace the tier's: named like the tier limits
-- (`month_weighted_tokens`, `day_requests`, …, or `requests_per_minute`). The limit A/B
-- experiments write these; `source` says who did (`experiment:<name>`, `manual`).
CREATE TABLE IF NOT EXISTS account_limit_overrides (
    account_id TEXT             NOT NULL,
    limit_name TEXT             NOT NULL,
    value      DOUBLE PRECISION NOT NULL CHECK (value >= 0 OR value = -1),
    source     TEXT             NOT NULL,
    created_at TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, limit_name)
);

-- Every change to an account's profile is announced on the `meterline_accounts` channel with
-- the account id as payload, after its transaction commits. Triggers, rather than each writer
-- remembering to notify, so no writer can forget.
CREATE OR REPLACE FUNCTION meterline_notify_account() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('meterline_accounts', OLD.account_id);
    ELSE
        PERFORM pg_notify('meterline_accounts', NEW.account_id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS accounts_notify ON accounts;
CREATE TRIGGER accounts_notify AFTER INSERT OR DELETE OR UPDATE OF plan, abuse_flagged_at ON accounts
    FOR EACH ROW EXECUTE FUNCTION meterline_notify_account();

DROP TRIGGER IF EXISTS account_limit_overrides_notify ON account_limit_overrides;
CREATE TRIGGER account_limit_overrides_notify AFTER INSERT OR UPDATE OR DELETE ON account_limit_overrides
    FOR EACH ROW EXECUTE FUNCTION meterline_notify_account();
