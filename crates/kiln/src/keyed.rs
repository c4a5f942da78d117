//! Per-key app instances: one `Router` per key (a tenant, a host name, a
//! path prefix), each built from its own config section, chosen per request
//! by a key function.
//!
//! Here: [`KeyedApp`] (what the user writes), [`Keyed`] (the `App` that
//! serves it) and the key functions. The instances themselves (one
//! generation's set, the request dispatch, the single-flight builds of keys
//! served on demand) are in `keyed/instances.rs`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::http::header;
use futures_util::future::try_join_all;
use kiln_resources::Pool;

use crate::{App, AppConfig, BoxError, Generation, Resource};

mod instances;

pub use self::instances::KeyedInstances;
use self::instances::{Instance, Sources};

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

impl std::fmt::Debug for KeyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyContext")
            .field("used", &self.used.lock().expect("used lock"))
            .finish_non_exhaustive()
    }
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

/// The key of a request: borrowed from it, or normalised into a new string.
type KeyFn = dyn for<'r> Fn(&'r Request) -> Option<Cow<'r, str>> + Send + Sync;

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
///   together, and the later ones reuse it. A failed build answers all of
///   them `503`, and the requests of the next few seconds too, without
///   building again.
///
/// The instances are the generation's [`App::State`]
/// ([`KeyedInstances`]): a reload's `prepare` starts from the published
/// generation's. An app that wraps a `Keyed` calls its `prepare` and
/// passes what it made to its `router`.
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

/// What a `Keyed` and every generation's instances share.
struct Shared<K: KeyedApp> {
    app: K,
    key: Box<KeyFn>,
}

impl<K: KeyedApp> std::fmt::Debug for Keyed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("name", &K::NAME)
            .finish_non_exhaustive()
    }
}

impl<K: KeyedApp> Keyed<K> {
    /// Serves `app` with the key that `key` finds in each request; a
    /// request without one gets `404`. The key may be borrowed from the
    /// request or normalised (`Cow::Owned`), so that several spellings
    /// reach one instance; declare the keys in their normal form.
    ///
    /// ```
    /// # use std::borrow::Cow;
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
    ///     let tenant = request.uri().path().strip_prefix("/t/")?.split('/').next()?;
    ///     Some(Cow::Borrowed(tenant))
    /// });
    /// ```
    pub fn new<F>(app: K, key: F) -> Self
    where
        F: for<'r> Fn(&'r Request) -> Option<Cow<'r, str>> + Send + Sync + 'static,
    {
        Self {
            shared: Arc::new(Shared {
                app,
                key: Box::new(key),
            }),
        }
    }

    /// Serves `app` with the request's host name as its key: the `Host`
    /// header (or the URI's authority) without its port, in lower case, so
    /// that `Host: A.example:443` and `a.example` are one key. Declare the
    /// keys in lower case.
    pub fn by_host(app: K) -> Self {
        Self::new(app, host)
    }
}

/// The request's host name, without a port, in lower case (borrowed when
/// it already is, as clients send it).
fn host(request: &Request) -> Option<Cow<'_, str>> {
    let authority = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri().authority()?.as_str(),
    };
    let host = match authority.rfind(':') {
        // `[::1]` has colons of its own: a port follows the bracket.
        Some(at) if !authority[at..].contains(']') => &authority[..at],
        _ => authority,
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

impl<K: KeyedApp> App for Keyed<K> {
    type Config = K::Config;
    type State = Arc<KeyedInstances<K>>;

    /// Builds and warms the instance of every declared key (and of every key
    /// built on demand in the previous generation), reusing the previous
    /// generation's instances whose section and sources are unchanged.
    async fn prepare(
        &self,
        generation: &Generation<K::Config>,
        previous: Option<&Arc<KeyedInstances<K>>>,
    ) -> Result<Self::State, BoxError> {
        let shared = &self.shared;
        let sources = Arc::new(Sources::of(generation));
        let config = generation.app();
        let declared = K::sections(config);
        let mut wanted: Vec<(String, K::Section, bool)> = declared
            .iter()
            .map(|(key, section)| (key.clone(), section.clone(), true))
            .collect();
        if let Some(previous) = previous {
            wanted.extend(previous.built_on_demand().into_iter().filter_map(|key| {
                let section = shared.app.on_demand(&key, config);
                section
                    .filter(|_| !declared.contains_key(&key))
                    .map(|s| (key, s, false))
            }));
        }
        let builds = wanted.into_iter().map(|(key, section, is_declared)| {
            let carried = previous
                .and_then(|previous| previous.instance(&key))
                .filter(|instance| instance.serves(&section, &sources));
            let sources = &sources;
            async move {
                let (instance, rebuilt) = match carried {
                    Some(instance) => (instance, false),
                    None => (
                        Instance::build(&shared.app, &key, section, sources).await?,
                        true,
                    ),
                };
                Ok::<_, BoxError>((key, instance, is_declared, rebuilt))
            }
        });
        let mut declared = HashMap::new();
        let mut on_demand = HashMap::new();
        let mut rebuilt = Vec::new();
        for (key, instance, is_declared, is_rebuilt) in try_join_all(builds).await? {
            if is_rebuilt {
                rebuilt.push(format!("{}:{key}", K::NAME));
            }
            if is_declared {
                declared.insert(key, instance);
            } else {
                on_demand.insert(key, instance);
            }
        }
        rebuilt.sort();
        Ok(Arc::new(KeyedInstances::new(
            shared.clone(),
            config.clone(),
            sources,
            declared,
            on_demand,
            rebuilt,
        )))
    }

    /// A router that runs each request on the instance of its key.
    fn router(&self, _: &Generation<K::Config>, instances: &Self::State) -> Router {
        let instances = instances.clone();
        Router::new().fallback(move |request: Request| instances.clone().serve(request))
    }

    /// The instances this generation's `prepare` built anew, as
    /// `NAME:<key>`.
    fn rebuilt(&self, instances: &Self::State) -> Vec<String> {
        instances.rebuilt().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn host_of(host_header: Option<&str>, uri: &str) -> Option<String> {
        let mut request = Request::get(uri);
        if let Some(value) = host_header {
            request = request.header(header::HOST, value);
        }
        host(&request.body(Body::empty()).unwrap()).map(Cow::into_owned)
    }

    #[test]
    fn host_key_drops_the_port_and_case() {
        let cases = [
            (Some("a.example"), "/", Some("a.example")),
            (Some("a.example:8080"), "/", Some("a.example")),
            (Some("A.Example:443"), "/", Some("a.example")),
            (Some("[::1]:8080"), "/", Some("[::1]")),
            (Some("[::1]"), "/", Some("[::1]")),
            (None, "http://B.example:81/x", Some("b.example")),
            (None, "/x", None),
        ];
        for (header, uri, expected) in cases {
            assert_eq!(
                host_of(header, uri).as_deref(),
                expected,
                "{header:?} {uri}"
            );
        }
    }
}
