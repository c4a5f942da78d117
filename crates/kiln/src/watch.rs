//! Reloading when the configuration file changes (`[reload] watch = true`).
//!
//! The folder is watched, not the file, so that the watch survives editors
//! that save by renaming a new file over the old one and Kubernetes
//! ConfigMap volumes, where the file is a link through `..data`, a link
//! swapped atomically. Events are debounced, and a reload happens only when
//! the file's text differs from both the current generation's and the last
//! text tried, so a bad save is reported once, and kiln's own writes (PATCH,
//! rollback) do not reload twice.

use std::path::Path;
use std::time::Duration;

use notify::{Event, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{App, Kiln, Trigger};

impl<A: App> Kiln<A> {
    /// Watches the configuration file and reloads (trigger `watch`) when its
    /// text changes and `reload.watch` is true in the current generation.
    /// Runs until kiln shuts down (or the watch cannot go on); spawn it.
    /// [`serve`](crate::serve) does.
    pub async fn watch(self) {
        let readiness = self.shared.readiness.clone();
        tokio::select! {
            () = self.watch_file() => {}
            () = readiness.draining() => {}
        }
    }

    async fn watch_file(&self) {
        let source = self.current().source().to_path_buf();
        let folder = self.base_dir().to_path_buf();
        let (tx, mut events) = mpsc::unbounded_channel();
        // Saves made before the watch was armed (during start-up, say) are
        // caught by one look at the file once it is.
        let _ = tx.send(());
        let Some(_watcher) = watch_folder(&folder, &source, tx, self.watching()) else {
            return;
        };
        let mut last_tried = self.current().text().to_owned();
        while events.recv().await.is_some() {
            // Quiet period: every new event restarts it.
            let debounce = self.current().config().reload.debounce;
            loop {
                match tokio::time::timeout(debounce, events.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if !self.watching() {
                continue;
            }
            // Mid-swap the file may be missing for an instant; the next event retries.
            let Ok(text) = std::fs::read_to_string(&source) else {
                continue;
            };
            if text == last_tried || text == self.current().text() {
                continue;
            }
            last_tried = text;
            // The outcome is logged and kept in the history by `reload`.
            let _ = self.reload(Trigger::Watch).await;
        }
    }

    fn watching(&self) -> bool {
        self.current().config().reload.watch
    }
}

/// Starts a watcher on `folder` that signals events touching `source` (or a
/// ConfigMap's `..` entries). Falls back to polling when the kernel's
/// notifications are unavailable (inotify limits, some network mounts).
fn watch_folder(
    folder: &Path,
    source: &Path,
    tx: mpsc::UnboundedSender<()>,
    enabled: bool,
) -> Option<Box<dyn Watcher + Send>> {
    let name = source.file_name().map(ToOwned::to_owned);
    let handler = move |event: notify::Result<Event>| {
        let relevant = match &event {
            Ok(event) => event.paths.iter().any(|path| {
                let file = path.file_name();
                file == name.as_deref()
                    || file.is_some_and(|f| f.to_string_lossy().starts_with(".."))
            }),
            Err(_) => true,
        };
        if relevant {
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
