//! The request path: load the worker's current app (lock-free), run it, tag
//! the response with its generation, release the generation when the body
//! is done.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::routing::future::RouteFuture;
use axum::routing::get;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::Service;

use crate::{App, Generation};

/// The header every response carries: the generation that served it.
pub const GENERATION_HEADER: HeaderName = HeaderName::from_static("x-config-generation");

/// One worker's app instance for one generation, built on that worker.
pub(crate) struct WorkerApp {
    pub(crate) generation: u64,
    header: HeaderValue,
    router: Router,
    /// Keeps the generation (its pools) alive while this app serves.
    _generation: Arc<dyn Any + Send + Sync>,
}

impl WorkerApp {
    pub(crate) fn build<A: App>(
        app: &A,
        generation: Arc<Generation<A::Config>>,
        readiness: &Arc<Readiness>,
    ) -> Self {
        let router = app
            .router(&generation)
            .merge(health_routes(readiness.clone()));
        Self {
            generation: generation.id(),
            header: HeaderValue::from(generation.id()),
            router,
            _generation: generation,
        }
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
/// worker (or of an embedding app).
///
/// Cloning is cheap; clones share the worker's current app.
#[derive(Clone)]
pub struct GenerationService {
    current: Arc<ArcSwap<WorkerApp>>,
    /// Marks every request [`WarmUp`].
    warm_up: bool,
}

/// A request extension (which no client can set) on the requests a worker
/// serves to itself while warming.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WarmUp;

impl GenerationService {
    pub(crate) fn new(current: Arc<ArcSwap<WorkerApp>>) -> Self {
        Self {
            current,
            warm_up: false,
        }
    }

    /// A service pinned to one app, for warm-up before it is published.
    pub(crate) fn fixed(app: Arc<WorkerApp>) -> Self {
        Self {
            current: Arc::new(ArcSwap::new(app)),
            warm_up: true,
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
        // An Arc, not a Guard: the app must outlive this call.
        let app = self.current.load_full();
        let mut request = request.map(Body::new);
        if self.warm_up {
            request.extensions_mut().insert(WarmUp);
        }
        let future = app.router.clone().call(request);
        ResponseFuture {
            future,
            app: Some(app),
        }
    }
}

pin_project! {
    /// The response future of [`GenerationService`].
    pub struct ResponseFuture {
        #[pin]
        future: RouteFuture<Infallible>,
        app: Option<Arc<WorkerApp>>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<GenerationBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.future.poll(cx));
        let app = this.app.take().expect("polled after completion");
        response
            .headers_mut()
            .insert(GENERATION_HEADER, app.header.clone());
        Poll::Ready(Ok(response.map(|body| GenerationBody { body, _app: app })))
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
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
