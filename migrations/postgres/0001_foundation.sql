-- Accounts, devices, sessions. (Mirrors migrations/sqlite/0001_foundation.sql;
-- every integer is BIGINT so both backends decode to i64.)
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT      NOT NULL UNIQUE,
    password_hash TEXT      NOT NULL,
    created_ms    BIGINT    NOT NULL
);

CREATE TABLE devices (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT    NOT NULL REFERENCES users(id),
    name          TEXT      NOT NULL,
    signature_key BYTEA     NOT NULL UNIQUE,
    created_ms    BIGINT    NOT NULL
);
CREATE INDEX devices_user ON devices(user_id);

-- Opaque session tokens, stored as SHA-256 hashes only.
CREATE TABLE sessions (
    token_hash BYTEA  PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id),
    device_id  BIGINT NOT NULL REFERENCES devices(id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- One-time MLS key packages; a claim deletes the row it returns.
CREATE TABLE key_packages (
    id        BIGSERIAL PRIMARY KEY,
    device_id BIGINT NOT NULL REFERENCES devices(id),
    hash_ref  BYTEA  NOT NULL UNIQUE,
    data      BYTEA  NOT NULL
);
CREATE INDEX key_packages_device ON key_packages(device_id, id);

-- Rooms (MLS groups) the server follows as Delivery Service.
CREATE TABLE rooms (
    id             TEXT   PRIMARY KEY,
    epoch          BIGINT NOT NULL,
    last_seq       BIGINT NOT NULL,
    creator_device BIGINT NOT NULL REFERENCES devices(id),
    created_ms     BIGINT NOT NULL
);

-- The openmls PublicGroup state of each room (our PublicStorageProvider).
CREATE TABLE room_state (
    room_id TEXT  NOT NULL REFERENCES rooms(id),
    key     TEXT  NOT NULL,
    value   BYTEA NOT NULL,
    PRIMARY KEY (room_id, key)
);

-- Membership history: a device may read seqs in (joined_after_seq, left_at_seq].
CREATE TABLE room_members (
    room_id          TEXT   NOT NULL REFERENCES rooms(id),
    device_id        BIGINT NOT NULL REFERENCES devices(id),
    joined_after_seq BIGINT NOT NULL,
    left_at_seq      BIGINT,
    PRIMARY KEY (room_id, device_id, joined_after_seq)
);
CREATE INDEX room_members_device ON room_members(device_id, left_at_seq);

-- The ciphertext log: opaque MLS messages with a gap-free per-room seq.
CREATE TABLE messages (
    room_id       TEXT   NOT NULL REFERENCES rooms(id),
    seq           BIGINT NOT NULL,
    kind          TEXT   NOT NULL,
    epoch         BIGINT NOT NULL,
    sender_device BIGINT NOT NULL,
    txn_id        TEXT   NOT NULL,
    ts_ms         BIGINT NOT NULL,
    data          BYTEA  NOT NULL,
    PRIMARY KEY (room_id, seq),
    UNIQUE (room_id, sender_device, txn_id)
);

-- Welcomes, stored once and addressed to each added device.
CREATE TABLE welcomes (
    id         BIGSERIAL PRIMARY KEY,
    room_id    TEXT   NOT NULL REFERENCES rooms(id),
    commit_seq BIGINT NOT NULL,
    data       BYTEA  NOT NULL
);

CREATE TABLE welcome_recipients (
    welcome_id BIGINT NOT NULL REFERENCES welcomes(id),
    device_id  BIGINT NOT NULL REFERENCES devices(id),
    PRIMARY KEY (welcome_id, device_id)
);
CREATE INDEX welcome_recipients_device ON welcome_recipients(device_id);
