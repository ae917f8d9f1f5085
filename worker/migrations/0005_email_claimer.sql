-- R10 dispatcher: the database session (backend pid) that claimed an e-mail.
-- A claim whose session is gone (the dispatcher's process died and its
-- connection with it) is taken over at once; the lease (claimed_until)
-- stays as the fallback for a session that lives on but stopped working.
ALTER TABLE email_outbox ADD COLUMN claimed_by_pid integer;
