//! Drills: deliberate fund inconsistencies, injected and measured. Pure: every function
//! takes data and time as inputs and returns values; the server and the proxy do the IO.
//!
//! - [`spec`]: the drill spec (TOML or JSON) and its validation: target rules or link,
//!   mode, faults, limits, guards, TTL, expected detection.
//! - [`tamper`]: typed data tampering on a JSON body: a field path, a mutation, a business
//!   filter and hit limits, deciding deterministically which bodies a fault hits.
//! - [`forge`]: lossless forgeries: drill-marked pairs shaped from recent real records
//!   for 1:1 match rules, some tampered by the faults, the rest clean controls.
//! - [`lease`]: the drill's lifecycle as a lease whose TTL the injector enforces itself;
//!   stop is idempotent and the kill switch ends every lease.
//! - [`proxy`]: the fault-injection proxy's core (assigned drills with their own deadlines,
//!   per-request decisions, the error-rate guard) and its sync protocol with the server.
//! - [`schedule`]: cron schedules for routine drills and blackout windows.
//! - [`report`]: injected faults against observed breaks: discovered, missed, time to
//!   detect, false positives, as JSON and Markdown.

pub mod forge;
pub mod lease;
pub mod proxy;
pub mod report;
pub mod schedule;
pub mod spec;
pub mod tamper;

pub use forge::{forge, ForgeError, Forged, Plan, Planted};
pub use lease::{Lease, LeaseState, Stop};
pub use report::{Injection, Observed, Report};
pub use spec::{
    parse_spec, CorrectionSpec, DrillSpec, Fault, Filter, HitLimits, Mode, Mutation, SpecError, Vip,
};
pub use tamper::{Hit, Injector, TamperError};
