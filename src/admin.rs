//! The commands that drive a running server through its admin API
//! (`kiln reload`, `restart`, `status`, `history`, `config`, `log-level`): one set of
//! options ([`AdminArgs`]), one request helper ([`run`]), and a table
//! printer for the answers. A new command is a [`Call`] variant.

use std::process::ExitCode;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use clap::Args;
use kiln::client::ClientError;
use serde_json::{Value, json};

/// What `--help` of every admin command says about its exit status.
pub(crate) const EXIT_STATUS: &str = "\
Exit status:
  0  done
  1  the server answered with a refusal or an error (printed; nothing was changed)
  2  usage error (a bad option or admin URL)
  3  no answer: nothing listens at --admin, or no answer within --timeout";

/// Where a running server's admin API is, and its token: every command
/// that talks to one takes these (`kiln fleet …` too).
#[derive(Args, Debug)]
pub(crate) struct Endpoint {
    /// The admin API's address: `http://HOST:PORT` or `HOST:PORT` (IPv6 as
    /// `[::1]:9090`).
    #[arg(long, env = "KILN_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// The admin token, when the server has one (`admin.token`).
    #[arg(long, env = "KILN__ADMIN__TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Endpoint {
    /// One request to the admin API, its answer as JSON; blocks.
    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(kiln::client::request_json(
            method,
            &self.admin,
            path,
            self.token.as_deref(),
            body,
            timeout,
        ))
    }
}

/// The options every admin command takes.
#[derive(Args, Debug)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// How long to wait for the answer (default 120s for reload, which
    /// answers once its warm-up is done, 180s for restart; 10s otherwise).
    /// Connecting may take at most 5s of it.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the admin API's JSON answer as it is, instead of a summary.
    #[arg(long)]
    json: bool,
}

/// One admin API call a command makes.
#[derive(Debug)]
pub(crate) enum Call {
    /// `POST /admin/reload`.
    Reload,
    /// `POST /admin/restart`.
    Restart,
    /// `GET /admin/status`.
    Status,
    /// `GET /admin/history`.
    History,
    /// `GET /admin/config`.
    Config,
    /// `GET /admin/log-level`, or `PUT` with these directives.
    LogLevel(Option<String>),
}

impl Call {
    fn method(&self) -> Method {
        match self {
            Self::Reload | Self::Restart => Method::POST,
            Self::LogLevel(Some(_)) => Method::PUT,
            Self::Status | Self::History | Self::Config | Self::LogLevel(None) => Method::GET,
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Self::Reload => "/admin/reload",
            Self::Restart => "/admin/restart",
            Self::Status => "/admin/status",
            Self::History => "/admin/history",
            Self::Config => "/admin/config",
            Self::LogLevel(_) => "/admin/log-level",
        }
    }

    fn body(&self) -> Option<Value> {
        match self {
            Self::LogLevel(Some(directives)) => Some(json!({ "filter": directives })),
            _ => None,
        }
    }

    fn default_timeout(&self) -> Duration {
        match self {
            Self::Reload => Duration::from_secs(120),
            // Above the server's server.restart_timeout (default 120s).
            Self::Restart => Duration::from_secs(180),
            _ => Duration::from_secs(10),
        }
    }

    /// What a refusal leaves as it was, for the error line.
    fn unchanged(&self) -> &'static str {
        match self {
            Self::Reload => "; the running configuration is unchanged",
            Self::Restart => "; the old process keeps serving",
            _ => "",
        }
    }

    /// The answer for a person.
    fn render(&self, answer: &Value) -> String {
        match self {
            Self::Reload => reloaded(answer),
            Self::Restart => format!(
                "restarted: pid {} -> {}, generation {}, new process serving {} ms after its start, {} ms after the request\n",
                cell(&answer["old_pid"]),
                cell(&answer["new_pid"]),
                cell(&answer["generation"]),
                cell(&answer["warm_ms"]),
                cell(&answer["took_ms"])
            ),
            Self::History => list("history", answer),
            Self::Config => {
                let mut rows = Vec::new();
                flatten("", answer, &mut rows);
                Table::new(["KEY", "VALUE"], rows).to_string()
            }
            Self::Status | Self::LogLevel(_) => fields(answer),
        }
    }
}

/// Makes `call` with `args`, prints the answer (or what went wrong and what
/// to do), and returns the exit status [`EXIT_STATUS`] describes.
pub(crate) fn run(args: &AdminArgs, call: &Call) -> ExitCode {
    match exchange(args, call) {
        Ok((status, answer)) if status.is_success() => {
            if args.json {
                println!("{}", pretty(&answer));
            } else {
                print!("{}", call.render(&answer));
            }
            ExitCode::SUCCESS
        }
        Ok((status, answer)) => {
            if args.json {
                println!("{}", pretty(&answer));
            }
            eprintln!("error: {}", refusal(args, call, status, &answer));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                ClientError::Url { .. } => 2,
                _ => 3,
            })
        }
    }
}

fn exchange(args: &AdminArgs, call: &Call) -> Result<(StatusCode, Value), ClientError> {
    args.endpoint.request(
        call.method(),
        call.path(),
        call.body().as_ref(),
        args.timeout.unwrap_or_else(|| call.default_timeout()),
    )
}

fn pretty(answer: &Value) -> String {
    serde_json::to_string_pretty(answer).expect("JSON values serialize")
}

/// The error line for a non-2xx answer: the server's message, and for the
/// answers a person can fix here, how.
fn refusal(args: &AdminArgs, call: &Call, status: StatusCode, answer: &Value) -> String {
    let what = format!("{} {}", call.method(), call.path());
    match status {
        StatusCode::UNAUTHORIZED if args.endpoint.token.is_some() => format!(
            "the admin API at {} refused the token ({status}): pass the server's admin.token with --token or KILN__ADMIN__TOKEN",
            args.endpoint.admin
        ),
        StatusCode::UNAUTHORIZED => format!(
            "the admin API at {} needs a token ({status}): pass the server's admin.token with --token or KILN__ADMIN__TOKEN",
            args.endpoint.admin
        ),
        StatusCode::TOO_MANY_REQUESTS => format!(
            "the admin API at {} refuses for now ({status}): too many failed authentications; wait a few seconds, and check the token (--token or KILN__ADMIN__TOKEN)",
            args.endpoint.admin
        ),
        StatusCode::NOT_FOUND => format!(
            "{what}: no such route at {} ({status}): is it a kiln admin API of this version (and --admin its address, without a path)?",
            args.endpoint.admin
        ),
        _ => {
            let error = answer["error"]
                .as_str()
                .map_or_else(|| answer.to_string(), str::to_owned);
            format!("{what} refused ({status}): {error}{}", call.unchanged())
        }
    }
}

/// `reloaded: generation 2 (was 1) in 35 ms`, then what changed.
fn reloaded(answer: &Value) -> String {
    let rows = ["changed", "rebuilt"]
        .into_iter()
        .map(|key| vec![format!("  {key}"), cell(&answer[key])])
        .collect();
    format!(
        "reloaded: generation {} (was {}) in {} ms\n{}",
        cell(&answer["generation"]),
        cell(&answer["previous"]),
        cell(&answer["took_ms"]),
        Table::headless(rows)
    )
}

/// Keys shown first, in this order (serde_json's maps are sorted by key);
/// the others follow alphabetically.
const FIRST: &[&str] = &[
    "id",
    "generation",
    "previous",
    "at",
    "trigger",
    "peer",
    "filter",
    "source",
    "loaded_at",
    "uptime_s",
    "draining",
    "kind",
    "size",
    "available",
    "waiting",
    "max_size",
    "health",
    "changed",
    "rebuilt",
    "error",
];

/// The members of `map` in display order.
fn ordered(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut members: Vec<_> = map.iter().collect();
    members.sort_by_key(|(key, _)| {
        FIRST
            .iter()
            .position(|first| first == key)
            .unwrap_or(FIRST.len())
    });
    members
}

/// An object as `key  value` lines, then a table for each member that is a
/// list of objects (`workers`) or a map of objects (`pools`); members that
/// are plain objects show as `key.member` lines. Fields a newer server adds
/// show up without a change here.
fn fields(answer: &Value) -> String {
    let Value::Object(members) = answer else {
        return format!("{}\n", cell(answer));
    };
    let mut lines = Vec::new();
    let mut tables = String::new();
    for (key, value) in ordered(members) {
        let rows: Vec<(Option<&String>, &Value)> = match value {
            Value::Array(items) if items.iter().any(Value::is_object) => {
                items.iter().map(|item| (None, item)).collect()
            }
            Value::Object(map) if !map.is_empty() && map.values().all(Value::is_object) => {
                map.iter().map(|(name, item)| (Some(name), item)).collect()
            }
            _ => {
                flatten(key, value, &mut lines);
                continue;
            }
        };
        tables += &format!("\n{}", table(key, &rows));
    }
    format!("{}{tables}", Table::headless(lines))
}

/// A list as a table, one column per key of its objects; the list's
/// `name` heads a first column when the rows are named (a map's keys).
fn list(name: &str, answer: &Value) -> String {
    match answer {
        Value::Array(items) if items.is_empty() => "(none)\n".to_owned(),
        Value::Array(items) => table(
            name,
            &items.iter().map(|item| (None, item)).collect::<Vec<_>>(),
        ),
        other => format!("{}\n", cell(other)),
    }
}

/// Rows of objects, each maybe named, as a table.
fn table(name: &str, rows: &[(Option<&String>, &Value)]) -> String {
    let mut keys = serde_json::Map::new();
    for (_, item) in rows {
        for (key, value) in item.as_object().into_iter().flatten() {
            keys.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    let columns: Vec<&String> = ordered(&keys).into_iter().map(|(key, _)| key).collect();
    let named = rows.iter().any(|(row, _)| row.is_some());
    let header = named
        .then(|| name.to_uppercase())
        .into_iter()
        .chain(columns.iter().map(|c| c.to_uppercase()));
    let rows = rows
        .iter()
        .map(|(row, item)| {
            row.cloned()
                .into_iter()
                .chain(columns.iter().map(|c| cell(&item[c.as_str()])))
                .collect()
        })
        .collect();
    Table::new(header, rows).to_string()
}

/// `prefix.key  value` rows for every leaf of `value` (arrays of plain
/// values are one leaf).
fn flatten(prefix: &str, value: &Value, rows: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(members) if !members.is_empty() => {
            for (key, value) in members {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, rows);
            }
        }
        _ => rows.push(vec![prefix.to_owned(), cell(value)]),
    }
}

/// One value in a cell: text as it is, `-` for nothing, lists joined.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) if !items.iter().any(|i| i.is_object() || i.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// Columns aligned with two spaces between them; the last one unpadded.
struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: impl IntoIterator<Item = impl Into<String>>, rows: Vec<Vec<String>>) -> Self {
        Self {
            header: Some(header.into_iter().map(Into::into).collect()),
            rows,
        }
    }

    fn headless(rows: Vec<Vec<String>>) -> Self {
        Self { header: None, rows }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|line| line.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                lines
                    .iter()
                    .filter_map(|line| line.get(i))
                    .map(|text| text.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in lines {
            let last = line.len().saturating_sub(1);
            for (i, text) in line.iter().enumerate() {
                if i == last {
                    writeln!(f, "{text}")?;
                } else {
                    write!(f, "{text:<width$}  ", width = widths[i])?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_fields_then_a_table_per_collection() {
        let status = json!({
            "generation": 3,
            "source": "/etc/kiln.toml",
            "workers": [{"id": 0, "generation": 3}, {"id": 1, "generation": 3}],
            "pools": {"main": {"kind": "sqlite", "size": 4, "last_error": null}},
            "fleet": {"connected": true},
        });
        assert_eq!(
            fields(&status),
            "generation       3\n\
             source           /etc/kiln.toml\n\
             fleet.connected  true\n\
             \n\
             POOLS  KIND    SIZE  LAST_ERROR\n\
             main   sqlite  4     -\n\
             \n\
             ID  GENERATION\n\
             0   3\n\
             1   3\n"
        );
    }

    #[test]
    fn config_flattens_to_key_paths() {
        let mut rows = Vec::new();
        flatten(
            "",
            &json!({"server": {"listen": "127.0.0.1:0", "warm_requests": ["/", "/a"]}, "pools": {}}),
            &mut rows,
        );
        assert_eq!(
            rows,
            [
                vec!["pools", "{}"],
                vec!["server.listen", "127.0.0.1:0"],
                vec!["server.warm_requests", "/, /a"],
            ]
        );
    }

    #[test]
    fn an_empty_history_says_so() {
        assert_eq!(list("history", &json!([])), "(none)\n");
    }
}
