//! The drain: readiness off, the drain delay, then one deadline for
//! everything that is left.

use std::time::Duration;

use tokio::sync::watch;

use super::HANDED_OVER;
use super::restart::Restarter;
use super::workers::WorkerHandle;
use crate::{App, Kiln, ServeError};

/// How long past the drain's deadline kiln waits for a worker thread to end
/// before exiting without it (a handler that never yields holds its thread).
const JOIN_MARGIN: Duration = Duration::from_secs(1);

/// Drains after `signal`: readiness off, `drain_delay` of serving as usual,
/// then one deadline (`shutdown_grace` from then) for the workers' requests
/// and blocking work, the admin listener, the thread joins and the pools.
/// After a restart ([`HANDED_OVER`]) there is no `drain_delay`: the new
/// process already accepts on the same sockets.
pub(super) async fn drain<A: App>(
    kiln: &Kiln<A>,
    signal: &'static str,
    stop: watch::Sender<Option<tokio::time::Instant>>,
    workers: Vec<WorkerHandle>,
    admin: tokio::task::JoinHandle<usize>,
    restarter: &Restarter,
) -> Result<(), ServeError> {
    // The current generation's values: a reload may have changed them.
    let server = kiln.current().config().server.clone();
    let grace = server.shutdown_grace;
    kiln.shared.systemd.stopping();
    kiln.shared.readiness.set_draining();
    // After the fact: whoever reads this line finds /readyz answering 503.
    tracing::info!(
        signal,
        grace = %humantime::format_duration(grace),
        drain_delay = %humantime::format_duration(server.drain_delay),
        "Draining: readiness off, then no new connections, finishing in-flight requests"
    );
    if signal != HANDED_OVER {
        // The operator wants the service stopped: a new process warming
        // for a restart too.
        restarter.cancel(signal, grace);
    }
    if signal != HANDED_OVER && !server.drain_delay.is_zero() {
        tokio::time::sleep(server.drain_delay).await;
        tracing::info!("Drain delay over: closing the listeners");
    }
    let deadline = tokio::time::Instant::now() + grace;
    stop.send_replace(Some(deadline));
    restarter.release();

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
    // A cancelled restart's new process has ended (or been killed).
    restarter.settled(deadline + JOIN_MARGIN).await;
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
