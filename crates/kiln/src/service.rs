//! The request path: load the worker's current app (lock-free), apply the
//! generation's limits (body size, concurrency, time), run it with panics
//! caught, tag the response with its generation, release the generation
//! when the body is done (or, for an upgraded connection, when the
//! connection closes). Each request is observed on the way ([`crate::observe`]):
//! counted and timed by route, and with `log.access` logged with a request id.

use std::any::Any;
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{
    HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use axum::response::IntoResponse;
use axum::routing::future::RouteFuture;
use axum::routing::get;
use futures_util::task::AtomicWaker;
use http_body_util::Limited;
use hyper::upgrade::OnUpgrade;
use pin_project_lite::pin_project;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::metrics::{Cut, Metrics};
use crate::observe::{Access, Observed, Observer, RouteLayer, capture_route};
use crate::{App, AppConfig, Generation};

/// The header every response carries: the generation that served it.
pub const GENERATION_HEADER: HeaderName = HeaderName::from_static("x-config-generation");

/// One worker's app instance for one generation, built on that worker.
pub(crate) struct WorkerApp {
    pub(crate) generation: u64,
    header: HeaderValue,
    router: Router,
    /// With an observer: `router` with every route wrapped to report the
    /// route it matched, for paths whose route is not known yet.
    layered: Option<Router>,
    limits: Limits,
    /// What observes its requests, if anything does.
    observer: Option<Arc<Observer>>,
    /// Keeps the generation (its pools) alive while this app serves; what
    /// [`RequestGeneration`] hands a handler.
    generation_arc: Arc<dyn Any + Send + Sync>,
}

/// The generation's reloadable request limits (`[server]`).
struct Limits {
    /// `max_body`, in bytes.
    max_body: u64,
    /// `max_body` when it is above axum's own default limit for its
    /// extractors, which must then be raised to it.
    raise_extractor_limit: Option<DefaultBodyLimit>,
    /// `request_timeout`, if on.
    request_timeout: Option<Duration>,
    /// `max_concurrent`, or `usize::MAX` for no limit.
    max_concurrent: usize,
}

/// axum's extractors refuse bodies over 2 MiB unless told otherwise.
const AXUM_BODY_LIMIT: u64 = 2 << 20;

impl WorkerApp {
    pub(crate) fn build<A: App>(
        app: &A,
        generation: Arc<Generation<A::Config>>,
        state: &A::State,
        readiness: &Arc<Readiness>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let router = app
            .router(&generation, state)
            .merge(health_routes(readiness.clone()));
        let config = generation.config();
        let observer = Observer::new(
            metrics,
            config.server.request_metrics,
            config.log.access,
            generation.id(),
        );
        let layered = observer
            .as_ref()
            .map(|observer| router.clone().layer(RouteLayer(observer.clone())));
        let server = &config.server;
        let max_body = server.max_body.0;
        let limits = Limits {
            max_body,
            raise_extractor_limit: (max_body > AXUM_BODY_LIMIT)
                .then(|| DefaultBodyLimit::max(server.max_body.as_usize())),
            request_timeout: (!server.request_timeout.is_zero()).then_some(server.request_timeout),
            max_concurrent: match server.max_concurrent {
                0 => usize::MAX,
                n => n,
            },
        };
        Self {
            generation: generation.id(),
            header: HeaderValue::from(generation.id()),
            router,
            layered,
            limits,
            observer,
            generation_arc: generation,
        }
    }
}

thread_local! {
    /// The app whose router is being called or polled on this thread, for
    /// [`RequestGeneration`]: moved in around each call and poll, and out
    /// again after it, so the request path pays no reference count and no
    /// allocation for it.
    static SERVING: Cell<Option<Arc<WorkerApp>>> = const { Cell::new(None) };
}

/// Runs `f` with `app` as the app serving on this thread ([`SERVING`]),
/// then takes it back and restores whatever an outer call had set.
fn serving<T>(app: &mut Option<Arc<WorkerApp>>, f: impl FnOnce() -> T) -> T {
    let outer = SERVING.replace(app.take());
    let out = f();
    *app = SERVING.replace(outer);
    out
}

/// The generation a request runs on, for a handler: its id, config, pools
/// and resources, the same whatever reload happens while it runs.
///
/// An extractor: kiln hands it over while it calls and polls the app's
/// router, so it costs nothing per request unless a handler asks for it.
/// It fails (`500`, with a JSON error saying why) when `C` is not the
/// app's config type, or when the handler runs on another task than the
/// request (behind a layer that moves the call to its own task, such as
/// tower's `Buffer`); a handler behind such a layer takes the generation
/// into its state from [`App::router`] instead.
///
/// # Examples
///
/// ```
/// use kiln::RequestGeneration;
///
/// async fn handler(RequestGeneration(generation): RequestGeneration<()>) -> String {
///     format!("served by generation {}", generation.id())
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(handler);
/// ```
#[derive(Debug)]
pub struct RequestGeneration<C>(pub Arc<Generation<C>>);

impl<C> std::ops::Deref for RequestGeneration<C> {
    type Target = Generation<C>;

    fn deref(&self) -> &Generation<C> {
        &self.0
    }
}

impl<C: AppConfig, S: Sync> FromRequestParts<S> for RequestGeneration<C> {
    type Rejection = Response<Body>;

    fn from_request_parts(
        _: &mut Parts,
        _: &S,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        // Read now, not when the future is polled: the call itself runs
        // inside kiln's poll.
        let generation = SERVING.with(|serving| {
            let app = serving.take();
            let generation = app.as_ref().map(|app| app.generation_arc.clone());
            serving.set(app);
            generation
        });
        let found = match generation {
            None => Err(
                "kiln::RequestGeneration is extracted only in a request kiln serves, \
                 on the request's own task"
                    .to_owned(),
            ),
            Some(generation) => generation
                .downcast::<Generation<C>>()
                .map(Self)
                .map_err(|_| {
                    format!(
                        "kiln::RequestGeneration<{}> does not match the app's config type",
                        std::any::type_name::<C>()
                    )
                }),
        };
        std::future::ready(
            found.map_err(|message| error(StatusCode::INTERNAL_SERVER_ERROR, message)),
        )
    }
}

/// Whether kiln is warm and not draining, for `/readyz`; draining is also
/// the signal that ends the watch and refuses reloads.
#[derive(Debug)]
pub(crate) struct Readiness {
    ready: AtomicBool,
    draining: AtomicBool,
    /// Turns true with `draining`, for those who wait for it.
    drained: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drained: watch::Sender::new(false),
        }
    }
}

impl Readiness {
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Readiness off for good. Returns whether this call turned it off.
    pub(crate) fn set_draining(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        self.drained.send_replace(true);
        first
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once draining has begun.
    pub(crate) async fn draining(&self) {
        let mut drained = self.drained.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = drained.wait_for(|drained| *drained).await;
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }
}

fn health_routes(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if readiness.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
}

/// A tower `Service` that runs each request on the current generation of one
/// worker (or of an embedding app), within the generation's limits
/// (`server.max_body`, `server.max_concurrent`, `server.request_timeout`),
/// and answers `500` for a handler that panics.
///
/// Cloning is cheap; clones share the worker's current app and its count of
/// requests in flight (what `server.max_concurrent` limits).
#[derive(Clone)]
pub struct GenerationService {
    current: Arc<ArcSwap<WorkerApp>>,
    /// Requests of this service (and its clones) whose response head is
    /// not ready yet, counted only while `max_concurrent` is on.
    in_flight: Arc<AtomicUsize>,
    /// Marks every request [`WarmUp`].
    warm_up: bool,
}

impl std::fmt::Debug for GenerationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationService")
            .field("generation", &self.current.load().generation)
            .field("warm_up", &self.warm_up)
            .finish_non_exhaustive()
    }
}

/// A request extension (which no client can set) on the requests a worker
/// serves to itself while warming.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WarmUp;

impl GenerationService {
    pub(crate) fn new(current: Arc<ArcSwap<WorkerApp>>) -> Self {
        Self {
            current,
            in_flight: Arc::default(),
            warm_up: false,
        }
    }

    /// A service pinned to one app, for warm-up before it is published.
    pub(crate) fn fixed(app: Arc<WorkerApp>) -> Self {
        Self {
            warm_up: true,
            ..Self::new(Arc::new(ArcSwap::new(app)))
        }
    }

    /// Runs `request` on the current app. `conn` is the connection it came
    /// on, when kiln serves the connection itself.
    pub(crate) fn serve<B>(&self, request: Request<B>, conn: Option<&Arc<Conn>>) -> ResponseFuture
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let in_flight = conn.map(Conn::begin);
        // An Arc, not a Guard: the app must outlive this call.
        let app = self.current.load_full();
        let mut request = request;
        let mut observed = app
            .observer
            .as_ref()
            .map(|observer| Observed::start(observer, &mut request, !self.warm_up));
        let limits = &app.limits;
        if request.body().size_hint().lower() > limits.max_body {
            let message = format!(
                "the request body is larger than server.max_body ({} bytes)",
                limits.max_body
            );
            let response = error(StatusCode::PAYLOAD_TOO_LARGE, message);
            return ResponseFuture::answer(
                app,
                &request,
                observed,
                in_flight,
                Cut::BodyLimit,
                response,
            );
        }
        let permit = if limits.max_concurrent == usize::MAX {
            None
        } else {
            let permit = Permit::new(&self.in_flight);
            if permit.held > limits.max_concurrent {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "this worker is running server.max_concurrent ({}) requests: retry shortly",
                        limits.max_concurrent
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return ResponseFuture::answer(
                    app,
                    &request,
                    observed,
                    in_flight,
                    Cut::Concurrency,
                    response,
                );
            }
            Some(permit)
        };
        let close = conn.is_some_and(|conn| conn.close_next(request.version()));
        // Only a request that asked to upgrade can be answered 101, and only
        // its connection must keep the generation once hyper lets go of it.
        let upgrade = request.extensions().get::<OnUpgrade>().is_some();
        let max_body = limits.max_body;
        let mut request = request.map(|body| Body::new(Limited::new(body, max_body as usize)));
        if self.warm_up {
            request.extensions_mut().insert(WarmUp);
        }
        let sent = Sent {
            method: request.method().clone(),
            uri: request.uri().clone(),
        };
        let timeout = limits.request_timeout.map(tokio::time::sleep);
        let mut router = match (observed.as_mut(), &app.layered) {
            (Some(observed), Some(layered)) => {
                if observed.known(&request) {
                    app.router.clone()
                } else {
                    layered.clone()
                }
            }
            _ => app.router.clone(),
        };
        let raise_extractor_limit = limits.raise_extractor_limit;
        let mut app = Some(app);
        let called = serving(&mut app, || match raise_extractor_limit {
            None => catch_unwind(AssertUnwindSafe(|| router.call(request))),
            Some(limit) => catch_unwind(AssertUnwindSafe(|| limit.layer(router).call(request))),
        });
        let state = match called {
            Ok(future) => State::Running { future },
            Err(panic) => State::Ready {
                response: Some(panicked(&sent, &*panic, observed.as_ref())),
            },
        };
        ResponseFuture {
            state,
            timeout,
            app,
            extra: Extra {
                sent,
                permit,
                in_flight,
                upgrade,
                close,
                observed,
            },
        }
    }
}

impl<B> Service<Request<B>> for GenerationService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<GenerationBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.serve(request, None)
    }
}

/// What one connection's service, its socket and its worker's header-read
/// sweep share: whether its next responses must close it (drain), whether it
/// speaks HTTP/2, once it is upgraded the generation it keeps alive until it
/// closes, and whether it waits for a request head.
pub(crate) struct Conn {
    /// Set when the worker starts draining.
    draining: Arc<AtomicBool>,
    h2: AtomicBool,
    upgraded: OnceLock<Arc<WorkerApp>>,
    /// Requests started plus requests finished (response body done or
    /// dropped): for HTTP/1, which runs one request at a time, odd while one
    /// is in flight and even while the connection waits for a head. Two
    /// adds per request, where a timer per request head cost ~1,570
    /// instructions (`crate::http::Sweep`).
    turns: AtomicU64,
    /// The `turns` at which the sweep cut the connection (`u64::MAX`, odd,
    /// for never): the cut holds only while no request started since.
    cut_at: AtomicU64,
    /// The connection's task, woken by a cut.
    cut_task: AtomicWaker,
}

impl Conn {
    pub(crate) fn new(draining: Arc<AtomicBool>) -> Self {
        Self {
            draining,
            h2: AtomicBool::new(false),
            upgraded: OnceLock::new(),
            turns: AtomicU64::new(0),
            cut_at: AtomicU64::new(u64::MAX),
            cut_task: AtomicWaker::new(),
        }
    }

    /// Counts a request started; the guard counts it finished when dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.turns.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests started plus finished (see `turns`): what the sweep reads.
    pub(crate) fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// Cuts the connection if it is still at `turns`, waiting for a head:
    /// its task, woken, ends it unless a request started meanwhile.
    pub(crate) fn cut(&self, turns: u64) {
        self.cut_at.store(turns, Ordering::Relaxed);
        self.cut_task.wake();
    }

    /// Resolves when [`Conn::cut`] cut the connection.
    pub(crate) fn cut_off(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.cut_task.register(cx.waker());
            if self.turns() == self.cut_at.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Notes that the connection speaks HTTP/2, before its first request.
    pub(crate) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// Whether the connection was upgraded (a WebSocket): hyper no longer
    /// serves it.
    pub(crate) fn is_upgraded(&self) -> bool {
        self.upgraded.get().is_some()
    }

    /// Whether a request of `version` on this connection must be answered
    /// with `Connection: close` (HTTP/1 during drain); notes HTTP/2.
    fn close_next(&self, version: Version) -> bool {
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
            return false;
        }
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether a request on this connection was HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }
}

/// A request of a connection in flight, from the service's call until its
/// response body is done (or dropped): [`Conn::begin`].
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.turns.fetch_add(1, Ordering::Relaxed);
    }
}

/// A slot of `server.max_concurrent`, held until the response head is ready.
struct Permit {
    count: Arc<AtomicUsize>,
    /// Requests in flight with this one.
    held: usize,
}

impl Permit {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        Self {
            held: count.fetch_add(1, Ordering::Relaxed) + 1,
            count: count.clone(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A JSON error answer kiln makes itself: `{"error": message}`.
fn error(status: StatusCode, message: String) -> Response<Body> {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The method and URI of a request, to name it when its handler panics.
struct Sent {
    method: Method,
    uri: Uri,
}

/// Logs a handler's panic with its request, and answers `500`.
#[cold]
fn panicked(sent: &Sent, panic: &(dyn Any + Send), observed: Option<&Observed>) -> Response<Body> {
    if let Some(observed) = observed {
        observed.cut(Cut::Panic);
    }
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(
        method = %sent.method,
        path = sent.uri.path(),
        panic = message,
        "A request handler panicked; answered 500"
    );
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the request handler failed".to_owned(),
    )
}

pin_project! {
    #[project = StateProj]
    enum State {
        Running { #[pin] future: RouteFuture<Infallible> },
        Ready { response: Option<Response<Body>> },
    }
}

/// What a [`ResponseFuture`] keeps beside its future.
struct Extra {
    sent: Sent,
    permit: Option<Permit>,
    /// The request on its connection, when kiln serves the connection:
    /// handed to the response body.
    in_flight: Option<InFlight>,
    /// The request asked to upgrade its connection.
    upgrade: bool,
    /// Answer with `Connection: close`.
    close: bool,
    /// Counted, timed and logged when the response head is ready.
    observed: Option<Observed>,
}

pin_project! {
    /// The response future of [`GenerationService`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
        #[pin]
        timeout: Option<Sleep>,
        app: Option<Arc<WorkerApp>>,
        extra: Extra,
    }
}

impl ResponseFuture {
    /// A future that answers `response` at once: kiln refused `request`
    /// for `cut`.
    fn answer<B>(
        app: Arc<WorkerApp>,
        request: &Request<B>,
        observed: Option<Observed>,
        in_flight: Option<InFlight>,
        cut: Cut,
        response: Response<Body>,
    ) -> Self {
        if let Some(observed) = &observed {
            observed.cut(cut);
        }
        Self {
            state: State::Ready {
                response: Some(response),
            },
            timeout: None,
            app: Some(app),
            extra: Extra {
                sent: Sent {
                    method: request.method().clone(),
                    uri: Uri::default(),
                },
                permit: None,
                in_flight,
                upgrade: false,
                close: false,
                observed,
            },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<GenerationBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let extra = &mut *this.extra;
        let polled = match this.state.as_mut().project() {
            StateProj::Running { future } => {
                let poll = || catch_unwind(AssertUnwindSafe(|| future.poll(cx)));
                let polled = serving(this.app, || match &mut extra.observed {
                    // Not known by its path: the layered router reports it.
                    Some(observed) if observed.route.is_none() => {
                        capture_route(&mut observed.route, poll)
                    }
                    _ => poll(),
                });
                match polled {
                    Ok(Poll::Ready(Ok(response))) => Poll::Ready(response),
                    Ok(Poll::Pending) => Poll::Pending,
                    Err(panic) => {
                        Poll::Ready(panicked(&extra.sent, &*panic, extra.observed.as_ref()))
                    }
                }
            }
            StateProj::Ready { response } => {
                Poll::Ready(response.take().expect("polled after completion"))
            }
        };
        let mut response = match polled {
            Poll::Ready(response) => response,
            Poll::Pending => {
                let Some(timeout) = this.timeout.as_pin_mut() else {
                    return Poll::Pending;
                };
                ready!(timeout.poll(cx));
                this.state.set(State::Ready { response: None });
                if let Some(observed) = &extra.observed {
                    observed.cut(Cut::Timeout);
                }
                let app = this.app.as_ref().expect("polled after completion");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the request took longer than server.request_timeout ({})",
                        humantime::format_duration(app.limits.request_timeout.unwrap_or_default())
                    ),
                )
            }
        };
        let app = this.app.take().expect("polled after completion");
        extra.permit.take();
        let headers = response.headers_mut();
        headers.insert(GENERATION_HEADER, app.header.clone());
        if extra.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let access = extra.observed.take().and_then(|observed| {
            if extra.close {
                observed.cut(Cut::Drain);
            }
            observed.finish(&extra.sent.method, extra.sent.uri.path(), &mut response)
        });
        let in_flight = extra.in_flight.take();
        if extra.upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(InFlight(conn)) = &in_flight
        {
            let _ = conn.upgraded.set(app.clone());
        }
        Poll::Ready(Ok(response.map(|body| GenerationBody {
            body,
            access,
            _in_flight: in_flight,
            _app: app,
        })))
    }
}

pin_project! {
    /// The response body of [`GenerationService`]: the app's body, holding
    /// the generation that made it (its pools, its configuration) until the
    /// body is dropped, so that a response streamed after a reload still
    /// runs on the generation its request started on. A type of its own
    /// rather than a boxed `Body`: no allocation per response.
    pub struct GenerationBody {
        #[pin]
        body: Body,
        // The access-log line, written once the body is done.
        access: Option<Access>,
        // Its request, finished when the body is dropped.
        _in_flight: Option<InFlight>,
        _app: Arc<WorkerApp>,
    }
}

impl HttpBody for GenerationBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let (Some(access), Poll::Ready(Some(Ok(frame)))) = (this.access, &polled)
            && let Some(data) = frame.data_ref()
        {
            access.sent(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn a_cut_holds_only_while_no_request_started_since() {
        let conn = Arc::new(Conn::new(Arc::default()));
        assert!(conn.cut_off().now_or_never().is_none(), "never cut yet");
        conn.cut(conn.turns());
        assert!(conn.cut_off().now_or_never().is_some());

        // A head read between the sweep's pass and the task's wake.
        let conn = Arc::new(Conn::new(Arc::default()));
        conn.cut(conn.turns());
        let request = conn.begin();
        assert!(
            conn.cut_off().now_or_never().is_none(),
            "a request in flight"
        );
        drop(request);
        assert_eq!(conn.turns(), 2, "started and finished");
        assert!(conn.cut_off().now_or_never().is_none(), "a request since");
    }
}
