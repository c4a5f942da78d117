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
//! Only content events (create, modify, remove, rename) on the file, a link
//! it goes through or a folder on its way (`..data`) count, and they are
//! sorted out on the watcher's own thread: reading the file is reported as
//! an access, and counting those would make kiln wake itself with its own
//! reads for ever; a log written beside the file (`2>>/etc/kiln/kiln.log`)
//! would wake the watch loop on every line and, written more often than the
//! quiet period, hold back every save. Events are debounced
//! (`reload.debounce`); a quiet period yields one hint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// One signal per event that may have changed the file's text.
    signals: mpsc::UnboundedReceiver<()>,
    /// When the quiet period ends; every new signal restarts it.
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
                    signal?;
                    self.look_at = Some(Instant::now() + (self.settings)().1);
                }
                () = sleep_until(self.look_at.unwrap_or_else(Instant::now)), if self.look_at.is_some() => {
                    self.look_at = None;
                    self.watch.resolve_again((self.settings)().0);
                    return Some(());
                }
            }
        }
    }
}

/// The paths whose events concern the file, shared with the notify thread,
/// which sorts out the events.
type Concerned = Arc<Mutex<Vec<PathBuf>>>;

/// The watcher on the configuration file's folder and, when the file is a
/// link into another folder, on its target's folder.
struct FileWatch {
    watcher: Box<dyn Watcher + Send>,
    /// The file as named (maybe a link), made absolute.
    source: PathBuf,
    /// The resolved file, when it lives in another folder than `source`.
    target: Option<PathBuf>,
    /// [`links`] of `source`, as of the last resolve.
    concerned: Concerned,
}

impl FileWatch {
    /// Starts watching and logs `Watching <path>`; `None` (logged) when no
    /// watch is possible at all.
    fn arm(source: &Path, tx: mpsc::UnboundedSender<()>, enabled: bool) -> Option<FileWatch> {
        let source = std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
        let folder = source.parent().unwrap_or(Path::new("/")).to_path_buf();
        let concerned = Arc::new(Mutex::new(links(&source)));
        let watcher = watch_folder(&folder, tx, concerned.clone(), enabled)?;
        let mut watch = FileWatch {
            watcher,
            source,
            target: None,
            concerned,
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
        *self.concerned.lock().unwrap_or_else(|e| e.into_inner()) = links(&self.source);
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
}

/// How many links [`links`] follows (the kernel's own limit), in case they
/// loop.
const MAX_LINKS: usize = 40;

/// The paths an event names when the file's text may have changed: the file
/// as named, each link it goes through (`..data/kiln.toml` in a ConfigMap
/// volume) and the file it resolves to. An event on one of them, or on a
/// folder on the way to one (`..data`, swapped by renaming a new link over
/// it; a `current` link repointed to another release), concerns the file.
fn links(source: &Path) -> Vec<PathBuf> {
    let mut links = vec![source.to_path_buf()];
    let mut path = source.to_path_buf();
    for _ in 0..MAX_LINKS {
        let Ok(next) = std::fs::read_link(&path) else {
            break;
        };
        path = path.parent().unwrap_or(Path::new("/")).join(next);
        links.push(path.clone());
    }
    links.extend(std::fs::canonicalize(source));
    links
}

/// Whether an event on `path` may have changed the file whose [`links`] are
/// `concerned`.
fn concerns(concerned: &[PathBuf], path: &Path) -> bool {
    concerned.iter().any(|link| link.starts_with(path))
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

/// Whether `event` may have changed the text of the file whose [`links`]
/// are `concerned`. Lost events and a failing watcher count: the file is
/// looked at to be sure.
fn is_change(event: &notify::Result<Event>, concerned: &Concerned) -> bool {
    match event {
        // Events were dropped (the kernel's queue overflowed).
        Ok(event) if event.need_rescan() => true,
        Ok(event) if is_content(&event.kind) => {
            let concerned = concerned.lock().unwrap_or_else(|e| e.into_inner());
            event.paths.iter().any(|path| concerns(&concerned, path))
        }
        Ok(_) => false,
        Err(_) => true,
    }
}

/// Starts a watcher on `folder` that signals the events that may change the
/// file (see [`is_change`]). Falls back to polling when the kernel's
/// notifications are unavailable (inotify limits, some network mounts).
fn watch_folder(
    folder: &Path,
    tx: mpsc::UnboundedSender<()>,
    concerned: Concerned,
    enabled: bool,
) -> Option<Box<dyn Watcher + Send>> {
    let handler = move |event: notify::Result<Event>| {
        if is_change(&event, &concerned) {
            let _ = tx.send(());
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use notify::event::{AccessKind, CreateKind, DataChange, Flag, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &Path) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(path.to_path_buf()))
    }

    fn write() -> EventKind {
        EventKind::Modify(ModifyKind::Data(DataChange::Any))
    }

    fn concerned(source: &Path) -> Concerned {
        Arc::new(Mutex::new(links(source)))
    }

    #[test]
    fn only_content_events_on_the_file_are_changes() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("kiln.toml");
        std::fs::write(&config, "").unwrap();
        let concerned = concerned(&config);
        let change = |kind, path: &Path| is_change(&event(kind, path), &concerned);

        assert!(change(write(), &config));
        assert!(change(EventKind::Create(CreateKind::File), &config));
        assert!(change(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &config
        ));
        // kiln's own reads.
        assert!(!change(EventKind::Access(AccessKind::Read), &config));
        // A log written beside the file.
        let log = dir.path().join("kiln.log");
        assert!(!change(write(), &log));
        assert!(!change(EventKind::Create(CreateKind::File), &log));
        // Lost events: look to be sure.
        let lost = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert!(is_change(&lost, &concerned));
    }

    #[test]
    fn events_on_the_links_and_folders_on_the_way_are_changes() {
        // A ConfigMap volume: kiln.toml -> ..data/kiln.toml, ..data -> ..v1.
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("..v1")).unwrap();
        std::fs::write(dir.join("..v1/kiln.toml"), "").unwrap();
        std::fs::write(dir.join("..v1/other.toml"), "").unwrap();
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/kiln.toml", dir.join("kiln.toml")).unwrap();
        let configmap = concerned(&dir.join("kiln.toml"));
        let change = |kind, path: &Path| is_change(&event(kind, path), &configmap);

        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(change(renamed, &dir.join("..data")));
        assert!(change(
            EventKind::Remove(RemoveKind::Folder),
            &dir.join("..v1")
        ));
        assert!(change(write(), &dir.join("..v1/kiln.toml")));
        assert!(!change(write(), &dir.join("..v1/other.toml")));
        assert!(!change(renamed, &dir.join("..data_tmp")));

        // deploy.toml -> current/kiln.toml, current -> v2, and a link to a
        // file in the same folder.
        std::fs::create_dir(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v2/kiln.toml"), "").unwrap();
        symlink("v2", dir.join("current")).unwrap();
        symlink("current/kiln.toml", dir.join("deploy.toml")).unwrap();
        symlink("kiln.toml", dir.join("same.toml")).unwrap();
        let through_current = concerned(&dir.join("deploy.toml"));
        let repointed = event(renamed, &dir.join("current"));
        assert!(is_change(&repointed, &through_current));
        assert!(!is_change(&repointed, &configmap));
        let beside = concerned(&dir.join("same.toml"));
        assert!(is_change(&event(write(), &dir.join("kiln.toml")), &beside));
    }
}
