//! Per-key app instances: one `Router` per key (a tenant, a host name, a
//! path prefix), each built from its own config section, chosen per request
//! by a key function.
//!
//! Everything in one place: [`KeyedApp`] (what the user writes), [`Keyed`]
//! (the `App` that serves it), the per-generation instances, the request
//! dispatch and the single-flight builds of keys served on demand.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::try_join_all;
use kiln_resources::{ErrorChain, Pool, Pools};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tower::ServiceExt;

use crate::resource::Built;
use crate::service::WarmUp;
use crate::{App, AppConfig, BoxError, Generation, Resource};

/// An app built once per key, each instance from its own config section.
///
/// Wrap it in [`Keyed`] to serve it.
pub trait KeyedApp: Send + Sync + 'static {
    /// The type of the `[app]` section, which holds the keys' sections.
    type Config: AppConfig;

    /// The type of one key's section. A reload rebuilds a key whose section
    /// is not equal to the one its instance was built from.
    type Section: Clone + PartialEq + Send + Sync + 'static;

    /// What a key is, in logs and in the reload answer's `rebuilt`
    /// (`tenant` gives `tenant:<key>`).
    const NAME: &'static str;

    /// The declared keys and their sections, e.g. `&config.tenants` for
    /// `[app.tenants.KEY]`.
    fn sections(config: &Self::Config) -> &BTreeMap<String, Self::Section>;

    /// The section for `key`, which is not declared, so that a request for
    /// it builds its instance on demand; `None` answers `404`. The default
    /// answers `None` for every key.
    ///
    /// An instance built on demand serves until its section (as this
    /// returns it for the new config) changes; reloads then rebuild it like
    /// a declared key. Say `None` for keys a stranger could invent (any
    /// `Host` header) unless each instance is cheap.
    fn on_demand(&self, key: &str, config: &Self::Config) -> Option<Self::Section> {
        let _ = (key, config);
        None
    }

    /// Builds and warms `key`'s instance from its section, before it serves
    /// (kiln then serves `server.warm_requests` through it in-process).
    ///
    /// An instance depends on its section and on the pools and resources it
    /// takes from `context`: a reload rebuilds it when one of them changes,
    /// and on nothing else, so take everything else it needs from the
    /// section.
    fn build(
        &self,
        key: &str,
        section: &Self::Section,
        context: &KeyContext,
    ) -> impl Future<Output = Result<Router, BoxError>> + Send;
}

/// What one key's instance is built from: its generation's pools and
/// resources. It notes which ones the instance took, so that a reload that
/// rebuilds one of them rebuilds the instance.
pub struct KeyContext {
    sources: Arc<Sources>,
    used: Mutex<BTreeSet<(&'static str, String)>>,
}

impl KeyContext {
    /// The id of the generation the instance is built for.
    pub fn generation(&self) -> u64 {
        self.sources.generation
    }

    /// The pool named `name` in `[pools.NAME]`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.note("pools", name);
        self.sources.pools.get(name)
    }

    /// The resource registered as `name`, if it is of type `R`.
    pub fn resource<R: Resource>(&self, name: &str) -> Option<&R> {
        self.note("resources", name);
        self.sources.resources.get(name)?.downcast_ref()
    }

    fn note(&self, table: &'static str, name: &str) {
        self.used
            .lock()
            .expect("uses lock")
            .insert((table, name.to_owned()));
    }
}

/// The key of a request, borrowed from it.
type KeyFn = dyn for<'r> Fn(&'r Request) -> Option<&'r str> + Send + Sync;

/// Serves a [`KeyedApp`] as an [`App`]: one instance (a `Router`) per key
/// (a tenant, a host name, a path prefix), each built from its own config
/// section, chosen per request by a key function.
///
/// A [`KeyedApp`] says where the sections are and how to build one key's
/// instance; `Keyed` makes it an [`App`]:
///
/// - every declared key is built and warmed (its instance serves
///   `server.warm_requests` in-process) before its generation is published;
/// - a reload rebuilds only the keys whose section changed, or that took a
///   pool or resource the reload rebuilt; the others are reused as they are,
///   and the reload answer lists the rebuilt ones in `rebuilt` as
///   `NAME:<key>` (e.g. `tenant:alpha.example`);
/// - a request whose key is not declared gets `404`, unless the app opts in
///   to building unknown keys on demand ([`KeyedApp::on_demand`]): then the
///   first requests for a key build its instance once, however many arrive
///   together, and the later ones reuse it.
///
/// Instances are shared by every worker of a generation. A worker's own
/// warm-up requests (`server.warm_requests`, sent with `Host: localhost`)
/// that find no instance get `204`: each instance served those paths when
/// it was built.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
///
/// use axum::{Router, routing::get};
/// use kiln::{BoxError, KeyContext, Keyed, KeyedApp};
///
/// #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
/// struct Sites {
///     /// `[app.sites."a.example"]`, one section per host.
///     sites: BTreeMap<String, Site>,
/// }
/// impl kiln::AppConfig for Sites {}
///
/// #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
/// struct Site {
///     greeting: String,
/// }
///
/// struct PerHost;
///
/// impl KeyedApp for PerHost {
///     type Config = Sites;
///     type Section = Site;
///     const NAME: &'static str = "site";
///
///     fn sections(config: &Sites) -> &BTreeMap<String, Site> {
///         &config.sites
///     }
///
///     async fn build(&self, _key: &str, site: &Site, _: &KeyContext) -> Result<Router, BoxError> {
///         let greeting = site.greeting.clone();
///         Ok(Router::new().route("/", get(move || async move { greeting })))
///     }
/// }
///
/// // An `App`: give it to `kiln::serve` or `Kiln::builder`.
/// let app = Keyed::by_host(PerHost);
/// ```
pub struct Keyed<K: KeyedApp> {
    shared: Arc<Shared<K>>,
}

struct Shared<K: KeyedApp> {
    app: K,
    key: Box<KeyFn>,
    /// Tells this `Keyed`'s instances apart from another's in a generation.
    id: usize,
    /// Every generation's instances while that generation lives, to find
    /// the published one a reload starts from.
    sets: Mutex<Vec<Weak<Instances<K>>>>,
    /// Counts the sets made, to order those of one generation id.
    made: AtomicU64,
}

impl<K: KeyedApp> Keyed<K> {
    /// Serves `app` with the key that `key` finds in each request; a
    /// request without one gets `404`.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use kiln::{KeyContext, Keyed, KeyedApp};
    /// # #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
    /// # struct Config { tenants: BTreeMap<String, String> }
    /// # impl kiln::AppConfig for Config {}
    /// # struct Tenants;
    /// # impl KeyedApp for Tenants {
    /// #     type Config = Config;
    /// #     type Section = String;
    /// #     const NAME: &'static str = "tenant";
    /// #     fn sections(config: &Config) -> &BTreeMap<String, String> { &config.tenants }
    /// #     async fn build(&self, _: &str, greeting: &String, _: &KeyContext) -> Result<axum::Router, kiln::BoxError> {
    /// #         let greeting = greeting.clone();
    /// #         Ok(axum::Router::new().route("/", axum::routing::get(move || async move { greeting })))
    /// #     }
    /// # }
    /// // `/t/<tenant>/...`: the tenant's router nests its routes under `/t/{tenant}`.
    /// let app = Keyed::new(Tenants, |request| {
    ///     request.uri().path().strip_prefix("/t/")?.split('/').next()
    /// });
    /// ```
    pub fn new<F>(app: K, key: F) -> Self
    where
        F: for<'r> Fn(&'r Request) -> Option<&'r str> + Send + Sync + 'static,
    {
        static IDS: AtomicUsize = AtomicUsize::new(0);
        Self {
            shared: Arc::new(Shared {
                app,
                key: Box::new(key),
                id: IDS.fetch_add(1, Ordering::Relaxed),
                sets: Mutex::default(),
                made: AtomicU64::new(0),
            }),
        }
    }

    /// Serves `app` with the request's host name as its key: the `Host`
    /// header (or the URI's authority) without its port, as sent (clients
    /// send it in lower case).
    pub fn by_host(app: K) -> Self {
        Self::new(app, host)
    }
}

/// The request's host name, without a port.
fn host(request: &Request) -> Option<&str> {
    let authority = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri().authority()?.as_str(),
    };
    Some(match authority.rfind(':') {
        // `[::1]` has colons of its own: a port follows the bracket.
        Some(at) if !authority[at..].contains(']') => &authority[..at],
        _ => authority,
    })
}

impl<K: KeyedApp> App for Keyed<K> {
    type Config = K::Config;

    /// Builds and warms the instance of every declared key (and of every key
    /// built on demand in the previous generation), reusing the previous
    /// generation's instances whose section and sources are unchanged.
    async fn prepare(&self, generation: &Generation<K::Config>) -> Result<(), BoxError> {
        let shared = &self.shared;
        let sources = Arc::new(Sources::of(generation));
        let config = generation.app();
        let previous = shared.previous(generation.id());
        let declared = K::sections(config);
        let mut wanted: Vec<(String, K::Section, bool)> = declared
            .iter()
            .map(|(key, section)| (key.clone(), section.clone(), true))
            .collect();
        if let Some(previous) = &previous {
            wanted.extend(previous.built_on_demand().into_iter().filter_map(|key| {
                let section = shared.app.on_demand(&key, config);
                section
                    .filter(|_| !declared.contains_key(&key))
                    .map(|s| (key, s, false))
            }));
        }
        let builds = wanted.into_iter().map(|(key, section, is_declared)| {
            let carried = previous
                .as_ref()
                .and_then(|previous| previous.instance(&key))
                .filter(|instance| instance.serves(&section, &sources));
            let sources = &sources;
            async move {
                let instance = match carried {
                    Some(instance) => instance,
                    None => {
                        let instance = shared.build(&key, section, sources).await?;
                        generation.keyed.note_rebuilt(format!("{}:{key}", K::NAME));
                        instance
                    }
                };
                Ok::<_, BoxError>((key, instance, is_declared))
            }
        });
        let mut declared = HashMap::new();
        let mut cells = HashMap::new();
        for (key, instance, is_declared) in try_join_all(builds).await? {
            if is_declared {
                declared.insert(key, instance);
            } else {
                cells.insert(key, Arc::new(OnceCell::new_with(Some(instance))));
            }
        }
        let instances = Arc::new(Instances {
            generation: generation.id(),
            order: shared.made.fetch_add(1, Ordering::Relaxed),
            keyed: shared.clone(),
            config: config.clone(),
            sources,
            declared,
            cells: Mutex::new(cells),
        });
        shared.remember(&instances);
        generation.keyed.insert(shared.id, instances);
        Ok(())
    }

    /// A router that runs each request on the instance of its key.
    ///
    /// # Panics
    ///
    /// When [`prepare`](App::prepare) did not run for `generation` (an app
    /// that wraps a `Keyed` must call both).
    fn router(&self, generation: &Generation<K::Config>) -> Router {
        let instances: Arc<Instances<K>> =
            generation.keyed.get(self.shared.id).unwrap_or_else(|| {
                panic!(
                    "Keyed::router for generation {} before Keyed::prepare: an App that wraps a Keyed must call its prepare too",
                    generation.id()
                )
            });
        Router::new().fallback(move |request: Request| instances.clone().serve(request))
    }
}

// === impl Shared ===

impl<K: KeyedApp> Shared<K> {
    /// The instances of the newest live generation older than `generation`:
    /// the published one a reload starts from. (A refused candidate had the
    /// id the next one gets; a newer one is built after it.)
    fn previous(&self, generation: u64) -> Option<Arc<Instances<K>>> {
        let mut sets = self.sets.lock().expect("sets lock");
        sets.retain(|set| set.strong_count() > 0);
        sets.iter()
            .filter_map(Weak::upgrade)
            .filter(|set| set.generation < generation)
            .max_by_key(|set| (set.generation, set.order))
    }

    fn remember(&self, instances: &Arc<Instances<K>>) {
        self.sets
            .lock()
            .expect("sets lock")
            .push(Arc::downgrade(instances));
    }

    /// Builds `key`'s instance and serves `server.warm_requests` through it,
    /// within `server.warm_timeout`.
    async fn build(
        &self,
        key: &str,
        section: K::Section,
        sources: &Arc<Sources>,
    ) -> Result<Arc<Instance<K::Section>>, BoxError> {
        let started = Instant::now();
        tracing::info!(kind = %K::NAME, %key, "Building instance");
        let context = KeyContext {
            sources: sources.clone(),
            used: Mutex::default(),
        };
        let built = async {
            let router = self.app.build(key, &section, &context).await?;
            warm(&router, key, &sources.warm_requests).await?;
            Ok::<_, BoxError>(router)
        };
        let router = match tokio::time::timeout(sources.warm_timeout, built).await {
            Ok(Ok(router)) => router,
            Ok(Err(e)) => {
                return Err(format!("{} {key}: {}", K::NAME, ErrorChain(&*e)).into());
            }
            Err(_) => {
                return Err(format!(
                    "{} {key}: not ready within {} (server.warm_timeout)",
                    K::NAME,
                    humantime::format_duration(sources.warm_timeout)
                )
                .into());
            }
        };
        let used = context.used.into_inner().expect("uses lock");
        let uses = used
            .into_iter()
            .map(|(table, name)| Use {
                section: sources.section(table, &name),
                table,
                name,
            })
            .collect();
        tracing::info!(
            kind = %K::NAME,
            %key,
            took_ms = started.elapsed().as_millis() as u64,
            "Instance warm"
        );
        Ok(Arc::new(Instance {
            section,
            uses,
            router,
        }))
    }
}

/// Serves `paths` through a new instance in-process, with the key as its
/// `Host`; any answer other than 2xx or 3xx is an error.
async fn warm(router: &Router, key: &str, paths: &[String]) -> Result<(), BoxError> {
    for path in paths {
        let mut request = Request::get(path.as_str()).body(Body::empty())?;
        if let Ok(host) = HeaderValue::from_str(key) {
            request.headers_mut().insert(header::HOST, host);
        }
        let response = router.clone().oneshot(request).await?;
        let status = response.status();
        axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        crate::http::warm_answer(path, status)?;
    }
    Ok(())
}

// === impl Instances ===

/// One generation's instances.
struct Instances<K: KeyedApp> {
    generation: u64,
    /// Creation order, newest highest.
    order: u64,
    keyed: Arc<Shared<K>>,
    config: K::Config,
    sources: Arc<Sources>,
    /// Built before the generation was published; read without a lock.
    declared: HashMap<String, Arc<Instance<K::Section>>>,
    /// Built on demand.
    cells: Mutex<Cells<K::Section>>,
}

/// The instances of keys built on demand, one cell each, so that each is
/// built once.
type Cells<S> = HashMap<String, Arc<OnceCell<Arc<Instance<S>>>>>;

/// Why a request has no instance.
enum Missing {
    NotFound(String),
    Failed(String),
}

impl<K: KeyedApp> Instances<K> {
    async fn serve(self: Arc<Self>, request: Request) -> Response {
        // The key is owned (on the path to 404 or on demand only): the
        // request moves on to the instance.
        let undeclared = match (self.keyed.key)(&request) {
            Some(key) => match self.declared.get(key) {
                Some(instance) => Ok(instance.clone()),
                None => Err(Some(key.to_owned())),
            },
            None => Err(None),
        };
        let found = match undeclared {
            Ok(instance) => Ok(instance),
            // A worker warming its HTTP stack (`Host: localhost`): every
            // instance was warmed when it was built.
            Err(_) if request.extensions().get::<WarmUp>().is_some() => {
                return StatusCode::NO_CONTENT.into_response();
            }
            Err(Some(key)) => self.on_demand(&key).await,
            Err(None) => Err(Missing::NotFound(format!("no {} in this request", K::NAME))),
        };
        match found {
            Ok(instance) => match instance.router.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Err(Missing::NotFound(message)) => error(StatusCode::NOT_FOUND, message),
            Err(Missing::Failed(message)) => error(StatusCode::SERVICE_UNAVAILABLE, message),
        }
    }

    /// `key`'s instance built on demand, built by the first request that
    /// asks while the others wait for it.
    async fn on_demand(&self, key: &str) -> Result<Arc<Instance<K::Section>>, Missing> {
        let not_found = || Missing::NotFound(format!("no {} named {key:?}", K::NAME));
        let section = || self.keyed.app.on_demand(key, &self.config);
        let existing = self.cells().get(key).cloned();
        let cell = match existing {
            Some(cell) => cell,
            None => {
                section().ok_or_else(not_found)?;
                self.cells().entry(key.to_owned()).or_default().clone()
            }
        };
        cell.get_or_try_init(|| async {
            let section = section().ok_or_else(not_found)?;
            self.keyed
                .build(key, section, &self.sources)
                .await
                .map_err(|e| {
                    // The cause (a driver's message, SQL) stays in the log.
                    tracing::warn!(error = %ErrorChain(&*e), "Building an instance on demand failed");
                    Missing::Failed(format!(
                        "{} {key:?} is not available; retry later",
                        K::NAME
                    ))
                })
        })
        .await
        .cloned()
    }

    fn cells(&self) -> std::sync::MutexGuard<'_, Cells<K::Section>> {
        self.cells.lock().expect("cells lock")
    }

    fn instance(&self, key: &str) -> Option<Arc<Instance<K::Section>>> {
        match self.declared.get(key) {
            Some(instance) => Some(instance.clone()),
            None => self.cells().get(key)?.get().cloned(),
        }
    }

    /// The keys whose instance was built on demand.
    fn built_on_demand(&self) -> Vec<String> {
        self.cells()
            .iter()
            .filter(|(_, cell)| cell.initialized())
            .map(|(key, _)| key.clone())
            .collect()
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// One key's instance and what it was built from.
struct Instance<S> {
    section: S,
    uses: Vec<Use>,
    router: Router,
}

/// A pool or resource an instance took, with its raw section then.
struct Use {
    table: &'static str,
    name: String,
    section: Option<Value>,
}

impl<S: PartialEq> Instance<S> {
    /// Whether this instance can serve `section` in the generation of
    /// `sources`: same section, and every pool and resource it took was
    /// carried over (its raw section unchanged).
    fn serves(&self, section: &S, sources: &Sources) -> bool {
        self.section == *section
            && self
                .uses
                .iter()
                .all(|used| sources.section(used.table, &used.name) == used.section)
    }
}

/// What instances are built from, taken from one generation (not the
/// generation itself, which holds its instances).
struct Sources {
    generation: u64,
    pools: Pools,
    resources: BTreeMap<String, Built>,
    /// The raw `pools` and `resources` tables.
    raw: Value,
    warm_requests: Vec<String>,
    warm_timeout: Duration,
}

impl Sources {
    fn of<C>(generation: &Generation<C>) -> Self {
        let raw = generation.raw();
        let server = &generation.config().server;
        Self {
            generation: generation.id(),
            pools: generation.pools().clone(),
            resources: generation.resources().clone(),
            raw: json!({ "pools": raw.get("pools"), "resources": raw.get("resources") }),
            warm_requests: server.warm_requests.clone(),
            warm_timeout: server.warm_timeout,
        }
    }

    fn section(&self, table: &str, name: &str) -> Option<Value> {
        self.raw.get(table)?.get(name).cloned()
    }
}

// === the hook in Generation ===

/// What the keyed apps keep in one generation: their instances, by the id
/// of their `Keyed`, and the names of the instances built anew, for the
/// reload answer.
#[derive(Default)]
pub(crate) struct Slot {
    instances: Mutex<Vec<(usize, Arc<dyn Any + Send + Sync>)>>,
    rebuilt: Mutex<BTreeSet<String>>,
}

impl Slot {
    /// Sets `id`'s instances (a second `prepare` of one generation replaces
    /// the first's).
    fn insert<T: Any + Send + Sync>(&self, id: usize, value: Arc<T>) {
        let mut instances = self.instances.lock().expect("slot lock");
        instances.retain(|(owner, _)| *owner != id);
        instances.push((id, value));
    }

    fn get<T: Any + Send + Sync>(&self, id: usize) -> Option<Arc<T>> {
        let instances = self.instances.lock().expect("slot lock");
        let (_, value) = instances.iter().find(|(owner, _)| *owner == id)?;
        value.clone().downcast().ok()
    }

    fn note_rebuilt(&self, name: String) {
        self.rebuilt.lock().expect("slot lock").insert(name);
    }

    /// The instances built anew for this generation (`NAME:<key>`), sorted.
    pub(crate) fn take_rebuilt(&self) -> Vec<String> {
        std::mem::take(&mut *self.rebuilt.lock().expect("slot lock"))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(host_header: Option<&str>, uri: &str) -> Option<String> {
        let mut request = Request::get(uri);
        if let Some(value) = host_header {
            request = request.header(header::HOST, value);
        }
        host(&request.body(Body::empty()).unwrap()).map(str::to_owned)
    }

    #[test]
    fn host_key_drops_the_port() {
        assert_eq!(
            host_of(Some("a.example"), "/").as_deref(),
            Some("a.example")
        );
        assert_eq!(
            host_of(Some("a.example:8080"), "/").as_deref(),
            Some("a.example")
        );
        assert_eq!(host_of(Some("[::1]:8080"), "/").as_deref(), Some("[::1]"));
        assert_eq!(host_of(Some("[::1]"), "/").as_deref(), Some("[::1]"));
        assert_eq!(
            host_of(None, "http://b.example:81/x").as_deref(),
            Some("b.example")
        );
        assert_eq!(host_of(None, "/x"), None);
    }
}
