//! Push between server processes that share one PostgreSQL database, over
//! NATS (core publish/subscribe). The database stays the source of truth:
//! NATS only tells the other processes "room R has seq N" (with the
//! pre-serialized frame, ciphertext only) so their WebSocket clients get it
//! live. A frame lost while NATS is down is not lost for clients: their
//! forwarders see the seq gap at the next message and read the missing ones
//! from the database, and every reconnecting client resumes from its seq.

use crate::fanout::{Delivery, Hub};
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Frames waiting to be published; beyond it they are dropped (counted) and
/// the other processes' clients catch up from the database.
const PUBLISH_QUEUE: usize = 4096;
const ROOM_SUBJECT: &str = "tonari.room";
const DEVICE_SUBJECT: &str = "tonari.device";

const OFF: u8 = 0;
const CONNECTED: u8 = 1;
const DISCONNECTED: u8 = 2;

/// One message between processes.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// The publishing process (its own messages are already delivered).
    o: String,
    /// Room messages: seq and devices the message removed.
    #[serde(default)]
    s: u64,
    #[serde(default)]
    r: Vec<i64>,
    /// The frame as sent to WebSocket clients.
    f: String,
}

enum Outgoing {
    Room(String, Delivery),
    Device(i64, Utf8Bytes),
}

pub struct Cluster {
    node: String,
    tx: Option<mpsc::Sender<Outgoing>>,
    state: Arc<AtomicU8>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Cluster {
    /// No other processes (SQLite, or no `nats_url`).
    pub fn single(metrics: Arc<crate::metrics::Metrics>) -> Cluster {
        Cluster {
            node: String::new(),
            tx: None,
            state: Arc::new(AtomicU8::new(OFF)),
            metrics,
        }
    }

    /// Connect to NATS (retrying in the background if it is down) and start
    /// the publisher and subscriber tasks, owned by `tasks` and stopped by
    /// `shutdown`.
    pub async fn connect(
        url: &str,
        hub: Arc<Hub>,
        metrics: Arc<crate::metrics::Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Cluster, String> {
        let node = {
            use rand::RngCore;
            let mut b = [0u8; 8];
            rand::rng().fill_bytes(&mut b);
            hex::encode(b)
        };
        let state = Arc::new(AtomicU8::new(DISCONNECTED));
        let events = state.clone();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            events.store(CONNECTED, Ordering::Release);
                            tracing::info!("NATS connected: live push between server processes is on");
                        }
                        async_nats::Event::Disconnected => {
                            events.store(DISCONNECTED, Ordering::Release);
                            tracing::warn!(
                                "NATS disconnected: live push between server processes is paused; clients catch up from the database"
                            );
                        }
                        other => tracing::debug!("NATS: {other}"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| format!("NATS ({url}): {e}"))?;
        let mut rooms = client
            .subscribe(format!("{ROOM_SUBJECT}.>"))
            .await
            .map_err(|e| format!("NATS subscribe: {e}"))?;
        let mut devices = client
            .subscribe(format!("{DEVICE_SUBJECT}.>"))
            .await
            .map_err(|e| format!("NATS subscribe: {e}"))?;
        let (tx, mut rx) = mpsc::channel::<Outgoing>(PUBLISH_QUEUE);

        // Publisher: frames of messages this process made durable.
        let publisher = client.clone();
        let me = node.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let out = tokio::select! {
                    _ = stop.cancelled() => break,
                    out = rx.recv() => match out { Some(o) => o, None => break },
                };
                let (subject, wire) = match out {
                    Outgoing::Room(room, d) => (
                        format!("{ROOM_SUBJECT}.{room}"),
                        Wire {
                            o: me.clone(),
                            s: d.seq,
                            r: d.removed,
                            f: d.frame.to_string(),
                        },
                    ),
                    Outgoing::Device(device, frame) => (
                        format!("{DEVICE_SUBJECT}.{device}"),
                        Wire {
                            o: me.clone(),
                            s: 0,
                            r: Vec::new(),
                            f: frame.to_string(),
                        },
                    ),
                };
                let Ok(bytes) = serde_json::to_vec(&wire) else {
                    continue;
                };
                if let Err(e) = publisher.publish(subject, bytes.into()).await {
                    tracing::debug!(error = %e, "NATS publish failed");
                }
            }
        });

        // Subscriber: frames other processes made durable, into our hub.
        let me = node.clone();
        tasks.spawn(async move {
            use futures_util::StreamExt as _;
            loop {
                let (msg, is_room) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = rooms.next() => match m { Some(m) => (m, true), None => break },
                    m = devices.next() => match m { Some(m) => (m, false), None => break },
                };
                let Ok(wire) = serde_json::from_slice::<Wire>(&msg.payload) else {
                    tracing::warn!("NATS: a message that is not ours was ignored");
                    continue;
                };
                if wire.o == me {
                    continue;
                }
                let Some(key) = msg.subject.as_str().rsplit('.').next() else {
                    continue;
                };
                if is_room {
                    hub.publish(
                        key,
                        Delivery {
                            seq: wire.s,
                            frame: Utf8Bytes::from(wire.f),
                            removed: wire.r,
                        },
                    );
                } else if let Ok(device) = key.parse::<i64>() {
                    hub.notify_device(device, Utf8Bytes::from(wire.f));
                }
            }
        });
        Ok(Cluster {
            node,
            tx: Some(tx),
            state,
            metrics,
        })
    }

    fn send(&self, out: Outgoing) {
        if let Some(tx) = &self.tx
            && tx.try_send(out).is_err()
        {
            self.metrics.queue_drop("cluster_publish");
        }
    }

    /// Tell the other processes about a durable room message.
    pub fn publish_room(&self, room_id: &str, seq: u64, frame: &Utf8Bytes, removed: &[i64]) {
        if self.tx.is_some() {
            self.send(Outgoing::Room(
                room_id.to_string(),
                Delivery {
                    seq,
                    frame: frame.clone(),
                    removed: removed.to_vec(),
                },
            ));
        }
    }

    /// Tell the other processes about a device event (welcome, key packages low).
    pub fn notify_device(&self, device_id: i64, frame: &Utf8Bytes) {
        if self.tx.is_some() {
            self.send(Outgoing::Device(device_id, frame.clone()));
        }
    }

    /// `off`, `connected` or `disconnected` (for /ready).
    pub fn status(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => "connected",
            DISCONNECTED => "disconnected",
            _ => "off",
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}
