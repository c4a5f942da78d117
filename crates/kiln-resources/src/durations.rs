//! A histogram of durations made of atomics, cheap enough for the request
//! path: kiln's request durations and the pools' checkout waits, rendered
//! by kiln at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A count per bucket (upper bounds in nanoseconds, ascending, plus one
/// past the last) and the sum: a record is two relaxed atomic adds, with
/// no lock and no allocation.
#[derive(Debug)]
pub struct Durations {
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// What a [`Durations`] held at one instant, as Prometheus renders a
/// histogram.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurationCounts {
    /// Each bucket's upper bound in nanoseconds with the durations at or
    /// below it (cumulative), ascending.
    pub buckets: Vec<(u64, u64)>,
    /// Every duration recorded (the `+Inf` bucket).
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_nanos: u64,
}

impl Durations {
    /// An empty histogram with these upper bounds, in nanoseconds,
    /// ascending.
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.is_sorted(), "bucket bounds ascend");
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Most durations fall in the first buckets: a scan from the bottom.
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now; the total is the buckets' own, so they always agree.
    pub fn read(&self) -> DurationCounts {
        let mut below = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(&bound, count)| {
                below += count.load(Ordering::Relaxed);
                (bound, below)
            })
            .collect();
        let above = self.counts[self.bounds.len()].load(Ordering::Relaxed);
        DurationCounts {
            buckets,
            count: below + above,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_cumulative_and_the_total_includes_the_overflow() {
        let durations = Durations::new(&[1_000, 1_000_000]);
        durations.record(Duration::from_nanos(1_000));
        durations.record(Duration::from_micros(2));
        durations.record(Duration::from_secs(1));
        assert_eq!(
            durations.read(),
            DurationCounts {
                buckets: vec![(1_000, 1), (1_000_000, 2)],
                count: 3,
                sum_nanos: 1_000_003_000,
            }
        );
    }
}
