//! The services of the platform, one module each.

pub mod accounting;
pub mod billing;
pub mod core;
pub mod gateway;
pub mod notification;
pub mod wallet;
