-- Schema ids for the Confluent wire format, when no external Schema Registry is configured.
CREATE TABLE IF NOT EXISTS avro_schemas (
    id          SERIAL PRIMARY KEY,
    subject     TEXT        NOT NULL,
    fingerprint TEXT        NOT NULL,
    schema_text TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (subject, fingerprint)
);

-- Bearer tokens. Only the SHA-256 of a token is stored; the token is shown once.
CREATE TABLE IF NOT EXISTS api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT        NOT NULL,
    token_sha256 BYTEA       NOT NULL UNIQUE,
    scopes       TEXT[]      NOT NULL,
    account_id   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
-- One active token per name; a revoked name can be issued again.
CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- The current state of every account, kept by the aggregator from the account-events topic.
CREATE TABLE IF NOT EXISTS accounts (
    account_id        TEXT PRIMARY KEY,
    plan              TEXT        NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'enterprise')),
    plan_changed_at   TIMESTAMPTZ,
    seats             BIGINT,
    seats_changed_at  TIMESTAMPTZ,
    email_domain      TEXT,
    company_size      BIGINT,
    signup_ip_hash    TEXT,
    device_id         TEXT,
    browser_signature TEXT,
    signed_up_at      TIMESTAMPTZ,
    churned_at        TIMESTAMPTZ,
    last_event_at     TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS accounts_email_domain ON accounts (email_domain);

-- Every account event applied, by id: the deduplication record for account events (kept for
-- good; they are few) and their history.
CREATE TABLE IF NOT EXISTS account_events (
    event_id    UUID PRIMARY KEY,
    account_id  TEXT        NOT NULL,
    type        TEXT        NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    payload     JSONB       NOT NULL
);
CREATE INDEX IF NOT EXISTS account_events_account ON account_events (account_id, occurred_at);
