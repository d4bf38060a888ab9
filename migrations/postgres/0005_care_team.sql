-- The care-team model: organisations, roles, patients and family, e-mail
-- invitations and the patients' consents.
CREATE TABLE orgs (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Existing accounts (before roles) become doctors without an organisation.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'doctor';
ALTER TABLE users ADD COLUMN org_id BIGINT REFERENCES orgs(id);
ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
-- Patients only: the region's network id (shared EHR id).
ALTER TABLE users ADD COLUMN network_id TEXT;
CREATE UNIQUE INDEX users_network_id ON users(network_id) WHERE network_id IS NOT NULL;
CREATE INDEX users_org ON users(org_id, role);

-- Family accounts and the patient they belong to.
CREATE TABLE family_links (
    user_id            BIGINT PRIMARY KEY REFERENCES users(id),
    patient_network_id TEXT    NOT NULL,
    relationship       TEXT    NOT NULL,
    legal_proxy        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX family_links_patient ON family_links(patient_network_id);

-- One-time invitation codes (stored as SHA-256 only). The e-mail address is
-- used to send the code and not kept.
CREATE TABLE invitations (
    id                 BIGSERIAL PRIMARY KEY,
    code_hash          BYTEA    NOT NULL UNIQUE,
    inviter_user       BIGINT REFERENCES users(id),
    role               TEXT    NOT NULL,
    org_id             BIGINT REFERENCES orgs(id),
    patient_network_id TEXT,
    relationship       TEXT,
    legal_proxy        BIGINT NOT NULL DEFAULT 0,
    room_id            TEXT,
    created_ms         BIGINT NOT NULL,
    expires_ms         BIGINT NOT NULL,
    used_by            BIGINT REFERENCES users(id),
    used_ms            BIGINT
);
CREATE INDEX invitations_inviter ON invitations(inviter_user, id);

-- The patient's network id of a care room (NULL for a team room); the full
-- settings live in the MLS group context (room_state).
ALTER TABLE rooms ADD COLUMN patient_network_id TEXT;

-- Consents (grants and revocations) signed by the patient or a legal proxy,
-- newest last per (room, subject).
CREATE TABLE consents (
    id            BIGSERIAL PRIMARY KEY,
    consent_id    TEXT    NOT NULL UNIQUE,
    room_id       TEXT    NOT NULL REFERENCES rooms(id),
    subject_user  BIGINT NOT NULL REFERENCES users(id),
    granted       BIGINT NOT NULL,
    signer_device BIGINT NOT NULL REFERENCES devices(id),
    consent       TEXT    NOT NULL,
    signature     BYTEA    NOT NULL,
    created_ms    BIGINT NOT NULL
);
CREATE INDEX consents_room ON consents(room_id, subject_user, id);
