//! Group commit: one task owns all writes of accepted messages.
//!
//! Jobs queue in a bounded channel. The writer takes everything queued (up
//! to `max_batch`), writes it in ONE transaction (one fsync), and only then
//! runs each job's completion in queue order — so acknowledgements and
//! fan-out still happen strictly after durability and in seq order, while
//! concurrent senders share the cost of the fsync. The batch bound caps the
//! latency a job can wait behind others.
//!
//! If a transaction fails, every job in it and every job queued behind it
//! fails too: later jobs were validated against state that is now not on
//! disk. Their owners drop that state and reload it from the store.

use super::{Append, Store, StoreError};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a durable append yields.
#[derive(Debug, Clone, Copy)]
pub struct Durable {
    pub welcome_id: Option<i64>,
}

/// Called once the job is durable (or has failed), in queue order.
pub type Completion = Box<dyn FnOnce(Result<Durable, Arc<StoreError>>) + Send>;

pub struct Job {
    pub append: Append,
    pub done: Completion,
}

/// The sending side of the writer.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterStopped(pub Job);

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
        self.tx.send(job).await.map_err(|e| WriterStopped(e.0))
    }
}

/// Start the writer. It runs until `stop` is cancelled, then finishes every
/// queued job and returns.
pub fn spawn(
    store: Store,
    queue: usize,
    max_batch: usize,
    stop: CancellationToken,
) -> (Writer, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let handle = tokio::spawn(run(store, rx, max_batch.max(1), stop));
    (Writer { tx }, handle)
}

async fn run(store: Store, mut rx: mpsc::Receiver<Job>, max_batch: usize, stop: CancellationToken) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            _ = stop.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let appends: Vec<&Append> = batch.iter().map(|j| &j.append).collect();
        match store.append_batch(&appends).await {
            Ok(welcome_ids) => {
                tracing::trace!(jobs = batch.len(), "batch durable");
                for (job, welcome_id) in batch.drain(..).zip(welcome_ids) {
                    (job.done)(Ok(Durable { welcome_id }));
                }
            }
            Err(e) => {
                tracing::error!(jobs = batch.len(), error = %e, "batch write failed; failing queued jobs");
                let e = Arc::new(e);
                for job in batch.drain(..) {
                    (job.done)(Err(e.clone()));
                }
                while let Ok(job) = rx.try_recv() {
                    (job.done)(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("writer stopped");
}
