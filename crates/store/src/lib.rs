//! Durable storage. The only crate that writes to disk or calls fsync.
//!
//! - [`Wal`]: the write-ahead log of ingest batches and engine ticks. An entry is
//!   durable once [`Wal::sync`] returns; only then is it acknowledged or processed.
//! - [`checkpoint`]: engine state at a WAL position, written atomically, so restart
//!   replays only the log's tail.
//! - [`BreakStore`]: breaks, their workflow history and the webhook outbox, in SQLite.
//! - [`ControlStore`]: tokens, users, approvals, settings and the hash-chained audit log.
//! - [`IncidentStore`]: incidents as last described and their notification outbox.

mod breaks;
pub mod chain;
pub mod checkpoint;
pub mod control;
pub mod incidents;
mod wal;

pub use breaks::{
    BreakFilter, BreakRow, BreakStore, HistoryRow, OutboxItem, Status, StoreError, PAGE_MAX,
};
pub use control::{ControlError, ControlStore};
pub use incidents::{IncidentError, IncidentStore};
pub use wal::{Wal, WalEntry, WalError, WalItem};
