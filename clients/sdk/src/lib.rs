//! Tonari client SDK: the only place where MLS client logic lives.
//!
//! A [`Client`] is one device. Its state (MLS groups, keys, room cursors and
//! the local message history) lives in one SQLite file in a device
//! directory. Typical use:
//!
//! ```no_run
//! # async fn demo() -> tonari_sdk::Result<()> {
//! use tonari_sdk::Client;
//! let dir = std::path::Path::new("/tmp/alice");
//! Client::register("http://127.0.0.1:8480", "alice", "correct horse").await?;
//! let alice = Client::login("http://127.0.0.1:8480", dir, "alice", "correct horse", "laptop").await?;
//! let room = alice.create_room().await?;
//! alice.invite(&room, "bob").await?;
//! alice.send_text(&room, "hello").await?;
//! let mut sub = alice.connect().await?;
//! while let Some(event) = sub.next().await {
//!     println!("{:?}", event?);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod care;
mod client;
mod content;
mod error;
mod http;
mod mls;
mod store;
mod subscription;
#[doc(hidden)]
pub mod testing;
mod testing_raw;

pub use client::{
    Client, Event, KEY_PACKAGE_TARGET, LocalRoom, MAX_CONFLICT_RETRIES, Sender, StoredMessage,
};
pub use content::Content;
pub use error::{Result, SdkError, ServerCode};
pub use store::status as room_status;
pub use subscription::Subscription;
pub use tonari_wire;
pub use tonari_wire::{Ack, DeviceIdentity, ErrorCode, KeyPackageCount, RegisterResponse};
