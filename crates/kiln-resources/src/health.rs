//! Whether a pool's database answers, and the task that keeps a pool at its
//! `warm` floor: deadpool never connects in the background (no min-idle, as
//! HikariCP's `minimumIdle`), so after an outage the first requests would
//! pay the connects without it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::task::AbortHandle;

use crate::pool::{Pool, WeakPool, chain};

/// How often a healthy pool is checked against its floor. The check is
/// local (no query) unless the pool is below its floor.
const TICK: Duration = Duration::from_secs(1);
/// The longest pause between attempts while the database does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Whether a pool's database answered its last connection attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Health {
    /// Connections open (or the last attempt succeeded).
    #[default]
    Ok,
    /// The last attempt to open a connection failed; requests that need a
    /// new connection fail until it answers again.
    Unreachable,
}

/// One pool's health and last error, shared by its connector (which sees
/// every connection attempt) and its top-up task, and its PostgreSQL
/// connections' I/O tasks, to end them all at once. Touched only when a
/// connection is opened or the top-up runs, never per checkout.
#[derive(Debug, Default)]
pub(crate) struct Monitor {
    state: Mutex<State>,
    connections: Mutex<Vec<AbortHandle>>,
}

#[derive(Debug, Default)]
struct State {
    health: Health,
    last_error: Option<(String, SystemTime)>,
    /// Failed connection attempts since the pool was built.
    errors: u64,
}

impl Monitor {
    /// A connection opened: the database answers.
    pub(crate) fn reachable(&self, pool: &str) {
        let mut state = self.state.lock().expect("health lock");
        if state.health == Health::Unreachable {
            tracing::info!(%pool, "Database reachable again");
        }
        state.health = Health::Ok;
    }

    /// A connection could not be opened.
    pub(crate) fn unreachable(&self, pool: &str, error: String) {
        let mut state = self.state.lock().expect("health lock");
        if state.health == Health::Ok {
            tracing::warn!(%pool, %error, "Database unreachable; requests that need it fail until it answers");
        }
        state.health = Health::Unreachable;
        state.last_error = Some((error, SystemTime::now()));
        state.errors += 1;
    }

    /// The health, the last error and when it happened, and how many
    /// connection attempts failed.
    pub(crate) fn read(&self) -> (Health, Option<String>, Option<SystemTime>, u64) {
        let state = self.state.lock().expect("health lock");
        let (error, at) = match &state.last_error {
            Some((error, at)) => (Some(error.clone()), Some(*at)),
            None => (None, None),
        };
        (state.health, error, at, state.errors)
    }

    /// Remembers a connection's I/O task, forgetting those that ended.
    pub(crate) fn track(&self, connection: AbortHandle) {
        let mut connections = self.connections.lock().expect("connections lock");
        connections.retain(|task| !task.is_finished());
        connections.push(connection);
    }

    /// Ends every connection's I/O task: queries in flight fail at once.
    pub(crate) fn end_connections(&self) {
        for task in self.connections.lock().expect("connections lock").drain(..) {
            task.abort();
        }
    }

    fn is_ok(&self) -> bool {
        self.state.lock().expect("health lock").health == Health::Ok
    }
}

/// Starts the task that keeps `pool` at `warm` connections (idle or in
/// use) on the current runtime. It holds the pool weakly and ends when the
/// pool is closed or dropped.
pub(crate) fn maintain(name: &str, pool: &Pool, warm: usize, monitor: Arc<Monitor>) {
    if warm == 0 {
        return;
    }
    let name = name.to_owned();
    let weak = pool.downgrade();
    tokio::spawn(async move {
        let mut pause = TICK;
        loop {
            tokio::time::sleep(pause).await;
            let Some(pool) = WeakPool::upgrade(&weak) else {
                return;
            };
            if pool.is_closed() {
                return;
            }
            pause = match top_up(&name, &pool, warm, &monitor).await {
                Ok(()) => TICK,
                Err(error) => {
                    monitor.unreachable(&name, error);
                    (pause * 2).min(MAX_BACKOFF)
                }
            };
        }
    });
}

/// Drops connections the server closed, then opens (and pings) what is
/// missing below `warm`: one first when the database was unreachable, so
/// that an outage ties up one pool slot, not `warm`.
async fn top_up(name: &str, pool: &Pool, warm: usize, monitor: &Monitor) -> Result<(), String> {
    pool.drop_closed();
    // At its floor, or shrinking: `Pool::retire` lowers `max_size` first.
    if pool.missing(warm) == 0 || pool.figures().max_size < warm {
        return Ok(());
    }
    if !monitor.is_ok() {
        pool.warm(name, 1).await.map_err(|e| chain(&e))?;
    }
    // Holding the idle ones too makes the pool open the missing ones.
    pool.refill(name, warm).await.map_err(|e| chain(&e))?;
    monitor.reachable(name);
    tracing::info!(pool = %name, connections = warm, "Pool back at its warm floor");
    Ok(())
}
