use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use deadpool_sqlite::{Hook, HookError, Object, Pool, Runtime};
use kiln_config::PoolConfig;

use crate::checkout::TimedGet;
use crate::pool::WAIT_BUCKETS;
use crate::{BoundedGet, Durations, ResourceError};

/// A SQLite pool: deadpool's, which it dereferences to, with its own
/// [`get_bounded`](BoundedGet::get_bounded) that counts each checkout's
/// time in [`waits`](Self::waits). Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct SqlitePool {
    pool: Pool,
    pub(crate) waits: Arc<Durations>,
}

impl SqlitePool {
    pub(crate) fn new(pool: Pool, waits: Arc<Durations>) -> Self {
        Self { pool, waits }
    }

    /// How long checkouts through [`get_bounded`](BoundedGet::get_bounded)
    /// took.
    pub fn waits(&self) -> &Durations {
        &self.waits
    }
}

impl std::ops::Deref for SqlitePool {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        &self.pool
    }
}

impl std::fmt::Debug for SqlitePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePool")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl BoundedGet for SqlitePool {
    type Object = Object;
    type Error = deadpool_sqlite::PoolError;

    /// A checkout, its time counted in [`waits`](Self::waits).
    fn get_bounded(&self) -> impl Future<Output = Result<Self::Object, Self::Error>> + Send {
        self.pool.timed_get(Some(&self.waits))
    }
}

/// Every connection gets WAL (readers never block the writer) and a busy
/// timeout (writers queue instead of failing at once).
const PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";

pub(crate) fn build(
    name: &str,
    config: &PoolConfig,
    base_dir: &Path,
) -> Result<SqlitePool, ResourceError> {
    let path = base_dir.join(config.url.expose());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            ResourceError::caused(name, &format!("cannot create {}", parent.display()), e)
        })?;
    }
    deadpool_sqlite::Config::new(path)
        .builder(Runtime::Tokio1)
        .map_err(|e| ResourceError::caused(name, "invalid configuration", e))?
        .max_size(config.max_size)
        .wait_timeout(Some(config.wait_timeout))
        .create_timeout(Some(config.wait_timeout))
        .post_create(Hook::async_fn(|conn, _| {
            Box::pin(async move {
                conn.interact(|conn| conn.execute_batch(PRAGMAS))
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .map_err(|e| HookError::message(e.to_string()))
            })
        }))
        .build()
        .map(|pool| SqlitePool::new(pool, Arc::new(Durations::new(WAIT_BUCKETS))))
        .map_err(|e| ResourceError::caused(name, "cannot build the pool", e))
}

pub(crate) async fn checkout_and_ping(name: &str, pool: &Pool) -> Result<Object, ResourceError> {
    let conn = pool
        .get()
        .await
        .map_err(|e| ResourceError::caused(name, "cannot open a connection", e))?;
    conn.interact(|conn| conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)))
        .await
        .map_err(|e| ResourceError::caused(name, "ping failed", e.to_string()))?
        .map_err(|e| ResourceError::caused(name, "ping failed", e))?;
    Ok(conn)
}
