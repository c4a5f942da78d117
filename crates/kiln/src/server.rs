//! The start-up path and the life of the server: warm everything, then bind,
//! then serve until SIGTERM/SIGINT, reloading on SIGHUP.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_config::Loaded;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};

use crate::http::accept_loop;
use crate::{App, BuildError, Builder, Kiln, StartError, Trigger};

/// Runs kiln as a server until SIGTERM or SIGINT, then drains and returns.
///
/// Start-up: build and warm every pool concurrently, start
/// `server.workers` threads (each with its own current-thread runtime,
/// building and warming its app instance on itself), and only then bind
/// the main and admin listeners and turn readiness on. Call it on the
/// runtime that should drive PostgreSQL connections and the admin API (the
/// control plane); requests never run there.
///
/// # Errors
///
/// A [`StartError`] naming what was not ready; nothing was bound.
pub async fn serve<A: App>(app: A, loaded: Loaded<A::Config>) -> Result<(), StartError> {
    serve_with(Kiln::builder(app), loaded).await
}

pub(crate) async fn serve_with<A: App>(
    builder: Builder<A>,
    loaded: Loaded<A::Config>,
) -> Result<(), StartError> {
    let started = Instant::now();
    // SIGHUP's default action kills the process: take it over before anything else.
    let mut hangup = signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?;
    let server = loaded.config.server.clone();
    let admin_listen = loaded.config.admin.listen;
    let workers = server.worker_count();
    tracing::info!(
        source = %loaded.source.display(),
        workers,
        pools = loaded.config.pools.len(),
        "Starting kiln: warming before binding"
    );

    let kiln = builder.start(loaded).await?;
    let (stop, stopped) = watch::channel(false);
    let mut threads = Vec::with_capacity(workers);
    let mut listeners = Vec::with_capacity(workers);
    let deadline = tokio::time::Instant::from_std(started) + server.warm_timeout;
    for id in 0..workers {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (listener_tx, listener_rx) = oneshot::channel();
        threads.push(spawn_worker(
            id,
            kiln.clone(),
            ready_tx,
            listener_rx,
            stopped.clone(),
            server.shutdown_grace,
            server.header_read_limit(),
        )?);
        listeners.push((ready_rx, listener_tx));
    }
    for (id, (ready_rx, _)) in listeners.iter_mut().enumerate() {
        match tokio::time::timeout_at(deadline, ready_rx).await {
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
                    timeout: server.warm_timeout,
                }
                .into());
            }
        }
    }

    // Everything is warm: only now bind.
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
    let admin_addr = admin.local_addr().map_err(io("admin listener"))?;
    // Shared: every worker accepts on a clone of one socket (the last gets
    // the original). reuse_port: the first gets it, each other its own socket
    // on the same address (the port resolved, if it was 0).
    let mut main = Some(main);
    for (id, (_, listener_tx)) in listeners.into_iter().enumerate() {
        let listener = if server.reuse_port && id > 0 {
            bind(main_addr, true).map_err(|source| StartError::Bind {
                key: "server.listen",
                addr: main_addr,
                source,
            })?
        } else if server.reuse_port || id + 1 == workers {
            main.take().expect("taken once")
        } else {
            main.as_ref()
                .expect("kept for the last worker")
                .try_clone()
                .map_err(io("cannot share the main listener"))?
        };
        // A worker that died after warming is noticed when its thread is joined.
        let _ = listener_tx.send(listener);
    }
    let admin = tokio::net::TcpListener::from_std(admin).map_err(io("admin listener"))?;
    let admin_router = axum::Router::new()
        .nest(
            "/admin",
            crate::admin::router(kiln.clone(), crate::admin::Mount::Listener(admin_addr)),
        )
        .into_make_service_with_connect_info::<SocketAddr>();
    let mut admin_stopped = stopped.clone();
    let admin_task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = admin_stopped.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(admin, admin_router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "Admin listener failed");
        }
    });

    tokio::spawn(kiln.clone().watch());
    kiln.shared.readiness.set_ready();
    tracing::info!(
        "ready: {workers} workers, {} resources warm in {} ms; listening on {main_addr}, admin on {admin_addr}",
        kiln.current().pools().len(),
        started.elapsed().as_millis()
    );

    let mut terminate = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;
    let signal_name = loop {
        tokio::select! {
            _ = hangup.recv() => {
                // Off the signal loop, so that SIGTERM is heard during a long reload.
                let kiln = kiln.clone();
                tokio::spawn(async move { kiln.reload(Trigger::Signal).await });
            }
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
        }
    };

    tracing::info!(
        signal = signal_name,
        grace = %humantime::format_duration(server.shutdown_grace),
        "Draining: readiness off, no new connections, finishing in-flight requests"
    );
    kiln.shared.readiness.set_draining();
    let _ = stop.send(true);
    let cut: usize = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or(0))
            .sum()
    })
    .await
    .unwrap_or(0);
    let _ = admin_task.await;
    for (_, pool) in kiln.current().pools().iter() {
        pool.close();
    }
    if cut > 0 {
        tracing::warn!(
            connections = cut,
            "Stopped: shutdown_grace expired with connections still open; they were cut"
        );
    } else {
        tracing::info!("Stopped: every in-flight request finished, pools closed");
    }
    Ok(())
}

/// Starts worker `id` on its own thread and current-thread runtime. It
/// attaches to `kiln` (building and warming its app there), reports on
/// `ready`, waits for its share of the listener, then serves until `stop`.
/// The thread returns how many connections the grace period cut.
fn spawn_worker<A: App>(
    id: usize,
    kiln: Kiln<A>,
    ready: oneshot::Sender<Result<(), BuildError>>,
    listener: oneshot::Receiver<std::net::TcpListener>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    header_read_timeout: Option<Duration>,
) -> Result<JoinHandle<usize>, StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(format!("kiln-worker-{id}"))
        .build()
        .map_err(io("cannot build a worker runtime"))?;
    std::thread::Builder::new()
        .name(format!("kiln-worker-{id}"))
        .spawn(move || {
            runtime.block_on(async move {
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
                        accept_loop(listener, worker.service(), stop, grace, header_read_timeout)
                            .await
                    }
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "Worker cannot use the listener");
                        0
                    }
                }
            })
        })
        .map_err(io("cannot spawn a worker thread"))
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
