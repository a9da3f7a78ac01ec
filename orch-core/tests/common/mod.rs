//! Shared by the engine test files.

use std::time::Duration;

/// Polls `cond` every 10 ms (of tokio's clock, paused in these tests) until it holds; fails
/// after 120 s naming `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
