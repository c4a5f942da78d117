//! The `kiln` command: serve the demo app with a config file, validate a
//! config file, or ask a running server to reload or restart.

mod fleet;
mod notes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::notes::{Notes, NotesConfig};

/// kiln: an application server whose workers are warm before the socket is
/// bound and whose configuration reloads atomically.
///
/// `kiln deploy.toml` serves the demo app with that file. Edit the file,
/// then `kiln reload` (or `curl -X POST 127.0.0.1:9090/admin/reload`, or
/// SIGHUP) to apply it; a bad file is refused and the old one keeps serving.
/// Environment variables `KILN__SECTION__KEY` override the file
/// (e.g. `KILN__ADMIN__TOKEN`).
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The configuration file to serve with (TOML, YAML or JSON).
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration by doing what start-up does, short of binding:
    /// parse and validate it, build and warm every pool (connect, ping) and
    /// resource, run the app's prepare, then build one worker and serve it
    /// server.warm_requests in-process. Prints a summary; exits 0 when the
    /// server would start.
    ///
    /// It touches what start-up touches: it connects to every database, and
    /// the app's prepare may write (the demo app creates its notes table if
    /// missing; SQLite files and their folders are created). Nothing listens.
    Validate {
        /// The configuration file.
        config: PathBuf,
    },
    /// Ask a running server to reload its configuration, print the answer,
    /// and exit non-zero when the reload was refused.
    Reload {
        /// The admin API's address.
        #[arg(long, env = "KILN_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// The admin token, when the server has one.
        #[arg(long, env = "KILN__ADMIN__TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How long to wait for the answer (a reload answers once its
        /// warm-up is done).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Drive a fleet (`[fleet]`) through an instance's admin API.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Restart a running server with no request lost: a new process (the
    /// binary on disk now, same arguments) warms while the old one serves,
    /// takes over the listening sockets, and the old one drains. Applies the
    /// keys a reload cannot (server.listen, server.workers, ...) and binary
    /// upgrades. Prints the outcome (old and new pid, generation, timings);
    /// exits non-zero when the new process failed, which leaves the old one
    /// serving.
    Restart {
        /// The admin API's address.
        #[arg(long, env = "KILN_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// The admin token, when the server has one.
        #[arg(long, env = "KILN__ADMIN__TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How long to wait for the answer: above the server's
        /// server.restart_timeout (default 120s).
        #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Validate { config }), _) => validate(&config),
        (
            Some(Command::Reload {
                admin,
                token,
                timeout,
            }),
            _,
        ) => reload(&admin, token.as_deref(), timeout),
        (Some(Command::Fleet { command }), _) => fleet::run(command),
        (
            Some(Command::Restart {
                admin,
                token,
                timeout,
            }),
            _,
        ) => restart(&admin, token.as_deref(), timeout),
        (None, Some(config)) => serve(&config),
        (None, None) => Err(anyhow::anyhow!(
            "no configuration file given: run `kiln deploy.toml` (see `kiln --help`)"
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: a driver's message often repeats its cause.
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", kiln::ErrorChain(e));
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let loaded = kiln::load_config::<NotesConfig>(path)?;
    kiln::logging::init(&loaded.config.log)?;
    let runtime = control_runtime()?;
    let served = runtime.block_on(kiln::serve(Notes, loaded));
    // A query the grace cut may still hold a blocking thread: do not wait for it.
    runtime.shutdown_background();
    served?;
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let loaded = kiln::load_config::<NotesConfig>(path)?;
    kiln::logging::init(&loaded.config.log)?;
    let started = std::time::Instant::now();
    // The pools must be dropped where a runtime runs.
    let runtime = control_runtime()?;
    let _entered = runtime.enter();
    let kiln = runtime.block_on(kiln::Kiln::start(Notes, loaded))?;
    // One worker, as start-up builds each: its app, then its warm requests.
    drop(runtime.block_on(kiln.worker())?);
    let generation = kiln.current();
    let config = generation.config();
    println!("{}: valid", path.display());
    println!(
        "  server: {} with {} workers; admin on {}",
        config.server.listen,
        config.server.worker_count(),
        config.admin.listen
    );
    for (name, pool) in generation.pools().iter() {
        let status = pool.status();
        println!(
            "  pool {name} ({}): {} of {} connections open and pinged",
            status.kind, status.size, status.max_size
        );
    }
    println!(
        "  one worker built and served {} warm request(s)",
        config.server.warm_requests.len()
    );
    println!("  warmed in {} ms", started.elapsed().as_millis());
    Ok(ExitCode::SUCCESS)
}

fn reload(
    admin: &str,
    token: Option<&str>,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let (status, _) = post_admin(admin, "/admin/reload", token, timeout)?;
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: reload refused ({status}); the running configuration is unchanged");
        Ok(ExitCode::FAILURE)
    }
}

fn restart(
    admin: &str,
    token: Option<&str>,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let (status, body) = post_admin(admin, "/admin/restart", token, timeout)?;
    if status.is_success() {
        eprintln!(
            "restarted: pid {} -> {}, generation {}, new process serving {} ms after its start, {} ms after the request",
            body["old_pid"], body["new_pid"], body["generation"], body["warm_ms"], body["took_ms"]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: restart failed ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// POSTs to the admin API at `admin` + `path` and prints the answer.
fn post_admin(
    admin: &str,
    path: &str,
    token: Option<&str>,
    timeout: std::time::Duration,
) -> anyhow::Result<(axum::http::StatusCode, serde_json::Value)> {
    let runtime = control_runtime()?;
    let (status, body) = runtime.block_on(kiln::client::request(
        axum::http::Method::POST,
        admin,
        path,
        token,
        timeout,
    ))?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok((status, body))
}

/// The control plane's runtime: pool connections, the admin API, signals.
/// Requests run on the workers' own runtimes.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("kiln-control")
        .build()
        .context("cannot build the control runtime")
}
