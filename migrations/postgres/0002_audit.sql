-- Append-only, hash-chained audit log of security events (see
-- migrations/sqlite/0002_audit.sql and src/audit.rs).
CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,
    ts_ms        BIGINT NOT NULL,
    event        TEXT   NOT NULL,
    actor_user   BIGINT,
    actor_device BIGINT,
    subject      TEXT   NOT NULL,
    details      TEXT   NOT NULL,
    prev_hash    BYTEA  NOT NULL,
    hash         BYTEA  NOT NULL
);
