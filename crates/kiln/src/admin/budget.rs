//! One budget of failed authentications for the whole admin API, so that a
//! token cannot be guessed at network speed. Global rather than per peer: on
//! a loopback port every client has the same address.
//!
//! A GCRA token bucket in one atomic: `BURST` failures at once, then one per
//! `INTERVAL`. A request that succeeds only reads the atomic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures allowed at once.
const BURST: u32 = 10;
/// Then one more failure allowed per interval (10 a second).
const INTERVAL: Duration = Duration::from_millis(100);

/// The failures' shared budget.
#[derive(Debug)]
pub(crate) struct FailureBudget {
    start: Instant,
    /// When the budget is full again (the GCRA "theoretical arrival time"),
    /// in nanoseconds since `start`.
    full_at: AtomicU64,
}

impl FailureBudget {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            full_at: AtomicU64::new(0),
        }
    }

    /// `None` while another attempt may be checked, else how long until one
    /// may.
    pub(crate) fn exhausted(&self) -> Option<Duration> {
        let now = self.now();
        let full_at = self.full_at.load(Ordering::Relaxed);
        let allowed_at = full_at.saturating_sub(tolerance());
        (allowed_at > now).then(|| Duration::from_nanos(allowed_at - now))
    }

    /// Spends one failure.
    pub(crate) fn spend(&self) {
        let now = self.now();
        let interval = INTERVAL.as_nanos() as u64;
        let _ = self
            .full_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |full_at| {
                Some(full_at.max(now) + interval)
            });
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// How far ahead of now the budget may be spent: `BURST` failures.
fn tolerance() -> u64 {
    (INTERVAL * (BURST - 1)).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_nothing_until_it_refills() {
        let budget = FailureBudget::new();
        for _ in 0..BURST {
            assert_eq!(budget.exhausted(), None);
            budget.spend();
        }
        let wait = budget.exhausted().expect("the burst is spent");
        assert!(wait <= INTERVAL, "{wait:?}");
    }
}
