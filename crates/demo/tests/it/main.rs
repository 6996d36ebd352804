//! End-to-end tests of the demo platform with a Steadfast server in the same process.

mod browser;
mod dashboard;
mod insight;
mod lossy;
mod platform;
mod support;
