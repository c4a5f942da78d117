//! Why start-up or a reload failed.

use std::time::Duration;

use kiln_config::{ConfigError, PatchError};
use kiln_resources::ResourceError;

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
    /// The operating system refused something else (a thread, a runtime).
    #[error("{what}: {source}")]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Why a generation could not be built: what was not ready and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A pool failed to build or warm.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The application's `prepare` failed.
    #[error("app: {0}")]
    App(String),
    /// A worker could not build or warm its app instance.
    #[error("worker {worker}: {message}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// What went wrong.
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

impl BuildError {
    /// The name of the resource at fault (`main`, `app`, `worker 1`).
    pub fn resource(&self) -> String {
        match self {
            Self::Resource(e) => e.resource.clone(),
            Self::App(_) => "app".to_owned(),
            Self::Worker { worker, .. } => format!("worker {worker}"),
            Self::Timeout { what, .. } => what.clone(),
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
    #[error("these keys need a restart to change: {}", .0.join(", "))]
    RestartRequired(Vec<&'static str>),
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
    /// There is no earlier configuration to roll back to.
    #[error("nothing to roll back to: no reload has replaced the first configuration yet")]
    NoPrevious,
    /// The new configuration was valid and warm but could not be written to
    /// its file, so it was not applied.
    #[error("cannot write {}: {source}; nothing was applied", file.display())]
    Persist {
        /// The source file.
        file: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
