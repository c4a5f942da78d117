//! A log subscriber whose level a reload can change.
//!
//! [`init`] installs, for the whole process, a `tracing` subscriber that
//! writes to stderr at `log.level` in `log.format`, with the level filter
//! behind `tracing_subscriber::reload` so that a reload changing `log.level`
//! applies it. The format cannot change without a restart (it is a
//! restart-only key).
//!
//! An application that installs its own subscriber instead keeps it: kiln
//! then cannot apply `log.level`, and a reload that changes it is refused
//! ([`ReloadError::LogNotManaged`]) rather than answered as applied. With
//! `RUST_LOG` set, `RUST_LOG` decides the filter and a reload changing
//! `log.level` is refused too ([`ReloadError::Overridden`]).
//!
//! # Examples
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = kiln::load_config::<()>("deploy.toml".as_ref())?;
//! kiln::logging::init(&loaded.config.log)?;
//! # Ok(())
//! # }
//! ```
//!
//! Cost: every event and span that passes the callsite filter takes the
//! filter's read lock (tracing#1632); events disabled at their callsite,
//! which is every event on kiln's request path at the usual levels, do not.

use std::io::IsTerminal;
use std::sync::OnceLock;

use kiln_config::{LogConfig, LogFormat, LogLevel};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::ReloadError;

/// The variable that overrides `log.level` when set.
const RUST_LOG: &str = "RUST_LOG";

/// The subscriber [`init`] installed.
static INSTALLED: OnceLock<Installed> = OnceLock::new();

struct Installed {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` chose the filter: the file's level does not apply.
    from_env: bool,
}

/// Why [`init`] could not install kiln's subscriber.
#[derive(Debug, thiserror::Error)]
#[error("cannot install kiln's log subscriber: {0}")]
pub struct InitError(#[source] tracing_subscriber::util::TryInitError);

/// Installs kiln's log subscriber for the process: stderr, at `log.level`
/// (or as `RUST_LOG` says, when set), as text or JSON lines per
/// `log.format`. Reloads then apply changes to `log.level`.
///
/// # Errors
///
/// When a global subscriber is already installed.
pub fn init(log: &LogConfig) -> Result<(), InitError> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let is_from_env = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| level_filter(log.level)));
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let text = (log.format == LogFormat::Pretty).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(stderr_is_terminal)
    });
    let json = (log.format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .map_err(InitError)?;
    // try_init succeeds once per process, so this is the first set.
    let _ = INSTALLED.set(Installed {
        filter: handle,
        from_env: is_from_env,
    });
    Ok(())
}

/// The filter for `level`. PostgreSQL NOTICEs ("relation already exists,
/// skipping") are not news; the access log (`log.access`, off by default)
/// shows whatever the level, since turning it on asks for it.
fn level_filter(level: LogLevel) -> EnvFilter {
    EnvFilter::new(format!(
        "{},tokio_postgres=warn,kiln::access=info",
        level.as_str()
    ))
}

/// Whether a reload may change `log.level`: only when kiln's subscriber is
/// installed and `RUST_LOG` does not decide the filter.
pub(crate) fn check_level_change() -> Result<(), ReloadError> {
    match INSTALLED.get() {
        None => Err(ReloadError::LogNotManaged),
        Some(installed) if installed.from_env => Err(ReloadError::Overridden {
            key: "log.level".to_owned(),
            variable: RUST_LOG.to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

/// Applies `level` (once [`check_level_change`] allowed it).
pub(crate) fn set_level(level: LogLevel) {
    if let Some(installed) = INSTALLED.get()
        && let Err(e) = installed.filter.reload(level_filter(level))
    {
        tracing::error!(error = %e, "Cannot change the log level");
    }
}
