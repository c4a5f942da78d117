//! A zero-downtime restart, on the old process's side: start the binary at
//! this process's path with the same arguments and environment, let it warm
//! completely while this one serves, hand it the listening sockets (one
//! kernel accept queue throughout: nothing queued is reset), and only once
//! it serves stop accepting and drain. A new process that fails, crashes or
//! hangs past `server.restart_timeout` is killed and this one keeps serving
//! as if nothing happened. SIGTERM (or SIGINT) before the handoff's commit
//! cancels the restart: the operator wants the service stopped, so the new
//! process is stopped too (as SIGTERM stops any kiln: a warming one exits,
//! a serving one drains) while this one drains; after the commit the new
//! process is the service, and only this one, draining already, stops. See
//! [`handoff`](super::handoff) for the exchange.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::watch;

use super::handoff::{Channel, HANDOFF_ENV, Listener, Message};
use crate::{App, Kiln, Refusal};

/// How many of the new process's last log lines a failure reports.
const TAIL_LINES: usize = 20;
/// How often the old process looks at the new one while it waits for it.
const POLL: Duration = Duration::from_millis(100);
/// How often it looks while the new process stops.
const STOP_POLL: Duration = Duration::from_millis(10);

/// A restart that was applied: the new process serves on the listeners,
/// and this one drains.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RestartOutcome {
    /// The process that handed over (and now drains).
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
    /// The new process's generation (the old one's next).
    pub generation: u64,
    /// The old process's last generation.
    pub previous: u64,
    /// The new process's main listener.
    pub listen: SocketAddr,
    /// The new process's admin listener.
    pub admin: SocketAddr,
    /// From the new process's start to its serving; `warm_ms`, whole
    /// milliseconds, in JSON.
    #[serde(rename = "warm_ms", serialize_with = "crate::json_time::millis")]
    pub warm: Duration,
    /// From the request to the new process serving; `took_ms`, whole
    /// milliseconds, in JSON.
    #[serde(rename = "took_ms", serialize_with = "crate::json_time::millis")]
    pub took: Duration,
}

/// Why a restart did not happen. In every case the old process keeps
/// serving, its listeners untouched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// Another restart is in flight.
    #[error("a restart is already in flight: wait for its answer")]
    InFlight,
    /// kiln does not run as the server here (it is embedded): there is no
    /// process of its own to restart.
    #[error(
        "restart needs kiln to run as the server (kiln::serve): an embedded kiln's process belongs to the app"
    )]
    NotServer,
    /// This process is draining (it was told to stop, or it has handed over).
    #[error("the server is draining; restarts are refused")]
    Draining,
    /// This process was told to stop while the restart was in flight: the
    /// new process was stopped too, and this one drains.
    #[error(
        "{signal} arrived before the new process (pid {pid}) took over: it was stopped ({status}), and this process (pid {}) drains",
        std::process::id()
    )]
    Cancelled {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The new process.
        pid: u32,
        /// How it ended.
        status: String,
    },
    /// The new process could not take over.
    #[error("{cause}; this process (pid {}) keeps serving", std::process::id())]
    Failed {
        /// What went wrong.
        cause: String,
        /// The new process's last log lines.
        log: Vec<String>,
    },
}

impl RestartError {
    /// 409 when a restart is in flight or kiln is embedded, 503 when the
    /// server drains (or began to meanwhile) or the new process failed.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InFlight | Self::NotServer => StatusCode::CONFLICT,
            Self::Draining | Self::Cancelled { .. } | Self::Failed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// This refusal as an HTTP answer naming `generation` (the one that
    /// keeps serving), with the new process's last log lines.
    pub fn at(&self, generation: u64) -> Refusal {
        let refusal = Refusal::new(self.status(), self.to_string(), generation);
        match self {
            Self::Failed { log, .. } => refusal.with_log(log.clone()),
            _ => refusal,
        }
    }
}

/// What a serving process needs to restart: where its binary is, its
/// arguments, and copies of its listening sockets to hand over.
#[derive(Debug)]
pub(crate) struct Restarter {
    exe: PathBuf,
    args: Vec<OsString>,
    /// Held for the whole of one restart.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// Copies of the listeners; dropped when this process drains, so that
    /// no listener stays open that nobody accepts on.
    sockets: Mutex<Option<Sockets>>,
    /// The pid of the process that took over: this one drains.
    handed_over: watch::Sender<Option<u32>>,
    /// Set once this process's accept loops are told to stop: from then on
    /// a new connection reaches the new process.
    stopped_accepting: watch::Sender<bool>,
    /// Set when this process is told to stop; locked across the commit, so
    /// a restart either commits or sees it.
    cancelled: Arc<Mutex<Option<Cancel>>>,
}

/// Why a restart in flight gives up, and by when its new process must have
/// ended (it is killed then).
#[derive(Clone, Copy, Debug)]
struct Cancel {
    signal: &'static str,
    by: Instant,
}

/// This process's listening sockets, as they are handed over.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// One, or one per worker with `reuse_port`.
    pub(crate) main: Vec<OwnedFd>,
    pub(crate) admin: OwnedFd,
}

impl Sockets {
    fn try_clone(&self) -> std::io::Result<Sockets> {
        Ok(Sockets {
            main: self
                .main
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<Result<_, _>>()?,
            admin: self.admin.try_clone()?,
        })
    }
}

/// The binary and arguments this process was started with, resolved now:
/// a relative path would not resolve from elsewhere, and `/proc/self/exe`
/// would name the old file once an upgrade replaced it.
pub(crate) fn invocation() -> std::io::Result<(PathBuf, Vec<OsString>)> {
    let mut args = std::env::args_os();
    let argv0 = args.next().map(PathBuf::from);
    let exe = match argv0 {
        Some(path) if path.components().count() > 1 => std::path::absolute(path)?,
        _ => std::env::current_exe()?,
    };
    Ok((exe, args.collect()))
}

impl Restarter {
    pub(crate) fn new(exe: PathBuf, args: Vec<OsString>, sockets: Sockets) -> Self {
        Self {
            exe,
            args,
            one_at_a_time: tokio::sync::Mutex::new(()),
            sockets: Mutex::new(Some(sockets)),
            handed_over: watch::Sender::new(None),
            stopped_accepting: watch::Sender::new(false),
            cancelled: Arc::default(),
        }
    }

    /// This process was told to stop by `signal`: a restart in flight, not
    /// committed yet, stops its new process (killing it if it has not ended
    /// within `grace`) instead of handing over.
    pub(crate) fn cancel(&self, signal: &'static str, grace: Duration) {
        let by = Instant::now() + grace;
        let mut cancelled = self.cancelled.lock().expect("cancel lock");
        cancelled.get_or_insert(Cancel { signal, by });
    }

    /// Waits until no restart is in flight (a cancelled one has stopped its
    /// new process), or until `deadline`.
    pub(crate) async fn settled(&self, deadline: tokio::time::Instant) {
        let _ = tokio::time::timeout_at(deadline, self.one_at_a_time.lock()).await;
    }

    /// Waits until a new process has taken over; its pid.
    pub(crate) async fn handed_over(&self) -> u32 {
        let mut receiver = self.handed_over.subscribe();
        let pid = receiver.wait_for(Option::is_some).await.map(|pid| *pid);
        match pid {
            Ok(Some(pid)) => pid,
            // The sender lives as long as `self`.
            _ => std::future::pending().await,
        }
    }

    /// Drops this process's copies of the listeners; its accept loops have
    /// been told to stop.
    pub(crate) fn release(&self) {
        self.sockets.lock().expect("sockets lock").take();
        self.stopped_accepting.send_replace(true);
    }

    /// One restart, start to answer (see the module's docs).
    pub(crate) async fn restart<A: App>(
        &self,
        kiln: &Kiln<A>,
    ) -> Result<RestartOutcome, RestartError> {
        let started = Instant::now();
        let Ok(_one) = self.one_at_a_time.try_lock() else {
            return Err(RestartError::InFlight);
        };
        // Reloads wait meanwhile: the generation the new process continues
        // from stays the current one.
        let _reloads = kiln.shared.reload_lock.lock().await;
        let sockets = self
            .sockets
            .lock()
            .expect("sockets lock")
            .as_ref()
            .map(Sockets::try_clone);
        let sockets = match sockets {
            _ if kiln.shared.readiness.is_draining() => return Err(RestartError::Draining),
            None => return Err(RestartError::Draining),
            Some(Err(e)) => return Err(failed(format!("cannot copy the listeners: {e}"))),
            Some(Ok(sockets)) => sockets,
        };
        let current = kiln.current();
        let config = current.config();
        let hello = Message::Hello {
            pid: std::process::id(),
            generation: current.id(),
            history: kiln.shared.history.oldest_first(),
            config: current.raw().clone(),
        };
        let announce = Message::Sockets {
            main: sockets.main.len(),
            main_listen: config.server.listen,
            admin_listen: config.admin.listen,
        };
        let timeout = config.server.restart_timeout;
        tracing::info!(exe = %self.exe.display(), timeout = %humantime::format_duration(timeout), "Restarting: starting a new process; this one serves until it takes over");
        kiln.shared.systemd.reloading();
        let (exe, args) = (self.exe.clone(), self.args.clone());
        let cancelled = self.cancelled.clone();
        let result = tokio::task::spawn_blocking(move || {
            take_over(&exe, &args, &hello, &announce, sockets, timeout, &cancelled)
        })
        .await
        .unwrap_or_else(|e| Err(failed(format!("the restart panicked: {e}"))));
        let result = match result {
            Ok(new) => self.commit(kiln, new).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(new) => {
                let outcome = RestartOutcome {
                    old_pid: std::process::id(),
                    new_pid: new.pid,
                    generation: new.generation,
                    previous: current.id(),
                    listen: new.main,
                    admin: new.admin,
                    warm: Duration::from_millis(new.warm_ms),
                    took: started.elapsed(),
                };
                tracing::info!(
                    new_pid = outcome.new_pid,
                    generation = outcome.generation,
                    warm_ms = outcome.warm.as_millis() as u64,
                    took_ms = outcome.took.as_millis() as u64,
                    "Restarted: the new process serves; this one stops accepting and drains"
                );
                self.handed_over.send_replace(Some(new.pid));
                // Answer only once this process no longer accepts: a client
                // that calls again reaches the new one.
                let _ = self
                    .stopped_accepting
                    .subscribe()
                    .wait_for(|stopped| *stopped)
                    .await;
                Ok(outcome)
            }
            Err(e) => {
                kiln.shared.systemd.restart_failed(current.id());
                tracing::error!(error = %e, "Restart failed");
                Err(e)
            }
        }
    }

    /// Tells systemd and the new process, which serves, that it is the main
    /// one now, unless this process was told to stop meanwhile: then it is
    /// stopped instead.
    async fn commit<A: App>(
        &self,
        kiln: &Kiln<A>,
        mut new: NewProcess,
    ) -> Result<NewProcess, RestartError> {
        let Cancel { signal, by } = {
            let cancelled = self.cancelled.lock().expect("cancel lock");
            match *cancelled {
                Some(cancel) => cancel,
                None => {
                    kiln.shared.systemd.handed_over(new.pid);
                    return match new.channel.send(&Message::Commit, &[]) {
                        Ok(()) => Ok(new),
                        Err(e) => {
                            let _ = new.child.kill();
                            let _ = new.child.wait();
                            Err(failed(format!(
                                "the new process (pid {}) ended right after it served: {e}",
                                new.pid
                            )))
                        }
                    };
                }
            }
        };
        // Its end of the channel closes: it stops waiting for the commit.
        drop(new.channel);
        let (pid, mut child) = (new.pid, new.child);
        let status = tokio::task::spawn_blocking(move || stop(&mut child, by))
            .await
            .unwrap_or_else(|e| e.to_string());
        Err(RestartError::Cancelled {
            signal,
            pid,
            status,
        })
    }
}

/// Stops a new process as SIGTERM stops any kiln (a warming one exits at
/// once, a serving one drains), killing it if it has not ended `by` then.
/// How it ended.
fn stop(child: &mut Child, by: Instant) -> String {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < by => std::thread::sleep(STOP_POLL),
            Ok(None) => {
                let _ = child.kill();
                break child.wait();
            }
            Err(e) => break Err(e),
        }
    };
    status.map_or_else(|e| e.to_string(), |status| status.to_string())
}

impl<A: App> Kiln<A> {
    /// Restarts the server with no request lost: the binary at this
    /// process's path (a replaced binary is what runs) starts with the same
    /// arguments and environment, loads its configuration and warms every
    /// pool, resource and worker as a cold start does, then takes over the
    /// listening sockets and serves; only then does this process stop
    /// accepting and drain. The new process continues the generation
    /// numbering and the reload history. Reloads wait while it runs.
    ///
    /// It applies what a reload cannot (`server.listen`, `server.workers`,
    /// and the other restart-only keys) and upgrades the binary. Answers
    /// once the new process serves (or failed); it runs to its end even if
    /// the caller stops waiting.
    ///
    /// # Errors
    ///
    /// A [`RestartError`]: one is already in flight, kiln is embedded, the
    /// server is draining, or the new process failed (it was killed, and this
    /// process keeps serving).
    pub async fn restart(&self) -> Result<RestartOutcome, RestartError> {
        let Some(restarter) = self.shared.restarter.get().cloned() else {
            return Err(RestartError::NotServer);
        };
        let kiln = self.clone();
        tokio::spawn(async move { restarter.restart(&kiln).await })
            .await
            .unwrap_or_else(|e| Err(failed(format!("the restart panicked: {e}"))))
    }
}

fn failed(cause: String) -> RestartError {
    RestartError::Failed {
        cause,
        log: Vec::new(),
    }
}

/// The new process, serving and waiting for the commit.
struct NewProcess {
    /// Not waited for once it serves: it outlives this process.
    child: Child,
    pid: u32,
    channel: Channel,
    generation: u64,
    main: SocketAddr,
    admin: SocketAddr,
    warm_ms: u64,
}

/// Starts the new process and runs the exchange up to its `Serving`; on
/// any failure kills it and reports why, with its last log lines.
fn take_over(
    exe: &Path,
    args: &[OsString],
    hello: &Message,
    announce: &Message,
    sockets: Sockets,
    timeout: Duration,
    cancelled: &Mutex<Option<Cancel>>,
) -> Result<NewProcess, RestartError> {
    let deadline = Instant::now() + timeout;
    let dir = PrivateDir::create().map_err(|e| {
        failed(format!(
            "cannot create a private folder for the handoff socket: {e}"
        ))
    })?;
    let path = dir.0.join("handoff.sock");
    let listener = Listener::bind(&path).map_err(|e| {
        failed(format!(
            "cannot bind the handoff socket {}: {e}",
            path.display()
        ))
    })?;
    let mut child = Command::new(exe)
        .args(args)
        .env(HANDOFF_ENV, &path)
        // systemd's sockets, if any, are this process's to hand over.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id();
    let tail = Tail::capture(child.stderr.take().expect("piped stderr"));
    let mut watch = Watch {
        child: &mut child,
        deadline,
        cancelled,
    };
    match exchange(&mut watch, &listener, hello, announce, sockets) {
        Ok(serving) => Ok(NewProcess {
            child,
            pid,
            channel: serving.channel,
            generation: serving.generation,
            main: serving.main,
            admin: serving.admin,
            warm_ms: serving.warm_ms,
        }),
        Err(Problem::Cancelled(Cancel { signal, by })) => {
            let status = stop(&mut child, by);
            Err(RestartError::Cancelled {
                signal,
                pid,
                status,
            })
        }
        Err(problem) => {
            let _ = child.kill();
            let status = child.wait();
            let log = tail.finish();
            let cause = match problem {
                Problem::Exited(status) => {
                    let error = log.iter().rev().find(|line| line.contains("error"));
                    match error {
                        Some(line) => format!(
                            "the new process (pid {pid}) exited ({status}) before it served: {line}"
                        ),
                        None => format!(
                            "the new process (pid {pid}) exited ({status}) before it served"
                        ),
                    }
                }
                Problem::Failed(error) => {
                    format!("the new process (pid {pid}) could not start: {error}")
                }
                Problem::Timeout => format!(
                    "the new process (pid {pid}) was not serving within server.restart_timeout ({}): killed ({})",
                    humantime::format_duration(timeout),
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                ),
                Problem::Channel(e) => {
                    format!("the handoff with the new process (pid {pid}) broke: {e}")
                }
                Problem::Cancelled(_) => unreachable!("matched above"),
            };
            Err(RestartError::Failed { cause, log })
        }
    }
}

/// Why the exchange ended early.
enum Problem {
    Exited(ExitStatus),
    Failed(String),
    Timeout,
    Channel(String),
    Cancelled(Cancel),
}

impl From<std::io::Error> for Problem {
    fn from(e: std::io::Error) -> Self {
        Problem::Channel(e.to_string())
    }
}

/// What the new process said once it served.
struct Serving {
    channel: Channel,
    generation: u64,
    main: SocketAddr,
    admin: SocketAddr,
    warm_ms: u64,
}

fn exchange(
    watch: &mut Watch<'_>,
    listener: &Listener,
    hello: &Message,
    announce: &Message,
    sockets: Sockets,
) -> Result<Serving, Problem> {
    watch.until(|wait| listener.readable(wait))?;
    let (channel, peer) = listener.accept()?;
    let pid = watch.child.id();
    if u32::try_from(peer).ok() != Some(pid) {
        return Err(Problem::Channel(format!(
            "pid {peer} connected instead of the new process"
        )));
    }
    channel.send(hello, &[])?;
    watch.next(&channel, "Warm")?;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let fds: Vec<_> = sockets
        .main
        .iter()
        .chain([&sockets.admin, &stderr])
        .map(AsFd::as_fd)
        .collect();
    channel.send(announce, &fds)?;
    drop(fds);
    drop(sockets);
    match watch.next(&channel, "Serving")? {
        Message::Serving {
            generation,
            main,
            admin,
            warm_ms,
        } => Ok(Serving {
            channel,
            generation,
            main,
            admin,
            warm_ms,
        }),
        _ => unreachable!("next returns the message asked for"),
    }
}

/// The new process, watched while the old one waits for it.
struct Watch<'a> {
    child: &'a mut Child,
    deadline: Instant,
    cancelled: &'a Mutex<Option<Cancel>>,
}

impl Watch<'_> {
    /// Polls `ready` until it holds, the new process exits, the deadline,
    /// or this process is told to stop.
    fn until(
        &mut self,
        mut ready: impl FnMut(Duration) -> std::io::Result<bool>,
    ) -> Result<(), Problem> {
        loop {
            if let Some(cancel) = *self.cancelled.lock().expect("cancel lock") {
                return Err(Problem::Cancelled(cancel));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Problem::Timeout);
            }
            if ready(left.min(POLL))? {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(Problem::Exited(status));
            }
        }
    }

    /// The next message, which must be `expected` (by its type) or
    /// `Failed`.
    fn next(&mut self, channel: &Channel, expected: &str) -> Result<Message, Problem> {
        self.until(|wait| channel.readable(wait))?;
        let message = match channel.recv()? {
            Some((message, _)) => message,
            None => {
                let status = self.child.wait()?;
                return Err(Problem::Exited(status));
            }
        };
        match message {
            Message::Failed { error } => Err(Problem::Failed(error)),
            Message::Warm if expected == "Warm" => Ok(message),
            Message::Serving { .. } if expected == "Serving" => Ok(message),
            other => Err(Problem::Channel(format!(
                "expected {expected}, the new process sent {other:?}"
            ))),
        }
    }
}

/// A folder only this user can enter, removed when dropped: the handoff
/// socket's home.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> std::io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("kiln-restart-{}-{nanos:09}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The new process's stderr while it warms: each line is passed on to this
/// process's stderr (where the operator reads the log) and the last
/// [`TAIL_LINES`] are kept for a failure's answer. Once the new process
/// serves, it writes to the old one's stderr itself and the pipe ends.
struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Tail {
    fn capture(pipe: impl std::io::Read + Send + 'static) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let kept = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = std::io::stderr().lock().write_all(&line);
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                let mut kept = kept.lock().expect("tail lock");
                if kept.len() == TAIL_LINES {
                    kept.pop_front();
                }
                kept.push_back(text);
                line.clear();
            }
        });
        Self { lines, reader }
    }

    /// The last lines, once the new process (now dead) has closed the pipe.
    fn finish(self) -> Vec<String> {
        let _ = self.reader.join();
        let lines = self.lines.lock().expect("tail lock");
        lines.iter().cloned().collect()
    }
}
