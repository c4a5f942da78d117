//! The handle to a running kiln: the live generation, the workers serving
//! it, and the operations on both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::Router;
use kiln_config::Loaded;
use kiln_resources::{Homes, PoolStatus, within};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::error::{catch_panic, panicked};
use crate::generation::build_generation;
use crate::history::{History, HistoryEntry};
use crate::http::{ConnService, warm_requests};
use crate::metrics::{Metrics, Phase};
use crate::resource::Registry;
use crate::server::restart::Restarter;
use crate::service::{GenerationService, Readiness, WorkerApp};
use crate::source::Source;
use crate::systemd::Notifier;
use crate::{App, BoxError, BuildError, Generation, ReloadOutcome, Resource, StartError, Trigger};

/// A handle to kiln: the current generation, published through an
/// `ArcSwap`, and the workers that serve it. Cloning is cheap.
///
/// # Examples
///
/// The embedded lifecycle: start (everything warm when it returns), attach
/// a worker, follow reloads, shut down, drop.
///
/// ```no_run
/// # use axum::Router;
/// # use kiln::{App, Generation};
/// # #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
/// # struct Hello { greeting: String }
/// # impl kiln::AppConfig for Hello {}
/// # struct HelloApp;
/// # impl App for HelloApp {
/// #     type Config = Hello;
/// #     type State = ();
/// #     async fn prepare(&self, _: &Generation<Hello>, _: Option<&()>) -> Result<(), kiln::BoxError> { Ok(()) }
/// #     fn router(&self, _: &Generation<Hello>, _: &()) -> Router { Router::new() }
/// # }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let loaded = kiln::load_config::<Hello>("deploy.toml".as_ref())?;
/// let kiln = kiln::Kiln::start(HelloApp, loaded).await?;
/// // Attaches one worker on this runtime; clone the router, do not call again.
/// let app = Router::new().nest("/api", kiln.router().await?);
///
/// let mut generations = kiln.subscribe();
/// tokio::spawn(async move {
///     while generations.changed().await.is_ok() {
///         // Clone the Arc out and let the borrow go before any .await.
///         let generation = generations.borrow_and_update().clone();
///         println!("now serving generation {}", generation.id());
///     }
/// });
/// tokio::spawn(kiln.clone().watch()); // reload when the file changes
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?; // returns once the requests in flight are done
/// // /readyz answers 503, reloads are refused, the watch ends, pools close.
/// kiln.shutdown(Duration::from_secs(10)).await;
/// drop(kiln); // the router and its worker went with `axum::serve`
/// # Ok(())
/// # }
/// ```
pub struct Kiln<A: App> {
    pub(crate) shared: Arc<Shared<A>>,
}

pub(crate) struct Shared<A: App> {
    app: A,
    pub(crate) registry: Registry,
    base_dir: PathBuf,
    /// Where the configuration is read from, written to and watched.
    pub(crate) source: Arc<dyn Source<A::Config>>,
    /// The fleet followed, with a `[fleet]` section.
    pub(crate) fleet: Option<Arc<crate::fleet::Fleet>>,
    current: ArcSwap<Generation<A::Config>>,
    /// The same generation as `current`, for those who wait for the next one.
    changes: watch::Sender<Arc<Generation<A::Config>>>,
    /// The app's state for `current`, from its `prepare`: what workers
    /// build their routers from, and the next generation's `previous`.
    /// Replaced with `current` under this lock, so that the two read
    /// together ([`prepared`](Kiln::prepared)) always match.
    state: Mutex<Arc<A::State>>,
    /// Touched only by the control plane (attach, reload, status).
    workers: Mutex<Workers>,
    /// Serializes reloads; holds the text of the configuration the current
    /// one replaced, for rollback.
    pub(crate) reload_lock: tokio::sync::Mutex<Option<String>>,
    pub(crate) history: History,
    pub(crate) readiness: Arc<Readiness>,
    /// What systemd is told; silent unless kiln runs as the server.
    pub(crate) systemd: Notifier,
    /// How this process restarts; set only when kiln runs as the server.
    pub(crate) restarter: OnceLock<Arc<Restarter>>,
    /// What `GET /admin/metrics` shows.
    pub(crate) metrics: Arc<Metrics>,
    started: Instant,
}

/// Where a restart's new process continues from: the old process's last
/// generation, its reload history (oldest first) and its configuration
/// document.
#[derive(Debug)]
pub(crate) struct Continued {
    pub(crate) generation: u64,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) config: serde_json::Value,
}

/// The attached workers. A slot holds its worker's app weakly: a worker
/// whose [`Worker`] and services are all dropped is gone, and the next
/// reload prunes it instead of building for it.
#[derive(Default)]
struct Workers {
    slots: Vec<WorkerSlot>,
    next_id: usize,
}

/// Where a reload reaches one worker: its runtime and its current app.
struct WorkerSlot {
    id: usize,
    runtime: Handle,
    current: Weak<ArcSwap<WorkerApp>>,
}

impl Workers {
    /// The workers still attached (pruning the gone ones), held for as long
    /// as the caller needs them.
    fn live(&mut self) -> Vec<(usize, Handle, Arc<ArcSwap<WorkerApp>>)> {
        self.slots.retain(|slot| slot.current.strong_count() > 0);
        self.slots
            .iter()
            .filter_map(|slot| Some((slot.id, slot.runtime.clone(), slot.current.upgrade()?)))
            .collect()
    }
}

impl<A: App> Clone for Kiln<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<A: App> std::fmt::Debug for Kiln<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kiln")
            .field("generation", &self.current().id())
            .field("source", &self.shared.source.describe())
            .finish_non_exhaustive()
    }
}

/// One worker attached to kiln: the service that runs its requests on the
/// current generation. Reloads rebuild its app on the runtime it was
/// attached from. It stays attached while it or one of its services (or a
/// router holding one) lives; once all are dropped, reloads forget it.
pub struct Worker {
    id: usize,
    current: Arc<ArcSwap<WorkerApp>>,
}

impl Worker {
    /// The worker's index, in attach order from 0.
    pub fn id(&self) -> usize {
        self.id
    }

    /// A tower `Service` that serves requests on this worker's current
    /// generation.
    pub fn service(&self) -> GenerationService {
        GenerationService::new(self.current.clone())
    }
}

/// A point-in-time report on kiln, as `GET /admin/status` shows it.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The current generation's id.
    pub generation: u64,
    /// When it was published (RFC 3339 in UTC, to the second, in JSON).
    #[serde(serialize_with = "crate::json_time::rfc3339")]
    pub loaded_at: SystemTime,
    /// Where the configuration comes from: the file's path.
    pub source: String,
    /// Each worker's current generation.
    pub workers: Vec<WorkerStatus>,
    /// Each pool's figures and health.
    pub pools: BTreeMap<String, PoolStatus>,
    /// Time since start; `uptime_s`, whole seconds, in JSON.
    #[serde(rename = "uptime_s", serialize_with = "crate::json_time::seconds")]
    pub uptime: Duration,
    /// Whether the server is shutting down.
    pub draining: bool,
    /// The fleet store's connection, in fleet mode: `connected`, or
    /// `disconnected since <time>: <error>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_store: Option<String>,
    /// This process's id: a restart changes it.
    pub pid: u32,
}

/// One worker's line in [`Status`].
#[derive(Clone, Copy, Debug, Serialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The worker's index.
    pub id: usize,
    /// The generation it serves.
    pub generation: u64,
}

impl<A: App> Kiln<A> {
    /// Builds and warms every pool of `loaded` concurrently, runs the app's
    /// [`prepare`](App::prepare), and publishes the result as generation 1.
    /// No worker is attached yet: see [`worker`](Self::worker) and
    /// [`router`](Self::router). Shorthand for
    /// `Kiln::builder(app).start(loaded)`.
    ///
    /// # Errors
    ///
    /// A [`StartError`] naming what was invalid, or what was not ready
    /// within `server.warm_timeout`.
    pub async fn start(app: A, loaded: Loaded<A::Config>) -> Result<Self, StartError> {
        Self::builder(app).start(loaded).await
    }

    /// A [`Builder`], to register resources before starting.
    pub fn builder(app: A) -> Builder<A> {
        Builder {
            app,
            registry: Registry::default(),
        }
    }

    /// A receiver that sees every generation kiln publishes, starting with
    /// the current one: `changed().await` to react to reloads.
    ///
    /// Clone the `Arc` out of `borrow()` (or use `borrow_and_update().clone()`)
    /// and drop the borrow at once: a borrow held across an `.await` blocks
    /// every reload from publishing, and on a current-thread runtime it
    /// deadlocks. `changed()` keeps waiting after [`shutdown`](Self::shutdown)
    /// and fails once every handle (an admin router holds one) is dropped.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Generation<A::Config>>> {
        self.shared.changes.subscribe()
    }

    /// The current generation, without a lock. Hold it as long as needed:
    /// a reload does not change it, only what the next call returns.
    pub fn current(&self) -> Arc<Generation<A::Config>> {
        self.shared.current.load_full()
    }

    /// The current generation and the app's state for it.
    fn prepared(&self) -> (Arc<Generation<A::Config>>, Arc<A::State>) {
        let state = self.shared.state.lock().expect("state lock");
        (self.current(), state.clone())
    }

    /// Attaches a worker on the calling runtime: builds its app for the
    /// current generation here, serves `server.warm_requests` through it
    /// in-process, and registers it so that every reload rebuilds its app on
    /// this runtime before the swap. Each call attaches one more worker,
    /// which every reload builds and warms: call it once per runtime that
    /// serves, and keep what it returns. A worker detaches when it and
    /// every service made from it are dropped; one whose runtime has ended
    /// is rebuilt on the reloading runtime from then on.
    ///
    /// # Errors
    ///
    /// When the app cannot be built or a warm request fails.
    pub async fn worker(&self) -> Result<Worker, BuildError> {
        let (built_for, state) = self.prepared();
        let mut app = self.build_worker_app(built_for.clone(), &state, None).await;
        // Register under the reload lock so that no reload can miss this worker;
        // if one was published while we were building (whether or not that
        // build succeeded), build again for it.
        let _serialized = self.shared.reload_lock.lock().await;
        let (current, state) = self.prepared();
        if current.id() != built_for.id() {
            app = self.build_worker_app(current, &state, None).await;
        }
        let mut workers = self.shared.workers.lock().expect("workers lock");
        let id = workers.next_id;
        let app = app.map_err(|e| worker_error(id, e))?;
        workers.next_id += 1;
        let current = Arc::new(ArcSwap::from(app));
        workers.slots.push(WorkerSlot {
            id,
            runtime: Handle::current(),
            current: Arc::downgrade(&current),
        });
        Ok(Worker { id, current })
    }

    /// A `Router` that serves every request on the current generation, to
    /// nest or merge into an application's own router. **It attaches a
    /// worker** on the calling runtime (see [`worker`](Self::worker)): call
    /// it once and clone the router, rather than once per use. The worker
    /// detaches when the router and all its clones are dropped.
    ///
    /// # Errors
    ///
    /// When the app cannot be built or a warm request fails.
    pub async fn router(&self) -> Result<Router, BuildError> {
        let worker = self.worker().await?;
        Ok(Router::new().fallback_service(worker.service()))
    }

    /// The admin API (`/reload`, `/rollback`, `/history`, `/status`,
    /// `/config`) as a `Router` to nest where the application chooses, e.g.
    /// `.nest("/admin", kiln.admin_router())`.
    ///
    /// It may end up on a public listener, so its changes (`POST`, `PATCH`)
    /// need `admin.token`: without one they answer `403` with a JSON error
    /// saying so, and a warning is logged here. Requests a web page could
    /// send are refused as on kiln's own admin listener (an `Origin` not in
    /// `admin.allowed_origins`, `Sec-Fetch-Site: cross-site`); the `Host` is
    /// checked only when `admin.allowed_hosts` is set, since kiln cannot know
    /// the embedder's names. Serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` for the
    /// client's address to appear in the audit log and history.
    pub fn admin_router(&self) -> Router {
        crate::admin::router(
            self.clone(),
            crate::admin::Mount::Embedded {
                unauthenticated: false,
            },
        )
    }

    /// Like [`admin_router`](Self::admin_router), but serving changes
    /// without a token when `admin.token` is unset: for a router that only
    /// something authenticating (a proxy, the app's own middleware) or a
    /// loopback-only listener can reach. Logs a warning.
    pub fn admin_router_unauthenticated(&self) -> Router {
        crate::admin::router(
            self.clone(),
            crate::admin::Mount::Embedded {
                unauthenticated: true,
            },
        )
    }

    /// Stops kiln: `/readyz` answers 503, reloads are refused, the
    /// [`watch`](Self::watch) task ends, and every pool closes (idle
    /// connections now, checked-out ones as they are returned). A reload in
    /// flight may finish first, within `grace`; pools are closed by then in
    /// any case. Calling it again does nothing more.
    ///
    /// Call it before dropping the last handle when requests are done: the
    /// pools' connections then close on this runtime.
    pub async fn shutdown(&self, grace: Duration) {
        if self.shared.readiness.set_draining() {
            tracing::info!(grace = %humantime::format_duration(grace), "Shutting down");
        }
        self.close_pools(tokio::time::Instant::now() + grace).await;
    }

    /// Closes the current generation's pools once no reload is in flight
    /// (waiting until `deadline` at most), and keeps later reloads from
    /// publishing new ones: they see readiness draining and are refused.
    pub(crate) async fn close_pools(&self, deadline: tokio::time::Instant) {
        let lock = tokio::time::timeout_at(deadline, self.shared.reload_lock.lock()).await;
        if lock.is_err() {
            tracing::warn!(
                "A reload was still running at the deadline; closing the pools under it"
            );
        }
        for (_, pool) in self.current().pools().iter() {
            pool.close();
        }
    }

    /// A report on the current generation, the workers and the pools.
    pub fn status(&self) -> Status {
        let current = self.current();
        let workers = self.shared.workers.lock().expect("workers lock").live();
        Status {
            generation: current.id(),
            loaded_at: current.loaded_at(),
            source: self.shared.source.describe(),
            workers: workers
                .iter()
                .map(|(id, _, current)| WorkerStatus {
                    id: *id,
                    generation: current.load().generation,
                })
                .collect(),
            pools: current.pools().status(),
            uptime: self.shared.started.elapsed(),
            draining: self.shared.readiness.is_draining(),
            fleet_store: self.shared.fleet.as_ref().map(|fleet| {
                let health = fleet.health();
                match health.error {
                    None => health.state.to_owned(),
                    Some(error) => format!("{} since {}: {error}", health.state, health.since),
                }
            }),
            pid: std::process::id(),
        }
    }

    /// The current configuration's `ETag`: its generation, or in fleet mode
    /// its fleet version.
    pub(crate) fn etag(&self) -> u64 {
        let current = self.current();
        self.shared.source.etag(current.text(), current.id())
    }

    pub(crate) fn base_dir(&self) -> &Path {
        &self.shared.base_dir
    }

    /// Prepares `generation` and builds and warms its app on every worker
    /// (on each worker's own runtime); nothing is published yet. Only the
    /// `fresh` pools (new in this generation) need a wide warm-up wave; the
    /// others were warmed by an earlier one.
    pub(crate) async fn stage(
        &self,
        generation: Arc<Generation<A::Config>>,
        fresh: &[String],
    ) -> Result<Staged<A>, BuildError> {
        let (_, previous) = self.prepared();
        let state = prepare(&self.shared.app, &generation, Some(&previous)).await?;
        let workers = self.shared.workers.lock().expect("workers lock").live();
        let timeout = generation.config().server.warm_timeout;
        let builds = workers.into_iter().map(|(id, runtime, current)| {
            let kiln = self.clone();
            let generation = generation.clone();
            let state = state.clone();
            let fresh = fresh.to_vec();
            async move {
                let build = kiln.build_on(id, runtime, generation, state, fresh);
                let app = within(timeout, format!("worker {id}"), build).await??;
                Ok::<_, BuildError>((current, app))
            }
        });
        let apps = futures_util::future::try_join_all(builds).await?;
        Ok(Staged {
            generation,
            rebuilt: self.shared.app.rebuilt(&state),
            state,
            apps,
        })
    }

    /// Builds worker `id`'s app on `runtime`. When that runtime has ended
    /// (an embedder's test runtime, say), builds it here instead and makes
    /// this runtime the worker's home from now on. A build abandoned by a
    /// timeout is aborted, so that the refused generation it holds goes now.
    async fn build_on(
        &self,
        id: usize,
        runtime: Handle,
        generation: Arc<Generation<A::Config>>,
        state: Arc<A::State>,
        fresh: Vec<String>,
    ) -> Result<Arc<WorkerApp>, BuildError> {
        let kiln = self.clone();
        let task = {
            let (generation, state, fresh) = (generation.clone(), state.clone(), fresh.clone());
            runtime.spawn(async move {
                kiln.build_worker_app(generation, &state, Some(&fresh))
                    .await
            })
        };
        let _abort = AbortOnDrop(task.abort_handle());
        let built = match task.await {
            Ok(built) => built,
            Err(join) if join.is_cancelled() => {
                tracing::info!(
                    worker = id,
                    "The worker's runtime has ended; building its app on this one from now on"
                );
                self.rehome(id);
                self.build_worker_app(generation, &state, Some(&fresh))
                    .await
            }
            Err(join) => Err(format!("stopped while building: {join}").into()),
        };
        built.map_err(|e| worker_error(id, e))
    }

    /// Makes the calling runtime worker `id`'s home for later reloads.
    fn rehome(&self, id: usize) {
        let mut workers = self.shared.workers.lock().expect("workers lock");
        if let Some(slot) = workers.slots.iter_mut().find(|slot| slot.id == id) {
            slot.runtime = Handle::current();
        }
    }

    /// Publishes a staged generation: every worker's app, then kiln's
    /// current generation (with the app's state for it), then the news to
    /// subscribers, so that whoever sees the new generation (through
    /// [`current`](Self::current) or [`subscribe`](Self::subscribe)) finds
    /// every worker already serving it. Each is one atomic pointer store.
    pub(crate) fn swap(&self, staged: Staged<A>) {
        let Staged {
            generation,
            state,
            apps,
            ..
        } = staged;
        for (current, app) in apps {
            current.store(app);
        }
        let mut published = self.shared.state.lock().expect("state lock");
        *published = state;
        self.shared.current.store(generation.clone());
        drop(published);
        self.shared.changes.send_replace(generation);
    }

    /// Builds this worker's app for `generation` and serves the warm
    /// requests through it, as a wave that together with the other workers'
    /// is as wide as the widest `fresh` pool (every pool when `None`).
    async fn build_worker_app(
        &self,
        generation: Arc<Generation<A::Config>>,
        state: &A::State,
        fresh: Option<&[String]>,
    ) -> Result<Arc<WorkerApp>, BoxError> {
        let config = generation.config();
        let paths = config.server.warm_requests.clone();
        let widest = config
            .pools
            .iter()
            .filter(|(name, _)| fresh.is_none_or(|fresh| fresh.contains(name)))
            .map(|(_, pool)| pool.warm_count())
            .max()
            .unwrap_or(1);
        let width = widest.div_ceil(config.server.worker_count());
        let started = Instant::now();
        let shared = &self.shared;
        let app = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            WorkerApp::build(
                &shared.app,
                generation,
                state,
                &shared.readiness,
                &shared.metrics,
            )
        }))
        .map_err(|panic| panicked("App::router".to_owned(), panic))?;
        let app = Arc::new(app);
        let service = |conn: &_| ConnService::new(GenerationService::fixed(app.clone()), conn);
        warm_requests(service, "localhost", &paths, width).await?;
        shared.metrics.warmed(Phase::Workers, started.elapsed());
        Ok(app)
    }
}

/// Aborts a task when dropped: a build whose caller gave up must not go on
/// holding what it built.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A generation built and warmed on every worker, not yet published: the
/// app's state for it, and each worker's app beside the place it is
/// published to.
pub(crate) struct Staged<A: App> {
    generation: Arc<Generation<A::Config>>,
    state: Arc<A::State>,
    /// What the app's `prepare` built anew ([`App::rebuilt`]).
    rebuilt: Vec<String>,
    apps: Vec<(Arc<ArcSwap<WorkerApp>>, Arc<WorkerApp>)>,
}

impl<A: App> Staged<A> {
    pub(crate) fn generation_id(&self) -> u64 {
        self.generation.id()
    }

    /// What the app's `prepare` built anew, for the reload answer.
    pub(crate) fn rebuilt(&self) -> &[String] {
        &self.rebuilt
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("generation", &self.current.load().generation)
            .finish()
    }
}

/// Sets kiln up before it starts: the resources to build from
/// `[resources.NAME]` sections.
///
/// # Examples
///
/// ```no_run
/// # use axum::Router;
/// # use kiln::{App, Generation};
/// # #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
/// # struct Hello { greeting: String }
/// # impl kiln::AppConfig for Hello {}
/// # struct HelloApp;
/// # impl App for HelloApp {
/// #     type Config = Hello;
/// #     type State = ();
/// #     async fn prepare(&self, _: &Generation<Hello>, _: Option<&()>) -> Result<(), kiln::BoxError> { Ok(()) }
/// #     fn router(&self, _: &Generation<Hello>, _: &()) -> Router { Router::new() }
/// # }
/// # struct Templates;
/// # impl kiln::Resource for Templates {
/// #     type Config = serde_json::Value;
/// #     async fn build(_: &str, _: serde_json::Value) -> Result<Self, kiln::BoxError> { Ok(Templates) }
/// # }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let loaded = kiln::load_config::<Hello>("deploy.toml".as_ref())?;
/// // Built from [resources.templates] and warmed before start returns;
/// // handlers read it with generation.resource::<Templates>("templates").
/// let kiln = kiln::Kiln::builder(HelloApp)
///     .resource::<Templates>("templates")
///     .start(loaded)
///     .await?;
/// # drop(kiln);
/// # Ok(())
/// # }
/// ```
pub struct Builder<A: App> {
    app: A,
    registry: Registry,
}

impl<A: App> std::fmt::Debug for Builder<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("resources", &self.registry.names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<A: App> Builder<A> {
    /// Registers resource type `R`, built from `[resources.NAME]` (an absent
    /// section is an empty table) and reachable as
    /// `generation.resource::<R>(name)`.
    pub fn resource<R: Resource>(mut self, name: &str) -> Self {
        self.registry.register::<R>(name);
        self
    }

    /// Builds and warms every pool and resource of `loaded` concurrently,
    /// runs the app's [`prepare`](App::prepare), and publishes the result as
    /// generation 1. No worker is attached yet: see [`Kiln::worker`] and
    /// [`Kiln::router`].
    ///
    /// PostgreSQL connections are driven by the runtime this is called on.
    /// `/readyz` answers 200 from now until [`Kiln::shutdown`].
    ///
    /// # Errors
    ///
    /// A [`StartError`] naming what was invalid, or what was not ready
    /// within `server.warm_timeout`.
    pub async fn start(self, loaded: Loaded<A::Config>) -> Result<Kiln<A>, StartError> {
        let kiln = self.start_unready(loaded, None, None).await?;
        kiln.shared.readiness.set_ready();
        Ok(kiln)
    }

    /// [`start`](Self::start), with readiness left off (the server turns it
    /// on once it listens); for a restart's new process, continuing the old
    /// one's generations and history, with the restart recorded in it;
    /// PostgreSQL connections driven on `homes` (on the runtime that builds
    /// each pool when `None`).
    pub(crate) async fn start_unready(
        mut self,
        loaded: Loaded<A::Config>,
        continued: Option<Continued>,
        homes: Option<Homes>,
    ) -> Result<Kiln<A>, StartError> {
        self.registry.homes = homes;
        let base_dir = loaded
            .source
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let (source, fleet, loaded) = crate::source::open(loaded).await?;
        let first = continued.as_ref().map_or(1, |c| c.generation + 1);
        let metrics = Metrics::new();
        let started = Instant::now();
        let generation = build_generation(&self.registry, &base_dir, first, loaded, None).await?;
        metrics.warmed(Phase::Resources, started.elapsed());
        metrics.spawn_upkeep();
        let state = prepare(&self.app, &generation, None).await?;
        let history = History::default();
        if let Some(continued) = continued {
            history.restore(continued.history);
            let restart = ReloadOutcome {
                generation: first,
                previous: continued.generation,
                changed: kiln_config::diff(&continued.config, generation.raw()),
                rebuilt: Vec::new(),
                took: Duration::ZERO,
            };
            let capacity = generation.config().reload.history;
            history.record(Trigger::Restart, None, &Ok(restart), capacity);
        }
        let generation = Arc::new(generation);
        Ok(Kiln {
            shared: Arc::new(Shared {
                app: self.app,
                registry: self.registry,
                base_dir,
                source,
                fleet,
                current: ArcSwap::new(generation.clone()),
                changes: watch::Sender::new(generation),
                state: Mutex::new(state),
                workers: Mutex::default(),
                reload_lock: tokio::sync::Mutex::new(None),
                history,
                readiness: Arc::default(),
                systemd: Notifier::default(),
                restarter: OnceLock::new(),
                metrics,
                started: Instant::now(),
            }),
        })
    }

    /// Starts and runs kiln as a server: see [`serve`](crate::serve).
    ///
    /// # Errors
    ///
    /// A [`ServeError`](crate::ServeError): see [`serve`](crate::serve).
    pub async fn serve(self, loaded: Loaded<A::Config>) -> Result<(), crate::ServeError> {
        crate::server::serve_with(self, loaded).await
    }
}

/// Runs the app's `prepare` within `server.warm_timeout`, a panic caught.
async fn prepare<A: App>(
    app: &A,
    generation: &Generation<A::Config>,
    previous: Option<&A::State>,
) -> Result<Arc<A::State>, BuildError> {
    let timeout = generation.config().server.warm_timeout;
    let prepared = catch_panic(|| "App::prepare".to_owned(), async {
        app.prepare(generation, previous)
            .await
            .map_err(|source| BuildError::App { source })
    });
    Ok(Arc::new(within(timeout, "app prepare", prepared).await??))
}

/// A worker's build failure: a caught panic as it is, anything else as
/// [`BuildError::Worker`] with its cause.
fn worker_error(worker: usize, error: BoxError) -> BuildError {
    match error.downcast::<BuildError>() {
        Ok(build) => *build,
        Err(source) => BuildError::Worker { worker, source },
    }
}
