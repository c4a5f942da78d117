//! Why start-up or a reload failed.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_config::{ConfigError, PatchError};
use kiln_resources::{ErrorChain, ResourceError};
use serde::Serialize;

use crate::BoxError;

/// Why kiln could not start. Nothing was bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A generation could not be built (a pool, the app, a worker).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The config key holding the address.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The listening sockets systemd passed (socket activation) do not fit
    /// the configuration.
    #[error("systemd socket activation: {0}")]
    Activation(String),
    /// The operating system refused something else (a thread, a runtime).
    #[error("{what}: {source}")]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The fleet's document could not be had (`[fleet]`).
    #[error(transparent)]
    Fleet(#[from] crate::FleetError),
    /// SIGTERM or SIGINT arrived before kiln was ready.
    #[error("{signal} while {phase}: stopped before serving")]
    Interrupted {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// What start-up was doing (`warming pools`, `warming workers`).
        phase: &'static str,
    },
}

/// Why [`serve`](crate::serve) ended with an error: it did not start, or it
/// did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Start-up failed or was interrupted; nothing was served.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A worker thread panicked, or did not stop by the drain's deadline.
    #[error("worker {worker} {problem}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// What happened.
        problem: String,
    },
    /// `server.shutdown_grace` expired with requests still in flight; they
    /// were cut.
    #[error(
        "server.shutdown_grace ({}) expired with {requests} requests in flight; they were cut",
        humantime::format_duration(*.grace)
    )]
    Cut {
        /// How many.
        requests: usize,
        /// The grace they had.
        grace: Duration,
    },
}

/// Why a generation could not be built: what was not ready and why.
///
/// The cause is kept as the [`source`](std::error::Error::source), not in
/// the message: print the chain ([`ErrorChain`](crate::ErrorChain), or
/// anyhow's `{:#}`) to see, for example, the database server's message
/// behind tokio-postgres's bare `db error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A pool or resource failed to build or warm.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The application's `prepare` failed.
    #[error("app")]
    App {
        /// Why.
        source: BoxError,
    },
    /// A worker could not build or warm its app instance.
    #[error("worker {worker}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// Application code panicked while the generation was built; the panic
    /// was caught and nothing was applied.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// What panicked: `App::prepare`, `App::router (worker 0)`,
        /// `resource NAME`.
        what: String,
        /// The panic's message.
        message: String,
    },
    /// Warm-up did not finish in time.
    #[error("{what} not ready within {}: raise server.warm_timeout or fix what is slow", humantime::format_duration(*.timeout))]
    Timeout {
        /// What was still warming.
        what: String,
        /// The limit (`server.warm_timeout`).
        timeout: Duration,
    },
}

impl From<kiln_resources::TimedOut> for BuildError {
    fn from(late: kiln_resources::TimedOut) -> Self {
        Self::Timeout {
            what: late.what,
            timeout: late.limit,
        }
    }
}

impl BuildError {
    /// The name of the resource at fault (`main`, `app`, `worker 1`).
    pub fn resource(&self) -> String {
        match self {
            Self::Resource(e) => e.resource.clone(),
            Self::App { .. } => "app".to_owned(),
            Self::Worker { worker, .. } => format!("worker {worker}"),
            Self::Timeout { what, .. } | Self::Panicked { what, .. } => what.clone(),
        }
    }
}

/// Why a reload was refused. In every case nothing was applied: the current
/// generation keeps serving and no generation id was used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The new configuration changes keys that need a restart.
    #[error(
        "these keys need a restart to change: {}; `kiln restart` (POST /admin/restart, SIGUSR2) applies them without dropping a request",
        keys.join(", ")
    )]
    RestartRequired {
        /// The key paths, in [`RESTART_KEYS`](crate::config::RESTART_KEYS) order.
        keys: Vec<&'static str>,
    },
    /// The change sets a key whose value something outside the file
    /// decides: an environment variable (`KILN__APP__GREETING` for
    /// `app.greeting`, `RUST_LOG` for `log.level`).
    #[error(
        "{key} is set by the environment variable {variable}, which overrides the file: the change would not apply; change {variable} instead (a restart), or unset it"
    )]
    Overridden {
        /// The key path.
        key: String,
        /// The environment variable's name.
        variable: String,
    },
    /// The change sets `log.level`, but the process's log subscriber is not
    /// kiln's ([`logging::init`](crate::logging::init) was not called), so
    /// kiln cannot apply it.
    #[error(
        "log.level cannot change here: this process's log subscriber is not kiln's (kiln::logging::init was not called), so the change would not apply"
    )]
    LogNotManaged,
    /// The stored configuration (the file on disk) changed since the current
    /// generation was loaded, and the operation (a patch, a rollback) would
    /// write over that unapplied edit or carry it along.
    #[error(
        "{origin} changed since generation {generation} was loaded: reload first (POST /admin/reload) or discard the edit"
    )]
    Drifted {
        /// Where the configuration is stored, as its source describes it
        /// (the file's path; the same as [`Status::source`](crate::Status::source)).
        origin: String,
        /// The current generation, whose text the file no longer holds.
        generation: u64,
    },
    /// The new generation could not be built or warmed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The server is shutting down.
    #[error("the server is draining; reloads are refused")]
    Draining,
    /// `If-Match` named an older generation than the current one.
    #[error(
        "the configuration changed since that ETag: the current generation is {current}; GET /admin/config and patch again"
    )]
    Stale {
        /// The current generation.
        current: u64,
    },
    /// The merge patch cannot be applied to the source file.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// The fleet store is unreachable, or the fleet moved on since the
    /// version the change started from.
    #[error(transparent)]
    Fleet(#[from] crate::FleetError),
    /// There is no earlier configuration to roll back to.
    #[error("nothing to roll back to: no reload has replaced the first configuration yet")]
    NoPrevious,
    /// The new configuration was valid and warm but could not be stored
    /// (written to its file), so it was not applied.
    #[error("cannot write {origin}: {source}; nothing was applied")]
    Persist {
        /// Where the configuration is stored, as its source describes it
        /// (the file's path).
        origin: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ReloadError {
    /// The HTTP status that answers this refusal, the same wherever it is
    /// answered (kiln's admin API, an embedder's own route): 422 for an
    /// invalid configuration or patch, 409 for a conflict with the running
    /// server (keys that need a restart, a key the environment overrides, a
    /// log level kiln does not manage, a file edited since it was loaded,
    /// nothing to roll back to), 412 for a
    /// stale `If-Match` (or fleet version), 503 when a generation could not
    /// be built, the server is draining or the fleet store is unreachable,
    /// 500 when the file could not be written.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::Patch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RestartRequired { .. }
            | Self::Overridden { .. }
            | Self::LogNotManaged
            | Self::Drifted { .. }
            | Self::NoPrevious
            | Self::Fleet(crate::FleetError::NothingToCanary { .. }) => StatusCode::CONFLICT,
            Self::Stale { .. } | Self::Fleet(crate::FleetError::Stale { .. }) => {
                StatusCode::PRECONDITION_FAILED
            }
            Self::Fleet(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Persist { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Build(_) | Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// This refusal as an HTTP answer, naming `generation`: the generation
    /// that keeps serving (`kiln.current().id()`).
    ///
    /// ```
    /// # async fn hook<A: kiln::App>(kiln: kiln::Kiln<A>) -> axum::response::Response {
    /// use axum::response::IntoResponse as _;
    /// match kiln.reload(kiln::Trigger::Api).await {
    ///     Ok(outcome) => axum::Json(outcome).into_response(),
    ///     Err(e) => e.at(kiln.current().id()).into_response(),
    /// }
    /// # }
    /// ```
    pub fn at(&self, generation: u64) -> Refusal {
        let mut body = ErrorBody::new(ErrorChain(self).to_string(), generation);
        match self {
            Self::Invalid(config) => body.key = config.key().map(str::to_owned),
            Self::RestartRequired { keys } => body.keys = Some(keys.clone()),
            Self::Overridden { key, variable } => {
                body.key = Some(key.clone());
                body.variable = Some(variable.clone());
            }
            Self::Build(build) => body.resource = Some(build.resource()),
            _ => {}
        }
        Refusal {
            status: self.status(),
            body,
        }
    }
}

/// An error answer of the admin API (and of an embedder's route that
/// answers a [`ReloadError`]): a status and the JSON body
/// `{"error", "generation", ...}` that every admin error has. Made by
/// [`ReloadError::at`].
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    body: ErrorBody,
}

impl Refusal {
    /// A refusal with `status`, saying `error` and naming `generation`.
    pub(crate) fn new(status: StatusCode, error: impl Into<String>, generation: u64) -> Self {
        Self {
            status,
            body: ErrorBody::new(error.into(), generation),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// With a failed restart's new process's last log lines.
    pub(crate) fn with_log(mut self, log: Vec<String>) -> Self {
        self.body.log = Some(log);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The body of every error the admin API answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    /// What went wrong and what to do, with its causes.
    error: String,
    /// The generation that keeps serving: nothing was applied.
    generation: u64,
    /// The configuration key at fault (an invalid configuration, a key the
    /// environment overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The keys that need a restart to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<&'static str>>,
    /// What could not be built (`main`, `app`, `worker 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    /// The environment variable that overrides `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    variable: Option<String>,
    /// A failed restart's new process's last log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<Vec<String>>,
}

impl ErrorBody {
    fn new(error: String, generation: u64) -> Self {
        Self {
            error,
            generation,
            key: None,
            keys: None,
            resource: None,
            variable: None,
            log: None,
        }
    }
}

/// Runs `build` (application code: `App::prepare`, a resource factory) and
/// turns a panic in it into [`BuildError::Panicked`] naming `what`, so that
/// a panicking build refuses a reload or start-up instead of ending the
/// task that runs it.
pub(crate) async fn catch_panic<T>(
    what: impl FnOnce() -> String,
    build: impl std::future::Future<Output = Result<T, BuildError>>,
) -> Result<T, BuildError> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(build)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(panicked(what(), panic)))
}

/// [`BuildError::Panicked`] from a caught panic's payload.
pub(crate) fn panicked(what: String, panic: Box<dyn std::any::Any + Send>) -> BuildError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    tracing::error!(%what, %message, "Panicked while building a generation; nothing was applied");
    BuildError::Panicked { what, message }
}
