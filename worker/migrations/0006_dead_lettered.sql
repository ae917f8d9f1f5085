-- #8: deliveries the broker confirmed in the dead-letter queue, by a digest
-- of the delivery (SHA-256 of the body and of a replay's x-las-replayed-at).
-- A redelivery of one whose ack was lost (broker cut, crash) and that is
-- rejected again is acknowledged without a second dead letter. Pruned after
-- 30 days by the daily job, like processed_messages.
CREATE TABLE dead_lettered (
    digest           BYTEA PRIMARY KEY,
    reason_code      TEXT NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dead_lettered_at ON dead_lettered (dead_lettered_at);
