use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::try_join_all;
use kiln_config::{PoolConfig, PoolKind};
use serde::Serialize;

use crate::Durations;
use crate::health::{self, Health, Monitor};
use crate::postgres::{self, Homes, PostgresPool, share};
use crate::sqlite::{self, SqlitePool};

/// `kiln_pool_wait_duration_seconds`: 10 µs (a connection was idle) to
/// 30 s, in nanoseconds.
pub(crate) const WAIT_BUCKETS: &[u64] = &[
    10_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A connection pool of one of the supported kinds. Cloning is cheap and
/// shares the pool.
#[derive(Clone)]
#[non_exhaustive]
pub enum Pool {
    /// A SQLite pool; queries run on the blocking thread pool via
    /// `interact`. It dereferences to a `deadpool_sqlite::Pool`.
    Sqlite(SqlitePool),
    /// A PostgreSQL pool, in shares driven on their own runtimes; it
    /// dereferences to the calling thread's share (a
    /// `deadpool_postgres::Pool`).
    Postgres(PostgresPool),
}

/// A pool's figures and health at one instant.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
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
    /// Whether the database answered the pool's last connection attempt.
    pub health: Health,
    /// The last connection error, with its causes; kept after recovery.
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339 in UTC, to the second, in
    /// JSON).
    #[serde(serialize_with = "rfc3339")]
    pub last_error_at: Option<SystemTime>,
    /// Connection attempts that failed since the pool was built.
    pub connection_errors: u64,
}

/// `2026-12-01T10:00:00Z`, as `GET /admin/status` has always shown it.
fn rfc3339<S: serde::Serializer>(
    at: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.collect_str(&humantime::format_rfc3339_seconds(*at)),
        None => serializer.serialize_none(),
    }
}

/// The error type resources keep as their cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A resource (a pool) that could not be built or warmed: its name, what
/// failed, and the driver's error as the [`source`](std::error::Error::source)
/// (print the chain, e.g. with [`ErrorChain`], to see the server's message).
#[derive(Debug, thiserror::Error)]
#[error("resource {resource}: {message}")]
#[non_exhaustive]
pub struct ResourceError {
    /// The resource's name, as in `[pools.NAME]`.
    pub resource: String,
    /// What failed.
    pub message: String,
    /// Why, when a lower layer said.
    #[source]
    pub source: Option<BoxError>,
}

impl ResourceError {
    /// Resource `resource` failed at `message`, because of `source`.
    pub fn new(
        resource: impl Into<String>,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self {
            resource: resource.into(),
            message: message.into(),
            source,
        }
    }

    pub(crate) fn caused(resource: &str, message: &str, source: impl Into<BoxError>) -> Self {
        Self::new(resource, message, Some(source.into()))
    }
}

/// Displays an error and its causes, `: `-separated, each once: drivers
/// often repeat their cause in their own message (deadpool's "Error
/// occurred while creating a new object: {cause}"), and tokio-postgres's
/// own message is only `db error`, with the server's in its source.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        for cause in std::iter::successors(self.0.source(), |cause| cause.source()) {
            let cause = cause.to_string();
            if !shown.contains(&cause) {
                shown.push_str(": ");
                shown.push_str(&cause);
            }
        }
        f.write_str(&shown)
    }
}

/// [`ErrorChain`] as a `String`.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    ErrorChain(error).to_string()
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
    /// When the section cannot make a pool (a malformed URL, say), or
    /// outside a tokio runtime.
    pub fn build(name: &str, config: &PoolConfig, base_dir: &Path) -> Result<Self, ResourceError> {
        let home = tokio::runtime::Handle::try_current()
            .map_err(|e| ResourceError::caused(name, "no tokio runtime to drive connections", e))?;
        Self::build_on(name, config, base_dir, &Homes::new(vec![home]))
    }

    /// [`build`](Self::build), with a PostgreSQL pool's connections
    /// driven on `homes`, each with its share of `max_size`.
    ///
    /// # Errors
    ///
    /// When the section cannot make a pool.
    pub fn build_on(
        name: &str,
        config: &PoolConfig,
        base_dir: &Path,
        homes: &Homes,
    ) -> Result<Self, ResourceError> {
        Self::build_monitored(name, config, base_dir, Arc::default(), homes)
    }

    fn build_monitored(
        name: &str,
        config: &PoolConfig,
        base_dir: &Path,
        monitor: Arc<Monitor>,
        homes: &Homes,
    ) -> Result<Self, ResourceError> {
        match config.kind {
            PoolKind::Sqlite => sqlite::build(name, config, base_dir).map(Self::Sqlite),
            PoolKind::Postgres => postgres::build(name, config, monitor, homes).map(Self::Postgres),
        }
    }

    /// Opens `count` connections at once and runs one query on each, then
    /// returns them all to the pool (a PostgreSQL pool: each share its
    /// part of `count`, on its own runtime).
    ///
    /// # Errors
    ///
    /// When a connection cannot be opened or queried.
    pub async fn warm(&self, name: &str, count: usize) -> Result<(), ResourceError> {
        self.hold(name, |total, i, _| share(count, total, i)).await
    }

    /// Makes each PostgreSQL share (or the SQLite pool) hold its part of
    /// `floor` connections, idle or in use: for the top-up.
    pub(crate) async fn refill(&self, name: &str, floor: usize) -> Result<(), ResourceError> {
        self.hold(name, |total, i, status| {
            share(floor, total, i).saturating_sub(status.size - status.available)
        })
        .await
    }

    /// How many connections are missing below `floor`, each PostgreSQL
    /// share counted against its part of it.
    pub(crate) fn missing(&self, floor: usize) -> usize {
        let missing =
            |floor: usize, status: deadpool_postgres::Status| floor.saturating_sub(status.size);
        match self {
            Self::Sqlite(pool) => missing(floor, pool.status()),
            Self::Postgres(pool) => {
                let n = pool.shares().len();
                let shares = pool.shares().iter().enumerate();
                shares
                    .map(|(i, p)| missing(share(floor, n, i), p.status()))
                    .sum()
            }
        }
    }

    /// Holds `count(shares, share, its status)` connections of each share
    /// at once, each queried once, then returns them all.
    async fn hold(
        &self,
        name: &str,
        count: impl Fn(usize, usize, &deadpool_postgres::Status) -> usize,
    ) -> Result<(), ResourceError> {
        match self {
            Self::Sqlite(pool) => match count(1, 0, &pool.status()) {
                0 => {}
                count => {
                    // The first connection switches a new file to WAL, which takes
                    // an exclusive lock: let it finish before the others open.
                    let first = sqlite::checkout_and_ping(name, pool).await?;
                    let rest =
                        try_join_all((1..count).map(|_| sqlite::checkout_and_ping(name, pool)))
                            .await?;
                    drop((first, rest));
                }
            },
            Self::Postgres(pool) => {
                let shares = pool.shares();
                let held = try_join_all(shares.iter().enumerate().flat_map(|(i, share)| {
                    let count = count(shares.len(), i, &share.status());
                    (0..count).map(move |_| postgres::checkout_and_ping(name, share))
                }))
                .await?;
                drop(held);
            }
        }
        Ok(())
    }

    /// The pool's current figures. Its health is tracked by the [`Pools`]
    /// that built it (see [`Pools::status`]): read on its own, a pool
    /// reports [`Health::Ok`] and no error.
    pub fn status(&self) -> PoolStatus {
        self.status_with(&Monitor::default())
    }

    fn status_with(&self, monitor: &Monitor) -> PoolStatus {
        let figures = self.figures();
        let (health, last_error, last_error_at, connection_errors) = monitor.read();
        PoolStatus {
            kind: match self {
                Self::Sqlite(_) => PoolKind::Sqlite,
                Self::Postgres(_) => PoolKind::Postgres,
            },
            size: figures.size,
            available: figures.available,
            waiting: figures.waiting,
            max_size: figures.max_size,
            health,
            last_error,
            last_error_at,
            connection_errors,
        }
    }

    pub(crate) fn figures(&self) -> deadpool_postgres::Status {
        match self {
            Self::Sqlite(pool) => pool.status(),
            Self::Postgres(pool) => pool.status_all(),
        }
    }

    /// How long checkouts through
    /// [`get_bounded`](crate::BoundedGet::get_bounded) on this pool ([`SqlitePool`] or [`PostgresPool`], not a share) took,
    /// failed ones included, since it was built.
    pub fn waits(&self) -> &Durations {
        self.waits_shared()
    }

    fn waits_shared(&self) -> &Arc<Durations> {
        match self {
            Self::Sqlite(pool) => &pool.waits,
            Self::Postgres(pool) => &pool.waits,
        }
    }

    /// Whether [`close`](Self::close) was called on the pool or a clone.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::Sqlite(pool) => pool.is_closed(),
            Self::Postgres(pool) => pool.shares().iter().all(deadpool_postgres::Pool::is_closed),
        }
    }

    /// Drops idle connections whose server side is gone (PostgreSQL; a
    /// SQLite connection cannot lose its server).
    pub(crate) fn drop_closed(&self) {
        if let Self::Postgres(pool) = self {
            for share in pool.shares() {
                drop(share.retain(|client, _| !client.is_closed()));
            }
        }
    }

    pub(crate) fn downgrade(&self) -> WeakPool {
        let kind = match self {
            Self::Sqlite(pool) => WeakKind::Sqlite(pool.weak()),
            Self::Postgres(pool) => WeakKind::Postgres(
                pool.shares()
                    .iter()
                    .map(deadpool_postgres::Pool::weak)
                    .collect(),
            ),
        };
        WeakPool {
            kind,
            waits: self.waits_shared().clone(),
        }
    }

    /// Closes the pool: idle connections close now, checked-out ones when
    /// returned, and checkouts fail from now on. Clones share the pool, so
    /// they are closed too.
    pub fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close(),
            Self::Postgres(pool) => pool
                .shares()
                .iter()
                .for_each(deadpool_postgres::Pool::close),
        }
    }

    /// Closes the pool one connection at a time, `gap` apart (the first
    /// after one `gap`), then [`close`](Self::close)s it. For a pool nothing
    /// will check out from again: closing many connections at once stalls
    /// the database server for everyone else (PostgreSQL backends exiting
    /// together held up the next queries on a new pool by ~10 ms).
    pub async fn retire(self, gap: Duration) {
        match &self {
            Self::Sqlite(pool) => shrink(gap, pool.status().size, |keep| pool.resize(keep)).await,
            Self::Postgres(pool) => {
                for share in pool.shares() {
                    shrink(gap, share.status().size, |keep| share.resize(keep)).await;
                }
            }
        }
        self.close();
    }
}

/// Lowers a pool from `size` to nothing one connection per `gap`, through
/// its `resize`: shrinking drops one idle connection, or the next one
/// returned.
async fn shrink(gap: Duration, size: usize, resize: impl Fn(usize)) {
    for keep in (0..size).rev() {
        tokio::time::sleep(gap).await;
        resize(keep);
    }
}

/// A [`Pool`] that does not keep it open (its wait histogram, which holds
/// no connection, it keeps).
pub(crate) struct WeakPool {
    kind: WeakKind,
    waits: Arc<Durations>,
}

enum WeakKind {
    Sqlite(deadpool_sqlite::WeakPool),
    Postgres(Vec<deadpool_postgres::WeakPool>),
}

impl WeakPool {
    pub(crate) fn upgrade(&self) -> Option<Pool> {
        let waits = self.waits.clone();
        match &self.kind {
            WeakKind::Sqlite(weak) => weak
                .upgrade()
                .map(|pool| Pool::Sqlite(SqlitePool::new(pool, waits))),
            WeakKind::Postgres(weak) => weak
                .iter()
                .map(deadpool_postgres::WeakPool::upgrade)
                .collect::<Option<Vec<_>>>()
                .map(|shares| Pool::Postgres(PostgresPool::from_shares(shares, waits))),
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pool").field(&self.status()).finish()
    }
}

/// The named pools of one generation, each with its health.
#[derive(Clone, Debug, Default)]
pub struct Pools(BTreeMap<String, Entry>);

#[derive(Clone, Debug)]
struct Entry {
    pool: Pool,
    monitor: Arc<Monitor>,
}

impl Pools {
    /// Builds and warms every pool in `configs` concurrently, logging each
    /// one's time, and starts each new pool's top-up task: it keeps `warm`
    /// connections open (idle or in use) when the database drops them, and
    /// ends when the pool is closed or dropped. A pool for which `carry`
    /// returns `Some` is taken as is (already warm, its task running)
    /// instead of being built. A new PostgreSQL pool is built on `homes`
    /// (see [`Pool::build_on`]).
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
        carry: &Pools,
        homes: &Homes,
    ) -> Result<Self, ResourceError> {
        let warming = configs.iter().map(|(name, config)| {
            let carried = carry.0.get(name).cloned();
            async move {
                if let Some(entry) = carried {
                    return Ok((name.clone(), entry));
                }
                let started = Instant::now();
                let monitor = Arc::<Monitor>::default();
                let pool = Pool::build_monitored(name, config, base_dir, monitor.clone(), homes)?;
                let count = config.warm_count();
                tracing::info!(pool = %name, kind = %config.kind, connections = count, "Warming pool");
                crate::within(timeout, format!("{count} connections"), pool.warm(name, count))
                    .await
                    .map_err(|late| {
                        ResourceError::new(name.clone(), format!("{late} (server.warm_timeout)"), None)
                    })??;
                tracing::info!(
                    pool = %name,
                    connections = count,
                    took_ms = started.elapsed().as_millis() as u64,
                    "Pool warm"
                );
                health::maintain(name, &pool, count, monitor.clone());
                Ok((name.clone(), Entry { pool, monitor }))
            }
        });
        let pools = try_join_all(warming).await?;
        Ok(Self(pools.into_iter().collect()))
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.0.get(name).map(|entry| &entry.pool)
    }

    /// The pools and their names, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Pool)> {
        self.0
            .iter()
            .map(|(name, entry)| (name.as_str(), &entry.pool))
    }

    /// Each pool's figures and health, by name.
    pub fn status(&self) -> BTreeMap<String, PoolStatus> {
        self.0
            .iter()
            .map(|(name, entry)| (name.clone(), entry.pool.status_with(&entry.monitor)))
            .collect()
    }

    /// Closes pool `name` and ends its connections now, those in use
    /// included (their queries fail): for the pools of a generation that
    /// was refused, which nothing may keep open.
    pub fn terminate(&self, name: &str) {
        if let Some(entry) = self.0.get(name) {
            entry.pool.close();
            entry.monitor.end_connections();
        }
    }

    /// Keeps only the pools `keep` says yes to.
    pub fn filter(&self, keep: impl Fn(&str) -> bool) -> Pools {
        Pools(
            self.0
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, entry)| (name.clone(), entry.clone()))
                .collect(),
        )
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
        let mut config = PoolConfig::new(PoolKind::Sqlite, "retire.sqlite3");
        config.max_size = max_size;
        config.wait_timeout = Duration::from_secs(5);
        Pool::build("main", &config, dir).expect("a SQLite pool builds")
    }

    #[test]
    fn an_error_chain_shows_each_cause_once() {
        /// Repeats its cause in its own message, as deadpool's `PoolError` does.
        #[derive(Debug, thiserror::Error)]
        #[error("Error occurred while creating a new object: {0}")]
        struct Repeats(#[source] std::io::Error);

        let cause = Repeats(std::io::Error::other("connection refused"));
        let error = ResourceError::new("main", "cannot open a connection", Some(cause.into()));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "resource main: cannot open a connection: \
             Error occurred while creating a new object: connection refused"
        );
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
