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

use crate::admin::Endpoint;

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
    /// next version through the instance's admin API, print progress while
    /// the instances apply it, then the outcome. Exits 0 when every live
    /// instance applied it, 1 when one rejected it (a canary halted, or the
    /// publish was refused), 2 when some had not answered by
    /// fleet.ack_timeout (or by --timeout).
    Push {
        /// The document to publish.
        file: PathBuf,
        /// Why, kept with the version.
        #[arg(short, long)]
        message: Option<String>,
        /// Publish to a cohort first: a count of live instances (2) or a
        /// percentage rounded up (10%); the others follow once every member
        /// applied it and --hold passed.
        #[arg(long)]
        canary: Option<String>,
        /// With --canary: how long the cohort must have applied it before
        /// every instance gets it (30s, 2m).
        #[arg(long, requires = "canary")]
        hold: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Where the instance's admin API is.
#[derive(Args)]
pub(crate) struct Admin {
    #[command(flatten)]
    endpoint: Endpoint,
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
        let (status, body) = self.endpoint.request(method, path, body, self.timeout)?;
        Ok((status.as_u16(), body))
    }
}

pub(crate) fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Status { admin } => status(&admin),
        FleetCommand::Push {
            file,
            message,
            canary,
            hold,
            admin,
        } => push(&file, message, canary, hold, &admin),
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
    if let Some(rollout) = view["rollout"].as_object() {
        let cohort: Vec<String> = rollout["cohort"]
            .as_array()
            .map(|c| c.iter().map(text).collect())
            .unwrap_or_default();
        let mut line = format!(
            "rollout of version {}: {} (canary {}: {}; hold {}; steward {})",
            rollout["version"],
            text(&rollout["phase"]),
            text(&rollout["canary"]),
            cohort.join(", "),
            text(&rollout["hold"]),
            text(&rollout["steward"])
        );
        if let Some(at) = rollout["promote_at"].as_str() {
            line.push_str(&format!("; promoted at {at}"));
        }
        if let Some(reason) = rollout["reason"].as_str() {
            line.push_str(&format!("; halted: {reason}"));
        }
        println!("{line}");
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

fn push(
    file: &Path,
    message: Option<String>,
    canary: Option<String>,
    hold: Option<String>,
    admin: &Admin,
) -> anyhow::Result<ExitCode> {
    let document =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let message = message.unwrap_or_else(|| format!("kiln fleet push {}", file.display()));
    let mut body = json!({"document": document, "message": message});
    if let Some(canary) = canary {
        body["canary"] = canary.into();
    }
    if let Some(hold) = hold {
        body["hold"] = hold.into();
    }
    let (status, answer) = admin.call(Method::POST, "/admin/fleet/publish", Some(&body))?;
    if status != 200 {
        return refused("the publish", status, &answer);
    }
    let Some(version) = answer["fleet_version"].as_u64() else {
        anyhow::bail!("the publish answered without a fleet_version: {answer}");
    };
    if let Some(cohort) = answer["rollout"]["cohort"].as_array() {
        let cohort: Vec<String> = cohort.iter().map(text).collect();
        println!(
            "version {version}: canary {} to {}, hold {}",
            text(&answer["rollout"]["canary"]),
            cohort.join(", "),
            text(&answer["rollout"]["hold"])
        );
    }
    let deadline = std::time::Instant::now() + admin.timeout;
    let mut last = String::new();
    loop {
        let (status, view) = admin.call(Method::GET, "/admin/fleet", None)?;
        if status != 200 {
            return refused("GET /admin/fleet", status, &view);
        }
        let progress = Progress::of(&view, version);
        let line = progress.line(version);
        if line != last {
            println!("{line}");
            last = line;
        }
        if let Some(code) = progress.outcome() {
            return Ok(ExitCode::from(code));
        }
        if std::time::Instant::now() >= deadline {
            println!(
                "gave up after --timeout {}",
                humantime::format_duration(admin.timeout)
            );
            return Ok(ExitCode::from(2));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where a pushed version is, as `GET /admin/fleet` shows it.
struct Progress {
    /// Live instances (not `missing`).
    live: usize,
    /// Those that serve the version.
    applied: usize,
    /// Those that refused it: (instance, error).
    rejected: Vec<(String, String)>,
    /// Those that did not answer within `fleet.ack_timeout`.
    stale: usize,
    /// The rollout's phase, with a canary.
    phase: Option<String>,
    /// Why a rollout halted.
    reason: Option<String>,
    /// Whether a rejection halted it.
    halted_by_rejection: bool,
    /// A later version was published meanwhile.
    superseded: bool,
}

impl Progress {
    fn of(view: &Value, version: u64) -> Self {
        let rows = view["instances"].as_array().cloned().unwrap_or_default();
        let live: Vec<&Value> = rows.iter().filter(|r| r["state"] != "missing").collect();
        let rollout = &view["rollout"];
        let ours = rollout["version"].as_u64() == Some(version);
        Self {
            live: live.len(),
            applied: live
                .iter()
                .filter(|r| r["applied"].as_u64() == Some(version))
                .count(),
            rejected: live
                .iter()
                .filter(|r| r["version"].as_u64() == Some(version) && r["error"].is_string())
                .map(|r| (text(&r["instance"]), text(&r["error"])))
                .collect(),
            stale: live.iter().filter(|r| r["state"] == "stale").count(),
            phase: ours.then(|| text(&rollout["phase"])),
            reason: ours
                .then(|| rollout["reason"].as_str().map(str::to_owned))
                .flatten(),
            halted_by_rejection: ours && rollout["rejected_by"].is_string(),
            superseded: view["desired"]["version"]
                .as_u64()
                .is_some_and(|v| v > version),
        }
    }

    /// `3/5 applied, 1 rejected: host-b: pools.main.warm …`
    fn line(&self, version: u64) -> String {
        let mut line = format!("version {version}: {}/{} applied", self.applied, self.live);
        if let Some(phase) = &self.phase {
            line = format!(
                "version {version} ({phase}): {}/{} applied",
                self.applied, self.live
            );
        }
        if !self.rejected.is_empty() {
            line.push_str(&format!(", {} rejected", self.rejected.len()));
            for (instance, error) in &self.rejected {
                line.push_str(&format!(": {instance}: {error}"));
            }
        }
        if self.stale > 0 {
            line.push_str(&format!(", {} not answered", self.stale));
        }
        if let Some(reason) = &self.reason {
            line.push_str(&format!("; halted: {reason}"));
        }
        if self.superseded {
            line.push_str("; a later version was published since");
        }
        line
    }

    /// The exit code once the push is over: 0 every live instance applied
    /// it, 1 a rejection (or a halted canary), 2 an instance did not answer
    /// (or a later version replaced it).
    fn outcome(&self) -> Option<u8> {
        let settled = self.applied + self.rejected.len() == self.live;
        match self.phase.as_deref() {
            Some("halted") if self.halted_by_rejection => Some(1),
            Some("halted") => Some(2),
            Some("canary" | "holding") if self.superseded => Some(2),
            Some("canary" | "holding") => None,
            _ if self.superseded || self.stale > 0 => Some(2),
            _ if settled && self.rejected.is_empty() => Some(0),
            _ if settled => Some(1),
            _ => None,
        }
    }
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
