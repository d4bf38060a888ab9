//! Group commit: one thread owns all writes of accepted messages.
//!
//! Jobs queue in a bounded channel. The writer takes everything queued (up
//! to `max_batch`), writes it in ONE transaction (one fsync), and only then
//! runs each job's completion in queue order — so acknowledgements and
//! fan-out still happen strictly after durability and in seq order, while
//! concurrent senders share the cost of the fsync. The batch bound caps the
//! latency a job can wait behind others.
//!
//! The writer runs on its own thread with its own SQLite connection and
//! cached prepared statements: the hot path makes no async round trips.
//!
//! If a transaction fails, every job in it and every job queued behind it
//! fails too: later jobs were validated against state that is now not on
//! disk. Their owners drop that state and reload it from the store.

use super::{Append, Store, StoreError, kind_str, to_i64};
use crate::audit::{AuditEvent, GENESIS, entry_hash};
use rusqlite::{Connection, OptionalExtension, params};
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

/// Open the writer's connection and start its thread.
pub fn spawn(
    store: &Store,
    queue: usize,
    max_batch: usize,
) -> Result<(Writer, tokio::task::JoinHandle<()>), StoreError> {
    let conn = Connection::open(&store.path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(32);
    let (tx, rx) = mpsc::channel(queue.max(1));
    let handle = tokio::task::spawn_blocking(move || run(conn, rx, max_batch.max(1)));
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

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, max_batch: usize) {
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
        match write_batch(&mut conn, &batch, &audits) {
            Ok(welcome_ids) => {
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

/// Write a batch in one transaction; the welcome id of each job.
///
/// The jobs of one room must have consecutive seqs following the room's
/// stored `last_seq`; otherwise nothing is written.
fn write_batch(
    conn: &mut Connection,
    batch: &[Job],
    audits: &[AuditJob],
) -> Result<Vec<Option<i64>>, StoreError> {
    // Per room: (first seq, last seq, epoch after the last one).
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
    // The audit chain: events of the jobs (membership changes), then the
    // standalone ones, each linked to the one before.
    let events = batch
        .iter()
        .flat_map(|j| j.append.audit.iter())
        .chain(audits.iter().map(|a| &a.event));
    append_audit(&tx, events)?;
    tx.commit()?;
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
