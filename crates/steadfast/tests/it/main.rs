//! The `steadfast` binary end to end: the batch verifier, rule-file errors, and crash
//! safety of the real server process under `kill -9`.

mod cli;
mod crash;
