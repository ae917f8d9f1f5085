-- Issue #18: retention terms per category from the schools' own statements.
-- Seed 003 keeps the pupil file two years after a child leaves, so the
-- portal's copy of a pupil's and its guardians' data is kept no longer:
-- `retention_days` defaults to 730 for new links (schools that chose a term
-- keep it). Staff have their own term (the same default). Absence reports,
-- leave requests and after-school-care registrations are deleted at the
-- rollover (seed 000) unless the school keeps them up to five school years
-- (seed 003: the school keeps absence data five years, in its LAS).
-- Numbered 0015: 0014 is taken by the suggestion-detail setting.
ALTER TABLE schools ALTER COLUMN retention_days SET DEFAULT 730;
ALTER TABLE schools ADD COLUMN staff_retention_days INTEGER NOT NULL DEFAULT 730
    CHECK (staff_retention_days >= 0);
ALTER TABLE schools ADD COLUMN year_records_kept_years INTEGER NOT NULL DEFAULT 0
    CHECK (year_records_kept_years BETWEEN 0 AND 5);
