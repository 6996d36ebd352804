//! The data chain's vocabulary: OTLP requests (traces, metrics, logs; protobuf or JSON,
//! gzip or not) decoded with the maintained protocol crates and normalised into typed
//! rows, with limits on everything, and those rows as Arrow record batches.
//!
//! Pure: bytes in, rows and counts out. The server does the IO and the store the files.
//!
//! - [`otlp`]: decoding, size limits, partial success.
//! - [`rows`]: the row types and attribute normalisation (old and new OpenTelemetry
//!   semantic conventions; `enduser.id` → `user.id`).
//! - [`arrow_rows`]: rows as Arrow batches with typed columns for the hot keys.
//! - [`graph`]: the service map, kept per minute as spans arrive.
//! - [`journey`]: a user's traces summarised, with where their time went.
//! - [`rum`]: browser and app events (page views, fetches, resources, errors, vitals).
//! - [`users`]: the users seen, VIP first, kept as spans arrive.
//! - [`sampling`]: per-trace sampling at ingest that never drops a VIP's trace.
//! - [`nginx`]: Nginx JSON access logs (the documented `log_format`).
//! - [`flow`]: flow rows and their Community ID; [`netflow`]: NetFlow v9 / IPFIX decoding.

pub mod arrow_rows;
pub mod flow;
pub mod graph;
pub mod journey;
pub mod netflow;
pub mod nginx;
pub mod otlp;
pub mod rows;
pub mod rum;
pub mod sampling;
pub mod users;

pub use otlp::{decode, Decoded, Encoding, OtlpError, Signal};
pub use rows::{FundRow, LogRow, MetricRow, Rows, SpanRow};
