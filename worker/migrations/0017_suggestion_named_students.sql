-- Issue #18 (R12): a suggestion e-mail names the guardian's children. The
-- purge of a child clears the e-mails that name it; it found them through the
-- guardian-student links at the purge, so an e-mail naming a child whose link
-- the LAS removed before was left with the child's name. The suggestion now
-- records the children its e-mails name.
ALTER TABLE suggestions ADD COLUMN named_student_ids BIGINT[] NOT NULL DEFAULT '{}';
