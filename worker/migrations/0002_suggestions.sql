-- R10: parent edits become suggestion e-mails to the school (issue #4).

-- The portal's staff accounts, as far as suggestions need them. A recipient is
-- an active user with the link-administrator role or the
-- notify-contact-changes right ("Melding ouder-/kindgegevens").
CREATE TABLE portal_users (
    id           BIGSERIAL PRIMARY KEY,
    school_id    BIGINT NOT NULL REFERENCES schools (id),
    display_name TEXT NOT NULL,
    email        TEXT NOT NULL,
    role         TEXT NOT NULL DEFAULT 'teacher' CHECK (role IN ('link_admin', 'school_admin', 'teacher', 'parent')),
    active       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX portal_users_school ON portal_users (school_id);

CREATE TABLE portal_user_rights (
    user_id BIGINT NOT NULL REFERENCES portal_users (id) ON DELETE CASCADE,
    "right" TEXT NOT NULL CHECK ("right" IN ('notify_contact_changes')),
    PRIMARY KEY (user_id, "right")
);

-- One suggestion per parent edit.
CREATE TABLE suggestions (
    id                  BIGSERIAL PRIMARY KEY,
    school_id           BIGINT NOT NULL REFERENCES schools (id),
    message_id          UUID NOT NULL UNIQUE,
    guardian_profile_id BIGINT NOT NULL REFERENCES profiles (id),
    edited_at           TIMESTAMPTZ NOT NULL,
    status              TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'discarded')),
    recipients          INTEGER NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_at           TIMESTAMPTZ,
    closed_reason       TEXT
);
CREATE INDEX suggestions_open ON suggestions (guardian_profile_id) WHERE status = 'open';

CREATE TABLE suggestion_fields (
    suggestion_id  BIGINT NOT NULL REFERENCES suggestions (id) ON DELETE CASCADE,
    field          TEXT NOT NULL,
    current_value  TEXT,
    proposed_value TEXT,
    PRIMARY KEY (suggestion_id, field)
);

-- Outgoing e-mail, written in the same transaction as the suggestion and sent
-- by the dispatcher. `idempotency_key` goes to the provider, so a send retried
-- after a crash is not delivered twice.
CREATE TABLE email_outbox (
    id                  BIGSERIAL PRIMARY KEY,
    school_id           BIGINT NOT NULL REFERENCES schools (id),
    suggestion_id       BIGINT REFERENCES suggestions (id),
    recipient_user_id   BIGINT REFERENCES portal_users (id),
    to_address          TEXT NOT NULL,
    subject             TEXT NOT NULL,
    body_text           TEXT NOT NULL,
    body_html           TEXT NOT NULL,
    idempotency_key     UUID NOT NULL UNIQUE,
    status              TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_until       TIMESTAMPTZ,
    last_error          TEXT,
    provider_message_id TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at             TIMESTAMPTZ
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE status IN ('pending', 'sending');
