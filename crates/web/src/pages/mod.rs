//! One module per page. Each takes the [`Ctx`](crate::layout::Ctx) and the API answers
//! the server fetched for it, and returns the whole page.

pub mod breaks;
pub mod control;
pub mod drills;
pub mod incidents;
pub mod journeys;
pub mod overview;
pub mod services;
