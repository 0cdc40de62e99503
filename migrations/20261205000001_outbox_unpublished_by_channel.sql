-- no-transaction
-- A channel's unpublished outbox rows, found with one index probe: the
-- post writer asks for every community of every batch whether any is left
-- (see the next migration). Built concurrently, outside a transaction, so
-- that API processes of the previous version keep writing to the outbox
-- while it builds during a rolling upgrade.
create index concurrently if not exists outbox_unpublished_by_channel
    on outbox (channel) where published_at is null;
