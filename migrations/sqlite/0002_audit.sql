-- Append-only, hash-chained audit log of security events. Entries hold ids
-- and event types, never message content. hash = SHA-256 over prev_hash and
-- the entry's fields (see src/audit.rs); entry 1 chains from 32 zero bytes.
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    ts_ms        INTEGER NOT NULL,
    event        TEXT    NOT NULL,
    actor_user   INTEGER,
    actor_device INTEGER,
    subject      TEXT    NOT NULL,
    details      TEXT    NOT NULL,
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL
);
