//! Reloading when the configuration changes (`[reload] watch = true`).
//!
//! The source gives hints that its text may have changed (for a file,
//! debounced events on it: see `source/file.rs`). On each hint the text is
//! read, and a reload happens only when it differs from both the current
//! generation's and the last text tried, so a bad save is reported once, and
//! kiln's own writes (PATCH, rollback) do not reload twice. A text that
//! failed for a reason that may pass (a resource did not build or warm: its
//! database is down) is tried again with backoff until it applies or the
//! text changes; an invalid one waits for the next change.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until};

use crate::{App, Kiln, ReloadError, Trigger};

impl<A: App> Kiln<A> {
    /// Watches the configuration source and reloads (trigger `watch`) when
    /// its text changes and `reload.watch` is true in the current
    /// generation. Logs `Watching <path>` once the watch is armed. Runs until kiln
    /// shuts down; returns early only when no watch can be armed at all.
    /// Spawn it: [`serve`](crate::serve) does.
    ///
    /// In fleet mode (`[fleet]`) it follows the fleet instead: it applies
    /// each new desired version (trigger `fleet`) and reports ACK or NACK.
    pub async fn watch(self) {
        let readiness = self.shared.readiness.clone();
        let follow = async {
            match self.shared.fleet.clone() {
                Some(fleet) => self.follow(fleet).await,
                None => self.watch_source().await,
            }
        };
        tokio::select! {
            () = follow => {}
            () = readiness.draining() => {}
        }
    }

    async fn watch_source(&self) {
        let settings = {
            let kiln = self.clone();
            Box::new(move || {
                let current = kiln.current();
                let reload = &current.config().reload;
                (reload.watch, reload.debounce)
            })
        };
        let Some(mut hints) = self.shared.source.changes(settings) else {
            return;
        };
        let mut state = Attempts {
            last_tried: self.current().text().to_owned(),
            retry: Backoff::default(),
        };
        loop {
            tokio::select! {
                hint = hints.next() => {
                    if hint.is_none() {
                        return;
                    }
                    self.look(&mut state, false).await;
                }
                () = sleep_until(state.retry.due.unwrap_or_else(Instant::now)), if state.retry.due.is_some() => {
                    state.retry.due = None;
                    self.look(&mut state, true).await;
                }
            }
        }
    }

    /// Reads the source and reloads if its text is new, or, with `again`, if
    /// it is the text whose reload is being retried.
    async fn look(&self, state: &mut Attempts, again: bool) {
        if !self.watching() {
            tracing::debug!("reload.watch is false; not reloading");
            state.retry.reset();
            return;
        }
        let current = self.current();
        // Mid-swap a file may be missing for an instant; the next hint (or,
        // for a retry, the next attempt) looks again.
        let source = self.shared.source.clone();
        let read = tokio::task::spawn_blocking(move || source.read()).await;
        let Ok(Ok(text)) = read else {
            if again {
                state.retry.schedule();
            }
            return;
        };
        if text == current.text() {
            tracing::debug!("The source's text is the current generation's; nothing to reload");
            state.retry.reset();
            state.last_tried = text;
            return;
        }
        if text == state.last_tried && !again {
            tracing::debug!(
                "The source's text is the one tried last; nothing to reload until it changes"
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

/// `base` spread at random by up to ±`spread` (a fraction of it), so that
/// instances that start or lose a store together do not act in lockstep.
pub(crate) fn jittered(base: Duration, spread: f64) -> Duration {
    // A random fraction in [0, 1) from std's randomly keyed hasher.
    let random = RandomState::new().hash_one(()) as f64 / u64::MAX as f64;
    base.mul_f64(1.0 - spread + 2.0 * spread * random)
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
        let delay = jittered(self.next, 0.25);
        self.due = Some(Instant::now() + delay);
        self.next = (self.next * 2).min(Self::MAX);
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            "The watched configuration's reload failed for a reason that may pass; trying the same text again"
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
