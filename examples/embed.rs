//! Embedding kiln in an existing axum app.
//!
//! The app keeps its own `main`, its own tokio runtime and its own listener.
//! Before binding anything it loads, validates and warms kiln's side with
//! one call, then serves its own routes, nests the kiln app at `/api` and
//! kiln's admin API at `/ops`. It also reads the live configuration outside
//! requests, reacts to new generations, and reloads from code.
//!
//! The admin API shares the app's listener, which may be public, so its
//! changes need `admin.token`: without one they answer 403 (see
//! `Kiln::admin_router`). Give it from the environment, not the file.
//!
//! ```sh
//! export KILN__ADMIN__TOKEN=$(openssl rand -hex 16)
//! cargo run --example embed                      # examples/embed.toml on 127.0.0.1:3000
//! cargo run --example embed -- my.toml 127.0.0.1:4000
//!
//! curl 127.0.0.1:3000/                           # the app's own route
//! curl 127.0.0.1:3000/api                        # kiln's app: the greeting from the config
//! sed -i 's/Hello/Howdy/' examples/embed.toml
//! curl -X POST -H "Authorization: Bearer $KILN__ADMIN__TOKEN" \
//!     127.0.0.1:3000/ops/reload                  # kiln's admin API, nested
//! curl -X POST 127.0.0.1:3000/deploy-hook        # or a reload from the app's own code
//! curl -X PUT -H 'If-Match: "2"' -d Hi 127.0.0.1:3000/greeting  # a change from the app's own code
//! curl 127.0.0.1:3000/api                        # the new greeting
//! ```

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use kiln::{App, AppConfig, BoxError, Generation, Kiln, Pool, ReloadError, ReloadOutcome, Trigger};
use serde::{Deserialize, Serialize};

/// `[app]`: what the kiln side reads from the configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Greeter {
    greeting: String,
}

impl AppConfig for Greeter {}

/// The part of the app that kiln serves: rebuilt for every generation.
struct GreeterApp;

impl App for GreeterApp {
    type Config = Greeter;
    type State = ();

    async fn prepare(&self, _: &Generation<Greeter>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, generation: &Generation<Greeter>, _: &()) -> Router {
        let greeting = generation.app().greeting.clone();
        let pool = generation.pool("main").cloned();
        Router::new()
            .route("/", get(move || async move { greeting }))
            .route("/sqlite", get(move || sqlite_version(pool)))
    }
}

/// Runs a query on the generation's warm pool `main`.
async fn sqlite_version(pool: Option<Pool>) -> Result<String, (StatusCode, String)> {
    let unavailable = |e: String| (StatusCode::SERVICE_UNAVAILABLE, e);
    let Some(Pool::Sqlite(pool)) = pool else {
        return Err(unavailable(
            "this example needs a SQLite [pools.main]".into(),
        ));
    };
    let conn = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
    conn.interact(|conn| conn.query_row("SELECT sqlite_version()", [], |row| row.get(0)))
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/embed.toml");
    let config = args.next().unwrap_or_else(|| default.to_owned());
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:3000").parse()?;

    // Load, validate and warm every pool before anything listens.
    let kiln = Kiln::start(GreeterApp, kiln::load_config(config.as_ref())?).await?;

    // React to reloads, whatever triggers them.
    let mut generations = kiln.subscribe();
    tokio::spawn(async move {
        while generations.changed().await.is_ok() {
            let id = generations.borrow_and_update().id();
            tracing::info!(generation = id, "kiln published a new generation");
        }
    });

    let app = Router::new()
        .route("/", get(home))
        .route("/deploy-hook", post(deploy_hook))
        .route("/greeting", put(set_greeting))
        .with_state(kiln.clone())
        .nest("/api", kiln.router().await?)
        .nest("/ops", kiln.admin_router());

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "ready: own routes at /, kiln at /api, kiln's admin API at /ops; listening on {addr}, admin on {addr}"
    );
    // With the client's address, which kiln's audit log and history record.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// The app's own route, reading kiln's live configuration without a lock.
async fn home(State(kiln): State<Kiln<GreeterApp>>) -> String {
    let current = kiln.current();
    format!(
        "The host app's own route. kiln serves generation {} at /api, greeting {:?}.\n",
        current.id(),
        current.app().greeting
    )
}

/// A reload from the app's own code: the same answer the admin route gives.
async fn deploy_hook(State(kiln): State<Kiln<GreeterApp>>) -> Response {
    answer(&kiln, kiln.reload(Trigger::Api).await)
}

/// The app's own settings form (behind the app's own authentication in a
/// real app): sets the greeting through kiln (validated,
/// warmed, written to the file, then applied). With `If-Match` (the
/// generation the form was read at, as `GET /ops/config` tags it), a form
/// that is out of date is refused with 412, as the admin API would.
async fn set_greeting(
    State(kiln): State<Kiln<GreeterApp>>,
    headers: HeaderMap,
    greeting: String,
) -> Response {
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|value| value.to_str().ok());
    let patch = serde_json::json!({ "app": { "greeting": greeting } });
    answer(&kiln, kiln.patch(&patch, if_match).await)
}

/// A change's answer: a refused one with the admin API's status and body.
fn answer(kiln: &Kiln<GreeterApp>, result: Result<ReloadOutcome, ReloadError>) -> Response {
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => e.at(kiln.current().id()).into_response(),
    }
}
