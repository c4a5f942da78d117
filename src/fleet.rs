//! `kiln fleet status` and `kiln fleet push FILE`: a fleet driven through
//! one instance's admin API, so that the operator's machine needs no
//! database credentials.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::Method;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// What `kiln fleet` does.
#[derive(Subcommand)]
pub(crate) enum FleetCommand {
    /// Print the fleet: the desired version, the store's state, and each
    /// instance's state (in-sync, applying, rejected with its error, stale,
    /// missing).
    Status {
        #[command(flatten)]
        admin: Admin,
    },
    /// Publish FILE (a TOML document of the shared sections) as the fleet's
    /// next version through the instance's admin API, wait for every live
    /// instance to apply or reject it, and print the outcome. Exits 0 when
    /// every live instance applied it, 1 when one rejected it (or the
    /// publish was refused), 2 when some had not answered by
    /// fleet.ack_timeout.
    Push {
        /// The document to publish.
        file: PathBuf,
        /// Why, kept with the version.
        #[arg(short, long)]
        message: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Where the instance's admin API is.
#[derive(Args)]
pub(crate) struct Admin {
    /// The admin API's address.
    #[arg(long, env = "KILN_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// The admin token, when the server has one.
    #[arg(long, env = "KILN__ADMIN__TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Admin {
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build a runtime")?;
        let (status, body) = runtime.block_on(kiln::client::request_json(
            method,
            &self.admin,
            path,
            self.token.as_deref(),
            body,
            self.timeout,
        ))?;
        Ok((status.as_u16(), body))
    }
}

pub(crate) fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Status { admin } => status(&admin),
        FleetCommand::Push {
            file,
            message,
            admin,
        } => push(&file, message, &admin),
    }
}

fn status(admin: &Admin) -> anyhow::Result<ExitCode> {
    let (status, view) = admin.call(Method::GET, "/admin/fleet", None)?;
    if status != 200 {
        return refused("GET /admin/fleet", status, &view);
    }
    let store = &view["store"];
    println!(
        "fleet {} (asked {}); store {} {} since {}",
        text(&view["fleet"]),
        text(&view["instance"]),
        text(&store["url"]),
        text(&store["state"]),
        text(&store["since"])
    );
    match view["desired"].as_object() {
        Some(desired) => println!(
            "desired version {} by {} at {}: {}",
            desired["version"],
            text(&desired["author"]),
            text(&desired["created_at"]),
            text(&desired["message"])
        ),
        None => println!("no version published yet"),
    }
    let Some(rows) = view["instances"].as_array() else {
        println!("instances unknown while the store is unreachable");
        return Ok(ExitCode::SUCCESS);
    };
    let header = [
        "INSTANCE",
        "HOST",
        "APPLIED",
        "STATE",
        "GENERATION",
        "HEARTBEAT",
    ];
    println!("{}", columns(header.map(str::to_owned)));
    for row in rows {
        let cells = [
            "instance",
            "host",
            "applied",
            "state",
            "generation",
            "heartbeat_at",
        ];
        println!("{}", columns(cells.map(|cell| text(&row[cell]))));
        if let Some(error) = row["error"].as_str() {
            println!("    {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn push(file: &Path, message: Option<String>, admin: &Admin) -> anyhow::Result<ExitCode> {
    let document =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let message = message.unwrap_or_else(|| format!("kiln fleet push {}", file.display()));
    let body = json!({"document": document, "message": message});
    let (status, answer) =
        admin.call(Method::POST, "/admin/fleet/publish?wait=all", Some(&body))?;
    if status != 200 {
        return refused("the publish", status, &answer);
    }
    let rows = answer["instances"].as_array().cloned().unwrap_or_default();
    let live: Vec<&Value> = rows.iter().filter(|r| r["state"] != "missing").collect();
    let count = |state: &str| live.iter().filter(|r| r["state"] == state).count();
    let (applied, rejected) = (count("in-sync"), count("rejected"));
    let mut line = format!(
        "version {}: {applied}/{} applied",
        answer["fleet_version"],
        live.len()
    );
    if rejected > 0 {
        line.push_str(&format!(", {rejected} rejected"));
    }
    let waiting = live.len() - applied - rejected;
    if waiting > 0 {
        line.push_str(&format!(", {waiting} not answered"));
    }
    println!("{line}");
    for row in live.iter().filter(|r| r["state"] == "rejected") {
        println!("  {}: {}", text(&row["instance"]), text(&row["error"]));
    }
    Ok(match (rejected, waiting) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    })
}

/// One line of the status table.
fn columns([instance, host, applied, state, generation, heartbeat]: [String; 6]) -> String {
    format!("{instance:<24} {host:<16} {applied:>8} {state:<9} {generation:>10}  {heartbeat}")
}

/// Prints a refused request's answer; exit 1.
fn refused(what: &str, status: u16, answer: &Value) -> anyhow::Result<ExitCode> {
    eprintln!(
        "error: {what} was refused ({status}): {}",
        text(&answer["error"])
    );
    Ok(ExitCode::FAILURE)
}

/// A JSON value as plain text (strings unquoted, `null` as `-`).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}
