//! A checkout bounded as a whole by the pool's `wait_timeout`.

use std::future::Future;

use tokio::time::Instant;

use crate::Durations;

/// `get_bounded`: like deadpool's `Pool::get`, but the whole checkout
/// (waiting for a free slot *and* opening a connection) takes at most the
/// pool's wait timeout (`pools.NAME.wait_timeout`). deadpool bounds each
/// step on its own, so when the database is unreachable a request that
/// waited for a slot could then spend as long again connecting; with this,
/// a request that needs the database fails within `wait_timeout`, with
/// deadpool's `PoolError::Timeout`.
///
/// Costs one timer per checkout, as deadpool's own wait timeout does.
/// Through kiln's pools ([`PostgresPool`](crate::PostgresPool),
/// [`SqlitePool`](crate::SqlitePool)) each checkout's time, failed ones
/// included, is also counted in the pool's
/// [`waits`](crate::Pool::waits) (`kiln_pool_wait_duration_seconds`):
/// two atomic adds, and no clock read beyond the timeout's own.
///
/// # Examples
///
/// ```no_run
/// use kiln_resources::{BoundedGet, deadpool_postgres};
///
/// # async fn demo(pool: deadpool_postgres::Pool) -> Result<(), deadpool_postgres::PoolError> {
/// let client = pool.get_bounded().await?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
pub trait BoundedGet {
    /// What a checkout returns.
    type Object;
    /// Why a checkout failed (deadpool's `PoolError`).
    type Error;

    /// Checks a connection out within the pool's wait timeout.
    fn get_bounded(&self) -> impl Future<Output = Result<Self::Object, Self::Error>> + Send;
}

/// A checkout within the pool's wait timeout, its time counted in `waits`
/// when given: what [`BoundedGet`] does for deadpool's pools and kiln's.
pub(crate) trait TimedGet {
    type Object;
    type Error;

    fn timed_get(
        &self,
        waits: Option<&Durations>,
    ) -> impl Future<Output = Result<Self::Object, Self::Error>> + Send;
}

macro_rules! bounded_get {
    ($($pool:ident),*) => {$(
        impl TimedGet for $pool::Pool {
            type Object = $pool::Object;
            type Error = $pool::PoolError;

            async fn timed_get(
                &self,
                waits: Option<&Durations>,
            ) -> Result<Self::Object, Self::Error> {
                // The clock read tokio's `timeout` makes anyway, kept as the
                // start. The end is the instant deadpool stamps on the
                // connection it hands out (`recycled`, or `created` for a new
                // one): timing a checkout that succeeds reads the clock no
                // more than not timing it; a failed one reads it once more.
                let start = Instant::now();
                let deadline = self.timeouts().wait.and_then(|limit| start.checked_add(limit));
                let got = match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, self.get())
                        .await
                        .unwrap_or(Err($pool::PoolError::Timeout($pool::TimeoutType::Wait))),
                    None => self.get().await,
                };
                if let Some(waits) = waits {
                    let end = match &got {
                        Ok(object) => {
                            let stamps = $pool::Object::metrics(object);
                            Instant::from_std(stamps.recycled.unwrap_or(stamps.created))
                        }
                        Err(_) => Instant::now(),
                    };
                    waits.record(end.saturating_duration_since(start));
                }
                got
            }
        }

        impl BoundedGet for $pool::Pool {
            type Object = $pool::Object;
            type Error = $pool::PoolError;

            fn get_bounded(&self) -> impl Future<Output = Result<Self::Object, Self::Error>> + Send {
                self.timed_get(None)
            }
        }
    )*};
}
bounded_get!(deadpool_postgres, deadpool_sqlite);
