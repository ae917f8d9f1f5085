-- Issue #5: year rollover (R11), full snapshots with a deletion guard,
-- retention purge (R12) and the outbound sync-event outbox.

-- R11: records that belong to one school year. The portal owns their content;
-- the worker deletes those of a closed year at the rollover.
CREATE TABLE absence_reports (
    id          BIGSERIAL PRIMARY KEY,
    school_id   BIGINT NOT NULL REFERENCES schools (id),
    student_key TEXT NOT NULL,
    school_year TEXT NOT NULL,
    reported_on DATE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE leave_requests (
    id          BIGSERIAL PRIMARY KEY,
    school_id   BIGINT NOT NULL REFERENCES schools (id),
    student_key TEXT NOT NULL,
    school_year TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE after_school_care_registrations (
    id          BIGSERIAL PRIMARY KEY,
    school_id   BIGINT NOT NULL REFERENCES schools (id),
    student_key TEXT NOT NULL,
    school_year TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX absence_reports_year ON absence_reports (school_id, school_year);
CREATE INDEX leave_requests_year ON leave_requests (school_id, school_year);
CREATE INDEX after_school_care_year ON after_school_care_registrations (school_id, school_year);

-- R11: a rollover runs once per school and year.
CREATE TABLE school_year_rollovers (
    school_id      BIGINT NOT NULL REFERENCES schools (id),
    school_year    TEXT NOT NULL,
    message_id     UUID NOT NULL,
    items_unlinked INTEGER NOT NULL,
    records_deleted INTEGER NOT NULL,
    rolled_over_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (school_id, school_year)
);

-- Where a group-bound item was published before the rollover unlinked it.
ALTER TABLE group_items ADD COLUMN unlinked_from_group_id BIGINT;
ALTER TABLE group_items ADD COLUMN unlinked_at TIMESTAMPTZ;

-- Full snapshots and the deletion guard.
ALTER TABLE schools ADD COLUMN snapshot_guard_percent INTEGER NOT NULL DEFAULT 10
    CHECK (snapshot_guard_percent BETWEEN 0 AND 100);
CREATE TABLE snapshots (
    id               UUID PRIMARY KEY,
    school_id        BIGINT NOT NULL REFERENCES schools (id),
    status           TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'held', 'applied', 'discarded')),
    records_sent     BIGINT,
    records_arrived  BIGINT NOT NULL DEFAULT 0,
    would_deactivate BIGINT,
    held_reason      TEXT,
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    closed_at        TIMESTAMPTZ
);
CREATE INDEX snapshots_school ON snapshots (school_id, status);
CREATE TABLE snapshot_members (
    snapshot_id UUID NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    las_key     TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, kind, las_key)
);

-- R12: when personal data was purged after the retention period.
ALTER TABLE profiles ADD COLUMN purged_at TIMESTAMPTZ;

-- Outbound sync events (ids, LAS keys and field names only), written in the
-- transaction of the change and published with publisher confirms.
CREATE TABLE event_outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    routing_key  TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX event_outbox_unpublished ON event_outbox (id) WHERE published_at IS NULL;
