//! The store: the only module that contains SQL.
//!
//! SQLite in WAL mode with `synchronous=FULL`: a transaction that returned
//! `Ok` is on disk (fsync'd), which is what "acknowledged only once durable"
//! rests on. Every function here is one transaction or one statement.

pub mod bots;
pub mod care;
pub mod mls_state;
pub mod notify;
pub mod writer;

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};
use std::path::PathBuf;
use tonari_wire::{MessageKind, Role};

pub use mls_state::{RoomStateKv, StateChange};

/// A failure of the database itself (never caused by client input).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database (writer): {0}")]
    Writer(#[from] rusqlite::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(&'static str),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub id: i64,
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub name: String,
    pub signature_key: Vec<u8>,
}

pub(crate) fn parse_role(s: &str) -> StoreResult<Role> {
    Role::parse(s).ok_or(StoreError::Corrupt("unknown role"))
}

#[derive(Debug, Clone)]
pub struct RoomRow {
    pub id: String,
    pub epoch: u64,
    pub last_seq: u64,
    pub state: Vec<(String, Vec<u8>)>,
    /// Devices that are members now.
    pub members: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub room_id: String,
    pub seq: u64,
    pub kind: MessageKind,
    pub epoch: u64,
    pub sender_device: i64,
    pub txn_id: String,
    pub ts_ms: i64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct WelcomeRow {
    pub id: i64,
    pub room_id: String,
    pub commit_seq: u64,
    pub data: Vec<u8>,
}

/// Everything one accepted message changes, written in one transaction.
#[derive(Debug)]
pub struct Append {
    pub message: StoredMessage,
    /// The room's epoch after the message.
    pub epoch_after: u64,
    pub state_changes: Vec<StateChange>,
    pub added_devices: Vec<i64>,
    pub removed_devices: Vec<i64>,
    /// Welcome bytes and the devices it is for.
    pub welcome: Option<(Vec<u8>, Vec<i64>)>,
    /// Security events to chain into the audit log with the message.
    pub audit: Vec<crate::audit::AuditEvent>,
}

/// Where a device may read a room: seqs in `(joined_after, left_at]`.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub joined_after: u64,
    pub left_at: Option<u64>,
}

pub(crate) fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Application => "application",
        MessageKind::Proposal => "proposal",
        MessageKind::Commit => "commit",
    }
}

fn parse_kind(s: &str) -> StoreResult<MessageKind> {
    match s {
        "application" => Ok(MessageKind::Application),
        "proposal" => Ok(MessageKind::Proposal),
        "commit" => Ok(MessageKind::Commit),
        _ => Err(StoreError::Corrupt("unknown message kind")),
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Which database a server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (WAL, `synchronous=FULL`), created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user@host:port/db`).
    Postgres(String),
}

impl Database {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// For messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => redact_url(url),
        }
    }

    fn any_url(&self, read_only: bool) -> String {
        match self {
            Database::Sqlite(p) => {
                let mode = if read_only { "ro" } else { "rwc" };
                format!("sqlite://{}?mode={mode}", p.display())
            }
            Database::Postgres(url) => url.clone(),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    db: Database,
}

/// SQLite settings every connection gets (sqlx's Any driver takes only a URL).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

impl Store {
    /// Open (creating a SQLite file if needed) and apply the migrations of
    /// the backend (`migrations/sqlite` or `migrations/postgres`).
    pub async fn open(db: &Database) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        if let Database::Sqlite(path) = db
            && let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let sqlite = !db.is_postgres();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::raw_sql(SQLITE_PRAGMAS).execute(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&db.any_url(false))
            .await?;
        match db {
            Database::Sqlite(_) => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Database::Postgres(_) => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Store {
            pool,
            db: db.clone(),
        })
    }

    /// Open an existing database read-only (no migrations), e.g. to verify it.
    pub async fn open_read_only(db: &Database) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&db.any_url(true))
            .await?;
        Ok(Store {
            pool,
            db: db.clone(),
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A trivial query: is the database there?
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ------------------------------------------------------------ accounts

    pub async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRow>> {
        let row =
            sqlx::query("SELECT id, username, password_hash, role FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(UserRow {
                id: r.get(0),
                username: r.get(1),
                password_hash: r.get(2),
                role: parse_role(r.get(3))?,
            })
        })
        .transpose()
    }

    fn device_from_row(r: &AnyRow) -> StoreResult<DeviceRow> {
        Ok(DeviceRow {
            id: r.get(0),
            user_id: r.get(1),
            username: r.get(2),
            role: parse_role(r.get(3))?,
            name: r.get(4),
            signature_key: r.get(5),
        })
    }

    pub async fn device(&self, device_id: i64) -> StoreResult<Option<DeviceRow>> {
        let row = sqlx::query("SELECT d.id, d.user_id, u.username, u.role, d.name, d.signature_key FROM devices d JOIN users u ON u.id = d.user_id WHERE d.id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::device_from_row).transpose()
    }

    pub async fn devices_of_user(&self, user_id: i64) -> StoreResult<Vec<DeviceRow>> {
        let rows = sqlx::query("SELECT d.id, d.user_id, u.username, u.role, d.name, d.signature_key FROM devices d JOIN users u ON u.id = d.user_id WHERE d.user_id = $1 ORDER BY d.id")
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::device_from_row).collect()
    }

    /// Register a device; `None` when the signature key is already registered.
    pub async fn create_device(
        &self,
        user_id: i64,
        name: &str,
        signature_key: &[u8],
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO devices (user_id, name, signature_key, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT(signature_key) DO NOTHING RETURNING id",
        )
        .bind(user_id)
        .bind(name)
        .bind(signature_key)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: i64,
        device_id: i64,
        now_ms: i64,
        expires_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, device_id, created_ms, expires_ms, last_used_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms)
        .bind(expires_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The (user, device) of a live session: not expired and used after
    /// `idle_since_ms`. Marks it used now.
    pub async fn session(
        &self,
        token_hash: &[u8],
        now_ms: i64,
        idle_since_ms: i64,
    ) -> StoreResult<Option<(i64, i64)>> {
        let row = sqlx::query(
            "UPDATE sessions SET last_used_ms = $1
             WHERE token_hash = $2 AND expires_ms > $3 AND last_used_ms > $4
             RETURNING user_id, device_id",
        )
        .bind(now_ms)
        .bind(token_hash)
        .bind(now_ms)
        .bind(idle_since_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ------------------------------------------------------------ TOTP

    /// (secret, enabled) of a user's TOTP, if enrolment started.
    pub async fn totp(&self, user_id: i64) -> StoreResult<Option<(Vec<u8>, bool)>> {
        let row = sqlx::query("SELECT secret, enabled FROM totp WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get::<i64, _>(1) != 0)))
    }

    /// Start (or restart) enrolment; `false` if TOTP is already on.
    pub async fn totp_begin(&self, user_id: i64, secret: &[u8]) -> StoreResult<bool> {
        let res = sqlx::query(
            "INSERT INTO totp (user_id, secret) VALUES ($1, $2)
             ON CONFLICT(user_id) DO UPDATE SET secret = excluded.secret, last_step = -1
             WHERE totp.enabled = 0",
        )
        .bind(user_id)
        .bind(secret)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Consume a time step (a code) once: `false` if it, or a later one, was
    /// used already. With `enable`, also turns TOTP on.
    pub async fn totp_use_step(&self, user_id: i64, step: u64, enable: bool) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE totp SET last_step = $1, enabled = CASE WHEN $2 THEN 1 ELSE enabled END
             WHERE user_id = $3 AND last_step < $4",
        )
        .bind(to_i64(step))
        .bind(enable)
        .bind(user_id)
        .bind(to_i64(step))
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    // ------------------------------------------------------------ key packages

    /// Store key packages; `false` (and nothing stored) if one is a duplicate.
    pub async fn insert_key_packages(
        &self,
        device_id: i64,
        items: &[(Vec<u8>, Vec<u8>)],
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        for (hash_ref, data) in items {
            let res = sqlx::query(
                "INSERT INTO key_packages (device_id, hash_ref, data) VALUES ($1, $2, $3)
                 ON CONFLICT(hash_ref) DO NOTHING",
            )
            .bind(device_id)
            .bind(hash_ref)
            .bind(data)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn count_key_packages(&self, device_id: i64) -> StoreResult<u32> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_packages WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Take (delete and return) the oldest key package of each device, in one
    /// transaction: two concurrent claims never get the same key package.
    /// Returns (device, Some(bytes)) or (device, None) when it had none left.
    pub async fn claim_key_packages(
        &self,
        device_ids: &[i64],
    ) -> StoreResult<Vec<(i64, Option<Vec<u8>>)>> {
        // SQLite runs one writer at a time; PostgreSQL skips rows another
        // claim has locked (without it, a concurrent claim of the same row
        // would find it gone and report the device exhausted).
        let sql = if self.db.is_postgres() {
            "DELETE FROM key_packages WHERE id =
               (SELECT id FROM key_packages WHERE device_id = $1 ORDER BY id LIMIT 1
                FOR UPDATE SKIP LOCKED)
             RETURNING data"
        } else {
            "DELETE FROM key_packages WHERE id =
               (SELECT id FROM key_packages WHERE device_id = $1 ORDER BY id LIMIT 1)
             RETURNING data"
        };
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(device_ids.len());
        for &device_id in device_ids {
            let data: Option<Vec<u8>> = sqlx::query_scalar(sql)
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
            out.push((device_id, data));
        }
        tx.commit().await?;
        Ok(out)
    }

    // ------------------------------------------------------------ rooms

    /// Create a room with its initial public state; `false` if the id exists.
    pub async fn create_room(
        &self,
        room_id: &str,
        epoch: u64,
        creator_device: i64,
        now_ms: i64,
        patient_network_id: Option<&str>,
        state: &[(String, Vec<u8>)],
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "INSERT INTO rooms (id, epoch, last_seq, creator_device, created_ms, patient_network_id) VALUES ($1, $2, 0, $3, $4, $5)
             ON CONFLICT(id) DO NOTHING",
        )
        .bind(room_id)
        .bind(to_i64(epoch))
        .bind(creator_device)
        .bind(now_ms)
        .bind(patient_network_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (key, value) in state {
            sqlx::query("INSERT INTO room_state (room_id, key, value) VALUES ($1, $2, $3)")
                .bind(room_id)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO room_members (room_id, device_id, joined_after_seq) VALUES ($1, $2, 0)",
        )
        .bind(room_id)
        .bind(creator_device)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The stored last seq of a room (cheap freshness check).
    pub async fn room_last_seq(&self, room_id: &str) -> StoreResult<Option<u64>> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM rooms WHERE id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.map(to_u64))
    }

    pub async fn load_room(&self, room_id: &str) -> StoreResult<Option<RoomRow>> {
        let Some(row) = sqlx::query("SELECT epoch, last_seq FROM rooms WHERE id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let state = sqlx::query("SELECT key, value FROM room_state WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<Vec<u8>, _>(1)))
            .collect();
        let members = sqlx::query_scalar(
            "SELECT device_id FROM room_members WHERE room_id = $1 AND left_at_seq IS NULL
             ORDER BY device_id",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(RoomRow {
            id: room_id.to_string(),
            epoch: to_u64(row.get(0)),
            last_seq: to_u64(row.get(1)),
            state,
            members,
        }))
    }

    /// Rooms the device is a member of now: (room id, epoch, last seq).
    pub async fn rooms_of_device(&self, device_id: i64) -> StoreResult<Vec<(String, u64, u64)>> {
        let rows = sqlx::query(
            "SELECT r.id, r.epoch, r.last_seq FROM rooms r
             JOIN room_members m ON m.room_id = r.id
             WHERE m.device_id = $1 AND m.left_at_seq IS NULL ORDER BY r.created_ms, r.id",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), to_u64(r.get(1)), to_u64(r.get(2))))
            .collect())
    }

    /// The device's membership periods in a room, oldest first.
    pub async fn memberships(&self, room_id: &str, device_id: i64) -> StoreResult<Vec<Membership>> {
        let rows = sqlx::query(
            "SELECT joined_after_seq, left_at_seq FROM room_members
             WHERE room_id = $1 AND device_id = $2 ORDER BY joined_after_seq",
        )
        .bind(room_id)
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Membership {
                joined_after: to_u64(r.get(0)),
                left_at: r.get::<Option<i64>, _>(1).map(to_u64),
            })
            .collect())
    }

    fn message_from_row(r: &AnyRow) -> StoreResult<StoredMessage> {
        Ok(StoredMessage {
            room_id: r.get(0),
            seq: to_u64(r.get(1)),
            kind: parse_kind(r.get::<&str, _>(2))?,
            epoch: to_u64(r.get(3)),
            sender_device: r.get(4),
            txn_id: r.get(5),
            ts_ms: r.get(6),
            data: r.get(7),
        })
    }

    pub async fn find_txn(
        &self,
        room_id: &str,
        sender_device: i64,
        txn_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        let row = sqlx::query("SELECT room_id, seq, kind, epoch, sender_device, txn_id, ts_ms, data FROM messages WHERE room_id = $1 AND sender_device = $2 AND txn_id = $3")
        .bind(room_id)
        .bind(sender_device)
        .bind(txn_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::message_from_row).transpose()
    }

    /// Every (sender device, txn id) of a room.
    pub async fn txn_ids(&self, room_id: &str) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT sender_device, txn_id FROM messages WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Messages with `after < seq <= until`, oldest first, at most `limit`.
    pub async fn messages_between(
        &self,
        room_id: &str,
        after: u64,
        until: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query("SELECT room_id, seq, kind, epoch, sender_device, txn_id, ts_ms, data FROM messages WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4")
        .bind(room_id)
        .bind(to_i64(after))
        .bind(to_i64(until))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::message_from_row).collect()
    }

    /// The whole audit log, oldest first.
    pub async fn audit_entries(&self) -> StoreResult<Vec<crate::audit::AuditEntry>> {
        let rows = sqlx::query(
            "SELECT seq, ts_ms, event, actor_user, actor_device, subject, details, prev_hash, hash
             FROM audit_log ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| crate::audit::AuditEntry {
                seq: to_u64(r.get(0)),
                ts_ms: r.get(1),
                event: crate::audit::AuditEvent {
                    event: r.get(2),
                    actor_user: r.get(3),
                    actor_device: r.get(4),
                    subject: r.get(5),
                    details: r.get(6),
                },
                prev_hash: r.get(7),
                hash: r.get(8),
            })
            .collect())
    }

    pub async fn welcomes_for(&self, device_id: i64) -> StoreResult<Vec<WelcomeRow>> {
        let rows = sqlx::query(
            "SELECT w.id, w.room_id, w.commit_seq, w.data FROM welcomes w
             JOIN welcome_recipients r ON r.welcome_id = w.id
             WHERE r.device_id = $1 ORDER BY w.id",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| WelcomeRow {
                id: r.get(0),
                room_id: r.get(1),
                commit_seq: to_u64(r.get(2)),
                data: r.get(3),
            })
            .collect())
    }

    /// Drop a welcome for a device; `false` if it was not addressed to it.
    pub async fn delete_welcome(&self, welcome_id: i64, device_id: i64) -> StoreResult<bool> {
        let res =
            sqlx::query("DELETE FROM welcome_recipients WHERE welcome_id = $1 AND device_id = $2")
                .bind(welcome_id)
                .bind(device_id)
                .execute(&self.pool)
                .await?;
        Ok(res.rows_affected() == 1)
    }
}
