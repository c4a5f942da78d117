//! The worker threads: each on its own current-thread runtime, attached to
//! kiln, warm before it gets its share of the listener, and joined by the
//! drain within its deadline.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_config::ServerConfig;
use kiln_resources::Homes;
use tokio::sync::oneshot;

use super::{Stop, io};
use crate::http::{ConnOptions, ConnService, accept_loop};
use crate::{App, BuildError, Kiln, ServeError, StartError};

/// One worker thread and the channels the start-up and the drain use.
pub(super) struct WorkerHandle {
    id: usize,
    thread: JoinHandle<()>,
    /// Whether its app built and warmed.
    ready: oneshot::Receiver<Result<(), BuildError>>,
    /// Its share of the main listeners, sent once everything is warm.
    listener: Option<oneshot::Sender<Vec<std::net::TcpListener>>>,
    /// How many connections the grace cut; dropped unsent if it panicked.
    done: oneshot::Receiver<usize>,
}

/// The started workers, waiting for kiln: [`attach`](Self::attach) hands
/// it to them; dropped unsent, the workers end.
pub(super) struct Started<A: App> {
    pub(super) workers: Vec<WorkerHandle>,
    /// Each worker's runtime, in worker order: they drive the PostgreSQL
    /// connections the workers use.
    pub(super) homes: Homes,
    kiln: Vec<oneshot::Sender<Kiln<A>>>,
}

impl<A: App> Started<A> {
    /// Lets every worker attach to `kiln` (build and warm its app).
    pub(super) fn attach(self, kiln: &Kiln<A>) -> Vec<WorkerHandle> {
        for sender in self.kiln {
            // A worker that died is noticed when start-up waits for it.
            let _ = sender.send(kiln.clone());
        }
        self.workers
    }
}

/// Starts `server.workers` worker threads, each running its runtime (and
/// so the connections it drives) while it waits for kiln.
pub(super) fn start_workers<A: App>(
    stop: &Stop,
    server: &ServerConfig,
) -> Result<Started<A>, StartError> {
    let options = ConnOptions::of(server);
    let (mut workers, mut homes, mut kilns) = (Vec::new(), Vec::new(), Vec::new());
    for id in 0..server.worker_count() {
        let (kiln, kiln_rx) = oneshot::channel();
        let (worker, home) = spawn_worker(id, kiln_rx, stop.clone(), options.clone())?;
        workers.push(worker);
        homes.push(home);
        kilns.push(kiln);
    }
    Ok(Started {
        workers,
        homes: Homes::new(homes),
        kiln: kilns,
    })
}

/// Waits until every worker is warm, or the first failure.
pub(super) async fn wait_warm(
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

impl WorkerHandle {
    /// Hands the worker its share of the main listeners.
    pub(super) fn hand(&mut self, listener: Vec<std::net::TcpListener>) {
        if let Some(sender) = self.listener.take() {
            // A worker that died after warming is noticed when the drain waits for it.
            let _ = sender.send(listener);
        }
    }

    /// Waits (until `deadline`) for the worker to end; returns how many
    /// connections the grace cut.
    pub(super) async fn join(self, deadline: tokio::time::Instant) -> Result<usize, ServeError> {
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

/// Starts worker `id` on its own thread and current-thread runtime, whose
/// handle it returns. It waits for `kiln` and attaches to it (building and
/// warming its app there), reports on `ready`, waits for its share of the
/// listeners, then serves until `stop` holds a deadline. Blocking work still
/// running at the deadline is abandoned with the runtime.
fn spawn_worker<A: App>(
    id: usize,
    kiln: oneshot::Receiver<Kiln<A>>,
    stop: Stop,
    options: ConnOptions,
) -> Result<(WorkerHandle, tokio::runtime::Handle), StartError> {
    let (ready_tx, ready) = oneshot::channel();
    let (listener, listener_rx) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(format!("kiln-worker-{id}"))
        // Access lines wait in the thread's buffer until the worker has no
        // ready work: one write per batch, not one per request.
        .on_thread_park(crate::logging::flush_thread)
        .build()
        .map_err(io("cannot build a worker runtime"))?;
    let home = runtime.handle().clone();
    let thread = std::thread::Builder::new()
        .name(format!("kiln-worker-{id}"))
        .spawn(move || {
            crate::logging::batch_this_thread();
            // This runtime is home `id` of every PostgreSQL pool.
            kiln_resources::check_out_from(id);
            let deadline = stop.clone();
            let cut = runtime.block_on(run_worker(id, kiln, ready_tx, listener_rx, stop, options));
            let left = deadline.borrow().map_or(Duration::ZERO, |deadline| {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            });
            runtime.shutdown_timeout(left);
            // The drain's last lines, before the worker reports it is done.
            crate::logging::flush_thread();
            let _ = done_tx.send(cut);
        })
        .map_err(io("cannot spawn a worker thread"))?;
    let worker = WorkerHandle {
        id,
        thread,
        ready,
        listener: Some(listener),
        done,
    };
    Ok((worker, home))
}

/// The life of worker `id` on its runtime; returns how many connections
/// the grace cut.
async fn run_worker<A: App>(
    id: usize,
    kiln: oneshot::Receiver<Kiln<A>>,
    ready: oneshot::Sender<Result<(), BuildError>>,
    listener: oneshot::Receiver<Vec<std::net::TcpListener>>,
    stop: Stop,
    options: ConnOptions,
) -> usize {
    let Ok(kiln) = kiln.await else {
        return 0; // start-up failed before the pools were warm
    };
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
    let Ok(listeners) = listener.await else {
        return 0; // start-up failed elsewhere
    };
    let listeners = listeners
        .into_iter()
        .map(tokio::net::TcpListener::from_std)
        .collect::<Result<Vec<_>, _>>();
    match listeners {
        Ok(listeners) => {
            let service = worker.service();
            let each = |_, conn: &_| ConnService::new(service.clone(), conn);
            let loops = listeners
                .into_iter()
                .map(|listener| accept_loop(listener, &each, stop.clone(), &options));
            futures_util::future::join_all(loops)
                .await
                .into_iter()
                .sum()
        }
        Err(e) => {
            tracing::error!(worker = id, error = %e, "Worker cannot use the listener");
            0
        }
    }
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
