-- Core portal schema written by las-worker (issue #2).
-- The worker owns the imported fields; portal-only columns (R5) exist so that
-- tests can prove an import never touches them.

CREATE TABLE schools (
    id                    BIGSERIAL PRIMARY KEY,
    brin                  TEXT NOT NULL UNIQUE CHECK (brin ~ '^[0-9]{2}[A-Z0-9]{2}$'),
    las_system            TEXT NOT NULL CHECK (las_system IN ('parnassys', 'esis')),
    environment_id        TEXT NOT NULL,
    environment_label     TEXT,
    intake_weeks_ahead    INTEGER CHECK (intake_weeks_ahead BETWEEN 0 AND 52),
    default_staff_role    TEXT NOT NULL DEFAULT 'Leerkracht',
    link_staff_to_groups  BOOLEAN NOT NULL DEFAULT TRUE,
    esis_composite_groups BOOLEAN NOT NULL DEFAULT FALSE,
    retention_days        INTEGER NOT NULL DEFAULT 365 CHECK (retention_days >= 0),
    group_mapping         JSONB NOT NULL DEFAULT '[]'::jsonb,
    first_run_at          TIMESTAMPTZ,
    last_sync_at          TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE profiles (
    id                   BIGSERIAL PRIMARY KEY,
    school_id            BIGINT NOT NULL REFERENCES schools (id),
    kind                 TEXT NOT NULL CHECK (kind IN ('student', 'guardian', 'staff')),
    las_key              TEXT NOT NULL,
    -- 'pending' only exists inside an import transaction (a row lock holder);
    -- 'held' is a child under 4 (or its guardian) not imported yet (R9).
    status               TEXT NOT NULL CHECK (status IN ('pending', 'active', 'held', 'deactivated')),
    -- Highest LAS version applied (status, groups); version of the upsert the
    -- imported fields come from; version of the upsert the e-mail comes from (R4).
    version              BIGINT NOT NULL DEFAULT 0,
    data_version         BIGINT NOT NULL DEFAULT 0,
    email_version        BIGINT NOT NULL DEFAULT 0,
    -- Imported fields (R3).
    first_name           TEXT,
    name_prefix          TEXT,
    last_name            TEXT,
    birth_date           DATE,
    street               TEXT,
    postcode             TEXT,
    city                 TEXT,
    phone                TEXT,
    mobile               TEXT,
    emergency_phone      TEXT,
    email                TEXT,
    -- Set at creation only (R8).
    role                 TEXT,
    -- R9: the LAS groups of a student (effective only once out of intake).
    las_group_keys       TEXT[] NOT NULL DEFAULT '{}',
    in_intake            BOOLEAN NOT NULL DEFAULT FALSE,
    -- Portal-only data (R5): never written by an import.
    allergies            TEXT,
    general_practitioner TEXT,
    preferences          JSONB NOT NULL DEFAULT '{}'::jsonb,
    last_login_at        TIMESTAMPTZ,
    -- Bookkeeping.
    last_message_id      UUID,
    deactivated_at       TIMESTAMPTZ,
    deactivation_reason  TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (school_id, kind, las_key)
);

-- Year groups, composite groups and the intake group (R7, R9). Portal groups
-- the school made itself have no las_key until a first run maps them. The
-- intake group has the reserved key '@intake' (LAS keys never start with '@').
CREATE TABLE portal_groups (
    id                       BIGSERIAL PRIMARY KEY,
    school_id                BIGINT NOT NULL REFERENCES schools (id),
    las_key                  TEXT,
    name                     TEXT,
    -- 'alias': a ParnasSys class of exactly one year group; its members are in that year group (R7).
    group_type               TEXT NOT NULL DEFAULT 'year' CHECK (group_type IN ('year', 'composite', 'intake', 'alias')),
    las_kind                 TEXT CHECK (las_kind IN ('year', 'class', 'subclass', 'group')),
    -- 'skipped': an ESIS composite group while the school's esis_composite_groups is off (R7).
    status                   TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'detached', 'skipped')),
    -- For an alias: the LAS key of the year group it stands for.
    maps_to_key              TEXT,
    parents_see_other_groups BOOLEAN NOT NULL DEFAULT FALSE,
    year_group_keys          TEXT[] NOT NULL DEFAULT '{}',
    student_keys             TEXT[] NOT NULL DEFAULT '{}',
    version                  BIGINT NOT NULL DEFAULT 0,
    last_message_id          UUID,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX portal_groups_school_las_key ON portal_groups (school_id, las_key);

-- Memberships by LAS key, so they resolve whatever the arrival order.
-- source: 'profile' (the member's own group_keys) or 'group' (a subclass's student_keys).
CREATE TABLE memberships (
    school_id   BIGINT NOT NULL REFERENCES schools (id),
    group_key   TEXT NOT NULL,
    member_kind TEXT NOT NULL CHECK (member_kind IN ('student', 'staff')),
    member_key  TEXT NOT NULL,
    source      TEXT NOT NULL DEFAULT 'profile' CHECK (source IN ('profile', 'group')),
    PRIMARY KEY (school_id, member_kind, member_key, group_key, source)
);
CREATE INDEX memberships_group ON memberships (school_id, group_key);

-- Guardian to student links by LAS key.
CREATE TABLE guardian_students (
    school_id    BIGINT NOT NULL REFERENCES schools (id),
    guardian_key TEXT NOT NULL,
    student_key  TEXT NOT NULL,
    PRIMARY KEY (school_id, guardian_key, student_key)
);
CREATE INDEX guardian_students_student ON guardian_students (school_id, student_key);

-- Message ids already applied: a redelivery changes nothing.
CREATE TABLE processed_messages (
    message_id   UUID PRIMARY KEY,
    school_id    BIGINT,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX processed_messages_at ON processed_messages (processed_at);

-- Decisions per applied message (rule ids and field names only), for `explain`.
CREATE TABLE change_journal (
    id           BIGSERIAL PRIMARY KEY,
    school_id    BIGINT NOT NULL REFERENCES schools (id),
    message_id   UUID NOT NULL,
    entity_kind  TEXT NOT NULL,
    las_key      TEXT NOT NULL,
    version      BIGINT NOT NULL,
    decisions    TEXT[] NOT NULL,
    applied_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX change_journal_entity ON change_journal (school_id, entity_kind, las_key, applied_at);

-- Group-bound items (news, albums, books, calendar, conversation rounds, forms).
-- The portal owns their content; the worker only keeps them when it renames a
-- mapped group (R7) and unlinks them at the year rollover (R11).
CREATE TABLE group_items (
    id         BIGSERIAL PRIMARY KEY,
    school_id  BIGINT NOT NULL REFERENCES schools (id),
    group_id   BIGINT REFERENCES portal_groups (id),
    item_type  TEXT NOT NULL CHECK (item_type IN ('news', 'photo_album', 'book', 'calendar_item', 'conversation_round', 'form')),
    title      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX group_items_group ON group_items (group_id);

-- Daily jobs (R9 intake promotion): one row per job, so a day runs once across replicas.
CREATE TABLE daily_jobs (
    job           TEXT PRIMARY KEY,
    last_run_date DATE NOT NULL,
    last_run_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What the portal shows: effective group membership per portal group. A
-- student in intake is only in the intake group; a member of a class of one
-- year group is in that year group; detached and skipped groups have no members.
CREATE VIEW portal_group_members AS
SELECT g.school_id, g.id AS group_id, g.las_key AS group_key, g.name AS group_name, m.member_kind, m.member_key
FROM memberships m
JOIN portal_groups a ON a.school_id = m.school_id AND a.las_key = m.group_key
JOIN portal_groups g ON g.school_id = a.school_id AND g.las_key = COALESCE(a.maps_to_key, a.las_key)
JOIN profiles p ON p.school_id = m.school_id AND p.kind = m.member_kind AND p.las_key = m.member_key
WHERE g.status = 'active' AND a.status = 'active' AND p.status = 'active';
