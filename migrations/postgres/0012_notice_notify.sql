-- The read path keeps each account's unseen dashboard notice in process
-- (`ingest/src/read/notices.rs`), so a quota decision carries it (`dashboard_notice`) without a
-- PostgreSQL query. These changes let it see what moves one: the notifier inserting a notice,
-- ingest marking it shown or clicked, anyone changing or deleting it.

-- Announced on the `meterline_notices` channel with the account id as payload, after the
-- transaction commits. Only the columns a decision shows or filters on: the notifier's
-- `history_recorded_at` bookkeeping announces nothing.
CREATE OR REPLACE FUNCTION meterline_notify_notice() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('meterline_notices', OLD.account_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('meterline_notices', NEW.account_id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS dashboard_notices_notify ON dashboard_notices;
CREATE TRIGGER dashboard_notices_notify
    AFTER INSERT OR DELETE
       OR UPDATE OF account_id, kind, message, upgrade_url, plan, created_at, expires_at, shown_at, clicked_at
    ON dashboard_notices
    FOR EACH ROW EXECUTE FUNCTION meterline_notify_notice();

-- The read path's load at start and after a lost connection reads only the unseen notices.
CREATE INDEX IF NOT EXISTS dashboard_notices_unseen
    ON dashboard_notices (account_id, created_at DESC) WHERE shown_at IS NULL AND clicked_at IS NULL;
