-- The scorer's current scores, one row per account: served at GET /v1/accounts/{id}/scores.
-- `scores` holds every score with its reasons and inputs.
CREATE TABLE IF NOT EXISTS account_scores (
    account_id     TEXT PRIMARY KEY,
    deal_readiness INT         NOT NULL,
    pql            INT         NOT NULL,
    abuse          INT         NOT NULL,
    scores         JSONB       NOT NULL,
    scored_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS account_scores_deal ON account_scores (deal_readiness DESC);

-- Every signal episode raised, by dedup key (account:kind:episode): a row here means the
-- signal is on the account-signals topic, and it is never raised again.
CREATE TABLE IF NOT EXISTS account_signals (
    dedup_key    TEXT PRIMARY KEY,
    account_id   TEXT        NOT NULL,
    kind         TEXT        NOT NULL,
    episode      TEXT        NOT NULL,
    raised_at    TIMESTAMPTZ NOT NULL,
    -- For episodes that last (rate limiting): when the condition was last seen.
    last_seen_at TIMESTAMPTZ NOT NULL,
    payload      JSONB       NOT NULL
);
CREATE INDEX IF NOT EXISTS account_signals_account ON account_signals (account_id, kind, last_seen_at);

-- Multi-account detection compares signup fingerprints.
CREATE INDEX IF NOT EXISTS accounts_signup_ip_hash ON accounts (signup_ip_hash);
CREATE INDEX IF NOT EXISTS accounts_device_id ON accounts (device_id);
CREATE INDEX IF NOT EXISTS accounts_browser_signature ON accounts (browser_signature);
