-- The daily job prunes the change journal by age (JOURNAL_RETENTION_DAYS).
CREATE INDEX change_journal_applied_at ON change_journal (applied_at);
