//! Streaming per-series baseline and anomaly detector.
