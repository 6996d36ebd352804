//! Baselines, alerts and root-cause analysis, as pure functions of data and time.
//!
//! - [`baseline`]: a streaming per-series detector (seasonal periods, a robust seasonal
//!   baseline, robust scores, anomaly likelihood, hysteresis, change-point re-baselining).
//! - [`alert`]: alert rules (baseline condition, static bound, traffic guard), alert
//!   state with deduplication, and incidents merged along the service map.
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring (windows, probation, sigmoid
//!   weighting, profiles, normalisation), so detectors are compared on published terms.
//! - [`rca`]: ranking of likely root causes on a service graph from the metrics around an
//!   incident, with an explanation.
//!
//! Nothing here reads a clock, a file or the network: time and data are inputs.

pub mod alert;
pub mod baseline;
pub mod nab;
pub mod rca;
