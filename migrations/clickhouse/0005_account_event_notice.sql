-- Version 2 of the account event: notice_shown and notice_clicked name their dashboard notice,
-- so the growth team can join impressions and clicks to what was suggested.
ALTER TABLE account_events ADD COLUMN notice_id String DEFAULT '' AFTER browser_signature;
