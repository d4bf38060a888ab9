-- Accounts, devices, sessions.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL
);

CREATE TABLE devices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    name          TEXT    NOT NULL,
    signature_key BLOB    NOT NULL UNIQUE,
    created_ms    INTEGER NOT NULL
);
CREATE INDEX devices_user ON devices(user_id);

-- Opaque session tokens, stored as SHA-256 hashes only.
CREATE TABLE sessions (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    device_id  INTEGER NOT NULL REFERENCES devices(id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);

-- One-time MLS key packages; a claim deletes the row it returns.
CREATE TABLE key_packages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    hash_ref  BLOB    NOT NULL UNIQUE,
    data      BLOB    NOT NULL
);
CREATE INDEX key_packages_device ON key_packages(device_id, id);

-- Rooms (MLS groups) the server follows as Delivery Service.
CREATE TABLE rooms (
    id             TEXT    PRIMARY KEY,
    epoch          INTEGER NOT NULL,
    last_seq       INTEGER NOT NULL,
    creator_device INTEGER NOT NULL REFERENCES devices(id),
    created_ms     INTEGER NOT NULL
);

-- The openmls PublicGroup state of each room (our PublicStorageProvider).
CREATE TABLE room_state (
    room_id TEXT NOT NULL REFERENCES rooms(id),
    key     TEXT NOT NULL,
    value   BLOB NOT NULL,
    PRIMARY KEY (room_id, key)
);

-- Membership history: a device may read seqs in (joined_after_seq, left_at_seq].
CREATE TABLE room_members (
    room_id          TEXT    NOT NULL REFERENCES rooms(id),
    device_id        INTEGER NOT NULL REFERENCES devices(id),
    joined_after_seq INTEGER NOT NULL,
    left_at_seq      INTEGER,
    PRIMARY KEY (room_id, device_id, joined_after_seq)
);
CREATE INDEX room_members_device ON room_members(device_id, left_at_seq);

-- The ciphertext log: opaque MLS messages with a gap-free per-room seq.
CREATE TABLE messages (
    room_id       TEXT    NOT NULL REFERENCES rooms(id),
    seq           INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    epoch         INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    txn_id        TEXT    NOT NULL,
    ts_ms         INTEGER NOT NULL,
    data          BLOB    NOT NULL,
    PRIMARY KEY (room_id, seq),
    UNIQUE (room_id, sender_device, txn_id)
);

-- Welcomes, stored once and addressed to each added device.
CREATE TABLE welcomes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id    TEXT    NOT NULL REFERENCES rooms(id),
    commit_seq INTEGER NOT NULL,
    data       BLOB    NOT NULL
);

CREATE TABLE welcome_recipients (
    welcome_id INTEGER NOT NULL REFERENCES welcomes(id),
    device_id  INTEGER NOT NULL REFERENCES devices(id),
    PRIMARY KEY (welcome_id, device_id)
);
CREATE INDEX welcome_recipients_device ON welcome_recipients(device_id);
