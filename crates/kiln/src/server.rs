//! The start-up path and the life of the server: warm everything, then bind
//! (or take over a restarting process's listeners), then serve until
//! SIGTERM/SIGINT or until a restart's new process takes over, reloading on
//! SIGHUP and restarting on SIGUSR2, then drain within one deadline.

mod activation;
mod drain;
mod handoff;
mod listeners;
pub(crate) mod restart;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kiln_config::Loaded;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use self::activation::Activated;
use self::drain::drain;
use self::handoff::{Message, Successor};
use self::listeners::{Bound, Given, bind_and_hand_out, serve_admin};
use self::restart::{Restarter, Sockets};
use self::workers::{WorkerHandle, start_workers, wait_warm};
use crate::handle::Continued;
use crate::{App, Builder, Kiln, ServeError, StartError, Trigger};

/// Why the drain begins when a restart's new process has taken over.
const HANDED_OVER: &str = "restart";

/// When the drain ends; `None` until it begins.
type Stop = watch::Receiver<Option<tokio::time::Instant>>;

/// Runs kiln as a server until SIGTERM or SIGINT, then drains and returns.
///
/// Start-up: start `server.workers` threads (each with its own
/// current-thread runtime), build and warm every pool concurrently, each
/// PostgreSQL pool in one share per worker whose connections that worker's
/// runtime opens and drives, then let each worker build and warm its app
/// instance on itself, and only then bind the main and admin listeners and
/// turn readiness on. Call it on the runtime that should run the admin API
/// and reloads (the control plane); requests and their queries never run
/// there.
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
/// Under systemd (`NOTIFY_SOCKET` set), it sends `READY=1` once bound,
/// `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around every reload,
/// `STOPPING=1` when the drain begins, `STATUS=` with the generation, and
/// `WATCHDOG=1` every half `WATCHDOG_USEC`. [`Kiln::start`] never does: an
/// embedding app owns its unit.
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
    // First: it removes LISTEN_* from the environment, before other threads.
    let activated =
        Activated::from_env()?.sort(loaded.config.server.listen, loaded.config.admin.listen)?;
    let mut signals = Signals::register()?;
    let (exe, args) = restart::invocation().map_err(io("cannot tell this program's path"))?;
    let successor = Successor::from_env()
        .map_err(io("restart handoff"))?
        .map(Arc::new);
    let server = loaded.config.server.clone();
    tracing::info!(
        source = %loaded.source.display(),
        workers = server.worker_count(),
        pools = loaded.config.pools.len(),
        restarted_from = successor.as_ref().map(|s| s.old_pid),
        "Starting kiln: warming before binding"
    );
    let start = start(
        builder,
        loaded,
        &mut signals,
        started,
        successor.clone(),
        activated,
    )
    .await;
    let Started {
        kiln,
        stop,
        workers,
        admin,
        main_addr,
        admin_addr,
        sockets,
    } = match start {
        Ok(started) => started,
        Err(e) => {
            if let Some(successor) = &successor {
                successor.fail(&e);
            }
            return Err(e.into());
        }
    };
    let restarter = Arc::new(Restarter::new(exe, args, sockets));
    kiln.shared
        .restarter
        .set(restarter.clone())
        .expect("one server per kiln");

    tokio::spawn(kiln.clone().watch());
    kiln.shared.readiness.set_ready();
    tracing::info!(
        "ready: {} workers, {} resources warm in {} ms; listening on {main_addr}, admin on {admin_addr}",
        workers.len(),
        kiln.current().pools().len(),
        started.elapsed().as_millis()
    );
    if let Some(successor) = successor {
        let serving = Message::Serving {
            generation: kiln.current().id(),
            main: main_addr,
            admin: admin_addr,
            warm_ms: started.elapsed().as_millis() as u64,
        };
        // systemd must know this process as the main one before READY=1.
        let committed = tokio::task::spawn_blocking(move || successor.serving(&serving)).await;
        match committed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!("The old process ended before it confirmed the handoff")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "The handoff's confirmation failed"),
            Err(e) => tracing::warn!(error = %e, "The handoff's confirmation panicked"),
        }
    }
    kiln.shared.systemd.ready(&format!(
        "generation {}; listening on {main_addr}, admin on {admin_addr}",
        kiln.current().id()
    ));
    crate::systemd::spawn_watchdog();

    let signal = signals.serve_until_stopped(&kiln, &restarter).await;
    drain(&kiln, signal, stop, workers, admin, &restarter).await
}

/// A server that has started: warm, bound, its admin API served.
struct Started<A: App> {
    kiln: Kiln<A>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
    workers: Vec<WorkerHandle>,
    admin: tokio::task::JoinHandle<usize>,
    main_addr: SocketAddr,
    admin_addr: SocketAddr,
    sockets: Sockets,
}

/// Start-up short of readiness: warm every pool, resource and worker, then
/// bind (or, for a restart's new process, take over the old one's
/// listeners and bind only new addresses; else use those systemd
/// `activated`) and serve the admin API.
async fn start<A: App>(
    builder: Builder<A>,
    loaded: Loaded<A::Config>,
    signals: &mut Signals,
    started: Instant,
    successor: Option<Arc<Successor>>,
    activated: Given,
) -> Result<Started<A>, StartError> {
    let server = loaded.config.server.clone();
    let admin_listen = loaded.config.admin.listen;
    let continued = successor.as_deref().map(|s| Continued {
        generation: s.generation,
        history: s.history.clone(),
        config: s.config.clone(),
    });
    let (stop, stopped) = watch::channel(None);
    // The workers' runtimes run first: they drive the pools' connections.
    let waiting = start_workers(&stopped, &server)?;
    let homes = Some(waiting.homes.clone());
    let kiln = signals
        .unless_stopped(
            "warming pools",
            builder.start_unready(loaded, continued, homes),
        )
        .await??;
    let mut workers = waiting.attach(&kiln);
    let warm_deadline = tokio::time::Instant::from_std(started) + server.warm_timeout;
    signals
        .unless_stopped(
            "warming workers",
            wait_warm(&mut workers, warm_deadline, server.warm_timeout),
        )
        .await??;
    let given = match successor {
        Some(successor) => {
            let taken = tokio::task::spawn_blocking(move || successor.take_sockets()).await;
            let inherited = taken
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                .map_err(io("taking over the old process's listeners"))?;
            match inherited {
                Some(inherited) => Given::inherited(inherited, server.listen, admin_listen),
                None => {
                    tracing::warn!(
                        "The old process ended before it handed over its listeners: binding them anew"
                    );
                    Given::default()
                }
            }
        }
        None => activated,
    };
    let Bound {
        main_addr,
        admin,
        sockets,
    } = bind_and_hand_out(&server, admin_listen, &mut workers, given)?;
    let admin_addr = admin.local_addr().map_err(io("admin listener"))?;
    let admin = serve_admin(&kiln, admin, stopped, &server)?;
    Ok(Started {
        kiln,
        stop,
        workers,
        admin,
        main_addr,
        admin_addr,
        sockets,
    })
}

/// SIGHUP (reload), SIGUSR2 (restart), SIGTERM and SIGINT (drain), taken
/// over before anything else so that none of them kills the process with
/// its default action.
struct Signals {
    hangup: Signal,
    user2: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn register() -> Result<Self, StartError> {
        Ok(Self {
            hangup: signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?,
            user2: signal(SignalKind::user_defined2()).map_err(io("cannot handle SIGUSR2"))?,
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

    /// Reloads on every SIGHUP and restarts on every SIGUSR2 until SIGTERM
    /// or SIGINT, whose name it returns, or until a restart's new process
    /// has taken over (`restart`).
    async fn serve_until_stopped<A: App>(
        &mut self,
        kiln: &Kiln<A>,
        restarter: &Restarter,
    ) -> &'static str {
        loop {
            // Off the signal loop, so that SIGTERM is heard during a long reload.
            tokio::select! {
                signal = first_stop(&mut self.terminate, &mut self.interrupt) => return signal,
                _ = restarter.handed_over() => return HANDED_OVER,
                _ = self.hangup.recv() => {
                    let kiln = kiln.clone();
                    tokio::spawn(async move { kiln.reload(Trigger::Signal).await });
                }
                _ = self.user2.recv() => {
                    // The outcome is logged; a signal has no one to answer.
                    let kiln = kiln.clone();
                    tokio::spawn(async move { kiln.restart().await });
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

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}
