//! The start-up path and the life of the server: warm everything, then bind,
//! then serve until SIGTERM/SIGINT, reloading on SIGHUP, then drain within
//! one deadline.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ConnectInfo;
use kiln_config::{Loaded, ServerConfig};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{oneshot, watch};
use tower::Layer;

use crate::http::accept_loop;
use crate::{App, BuildError, Builder, Kiln, ServeError, StartError, Trigger};

/// How long past the drain's deadline kiln waits for a worker thread to end
/// before exiting without it (a handler that never yields holds its thread).
const JOIN_MARGIN: Duration = Duration::from_secs(1);

/// The admin listener's header-read timeout when `server.header_read_timeout`
/// is off: the admin port is never behind the proxy that turned it off.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// When the drain ends; `None` until it begins.
type Stop = watch::Receiver<Option<tokio::time::Instant>>;

/// Runs kiln as a server until SIGTERM or SIGINT, then drains and returns.
///
/// Start-up: build and warm every pool concurrently, start
/// `server.workers` threads (each with its own current-thread runtime,
/// building and warming its app instance on itself), and only then bind
/// the main and admin listeners and turn readiness on. Call it on the
/// runtime that should drive PostgreSQL connections and the admin API (the
/// control plane); requests never run there.
///
/// Drain: readiness off, `server.drain_delay` of serving as usual, then
/// the listeners close and everything left (in-flight requests, blocking
/// work, the admin listener) gets `server.shutdown_grace`, both read from
/// the current generation; what is still running then is cut. Blocking
/// work cut on this runtime (a connection's drop waiting for a query) may
/// still run when it returns: end the runtime with
/// `Runtime::shutdown_background` (or `shutdown_timeout`), not a plain
/// drop, which waits for it.
///
/// # Errors
///
/// A [`ServeError`]: start-up failed or was interrupted (nothing was
/// bound), a worker thread panicked, or the grace cut requests.
pub async fn serve<A: App>(app: A, loaded: Loaded<A::Config>) -> Result<(), ServeError> {
    serve_with(Kiln::builder(app), loaded).await
}

pub(crate) async fn serve_with<A: App>(
    builder: Builder<A>,
    loaded: Loaded<A::Config>,
) -> Result<(), ServeError> {
    let started = Instant::now();
    let mut signals = Signals::register()?;
    let server = loaded.config.server.clone();
    let admin_listen = loaded.config.admin.listen;
    tracing::info!(
        source = %loaded.source.display(),
        workers = server.worker_count(),
        pools = loaded.config.pools.len(),
        "Starting kiln: warming before binding"
    );

    let kiln = signals
        .unless_stopped("warming pools", builder.start_unready(loaded))
        .await??;
    let (stop, stopped) = watch::channel(None);
    let mut workers = start_workers(&kiln, &stopped, &server)?;
    let warm_deadline = tokio::time::Instant::from_std(started) + server.warm_timeout;
    signals
        .unless_stopped(
            "warming workers",
            wait_warm(&mut workers, warm_deadline, server.warm_timeout),
        )
        .await??;
    let (main_addr, admin) = bind_and_hand_out(&server, admin_listen, &mut workers)?;
    let admin_addr = admin.local_addr().map_err(io("admin listener"))?;
    let admin = serve_admin(&kiln, admin, stopped, &server)?;

    tokio::spawn(kiln.clone().watch());
    kiln.shared.readiness.set_ready();
    tracing::info!(
        "ready: {} workers, {} resources warm in {} ms; listening on {main_addr}, admin on {admin_addr}",
        workers.len(),
        kiln.current().pools().len(),
        started.elapsed().as_millis()
    );

    let signal = signals.serve_until_stopped(&kiln).await;
    drain(&kiln, signal, stop, workers, admin).await
}

/// SIGHUP (reload), SIGTERM and SIGINT (drain), taken over before anything
/// else so that none of them kills the process with its default action.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn register() -> Result<Self, StartError> {
        Ok(Self {
            hangup: signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?,
            terminate: signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?,
            interrupt: signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?,
        })
    }

    /// The next SIGTERM or SIGINT, by name.
    async fn stopped(&mut self) -> &'static str {
        first_stop(&mut self.terminate, &mut self.interrupt).await
    }

    /// Runs start-up `phase` unless SIGTERM or SIGINT comes first. A SIGHUP
    /// meanwhile waits for the server to be ready.
    async fn unless_stopped<T>(
        &mut self,
        phase: &'static str,
        work: impl Future<Output = T>,
    ) -> Result<T, StartError> {
        tokio::select! {
            done = work => Ok(done),
            signal = self.stopped() => {
                tracing::warn!(signal, phase, "Stopped during start-up");
                Err(StartError::Interrupted { signal, phase })
            }
        }
    }

    /// Reloads on every SIGHUP until SIGTERM or SIGINT, whose name it returns.
    async fn serve_until_stopped<A: App>(&mut self, kiln: &Kiln<A>) -> &'static str {
        loop {
            tokio::select! {
                signal = first_stop(&mut self.terminate, &mut self.interrupt) => return signal,
                _ = self.hangup.recv() => {
                    // Off the signal loop, so that SIGTERM is heard during a long reload.
                    let kiln = kiln.clone();
                    tokio::spawn(async move { kiln.reload(Trigger::Signal).await });
                }
            }
        }
    }
}

/// The next of SIGTERM and SIGINT, by name.
async fn first_stop(terminate: &mut Signal, interrupt: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}

/// One worker thread and the channels the start-up and the drain use.
struct WorkerHandle {
    id: usize,
    thread: JoinHandle<()>,
    /// Whether its app built and warmed.
    ready: oneshot::Receiver<Result<(), BuildError>>,
    /// Its share of the main listener, sent once everything is warm.
    listener: Option<oneshot::Sender<std::net::TcpListener>>,
    /// How many connections the grace cut; dropped unsent if it panicked.
    done: oneshot::Receiver<usize>,
}

/// Starts `server.workers` worker threads.
fn start_workers<A: App>(
    kiln: &Kiln<A>,
    stop: &Stop,
    server: &ServerConfig,
) -> Result<Vec<WorkerHandle>, StartError> {
    let header_read_timeout = server.header_read_limit();
    (0..server.worker_count())
        .map(|id| spawn_worker(id, kiln.clone(), stop.clone(), header_read_timeout))
        .collect()
}

/// Waits until every worker is warm, or the first failure.
async fn wait_warm(
    workers: &mut [WorkerHandle],
    deadline: tokio::time::Instant,
    warm_timeout: Duration,
) -> Result<(), StartError> {
    for worker in workers {
        let id = worker.id;
        match tokio::time::timeout_at(deadline, &mut worker.ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(_)) => {
                return Err(BuildError::Worker {
                    worker: id,
                    source: "the worker thread died while warming".into(),
                }
                .into());
            }
            Err(_) => {
                return Err(BuildError::Timeout {
                    what: format!("worker {id}"),
                    timeout: warm_timeout,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Binds the main and admin listeners (everything is warm by now) and hands
/// each worker its share of the main one. Shared: every worker accepts on a
/// clone of one socket (the last gets the original). `reuse_port`: the
/// first gets it, each other its own socket on the same address (the port
/// resolved, if it was 0). Returns the main address and the admin listener.
fn bind_and_hand_out(
    server: &ServerConfig,
    admin_listen: SocketAddr,
    workers: &mut [WorkerHandle],
) -> Result<(SocketAddr, std::net::TcpListener), StartError> {
    let main = bind(server.listen, server.reuse_port).map_err(|source| StartError::Bind {
        key: "server.listen",
        addr: server.listen,
        source,
    })?;
    let admin = bind(admin_listen, false).map_err(|source| StartError::Bind {
        key: "admin.listen",
        addr: admin_listen,
        source,
    })?;
    let main_addr = main.local_addr().map_err(io("main listener"))?;
    let count = workers.len();
    let mut main = Some(main);
    for (id, worker) in workers.iter_mut().enumerate() {
        let listener = if server.reuse_port && id > 0 {
            bind(main_addr, true).map_err(|source| StartError::Bind {
                key: "server.listen",
                addr: main_addr,
                source,
            })?
        } else if server.reuse_port || id + 1 == count {
            main.take().expect("taken once")
        } else {
            main.as_ref()
                .expect("kept for the last worker")
                .try_clone()
                .map_err(io("cannot share the main listener"))?
        };
        if let Some(sender) = worker.listener.take() {
            // A worker that died after warming is noticed when the drain waits for it.
            let _ = sender.send(listener);
        }
    }
    Ok((main_addr, admin))
}

/// Serves the admin API on `listener` on this (the control) runtime, with
/// a header-read timeout, until the drain's deadline. Returns how many
/// connections the deadline cut.
fn serve_admin<A: App>(
    kiln: &Kiln<A>,
    listener: std::net::TcpListener,
    stop: Stop,
    server: &ServerConfig,
) -> Result<tokio::task::JoinHandle<usize>, StartError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io("admin listener"))?;
    let addr = listener.local_addr().map_err(io("admin listener"))?;
    let router = axum::Router::new().nest(
        "/admin",
        crate::admin::router(kiln.clone(), crate::admin::Mount::Listener(addr)),
    );
    let header_read_timeout = server
        .header_read_limit()
        .unwrap_or(ADMIN_HEADER_READ_TIMEOUT);
    // The peer's address, for the audit log and the history.
    let service = move |peer: SocketAddr| Extension(ConnectInfo(peer)).layer(router.clone());
    Ok(tokio::spawn(accept_loop(
        listener,
        service,
        stop,
        Some(header_read_timeout),
    )))
}

/// Drains after `signal`: readiness off, `drain_delay` of serving as usual,
/// then one deadline (`shutdown_grace` from then) for the workers' requests
/// and blocking work, the admin listener, the thread joins and the pools.
async fn drain<A: App>(
    kiln: &Kiln<A>,
    signal: &'static str,
    stop: watch::Sender<Option<tokio::time::Instant>>,
    workers: Vec<WorkerHandle>,
    admin: tokio::task::JoinHandle<usize>,
) -> Result<(), ServeError> {
    // The current generation's values: a reload may have changed them.
    let server = kiln.current().config().server.clone();
    let grace = server.shutdown_grace;
    tracing::info!(
        signal,
        grace = %humantime::format_duration(grace),
        drain_delay = %humantime::format_duration(server.drain_delay),
        "Draining: readiness off, then no new connections, finishing in-flight requests"
    );
    kiln.shared.readiness.set_draining();
    if !server.drain_delay.is_zero() {
        tokio::time::sleep(server.drain_delay).await;
        tracing::info!("Drain delay over: closing the listeners");
    }
    let deadline = tokio::time::Instant::now() + grace;
    stop.send_replace(Some(deadline));

    let mut cut = 0;
    let mut failed = None;
    for worker in workers {
        match worker.join(deadline + JOIN_MARGIN).await {
            Ok(n) => cut += n,
            Err(e) => {
                tracing::error!(error = %e, "A worker did not stop cleanly");
                failed.get_or_insert(e);
            }
        }
    }
    // accept_loop ends by the deadline.
    cut += admin.await.unwrap_or(0);
    kiln.close_pools(deadline).await;
    if let Some(e) = failed {
        return Err(e);
    }
    if cut > 0 {
        let e = ServeError::Cut {
            requests: cut,
            grace,
        };
        tracing::warn!(requests = cut, "Stopped: {e}");
        return Err(e);
    }
    tracing::info!("Stopped: every in-flight request finished, pools closed");
    Ok(())
}

impl WorkerHandle {
    /// Waits (until `deadline`) for the worker to end; returns how many
    /// connections the grace cut.
    async fn join(self, deadline: tokio::time::Instant) -> Result<usize, ServeError> {
        let problem = match tokio::time::timeout_at(deadline, self.done).await {
            Ok(Ok(cut)) => {
                let _ = self.thread.join(); // it has returned
                return Ok(cut);
            }
            // Unwinding dropped `done`; the payload is there once the thread ends.
            Ok(Err(_)) => match self.thread.is_finished().then(|| self.thread.join()) {
                Some(Err(payload)) => format!("panicked: {}", panic_message(&*payload)),
                _ => "panicked".to_owned(),
            },
            Err(_) => "did not stop by the deadline (a handler that never yields?)".to_owned(),
        };
        Err(ServeError::Worker {
            worker: self.id,
            problem,
        })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Starts worker `id` on its own thread and current-thread runtime. It
/// attaches to `kiln` (building and warming its app there), reports on
/// `ready`, waits for its share of the listener, then serves until `stop`
/// holds a deadline. Blocking work still running at the deadline is
/// abandoned with the runtime.
fn spawn_worker<A: App>(
    id: usize,
    kiln: Kiln<A>,
    stop: Stop,
    header_read_timeout: Option<Duration>,
) -> Result<WorkerHandle, StartError> {
    let (ready_tx, ready) = oneshot::channel();
    let (listener, listener_rx) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(format!("kiln-worker-{id}"))
        .build()
        .map_err(io("cannot build a worker runtime"))?;
    let thread = std::thread::Builder::new()
        .name(format!("kiln-worker-{id}"))
        .spawn(move || {
            let deadline = stop.clone();
            let cut = runtime.block_on(run_worker(
                id,
                kiln,
                ready_tx,
                listener_rx,
                stop,
                header_read_timeout,
            ));
            let left = deadline.borrow().map_or(Duration::ZERO, |deadline| {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            });
            runtime.shutdown_timeout(left);
            let _ = done_tx.send(cut);
        })
        .map_err(io("cannot spawn a worker thread"))?;
    Ok(WorkerHandle {
        id,
        thread,
        ready,
        listener: Some(listener),
        done,
    })
}

/// The life of worker `id` on its runtime; returns how many connections
/// the grace cut.
async fn run_worker<A: App>(
    id: usize,
    kiln: Kiln<A>,
    ready: oneshot::Sender<Result<(), BuildError>>,
    listener: oneshot::Receiver<std::net::TcpListener>,
    stop: Stop,
    header_read_timeout: Option<Duration>,
) -> usize {
    let warming = Instant::now();
    let worker = match kiln.worker().await {
        Ok(worker) => worker,
        Err(e) => {
            let _ = ready.send(Err(e));
            return 0;
        }
    };
    tracing::info!(
        worker = id,
        took_ms = warming.elapsed().as_millis() as u64,
        "Worker warm"
    );
    let _ = ready.send(Ok(()));
    let Ok(listener) = listener.await else {
        return 0; // start-up failed elsewhere
    };
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => {
            let service = worker.service();
            accept_loop(listener, |_| service.clone(), stop, header_read_timeout).await
        }
        Err(e) => {
            tracing::error!(worker = id, error = %e, "Worker cannot use the listener");
            0
        }
    }
}

/// Binds a non-blocking listener with a deep backlog; with `reuse_port`,
/// one of several on the same address.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_that_panicked_fails_the_drain() {
        let (_ready, ready) = oneshot::channel();
        let (done_tx, done) = oneshot::channel::<usize>();
        let thread = std::thread::spawn(move || {
            let _done = done_tx; // dropped unsent by the unwinding
            panic!("a bug in the worker");
        });
        let worker = WorkerHandle {
            id: 3,
            thread,
            ready,
            listener: None,
            done,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let error = worker
            .join(deadline)
            .await
            .expect_err("a panic is an error");
        assert!(
            matches!(&error, ServeError::Worker { worker: 3, problem } if problem.starts_with("panicked")),
            "{error}"
        );
    }
}
