-- The email channel (meterline_schemas::contact, notifier/src/email/).
--
-- The account holder's contact email, from `signup` and `profile_updated` account events (the
-- newest event's wins). Personal data: kept here and in `account_events.payload` only, never
-- copied to ClickHouse; the notifier reads it when it sends an email and writes it nowhere.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS contact_email TEXT;
-- When the account holder first followed an email's one-click unsubscribe link (an
-- `email_unsubscribed` account event). Set: the notifier sends this account no more email.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS email_unsubscribed_at TIMESTAMPTZ;

-- An email for an account with no contact email, or one that unsubscribed, is recorded as
-- `skipped` with the reason in `detail`: the replay of its signal finds it and sends nothing,
-- and it holds no cooldown (nothing was sent).
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'dead', 'unconfirmed', 'skipped'));
