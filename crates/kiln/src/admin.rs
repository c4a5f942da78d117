//! The admin API: reload, patch, rollback, history, status and the
//! effective configuration, behind an optional bearer token. A plain `Router` of a [`Kiln`] handle; the server
//! nests it at `/admin`, an embedding app wherever it likes.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::{App, Kiln, ReloadError, ReloadOutcome, Trigger};

pub(crate) fn router<A: App>(kiln: Kiln<A>) -> Router {
    Router::new()
        .route("/reload", post(reload::<A>))
        .route("/rollback", post(rollback::<A>))
        .route("/history", get(history::<A>))
        .route("/status", get(status::<A>))
        .route("/config", get(config::<A>).patch(patch::<A>))
        .layer(middleware::from_fn_with_state(kiln.clone(), authorize::<A>))
        .with_state(kiln)
}

/// With `admin.token` set (in the current generation), every route needs
/// `Authorization: Bearer <token>`, compared in constant time.
async fn authorize<A: App>(State(kiln): State<Kiln<A>>, request: Request, next: Next) -> Response {
    let generation = kiln.current();
    if let Some(token) = &generation.config().admin.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !presented.is_some_and(|presented| token.matches(presented)) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token: send Authorization: Bearer <admin.token>"}),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    drop(generation);
    next.run(request).await
}

async fn reload<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    answer(&kiln, kiln.reload(Trigger::HttpReload).await)
}

async fn rollback<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    answer(&kiln, kiln.rollback().await)
}

/// `PATCH /admin/config`: a JSON merge patch, optionally `If-Match`.
async fn patch<A: App>(
    State(kiln): State<Kiln<A>>,
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
    answer(&kiln, kiln.patch(&patch, if_match).await)
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
        ReloadError::NoPrevious => (StatusCode::CONFLICT, None),
        ReloadError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, None),
        ReloadError::Persist { .. } => (StatusCode::INTERNAL_SERVER_ERROR, None),
        ReloadError::Build(build) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(("resource", json!(build.resource()))),
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let mut body = json!({"error": e.to_string(), "generation": generation});
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
