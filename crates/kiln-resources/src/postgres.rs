use std::cell::Cell;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Client, Connect, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use kiln_config::PoolConfig;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::{Client as PgClient, Config as PgConfig, Error, NoTls};

use crate::checkout::TimedGet;
use crate::health::Monitor;
use crate::pool::WAIT_BUCKETS;
use crate::pool::chain;
use crate::{BoundedGet, Durations, ResourceError};

/// TCP keepalive defaults, so that a connection to a database that vanished
/// without a word (a failover, a black-holed network) is noticed in about
/// `IDLE + INTERVAL × RETRIES` = 25 s instead of the kernel's two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVES_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel gives the
/// connection up (`TCP_USER_TIMEOUT`): a query sent into a black hole fails
/// after this, not after ~15 minutes of retransmissions.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connect may take (TCP and start-up handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tokio runtimes that drive PostgreSQL connections (their socket I/O
/// and protocol): a pool built on `n` homes is `n` deadpool pools, one per
/// home, each with its share of `max_size` and `warm`, each opening and
/// driving its connections on its own home. A thread checks out from the
/// share of the home it said it is ([`check_out_from`]), so a worker
/// thread whose runtime is a home runs its queries without a thread
/// switch. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Homes(Arc<[Handle]>);

impl Homes {
    /// These runtimes, in order; none means the current one.
    ///
    /// # Panics
    ///
    /// With no runtimes given, outside a tokio runtime.
    pub fn new(handles: Vec<Handle>) -> Self {
        if handles.is_empty() {
            Self::current()
        } else {
            Self(handles.into())
        }
    }

    /// The current runtime alone.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn current() -> Self {
        Self(Arc::new([Handle::current()]))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never: there is at least one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

thread_local! {
    /// The home this thread checks out from (modulo a pool's share count).
    static HOME: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread check out, from every PostgreSQL pool, the
/// connections of home `index` (of the [`Homes`] the pool was built on,
/// modulo their number): kiln's worker `i` calls it with `i` on its thread,
/// whose runtime is home `i`. Threads that never call it use home 0.
pub fn check_out_from(index: usize) {
    HOME.with(|home| home.set(index));
}

/// A PostgreSQL pool: one deadpool pool per [`Homes`] runtime, each with
/// its share of `max_size`, its connections driven on that runtime.
/// Dereferences to the share of the calling thread's home (see
/// [`check_out_from`]), so `pool.get()` checks out a connection driven on
/// the caller's own runtime when it is a home. Cloning is cheap and shares
/// the pool.
///
/// What goes through the dereference acts on that one share: `status()`
/// reads its figures ([`status_all`](Self::status_all) sums them), and
/// `close()` or `resize()` change it alone (kiln's
/// [`Pool::close`](crate::Pool::close) closes every share).
///
/// Its own [`get_bounded`](BoundedGet::get_bounded) (not the share's)
/// counts each checkout's time in the pool's [`waits`](Self::waits).
#[derive(Clone)]
pub struct PostgresPool {
    shares: Arc<[Pool]>,
    pub(crate) waits: Arc<Durations>,
}

impl std::ops::Deref for PostgresPool {
    type Target = Pool;

    /// The calling thread's share, unless every one of its connections is
    /// in use and it may open no more while another share has one idle:
    /// then that share, so that connections idle on one worker are
    /// borrowed (driven on their own runtime) rather than waited for on
    /// another. Resolved at each call: hold the `PostgresPool`, not the
    /// `&Pool`, across threads.
    fn deref(&self) -> &Pool {
        let own = &self.shares[HOME.with(Cell::get) % self.shares.len()];
        if self.shares.len() == 1 || has_room(own) {
            return own;
        }
        self.shares
            .iter()
            .find(|share| share.status().available > 0)
            .unwrap_or(own)
    }
}

impl std::fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPool")
            .field("shares", &self.shares.len())
            .field("status", &self.status_all())
            .finish()
    }
}

impl PostgresPool {
    /// Every share, in home order.
    pub fn shares(&self) -> &[Pool] {
        &self.shares
    }

    /// The figures of all shares together.
    pub fn status_all(&self) -> deadpool_postgres::Status {
        let mut all = deadpool_postgres::Status {
            max_size: 0,
            size: 0,
            available: 0,
            waiting: 0,
        };
        for status in self.shares.iter().map(Pool::status) {
            all.max_size += status.max_size;
            all.size += status.size;
            all.available += status.available;
            all.waiting += status.waiting;
        }
        all
    }

    /// How long checkouts through [`get_bounded`](BoundedGet::get_bounded)
    /// took, every share together.
    pub fn waits(&self) -> &Durations {
        &self.waits
    }

    pub(crate) fn from_shares(shares: Vec<Pool>, waits: Arc<Durations>) -> Self {
        Self {
            shares: shares.into(),
            waits,
        }
    }
}

impl BoundedGet for PostgresPool {
    type Object = deadpool_postgres::Object;
    type Error = deadpool_postgres::PoolError;

    /// A checkout from the calling thread's share (or an idle one
    /// borrowed), its time counted in [`waits`](Self::waits).
    fn get_bounded(&self) -> impl Future<Output = Result<Self::Object, Self::Error>> + Send {
        let share: &Pool = self;
        share.timed_get(Some(&self.waits))
    }
}

/// Whether a checkout from `share` needs no wait: a connection is idle, or
/// it may open one more.
fn has_room(share: &Pool) -> bool {
    let status = share.status();
    status.available > 0 || status.size < status.max_size
}

/// Share `i` of `total` spread over `n` shares: the first `total % n` get
/// one more.
pub(crate) fn share(total: usize, n: usize, i: usize) -> usize {
    total / n + usize::from(i < total % n)
}

pub(crate) fn build(
    name: &str,
    config: &PoolConfig,
    monitor: Arc<Monitor>,
    homes: &Homes,
) -> Result<PostgresPool, ResourceError> {
    let pg_config = pg_config(config).map_err(|e| ResourceError::caused(name, "invalid url", e))?;
    // No share may be empty: a thread whose share holds no connection would never get one.
    let n = homes.len().min(config.max_size).max(1);
    let shares = homes.0[..n]
        .iter()
        .enumerate()
        .map(|(i, home)| {
            let manager = Manager::from_connect(
                pg_config.clone(),
                OnRuntime {
                    home: home.clone(),
                    pool: name.to_owned(),
                    monitor: monitor.clone(),
                },
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .runtime(Runtime::Tokio1)
                .max_size(share(config.max_size, n, i))
                .wait_timeout(Some(config.wait_timeout))
                .create_timeout(Some(config.wait_timeout))
                .build()
                .map_err(|e| ResourceError::caused(name, "cannot build the pool", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PostgresPool::from_shares(
        shares,
        Arc::new(Durations::new(WAIT_BUCKETS)),
    ))
}

/// The connection settings from the pool's URL, plus kiln's defaults for
/// the timeouts the URL leaves out, plus `statement_timeout`.
fn pg_config(config: &PoolConfig) -> Result<PgConfig, Error> {
    let url = config.url.expose();
    let mut pg = PgConfig::from_str(url)?;
    let given = url_keys(url);
    let unset = |key: &str| !given.iter().any(|given| given == key);
    if unset("keepalives_idle") {
        pg.keepalives_idle(KEEPALIVES_IDLE);
    }
    if unset("keepalives_interval") {
        pg.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if unset("keepalives_retries") {
        pg.keepalives_retries(KEEPALIVES_RETRIES);
    }
    if unset("tcp_user_timeout") {
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if unset("connect_timeout") {
        pg.connect_timeout(CONNECT_TIMEOUT.min(config.wait_timeout));
    }
    if let Some(timeout) = config.statement_timeout {
        let setting = format!("-c statement_timeout={}", timeout.as_millis());
        let options = match pg.get_options() {
            Some(options) if !options.is_empty() => format!("{options} {setting}"),
            _ => setting,
        };
        pg.options(options);
    }
    Ok(pg)
}

/// The parameter names a libpq URL (`postgres://…?key=value&…`) or
/// key/value string (`key=value key=value`) sets.
fn url_keys(url: &str) -> Vec<String> {
    let pairs: Vec<&str> = match url.split_once("://") {
        Some((_, rest)) => rest
            .split_once('?')
            .map(|(_, query)| query.split('&').collect())
            .unwrap_or_default(),
        None => url.split_whitespace().collect(),
    };
    pairs
        .into_iter()
        .filter_map(|pair| pair.split_once('=').map(|(key, _)| key.trim().to_owned()))
        .collect()
}

pub(crate) async fn checkout_and_ping(name: &str, pool: &Pool) -> Result<Client, ResourceError> {
    let client = pool
        .get()
        .await
        .map_err(|e| ResourceError::caused(name, "cannot open a connection", e))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| ResourceError::caused(name, "ping failed", e))?;
    Ok(client)
}

/// Connects and drives every connection of one share on its home runtime,
/// whichever thread asked for it; records each attempt's outcome in the
/// pool's health.
struct OnRuntime {
    home: Handle,
    pool: String,
    monitor: Arc<Monitor>,
}

impl Connect for OnRuntime {
    fn connect(
        &self,
        pg_config: &PgConfig,
    ) -> BoxFuture<'_, Result<(PgClient, JoinHandle<()>), Error>> {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let connected = self.connect_at_home(pg_config).await;
            match &connected {
                Ok((_, task)) => {
                    self.monitor.track(task.abort_handle());
                    self.monitor.reachable(&self.pool);
                }
                Err(e) => self.monitor.unreachable(&self.pool, chain(e)),
            }
            connected
        })
    }
}

impl OnRuntime {
    async fn connect_at_home(
        &self,
        pg_config: PgConfig,
    ) -> Result<(PgClient, JoinHandle<()>), Error> {
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let home_config = pg_config.clone();
            let task = self.home.spawn(async move {
                match home_config.connect(NoTls).await {
                    Ok((client, connection)) => {
                        if tx.send(Ok(client)).is_ok() {
                            drive(connection).await;
                        }
                    }
                    Err(e) => drop(tx.send(Err(e))),
                }
            });
            match rx.await {
                Ok(Ok(client)) => Ok((client, task)),
                Ok(Err(e)) => Err(e),
                // The home runtime is shutting down: connect on this one.
                Err(_) => {
                    let (client, connection) = pg_config.connect(NoTls).await?;
                    Ok((client, tokio::spawn(drive(connection))))
                }
            }
        }
    }
}

async fn drive(
    connection: tokio_postgres::Connection<
        tokio_postgres::Socket,
        tokio_postgres::tls::NoTlsStream,
    >,
) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %chain(&e), "PostgreSQL connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> PoolConfig {
        let mut config = PoolConfig::new(kiln_config::PoolKind::Postgres, url);
        config.max_size = 4;
        config.statement_timeout = Some(Duration::from_millis(1500));
        config
    }

    #[test]
    fn timeouts_default_unless_the_url_sets_them() {
        let pg = pg_config(&config("postgres://u@db/test?options=-csearch_path%3Ds")).unwrap();
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(pg.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(pg.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        // Never longer than a checkout may wait.
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(
            pg.get_options(),
            Some("-csearch_path=s -c statement_timeout=1500")
        );

        let url = "postgres://u@db/test?keepalives_idle=60&tcp_user_timeout=30&connect_timeout=1";
        let pg = pg_config(&config(url)).unwrap();
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(1)));

        let pg = pg_config(&config("host=db user=u keepalives_idle=7")).unwrap();
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }
}

/// Shares on runtimes of their own, against the local PostgreSQL.
#[cfg(test)]
mod homes {
    use std::path::Path;

    use tokio::sync::oneshot;

    use super::*;
    use crate::Pool as KilnPool;

    const URL: &str = "postgres://postgres@127.0.0.1:5432/test?connect_timeout=5";

    /// A current-thread runtime running on its own thread until `stop`.
    struct Home {
        handle: Handle,
        stop: oneshot::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Home {
        fn start() -> Self {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::spawn(move || drop(runtime.block_on(stopped)));
            Self {
                handle,
                stop,
                thread,
            }
        }

        /// Ends the runtime and every task on it.
        fn end(self) {
            let _ = self.stop.send(());
            self.thread.join().unwrap();
        }
    }

    /// A pool of 2 on two homes (a share of 1 each), warm; checkouts wait
    /// 300 ms at most.
    async fn pool_on(homes: &[&Home]) -> PostgresPool {
        let mut config = PoolConfig::new(kiln_config::PoolKind::Postgres, URL);
        config.max_size = 2;
        config.wait_timeout = Duration::from_millis(300);
        let homes = Homes::new(homes.iter().map(|home| home.handle.clone()).collect());
        let pool = KilnPool::build_on("main", &config, Path::new("."), &homes).unwrap();
        pool.warm("main", 2)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`)");
        let KilnPool::Postgres(pool) = pool else {
            unreachable!()
        };
        pool
    }

    #[tokio::test]
    async fn each_share_is_driven_on_its_own_home() {
        let (zero, one) = (Home::start(), Home::start());
        let pool = pool_on(&[&zero, &one]).await;
        assert_eq!(pool.shares().len(), 2);
        assert_eq!(pool.status_all().size, 2, "max_size is the total");
        let on_zero = pool.shares()[0].get().await.unwrap();
        let on_one = pool.shares()[1].get().await.unwrap();

        one.end();
        assert!(
            on_one.is_closed(),
            "home 1's connection ended with its runtime"
        );
        assert!(!on_zero.is_closed());
        on_zero.simple_query("SELECT 1").await.unwrap();
        zero.end();
    }

    #[tokio::test]
    async fn a_thread_borrows_an_idle_connection_of_another_share_before_waiting() {
        let (zero, one) = (Home::start(), Home::start());
        let pool = pool_on(&[&zero, &one]).await;
        check_out_from(0);
        let own = pool.get_bounded().await.unwrap();
        assert_eq!(
            pool.shares()[0].status().available,
            0,
            "home 0's share first"
        );
        let borrowed = pool.get_bounded().await.expect("home 1's idle connection");
        assert_eq!(pool.shares()[1].status().available, 0);
        borrowed.simple_query("SELECT 1").await.unwrap();
        // None idle anywhere: it waits on its own share, for wait_timeout.
        assert!(pool.get_bounded().await.is_err());
        // Every checkout counted: two at once, one that waited 300 ms.
        let waits = pool.waits().read();
        assert_eq!(waits.count, 3, "{waits:?}");
        let below = |bound| waits.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(below(250_000_000), 2, "{waits:?}");
        assert!(waits.sum_nanos >= 300_000_000, "{waits:?}");
        drop((own, borrowed));
        zero.end();
        one.end();
    }
}
