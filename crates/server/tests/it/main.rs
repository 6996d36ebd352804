//! The server over real HTTP: ingest, validation, limits, breaks workflow, webhooks,
//! OpenAPI coverage, access control, audit, four-eyes, runbooks, TLS and restart.

mod access;
mod api;
mod chain;
mod dashboard;
mod drills;
mod network;
mod runbooks;
mod support;
