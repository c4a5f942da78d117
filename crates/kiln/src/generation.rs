//! One immutable snapshot of configuration and resources, and how one is
//! built (start-up and reload share it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kiln_config::{Config, Loaded};
use kiln_resources::{Homes, Pool, Pools};
use serde_json::Value;

use crate::resource::{Built, Registry};
use crate::{AppConfig, BuildError, ConfigError, ReloadError, Resource, StartError};

/// One generation: its id (strictly increasing), its validated config, the
/// pools built from it, and when it was published.
///
/// A request runs entirely on the generation it started on. Pools carried
/// over from the previous generation are the same pools (same connections);
/// a pool a reload replaced is retired (its connections closed one by one,
/// then the pool) when its generation is dropped: when the last request,
/// subscriber or task holding the generation lets go of it. A background
/// task that may outlive its generation should therefore hold the
/// generation (the `Arc` from [`Kiln::current`](crate::Kiln::current)),
/// not a clone of one of its [`Pool`]s: a cloned pool keeps its memory but
/// not its connections, and its checkouts fail once the generation is gone
/// and a reload replaced it.
///
/// # Examples
///
/// ```
/// use kiln::Generation;
///
/// #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
/// struct Hello {
///     greeting: String,
/// }
/// impl kiln::AppConfig for Hello {}
///
/// /// What an `App::router` (or a handler holding the generation) reads.
/// fn describe(generation: &Generation<Hello>) -> String {
///     let connections = generation.pool("main").map_or(0, |pool| pool.status().size);
///     format!(
///         "generation {} greets {:?} with {connections} connections open",
///         generation.id(),
///         generation.app().greeting,
///     )
/// }
/// ```
///
/// A handler reaches its request's generation with the
/// [`RequestGeneration`](crate::RequestGeneration) extractor:
///
/// ```
/// use kiln::RequestGeneration;
///
/// async fn handler(generation: RequestGeneration<()>) -> String {
///     format!("served by generation {}", generation.id())
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(handler);
/// ```
pub struct Generation<C> {
    id: u64,
    loaded: Loaded<C>,
    pools: Pools,
    resources: BTreeMap<String, Built>,
    /// The pools and resources built for this generation (not carried over).
    built: Vec<String>,
    loaded_at: SystemTime,
    /// The runtime it was built on, entered to drop its pools and resources
    /// when the last reference goes outside any runtime: a SQLite
    /// connection's drop spawns a blocking task, which panics there.
    runtime: Option<tokio::runtime::Handle>,
    /// The pools of this generation that a reload replaced, retired when it
    /// is dropped.
    replaced: OnceLock<Vec<Pool>>,
}

/// How far apart a replaced pool's connections close.
const RETIRE_GAP: Duration = Duration::from_millis(10);

impl<C> Drop for Generation<C> {
    fn drop(&mut self) {
        if let Some(pools) = self.replaced.take() {
            retire(pools, self.runtime.as_ref());
        }
        if tokio::runtime::Handle::try_current().is_err()
            && let Some(runtime) = &self.runtime
        {
            let _entered = runtime.enter();
            drop(std::mem::take(&mut self.pools));
            drop(std::mem::take(&mut self.resources));
        }
    }
}

impl<C> Generation<C> {
    pub(crate) fn new(
        id: u64,
        loaded: Loaded<C>,
        pools: Pools,
        resources: BTreeMap<String, Built>,
        built: Vec<String>,
    ) -> Self {
        Self {
            id,
            loaded,
            pools,
            resources,
            built,
            loaded_at: SystemTime::now(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            replaced: OnceLock::new(),
        }
    }

    /// Retires `pools`, of this generation and replaced by a reload, when
    /// this generation is dropped (once, however many reloads ask).
    pub(crate) fn retire_when_dropped(&self, pools: Vec<Pool>) {
        if !pools.is_empty() {
            let _ = self.replaced.set(pools);
        }
    }

    /// The generation's id; the first is 1.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The whole configuration.
    pub fn config(&self) -> &Config<C> {
        &self.loaded.config
    }

    /// The application's own section, `[app]`.
    pub fn app(&self) -> &C {
        &self.loaded.config.app
    }

    /// The pool named `name` in `[pools.NAME]`. A task that outlives the
    /// request should hold the generation rather than a clone of the pool:
    /// a replaced pool closes when its generation is dropped.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Every pool of this generation.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Whether the pool or resource `name` was built for this generation
    /// (at start-up, every one) rather than carried over unchanged from the
    /// previous one. [`App::prepare`](crate::App::prepare) can skip work it
    /// already did on a carried-over pool, such as creating a schema.
    pub fn is_new(&self, name: &str) -> bool {
        self.built.iter().any(|built| built == name)
    }

    /// The names [`is_new`](Self::is_new) is true for.
    pub(crate) fn built(&self) -> &[String] {
        &self.built
    }

    /// The resource registered as `name`, if it is of type `R`.
    pub fn resource<R: Resource>(&self, name: &str) -> Option<&R> {
        self.resources.get(name)?.downcast_ref()
    }

    /// The same resource as an `Arc`, to hold in a handler's state or a
    /// background task without cloning the resource itself (or making it
    /// `Arc`-inside). Holding it keeps the resource, not the generation,
    /// alive.
    pub fn resource_arc<R: Resource>(&self, name: &str) -> Option<std::sync::Arc<R>> {
        self.resources.get(name)?.clone().downcast().ok()
    }

    pub(crate) fn built_resource(&self, name: &str) -> Option<Built> {
        self.resources.get(name).cloned()
    }

    pub(crate) fn resources(&self) -> &BTreeMap<String, Built> {
        &self.resources
    }

    /// When this generation was published.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The file the configuration came from.
    pub fn source(&self) -> &Path {
        &self.loaded.source
    }

    /// The configuration file's text this generation was loaded from.
    pub(crate) fn text(&self) -> &str {
        &self.loaded.text
    }

    /// Key paths an environment variable overrides, with the variable.
    pub(crate) fn env_overrides(&self) -> &BTreeMap<String, String> {
        &self.loaded.env_overrides
    }

    pub(crate) fn raw(&self) -> &Value {
        &self.loaded.raw
    }
}

/// Closes `pools` one connection every [`RETIRE_GAP`], so that the database
/// is not asked to end them all at once while the new pools take their first
/// requests; on the current runtime, else on `built_on` (entered, so that a
/// SQLite pool dropped there can spawn its blocking task), else at once.
fn retire(pools: Vec<Pool>, built_on: Option<&tokio::runtime::Handle>) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let Some(runtime) = runtime.as_ref().or(built_on) else {
        pools.iter().for_each(Pool::close);
        return;
    };
    let _entered = runtime.enter();
    runtime.spawn(futures_util::future::join_all(
        pools.into_iter().map(|pool| pool.retire(RETIRE_GAP)),
    ));
}

impl<C: std::fmt::Debug> std::fmt::Debug for Generation<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("config", &self.loaded.config)
            .field("pools", &self.pools)
            .field("resources", &self.resources.keys())
            .finish_non_exhaustive()
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

impl From<BuildFailure> for StartError {
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
/// over as they are; [`Generation::is_new`] tells which were built anew.
pub(crate) async fn build_generation<C: AppConfig>(
    registry: &Registry,
    base_dir: &Path,
    id: u64,
    loaded: Loaded<C>,
    previous: Option<&Generation<C>>,
) -> Result<Generation<C>, BuildFailure> {
    registry
        .check(&loaded.config.resources, &loaded.source)
        .map_err(BuildFailure::Config)?;
    let unchanged = |table: &str, name: &str| {
        let section = |raw: &Value| raw.get(table).and_then(|t| t.get(name)).cloned();
        previous.is_some_and(|previous| section(previous.raw()) == section(&loaded.raw))
    };
    let timeout = loaded.config.server.warm_timeout;
    let carried = previous
        .map(|p| p.pools().filter(|name| unchanged("pools", name)))
        .unwrap_or_default();
    let homes = registry.homes.clone().unwrap_or_else(Homes::current);
    let pools = Pools::warm_all(&loaded.config.pools, base_dir, timeout, &carried, &homes);
    let resources = registry.build_all(&loaded.config.resources, timeout, |name| {
        unchanged("resources", name)
            .then(|| previous.and_then(|p| p.built_resource(name)))
            .flatten()
    });
    let (pools, resources) =
        tokio::try_join!(async { pools.await.map_err(BuildError::from) }, resources)
            .map_err(BuildFailure::Build)?;
    let built = loaded
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
    Ok(Generation::new(id, loaded, pools, resources, built))
}
