//! Reloading when the configuration file changes (`[reload] watch = true`).
//!
//! The folder is watched, not the file, so that the watch survives editors
//! that save by renaming a new file over the old one and Kubernetes
//! ConfigMap volumes, where the file is a link through `..data`, a link
//! swapped atomically. When the file is a link to another folder
//! (`/etc/kiln/deploy.toml -> /srv/cfg/deploy.toml`), that folder is watched
//! too; the link is resolved again after every change, so a repointed link
//! is followed.
//!
//! Only content events count (create, modify, remove, rename): reading the
//! file is reported as an access, and counting those would make kiln wake
//! itself with its own reads for ever. Events are debounced, and a reload
//! happens only when the file's text differs from both the current
//! generation's and the last text tried, so a bad save is reported once, and
//! kiln's own writes (PATCH, rollback) do not reload twice. A text that
//! failed for a reason that may pass (a resource did not build or warm: its
//! database is down) is tried again with backoff until it applies or the
//! file changes; an invalid one waits for the next save.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::{App, Kiln, ReloadError, Trigger};

impl<A: App> Kiln<A> {
    /// Watches the configuration file and reloads (trigger `watch`) when its
    /// text changes and `reload.watch` is true in the current generation.
    /// Logs `Watching <path>` once the watch is armed. Runs until kiln
    /// shuts down; returns early only when no watch can be armed at all.
    /// Spawn it: [`serve`](crate::serve) does.
    pub async fn watch(self) {
        let readiness = self.shared.readiness.clone();
        tokio::select! {
            () = self.watch_file() => {}
            () = readiness.draining() => {}
        }
    }

    async fn watch_file(&self) {
        let (tx, mut signals) = mpsc::unbounded_channel();
        let Some(mut watch) = FileWatch::arm(self.current().source(), tx, self.watching()) else {
            return;
        };
        let mut state = Attempts {
            last_tried: self.current().text().to_owned(),
            retry: Backoff::default(),
        };
        // Saves made before the watch was armed (during start-up, say) are
        // caught by one look at the file once it is.
        let mut look_at = Some(Instant::now());
        let mut seen = Seen::Unknown;
        loop {
            tokio::select! {
                signal = signals.recv() => {
                    let Some(signal) = signal else { return };
                    seen.add(signal);
                    // Quiet period: every new event restarts it.
                    look_at = Some(Instant::now() + self.current().config().reload.debounce);
                }
                () = sleep_until(look_at.unwrap_or_else(Instant::now)), if look_at.is_some() => {
                    look_at = None;
                    let seen = std::mem::take(&mut seen);
                    let before = watch.concerns(&seen);
                    watch.resolve_again(self.watching());
                    if before || watch.concerns(&seen) {
                        self.look(&mut state, false).await;
                    } else {
                        tracing::debug!(paths = ?seen, "Ignored changes to other files beside the configuration");
                    }
                }
                () = sleep_until(state.retry.due.unwrap_or_else(Instant::now)), if state.retry.due.is_some() => {
                    state.retry.due = None;
                    self.look(&mut state, true).await;
                }
            }
        }
    }

    /// Reads the file and reloads if its text is new, or, with `again`, if
    /// it is the text whose reload is being retried.
    async fn look(&self, state: &mut Attempts, again: bool) {
        if !self.watching() {
            tracing::debug!("reload.watch is false; not reloading");
            state.retry.reset();
            return;
        }
        let current = self.current();
        // Mid-swap the file may be missing for an instant; the next event
        // (or, for a retry, the next attempt) looks again.
        let source = current.source().to_path_buf();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(source)).await;
        let Ok(Ok(text)) = read else {
            if again {
                state.retry.schedule();
            }
            return;
        };
        if text == current.text() {
            tracing::debug!("The file's text is the current generation's; nothing to reload");
            state.retry.reset();
            state.last_tried = text;
            return;
        }
        if text == state.last_tried && !again {
            tracing::debug!(
                "The file's text is the one tried last; nothing to reload until it changes"
            );
            return;
        }
        state.last_tried = text;
        // The outcome is logged and kept in the history by `reload`.
        match self.reload(Trigger::Watch).await {
            Err(ReloadError::Build(_)) => state.retry.schedule(),
            _ => state.retry.reset(),
        }
    }

    fn watching(&self) -> bool {
        self.current().config().reload.watch
    }
}

/// What the watch loop remembers between looks at the file.
struct Attempts {
    /// The last text a reload was tried with, applied or not.
    last_tried: String,
    /// When to try `last_tried` again after a failure that may pass.
    retry: Backoff,
}

/// Retry delays for a reload that failed for a reason that may pass: 1 s,
/// doubling to 30 s, each jittered by ±25% so that a fleet sharing a
/// database that comes back does not reload in lockstep.
struct Backoff {
    next: Duration,
    due: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn schedule(&mut self) {
        // A random fraction in [0, 1) from std's randomly keyed hasher.
        let random = RandomState::new().hash_one(()) as f64 / u64::MAX as f64;
        let delay = self.next.mul_f64(0.75 + random / 2.0);
        self.due = Some(Instant::now() + delay);
        self.next = (self.next * 2).min(Self::MAX);
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            "The watched file's reload failed for a reason that may pass; trying the same text again"
        );
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Self::FIRST,
            due: None,
        }
    }
}

/// What the notify thread reports to the watch loop.
enum Signal {
    /// Content events (create, modify, remove, rename) on these paths.
    Changed(Vec<PathBuf>),
    /// The watcher failed or lost events: look at the file to be sure.
    Unknown,
}

/// The paths changed since the last look, or that some events were lost.
#[derive(Debug, Default)]
enum Seen {
    #[default]
    Nothing,
    Paths(Vec<PathBuf>),
    Unknown,
}

impl Seen {
    fn add(&mut self, signal: Signal) {
        match (&mut *self, signal) {
            (Seen::Unknown, _) => {}
            (_, Signal::Unknown) => *self = Seen::Unknown,
            (Seen::Paths(paths), Signal::Changed(more)) => paths.extend(more),
            (Seen::Nothing, Signal::Changed(paths)) => *self = Seen::Paths(paths),
        }
    }
}

/// The watcher on the configuration file's folder and, when the file is a
/// link into another folder, on its target's folder.
struct FileWatch {
    watcher: Box<dyn Watcher + Send>,
    /// The file as named (maybe a link), made absolute.
    source: PathBuf,
    /// The resolved file, when it lives in another folder than `source`.
    target: Option<PathBuf>,
}

impl FileWatch {
    /// Starts watching and logs `Watching <path>`; `None` (logged) when no
    /// watch is possible at all.
    fn arm(source: &Path, tx: mpsc::UnboundedSender<Signal>, enabled: bool) -> Option<FileWatch> {
        let source = std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
        let folder = source.parent().unwrap_or(Path::new("/")).to_path_buf();
        let watcher = watch_folder(&folder, tx, enabled)?;
        let mut watch = FileWatch {
            watcher,
            source,
            target: None,
        };
        if !watch.resolve_again(enabled) {
            announce(&watch.source.display().to_string(), enabled);
        }
        Some(watch)
    }

    /// Resolves the link again and moves the second watch to the target's
    /// folder if it changed (logging `Watching <path> (a link to <target>)`).
    /// Whether it changed.
    fn resolve_again(&mut self, enabled: bool) -> bool {
        // Missing for an instant mid-swap: keep watching where it was.
        let Ok(resolved) = std::fs::canonicalize(&self.source) else {
            return false;
        };
        let own_folder = self.source.parent().and_then(|f| f.canonicalize().ok());
        let target = (resolved.parent() != own_folder.as_deref()).then_some(resolved);
        if target == self.target {
            return false;
        }
        if let Some(old) = self.target.as_ref().and_then(|t| t.parent()) {
            // The folder may be gone already (a ConfigMap's old data folder).
            let _ = self.watcher.unwatch(old);
        }
        if let Some(folder) = target.as_ref().and_then(|t| t.parent())
            && let Err(error) = self.watcher.watch(folder, RecursiveMode::NonRecursive)
        {
            tracing::warn!(%error, folder = %folder.display(), "Cannot watch the folder the configuration links to; only changes to the link itself are seen");
        }
        match &target {
            Some(target) => announce(
                &format!("{} (a link to {})", self.source.display(), target.display()),
                enabled,
            ),
            None => announce(&self.source.display().to_string(), enabled),
        }
        self.target = target;
        true
    }

    /// Whether `seen` may have changed the file's text: an event on the
    /// file's name, its target's, or a ConfigMap's `..` entries.
    fn concerns(&self, seen: &Seen) -> bool {
        let names: Vec<OsString> = [Some(&self.source), self.target.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|path| path.file_name().map(ToOwned::to_owned))
            .collect();
        match seen {
            Seen::Nothing => false,
            Seen::Unknown => true,
            Seen::Paths(paths) => paths.iter().filter_map(|p| p.file_name()).any(|name| {
                names.iter().any(|n| n == name) || name.to_string_lossy().starts_with("..")
            }),
        }
    }
}

/// Logs that the watch is armed: at `info` when it is on, else at `debug`
/// (a reload may turn it on).
fn announce(path: &str, enabled: bool) {
    if enabled {
        tracing::info!("Watching {path} for changes");
    } else {
        tracing::debug!("Watching {path} for changes (applied once reload.watch is true)");
    }
}

/// Whether an event can change a file's text (reads and metadata cannot).
fn is_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Starts a watcher on `folder` that signals content events. Falls back to
/// polling when the kernel's notifications are unavailable (inotify limits,
/// some network mounts).
fn watch_folder(
    folder: &Path,
    tx: mpsc::UnboundedSender<Signal>,
    enabled: bool,
) -> Option<Box<dyn Watcher + Send>> {
    let handler = move |event: notify::Result<Event>| {
        let signal = match event {
            // Events were dropped (the kernel's queue overflowed).
            Ok(event) if event.need_rescan() => Signal::Unknown,
            Ok(event) if is_content(&event.kind) => Signal::Changed(event.paths),
            Ok(_) => return,
            Err(_) => Signal::Unknown,
        };
        let _ = tx.send(signal);
    };
    let native = RecommendedWatcher::new(handler.clone(), notify::Config::default()).and_then(
        |mut watcher| {
            watcher.watch(folder, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        },
    );
    let error = match native {
        Ok(watcher) => return Some(Box::new(watcher)),
        Err(error) => error,
    };
    let interval = Duration::from_secs(1);
    let message = format!(
        "Cannot watch {} for changes ({error}); falling back to polling every {}s",
        folder.display(),
        interval.as_secs()
    );
    if enabled {
        tracing::warn!("{message}");
    } else {
        tracing::debug!("{message}");
    }
    let config = notify::Config::default()
        .with_poll_interval(interval)
        .with_compare_contents(true);
    match PollWatcher::new(handler, config).and_then(|mut watcher| {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }) {
        Ok(watcher) => Some(Box::new(watcher)),
        Err(e) => {
            tracing::error!(error = %e, folder = %folder.display(), "Cannot watch the configuration at all; reload.watch has no effect");
            None
        }
    }
}
