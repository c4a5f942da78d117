//! The fleet's admin routes: `GET /fleet`, `POST /fleet/publish`,
//! `POST /fleet/rollback`, and what a change answers in fleet mode (the
//! fleet version; with `?wait=all`, every instance's answer).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Peer, answer, if_match, peer_addr};
use crate::error::ErrorBody;
use crate::fleet::{Canary, Fleet, FleetView, Report};
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
        match fleet.wait_all(Duration::ZERO).await {
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
    /// Publish to a cohort first: a count of live instances (`2`) or a
    /// percentage rounded up (`10%`), at least one. The cohort is chosen by
    /// a hash of (instance, version); the others keep the previous version
    /// until every member has applied it and `hold` has passed, and one
    /// rejection returns the cohort to the previous version.
    #[serde(default)]
    #[schema(pattern = r"^[0-9]+%?$")]
    canary: Option<String>,
    /// With `canary`: how long every cohort member must have applied the
    /// version before it goes to every instance (`30s`, `2m`; default `0s`).
    #[serde(default)]
    #[schema(pattern = r"^[0-9]+ ?(ms|s|m|h)$")]
    hold: Option<String>,
}

/// A publish's canary and hold, checked; a `400` naming the bad field.
fn canary_of<A: App>(
    canary: Option<&str>,
    hold: Option<&str>,
    kiln: &Kiln<A>,
) -> Result<Option<(Canary, Duration)>, Box<Response>> {
    let bad = |error: String| {
        Box::new(Refusal::new(StatusCode::BAD_REQUEST, error, kiln.current().id()).into_response())
    };
    let hold = hold
        .map(|text| {
            humantime::parse_duration(text).map_err(|e| {
                bad(format!(
                    "hold {text:?} is not a duration such as \"30s\": {e}"
                ))
            })
        })
        .transpose()?;
    match (canary, hold) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(bad(
            "hold needs a canary: it is how long the canary cohort holds before promotion"
                .to_owned(),
        )),
        (Some(canary), hold) => Ok(Some((
            canary.parse().map_err(bad)?,
            hold.unwrap_or_default(),
        ))),
    }
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
        (status = 200, description = "Published and applied by this instance (`fleet_version`; with `wait=all`, `instances`). With `canary`: published to the cohort (`fleet_version`, `rollout`), applied here only if this instance is in it; with `wait=all`, once the rollout was promoted or halted.", body = Object),
        (status = 400, description = "Malformed JSON, an `If-Match` that is not an ETag list, a `wait` other than `all`, a `canary` that is not a count or a percentage, a `hold` that is not a duration or without a `canary`.", body = ErrorBody),
        (status = 409, description = "Not in a fleet, keys that need a restart changed (`keys`), a key the environment overrides, or a `canary` before the fleet's first version.", body = ErrorBody),
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
    let Json(Publish {
        document,
        message,
        canary,
        hold,
    }) = match body {
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
    let canary = match canary_of(canary.as_deref(), hold.as_deref(), &kiln) {
        Ok(canary) => canary,
        Err(refused) => return *refused,
    };
    if let Some((canary, hold)) = canary {
        let published = kiln.publish_canary(document, message, if_match, canary, hold);
        let result = crate::history::with_peer(peer_addr(peer), published).await;
        return answer_canary(&kiln, result, wait_all.then_some(hold)).await;
    }
    let published = kiln.publish_document(document, message, if_match);
    let result = crate::history::with_peer(peer_addr(peer), published).await;
    answer_change(&kiln, result, wait_all).await
}

/// The answer to a canary publish: the version and its rollout; with a
/// hold to wait for (`?wait=all`), once it settled, with every instance's
/// state.
async fn answer_canary<A: App>(
    kiln: &Kiln<A>,
    result: Result<(u64, crate::fleet::RolloutView), ReloadError>,
    wait_for: Option<Duration>,
) -> Response {
    let (version, rollout) = match result {
        Ok(published) => published,
        Err(e) => return e.at(kiln.current().id()).into_response(),
    };
    let fleet = kiln.shared.fleet.as_ref().expect("fleet mode");
    let mut body = serde_json::json!({"fleet_version": version, "rollout": rollout});
    if let Some(hold) = wait_for {
        match fleet.wait_all(fleet.rollout_patience(hold)).await {
            Ok(instances) => {
                body["instances"] = serde_json::to_value(instances).expect("rows serialize");
                body["rollout"] = serde_json::to_value(fleet.view().await.rollout())
                    .expect("a rollout serializes");
            }
            Err(e) => body["instances_error"] = e.to_string().into(),
        }
    }
    Json(body).into_response()
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
