//! The limits the gRPC servers apply to the requests they serve.

use std::time::Duration;

/// Limits every cluster server applies.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests in flight per connection.
    pub concurrency_per_connection: usize,
    /// Longest a unary request may take.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency_per_connection: 256,
            timeout: Duration::from_secs(30),
        }
    }
}
