-- #7: a transaction writes all its sync events as ONE outbox row: `events`
-- holds them in order (published one message each, on `routing_keys`), and
-- `event_id`, `routing_key` and `payload` stay NULL. One row and one update
-- per batch instead of per change. Rows written before this migration hold
-- one event each in `payload`; the publisher reads both.
ALTER TABLE event_outbox
    ALTER COLUMN event_id DROP NOT NULL,
    ALTER COLUMN routing_key DROP NOT NULL,
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN routing_keys TEXT[],
    ADD COLUMN events JSONB[],
    ADD CONSTRAINT event_outbox_one_or_many CHECK (
        (payload IS NOT NULL AND routing_key IS NOT NULL AND events IS NULL AND routing_keys IS NULL)
        OR (payload IS NULL AND events IS NOT NULL
            AND cardinality(events) = cardinality(routing_keys)));

-- One row per event, whichever way it was written: for support and tests.
CREATE VIEW event_outbox_events AS
SELECT o.id AS outbox_id,
       e.ord AS position,
       (e.event ->> 'event_id')::uuid AS event_id,
       e.event AS payload,
       o.created_at,
       o.published_at
FROM event_outbox o
CROSS JOIN LATERAL unnest(COALESCE(o.events, ARRAY[o.payload])) WITH ORDINALITY AS e(event, ord);

