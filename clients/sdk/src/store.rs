//! Local state: one SQLite file per device holding the openmls state and the
//! SDK's own tables.

use crate::error::{Result, SdkError};
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// File name of the device database inside the device directory.
pub const DB_FILE: &str = "tonari.sqlite3";

/// serde_json codec for the openmls SQLite storage.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// A short-lived OpenMLS provider borrowing the connection.
pub struct Provider<'a> {
    pub crypto: &'a RustCrypto,
    pub storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> Provider<'a> {
    pub fn new(crypto: &'a RustCrypto, conn: &'a Connection) -> Self {
        Provider {
            crypto,
            storage: SqliteStorageProvider::new(conn),
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tonari_device (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    server_url TEXT NOT NULL,
    username TEXT NOT NULL,
    device_name TEXT NOT NULL,
    user_id INTEGER,
    device_id INTEGER,
    token TEXT,
    signature_public BLOB NOT NULL,
    role TEXT
);
CREATE TABLE IF NOT EXISTS tonari_rooms (
    room_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    leave_epoch INTEGER
);
CREATE TABLE IF NOT EXISTS tonari_messages (
    room_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender_user_id INTEGER NOT NULL,
    sender_device_id INTEGER NOT NULL,
    content TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (room_id, seq)
);
CREATE TABLE IF NOT EXISTS tonari_outbox (
    txn_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    message BLOB NOT NULL,
    welcome BLOB,
    content TEXT,
    state TEXT NOT NULL,
    seq INTEGER,
    epoch INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tonari_outbox_room ON tonari_outbox (room_id, kind, state);
-- v2: with the role (care-team model).
CREATE TABLE IF NOT EXISTS tonari_directory_v2 (
    device_id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    device_name TEXT NOT NULL,
    signature_key BLOB NOT NULL,
    role TEXT NOT NULL
);
";

/// Open (or create) the device database and bring its schema up to date.
pub fn open_db(dir: &Path) -> Result<Connection> {
    std::fs::create_dir_all(dir).map_err(|e| SdkError::Storage(format!("device dir: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Best effort: the directory holds private keys.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let mut conn = Connection::open(dir.join(DB_FILE))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    {
        let mut storage = SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn);
        storage
            .run_migrations()
            .map_err(|e| SdkError::Storage(format!("migrations: {e}")))?;
    }
    conn.execute_batch(SCHEMA)?;
    // Device directories from before roles: add the role column.
    if conn
        .prepare("SELECT role FROM tonari_device LIMIT 0")
        .is_err()
    {
        conn.execute_batch("ALTER TABLE tonari_device ADD COLUMN role TEXT")?;
    }
    Ok(conn)
}

/// The device row.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub server_url: String,
    pub username: String,
    pub device_name: String,
    pub user_id: Option<i64>,
    pub device_id: Option<i64>,
    pub token: Option<String>,
    pub signature_public: Vec<u8>,
    /// The account's role (known after the first login).
    pub role: Option<tonari_wire::Role>,
}

pub fn load_device(conn: &Connection) -> Result<Option<DeviceRow>> {
    Ok(conn
        .query_row(
            "SELECT server_url, username, device_name, user_id, device_id, token, signature_public, role
             FROM tonari_device WHERE id = 1",
            [],
            |r| {
                Ok(DeviceRow {
                    server_url: r.get(0)?,
                    username: r.get(1)?,
                    device_name: r.get(2)?,
                    user_id: r.get(3)?,
                    device_id: r.get(4)?,
                    token: r.get(5)?,
                    signature_public: r.get(6)?,
                    role: r
                        .get::<_, Option<String>>(7)?
                        .and_then(|s| tonari_wire::Role::parse(&s)),
                })
            },
        )
        .optional()?)
}

pub fn save_device(conn: &Connection, d: &DeviceRow) -> Result<()> {
    conn.execute(
        "INSERT INTO tonari_device (id, server_url, username, device_name, user_id, device_id, token, signature_public, role)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(id) DO UPDATE SET server_url = ?1, username = ?2, device_name = ?3,
            user_id = ?4, device_id = ?5, token = ?6, signature_public = ?7, role = ?8",
        params![
            d.server_url,
            d.username,
            d.device_name,
            d.user_id,
            d.device_id,
            d.token,
            d.signature_public,
            d.role.map(|r| r.as_str())
        ],
    )?;
    Ok(())
}

pub fn set_token(conn: &Connection, token: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE tonari_device SET token = ?1 WHERE id = 1",
        params![token],
    )?;
    Ok(())
}

/// Status of a room in the local state.
pub mod status {
    /// A member; messages are processed.
    pub const ACTIVE: &str = "active";
    /// A leave proposal was sent; waiting for someone to commit it.
    pub const LEAVING: &str = "leaving";
    /// This device left (a commit removed it after its leave request).
    pub const LEFT: &str = "left";
    /// Another member removed this device.
    pub const REMOVED: &str = "removed";
    /// A commit or welcome failed the directory check; the room is frozen.
    pub const UNTRUSTED: &str = "untrusted";
}

#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room_id: String,
    pub last_seq: u64,
    pub status: String,
    pub leave_epoch: Option<u64>,
}

fn room_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomRow> {
    Ok(RoomRow {
        room_id: r.get(0)?,
        last_seq: r.get::<_, i64>(1)?.max(0) as u64,
        status: r.get(2)?,
        leave_epoch: r.get::<_, Option<i64>>(3)?.map(|e| e.max(0) as u64),
    })
}

pub fn room(conn: &Connection, room_id: &str) -> Result<Option<RoomRow>> {
    Ok(conn
        .query_row(
            "SELECT room_id, last_seq, status, leave_epoch FROM tonari_rooms WHERE room_id = ?1",
            params![room_id],
            room_from_row,
        )
        .optional()?)
}

pub fn rooms(conn: &Connection) -> Result<Vec<RoomRow>> {
    let mut stmt = conn.prepare(
        "SELECT room_id, last_seq, status, leave_epoch FROM tonari_rooms ORDER BY room_id",
    )?;
    let rows = stmt.query_map([], room_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn insert_room(conn: &Connection, room_id: &str, last_seq: u64, status: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO tonari_rooms (room_id, last_seq, status) VALUES (?1, ?2, ?3)
         ON CONFLICT(room_id) DO UPDATE SET last_seq = ?2, status = ?3, leave_epoch = NULL",
        params![room_id, last_seq as i64, status],
    )?;
    Ok(())
}

pub fn set_cursor(conn: &Connection, room_id: &str, seq: u64) -> Result<()> {
    conn.execute(
        "UPDATE tonari_rooms SET last_seq = ?2 WHERE room_id = ?1",
        params![room_id, seq as i64],
    )?;
    Ok(())
}

pub fn set_status(conn: &Connection, room_id: &str, status: &str) -> Result<()> {
    conn.execute(
        "UPDATE tonari_rooms SET status = ?2 WHERE room_id = ?1",
        params![room_id, status],
    )?;
    Ok(())
}

pub fn set_leaving(conn: &Connection, room_id: &str, epoch: u64) -> Result<()> {
    conn.execute(
        "UPDATE tonari_rooms SET status = ?2, leave_epoch = ?3 WHERE room_id = ?1",
        params![room_id, status::LEAVING, epoch as i64],
    )?;
    Ok(())
}

pub fn insert_message(
    conn: &Connection,
    room_id: &str,
    seq: u64,
    user_id: i64,
    device_id: i64,
    content_json: &str,
    ts_ms: i64,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO tonari_messages (room_id, seq, sender_user_id, sender_device_id, content, ts_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![room_id, seq as i64, user_id, device_id, content_json, ts_ms],
    )?;
    Ok(())
}

/// The stored message at a seq: (sender, content json, ts_ms).
pub fn message_at(
    conn: &Connection,
    room_id: &str,
    seq: u64,
) -> Result<Option<(crate::client::Who, String, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT sender_user_id, sender_device_id, content, ts_ms FROM tonari_messages
         WHERE room_id = ?1 AND seq = ?2",
    )?;
    let mut rows = stmt.query(params![room_id, seq as i64])?;
    match rows.next()? {
        Some(r) => Ok(Some(((r.get(0)?, r.get(1)?), r.get(2)?, r.get(3)?))),
        None => Ok(None),
    }
}

/// (seq, user_id, device_id, username (if cached), content json, ts_ms)
pub type MessageRow = (u64, i64, i64, Option<String>, String, i64);

pub fn messages(conn: &Connection, room_id: &str) -> Result<Vec<MessageRow>> {
    let mut stmt = conn.prepare(
        "SELECT m.seq, m.sender_user_id, m.sender_device_id, d.username, m.content, m.ts_ms
         FROM tonari_messages m LEFT JOIN tonari_directory_v2 d ON d.device_id = m.sender_device_id
         WHERE m.room_id = ?1 ORDER BY m.seq",
    )?;
    let rows = stmt.query_map(params![room_id], |r| {
        Ok((
            r.get::<_, i64>(0)?.max(0) as u64,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// An outgoing message remembered until it is acknowledged (and, for
/// application messages, so that the own echo can be shown).
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub txn_id: String,
    pub room_id: String,
    pub kind: String,
    pub message: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    pub content: Option<String>,
    pub state: String,
    pub seq: Option<u64>,
    pub epoch: u64,
}

pub mod outbox_state {
    pub const PENDING: &str = "pending";
    pub const ACKED: &str = "acked";
    pub const FAILED: &str = "failed";
}

pub fn insert_outbox(conn: &Connection, o: &OutboxRow) -> Result<()> {
    conn.execute(
        "INSERT INTO tonari_outbox (txn_id, room_id, kind, message, welcome, content, state, seq, epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            o.txn_id,
            o.room_id,
            o.kind,
            o.message,
            o.welcome,
            o.content,
            o.state,
            o.seq.map(|s| s as i64),
            o.epoch as i64
        ],
    )?;
    Ok(())
}

pub fn set_outbox_state(
    conn: &Connection,
    txn_id: &str,
    state: &str,
    seq: Option<u64>,
) -> Result<()> {
    conn.execute(
        "UPDATE tonari_outbox SET state = ?2, seq = COALESCE(?3, seq) WHERE txn_id = ?1",
        params![txn_id, state, seq.map(|s| s as i64)],
    )?;
    Ok(())
}

fn outbox_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        txn_id: r.get(0)?,
        room_id: r.get(1)?,
        kind: r.get(2)?,
        message: r.get(3)?,
        welcome: r.get(4)?,
        content: r.get(5)?,
        state: r.get(6)?,
        seq: r.get::<_, Option<i64>>(7)?.map(|s| s.max(0) as u64),
        epoch: r.get::<_, i64>(8)?.max(0) as u64,
    })
}

const OUTBOX_COLS: &str = "txn_id, room_id, kind, message, welcome, content, state, seq, epoch";

/// The latest not-failed handshake (commit or proposal) of a room.
pub fn latest_open_handshake(
    conn: &Connection,
    room_id: &str,
    kind: &str,
) -> Result<Option<OutboxRow>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {OUTBOX_COLS} FROM tonari_outbox WHERE room_id = ?1 AND kind = ?2
                 AND state != 'failed' ORDER BY rowid DESC LIMIT 1"
            ),
            params![room_id, kind],
            outbox_from_row,
        )
        .optional()?)
}

/// Find an own application message by its exact bytes.
pub fn outbox_by_message(
    conn: &Connection,
    room_id: &str,
    message: &[u8],
) -> Result<Option<OutboxRow>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {OUTBOX_COLS} FROM tonari_outbox WHERE room_id = ?1 AND message = ?2 LIMIT 1"
            ),
            params![room_id, message],
            outbox_from_row,
        )
        .optional()?)
}

pub fn cache_device(conn: &Connection, d: &tonari_wire::DeviceInfo) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO tonari_directory_v2 (device_id, user_id, username, device_name, signature_key, role)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            d.device_id,
            d.user_id,
            d.username,
            d.device_name,
            d.signature_key.0,
            d.role.as_str()
        ],
    )?;
    Ok(())
}

pub fn cached_device(conn: &Connection, device_id: i64) -> Result<Option<tonari_wire::DeviceInfo>> {
    Ok(conn
        .query_row(
            "SELECT device_id, user_id, username, device_name, signature_key, role FROM tonari_directory_v2 WHERE device_id = ?1",
            params![device_id],
            |r| {
                let (device_id, user_id, username, device_name, key, role): (
                    i64,
                    i64,
                    String,
                    String,
                    Vec<u8>,
                    String,
                ) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?);
                // An unknown role (newer server) is simply not cached.
                Ok(
                    tonari_wire::Role::parse(&role).map(|role| tonari_wire::DeviceInfo {
                        device_id,
                        user_id,
                        username,
                        role,
                        device_name,
                        signature_key: tonari_wire::B64(key),
                    }),
                )
            },
        )
        .optional()?
        .flatten())
}
