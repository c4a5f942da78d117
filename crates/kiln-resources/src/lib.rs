//! kiln's resources: connection pools built from their config sections,
//! warmed (every connection opened and queried once) before they are
//! published, and reported on.
//!
//! deadpool never connects in the background and has no pre-fill, so
//! [`Pool::warm`] holds `warm` connections at once, runs `SELECT 1` on each,
//! then returns them all: the next `warm` checkouts reuse open, queried
//! connections.
#![deny(missing_docs)]

mod checkout;
mod durations;
mod health;
mod pool;
mod postgres;
mod sqlite;
mod timeout;

pub use checkout::BoundedGet;
pub use durations::{DurationCounts, Durations};
pub use health::Health;
pub use pool::{BoxError, ErrorChain, Pool, PoolStatus, Pools, ResourceError};
pub use postgres::{Homes, PostgresPool, check_out_from};
pub use sqlite::SqlitePool;
pub use timeout::{TimedOut, within};
pub use {deadpool_postgres, deadpool_sqlite};
