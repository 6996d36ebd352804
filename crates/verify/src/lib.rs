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

pub use breaks::{breaks_with_resolution, Break, BreakKind, Event, Evidence};
pub use engine::{Engine, EngineStats, Limits, Loc, StateCopy};
pub use rules::{parse_rules, RuleError, RuleSet};

/// Runs records through the engine in batch (the T1 backstop over exported files): the
/// engine's clock is the highest event time seen so far, advanced after every chunk, and
/// every deadline fires at the end. Same engine, same rules, same breaks.
pub fn verify_batch<'a>(
    rules: std::sync::Arc<RuleSet>,
    limits: Limits,
    records: impl IntoIterator<Item = &'a steadfast_model::FundRecord>,
    mut progress: impl FnMut(usize),
) -> Vec<Event> {
    /// Records between clock advances; small enough that deadlines fire close to on time.
    const CHUNK: usize = 1024;
    let mut engine = Engine::new(rules, limits);
    let mut out = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut watermark = steadfast_model::Millis::MIN;
    let feed = |engine: &mut Engine,
                chunk: &mut Vec<(Loc, &'a steadfast_model::FundRecord)>,
                watermark,
                out: &mut Vec<Event>| {
        let n = chunk.len();
        engine.ingest(watermark, chunk.drain(..), out);
        engine.tick(watermark, out);
        n
    };
    for (loc, r) in records.into_iter().enumerate() {
        watermark = watermark.max(r.event_time);
        chunk.push((loc as Loc, r));
        if chunk.len() == CHUNK {
            progress(feed(&mut engine, &mut chunk, watermark, &mut out));
        }
    }
    progress(feed(&mut engine, &mut chunk, watermark, &mut out));
    engine.flush(&mut out);
    out
}
