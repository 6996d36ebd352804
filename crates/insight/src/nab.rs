//! NAB scoring.
