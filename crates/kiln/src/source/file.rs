//! The configuration file as a [`Source`]: read and parsed by
//! `kiln_config`, written back atomically, watched for changes.
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
//! itself with its own reads for ever. Events are debounced
//! (`reload.debounce`); a quiet period that saw an event on the file yields
//! one hint.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use kiln_config::{AppConfig, ConfigError, ErrorKind, FileFormat, Loaded};
use notify::event::ModifyKind;
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{Source, WatchSettings};
use crate::ReloadError;

/// A configuration file (TOML, YAML or JSON, by its extension) with
/// `KILN__SECTION__KEY` environment overrides.
pub(crate) struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// The file at `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl<C: AppConfig> Source<C> for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn format(&self) -> Option<FileFormat> {
        kiln_config::format_of(&self.path)
    }

    fn read(&self) -> Result<String, ReloadError> {
        std::fs::read_to_string(&self.path).map_err(|e| {
            ConfigError::new(
                &self.path,
                ErrorKind::Syntax(format!("cannot read the file: {e}")),
            )
            .into()
        })
    }

    fn parse(&self, text: String) -> Result<Loaded<C>, ConfigError> {
        kiln_config::parse(&self.path, text)
    }

    fn check_unchanged(&self, expected: &str, generation: u64) -> Result<(), ReloadError> {
        if <Self as Source<C>>::read(self)? == expected {
            Ok(())
        } else {
            Err(ReloadError::Drifted {
                origin: <Self as Source<C>>::describe(self),
                generation,
            })
        }
    }

    fn write(
        &self,
        expected: &str,
        text: &str,
        generation: u64,
        _message: &str,
    ) -> Result<(), ReloadError> {
        // Narrows, without closing, the window in which an editor's save
        // could be overwritten: a file has no compare-and-swap.
        <Self as Source<C>>::check_unchanged(self, expected, generation)?;
        kiln_config::write_atomic(&self.path, text).map_err(|source| ReloadError::Persist {
            origin: <Self as Source<C>>::describe(self),
            source,
        })
    }

    fn changes(&self, settings: WatchSettings) -> Option<BoxStream<'static, ()>> {
        let (tx, signals) = mpsc::unbounded_channel();
        let watch = FileWatch::arm(&self.path, tx, settings().0)?;
        let hints = Hints {
            watch,
            signals,
            seen: Seen::Unknown,
            // Saves made before the watch was armed (during start-up, say)
            // are caught by one look at the file once it is.
            look_at: Some(Instant::now()),
            settings,
        };
        Some(
            futures_util::stream::unfold(hints, |mut hints| async move {
                hints.next().await.map(|()| ((), hints))
            })
            .boxed(),
        )
    }
}

/// The debounce between the notify thread's signals and the hints.
struct Hints {
    watch: FileWatch,
    signals: mpsc::UnboundedReceiver<Signal>,
    /// What the events since the last look touched.
    seen: Seen,
    /// When the quiet period ends; every new event restarts it.
    look_at: Option<Instant>,
    settings: WatchSettings,
}

impl Hints {
    /// Waits for a quiet period that saw the file change; `None` once the
    /// watcher is gone.
    async fn next(&mut self) -> Option<()> {
        loop {
            tokio::select! {
                signal = self.signals.recv() => {
                    self.seen.add(signal?);
                    self.look_at = Some(Instant::now() + (self.settings)().1);
                }
                () = sleep_until(self.look_at.unwrap_or_else(Instant::now)), if self.look_at.is_some() => {
                    self.look_at = None;
                    let seen = std::mem::take(&mut self.seen);
                    let before = self.watch.concerns(&seen);
                    self.watch.resolve_again((self.settings)().0);
                    if before || self.watch.concerns(&seen) {
                        return Some(());
                    }
                    tracing::debug!(paths = ?seen, "Ignored changes to other files beside the configuration");
                }
            }
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
