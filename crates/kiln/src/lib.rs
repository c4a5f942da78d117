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
mod generation;
mod handle;
mod history;
mod http;
mod json_time;
mod keyed;
pub mod logging;
mod reload;
mod resource;
mod server;
mod service;
mod source;
mod systemd;
mod watch;

pub use crate::app::{App, BoxError};
pub use crate::error::{BuildError, Refusal, ReloadError, ServeError, StartError};
pub use crate::generation::Generation;
pub use crate::handle::{Builder, Kiln, Status, Worker, WorkerStatus};
pub use crate::history::HistoryEntry;
pub use crate::keyed::{KeyContext, Keyed, KeyedApp, KeyedInstances};
pub use crate::reload::{ReloadOutcome, Trigger};
pub use crate::resource::Resource;
pub use crate::server::serve;
pub use crate::service::{GENERATION_HEADER, GenerationBody, GenerationService, ResponseFuture};
pub use kiln_config::load as load_config;
pub use kiln_config::{self as config, AppConfig, Config, ConfigError, Invalid, Loaded};
pub use kiln_resources::{self as resources, ErrorChain, Health, Pool, PoolStatus};
