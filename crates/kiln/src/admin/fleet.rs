//! The fleet's admin routes: `GET /fleet`, `POST /fleet/publish`,
//! `POST /fleet/rollback`, and what a change answers in fleet mode (the
//! fleet version; with `?wait=all`, every instance's answer).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Peer, answer, if_match, peer_addr};
use crate::error::ErrorBody;
use crate::fleet::{Fleet, FleetView, Report};
use crate::{App, Kiln, Refusal, ReloadError, ReloadOutcome};

/// `?wait=all` on a change.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    wait: Option<WaitFor>,
}

/// Whom a fleet change waits for besides this instance.
#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum WaitFor {
    /// Every live instance.
    All,
}

/// Whether the query asks to wait for every instance; a `400` for any
/// other query.
pub(super) fn wait_all<A: App>(
    query: Result<Query<WaitQuery>, QueryRejection>,
    kiln: &Kiln<A>,
) -> Result<bool, Box<Response>> {
    match query {
        Ok(Query(query)) => Ok(matches!(query.wait, Some(WaitFor::All))),
        Err(rejection) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("{}: the only query is wait=all", rejection.body_text()),
            kiln.current().id(),
        )
        .into_response()
        .into()),
    }
}

/// The answer to a change: as a reload's, and in fleet mode, once this
/// instance has reported its ACK, with `fleet_version` and (with
/// `wait_all`) every live instance's answer in `instances`.
pub(super) async fn answer_change<A: App>(
    kiln: &Kiln<A>,
    result: Result<ReloadOutcome, ReloadError>,
    wait_all: bool,
) -> Response {
    let (Ok(outcome), Some(fleet)) = (&result, &kiln.shared.fleet) else {
        return answer(kiln, result);
    };
    let version = kiln.etag();
    let report = Report::applied(version, outcome.generation);
    if let Err(e) = fleet.acknowledge(&report, kiln.current().text()).await {
        tracing::warn!(error = %e, version, "Could not report the applied fleet version; the next look tries again");
    }
    let mut body = serde_json::to_value(outcome).expect("an outcome serializes");
    body["fleet_version"] = version.into();
    if wait_all {
        match fleet.wait_all(version).await {
            Ok(instances) => {
                body["instances"] = serde_json::to_value(instances).expect("rows serialize");
            }
            Err(e) => body["instances_error"] = e.to_string().into(),
        }
    }
    Json(body).into_response()
}

/// The fleet, or a `409` saying this instance is in none.
fn fleet_of<A: App>(kiln: &Kiln<A>) -> Result<&Fleet, Box<Response>> {
    kiln.shared.fleet.as_deref().ok_or_else(|| {
        Refusal::new(
            StatusCode::CONFLICT,
            "this instance is not in a fleet: its file has no [fleet] section",
            kiln.current().id(),
        )
        .into_response()
        .into()
    })
}

/// `GET /admin/fleet`: the desired version and each instance's state.
#[utoipa::path(
    get,
    path = "/fleet",
    responses(
        (status = 200, description = "The fleet: the store's connection, the desired version, and one row per instance (`null` while the store is unreachable).", body = FleetView),
        (status = 409, description = "This instance is not in a fleet (no `[fleet]` section).", body = ErrorBody),
    )
)]
pub(super) async fn view<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    match fleet_of(&kiln) {
        Ok(fleet) => Json(fleet.view().await).into_response(),
        Err(refused) => *refused,
    }
}

/// A whole fleet document to publish.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Publish {
    /// The document (TOML): the shared sections, never `[fleet]` or
    /// `[admin]`.
    document: String,
    /// Why, kept with the version.
    #[serde(default)]
    message: Option<String>,
}

/// `POST /admin/fleet/publish`: a whole document as the fleet's next
/// version, validated and warmed here first.
#[utoipa::path(
    post,
    path = "/fleet/publish",
    request_body(content = Publish, content_type = "application/json"),
    params(
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^ *(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*) *$"#, description = "The fleet version it replaces (the `ETag` of `GET /admin/config`)."),
        ("wait" = Option<String>, Query, nullable = false, pattern = "^all$", description = "`all`: answer once every live instance has applied or rejected it (or after `fleet.ack_timeout`)."),
    ),
    responses(
        (status = 200, description = "Published and applied by this instance (`fleet_version`; with `wait=all`, `instances`).", body = Object),
        (status = 400, description = "Malformed JSON, an `If-Match` that is not an ETag list, or a `wait` other than `all`.", body = ErrorBody),
        (status = 409, description = "Not in a fleet, keys that need a restart changed (`keys`), or a key the environment overrides.", body = ErrorBody),
        (status = 412, description = "The fleet moved on since `If-Match` (or since this instance's version).", body = ErrorBody),
        (status = 422, description = "The document is invalid here (`key`), or sets `[fleet]` or `[admin]`.", body = ErrorBody),
        (status = 503, description = "The fleet store is unreachable, a resource could not be built or warmed (`resource`), or the server is draining.", body = ErrorBody),
    )
)]
pub(super) async fn publish<A: App>(
    State(kiln): State<Kiln<A>>,
    peer: Peer,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Json<Publish>, JsonRejection>,
) -> Response {
    if let Err(refused) = fleet_of(&kiln) {
        return *refused;
    }
    let Json(Publish { document, message }) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return super::json_refused(
                &kiln,
                &rejection,
                r#"{"document": "<TOML>", "message": "…"}"#,
            );
        }
    };
    let if_match = match if_match(&headers, &kiln) {
        Ok(if_match) => if_match.map(str::to_owned),
        Err(refused) => return *refused,
    };
    let wait_all = match wait_all(query, &kiln) {
        Ok(wait_all) => wait_all,
        Err(refused) => return *refused,
    };
    let published = kiln.publish_document(document, message, if_match);
    let result = crate::history::with_peer(peer_addr(peer), published).await;
    answer_change(&kiln, result, wait_all).await
}

/// `POST /admin/fleet/rollback`: the document of the version the desired
/// one was made from, published as a new version.
#[utoipa::path(
    post,
    path = "/fleet/rollback",
    params(("wait" = Option<String>, Query, nullable = false, pattern = "^all$", description = "`all`: answer once every live instance has applied or rejected it (or after `fleet.ack_timeout`).")),
    responses(
        (status = 200, description = "Published and applied by this instance (`fleet_version`; with `wait=all`, `instances`).", body = Object),
        (status = 400, description = "A `wait` other than `all`.", body = ErrorBody),
        (status = 409, description = "Not in a fleet, or the desired version has no earlier one.", body = ErrorBody),
        (status = 412, description = "This instance does not serve the desired version yet.", body = ErrorBody),
        (status = 422, description = "The earlier document is invalid here (`key`).", body = ErrorBody),
        (status = 503, description = "The fleet store is unreachable, a resource could not be built or warmed, or the server is draining.", body = ErrorBody),
    )
)]
pub(super) async fn rollback<A: App>(
    State(kiln): State<Kiln<A>>,
    peer: Peer,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let fleet = match fleet_of(&kiln) {
        Ok(fleet) => fleet,
        Err(refused) => return *refused,
    };
    let wait_all = match wait_all(query, &kiln) {
        Ok(wait_all) => wait_all,
        Err(refused) => return *refused,
    };
    let earlier = match fleet.earlier().await {
        Ok(earlier) => earlier,
        Err(e) => return answer(&kiln, Err(e)),
    };
    let published = kiln.publish_document(earlier.document, Some(earlier.message), None);
    let result = crate::history::with_peer(peer_addr(peer), published).await;
    answer_change(&kiln, result, wait_all).await
}
