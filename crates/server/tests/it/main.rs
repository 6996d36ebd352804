//! The server over real HTTP: ingest, validation, limits, breaks workflow, webhooks,
//! OpenAPI coverage, authentication and restart.

mod api;
mod support;
