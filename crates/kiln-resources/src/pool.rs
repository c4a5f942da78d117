use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use kiln_config::{PoolConfig, PoolKind};
use serde::Serialize;

use crate::{postgres, sqlite};

/// A connection pool of one of the supported kinds. Cloning is cheap and
/// shares the pool.
#[derive(Clone)]
#[non_exhaustive]
pub enum Pool {
    /// A SQLite pool; queries run on the blocking thread pool via `interact`.
    Sqlite(deadpool_sqlite::Pool),
    /// A PostgreSQL pool.
    Postgres(deadpool_postgres::Pool),
}

/// A pool's figures at one instant.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PoolStatus {
    /// The database kind.
    pub kind: PoolKind,
    /// Connections open (in use or idle).
    pub size: usize,
    /// Idle connections ready for checkout.
    pub available: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
    /// Most connections the pool may hold.
    pub max_size: usize,
}

/// A resource (a pool) that could not be built or warmed, with its name.
#[derive(Debug, thiserror::Error)]
#[error("resource {resource}: {message}")]
pub struct ResourceError {
    /// The resource's name, as in `[pools.NAME]`.
    pub resource: String,
    /// What went wrong, with its causes.
    pub message: String,
}

impl ResourceError {
    pub(crate) fn new(resource: &str, what: &str, error: &dyn std::error::Error) -> Self {
        let mut message = format!("{what}: {error}");
        for cause in std::iter::successors(error.source(), |cause| cause.source()) {
            // Drivers often repeat their cause in their own message.
            let cause = cause.to_string();
            if !message.contains(&cause) {
                message.push_str(": ");
                message.push_str(&cause);
            }
        }
        Self {
            resource: resource.to_owned(),
            message,
        }
    }
}

// === impl Pool ===

impl Pool {
    /// Builds an empty pool from its section. Builds only: nothing connects.
    /// SQLite paths resolve against `base_dir` (the config file's folder).
    ///
    /// PostgreSQL connections are driven by the runtime this is called on,
    /// whichever thread later opens them.
    ///
    /// # Errors
    ///
    /// When the section cannot make a pool (a malformed URL, say).
    pub fn build(name: &str, config: &PoolConfig, base_dir: &Path) -> Result<Self, ResourceError> {
        match config.kind {
            PoolKind::Sqlite => sqlite::build(name, config, base_dir).map(Self::Sqlite),
            PoolKind::Postgres => postgres::build(name, config).map(Self::Postgres),
        }
    }

    /// Opens `count` connections at once and runs one query on each, then
    /// returns them all to the pool.
    ///
    /// # Errors
    ///
    /// When a connection cannot be opened or queried.
    pub async fn warm(&self, name: &str, count: usize) -> Result<(), ResourceError> {
        match self {
            Self::Sqlite(pool) if count > 0 => {
                // The first connection switches a new file to WAL, which takes
                // an exclusive lock: let it finish before the others open.
                let first = sqlite::checkout_and_ping(name, pool).await?;
                let rest =
                    try_join_all((1..count).map(|_| sqlite::checkout_and_ping(name, pool))).await?;
                drop((first, rest));
            }
            Self::Sqlite(_) => {}
            Self::Postgres(pool) => {
                let held =
                    try_join_all((0..count).map(|_| postgres::checkout_and_ping(name, pool)))
                        .await?;
                drop(held);
            }
        }
        Ok(())
    }

    /// The pool's current figures.
    pub fn status(&self) -> PoolStatus {
        let (kind, status) = match self {
            Self::Sqlite(pool) => (PoolKind::Sqlite, pool.status()),
            Self::Postgres(pool) => (PoolKind::Postgres, pool.status()),
        };
        PoolStatus {
            kind,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
            max_size: status.max_size,
        }
    }

    /// Closes the pool: idle connections close now, checked-out ones when
    /// returned, and checkouts fail from now on. Clones share the pool, so
    /// they are closed too.
    pub fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close(),
            Self::Postgres(pool) => pool.close(),
        }
    }

    /// Closes the pool one connection at a time, `gap` apart (the first
    /// after one `gap`), then [`close`](Self::close)s it. For a pool nothing
    /// will check out from again: closing many connections at once stalls
    /// the database server for everyone else (PostgreSQL backends exiting
    /// together held up the next queries on a new pool by ~10 ms).
    pub async fn retire(self, gap: Duration) {
        let mut keep = self.status().size;
        while keep > 0 {
            tokio::time::sleep(gap).await;
            keep -= 1;
            // Shrinking drops one idle connection, or the next one returned.
            match &self {
                Self::Sqlite(pool) => pool.resize(keep),
                Self::Postgres(pool) => pool.resize(keep),
            }
        }
        self.close();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pool").field(&self.status()).finish()
    }
}

/// The named pools of one generation.
#[derive(Clone, Debug, Default)]
pub struct Pools(BTreeMap<String, Pool>);

impl Pools {
    /// Builds and warms every pool in `configs` concurrently, logging each
    /// one's time. A pool for which `carry` returns `Some` is taken as is
    /// (already warm) instead of being built.
    ///
    /// # Errors
    ///
    /// The first pool that failed to build, or to warm within `timeout`.
    /// The pools this call built are dropped (closed); carried ones are not
    /// touched.
    pub async fn warm_all(
        configs: &BTreeMap<String, PoolConfig>,
        base_dir: &Path,
        timeout: Duration,
        carry: impl Fn(&str) -> Option<Pool>,
    ) -> Result<Self, ResourceError> {
        let warming = configs.iter().map(|(name, config)| {
            let carried = carry(name);
            async move {
                if let Some(pool) = carried {
                    return Ok((name.clone(), pool));
                }
                let started = Instant::now();
                let pool = Pool::build(name, config, base_dir)?;
                let count = config.warm_count();
                tracing::info!(pool = %name, kind = %config.kind, connections = count, "Warming pool");
                match tokio::time::timeout(timeout, pool.warm(name, count)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(ResourceError {
                            resource: name.clone(),
                            message: format!(
                                "{count} connections not open within {} (server.warm_timeout)",
                                humantime::format_duration(timeout)
                            ),
                        });
                    }
                }
                tracing::info!(
                    pool = %name,
                    connections = count,
                    took_ms = started.elapsed().as_millis() as u64,
                    "Pool warm"
                );
                Ok((name.clone(), pool))
            }
        });
        let pools = try_join_all(warming).await?;
        Ok(Self(pools.into_iter().collect()))
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.0.get(name)
    }

    /// The pools and their names, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Pool)> {
        self.0.iter().map(|(name, pool)| (name.as_str(), pool))
    }

    /// How many pools there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no pools.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(dir: &Path, max_size: usize) -> Pool {
        let config = PoolConfig {
            kind: PoolKind::Sqlite,
            url: "retire.sqlite3".into(),
            max_size,
            warm: None,
            wait_timeout: Duration::from_secs(5),
        };
        Pool::build("main", &config, dir).expect("a SQLite pool builds")
    }

    #[tokio::test]
    async fn retire_closes_idle_connections_then_returned_ones_then_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite(dir.path(), 4);
        pool.warm("main", 3).await.unwrap();
        let Pool::Sqlite(inner) = pool.clone() else {
            unreachable!()
        };
        let held = inner.get().await.unwrap();
        assert_eq!((pool.status().size, pool.status().available), (3, 2));

        let retiring = tokio::spawn(pool.clone().retire(Duration::from_millis(1)));
        // The idle ones go; the one in use stays until it is returned.
        while pool.status().available > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.status().size, 1, "{:?}", pool.status());
        drop(held);
        retiring.await.unwrap();
        assert_eq!(pool.status().size, 0, "the returned connection was closed");
        assert!(inner.get().await.is_err(), "the retired pool is closed");
    }
}
