//! Behaviour of the verification engine, rule by rule, and the engine against the batch
//! reference model.

mod engine;
mod model;
mod support;
