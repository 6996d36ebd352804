//! NAB scorer against the published results.
