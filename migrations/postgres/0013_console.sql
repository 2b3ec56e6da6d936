-- The web console (issue 22): signed-in sessions and the audit trail of every action.

-- A session made at sign-in from an API token (scope console or review). Only the SHA-256 of
-- the cookie's value is kept; a revoked token ends its sessions (lookups join api_tokens).
CREATE TABLE IF NOT EXISTS console_sessions (
    session_sha256 BYTEA PRIMARY KEY,
    token_sha256   BYTEA       NOT NULL,
    token_name     TEXT        NOT NULL,
    -- review (or admin) scope: may act; console scope: may look.
    can_act        BOOLEAN     NOT NULL,
    -- Put in every form of the session and checked on every POST.
    csrf_token     TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_expiry ON console_sessions (expires_at);

-- Every console action: who (the token's name), what, on which account or row, why, and how
-- it ended (done, refused: …, failed: …).
CREATE TABLE IF NOT EXISTS console_audit (
    id         BIGSERIAL PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor      TEXT        NOT NULL,
    action     TEXT        NOT NULL,
    account_id TEXT,
    target     TEXT,
    reason     TEXT,
    outcome    TEXT        NOT NULL
);
CREATE INDEX IF NOT EXISTS console_audit_account ON console_audit (account_id, id DESC);

-- The console's lists (console/src/pages/lists.rs) cut the scorer's table by these conditions;
-- each has a partial index on exactly its expression, so a list and its count read only its
-- own accounts, not every score (100,000 accounts: BENCHMARKS.md).
CREATE INDEX IF NOT EXISTS account_scores_pql ON account_scores (pql DESC NULLS LAST, account_id);
CREATE INDEX IF NOT EXISTS account_scores_deal_id ON account_scores (deal_readiness DESC NULLS LAST, account_id);
CREATE INDEX IF NOT EXISTS account_scores_near_limit ON account_scores (account_id)
    WHERE jsonb_path_exists(scores, '$.limits[*] ? (@.stage != null)');
CREATE INDEX IF NOT EXISTS account_scores_power_user ON account_scores (account_id)
    WHERE jsonb_path_exists(scores, '$.power_user.rule');
CREATE INDEX IF NOT EXISTS account_scores_escalation ON account_scores (account_id)
    WHERE jsonb_path_exists(scores, '$.tags[*]');
CREATE INDEX IF NOT EXISTS accounts_flagged ON accounts (account_id)
    WHERE review_state IN ('suspected', 'auto_denied');
-- The review queue's second part: accounts whose scores hold key-sharing or fingerprint
-- evidence, in review or not.
CREATE INDEX IF NOT EXISTS account_scores_evidence ON account_scores (abuse DESC, account_id)
    WHERE jsonb_path_exists(scores, '$.shared_keys[*]') OR jsonb_path_exists(scores, '$.multi_accounts[*]');
