//! Root-cause ranking.
