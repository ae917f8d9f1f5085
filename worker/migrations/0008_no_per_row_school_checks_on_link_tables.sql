-- Issue #7: the journal and the two link tables no longer check school_id
-- against schools by foreign key.
--
-- A foreign key check is a trigger that runs one query per inserted row
-- (SELECT 1 FROM schools WHERE id = $1 FOR KEY SHARE). These three tables
-- take most of the rows an import writes (a journal row per change, a
-- membership per group of a student or staff member, a link per guardian and
-- child), so the checks were about 6.5 queries per message and a large share
-- of PostgreSQL's time in a drain (docs/performance.md).
--
-- What still holds: the worker writes these rows only in the transaction that
-- applies a change of that school, with the school_id it read from schools in
-- that transaction; nothing deletes schools; and profiles and portal_groups
-- keep their foreign keys, so a school that has imported data cannot be
-- deleted without deleting that data first.
-- IF EXISTS: a database whose constraints were renamed by hand keeps them
-- (correct, only slower) instead of refusing to start the worker.
ALTER TABLE change_journal DROP CONSTRAINT IF EXISTS change_journal_school_id_fkey;
ALTER TABLE memberships DROP CONSTRAINT IF EXISTS memberships_school_id_fkey;
ALTER TABLE guardian_students DROP CONSTRAINT IF EXISTS guardian_students_school_id_fkey;
