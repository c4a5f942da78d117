//! A future within a time limit, naming what timed out.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Something that did not finish within its limit: what it was, and the
/// limit. Displays as `worker 1 not ready within 30s`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} not ready within {}", humantime::format_duration(*.limit))]
#[non_exhaustive]
pub struct TimedOut {
    /// What was still running: `worker 1`, `resource primes`.
    pub what: String,
    /// The limit it had.
    pub limit: Duration,
}

/// Runs `future` for at most `limit`; past it, drops the future and
/// answers [`TimedOut`] naming `what` (made into text only then).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let slow = tokio::time::sleep(Duration::from_secs(60));
/// let err = kiln_resources::within(Duration::from_millis(1), "the cache", slow)
///     .await
///     .unwrap_err();
/// assert_eq!(err.to_string(), "the cache not ready within 1ms");
/// # }
/// ```
///
/// # Errors
///
/// [`TimedOut`] when `limit` passed first.
pub async fn within<T>(
    limit: Duration,
    what: impl fmt::Display,
    future: impl Future<Output = T>,
) -> Result<T, TimedOut> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| TimedOut {
            what: what.to_string(),
            limit,
        })
}
