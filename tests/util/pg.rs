//! PostgreSQL: a schema per test, a proxy the test controls, locks and backend
//! counts.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

const PG_ADDR: &str = "127.0.0.1:5432";
const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5";

/// A schema of its own in database `test`, dropped at the end of the test.
pub(crate) struct PgSchema {
    name: String,
}

impl PgSchema {
    /// The pool URL for kiln, putting the schema first on the search path.
    pub(crate) fn url(&self) -> String {
        self.url_at(PG_ADDR)
    }

    /// The same through another `host:port` (a proxy, a closed port).
    pub(crate) fn url_at(&self, host_port: &str) -> String {
        format!(
            "postgres://postgres@{host_port}/test?application_name={0}&options=-csearch_path%3D{0}",
            self.name
        )
    }

    /// The schema's name, also the `application_name` of kiln's connections.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// PostgreSQL backends serving kiln's connections to this schema now.
    pub(crate) fn backends(&self) -> i64 {
        pg_query_i64(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'",
            self.name
        ))
    }

    /// The same with a password, which trust auth ignores: a secret to hunt
    /// for in logs and answers.
    pub(crate) fn url_with_password(&self, password: &str) -> String {
        self.url()
            .replacen("postgres@", &format!("postgres:{password}@"), 1)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Best effort: a leftover schema harms nothing.
        let _ = pg_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// PostgreSQL at 127.0.0.1:5432 with a fresh schema. Starts the local cluster
/// when it is installed but stopped; panics (never skips) when unreachable.
pub(crate) fn postgres() -> PgSchema {
    static START: Once = Once::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    if pg_execute("SELECT 1").is_err() {
        START.call_once(|| {
            let out = Command::new("sh")
                .arg("-c")
                .arg("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
                .output();
            eprintln!("postgres was not reachable; tried to start it: {out:?}");
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match pg_execute("SELECT 1") {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => panic!(
                    "PostgreSQL is required at {PG_ADDR} (user postgres, db test, trust auth) \
                     and could not be reached or started: {e}"
                ),
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
    }
    let name = format!("kiln_{}_{}", std::process::id(), NEXT.fetch_add(1, SeqCst));
    pg_execute(&format!(
        "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
    ))
    .unwrap_or_else(|e| panic!("create schema {name}: {e}"));
    PgSchema { name }
}

/// A TCP proxy in front of PostgreSQL that counts connections and holds each
/// new one for `delay` before connecting upstream. [`cut`](PgProxy::cut)
/// makes the database vanish as a failover does (open connections end, new
/// ones are accepted and never answered); [`restore`](PgProxy::restore)
/// brings it back.
pub(crate) struct PgProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    /// Connections piped through to PostgreSQL and not closed yet.
    live: AtomicUsize,
    /// Whether the database is cut off, and every socket that a cut ends or
    /// a restore releases.
    outage: Mutex<Outage>,
}

#[derive(Default)]
struct Outage {
    cut: bool,
    /// Both ends of every piped connection.
    piped: Vec<TcpStream>,
    /// Connections accepted during a cut, held unanswered.
    held: Vec<TcpStream>,
}

impl PgProxy {
    pub(crate) fn start(delay: Duration) -> PgProxy {
        let upstream: SocketAddr = PG_ADDR.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (counts2, stop2) = (counts.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                counts2.accepted.fetch_add(1, SeqCst);
                {
                    let mut outage = counts2.outage.lock().unwrap();
                    if outage.cut {
                        outage.held.push(client);
                        continue;
                    }
                }
                let counts = counts2.clone();
                thread::spawn(move || pipe(client, upstream, delay, &counts));
            }
        });
        PgProxy { addr, counts, stop }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections the pool opened so far.
    pub(crate) fn accepted(&self) -> usize {
        self.counts.accepted.load(SeqCst)
    }

    /// Connections open right now.
    pub(crate) fn live(&self) -> usize {
        self.counts.live.load(SeqCst)
    }

    /// The database goes away: every open connection is shut down, and new
    /// ones are accepted but never answered (a black hole, as after a
    /// failover), until [`restore`](Self::restore).
    pub(crate) fn cut(&self) {
        let mut outage = self.counts.outage.lock().unwrap();
        outage.cut = true;
        for stream in outage.piped.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The database comes back: the connections held during the cut are
    /// closed and new ones reach PostgreSQL again.
    pub(crate) fn restore(&self) {
        let mut outage = self.counts.outage.lock().unwrap();
        outage.cut = false;
        for stream in outage.held.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        self.restore();
        self.cut();
    }
}

fn pipe(client: TcpStream, upstream: SocketAddr, delay: Duration, counts: &Counts) {
    thread::sleep(delay);
    let Ok(server) = TcpStream::connect(upstream) else {
        return; // the client sees EOF, as with a dead database
    };
    {
        let mut outage = counts.outage.lock().unwrap();
        if outage.cut {
            return; // cut while connecting: both ends close here
        }
        outage.piped.push(client.try_clone().unwrap());
        outage.piped.push(server.try_clone().unwrap());
    }
    counts.live.fetch_add(1, SeqCst);
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let forward = thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let (mut from_server, mut to_client) = (server, client);
    let _ = io::copy(&mut from_server, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Write);
    let _ = forward.join();
    counts.live.fetch_sub(1, SeqCst);
}

impl PgSchema {
    /// Holds `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE` in a transaction
    /// of its own until the returned guard is dropped: every query on the
    /// table waits meanwhile, holding its pool connection.
    pub(crate) fn lock_table(&self, table: &str) -> PgLock {
        let sql = format!(
            "BEGIN; LOCK TABLE {}.{table} IN ACCESS EXCLUSIVE MODE",
            self.name
        );
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            pg_session(|client| async move {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = locked_tx.send(());
                // Until the guard is dropped (the sender goes away).
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        locked
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("LOCK TABLE {table} did not succeed"));
        PgLock {
            release: Some(release),
            holder: Some(holder),
        }
    }

    /// How many backends wait for a lock on a table of this schema.
    pub(crate) fn waiting_for_locks(&self) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT l.granted AND n.nspname = '{}'",
            self.name
        );
        pg_session(|client| async move {
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get::<_, i64>(0))
        })
        .expect("count lock waiters")
    }
}

/// A table lock held by [`PgSchema::lock_table`]; dropping it commits.
pub(crate) struct PgLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

/// The first column of the first row of `sql`, run on a short-lived admin
/// connection.
pub(crate) fn pg_query_i64(sql: &str) -> i64 {
    pg_session(|client| async move {
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(|e| format!("{sql}: {e:?}"))?;
        Ok(row.get::<_, i64>(0))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `sql` as the superuser, panicking on failure.
pub(crate) fn pg_admin(sql: &str) {
    pg_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `work` on a short-lived admin connection.
fn pg_session<T, F>(work: impl FnOnce(tokio_postgres::Client) -> F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let result = work(client).await;
        let _ = driver.await;
        result
    })
}

/// Runs `sql` on a short-lived admin connection.
fn pg_execute(sql: &str) -> Result<(), String> {
    pg_session(|client| async move { client.batch_execute(sql).await.map_err(|e| e.to_string()) })
}
