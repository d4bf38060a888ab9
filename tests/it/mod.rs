pub mod bad_input;
pub mod canary;
pub mod common;
pub mod concurrency;
pub mod crash;
pub mod directory;
pub mod restart;
pub mod rooms;
