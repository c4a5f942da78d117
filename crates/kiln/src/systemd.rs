//! What systemd is told (`sd_notify`, a no-op without `NOTIFY_SOCKET`), and
//! only while kiln runs as the server: an embedding app owns its own unit.
//!
//! `READY=1` once bound; `RELOADING=1` with `MONOTONIC_USEC` (required by
//! systemd ≥ 253) then `READY=1` around every reload, whatever its outcome;
//! `STOPPING=1` when the drain begins, after which nothing else is sent;
//! `STATUS=` with the generation; `WATCHDOG=1` every half `WATCHDOG_USEC`.
//!
//! A restart: `RELOADING=1` with `MONOTONIC_USEC` from the old process, then
//! `MAINPID=<new>` once the new one serves, after which the old one sends
//! nothing (not even `STOPPING=1`: the service is not stopping); the new
//! one sends `READY=1` only after that. A failed restart ends with
//! `READY=1` from the old process.

use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;

/// Where the server is in systemd's eyes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Not serving (yet), or embedded: nothing is sent.
    #[default]
    Silent,
    Serving,
    Stopping,
    /// A restart's new process is the main one now.
    HandedOver,
}

/// Sends the server's state changes to systemd. The lock orders them: a
/// reload that ends while the drain begins cannot send `READY=1` after
/// `STOPPING=1`.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    phase: Mutex<Phase>,
}

impl Notifier {
    /// The server is bound and ready: from now on it is systemd's to know.
    pub(crate) fn ready(&self, status: &str) {
        let mut phase = self.phase.lock().expect("notifier lock");
        *phase = Phase::Serving;
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins.
    pub(crate) fn reloading(&self) {
        let phase = self.phase.lock().expect("notifier lock");
        if *phase == Phase::Serving {
            match NotifyState::monotonic_usec_now() {
                Ok(now) => send(&[NotifyState::Reloading, now]),
                Err(e) => tracing::warn!(error = %e, "Cannot read CLOCK_MONOTONIC for systemd"),
            }
        }
    }

    /// A reload ended; `generation` serves, and `refused` says whether the
    /// reload was.
    pub(crate) fn reloaded(&self, generation: u64, refused: bool) {
        let phase = self.phase.lock().expect("notifier lock");
        if *phase == Phase::Serving {
            let status = if refused {
                format!("generation {generation} (the last reload was refused; see the log)")
            } else {
                format!("generation {generation}")
            };
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }

    /// A restart failed: this process serves `generation` on (and is the
    /// main process again if it had handed over).
    pub(crate) fn restart_failed(&self, generation: u64) {
        let mut phase = self.phase.lock().expect("notifier lock");
        let status = format!("generation {generation} (the last restart failed; see the log)");
        match *phase {
            Phase::Serving => send(&[NotifyState::Ready, NotifyState::Status(&status)]),
            Phase::HandedOver => {
                *phase = Phase::Serving;
                send(&[
                    NotifyState::MainPid(std::process::id()),
                    NotifyState::Ready,
                    NotifyState::Status(&status),
                ]);
            }
            Phase::Silent | Phase::Stopping => {}
        }
    }

    /// A restart's new process (`pid`) serves: it is the main process from
    /// now on, and this one sends nothing more.
    pub(crate) fn handed_over(&self, pid: u32) {
        let mut phase = self.phase.lock().expect("notifier lock");
        if std::mem::replace(&mut *phase, Phase::HandedOver) == Phase::Serving {
            send(&[NotifyState::MainPid(pid)]);
        }
    }

    /// The drain begins; nothing is sent after this.
    pub(crate) fn stopping(&self) {
        let mut phase = self.phase.lock().expect("notifier lock");
        if std::mem::replace(&mut *phase, Phase::Stopping) == Phase::Serving {
            send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
        }
    }
}

/// With `WATCHDOG_USEC` set for this process, pings systemd every half of
/// it from the calling runtime (the control plane), for as long as that
/// runtime runs: a wedged control plane stops the pings and systemd
/// restarts the service.
pub(crate) fn spawn_watchdog() {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (timeout / 2).max(Duration::from_millis(1));
    tracing::info!(every = %humantime::format_duration(every), "Pinging the systemd watchdog");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "Cannot notify systemd (NOTIFY_SOCKET)");
    }
}
