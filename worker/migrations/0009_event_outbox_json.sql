-- Issue #7: the events of a transaction are stored as json[], not jsonb[].
--
-- The outbox only keeps an event until the publisher sends it as it was
-- written; nothing queries inside it except the view's event_id. jsonb parsed
-- every event into its binary form on insert and printed it back on publish,
-- about 10% of PostgreSQL's statement time in a drain. json keeps the text
-- (validated on insert), so the published body is also byte for byte the one
-- the worker serialized.
DROP VIEW event_outbox_events;

ALTER TABLE event_outbox ALTER COLUMN events TYPE json[] USING events::json[];

CREATE VIEW event_outbox_events AS
SELECT o.id AS outbox_id,
       e.ord AS position,
       (e.event ->> 'event_id')::uuid AS event_id,
       e.event AS payload,
       o.created_at,
       o.published_at
FROM event_outbox o
CROSS JOIN LATERAL unnest(COALESCE(o.events, ARRAY[o.payload::json])) WITH ORDINALITY AS e(event, ord);
