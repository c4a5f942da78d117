//! A log subscriber whose level a reload can change.
//!
//! [`init`] installs, for the whole process, a `tracing` subscriber that
//! writes to stderr at `log.level` in `log.format`, with the level filter
//! behind `tracing_subscriber::reload` so that a reload changing `log.level`
//! applies it. The format cannot change without a restart (it is a
//! restart-only key).
//!
//! The admin API's `PUT /admin/log-level` replaces the filter with any
//! `EnvFilter` directive (`info,kiln=debug`) until the next reload that
//! changes `log.level`; a reload that leaves `log.level` alone keeps it.
//!
//! An application that installs its own subscriber instead keeps it: kiln
//! then cannot apply `log.level`, and a reload that changes it is refused
//! ([`ReloadError::LogNotManaged`]) rather than answered as applied;
//! `/admin/log-level` answers 409 saying why. With `RUST_LOG` set,
//! `RUST_LOG` decides the filter and a reload changing `log.level` is
//! refused too ([`ReloadError::Overridden`]); `PUT /admin/log-level` still
//! applies.
//!
//! With `log.format = "json"`, each line is one object whose event fields
//! are top-level keys (`{"timestamp", "level", "message", "trigger",
//! "generation", ..., "target", "span", "spans"}`), so that `jq
//! 'select(.trigger)'` or a log pipeline needs no parsing of the message.
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
//! Access lines (`log.access`) on kiln's workers are written in batches,
//! when a worker runs out of ready work, not one `write` per request; other
//! lines are written at once.
//!
//! Cost: every event and span that passes the callsite filter takes the
//! filter's read lock (tracing#1632); events disabled at their callsite,
//! which is every event on kiln's request path at the usual levels, do not.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use axum::http::StatusCode;
use kiln_config::{LogConfig, LogFormat, LogLevel};
use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::ReloadError;

mod fields;
mod output;

pub(crate) use output::{batch_this_thread, flush_thread};

/// The variable that overrides `log.level` when set.
const RUST_LOG: &str = "RUST_LOG";

/// The access log's target (as `observe` logs it).
pub(crate) const ACCESS_TARGET: &str = "kiln::access";

/// The longest filter `PUT /admin/log-level` takes (its schema's
/// `maxLength` says the same).
pub(crate) const MAX_FILTER_CHARS: usize = 1024;

/// The subscriber [`init`] installed.
static INSTALLED: OnceLock<Installed> = OnceLock::new();

struct Installed {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` chose the filter: the file's level does not apply.
    from_env: bool,
    /// The filter in force, held while it changes so that a `PUT` and a
    /// reload apply one after the other and this stays what is in force.
    current: Mutex<LogFilter>,
}

/// The log filter in force and where it came from: what `GET` and `PUT
/// /admin/log-level` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct LogFilter {
    /// The directives, in `tracing_subscriber::EnvFilter` syntax
    /// (`info,tokio_postgres=warn`).
    filter: String,
    /// Where the filter came from.
    source: FilterSource,
}

/// Where the filter in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FilterSource {
    /// `log.level` of the configuration.
    Config,
    /// The `RUST_LOG` environment variable, at start-up.
    Env,
    /// `PUT /admin/log-level`, until a reload changes `log.level`.
    Admin,
}

/// Why the log filter cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    /// The process's subscriber is not kiln's.
    #[error(
        "the log filter cannot be read or changed here: this process's log subscriber is not kiln's (kiln::logging::init was not called); change the embedding application's own filter instead"
    )]
    NotManaged,
    /// The directive does not parse.
    #[error(
        "invalid log filter {filter:?}: {source} (expected EnvFilter directives such as `debug` or `info,kiln=debug,tokio_postgres=warn`); the filter in force is unchanged"
    )]
    Invalid {
        /// The directive given.
        filter: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// Longer than anyone types: refused rather than stored and logged.
    #[error(
        "log filter of {length} characters: at most {MAX_FILTER_CHARS}; the filter in force is unchanged"
    )]
    TooLong {
        /// Its length.
        length: usize,
    },
    /// No directive at all.
    #[error(
        "empty log filter: send directives such as `debug` or `info,kiln=debug`; the filter in force is unchanged"
    )]
    Empty,
}

impl FilterError {
    /// 409 when kiln does not manage the subscriber, 400 for a bad filter.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotManaged => StatusCode::CONFLICT,
            Self::Invalid { .. } | Self::TooLong { .. } | Self::Empty => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why [`init`] could not install kiln's subscriber.
#[derive(Debug, thiserror::Error)]
#[error("cannot install kiln's log subscriber: {0}")]
pub struct InitError(#[source] tracing_subscriber::util::TryInitError);

/// Installs kiln's log subscriber for the process: stderr, at `log.level`
/// (or as `RUST_LOG` says, when set), as text or JSON lines per
/// `log.format`. Reloads then apply changes to `log.level`, and the admin
/// API's `/admin/log-level` reads and replaces the filter.
///
/// # Errors
///
/// When a global subscriber is already installed.
pub fn init(log: &LogConfig) -> Result<(), InitError> {
    // As EnvFilter::try_from_default_env: an unusable RUST_LOG is ignored.
    let from_env = std::env::var(RUST_LOG)
        .ok()
        .and_then(|text| Some((EnvFilter::try_new(&text).ok()?, text)));
    let is_from_env = from_env.is_some();
    let (filter, current) = match from_env {
        Some((filter, text)) => (
            filter,
            LogFilter {
                filter: text,
                source: FilterSource::Env,
            },
        ),
        None => level_filter(log.level),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let text = (log.format == LogFormat::Pretty).then(|| {
        fmt::layer()
            .fmt_fields(fields::Fields)
            .with_writer(output::Stderr)
            .with_timer(output::Timestamps)
            .with_ansi(stderr_is_terminal)
    });
    let json = (log.format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(output::Stderr)
            .with_timer(output::Timestamps)
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
        current: Mutex::new(current),
    });
    Ok(())
}

/// The filter for `level`, and its text. PostgreSQL NOTICEs ("relation
/// already exists, skipping") are not news; the access log shows whatever
/// the level (see [`with_access_log`]).
fn level_filter(level: LogLevel) -> (EnvFilter, LogFilter) {
    let text = with_access_log(&format!("{},tokio_postgres=warn", level.as_str()));
    (
        EnvFilter::new(&text),
        LogFilter {
            filter: text,
            source: FilterSource::Config,
        },
    )
}

impl Installed {
    fn get() -> Result<&'static Installed, FilterError> {
        INSTALLED.get().ok_or(FilterError::NotManaged)
    }

    fn current(&self) -> std::sync::MutexGuard<'_, LogFilter> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, filter: EnvFilter) {
        if let Err(e) = self.filter.reload(filter) {
            tracing::error!(error = %e, "Cannot change the log filter");
        }
    }
}

/// The filter in force.
pub(crate) fn current() -> Result<LogFilter, FilterError> {
    Ok(Installed::get()?.current().clone())
}

/// `directives` with the access log (`log.access`, off by default) at
/// info, unless they name its target: turning it on asks for it, whatever
/// the level.
fn with_access_log(directives: &str) -> String {
    if directives.contains(ACCESS_TARGET) {
        directives.to_owned()
    } else {
        format!("{directives},{ACCESS_TARGET}=info")
    }
}

/// Replaces the filter with `directives` (`PUT /admin/log-level` for
/// `peer`), once they parse; in force on every thread at once (the
/// callsites' interest is rebuilt), until a reload changes `log.level`.
pub(crate) fn set_filter(
    directives: &str,
    peer: Option<SocketAddr>,
) -> Result<LogFilter, FilterError> {
    let installed = Installed::get()?;
    let directives = directives.trim();
    if directives.is_empty() {
        return Err(FilterError::Empty);
    }
    let length = directives.chars().count();
    if length > MAX_FILTER_CHARS {
        return Err(FilterError::TooLong { length });
    }
    // Field values are matched literally, not as regexes (as linkerd does):
    // an operator's typo must not cost every event a regex.
    let applied = with_access_log(directives);
    let filter = EnvFilter::builder()
        .with_regex(false)
        .parse(&applied)
        .map_err(|source| FilterError::Invalid {
            filter: directives.to_owned(),
            source,
        })?;
    let mut current = installed.current();
    let previous = std::mem::replace(
        &mut *current,
        LogFilter {
            filter: applied,
            source: FilterSource::Admin,
        },
    );
    audited(
        || {
            tracing::info!(
                peer = peer.map(tracing::field::display),
                filter = current.filter,
                previous = previous.filter,
                "Log filter set"
            );
        },
        || installed.apply(filter),
    );
    Ok(current.clone())
}

/// Runs `change` (of the filter) and logs `audit` once, under whichever of
/// the filters before and after lets it through: turning logging down must
/// not hide who did it, nor turning it up.
fn audited(audit: impl Fn(), change: impl FnOnce()) {
    let before = tracing::enabled!(tracing::Level::INFO);
    if before {
        audit();
    }
    change();
    if !before {
        audit();
    }
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

/// Applies `level` (once [`check_level_change`] allowed it), replacing a
/// filter set through the admin API.
pub(crate) fn set_level(level: LogLevel) {
    let Ok(installed) = Installed::get() else {
        return;
    };
    let (filter, text) = level_filter(level);
    let mut current = installed.current();
    let previous = std::mem::replace(&mut *current, text);
    if previous.source != FilterSource::Admin {
        installed.apply(filter);
        return;
    }
    audited(
        || {
            tracing::info!(
                filter = current.filter,
                previous = previous.filter,
                "Log filter set through the admin API replaced: the reload changed log.level"
            );
        },
        || installed.apply(filter),
    );
}
