-- Score history: a row each time an account's scores, flags or tags change (owner: scorer).
-- `reasons` is JSON: {"deal_readiness": [...], "pql": [...], "abuse": [...]}.
CREATE TABLE IF NOT EXISTS account_scores (
    account_id      String,
    scored_at       DateTime('UTC'),
    plan            String,
    deal_readiness  UInt8,
    pql             UInt8,
    abuse           UInt8,
    abuse_suspected UInt8,
    power_user      UInt8,
    tags            Array(String),
    reasons         String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(scored_at)
ORDER BY (account_id, scored_at);
