//! Steadfast's web dashboard, rendered on the server: every page is a pure function from
//! the API's JSON answers (and a [`layout::Ctx`]: who is signed in, the kill switch, a
//! flash message) to HTML, and every chart is a pure function from numbers to SVG.
//!
//! - [`layout`]: the page frame (navigation, the always-visible kill switch, flash
//!   messages), forms and the small helpers pages share.
//! - [`chart`]: SVG charts with axes, units and legends: time series with a learned
//!   baseline band and alert spans, bars, the drill timeline, the journey waterfall and
//!   the service map.
//! - [`pages`]: one module per page.
//!
//! The server's `dashboard` module is the edge: it reads the session cookie, asks its own
//! API for the data (so every read and every action passes the same access checks, scopes,
//! four-eyes rules and audit log as any other client) and hands the answers here. No
//! script runs in the browser: filters and time ranges are links and GET forms, actions
//! are POST forms, live pages refresh themselves with `<meta http-equiv="refresh">`.

pub mod chart;
pub mod fmt;
pub mod layout;
pub mod pages;

/// The dashboard's stylesheet, served at `/ui/assets/app.css`.
pub const STYLESHEET: &str = include_str!("../assets/app.css");
