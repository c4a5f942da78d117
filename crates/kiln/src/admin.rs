//! The admin API: reload, patch, rollback, history, status and the
//! effective configuration. A plain `Router` of a [`Kiln`] handle; the server
//! serves it at `/admin` on its own listener, an embedding app nests it
//! wherever it likes.
//!
//! Every request passes, in order: the browser guard ([`guard`]: `Origin`,
//! `Sec-Fetch-Site`, `Host`; 403), then the bearer token when `admin.token`
//! is set (401, or 429 once failures spend their [`budget`]). Embedded
//! without a token, changes (`POST`, `PATCH`) are refused with 403 unless the
//! embedder chose [`Kiln::admin_router_unauthenticated`].

mod budget;
mod guard;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use self::budget::FailureBudget;
use self::guard::Hosts;
use crate::{App, ErrorChain, Kiln, ReloadError, ReloadOutcome, Trigger};

/// Where the admin router is served.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mount {
    /// kiln's own admin listener, bound at this address: a token is
    /// optional on loopback (`admin.token` is required elsewhere).
    Listener(SocketAddr),
    /// Nested in an embedder's router. Without a token, changes are refused
    /// unless `unauthenticated` (the embedder said so in code).
    Embedded {
        /// The embedder opted out of the token in code.
        unauthenticated: bool,
    },
}

/// What the guard and authentication layer need besides the live config.
struct Gate<A: App> {
    kiln: Kiln<A>,
    mount: Mount,
    failures: FailureBudget,
}

pub(crate) fn router<A: App>(kiln: Kiln<A>, mount: Mount) -> Router {
    if let Mount::Embedded { unauthenticated } = mount {
        let token = kiln.current().config().admin.token.is_some();
        if unauthenticated && !token {
            tracing::warn!(
                "Embedded admin API without a token (admin_router_unauthenticated): anyone who reaches it can reload, patch and roll back"
            );
        } else if !token {
            tracing::warn!(
                "Embedded admin API without admin.token: its changes (POST, PATCH) answer 403 until a token is set"
            );
        }
    }
    let gate = Arc::new(Gate {
        kiln: kiln.clone(),
        mount,
        failures: FailureBudget::new(),
    });
    Router::new()
        .route("/reload", post(reload::<A>))
        .route("/rollback", post(rollback::<A>))
        .route("/history", get(history::<A>))
        .route("/status", get(status::<A>))
        .route("/config", get(config::<A>).patch(patch::<A>))
        // The last layer runs first: the guard, then authentication.
        .layer(middleware::from_fn_with_state(gate.clone(), authorize::<A>))
        .layer(middleware::from_fn_with_state(gate, guard::<A>))
        .with_state(kiln)
}

/// Refuses, before any authentication, what a web page could send (see
/// [`guard`]).
async fn guard<A: App>(State(gate): State<Arc<Gate<A>>>, request: Request, next: Next) -> Response {
    let generation = gate.kiln.current();
    let hosts = match gate.mount {
        Mount::Listener(addr) => Hosts::Listener(addr),
        Mount::Embedded { .. } => Hosts::Embedded,
    };
    let refusal = guard::refusal(
        request.headers(),
        request.uri(),
        &generation.config().admin,
        hosts,
    );
    if let Some(refusal) = refusal {
        return error(
            StatusCode::FORBIDDEN,
            json!({"error": refusal, "generation": generation.id()}),
        );
    }
    drop(generation);
    next.run(request).await
}

/// With `admin.token` set (in the current generation), every route needs
/// `Authorization: Bearer <token>` (scheme in any case), compared in
/// constant time; failures share one budget, then get 429. Embedded without
/// a token, changes are refused unless the embedder opted out.
async fn authorize<A: App>(
    State(gate): State<Arc<Gate<A>>>,
    request: Request,
    next: Next,
) -> Response {
    let generation = gate.kiln.current();
    match &generation.config().admin.token {
        Some(token) => {
            if let Some(wait) = gate.failures.exhausted() {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "too many failed authentications: try again after Retry-After seconds", "generation": generation.id()}),
                );
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                return response;
            }
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(bearer_credentials);
            if !presented.is_some_and(|presented| token.matches(presented)) {
                gate.failures.spend();
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "missing or wrong bearer token: send Authorization: Bearer <admin.token>", "generation": generation.id()}),
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
        None => {
            let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
            if changes
                && matches!(
                    gate.mount,
                    Mount::Embedded {
                        unauthenticated: false
                    }
                )
            {
                return error(
                    StatusCode::FORBIDDEN,
                    json!({"error": "this embedded admin API refuses changes without admin.token: set admin.token (e.g. from KILN__ADMIN__TOKEN), or build the router with Kiln::admin_router_unauthenticated() if something in front of it authenticates", "generation": generation.id()}),
                );
            }
        }
    }
    drop(generation);
    next.run(request).await
}

/// The credentials of `Bearer <credentials>`, the scheme matched in any
/// case (RFC 9110 §11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
}

/// The client's address, when the server recorded it (kiln's own admin
/// listener does; an embedder's listener does with
/// `into_make_service_with_connect_info::<SocketAddr>()`).
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn peer_addr(peer: Peer) -> Option<SocketAddr> {
    peer.map(|Extension(ConnectInfo(addr))| addr)
}

async fn reload<A: App>(State(kiln): State<Kiln<A>>, peer: Peer) -> Response {
    let result = crate::history::with_peer(peer_addr(peer), kiln.reload(Trigger::HttpReload));
    answer(&kiln, result.await)
}

async fn rollback<A: App>(State(kiln): State<Kiln<A>>, peer: Peer) -> Response {
    answer(
        &kiln,
        crate::history::with_peer(peer_addr(peer), kiln.rollback()).await,
    )
}

/// `PATCH /admin/config`: a JSON merge patch, optionally `If-Match`.
async fn patch<A: App>(
    State(kiln): State<Kiln<A>>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let Json(patch) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                rejection.status(),
                json!({"error": format!("{}: send a JSON merge patch with Content-Type: application/json", rejection.body_text()), "generation": kiln.current().id()}),
            );
        }
    };
    let if_match = match headers.get(header::IF_MATCH).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": "If-Match is not readable text: send the ETag of GET /admin/config", "generation": kiln.current().id()}),
            );
        }
    };
    let result = crate::history::with_peer(peer_addr(peer), kiln.patch(&patch, if_match));
    answer(&kiln, result.await)
}

async fn history<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    Json(kiln.history()).into_response()
}

fn answer<A: App>(kiln: &Kiln<A>, result: Result<ReloadOutcome, ReloadError>) -> Response {
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => reload_error(&e, kiln.current().id()),
    }
}

/// The answer for a refused reload: the status says which kind, the body
/// names the cause and the generation that keeps serving.
pub(crate) fn reload_error(e: &ReloadError, generation: u64) -> Response {
    let (status, detail) = match e {
        ReloadError::Invalid(config) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(("key", json!(config.key()))),
        ),
        ReloadError::Patch(_) => (StatusCode::UNPROCESSABLE_ENTITY, None),
        ReloadError::RestartRequired(keys) => (StatusCode::CONFLICT, Some(("keys", json!(keys)))),
        ReloadError::Overridden { variable, .. } => {
            (StatusCode::CONFLICT, Some(("variable", json!(variable))))
        }
        ReloadError::LogNotManaged | ReloadError::Drifted { .. } | ReloadError::NoPrevious => {
            (StatusCode::CONFLICT, None)
        }
        ReloadError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, None),
        ReloadError::Persist { .. } => (StatusCode::INTERNAL_SERVER_ERROR, None),
        ReloadError::Build(build) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(("resource", json!(build.resource()))),
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let mut body = json!({"error": ErrorChain(e).to_string(), "generation": generation});
    if let Some((field, value)) = detail {
        body[field] = value;
    }
    error(status, body)
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

async fn status<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    Json(kiln.status()).into_response()
}

/// The effective configuration, defaults filled and secrets shown as `***`;
/// the `ETag` is the generation.
async fn config<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    let generation = kiln.current();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", generation.id()))
            .expect("digits are a valid header"),
    );
    (headers, Json(generation.config())).into_response()
}
