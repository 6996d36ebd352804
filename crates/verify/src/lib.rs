//! Fund verification: the rules between the systems on a fund link, and the engine that
//! checks them as records arrive.
//!
//! - [`rules::parse_rules`] turns a TOML rule file into a validated [`RuleSet`].
//! - [`Engine`] consumes [`FundRecord`]s in arrival order and ticks of engine time, and
//!   emits [`Event`]s: new [`Break`]s and resolutions of earlier ones.
//! - [`reference`] is a deliberately simple batch reconciler the engine is tested against.
//!
//! The engine is pure: it never reads a clock, a file or the network. Time is an input,
//! so the same records and ticks always give the same breaks, which is what makes the
//! write-ahead log a complete description of the engine's state.
//!
//! [`FundRecord`]: steadfast_model::FundRecord

mod breaks;
mod engine;
mod packed;
pub mod reference;
pub mod rules;

pub use breaks::{Break, BreakKind, Event, Evidence};
pub use engine::{Engine, EngineStats, Limits, Loc};
pub use rules::{parse_rules, RuleError, RuleSet};
