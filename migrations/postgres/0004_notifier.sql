-- The notifier's outbox: every notification is written here before it is sent, and the worker
-- sends it from here. Two unique keys make delivery once-only:
--   (destination, signal_id): a replayed or duplicated signal never queues a second message;
--   (destination, account_id, cooldown_class, cooldown_at): one notification per cooldown
--   start, so two workers deciding at once cannot both pass the cooldown.
CREATE TABLE IF NOT EXISTS notifications (
    id              BIGSERIAL PRIMARY KEY,
    account_id      TEXT        NOT NULL,
    -- slack:<channel>, hubspot or notice
    destination     TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    signal_id       TEXT        NOT NULL,
    cooldown_class  TEXT        NOT NULL,
    -- The signal's event time: cooldowns are measured between signals, so replays decide alike.
    cooldown_at     TIMESTAMPTZ NOT NULL,
    score           INT         NOT NULL,
    -- The rendered request (Slack message, HubSpot deal fields or notice), fixed at queue time.
    payload         JSONB       NOT NULL,
    -- pending → sending → sent; after max_attempts: dead. A Slack send whose sender died
    -- mid-send is `unconfirmed`: Slack webhooks cannot be asked whether it arrived, so a person
    -- decides (`meterline notifications retry`) rather than risk a second message.
    status          TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'dead', 'unconfirmed')),
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    -- Where it went: slack, local:<file>, hubspot:deal:<id>, notice:<id>.
    delivered_to    TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    UNIQUE (destination, signal_id),
    UNIQUE (destination, account_id, cooldown_class, cooldown_at)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS notifications_leased ON notifications (lease_until) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS notifications_cooldown
    ON notifications (account_id, destination, cooldown_class, cooldown_at DESC);

-- In-product upgrade suggestions, served at GET /v1/accounts/{id}/notice (written by the
-- notifier, read and marked shown/clicked by ingest).
CREATE TABLE IF NOT EXISTS dashboard_notices (
    notice_id   UUID PRIMARY KEY,
    account_id  TEXT        NOT NULL,
    kind        TEXT        NOT NULL,
    message     TEXT        NOT NULL,
    upgrade_url TEXT        NOT NULL,
    plan        TEXT        NOT NULL,
    signal_id   TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    shown_at    TIMESTAMPTZ,
    clicked_at  TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS dashboard_notices_account ON dashboard_notices (account_id, created_at DESC);

-- The HubSpot records an account maps to, saved as soon as HubSpot returns them, so a later
-- signal updates the same deal even before HubSpot's search index has caught up.
CREATE TABLE IF NOT EXISTS hubspot_deals (
    account_id TEXT PRIMARY KEY,
    deal_id    TEXT        NOT NULL,
    company_id TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Signal records the notifier could not decode, kept for a person instead of dropped.
CREATE TABLE IF NOT EXISTS notifier_rejected_signals (
    topic        TEXT        NOT NULL,
    partition    INT         NOT NULL,
    kafka_offset BIGINT      NOT NULL,
    reason       TEXT        NOT NULL,
    payload      BYTEA,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, kafka_offset)
);
