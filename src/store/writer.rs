//! Group commit: one thread owns all writes of accepted messages.
//!
//! Jobs queue in a bounded channel. The writer takes everything queued (up
//! to `max_batch`), writes it in ONE transaction (one fsync), and only then
//! runs each job's completion in queue order — so acknowledgements and
//! fan-out still happen strictly after durability and in seq order, while
//! concurrent senders share the cost of the fsync. The batch bound caps the
//! latency a job can wait behind others.
//!
//! The writer runs on its own thread. On SQLite it has its own connection
//! and cached prepared statements (the hot path makes no async round trips);
//! on PostgreSQL it runs the same transaction through the sqlx pool.
//!
//! If a transaction fails, every job in it and every job queued behind it
//! fails too: later jobs were validated against state that is now not on
//! disk. Their owners drop that state and reload it from the store.

use super::{Append, Database, Store, StoreError, kind_str, to_i64};
use crate::audit::{AuditEvent, GENESIS, entry_hash};
use rusqlite::{Connection, OptionalExtension, params};
use sqlx::AnyPool;
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a durable append yields.
#[derive(Debug, Clone, Copy)]
pub struct Durable {
    pub welcome_id: Option<i64>,
}

/// Called once the job is durable (or has failed), in queue order, on the
/// writer thread: it must not block.
pub type Completion = Box<dyn FnOnce(Result<Durable, Arc<StoreError>>) + Send>;

pub struct Job {
    pub append: Append,
    pub done: Completion,
}

/// A security event to chain into the audit log; `done` hears when durable.
pub struct AuditJob {
    pub event: AuditEvent,
    pub done: Option<tokio::sync::oneshot::Sender<bool>>,
}

enum Msg {
    Job(Box<Job>),
    Audit(Box<AuditJob>),
    Stop,
}

/// The sending side of the writer.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterStopped(pub Option<Job>);

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Job(room {}, seq {})",
            self.append.message.room_id, self.append.message.seq
        )
    }
}

impl Writer {
    /// Queue a job; waits while the queue is full (back-pressure).
    pub async fn submit(&self, job: Job) -> Result<(), WriterStopped> {
        self.tx
            .send(Msg::Job(Box::new(job)))
            .await
            .map_err(|e| match e.0 {
                Msg::Job(job) => WriterStopped(Some(*job)),
                Msg::Audit(_) | Msg::Stop => WriterStopped(None),
            })
    }

    /// Append a security event to the audit chain; `true` once durable.
    pub async fn audit(&self, event: AuditEvent) -> bool {
        let (done, heard) = tokio::sync::oneshot::channel();
        let job = AuditJob {
            event,
            done: Some(done),
        };
        if self.tx.send(Msg::Audit(Box::new(job))).await.is_err() {
            return false;
        }
        heard.await.unwrap_or(false)
    }

    /// Ask the writer to finish what is queued and stop.
    pub async fn stop(&self) {
        let _ = self.tx.send(Msg::Stop).await;
    }
}

/// Where a batch goes: one transaction per call.
trait BatchSink: Send {
    /// Write the jobs and audit events in ONE transaction; the welcome id of
    /// each job. The jobs of one room must have consecutive seqs following
    /// the room's stored `last_seq`; otherwise nothing is written.
    fn write(&mut self, batch: &[Job], audits: &[AuditJob])
    -> Result<Vec<Option<i64>>, StoreError>;
}

struct SqliteSink(Connection);

impl BatchSink for SqliteSink {
    fn write(
        &mut self,
        batch: &[Job],
        audits: &[AuditJob],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        write_batch(&mut self.0, batch, audits)
    }
}

/// PostgreSQL: the same transaction through sqlx, driven from the writer
/// thread with the runtime handle.
struct PgSink {
    pool: AnyPool,
    rt: tokio::runtime::Handle,
}

impl BatchSink for PgSink {
    fn write(
        &mut self,
        batch: &[Job],
        audits: &[AuditJob],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        self.rt.block_on(write_batch_pg(&self.pool, batch, audits))
    }
}

/// Open the writer's connection and start its thread.
pub fn spawn(
    store: &Store,
    queue: usize,
    max_batch: usize,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(Writer, tokio::task::JoinHandle<()>), StoreError> {
    let sink: Box<dyn BatchSink> = match store.database() {
        Database::Sqlite(path) => {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.set_prepared_statement_cache_capacity(32);
            Box::new(SqliteSink(conn))
        }
        Database::Postgres(_) => Box::new(PgSink {
            pool: store.pool().clone(),
            rt: tokio::runtime::Handle::current(),
        }),
    };
    let (tx, rx) = mpsc::channel(queue.max(1));
    let handle = tokio::task::spawn_blocking(move || run(sink, rx, max_batch.max(1), metrics));
    Ok((Writer { tx }, handle))
}

/// The last audit entry: (seq, hash).
type AuditHead = (u64, [u8; 32]);

fn audit_head(conn: &Connection) -> Result<AuditHead, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((seq, hash)) => (
            u64::try_from(seq).unwrap_or(0),
            hash.try_into()
                .map_err(|_| StoreError::Corrupt("audit hash is not 32 bytes"))?,
        ),
        None => (0, GENESIS),
    })
}

fn run(
    mut sink: Box<dyn BatchSink>,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut audits: Vec<AuditJob> = Vec::new();
    let mut stopping = false;
    loop {
        if batch.is_empty() && audits.is_empty() {
            let first = if stopping {
                rx.try_recv().ok()
            } else {
                rx.blocking_recv()
            };
            match first {
                Some(Msg::Job(job)) => batch.push(*job),
                Some(Msg::Audit(a)) => audits.push(*a),
                Some(Msg::Stop) => {
                    stopping = true;
                    continue;
                }
                None => break,
            }
        }
        while batch.len() + audits.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(*job),
                Ok(Msg::Audit(a)) => audits.push(*a),
                Ok(Msg::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        match sink.write(&batch, &audits) {
            Ok(welcome_ids) => {
                metrics
                    .write_batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.write_batch_size.observe(batch.len() as f64);
                tracing::trace!(
                    jobs = batch.len(),
                    us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "batch durable"
                );
                for (job, welcome_id) in batch.drain(..).zip(welcome_ids) {
                    (job.done)(Ok(Durable { welcome_id }));
                }
                for a in audits.drain(..) {
                    if let Some(done) = a.done {
                        let _ = done.send(true);
                    }
                }
            }
            Err(e) => {
                tracing::error!(jobs = batch.len(), error = %e, "batch write failed; failing queued jobs");
                let e = Arc::new(e);
                for job in batch.drain(..) {
                    (job.done)(Err(e.clone()));
                }
                // Dropping `done` tells the waiter the event was not recorded.
                audits.clear();
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Job(job) => (job.done)(Err(e.clone())),
                        Msg::Audit(_) => {}
                        Msg::Stop => stopping = true,
                    }
                }
            }
        }
    }
    tracing::debug!("writer stopped");
}

/// Per room of a batch: (room, first seq, last seq, epoch after the last).
fn room_ranges(batch: &[Job]) -> Result<Vec<(&str, u64, u64, u64)>, StoreError> {
    let mut rooms: Vec<(&str, u64, u64, u64)> = Vec::new();
    for job in batch {
        let (a, m) = (&job.append, &job.append.message);
        match rooms.iter_mut().find(|r| r.0 == m.room_id) {
            Some(r) if r.2 + 1 == m.seq => {
                r.2 = m.seq;
                r.3 = a.epoch_after;
            }
            Some(_) => return Err(StoreError::Corrupt("seqs of a room are not consecutive")),
            None => rooms.push((&m.room_id, m.seq, m.seq, a.epoch_after)),
        }
    }
    Ok(rooms)
}

/// The audit events of a batch: those of the jobs (membership changes),
/// then the standalone ones.
fn batch_events<'a>(batch: &'a [Job], audits: &'a [AuditJob]) -> Vec<&'a AuditEvent> {
    batch
        .iter()
        .flat_map(|j| j.append.audit.iter())
        .chain(audits.iter().map(|a| &a.event))
        .collect()
}

/// SQLite: write a batch in one IMMEDIATE transaction; the welcome id of each job.
fn write_batch(
    conn: &mut Connection,
    batch: &[Job],
    audits: &[AuditJob],
) -> Result<Vec<Option<i64>>, StoreError> {
    let rooms = room_ranges(batch)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut update = tx.prepare_cached(
            "UPDATE rooms SET last_seq = ?1, epoch = ?2 WHERE id = ?3 AND last_seq = ?4",
        )?;
        for (room_id, first, last, epoch) in &rooms {
            let n = update.execute(params![
                to_i64(*last),
                to_i64(*epoch),
                room_id,
                to_i64(*first) - 1
            ])?;
            if n != 1 {
                return Err(StoreError::Corrupt("room seq moved under the room lock"));
            }
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (room_id, seq, kind, epoch, sender_device, txn_id, ts_ms, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for job in batch {
            let m = &job.append.message;
            insert.execute(params![
                m.room_id,
                to_i64(m.seq),
                kind_str(m.kind),
                to_i64(m.epoch),
                m.sender_device,
                m.txn_id,
                m.ts_ms,
                m.data,
            ])?;
        }
    }
    let mut welcome_ids = Vec::with_capacity(batch.len());
    for job in batch {
        welcome_ids.push(write_changes(&tx, &job.append)?);
    }
    // The audit chain, each entry linked to the one before.
    append_audit(&tx, batch_events(batch, audits).into_iter())?;
    tx.commit()?;
    Ok(welcome_ids)
}

/// Any lock id: serializes audit appends across processes on PostgreSQL.
const AUDIT_LOCK: i64 = 0x746f_6e61_7269; // "tonari"

/// PostgreSQL: the same transaction as [`write_batch`], through sqlx.
async fn write_batch_pg(
    pool: &AnyPool,
    batch: &[Job],
    audits: &[AuditJob],
) -> Result<Vec<Option<i64>>, StoreError> {
    let rooms = room_ranges(batch)?;
    let mut tx = pool.begin().await?;
    for (room_id, first, last, epoch) in &rooms {
        let n = sqlx::query(
            "UPDATE rooms SET last_seq = $1, epoch = $2 WHERE id = $3 AND last_seq = $4",
        )
        .bind(to_i64(*last))
        .bind(to_i64(*epoch))
        .bind(*room_id)
        .bind(to_i64(*first) - 1)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::Corrupt("room seq moved under the room lock"));
        }
    }
    let mut welcome_ids = Vec::with_capacity(batch.len());
    for job in batch {
        let a = &job.append;
        let m = &a.message;
        let seq = to_i64(m.seq);
        sqlx::query(
            "INSERT INTO messages (room_id, seq, kind, epoch, sender_device, txn_id, ts_ms, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&m.room_id)
        .bind(seq)
        .bind(kind_str(m.kind))
        .bind(to_i64(m.epoch))
        .bind(m.sender_device)
        .bind(&m.txn_id)
        .bind(m.ts_ms)
        .bind(&m.data)
        .execute(&mut *tx)
        .await?;
        for (key, value) in &a.state_changes {
            match value {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO room_state (room_id, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT(room_id, key) DO UPDATE SET value = excluded.value",
                    )
                    .bind(&m.room_id)
                    .bind(key)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM room_state WHERE room_id = $1 AND key = $2")
                        .bind(&m.room_id)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for device in &a.removed_devices {
            sqlx::query(
                "UPDATE room_members SET left_at_seq = $1
                 WHERE room_id = $2 AND device_id = $3 AND left_at_seq IS NULL",
            )
            .bind(seq)
            .bind(&m.room_id)
            .bind(*device)
            .execute(&mut *tx)
            .await?;
        }
        for device in &a.added_devices {
            sqlx::query(
                "INSERT INTO room_members (room_id, device_id, joined_after_seq) VALUES ($1, $2, $3)",
            )
            .bind(&m.room_id)
            .bind(*device)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        let mut welcome_id = None;
        if let Some((data, devices)) = &a.welcome {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO welcomes (room_id, commit_seq, data) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(&m.room_id)
            .bind(seq)
            .bind(data)
            .fetch_one(&mut *tx)
            .await?;
            welcome_id = Some(id);
            for device in devices {
                sqlx::query(
                    "INSERT INTO welcome_recipients (welcome_id, device_id) VALUES ($1, $2)",
                )
                .bind(id)
                .bind(*device)
                .execute(&mut *tx)
                .await?;
            }
        }
        welcome_ids.push(welcome_id);
    }
    let events = batch_events(batch, audits);
    if !events.is_empty() {
        // One appender at a time, across every server process.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let mut head: AuditHead = match row {
            Some(r) => (
                u64::try_from(r.get::<i64, _>(0)).unwrap_or(0),
                r.get::<Vec<u8>, _>(1)
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("audit hash is not 32 bytes"))?,
            ),
            None => (0, GENESIS),
        };
        for event in events {
            let seq = head.0 + 1;
            let ts_ms = crate::accounts::now_ms();
            let hash = entry_hash(&head.1, seq, ts_ms, event);
            sqlx::query(
                "INSERT INTO audit_log (seq, ts_ms, event, actor_user, actor_device, subject, details, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(to_i64(seq))
            .bind(ts_ms)
            .bind(&event.event)
            .bind(event.actor_user)
            .bind(event.actor_device)
            .bind(&event.subject)
            .bind(&event.details)
            .bind(head.1.to_vec())
            .bind(hash.to_vec())
            .execute(&mut *tx)
            .await?;
            head = (seq, hash);
        }
    }
    tx.commit().await?;
    Ok(welcome_ids)
}

/// Chain events onto the audit log inside `tx`. The head is read inside the
/// (IMMEDIATE) transaction, so another process appending to the same
/// database (e.g. `tonari admin-invite` next to a running server) keeps the
/// chain intact.
pub fn append_audit<'a>(
    tx: &rusqlite::Transaction<'_>,
    events: impl Iterator<Item = &'a AuditEvent>,
) -> Result<(), StoreError> {
    let mut events = events.peekable();
    if events.peek().is_none() {
        return Ok(());
    }
    let mut head = audit_head(tx)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_log (seq, ts_ms, event, actor_user, actor_device, subject, details, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for event in events {
            let seq = head.0 + 1;
            let ts_ms = crate::accounts::now_ms();
            let hash = entry_hash(&head.1, seq, ts_ms, event);
            insert.execute(params![
                to_i64(seq),
                ts_ms,
                event.event,
                event.actor_user,
                event.actor_device,
                event.subject,
                event.details,
                head.1.as_slice(),
                hash.as_slice(),
            ])?;
            head = (seq, hash);
        }
    }
    Ok(())
}

/// What a message changes besides the log: group state, membership, welcome.
fn write_changes(tx: &rusqlite::Transaction<'_>, a: &Append) -> Result<Option<i64>, StoreError> {
    let m = &a.message;
    let seq = to_i64(m.seq);
    for (key, value) in &a.state_changes {
        match value {
            Some(v) => {
                tx.prepare_cached(
                    "INSERT INTO room_state (room_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(room_id, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![m.room_id, key, v])?;
            }
            None => {
                tx.prepare_cached("DELETE FROM room_state WHERE room_id = ?1 AND key = ?2")?
                    .execute(params![m.room_id, key])?;
            }
        }
    }
    for device in &a.removed_devices {
        tx.prepare_cached(
            "UPDATE room_members SET left_at_seq = ?1
             WHERE room_id = ?2 AND device_id = ?3 AND left_at_seq IS NULL",
        )?
        .execute(params![seq, m.room_id, device])?;
    }
    for device in &a.added_devices {
        tx.prepare_cached(
            "INSERT INTO room_members (room_id, device_id, joined_after_seq) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![m.room_id, device, seq])?;
    }
    let mut welcome_id = None;
    if let Some((data, devices)) = &a.welcome {
        tx.prepare_cached("INSERT INTO welcomes (room_id, commit_seq, data) VALUES (?1, ?2, ?3)")?
            .execute(params![m.room_id, seq, data])?;
        let id = tx.last_insert_rowid();
        welcome_id = Some(id);
        for device in devices {
            tx.prepare_cached(
                "INSERT INTO welcome_recipients (welcome_id, device_id) VALUES (?1, ?2)",
            )?
            .execute(params![id, device])?;
        }
    }
    Ok(welcome_id)
}
