-- TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s). `enabled` once the
-- user confirmed a code; `last_step` blocks replaying a used code.
CREATE TABLE totp (
    user_id   BIGINT PRIMARY KEY REFERENCES users(id),
    secret    BYTEA  NOT NULL,
    enabled   BIGINT NOT NULL DEFAULT 0,
    last_step BIGINT NOT NULL DEFAULT -1
);
