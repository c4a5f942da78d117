//! What an application gives kiln: its config type and how to build its
//! router for one generation.

use std::future::Future;

use axum::Router;
use kiln_config::AppConfig;

use crate::Generation;

/// A boxed error from application code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An application kiln serves.
///
/// kiln calls [`prepare`](Self::prepare) once per generation, after the
/// generation's pools are warm, then [`router`](Self::router) on every
/// worker thread, before the generation is published. Handlers are plain
/// axum handlers; give them what they need from the generation as `State`.
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::get};
/// use kiln::{App, Generation};
///
/// #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
/// struct Hello {
///     greeting: String,
/// }
/// impl kiln::AppConfig for Hello {}
///
/// struct HelloApp;
///
/// impl App for HelloApp {
///     type Config = Hello;
///
///     fn router(&self, generation: &Generation<Hello>) -> Router {
///         let greeting = generation.app().greeting.clone();
///         Router::new().route("/", get(move || async move { greeting }))
///     }
/// }
/// ```
pub trait App: Send + Sync + 'static {
    /// The type of the `[app]` section.
    type Config: AppConfig;

    /// Runs once per generation, after its pools are warm and before any
    /// worker builds its router: create a schema, load a template set, check
    /// that the pools the app needs exist. An error refuses the generation.
    /// It runs inside every reload: [`Generation::is_new`] tells which
    /// pools are new, so that work done on a carried-over pool is skipped.
    fn prepare(
        &self,
        generation: &Generation<Self::Config>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = generation;
        async { Ok(()) }
    }

    /// Builds one worker's router for `generation`, on that worker's thread.
    ///
    /// kiln adds `GET /healthz` and `GET /readyz`: the router must not
    /// define them.
    fn router(&self, generation: &Generation<Self::Config>) -> Router;
}
