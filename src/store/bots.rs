//! The bots' own store: `bots.sqlite3` in `data_dir`, a separate SQLite file
//! with its own migrations (`migrations/bots/`). It holds the bot accounts'
//! credentials and the clinical data that ingestion received (lab result
//! sets, problems, medications, allergies) with their idempotency keys and
//! whether a lab set was posted or is still held. The delivery layer never
//! opens this file; the main database never holds clinical data.

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::str::FromStr as _;

pub type BotStoreResult<T> = Result<T, sqlx::Error>;

/// Kinds of stored items.
pub mod kind {
    pub const LAB: &str = "lab";
    pub const PROBLEM: &str = "problem";
    pub const MEDICATION: &str = "medication";
    pub const ALLERGY: &str = "allergy";
}

/// An item to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub idem_key: String,
    pub kind: &'static str,
    pub patient_network_id: String,
    /// JSON (a `LabCard` for labs, a JSON string for the others).
    pub payload: String,
}

/// A stored item.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: i64,
    pub source: String,
    pub idem_key: String,
    pub kind: String,
    pub patient_network_id: String,
    pub payload: String,
    pub received_ms: i64,
}

/// What storing a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Ids of the items newly stored.
    pub inserted: Vec<i64>,
    /// Items already stored before (same idempotency key).
    pub duplicates: usize,
}

#[derive(Clone)]
pub struct BotStore {
    pool: SqlitePool,
}

impl BotStore {
    pub async fn open(path: &Path) -> BotStoreResult<BotStore> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/bots").run(&pool).await?;
        Ok(BotStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn bot_password(&self, name: &str) -> BotStoreResult<Option<String>> {
        sqlx::query_scalar("SELECT password FROM bot_accounts WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn save_bot_password(
        &self,
        name: &str,
        password: &str,
        now_ms: i64,
    ) -> BotStoreResult<()> {
        sqlx::query("INSERT INTO bot_accounts (name, password, created_ms) VALUES (?, ?, ?)")
            .bind(name)
            .bind(password)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Store a batch from one source in one transaction; items whose
    /// idempotency key is already stored are skipped and counted.
    pub async fn insert_items(
        &self,
        source: &str,
        items: &[NewItem],
        now_ms: i64,
    ) -> BotStoreResult<Stored> {
        let mut tx = self.pool.begin().await?;
        let mut out = Stored::default();
        for item in items {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO items (source, idem_key, kind, patient_network_id, payload, received_ms)
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idem_key) DO NOTHING RETURNING id",
            )
            .bind(source)
            .bind(&item.idem_key)
            .bind(item.kind)
            .bind(&item.patient_network_id)
            .bind(&item.payload)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            match id {
                Some(id) => out.inserted.push(id),
                None => out.duplicates += 1,
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    fn row(r: sqlx::sqlite::SqliteRow) -> ItemRow {
        ItemRow {
            id: r.get(0),
            source: r.get(1),
            idem_key: r.get(2),
            kind: r.get(3),
            patient_network_id: r.get(4),
            payload: r.get(5),
            received_ms: r.get(6),
        }
    }

    /// Lab sets not posted yet (held or new), oldest first.
    pub async fn unposted_labs(&self, limit: u32) -> BotStoreResult<Vec<ItemRow>> {
        let rows = sqlx::query(
            "SELECT id, source, idem_key, kind, patient_network_id, payload, received_ms
             FROM items WHERE kind = 'lab' AND posted_ms IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Self::row).collect())
    }

    /// Unposted lab sets of one source (the held-results report).
    pub async fn held_of_source(&self, source: &str) -> BotStoreResult<Vec<ItemRow>> {
        let rows = sqlx::query(
            "SELECT id, source, idem_key, kind, patient_network_id, '', received_ms
             FROM items WHERE kind = 'lab' AND posted_ms IS NULL AND source = ? ORDER BY id LIMIT 1000",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Self::row).collect())
    }

    pub async fn mark_posted(&self, id: i64, room_id: &str, now_ms: i64) -> BotStoreResult<()> {
        sqlx::query("UPDATE items SET posted_ms = ?, posted_room = ? WHERE id = ?")
            .bind(now_ms)
            .bind(room_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Items of a patient of one kind, newest first.
    pub async fn items_of_patient(
        &self,
        network_id: &str,
        kind: &str,
        limit: u32,
    ) -> BotStoreResult<Vec<ItemRow>> {
        let rows = sqlx::query(
            "SELECT id, source, idem_key, kind, patient_network_id, payload, received_ms
             FROM items WHERE patient_network_id = ? AND kind = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(network_id)
        .bind(kind)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Self::row).collect())
    }

    /// Number of stored items (tests: "nothing stored").
    pub async fn count_items(&self) -> BotStoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&self.pool)
            .await
    }
}

impl super::Store {
    /// Give a bot account a new password (its credentials in the bots'
    /// store were lost, e.g. a fresh `data_dir` next to a kept database).
    /// Only accounts of role `bot` are touched. Returns whether one was.
    pub async fn reset_bot_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> super::StoreResult<bool> {
        let res =
            sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2 AND role = 'bot'")
                .bind(password_hash)
                .bind(username)
                .execute(&self.pool)
                .await?;
        Ok(res.rows_affected() == 1)
    }
}
