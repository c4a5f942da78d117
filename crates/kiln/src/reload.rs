//! The reload path: read the source, validate, diff, build and warm what
//! changed, build the app on every worker, then swap. Serialized; any
//! failure leaves the current generation serving, untouched.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use kiln_resources::Pools;
use serde::Serialize;

use crate::{App, Generation, Kiln, ReloadError};

/// What asked for a reload; logged with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Trigger {
    /// `POST /admin/reload`.
    HttpReload,
    /// SIGHUP.
    Signal,
    /// [`Kiln::reload`] called by the embedding application.
    Api,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HttpReload => "http-reload",
            Self::Signal => "signal",
            Self::Api => "api",
        })
    }
}

/// A reload that was applied: every worker now serves `generation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// The new generation's id.
    pub generation: u64,
    /// The generation it replaced.
    pub previous: u64,
    /// Key paths whose values changed (sorted).
    pub changed: Vec<String>,
    /// Resources built anew (the others were carried over, still warm).
    pub rebuilt: Vec<String>,
    /// Time from the request to every worker serving the new generation.
    pub took_ms: u64,
}

impl<A: App> Kiln<A> {
    /// Re-reads the configuration source and, if it is valid and every
    /// changed resource warms, swaps it in on every worker.
    ///
    /// Returns once every worker serves the new generation. Reloads are
    /// serialized: one that arrives during another waits, then reads the
    /// latest source.
    ///
    /// # Errors
    ///
    /// A [`ReloadError`]; nothing was applied.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
        let result = self.reload_serialized().await;
        match &result {
            Ok(outcome) => tracing::info!(
                %trigger,
                generation = outcome.generation,
                changed = ?outcome.changed,
                rebuilt = ?outcome.rebuilt,
                took_ms = outcome.took_ms,
                "Reloaded"
            ),
            Err(e) => {
                tracing::error!(%trigger, error = %e, "Reload refused; the current generation keeps serving")
            }
        }
        result
    }

    async fn reload_serialized(&self) -> Result<ReloadOutcome, ReloadError> {
        let _serialized = self.shared.reload_lock.lock().await;
        if self.shared.readiness.is_draining() {
            return Err(ReloadError::Draining);
        }
        let started = Instant::now();
        let current = self.current();
        let loaded = kiln_config::load::<A::Config>(current.source())?;
        let restart = current.config().restart_required(&loaded.config);
        if !restart.is_empty() {
            return Err(ReloadError::RestartRequired(restart));
        }
        let changed = kiln_config::diff(current.raw(), &loaded.raw);
        let rebuilt: Vec<String> = loaded
            .config
            .pools
            .keys()
            .filter(|name| {
                let section = |raw: &serde_json::Value| {
                    raw.get("pools").and_then(|p| p.get(name.as_str())).cloned()
                };
                section(current.raw()) != section(&loaded.raw)
            })
            .cloned()
            .collect();

        let timeout = loaded.config.server.warm_timeout;
        let pools = Pools::warm_all(&loaded.config.pools, self.base_dir(), timeout, |name| {
            if rebuilt.iter().any(|r| r == name) {
                None
            } else {
                current.pool(name).cloned()
            }
        })
        .await
        .map_err(crate::BuildError::from)?;
        let generation = Arc::new(Generation::new(current.id() + 1, loaded, pools));
        self.publish(generation.clone()).await?;

        Ok(ReloadOutcome {
            generation: generation.id(),
            previous: current.id(),
            changed,
            rebuilt,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }
}
