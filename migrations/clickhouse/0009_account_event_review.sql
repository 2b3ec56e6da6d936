-- Version 3 of the account event: review decisions (review_suspected, review_auto_denied,
-- review_expired, review_confirmed, review_cleared) say who made them, why, and at which abuse
-- score. Empty / NULL for every other event.
ALTER TABLE account_events ADD COLUMN actor String DEFAULT '' AFTER notice_id;
ALTER TABLE account_events ADD COLUMN reason String DEFAULT '' AFTER actor;
ALTER TABLE account_events ADD COLUMN abuse_score Nullable(Int64) AFTER reason;
