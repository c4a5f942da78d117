//! Observing each request on the main listener: its method, matched route
//! and status class counted and timed in kiln's [`Metrics`]
//! (`server.request_metrics`), and one access-log line with a request id
//! (`log.access`).
//!
//! The matched route is known only inside axum's router (`MatchedPath` is
//! set on the request the handler consumes). [`RouteLayer`] wraps every
//! route of a second copy of a worker's app and hands the route to the
//! service that polls the router through a thread-local, set while the
//! router's future is polled ([`capture_route`]). That layer costs about
//! 1,000 instructions a request (axum boxes each layered route once more),
//! so only a path not seen yet takes the layered copy: the route it matched
//! is remembered by path ([`Observer::known`]), and the next request for
//! that path runs the plain router with its route looked up in a small map.
//! Routing depends on the path alone, so the answer cannot differ. Each
//! route's handles are registered the first time a method and status class
//! is seen on it; after that a request costs atomic adds.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use ::metrics::{Counter, Label};
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, Response};
use tower::{Layer, Service};

use crate::logging::ACCESS_TARGET;
use crate::metrics::{self, Metrics};

/// The request id header: taken from the request when valid, else made.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// How many paths of routes with parameters (`/notes/{id}`) each worker's
/// app remembers; the paths of routes without any are always remembered,
/// as the app has a fixed number of them.
const MAX_PARAM_PATHS: usize = 1024;

/// The longest path remembered.
const MAX_PATH: usize = 256;

/// The route label of requests no route matched (and of those kiln
/// answered before routing): never the raw path, which is unbounded.
const UNMATCHED: &str = "unmatched";

/// Methods with a label of their own; any other is `OTHER`, so that a
/// client cannot make up series.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What one worker's app (one generation) observes, and how.
pub(crate) struct Observer {
    metrics: Arc<Metrics>,
    /// `server.request_metrics`.
    record: bool,
    /// `log.access`.
    access: bool,
    generation: u64,
    /// Each matched route's handles, by route.
    routes: Mutex<HashMap<String, Arc<Route>>>,
    unmatched: Arc<Route>,
    /// The route each request path seen so far matched.
    paths: Mutex<Paths>,
}

/// Request paths and the routes they matched. Its size is bounded (the
/// app's static routes plus [`MAX_PARAM_PATHS`]), so a client choosing
/// paths cannot grow it, and a fast hash is safe.
#[derive(Default)]
struct Paths {
    routes: HashMap<Box<str>, Arc<Route>, foldhash::fast::RandomState>,
    /// Entries whose route has parameters.
    with_params: usize,
}

impl Observer {
    /// `None` when neither metrics nor the access log is on: then nothing
    /// is observed, and the router is not wrapped.
    pub(crate) fn new(
        metrics: &Arc<Metrics>,
        record: bool,
        access: bool,
        generation: u64,
    ) -> Option<Arc<Self>> {
        (record || access).then(|| {
            Arc::new(Self {
                metrics: metrics.clone(),
                record,
                access,
                generation,
                routes: Mutex::default(),
                unmatched: Arc::new(Route::new(UNMATCHED)),
                paths: Mutex::default(),
            })
        })
    }

    /// The route `request`'s path matched before, if it is remembered. A
    /// request that an outer router already matched (kiln nested in an
    /// app) is never looked up: its route joins the outer one.
    fn known<B>(&self, request: &Request<B>) -> Option<Arc<Route>> {
        if request.extensions().get::<MatchedPath>().is_some() {
            return None;
        }
        let paths = self.paths.lock().expect("paths lock");
        paths.routes.get(request.uri().path()).cloned()
    }

    /// Remembers that `path` matched `route` (not `unmatched`: any path
    /// can miss, and a miss costs no more than the layer).
    fn learn(&self, path: &str, route: &Arc<Route>) {
        let static_route = !route.label.contains('{');
        if path.len() > MAX_PATH || Arc::ptr_eq(route, &self.unmatched) {
            return;
        }
        let mut paths = self.paths.lock().expect("paths lock");
        if !static_route && paths.with_params >= MAX_PARAM_PATHS {
            return;
        }
        if paths.routes.insert(path.into(), route.clone()).is_none() && !static_route {
            paths.with_params += 1;
        }
    }

    fn route(&self, path: &str) -> Arc<Route> {
        let mut routes = self.routes.lock().expect("routes lock");
        routes
            .entry(path.to_owned())
            .or_insert_with(|| Arc::new(Route::new(path)))
            .clone()
    }
}

/// One matched route (or `unmatched`) and its handles, by method and
/// status class, each registered on first use.
pub(crate) struct Route {
    label: Arc<str>,
    series: [[OnceLock<Series>; CLASSES.len()]; METHODS.len() + 1],
}

struct Series {
    requests: Counter,
    duration: Arc<kiln_resources::Durations>,
}

impl Route {
    fn new(label: &str) -> Self {
        Self {
            label: label.into(),
            series: Default::default(),
        }
    }

    fn series(&self, metrics: &Metrics, method: &Method, status: u16) -> &Series {
        let m = METHODS
            .iter()
            .position(|known| known == method)
            .unwrap_or(METHODS.len());
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        self.series[m][class].get_or_init(|| {
            let method = METHODS.get(m).map_or("OTHER", Method::as_str);
            let labels = vec![
                Label::new("method", method.to_owned()),
                Label::new("route", self.label.to_string()),
                Label::from_static_parts("status", CLASSES[class]),
            ];
            Series {
                requests: metrics.counter(metrics::REQUESTS, labels),
                duration: metrics.durations([
                    method.to_owned(),
                    self.label.to_string(),
                    CLASSES[class].to_owned(),
                ]),
            }
        })
    }
}

thread_local! {
    /// The route of the request whose router future is being polled on this
    /// thread, set by [`RouteService`] and read by [`capture_route`].
    static CURRENT_ROUTE: Cell<Option<Arc<Route>>> = const { Cell::new(None) };
}

/// Runs `poll` (a poll of a router's future) and stores in `slot` the route
/// a [`RouteService`] met meanwhile. Whatever an outer poll had set is put
/// back, so that a router polled inside a handler does not take its
/// caller's route.
pub(crate) fn capture_route<T>(slot: &mut Option<Arc<Route>>, poll: impl FnOnce() -> T) -> T {
    let outer = CURRENT_ROUTE.take();
    let polled = poll();
    if let Some(route) = CURRENT_ROUTE.replace(outer) {
        *slot = Some(route);
    }
    polled
}

/// Wraps each route of a worker's app (`Router::layer`) to report the
/// route it matched.
#[derive(Clone)]
pub(crate) struct RouteLayer(pub(crate) Arc<Observer>);

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            endpoint: Arc::new(Endpoint {
                observer: self.0.clone(),
                seen: OnceLock::new(),
            }),
        }
    }
}

/// One route of the app, wrapped by [`RouteLayer`].
#[derive(Clone)]
pub(crate) struct RouteService<S> {
    inner: S,
    endpoint: Arc<Endpoint>,
}

struct Endpoint {
    observer: Arc<Observer>,
    /// The route this endpoint matched first, by the address and length of
    /// axum's own copy of its path (one per router, so one compare finds it).
    seen: OnceLock<(usize, usize, Arc<Route>)>,
}

impl Endpoint {
    fn route(&self, matched: Option<&MatchedPath>) -> Arc<Route> {
        let Some(matched) = matched else {
            return self.observer.unmatched.clone();
        };
        let path = matched.as_str();
        let id = (path.as_ptr() as usize, path.len());
        match self.seen.get() {
            Some((at, len, route)) if (*at, *len) == id => route.clone(),
            _ => {
                let route = self.observer.route(path);
                let _ = self.seen.set((id.0, id.1, route.clone()));
                route
            }
        }
    }
}

impl<S: Service<Request>> Service<Request> for RouteService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> S::Future {
        let route = self
            .endpoint
            .route(request.extensions().get::<MatchedPath>());
        CURRENT_ROUTE.set(Some(route));
        self.inner.call(request)
    }
}

/// One request being observed, from its arrival to its response head; it
/// counts in `kiln_http_requests_in_flight` until dropped.
pub(crate) struct Observed {
    observer: Arc<Observer>,
    /// Not a warm-up request: warm-up registers the series it meets (a
    /// first-use cost) but counts and logs nothing.
    counted: bool,
    started: Instant,
    /// Set by [`Observed::known`] or [`capture_route`].
    pub(crate) route: Option<Arc<Route>>,
    /// The route is to be remembered by path once known.
    learn: bool,
    /// With the access log on: the id the response will carry.
    request_id: Option<HeaderValue>,
}

impl Observed {
    /// Starts observing `request` (a warm-up one when not `counted`); with
    /// the access log on, gives it a valid request id.
    pub(crate) fn start<B>(
        observer: &Arc<Observer>,
        request: &mut Request<B>,
        counted: bool,
    ) -> Self {
        if observer.record && counted {
            observer.metrics.in_flight(1);
        }
        let request_id = (observer.access && counted).then(|| request_id(request));
        Self {
            observer: observer.clone(),
            counted,
            started: Instant::now(),
            route: None,
            learn: false,
            request_id,
        }
    }

    /// Whether `request`'s route is known by its path (then the plain
    /// router may run it); if not, the layered router must run it, and
    /// the route it reports is remembered.
    pub(crate) fn known<B>(&mut self, request: &Request<B>) -> bool {
        self.route = self.observer.known(request);
        self.learn = self.route.is_none() && request.extensions().get::<MatchedPath>().is_none();
        self.route.is_some()
    }

    /// Records kiln answering the request itself.
    pub(crate) fn cut(&self, cut: metrics::Cut) {
        if self.counted {
            self.observer.metrics.cut(cut);
        }
    }

    /// The response head is ready: counts and times it and, with the access
    /// log on, tags it with the request id and returns the log entry, to be
    /// written when its body is done. `path` is the request's.
    pub(crate) fn finish(
        self,
        method: &Method,
        path: &str,
        response: &mut Response<Body>,
    ) -> Option<Access> {
        let observer = &self.observer;
        let route = self.route.as_ref().unwrap_or(&observer.unmatched);
        if self.learn {
            observer.learn(path, route);
        }
        let status = response.status().as_u16();
        if observer.record {
            let series = route.series(&observer.metrics, method, status);
            if self.counted {
                series.requests.increment(1);
                series.duration.record(self.started.elapsed());
            }
        }
        let request_id = self.request_id.as_ref()?;
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER, request_id.clone());
        Some(Access(Box::new(Entry {
            method: method.clone(),
            route: route.label.clone(),
            status,
            started: self.started,
            generation: observer.generation,
            request_id: request_id.clone(),
            bytes: 0,
        })))
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if self.observer.record && self.counted {
            self.observer.metrics.in_flight(-1);
        }
    }
}

/// The request's `X-Request-Id` when it is 1 to [`MAX_REQUEST_ID`] visible
/// ASCII characters; otherwise a new one, which replaces it on the request
/// (a handler then sees the id the response and the log carry).
fn request_id<B>(request: &mut Request<B>) -> HeaderValue {
    if let Some(id) = request.headers().get(REQUEST_ID_HEADER)
        && valid_request_id(id.as_bytes())
    {
        return id.clone();
    }
    let id = new_request_id();
    request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    id
}

fn valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: this process's random prefix and a counter, unique
/// without a system call per request.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // Randomly keyed per process by the standard library.
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix:016x}-{n:x}")).expect("hex digits are a valid header")
}

/// One access-log line, written when dropped (when the response body is
/// done, or dropped unfinished).
pub(crate) struct Access(Box<Entry>);

struct Entry {
    method: Method,
    route: Arc<str>,
    status: u16,
    started: Instant,
    generation: u64,
    request_id: HeaderValue,
    bytes: u64,
}

impl Access {
    /// `bytes` more of the body were sent.
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.0.bytes += bytes as u64;
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let entry = &self.0;
        let micros = entry.started.elapsed().as_micros() as f64;
        tracing::info!(
            target: ACCESS_TARGET,
            method = %entry.method,
            route = &*entry.route,
            status = entry.status,
            duration_ms = micros / 1000.0,
            bytes = entry.bytes,
            generation = entry.generation,
            request_id = entry.request_id.to_str().unwrap_or_default(),
            "Request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_visible_ascii_of_bounded_length() {
        assert!(valid_request_id(b"abc-123"));
        assert!(valid_request_id(&[b'a'; MAX_REQUEST_ID]));
        assert!(!valid_request_id(&[b'a'; MAX_REQUEST_ID + 1]));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"tab\there"));
        assert!(!valid_request_id("caf\u{e9}".as_bytes()));
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(valid_request_id(a.as_bytes()));
    }

    #[test]
    fn paths_are_remembered_within_bounds() {
        let observer = Observer::new(&Metrics::new(), true, false, 1).expect("observing");
        let known = |path: &str| observer.known(&Request::get(path).body(()).expect("a request"));
        let root = observer.route("/");
        assert!(known("/").is_none());
        observer.learn("/", &root);
        assert!(known("/").is_some_and(|route| Arc::ptr_eq(&route, &root)));

        // A miss can be any path: never remembered.
        observer.learn("/no/such/path", &observer.unmatched.clone());
        assert!(known("/no/such/path").is_none());

        // Paths of a route with parameters, up to a bound; static routes always.
        let note = observer.route("/notes/{id}");
        for id in 0..=MAX_PARAM_PATHS {
            observer.learn(&format!("/notes/{id}"), &note);
        }
        assert!(known("/notes/0").is_some_and(|route| Arc::ptr_eq(&route, &note)));
        assert!(known(&format!("/notes/{MAX_PARAM_PATHS}")).is_none());
        let new_note = observer.route("/notes/new");
        observer.learn("/notes/new", &new_note);
        assert!(known("/notes/new").is_some_and(|route| Arc::ptr_eq(&route, &new_note)));

        let long = format!("/{}", "a".repeat(MAX_PATH));
        observer.learn(&long, &observer.route(&long));
        assert!(known(&long).is_none());
    }
}
