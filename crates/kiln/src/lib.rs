//! kiln: an application server whose workers are warm before the socket is
//! bound, whose configuration is live (published through an `ArcSwap` that
//! requests read without a lock), and whose reloads are atomic.
//!
//! An application implements [`App`]: its `[app]` config type and how to
//! build its axum `Router` for one [`Generation`]. kiln then either runs it
//! as a server ([`serve`]) or hands back a handle ([`Kiln`]) whose
//! [`router`](Kiln::router) and [`admin_router`](Kiln::admin_router) nest
//! into an existing axum app.
//!
//! # Quick start
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use kiln::{App, BoxError, Generation};
//!
//! #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
//! struct Hello {
//!     greeting: String,
//! }
//! impl kiln::AppConfig for Hello {}
//!
//! struct HelloApp;
//!
//! impl App for HelloApp {
//!     type Config = Hello;
//!     type State = ();
//!
//!     async fn prepare(&self, _: &Generation<Hello>, _: Option<&()>) -> Result<(), BoxError> {
//!         Ok(())
//!     }
//!
//!     fn router(&self, generation: &Generation<Hello>, _: &()) -> Router {
//!         let greeting = generation.app().greeting.clone();
//!         Router::new().route("/", get(move || async move { greeting }))
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let loaded = kiln::load_config::<Hello>("deploy.toml".as_ref())?;
//!     // Logs as `[log]` says; reloads then apply `log.level` live.
//!     kiln::logging::init(&loaded.config.log)?;
//!     kiln::serve(HelloApp, loaded).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Embedding
//!
//! An existing axum app keeps its `main`, its runtime and its listener: it
//! starts kiln (which loads, validates and warms everything before it
//! returns), then nests kiln's routers wherever it likes.
//!
//! ```no_run
//! # use axum::{Router, routing::get};
//! # use kiln::{App, Generation};
//! # #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
//! # struct Hello { greeting: String }
//! # impl kiln::AppConfig for Hello {}
//! # struct HelloApp;
//! # impl App for HelloApp {
//! #     type Config = Hello;
//! #     type State = ();
//! #     async fn prepare(&self, _: &Generation<Hello>, _: Option<&()>) -> Result<(), kiln::BoxError> { Ok(()) }
//! #     fn router(&self, _: &Generation<Hello>, _: &()) -> Router { Router::new() }
//! # }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = kiln::load_config::<Hello>("deploy.toml".as_ref())?;
//! let kiln = kiln::Kiln::start(HelloApp, loaded).await?;
//! let app = Router::new()
//!     .route("/", get(|| async { "the app's own route" }))
//!     .nest("/api", kiln.router().await?) // each request on the current generation
//!     .nest("/ops", kiln.admin_router()); // /ops/reload, /ops/status, /ops/config (changes need admin.token)
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Kiln::router`] attaches a worker on the calling runtime: call it once
//! and clone the router. `/readyz` is ready from [`Kiln::start`] until
//! [`Kiln::shutdown`], which also closes the pools.
//!
//! [`Kiln::current`] reads the live generation without a lock,
//! [`Kiln::subscribe`] waits for the next one, and [`Kiln::reload`] reloads
//! from code. A [`Resource`] is the app's own expensive thing, built from
//! `[resources.NAME]` and warmed before it serves; [`Keyed`] serves one app
//! instance per key (a tenant, a host name). The repository's `examples/`
//! has a runnable program for each.
#![deny(missing_docs)]

mod admin;
mod app;
pub mod client;
mod error;
mod fleet;
mod generation;
mod handle;
mod history;
mod http;
mod json_time;
mod keyed;
pub mod logging;
mod metrics;
mod observe;
mod reload;
mod resource;
mod server;
mod service;
mod source;
mod systemd;
mod watch;

pub use crate::app::{App, BoxError};
pub use crate::error::{BuildError, Refusal, ReloadError, ServeError, StartError};
pub use crate::fleet::FleetError;
pub use crate::generation::Generation;
pub use crate::handle::{Builder, Kiln, Status, Worker, WorkerStatus};
pub use crate::history::HistoryEntry;
pub use crate::keyed::{KeyContext, Keyed, KeyedApp, KeyedInstances};
pub use crate::observe::REQUEST_ID_HEADER;
pub use crate::reload::{ReloadOutcome, Trigger};
pub use crate::resource::Resource;
pub use crate::server::restart::{RestartError, RestartOutcome};
pub use crate::server::serve;
pub use crate::service::{
    GENERATION_HEADER, GenerationBody, GenerationService, RequestGeneration, ResponseFuture,
};
/// kiln's configuration crate, whole: the `[server]`, `[pools.NAME]`, …
/// section types an app reads from [`Generation::config`], the secret
/// types (`Secret`, `ConnString`) and `ByteSize` an `[app]` section may
/// use, merge patches and diffs. Re-exported deliberately, so that an app
/// names these types through kiln and cannot pick a mismatched version;
/// they follow kiln's own version.
pub use kiln_config as config;
pub use kiln_config::load as load_config;
pub use kiln_config::{AppConfig, Config, ConfigError, Invalid, Loaded};
/// kiln's resources crate, whole: the pools, [`within`](resources::within),
/// [`BoundedGet`](resources::BoundedGet), and the exact `deadpool_postgres`
/// and `deadpool_sqlite` (0.x crates) kiln builds its pools with. Name a
/// pool's types through `kiln::resources::deadpool_postgres` rather than a
/// dependency of your own: a second version of deadpool would be a second,
/// incompatible `Pool` type. Re-exported deliberately; the price is that a
/// deadpool upgrade that changes its API is a breaking kiln release, listed
/// as `breaking:` in the changelog.
pub use kiln_resources as resources;
pub use kiln_resources::{ErrorChain, Health, Pool, PoolStatus};
