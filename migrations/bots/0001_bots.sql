-- The bots' own database (bots.sqlite3 in data_dir). Clinical data lives here
-- only: the delivery tables (tonari.sqlite3) never hold it, and the delivery
-- layer never opens this file.

-- Credentials of the bot accounts (created by the server at startup).
CREATE TABLE bot_accounts (
    name TEXT PRIMARY KEY,
    password TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

-- One row per ingested item: a lab result set (kind 'lab', payload a LabCard
-- as JSON) or a summary fact ('problem', 'medication', 'allergy', payload a
-- JSON string). `idem_key` makes ingestion idempotent: the same FHIR resource
-- id+version or HL7 message control id from the same source is stored once.
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    idem_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    patient_network_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    -- Lab sets: when the lab bot posted the card (NULL while held).
    posted_ms INTEGER,
    posted_room TEXT
);
CREATE INDEX items_patient ON items (patient_network_id, kind, id);
CREATE INDEX items_unposted ON items (kind, posted_ms);
