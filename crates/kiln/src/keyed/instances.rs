//! One generation's instances of a [`Keyed`](crate::Keyed): the declared
//! keys' (built before the generation is published), the request dispatch,
//! and the keys built on demand, each once however many requests ask
//! together, a failure remembered for a few seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::service::TowerToHyperService;
use kiln_resources::{ErrorChain, Pools, within};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tower::ServiceExt;

use super::{KeyContext, KeyedApp, Shared};
use crate::resource::Built;
use crate::service::WarmUp;
use crate::{BoxError, Generation};

/// How long a failed on-demand build answers its key's requests before the
/// next request builds again: long enough that a burst of first requests
/// for a broken key makes one build, short enough that a fixed cause (a
/// database back) is noticed soon.
const FAILURE_TTL: Duration = Duration::from_secs(5);

/// One generation's instances of a [`Keyed`](crate::Keyed) app: its
/// [`App::State`](crate::App::State). Made by `Keyed`'s `prepare`, read by
/// its `router`; opaque otherwise.
pub struct KeyedInstances<K: KeyedApp> {
    keyed: Arc<Shared<K>>,
    config: K::Config,
    sources: Arc<Sources>,
    /// Built before the generation was published; read without a lock.
    declared: HashMap<String, Arc<Instance<K::Section>>>,
    /// Built on demand, one cell per key.
    on_demand: Mutex<HashMap<String, Arc<Cell<K::Section>>>>,
    /// The instances built for this generation (`NAME:<key>`), sorted.
    rebuilt: Vec<String>,
}

/// An on-demand key's build: its instance, or why it failed and when.
type Cell<S> = OnceCell<Result<Arc<Instance<S>>, Failure>>;

/// A failed on-demand build: the message its requests get, and when.
struct Failure {
    message: String,
    at: Instant,
}

/// Why a request has no instance.
enum Missing {
    NotFound(String),
    Failed(String),
}

impl<K: KeyedApp> std::fmt::Debug for KeyedInstances<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedInstances")
            .field("generation", &self.sources.generation)
            .field("declared", &self.declared.keys())
            .finish_non_exhaustive()
    }
}

impl<K: KeyedApp> KeyedInstances<K> {
    pub(super) fn new(
        keyed: Arc<Shared<K>>,
        config: K::Config,
        sources: Arc<Sources>,
        declared: HashMap<String, Arc<Instance<K::Section>>>,
        on_demand: HashMap<String, Arc<Instance<K::Section>>>,
        rebuilt: Vec<String>,
    ) -> Self {
        let on_demand = on_demand
            .into_iter()
            .map(|(key, instance)| (key, Arc::new(OnceCell::new_with(Some(Ok(instance))))))
            .collect();
        Self {
            keyed,
            config,
            sources,
            declared,
            on_demand: Mutex::new(on_demand),
            rebuilt,
        }
    }

    /// Runs `request` on the instance of its key.
    pub(super) async fn serve(self: Arc<Self>, request: Request) -> Response {
        // The key is owned (on the path to 404 or on demand only): the
        // request moves on to the instance.
        let undeclared = match (self.keyed.key)(&request) {
            Some(key) => match self.declared.get(key.as_ref()) {
                Some(instance) => Ok(instance.clone()),
                None => Err(Some(key.into_owned())),
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

    /// `key`'s instance built on demand: built by the first request that
    /// asks while the others wait for it, and shared with them whether it
    /// succeeded or failed. A failure answers for [`FAILURE_TTL`]; the
    /// first request after that builds again.
    async fn on_demand(&self, key: &str) -> Result<Arc<Instance<K::Section>>, Missing> {
        let answer = |built: &Result<Arc<Instance<K::Section>>, Failure>| match built {
            Ok(instance) => Ok(instance.clone()),
            Err(failure) => Err(Missing::Failed(failure.message.clone())),
        };
        let existing = self.cells().get(key).cloned();
        if let Some(built) = existing.as_ref().and_then(|cell| cell.get())
            && !is_stale(built)
        {
            return answer(built);
        }
        // Being built, never built, or failed long enough ago: each request
        // brings the section, so that whichever runs first builds.
        let section = self
            .keyed
            .app
            .on_demand(key, &self.config)
            .ok_or_else(|| Missing::NotFound(format!("no {} named {key:?}", K::NAME)))?;
        let cell = match existing {
            Some(cell) if cell.get().is_none() => cell,
            stale => self.fresh_cell(key, stale),
        };
        let built = cell
            .get_or_init(|| async {
                Instance::build(&self.keyed.app, key, section, &self.sources)
                    .await
                    .map_err(|e| {
                        // The cause (a driver's message, SQL) stays in the log.
                        tracing::warn!(error = %ErrorChain(&*e), "Building an instance on demand failed");
                        Failure {
                            message: format!("{} {key:?} is not available; retry later", K::NAME),
                            at: Instant::now(),
                        }
                    })
            })
            .await;
        answer(built)
    }

    /// The cell `key`'s next build goes into: a new one in place of `stale`
    /// (absent, or a failure past its time), unless another request has
    /// already replaced it.
    fn fresh_cell(&self, key: &str, stale: Option<Arc<Cell<K::Section>>>) -> Arc<Cell<K::Section>> {
        let mut cells = self.cells();
        match cells.get(key) {
            Some(cell) if !stale.as_ref().is_some_and(|stale| Arc::ptr_eq(stale, cell)) => {
                cell.clone()
            }
            _ => {
                let cell = Arc::new(OnceCell::new());
                cells.insert(key.to_owned(), cell.clone());
                cell
            }
        }
    }

    fn cells(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Cell<K::Section>>>> {
        self.on_demand.lock().expect("on-demand lock")
    }

    /// `key`'s instance, declared or built on demand.
    pub(super) fn instance(&self, key: &str) -> Option<Arc<Instance<K::Section>>> {
        match self.declared.get(key) {
            Some(instance) => Some(instance.clone()),
            None => self.cells().get(key)?.get()?.as_ref().ok().cloned(),
        }
    }

    /// The keys whose instance was built on demand.
    pub(super) fn built_on_demand(&self) -> Vec<String> {
        self.cells()
            .iter()
            .filter(|(_, cell)| cell.get().is_some_and(Result::is_ok))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The instances built for this generation (`NAME:<key>`), sorted.
    pub(super) fn rebuilt(&self) -> &[String] {
        &self.rebuilt
    }
}

/// Whether `built` is a failure older than [`FAILURE_TTL`].
fn is_stale<S>(built: &Result<S, Failure>) -> bool {
    matches!(built, Err(failure) if failure.at.elapsed() >= FAILURE_TTL)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

// === impl Instance ===

/// One key's instance and what it was built from.
pub(super) struct Instance<S> {
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
    /// Builds `key`'s instance and serves `server.warm_requests` through it,
    /// within `server.warm_timeout`.
    pub(super) async fn build<K: KeyedApp<Section = S>>(
        app: &K,
        key: &str,
        section: S,
        sources: &Arc<Sources>,
    ) -> Result<Arc<Self>, BoxError> {
        let started = Instant::now();
        tracing::info!(kind = %K::NAME, %key, "Building instance");
        let context = KeyContext {
            sources: sources.clone(),
            used: Mutex::default(),
        };
        let built = async {
            let router = app.build(key, &section, &context).await?;
            // Through the HTTP stack, as a worker warms, with the key as `Host`.
            let service = |_: &_| TowerToHyperService::new(router.clone());
            crate::http::warm_requests(service, key, &sources.warm_requests, 1).await?;
            Ok::<_, BoxError>(router)
        };
        let router = match within(sources.warm_timeout, format!("{} {key}", K::NAME), built).await {
            Ok(Ok(router)) => router,
            Ok(Err(e)) => {
                return Err(format!("{} {key}: {}", K::NAME, ErrorChain(&*e)).into());
            }
            Err(late) => return Err(format!("{late} (server.warm_timeout)").into()),
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

    /// Whether this instance can serve `section` in the generation of
    /// `sources`: same section, and every pool and resource it took was
    /// carried over (its raw section unchanged).
    pub(super) fn serves(&self, section: &S, sources: &Sources) -> bool {
        self.section == *section
            && self
                .uses
                .iter()
                .all(|used| sources.section(used.table, &used.name) == used.section)
    }
}

// === impl Sources ===

/// What instances are built from, taken from one generation (not the
/// generation itself, which would keep every older generation's pools
/// alive through the instances carried over).
pub(super) struct Sources {
    pub(super) generation: u64,
    pub(super) pools: Pools,
    pub(super) resources: BTreeMap<String, Built>,
    /// The raw `pools` and `resources` tables.
    raw: Value,
    warm_requests: Vec<String>,
    warm_timeout: Duration,
}

impl Sources {
    pub(super) fn of<C>(generation: &Generation<C>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(ago: Duration) -> Result<(), Failure> {
        Err(Failure {
            message: String::new(),
            at: Instant::now().checked_sub(ago).expect("a clock this old"),
        })
    }

    #[test]
    fn a_failure_answers_for_its_ttl_then_the_next_request_builds_again() {
        assert!(!is_stale(&failed(Duration::ZERO)));
        assert!(!is_stale(&failed(FAILURE_TTL / 2)));
        assert!(is_stale(&failed(FAILURE_TTL)));
        assert!(
            !is_stale(&Ok::<(), Failure>(())),
            "an instance never goes stale"
        );
    }
}
