//! In-memory fan-out of accepted messages to connected devices.
//!
//! Each room has a bounded `broadcast` channel of pre-serialized frames: one
//! allocation per message, shared by every recipient (no per-recipient copy).
//! Each connected device has a bounded channel for device events (welcomes,
//! key-package warnings). Nothing here is durable: the store is the source of
//! truth and a receiver that falls behind re-reads from it.

use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};

/// One accepted message, ready to send.
#[derive(Debug)]
pub struct Delivery {
    pub seq: u64,
    /// The serialized `ServerFrame::Message`.
    pub frame: Utf8Bytes,
    /// Devices this message (a commit) removed from the room: it is their last one.
    pub removed: Vec<i64>,
}

pub struct Hub {
    rooms: Mutex<HashMap<String, broadcast::Sender<std::sync::Arc<Delivery>>>>,
    devices: Mutex<HashMap<i64, HashMap<u64, mpsc::Sender<Utf8Bytes>>>>,
    next_conn: AtomicU64,
    room_capacity: usize,
    device_capacity: usize,
}

impl Hub {
    pub fn new(room_capacity: usize, device_capacity: usize) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            room_capacity: room_capacity.max(1),
            device_capacity: device_capacity.max(1),
        }
    }

    pub fn subscribe_room(&self, room_id: &str) -> broadcast::Receiver<std::sync::Arc<Delivery>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .entry(room_id.to_string())
            .or_insert_with(|| broadcast::channel(self.room_capacity).0)
            .subscribe()
    }

    /// Push to every live subscriber of the room; never blocks.
    pub fn publish(&self, room_id: &str, delivery: Delivery) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = rooms.get(room_id)
            && tx.send(std::sync::Arc::new(delivery)).is_err()
        {
            // Nobody listens any more.
            rooms.remove(room_id);
        }
    }

    /// Register a connection of a device; returns its id and event receiver.
    pub fn register_device(&self, device_id: i64) -> (u64, mpsc::Receiver<Utf8Bytes>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.device_capacity);
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.entry(device_id).or_default().insert(conn, tx);
        (conn, rx)
    }

    pub fn unregister_device(&self, device_id: i64, conn: u64) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = devices.get_mut(&device_id) {
            conns.remove(&conn);
            if conns.is_empty() {
                devices.remove(&device_id);
            }
        }
    }

    /// Send a device event to every connection of the device. A connection
    /// whose queue is full is dropped from the hub: its receiver sees the
    /// channel close and the connection is closed as a slow consumer.
    pub fn notify_device(&self, device_id: i64, frame: Utf8Bytes) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = devices.get_mut(&device_id) {
            conns.retain(|_, tx| tx.try_send(frame.clone()).is_ok());
        }
    }
}
