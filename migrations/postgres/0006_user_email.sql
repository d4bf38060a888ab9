-- E-mail addresses for notices (e.g. "new results in a room"; never content):
-- an invitation keeps the address it was sent to until it is used, and the
-- account it creates keeps it. Logs and the audit log never carry it.
ALTER TABLE invitations ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN email TEXT;
-- Whether the user wants e-mail notices of new results: NULL = the role's
-- default (care managers yes, everyone else no).
ALTER TABLE users ADD COLUMN notify_results BIGINT;
