//! What the database-path servers (`dbq --server kiln|axum|actix`) share:
//! the one query every `GET /q` runs, and a histogram of how long
//! `pool.get()` waited, read (and reset) through `GET /wait`; and the
//! deadpool-postgres pool the baselines build.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Serialize;

/// Histogram buckets: one per µs below 1,024 µs, then one per 1,024 µs up
/// to ~1 s; the last bucket holds everything slower.
const FINE: usize = 1024;
const BUCKETS: usize = 2 * FINE;

static WAITS: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];

/// A deadpool-postgres pool as a user builds one (fast recycling, checkouts
/// and connects waiting 2 s at most), empty: nothing connects yet.
///
/// # Errors
///
/// When `url` is not a PostgreSQL URL.
pub fn deadpool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        url.parse::<tokio_postgres::Config>()?,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .runtime(Runtime::Tokio1)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .build()?)
}

/// `pool.get()`, then the prepared `SELECT 1` on that connection: the whole
/// database work of one `GET /q`. Records the checkout's wait.
///
/// # Errors
///
/// The checkout's or the query's error, as text.
pub async fn select_one(pool: &Pool) -> Result<i32, String> {
    let started = Instant::now();
    let client = pool.get().await.map_err(|e| e.to_string())?;
    record(started.elapsed());
    let statement = client
        .prepare_cached("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(&statement, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn record(wait: Duration) {
    let us = usize::try_from(wait.as_micros()).unwrap_or(usize::MAX);
    let bucket = if us < FINE {
        us
    } else {
        (FINE + us / FINE).min(BUCKETS - 1)
    };
    WAITS[bucket].fetch_add(1, Ordering::Relaxed);
}

/// Checkout waits since the last call: count and nearest-rank percentiles
/// in µs (a bucket's lower bound).
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Waits {
    /// Checkouts recorded.
    pub count: u64,
    /// Median wait, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
}

/// Reads and resets the checkout-wait histogram.
pub fn take_waits() -> Waits {
    let counts: Vec<u64> = WAITS.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
    let count: u64 = counts.iter().sum();
    let at = |q: f64| -> f64 {
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return if bucket < FINE {
                    bucket as f64
                } else {
                    ((bucket - FINE) * FINE) as f64
                };
            }
        }
        f64::NAN
    };
    if count == 0 {
        return Waits::default();
    }
    Waits {
        count,
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
    }
}

/// [`take_waits`] as the JSON body `GET /wait` answers.
pub fn waits_json() -> String {
    serde_json::to_string(&take_waits()).expect("plain numbers")
}
