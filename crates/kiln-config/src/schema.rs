use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ByteSize, ConnString, FleetConfig, Invalid, Secret};

/// The application's own configuration section, `[app]`.
///
/// kiln deserializes it (unknown keys are the application's choice: add
/// `#[serde(deny_unknown_fields)]`), validates it with [`validate`](Self::validate)
/// and compares generations of it to report what changed.
pub trait AppConfig:
    DeserializeOwned + Serialize + Clone + Debug + Default + Send + Sync + 'static
{
    /// Checks values that are well-typed but may be unacceptable. Paths are
    /// relative to the `app` section.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

impl AppConfig for () {}

/// The whole configuration document.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound(deserialize = "A: AppConfig"))]
#[non_exhaustive]
pub struct Config<A> {
    /// `[server]`: the main listener and the worker pool.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[admin]`: the admin listener and its token.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[pools.NAME]`: named connection pools.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// `[resources.NAME]`: sections of the application's own resources,
    /// typed and validated by the resource registered under that name.
    #[serde(default)]
    pub resources: BTreeMap<String, serde_json::Value>,
    /// `[reload]`: file watching and history.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// `[log]`: level and format of the log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[app]`: the application's own section.
    #[serde(default)]
    pub app: A,
    /// `[fleet]`: follow a fleet's shared document from a store. Absent:
    /// the file alone is the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
}

/// The one table of restart-only keys: a reload that changes one of them
/// (or anything under it) is refused, naming it. Every other key is live:
/// a reload applies it. Paths are compared on the effective configuration
/// (defaults filled), so a key removed from the file that falls back to the
/// value it already had is no change.
pub const RESTART_KEYS: &[&str] = &[
    "server.listen",
    "server.workers",
    "server.reuse_port",
    "server.header_read_timeout",
    "server.max_header_bytes",
    "server.http2",
    "admin.listen",
    // The log's format is fixed when its subscriber is installed.
    "log.format",
    // The store, its connections and the instance's name are opened once.
    "fleet",
];

impl<A: AppConfig> Config<A> {
    /// Checks every value kiln and the application can check without
    /// connecting to anything; the first fault found is returned.
    pub fn validate(&self) -> Result<(), Invalid> {
        let server = &self.server;
        for (key, value) in [
            ("server.warm_timeout", server.warm_timeout),
            ("server.restart_timeout", server.restart_timeout),
        ] {
            if value.is_zero() {
                return Err(Invalid::new(key, "a duration > 0 such as \"30s\"", "0s"));
            }
        }
        for (i, path) in server.warm_requests.iter().enumerate() {
            if !path.starts_with('/') {
                return Err(Invalid::new(
                    format!("server.warm_requests[{i}]"),
                    "a path starting with '/'",
                    format!("{path:?}"),
                ));
            }
        }
        if server.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Invalid::new(
                "server.max_header_bytes",
                format!("a size ≥ {MIN_HEADER_BYTES} (hyper's smallest read buffer)"),
                server.max_header_bytes,
            ));
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            return Err(Invalid::new(
                "admin.token",
                format!(
                    "a token (e.g. from KILN__ADMIN__TOKEN) because admin.listen {} is not a loopback address",
                    self.admin.listen
                ),
                "none",
            ));
        }
        self.admin.validate()?;
        if let Some(fleet) = &self.fleet {
            fleet.validate().map_err(|e| e.under("fleet"))?;
        }
        if self.reload.history == 0 {
            return Err(Invalid::new("reload.history", "an integer ≥ 1", 0));
        }
        for (name, pool) in &self.pools {
            pool.validate()
                .map_err(|e| e.under(&format!("pools.{name}")))?;
        }
        self.app.validate().map_err(|e| e.under("app"))
    }

    /// The [`RESTART_KEYS`] whose effective values differ in `next`.
    pub fn restart_required(&self, next: &Self) -> Vec<&'static str> {
        let effective =
            |config: &Self| serde_json::to_value(config).expect("a config serializes to JSON");
        let changed = crate::diff(&effective(self), &effective(next));
        RESTART_KEYS
            .iter()
            .copied()
            .filter(|key| changed.iter().any(|path| crate::diff::is_under(path, key)))
            .collect()
    }
}

/// `[server]`: the main listener and the worker pool.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address of the main listener. Restart-only.
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per core. Restart-only.
    pub workers: usize,
    /// One `SO_REUSEPORT` listener per worker (the kernel spreads new
    /// connections) instead of one listener all workers accept on.
    /// Restart-only.
    pub reuse_port: bool,
    /// How long start-up (and each reload's warm-up) may take.
    #[serde(with = "humantime_serde")]
    pub warm_timeout: Duration,
    /// How long the whole drain after SIGTERM may take: in-flight requests,
    /// blocking work and the admin listener; whatever is left then is cut.
    /// The current generation's value applies.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long, after SIGTERM, `/readyz` answers 503 while the listeners
    /// still accept and serve, so that load balancers and Kubernetes
    /// endpoints stop sending first (the preStop pattern). Not counted in
    /// `shutdown_grace`.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How long an HTTP/1 connection may wait for a request head: from its
    /// opening (a client that sends nothing) and from the end of each
    /// response to the end of the next head, so also how long a keep-alive
    /// connection may sit idle between requests. The connection is closed
    /// between this and 9/8 of it (each worker checks its connections every
    /// eighth of it). Requests in flight, upgraded connections (WebSockets)
    /// and HTTP/2 connections are never cut by it. `0s` turns the limit off
    /// (behind a proxy that enforces its own). Restart-only.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Paths each worker serves in-process before the socket is bound (and
    /// before each reload's swap). None by default: list the paths that pay
    /// first-use costs (a route that queries a pool), which the app must
    /// answer with a 2xx or 3xx.
    pub warm_requests: Vec<String>,
    /// The largest request body a handler may read: a larger declared
    /// `Content-Length` is answered `413` before the handler runs, and a
    /// body that grows past it fails to read (axum's extractors answer
    /// `413`). Reloadable.
    pub max_body: ByteSize,
    /// The largest HTTP/1 request head (request line and headers) and
    /// HTTP/2 header list; larger ones are answered `431`. At least 8KiB.
    /// Restart-only.
    pub max_header_bytes: ByteSize,
    /// How long a handler may take to produce its response head before the
    /// request is answered `503`; `0s` (the default) turns it off: it costs
    /// a timer per request. Reloadable.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests one worker runs at once; past it, new requests are answered
    /// `503` with `Retry-After` at once (load shedding) rather than queued.
    /// `0` (the default) is no limit. Reloadable.
    pub max_concurrent: usize,
    /// Serve HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on the same
    /// port. Restart-only.
    pub http2: bool,
    /// How long a restart's new process may take, from its start to serving
    /// on the listeners it took over (its whole warm-up included); past it,
    /// it is killed and the old process keeps serving. Reloadable.
    #[serde(with = "humantime_serde")]
    pub restart_timeout: Duration,
    /// Count every request by method, matched route and status class, and
    /// time it, for `GET /admin/metrics`. On by default; `false` saves a few
    /// hundred instructions per request (`BENCHMARKS.md`). Reloadable.
    pub request_metrics: bool,
}

/// The smallest `server.max_header_bytes`: hyper's HTTP/1 read buffer cannot
/// be smaller.
pub const MIN_HEADER_BYTES: ByteSize = ByteSize::kib(8);

impl ServerConfig {
    /// The header-read limit to enforce: `None` when `header_read_timeout`
    /// is `0s` (off).
    pub fn header_read_limit(&self) -> Option<Duration> {
        Some(self.header_read_timeout).filter(|limit| !limit.is_zero())
    }

    /// The number of worker threads: `workers`, or one per core when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            reuse_port: false,
            warm_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            header_read_timeout: Duration::from_secs(30),
            warm_requests: Vec::new(),
            max_body: ByteSize::mib(2),
            max_header_bytes: ByteSize::kib(64),
            request_timeout: Duration::ZERO,
            max_concurrent: 0,
            http2: true,
            restart_timeout: Duration::from_secs(120),
            request_metrics: true,
        }
    }
}

/// `[admin]`: the admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Address of the admin listener. Restart-only.
    pub listen: SocketAddr,
    /// Bearer token every admin route requires, when set.
    pub token: Option<Secret>,
    /// Web origins (`https://ops.example.com`) whose pages may call the admin
    /// API; a request carrying any other `Origin` is refused with 403.
    pub allowed_origins: Vec<String>,
    /// Host names or IPs (without port; IPv6 in brackets) the admin API
    /// answers to besides its own
    /// address, `localhost` and loopback IPs; any other `Host` is refused
    /// with 403 (DNS rebinding). On a non-loopback `admin.listen`, where a
    /// token is required, an empty list means any host.
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl AdminConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if !host.is_some_and(|host| !host.is_empty() && !host.contains(['/', '?', '#', ' '])) {
                return Err(Invalid::new(
                    format!("admin.allowed_origins[{i}]"),
                    "an origin such as \"https://ops.example.com\" (scheme and host, optional port, no path)",
                    format!("{origin:?}"),
                ));
            }
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let bracketed = host.starts_with('[') && host.ends_with(']');
            if host.is_empty()
                || host.contains(['/', ' ', '@'])
                || (host.contains(':') && !bracketed)
            {
                return Err(Invalid::new(
                    format!("admin.allowed_hosts[{i}]"),
                    "a host name such as \"kiln-admin.internal\" or an IP (IPv6 in brackets), without scheme, port or path",
                    format!("{host:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// `[pools.NAME]`: one connection pool.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The database behind the pool.
    pub kind: PoolKind,
    /// SQLite: a file path (relative to the config file's folder);
    /// PostgreSQL: a connection URL or `key=value` string.
    pub url: ConnString,
    /// Most connections the pool holds.
    #[serde(default = "PoolConfig::default_max_size")]
    pub max_size: usize,
    /// Connections opened and pinged before the pool is published;
    /// defaults to `max_size`.
    #[serde(default)]
    pub warm: Option<usize>,
    /// How long a request waits for a free connection, opening one
    /// included: past it, the checkout fails (the demo answers 503).
    #[serde(default = "PoolConfig::default_wait_timeout", with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// PostgreSQL only: the server cancels any statement that runs longer
    /// (`statement_timeout`, set on every connection). Unset: no limit.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub statement_timeout: Option<Duration>,
}

impl PoolConfig {
    /// A pool of `kind` at `url` with every other key at its default, as a
    /// `[pools.NAME]` section with only `kind` and `url` reads (for code that
    /// builds a pool without a file; set the public fields to change the
    /// rest).
    pub fn new(kind: PoolKind, url: impl Into<ConnString>) -> Self {
        Self {
            kind,
            url: url.into(),
            max_size: Self::default_max_size(),
            warm: None,
            wait_timeout: Self::default_wait_timeout(),
            statement_timeout: None,
        }
    }

    fn default_max_size() -> usize {
        8
    }

    fn default_wait_timeout() -> Duration {
        Duration::from_secs(2)
    }

    /// Connections to open before publishing: `warm`, or `max_size`.
    pub fn warm_count(&self) -> usize {
        self.warm.unwrap_or(self.max_size)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.max_size == 0 {
            return Err(Invalid::new("max_size", "an integer ≥ 1", 0));
        }
        if self.warm_count() > self.max_size {
            return Err(Invalid::new(
                "warm",
                format!("an integer ≤ max_size ({})", self.max_size),
                self.warm_count(),
            ));
        }
        if self.wait_timeout.is_zero() {
            return Err(Invalid::new(
                "wait_timeout",
                "a duration > 0 such as \"2s\"",
                "0s",
            ));
        }
        if self.url.expose().trim().is_empty() {
            return Err(Invalid::new("url", "a non-empty connection string", "\"\""));
        }
        if let Some(timeout) = self.statement_timeout {
            if timeout.as_millis() == 0 {
                return Err(Invalid::new(
                    "statement_timeout",
                    "a duration of at least 1ms such as \"30s\", or no key for no limit",
                    humantime::format_duration(timeout),
                ));
            }
            if self.kind != PoolKind::Postgres {
                return Err(Invalid::new(
                    "statement_timeout",
                    "no statement_timeout: it applies to kind = \"postgres\" only",
                    humantime::format_duration(timeout),
                ));
            }
        }
        Ok(())
    }
}

/// The database behind a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// SQLite through deadpool-sqlite (rusqlite, bundled).
    Sqlite,
    /// PostgreSQL through deadpool-postgres.
    Postgres,
}

/// `[reload]`: how changes to the source are noticed and remembered.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ReloadConfig {
    /// Reload when the configuration file changes.
    pub watch: bool,
    /// How long the file must stay quiet before a watched change is applied.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// How many reload attempts `GET /admin/history` remembers.
    pub history: usize,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            debounce: Duration::from_millis(250),
            history: 20,
        }
    }
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// `[log]`: what the log shows and how.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogConfig {
    /// The least severe level shown. Live when kiln installed the log
    /// subscriber (`kiln::logging::init`) and `RUST_LOG` is unset; a reload
    /// that changes it otherwise is refused, since it would not apply.
    pub level: LogLevel,
    /// Human-readable or one JSON object per line. Restart-only.
    pub format: LogFormat,
    /// One line per request (target `kiln::access`, at `info` whatever
    /// `level` says): method, matched route, status, duration, body bytes,
    /// generation and request id. With it on, every response carries
    /// `X-Request-Id`: the request's own when it is 1 to 128 visible ASCII
    /// characters, else a new one (also set on the request, for handlers).
    /// Off by default. Reloadable.
    pub access: bool,
}

/// A log level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level's name, as `tracing` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_restart_key_names_a_key_of_the_config() {
        let config = serde_json::to_value(Config::<()>::default_for_tests()).unwrap();
        for key in RESTART_KEYS {
            let found = key
                .split('.')
                .try_fold(&config, |value, part| value.get(part));
            assert!(found.is_some(), "{key} is not a key of the config");
        }
    }

    #[test]
    fn restart_required_names_changed_restart_keys_only() {
        let old = Config::<()>::default_for_tests();
        let mut new = old.clone();
        new.server.warm_timeout = Duration::from_secs(1);
        new.server.shutdown_grace = Duration::from_secs(1);
        new.log.level = LogLevel::Debug;
        assert!(old.restart_required(&new).is_empty());
        new.server.workers = 3;
        new.admin.listen = SocketAddr::from(([127, 0, 0, 1], 1));
        new.log.format = LogFormat::Json;
        assert_eq!(
            old.restart_required(&new),
            ["server.workers", "admin.listen", "log.format"]
        );
    }

    impl<A: Default> Config<A> {
        fn default_for_tests() -> Self {
            Self {
                server: ServerConfig::default(),
                admin: AdminConfig::default(),
                pools: BTreeMap::new(),
                resources: BTreeMap::new(),
                reload: ReloadConfig::default(),
                log: LogConfig::default(),
                app: A::default(),
                fleet: Some(FleetConfig::new("postgres://store/fleet")),
            }
        }
    }
}
