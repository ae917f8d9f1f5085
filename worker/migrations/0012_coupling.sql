-- Issue #15, rule R13 (go-live): portal profiles made before the link (or by
-- hand later) have no LAS key; the portal owns such a row until a LAS record
-- is coupled to it. NULL keys are distinct, so (school_id, kind, las_key)
-- stays unique for the coupled ones.
ALTER TABLE profiles ALTER COLUMN las_key DROP NOT NULL;

-- The school's coupling setting: 'auto' couples an unambiguous match,
-- 'review' never couples by itself.
ALTER TABLE schools ADD COLUMN coupling TEXT NOT NULL DEFAULT 'auto'
    CHECK (coupling IN ('auto', 'review'));

-- Candidates for coupling: uncoupled portal profiles of a school and kind,
-- found by e-mail (guardian, staff) or birth date (student).
CREATE INDEX profiles_uncoupled_email ON profiles (school_id, kind, lower(btrim(email)))
    WHERE las_key IS NULL;
CREATE INDEX profiles_uncoupled_birth ON profiles (school_id, kind, birth_date)
    WHERE las_key IS NULL;

-- LAS records that wait for the school's coupling decision: stored, not
-- applied to any portal profile, invisible to parents and to other services.
-- `change` is the newest LAS change for the key (it holds personal data, the
-- minimum to apply it once the school decides); the row is deleted when the
-- school decides, when the LAS removes the record, or when it stayed untouched
-- past the school's retention term (R12, maintenance).
CREATE TABLE coupling_waits (
    school_id     BIGINT NOT NULL REFERENCES schools (id),
    kind          TEXT NOT NULL CHECK (kind IN ('student', 'guardian', 'staff')),
    las_key       TEXT NOT NULL,
    version       BIGINT NOT NULL,
    message_id    UUID NOT NULL,
    change        JSONB NOT NULL,
    -- 'ambiguous' (several matches), 'review' (the school reviews every
    -- match), 'uncoupled' (a coupling was undone).
    reason        TEXT NOT NULL CHECK (reason IN ('ambiguous', 'review', 'uncoupled')),
    candidate_ids BIGINT[] NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (school_id, kind, las_key)
);
CREATE INDEX coupling_waits_updated ON coupling_waits (updated_at);
