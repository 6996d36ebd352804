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
    let mut v = BatchVerifier::new(rules, limits);
    let mut records = records.into_iter();
    loop {
        // Copies a chunk at a time: the engine keeps what it needs, not the records.
        let chunk: Vec<_> = records
            .by_ref()
            .take(BatchVerifier::CHUNK)
            .cloned()
            .collect();
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        v.feed(chunk);
        progress(n);
    }
    v.finish()
}

/// [`verify_batch`] fed piece by piece, so that a file can be verified while it is still
/// being read and parsed, and no more of it is held than the piece at hand. Records are
/// taken in the order they are fed, in chunks of [`BatchVerifier::CHUNK`] between clock
/// advances however they are fed, so the breaks are the same as `verify_batch`'s.
pub struct BatchVerifier {
    engine: Engine,
    out: Vec<Event>,
    watermark: steadfast_model::Millis,
    loc: Loc,
    /// Records fed but not yet ingested (fewer than a chunk).
    pending: Vec<(Loc, steadfast_model::FundRecord)>,
}

impl BatchVerifier {
    /// Records between clock advances; small enough that deadlines fire close to on time.
    pub const CHUNK: usize = 1024;

    pub fn new(rules: std::sync::Arc<RuleSet>, limits: Limits) -> BatchVerifier {
        BatchVerifier {
            engine: Engine::new(rules, limits),
            out: Vec::new(),
            watermark: steadfast_model::Millis::MIN,
            loc: 0,
            pending: Vec::with_capacity(Self::CHUNK),
        }
    }

    /// Takes the next records, in order.
    pub fn feed(&mut self, records: Vec<steadfast_model::FundRecord>) {
        for r in records {
            self.watermark = self.watermark.max(r.event_time);
            self.pending.push((self.loc, r));
            self.loc += 1;
            if self.pending.len() == Self::CHUNK {
                self.ingest_pending();
            }
        }
    }

    fn ingest_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.engine.ingest(
            self.watermark,
            pending.iter().map(|(loc, r)| (*loc, r)),
            &mut self.out,
        );
        self.engine.tick(self.watermark, &mut self.out);
        self.pending = pending;
        self.pending.clear();
    }

    /// Records fed so far.
    pub fn records(&self) -> u64 {
        self.loc
    }

    /// End of input: ingests what is left, fires every deadline, and returns every event.
    pub fn finish(mut self) -> Vec<Event> {
        self.ingest_pending();
        self.engine.flush(&mut self.out);
        self.out
    }
}
