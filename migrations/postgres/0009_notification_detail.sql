-- What the notifier's routing decided beyond the message itself, for a person reading the
-- outbox (`meterline notifications list --json`): why a HubSpot deal has no company (a public
-- email domain), or that an existing customer's growth went to the expansion route instead of
-- being prospected. NULL when there is nothing to say.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS detail TEXT;
