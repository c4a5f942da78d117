//! A checkout bounded as a whole by the pool's `wait_timeout`.

use std::future::Future;

/// `get_bounded`: like deadpool's `Pool::get`, but the whole checkout
/// (waiting for a free slot *and* opening a connection) takes at most the
/// pool's wait timeout (`pools.NAME.wait_timeout`). deadpool bounds each
/// step on its own, so when the database is unreachable a request that
/// waited for a slot could then spend as long again connecting; with this,
/// a request that needs the database fails within `wait_timeout`, with
/// deadpool's `PoolError::Timeout`.
///
/// Costs one timer per checkout, as deadpool's own wait timeout does.
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

macro_rules! bounded_get {
    ($($pool:ident),*) => {$(
        impl BoundedGet for $pool::Pool {
            type Object = $pool::Object;
            type Error = $pool::PoolError;

            async fn get_bounded(&self) -> Result<Self::Object, Self::Error> {
                match self.timeouts().wait {
                    Some(limit) => crate::within(limit, "a checkout", self.get())
                        .await
                        .unwrap_or(Err($pool::PoolError::Timeout($pool::TimeoutType::Wait))),
                    None => self.get().await,
                }
            }
        }
    )*};
}
bounded_get!(deadpool_postgres, deadpool_sqlite);
