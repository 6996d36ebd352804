//! Integration tests of `steadfast-insight` (one binary, modules per area).

mod nab;
mod rca;
