//! The reload path: read the source, validate, diff, build and warm what
//! changed, build the app on every worker, then swap. Serialized; any
//! failure leaves the current generation serving, untouched.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use std::path::Path;

use kiln_config::Loaded;
use kiln_resources::Pools;
use serde::Serialize;
use serde_json::Value;

use crate::resource::Registry;
use crate::{App, AppConfig, BuildError, ConfigError, Generation, Kiln, ReloadError};

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
        let (generation, rebuilt) = build_generation(
            &self.shared.registry,
            self.base_dir(),
            current.id() + 1,
            loaded,
            Some(&current),
        )
        .await?;
        let generation = Arc::new(generation);
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

/// Why a generation could not be built: its config or its resources.
pub(crate) enum BuildFailure {
    Config(ConfigError),
    Build(BuildError),
}

impl From<BuildFailure> for ReloadError {
    fn from(failure: BuildFailure) -> Self {
        match failure {
            BuildFailure::Config(e) => Self::Invalid(e),
            BuildFailure::Build(e) => Self::Build(e),
        }
    }
}

impl From<BuildFailure> for crate::StartError {
    fn from(failure: BuildFailure) -> Self {
        match failure {
            BuildFailure::Config(e) => Self::Config(e),
            BuildFailure::Build(e) => Self::Build(e),
        }
    }
}

/// Builds generation `id` from `loaded`: checks the resource sections, then
/// builds and warms, concurrently, every pool and resource whose own section
/// differs from `previous` (all of them without one), carrying the others
/// over as they are. Returns it with the names of what was built anew.
pub(crate) async fn build_generation<C: AppConfig>(
    registry: &Registry,
    base_dir: &Path,
    id: u64,
    loaded: Loaded<C>,
    previous: Option<&Generation<C>>,
) -> Result<(Generation<C>, Vec<String>), BuildFailure> {
    registry
        .check(&loaded.config.resources, &loaded.source)
        .map_err(BuildFailure::Config)?;
    let unchanged = |table: &str, name: &str| {
        let section = |raw: &Value| raw.get(table).and_then(|t| t.get(name)).cloned();
        previous.is_some_and(|previous| section(previous.raw()) == section(&loaded.raw))
    };
    let timeout = loaded.config.server.warm_timeout;
    let pools = Pools::warm_all(&loaded.config.pools, base_dir, timeout, |name| {
        unchanged("pools", name)
            .then(|| previous.and_then(|p| p.pool(name).cloned()))
            .flatten()
    });
    let resources = registry.build_all(&loaded.config.resources, timeout, |name| {
        unchanged("resources", name)
            .then(|| previous.and_then(|p| p.built_resource(name)))
            .flatten()
    });
    let (pools, resources) =
        tokio::try_join!(async { pools.await.map_err(BuildError::from) }, resources)
            .map_err(BuildFailure::Build)?;
    let rebuilt = loaded
        .config
        .pools
        .keys()
        .filter(|name| !unchanged("pools", name))
        .map(String::as_str)
        .chain(
            registry
                .names()
                .filter(|name| !unchanged("resources", name)),
        )
        .map(str::to_owned)
        .collect();
    Ok((Generation::new(id, loaded, pools, resources), rebuilt))
}
