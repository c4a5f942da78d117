use std::path::Path;

use deadpool_sqlite::{Hook, HookError, Object, Pool, Runtime};
use kiln_config::PoolConfig;

use crate::ResourceError;

/// Every connection gets WAL (readers never block the writer) and a busy
/// timeout (writers queue instead of failing at once).
const PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";

pub(crate) fn build(
    name: &str,
    config: &PoolConfig,
    base_dir: &Path,
) -> Result<Pool, ResourceError> {
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
