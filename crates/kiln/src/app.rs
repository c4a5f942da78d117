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
/// worker thread, before the generation is published. What `prepare`
/// returns is the app's own state for that generation ([`State`](Self::State)):
/// each worker's router is built from it, and the next generation's
/// `prepare` gets it back as `previous`, to reuse what did not change.
/// Handlers are plain axum handlers; give them what they need from the
/// generation and the state as `State`.
///
/// An app with nothing of its own to keep says `type State = ();` and
/// answers `Ok(())` from `prepare`. (`prepare` has no default: a default
/// would need `State: Default`, and an app that wraps another, such as a
/// [`Keyed`](crate::Keyed), could then hand the inner router a state its
/// `prepare` never made.)
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::get};
/// use kiln::{App, BoxError, Generation};
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
///     type State = ();
///
///     async fn prepare(&self, _: &Generation<Hello>, _: Option<&()>) -> Result<(), BoxError> {
///         Ok(())
///     }
///
///     fn router(&self, generation: &Generation<Hello>, _: &()) -> Router {
///         let greeting = generation.app().greeting.clone();
///         Router::new().route("/", get(move || async move { greeting }))
///     }
/// }
/// ```
pub trait App: Send + Sync + 'static {
    /// The type of the `[app]` section.
    type Config: AppConfig;

    /// What the app keeps for one generation: made by
    /// [`prepare`](Self::prepare), read by [`router`](Self::router), handed
    /// back to the next generation's `prepare`. `()` when there is nothing.
    type State: Send + Sync + 'static;

    /// Runs once per generation, after its pools are warm and before any
    /// worker builds its router: create a schema, load a template set, check
    /// that the pools the app needs exist, build what every worker shares.
    /// An error refuses the generation.
    ///
    /// It runs inside every reload, with the published generation's state as
    /// `previous` (`None` at start-up): reuse what did not change.
    /// [`Generation::is_new`] tells which pools are new, so that work done
    /// on a carried-over pool is skipped. A refused generation's state is
    /// dropped; the next reload gets the published one again.
    fn prepare(
        &self,
        generation: &Generation<Self::Config>,
        previous: Option<&Self::State>,
    ) -> impl Future<Output = Result<Self::State, BoxError>> + Send;

    /// Builds one worker's router for `generation` from the state its
    /// [`prepare`](Self::prepare) made, on that worker's thread.
    ///
    /// kiln adds `GET /healthz` and `GET /readyz`: the router must not
    /// define them.
    fn router(&self, generation: &Generation<Self::Config>, state: &Self::State) -> Router;

    /// What `prepare` built anew for `state` beyond pools and resources,
    /// listed in the reload answer's `rebuilt` (a [`Keyed`](crate::Keyed)
    /// names each instance it built: `tenant:alpha.example`). None by
    /// default; an app that wraps another forwards the inner one's.
    fn rebuilt(&self, state: &Self::State) -> Vec<String> {
        let _ = state;
        Vec::new()
    }
}
