-- Idle logout: when a session was last used (updated at most once a minute).
ALTER TABLE sessions ADD COLUMN last_used_ms BIGINT NOT NULL DEFAULT 0;
UPDATE sessions SET last_used_ms = created_ms;
