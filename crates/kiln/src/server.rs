//! The start-up path and the life of the server: warm everything, then bind,
//! then serve until SIGTERM/SIGINT, reloading on SIGHUP, then drain within
//! one deadline.

mod drain;
mod listeners;
mod workers;

use std::time::Instant;

use kiln_config::Loaded;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use self::drain::drain;
use self::listeners::{bind_and_hand_out, serve_admin};
use self::workers::{start_workers, wait_warm};
use crate::{App, Builder, Kiln, ServeError, StartError, Trigger};

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
    kiln.shared.systemd.ready(&format!(
        "generation {}; listening on {main_addr}, admin on {admin_addr}",
        kiln.current().id()
    ));
    crate::systemd::spawn_watchdog();

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

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}
