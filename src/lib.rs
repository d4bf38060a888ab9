//! Tonari server: an end-to-end encrypted (MLS) messaging server for care
//! teams. See ARCHITECTURE.md for the map of modules and the invariants.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod app;
pub mod audit;
pub mod bots;
pub mod care;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod error;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod mailer;
pub mod metrics;
pub mod mls;
pub mod notify;
pub mod policy;
pub mod ratelimit;
pub mod store;
pub mod web;
pub mod ws;

pub use app::{App, AppError};
pub use config::Config;
