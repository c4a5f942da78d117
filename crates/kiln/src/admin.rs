//! The admin API: reload, patch, rollback, history, status, the
//! effective configuration, the live log filter and its own OpenAPI
//! document. A plain `Router` of
//! a [`Kiln`] handle; the server serves it at `/admin` on its own listener,
//! an embedding app nests it wherever it likes. Every error it answers is a
//! [`Refusal`]: JSON `{"error", "generation", ...}`.
//!
//! Every request passes, in order: the browser guard ([`guard`]: `Origin`,
//! `Sec-Fetch-Site`, `Host`; 403), then the bearer token when `admin.token`
//! is set (401, or 429 once failures spend their [`budget`]). Embedded
//! without a token, changes (`POST`, `PATCH`) are refused with 403 unless the
//! embedder chose [`Kiln::admin_router_unauthenticated`].

mod budget;
mod fleet;
mod guard;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, OriginalUri, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use self::budget::FailureBudget;
use self::guard::Hosts;
use crate::error::ErrorBody;
use crate::logging::{FilterError, LogFilter};
use crate::{App, Kiln, Refusal, ReloadError, ReloadOutcome, Trigger};

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
    let Routes { router, doc } = Routes::new()
        .add(__path_reload, reload::<A>)
        .add(__path_rollback, rollback::<A>)
        .add(__path_restart, restart::<A>)
        .add(__path_history, history::<A>)
        .add(__path_status, status::<A>)
        .add(__path_metrics, metrics::<A>)
        .add(__path_config, config::<A>)
        .add(__path_patch, patch::<A>)
        .add(fleet::__path_view, fleet::view::<A>)
        .add(fleet::__path_publish, fleet::publish::<A>)
        .add(fleet::__path_rollback, fleet::rollback::<A>)
        .add(__path_log_level, log_level::<A>)
        .add(__path_set_log_level, set_log_level::<A>)
        .add(__path_openapi, openapi::<A>);
    router
        .fallback(not_found::<A>)
        .method_not_allowed_fallback(method_not_allowed::<A>)
        .layer(Extension(Arc::new(doc)))
        // The last layer runs first: the guard, then authentication.
        .layer(middleware::from_fn_with_state(gate.clone(), authorize::<A>))
        .layer(middleware::from_fn_with_state(gate, guard::<A>))
        .with_state(kiln)
}

/// The admin routes and their OpenAPI document, built together: a route's
/// path and methods come from its `#[utoipa::path]`, so the document cannot
/// miss a route or name a wrong one. (`utoipa_axum::routes!` does the same
/// but cannot take the generic handlers used here.)
struct Routes<A: App> {
    router: Router<Kiln<A>>,
    doc: utoipa::openapi::OpenApi,
}

impl<A: App> Routes<A> {
    fn new() -> Self {
        Self {
            router: Router::new(),
            doc: AdminApi::openapi(),
        }
    }

    /// Routes `handler` where `P` (its `__path_*` type) says.
    fn add<P: utoipa::Path, H: Handler<T, Kiln<A>>, T: 'static>(
        mut self,
        _: P,
        handler: H,
    ) -> Self {
        let path = P::path();
        let methods = P::methods();
        let on = methods.iter().fold(MethodRouter::new(), |on, method| {
            on.on(method_filter(method), handler.clone())
        });
        self.router = self.router.route(&path, on);
        let mut operation = P::operation();
        guarded(&mut operation);
        self.doc.paths.add_path_operation(&path, methods, operation);
        self
    }
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// The document's fixed part; [`Routes`] adds the paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln admin API",
        description = "Reload, patch, roll back and inspect a running kiln. Every error is JSON: `{\"error\", \"generation\", ...}`."
    ),
    components(schemas(
        ErrorBody,
        crate::fleet::FleetView,
        self::fleet::Publish,
        LogFilter,
        SetLogFilter
    ))
)]
struct AdminApi;

/// Documents the answers every admin route can give before its handler
/// runs: the browser guard (403), the token (401) and its failure budget
/// (429); and for a route with a JSON body, axum's refusals of the body
/// (413, 415).
fn guarded(operation: &mut utoipa::openapi::path::Operation) {
    let body_refusals = [
        ("413", "The body is larger than 2 MiB."),
        ("415", "The body is not `Content-Type: application/json`."),
    ];
    let body_refusals = operation
        .request_body
        .is_some()
        .then_some(body_refusals)
        .into_iter()
        .flatten();
    let refusals = [
        (
            "401",
            "Missing or wrong bearer token (`admin.token` is set).",
        ),
        (
            "403",
            "Refused by the browser guard (`Origin`, `Sec-Fetch-Site`, `Host`), or a change to an embedded admin API without a token.",
        ),
        (
            "429",
            "Too many failed authentications: retry after `Retry-After` seconds.",
        ),
    ];
    for (status, description) in refusals.into_iter().chain(body_refusals) {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description).into());
    }
}

/// A response with the error body.
fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}

/// `GET /admin/openapi.json`: this document, its server URL where the
/// router is mounted and, when `admin.token` is set, the bearer scheme on
/// every operation.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin API.", content_type = "application/json", body = Object))
)]
async fn openapi<A: App>(
    State(kiln): State<Kiln<A>>,
    Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>,
    OriginalUri(original): OriginalUri,
    uri: axum::http::Uri,
) -> Response {
    let mut doc = (*doc).clone();
    // Where the router is nested: `/admin`, an embedder's prefix, or `/`.
    let mount = match original.path().strip_suffix(uri.path()) {
        Some("") | None => "/",
        Some(mount) => mount,
    };
    doc.servers = Some(vec![Server::new(mount)]);
    if kiln.current().config().admin.token.is_some() {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        doc.security = Some(vec![SecurityRequirement::new(
            "token",
            Vec::<String>::new(),
        )]);
    }
    Json(doc).into_response()
}

/// Unknown admin paths answer 404 in the error shape.
async fn not_found<A: App>(State(kiln): State<Kiln<A>>, uri: axum::http::Uri) -> Response {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!("no admin route {}: see openapi.json", uri.path()),
        kiln.current().id(),
    )
    .into_response()
}

/// A known admin path with a method it does not take: 405 in the error shape.
async fn method_not_allowed<A: App>(
    State(kiln): State<Kiln<A>>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}: see openapi.json", uri.path()),
        kiln.current().id(),
    )
    .into_response()
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
        return Refusal::new(StatusCode::FORBIDDEN, refusal, generation.id()).into_response();
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
                let mut response = Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications: try again after Retry-After seconds",
                    generation.id(),
                )
                .into_response();
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
                let mut response = Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token: send Authorization: Bearer <admin.token>",
                    generation.id(),
                )
                .into_response();
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
                return Refusal::new(StatusCode::FORBIDDEN, "this embedded admin API refuses changes without admin.token: set admin.token (e.g. from KILN__ADMIN__TOKEN), or build the router with Kiln::admin_router_unauthenticated() if something in front of it authenticates", generation.id()).into_response();
            }
        }
    }
    drop(generation);
    next.run(request).await
}

/// What `If-Match` may hold: `*`, or a list of generation ETags (`"3"`,
/// `W/"3"`; bare digits too, as kiln has always taken them). Anything else
/// is a client's mistake, not a stale patch. The `pattern` of `If-Match` in
/// [`patch`]'s document says the same (schemathesis checks that they agree).
/// Not the `headers` crate's `IfMatch`: it takes quoted tags only and
/// compares strongly, refusing the bare `3` and the `W/"3"` kiln takes.
fn etag_list(value: &str) -> bool {
    let value = value.trim_matches(' ');
    value == "*"
        || value.split(',').all(|tag| {
            let tag = tag.trim_matches(' ');
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let digits = tag
                .strip_prefix('"')
                .and_then(|tag| tag.strip_suffix('"'))
                .unwrap_or(tag);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        })
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

/// `POST /admin/reload`: reads the file again and applies it.
#[utoipa::path(
    post,
    path = "/reload",
    responses(
        (status = 200, description = "Applied: every worker serves the new generation.", body = Object),
        (status = 409, description = "Keys that need a restart changed (`keys`), or `log.level` changed where kiln does not manage the log subscriber.", body = ErrorBody),
        (status = 422, description = "The file is invalid (`key`).", body = ErrorBody),
        (status = 503, description = "A resource could not be built or warmed (`resource`), or the server is draining.", body = ErrorBody),
    )
)]
async fn reload<A: App>(State(kiln): State<Kiln<A>>, peer: Peer) -> Response {
    let result = crate::history::with_peer(peer_addr(peer), kiln.reload(Trigger::HttpReload));
    answer(&kiln, result.await)
}

/// `POST /admin/rollback`: applies the configuration before the last reload.
#[utoipa::path(
    post,
    path = "/rollback",
    responses(
        (status = 200, description = "Rolled back: every worker serves the new generation.", body = Object),
        (status = 409, description = "Nothing to roll back to, keys that need a restart differ (`keys`), or the file was edited since it was loaded.", body = ErrorBody),
        (status = 422, description = "The earlier configuration is no longer valid (`key`).", body = ErrorBody),
        (status = 500, description = "The earlier configuration could not be written to the file.", body = ErrorBody),
        (status = 503, description = "A resource could not be built or warmed (`resource`), or the server is draining.", body = ErrorBody),
    )
)]
async fn rollback<A: App>(State(kiln): State<Kiln<A>>, peer: Peer) -> Response {
    answer(
        &kiln,
        crate::history::with_peer(peer_addr(peer), kiln.rollback()).await,
    )
}

/// `POST /admin/restart`: a new process warms, takes over the listeners and
/// serves; this one drains. Answers once the new process serves.
#[utoipa::path(
    post,
    path = "/restart",
    responses(
        (status = 200, description = "The new process serves (`old_pid`, `new_pid`, `generation`, `warm_ms`, `took_ms`); this one drains.", body = Object),
        (status = 409, description = "A restart is already in flight, or kiln is embedded in an app (no process of its own to restart).", body = ErrorBody),
        (status = 503, description = "The new process failed (invalid configuration, a resource that did not warm, a crash, or no answer within `server.restart_timeout`) and this one keeps serving, its listeners untouched; `log` holds the new process's last log lines. Or the server is draining.", body = ErrorBody),
    )
)]
async fn restart<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    match kiln.restart().await {
        // This connection is to the process that handed over: the client's
        // next request must open one to the new process.
        Ok(outcome) => (
            [(header::CONNECTION, HeaderValue::from_static("close"))],
            Json(outcome),
        )
            .into_response(),
        Err(e) => e.at(kiln.current().id()).into_response(),
    }
}

/// `PATCH /admin/config`: a JSON merge patch, optionally `If-Match`.
#[utoipa::path(
    patch,
    path = "/config",
    request_body(content = Object, content_type = "application/json", description = "A JSON merge patch (RFC 7396) of the configuration."),
    params(
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^ *(\*|(W/)?("[0-9]+"|[0-9]+)( *, *(W/)?("[0-9]+"|[0-9]+))*) *$"#, description = "The `ETag` of `GET /admin/config`: refuse the patch if the configuration changed since."),
        ("wait" = Option<String>, Query, nullable = false, pattern = "^all$", description = "In fleet mode, `all`: answer once every live instance has applied or rejected the new version (or after `fleet.ack_timeout`), with each one's state in `instances`."),
    ),
    responses(
        (status = 200, description = "Applied and written to the file; in fleet mode, published (`fleet_version`) and applied by this instance.", body = Object),
        (status = 400, description = "Malformed JSON, an `If-Match` that is not an ETag list, or a `wait` other than `all`.", body = ErrorBody),
        (status = 409, description = "Keys that need a restart changed (`keys`), a key the environment overrides (`key`, `variable`), the file was edited since it was loaded, or `log.level` where kiln does not manage the log subscriber.", body = ErrorBody),
        (status = 412, description = "`If-Match` names an older generation (fleet version), or another change was published first.", body = ErrorBody),
        (status = 422, description = "The body is not a JSON object, the patched configuration is invalid (`key`), or the patch cannot be applied.", body = ErrorBody),
        (status = 500, description = "The file could not be written; nothing was applied.", body = ErrorBody),
        (status = 503, description = "A resource could not be built or warmed (`resource`), the server is draining, or the fleet store is unreachable.", body = ErrorBody),
    )
)]
async fn patch<A: App>(
    State(kiln): State<Kiln<A>>,
    peer: Peer,
    headers: HeaderMap,
    query: Result<Query<fleet::WaitQuery>, QueryRejection>,
    // An object, so that any other JSON is refused (422) before `If-Match`
    // is compared: a malformed request is not a stale one.
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Response {
    let Json(patch) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return json_refused(&kiln, &rejection, "a JSON merge patch (an object)");
        }
    };
    let if_match = match if_match(&headers, &kiln) {
        Ok(if_match) => if_match,
        Err(refused) => return *refused,
    };
    let wait_all = match fleet::wait_all(query, &kiln) {
        Ok(wait_all) => wait_all,
        Err(refused) => return *refused,
    };
    let patch = serde_json::Value::Object(patch);
    let result = crate::history::with_peer(peer_addr(peer), kiln.patch(&patch, if_match)).await;
    fleet::answer_change(&kiln, result, wait_all).await
}

/// The `If-Match` header, when it is an ETag list; a `400` otherwise.
fn if_match<'a, A: App>(
    headers: &'a HeaderMap,
    kiln: &Kiln<A>,
) -> Result<Option<&'a str>, Box<Response>> {
    match headers.get(header::IF_MATCH).map(HeaderValue::to_str) {
        None => Ok(None),
        Some(Ok(value)) if etag_list(value) => Ok(Some(value)),
        Some(_) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "If-Match is not an ETag list: send the ETag of GET /admin/config (e.g. \"3\"), or *",
            kiln.current().id(),
        )
        .into_response()
        .into()),
    }
}

/// `GET /admin/history`: the last reload attempts, newest first.
#[utoipa::path(get, path = "/history", responses((status = 200, description = "The last reload attempts, newest first.", body = Vec<Object>)))]
async fn history<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    Json(kiln.history()).into_response()
}

fn answer<A: App>(kiln: &Kiln<A>, result: Result<ReloadOutcome, ReloadError>) -> Response {
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => e.at(kiln.current().id()).into_response(),
    }
}

/// `GET /admin/status`: the current generation, workers and pools.
#[utoipa::path(get, path = "/status", responses((status = 200, description = "The current generation, workers and pools.", body = Object)))]
async fn status<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    Json(kiln.status()).into_response()
}

/// `GET /admin/metrics`: kiln's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Requests, reloads, warm-ups, pools and the process, in the Prometheus text exposition format (0.0.4).", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
async fn metrics<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    (
        [(header::CONTENT_TYPE, content_type)],
        kiln.render_metrics(),
    )
        .into_response()
}

/// The effective configuration, defaults filled and secrets shown as `***`;
/// the `ETag` is the generation.
#[utoipa::path(
    get,
    path = "/config",
    responses((status = 200, description = "The effective configuration, secrets as `***`.", body = Object, headers(("ETag" = String, description = "The generation (in fleet mode, the fleet version), for `If-Match`."))))
)]
async fn config<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    let generation = kiln.current();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", kiln.etag())).expect("digits are a valid header"),
    );
    (headers, Json(generation.config())).into_response()
}

/// A body axum could not take as JSON (400, 413, 415, 422), in the error
/// shape, saying what to send.
fn json_refused<A: App>(kiln: &Kiln<A>, rejection: &JsonRejection, expected: &str) -> Response {
    Refusal::new(
        rejection.status(),
        format!(
            "{}: send {expected} with Content-Type: application/json",
            rejection.body_text()
        ),
        kiln.current().id(),
    )
    .into_response()
}

/// The body of `PUT /admin/log-level`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetLogFilter {
    /// `tracing_subscriber::EnvFilter` directives: `debug`,
    /// `info,kiln=debug,tokio_postgres=warn`, `warn,kiln::reload=trace`.
    // max_length: logging::MAX_FILTER_CHARS (the attribute takes a literal).
    #[schema(min_length = 1, max_length = 1024, example = "info,kiln=debug")]
    filter: String,
}

/// The live log filter as an answer, or why kiln cannot give it.
fn filter_answer<A: App>(kiln: &Kiln<A>, result: Result<LogFilter, FilterError>) -> Response {
    match result {
        Ok(filter) => Json(filter).into_response(),
        Err(e) => Refusal::new(e.status(), e.to_string(), kiln.current().id()).into_response(),
    }
}

/// `GET /admin/log-level`: the log filter in force.
#[utoipa::path(
    get,
    path = "/log-level",
    responses(
        (status = 200, description = "The log filter in force and where it came from.", body = LogFilter),
        (status = 409, description = "This process's log subscriber is not kiln's (an embedding application that did not call `kiln::logging::init`).", body = ErrorBody),
    )
)]
async fn log_level<A: App>(State(kiln): State<Kiln<A>>) -> Response {
    filter_answer(&kiln, crate::logging::current())
}

/// `PUT /admin/log-level`: replaces the log filter, on every worker at once,
/// until a reload that changes `log.level`.
#[utoipa::path(
    put,
    path = "/log-level",
    request_body(content = SetLogFilter, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied on every thread; in force until a reload changes `log.level`.", body = LogFilter),
        (status = 400, description = "The filter does not parse (the error names it), is empty or longer than 1024 characters, or the body is malformed JSON. Nothing changed.", body = ErrorBody),
        (status = 409, description = "This process's log subscriber is not kiln's (an embedding application that did not call `kiln::logging::init`).", body = ErrorBody),
        (status = 422, description = "The body is not `{\"filter\": \"...\"}`.", body = ErrorBody),
    )
)]
async fn set_log_level<A: App>(
    State(kiln): State<Kiln<A>>,
    peer: Peer,
    body: Result<Json<SetLogFilter>, JsonRejection>,
) -> Response {
    let Json(SetLogFilter { filter }) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return json_refused(&kiln, &rejection, r#"{"filter": "<EnvFilter directives>"}"#);
        }
    };
    filter_answer(&kiln, crate::logging::set_filter(&filter, peer_addr(peer)))
}
