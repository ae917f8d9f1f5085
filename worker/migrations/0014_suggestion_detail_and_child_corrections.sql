-- Issue #18, R10 privacy items.
--
-- `suggestion_detail`: what a suggestion e-mail says. `full` names the
-- guardian, the student(s) and per field the current and proposed value;
-- `notice` says only that a suggestion waits, with a link into the portal
-- (seed 003: pupil data stays out of e-mail). From portal.link.v1 (v1.3).
ALTER TABLE schools ADD COLUMN suggestion_detail TEXT NOT NULL DEFAULT 'full'
    CHECK (suggestion_detail IN ('full', 'notice'));

-- A parent's correction of a child's imported data ("Melding
-- ouder-/kindgegevens"): the suggestion is about the student; the guardian
-- who proposed it stays in `guardian_profile_id`. NULL: about the guardian.
ALTER TABLE suggestions ADD COLUMN student_profile_id BIGINT REFERENCES profiles (id);
CREATE INDEX suggestions_open_student ON suggestions (student_profile_id)
    WHERE status = 'open' AND student_profile_id IS NOT NULL;
