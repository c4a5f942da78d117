//! The `kiln` command: serve the demo app with a config file, validate a
//! config file, or drive a running server through its admin API.

mod admin;
mod fleet;
mod notes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::admin::{AdminArgs, Call, EXIT_STATUS};
use crate::notes::{Notes, NotesConfig};

/// kiln: an application server whose workers are warm before the socket is
/// bound and whose configuration reloads atomically.
///
/// `kiln deploy.toml` serves the demo app with that file. Edit the file,
/// then `kiln reload` (or `curl -X POST 127.0.0.1:9090/admin/reload`, or
/// SIGHUP) to apply it; a bad file is refused and the old one keeps serving.
/// `kiln status`, `history`, `config` and `log-level` read (and the last
/// sets) a running server through its admin API.
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
    /// Ask a running server to reload its configuration: print what changed,
    /// and exit non-zero when the reload was refused (the running
    /// configuration is then unchanged). Synchronous: it answers once every
    /// worker serves the new generation, so it fits systemd's ExecReload.
    #[command(after_help = EXIT_STATUS)]
    Reload(AdminArgs),
    /// Show a running server's generation, where its configuration comes
    /// from, each worker's generation and each pool's connections.
    #[command(after_help = EXIT_STATUS)]
    Status(AdminArgs),
    /// Show a running server's last reload attempts (applied or refused),
    /// newest first, with what asked for each and what it changed.
    #[command(after_help = EXIT_STATUS)]
    History(AdminArgs),
    /// Show a running server's effective configuration (file, defaults and
    /// KILN__* overrides), one key path per line, secrets as ***.
    #[command(after_help = EXIT_STATUS)]
    Config(AdminArgs),
    /// Show a running server's log filter, or replace it: `kiln log-level
    /// debug`, `kiln log-level 'info,kiln=debug'`. The new filter applies on
    /// every worker at once and stays until a reload changes log.level (a
    /// reload that leaves log.level alone keeps it).
    #[command(after_help = EXIT_STATUS)]
    LogLevel {
        /// The new filter, as tracing EnvFilter directives (as RUST_LOG
        /// takes them); without it, the filter in force is shown.
        directives: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
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
    /// serving. Its --timeout defaults to 180s, above the server's
    /// server.restart_timeout (default 120s).
    #[command(after_help = EXIT_STATUS)]
    Restart(AdminArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, call) = match cli.command {
        Some(Command::Reload(args)) => (args, Call::Reload),
        Some(Command::Status(args)) => (args, Call::Status),
        Some(Command::History(args)) => (args, Call::History),
        Some(Command::Config(args)) => (args, Call::Config),
        Some(Command::LogLevel { directives, admin }) => (admin, Call::LogLevel(directives)),
        Some(Command::Restart(args)) => (args, Call::Restart),
        Some(Command::Fleet { command }) => return exit(fleet::run(command)),
        Some(Command::Validate { config }) => return exit(validate(&config)),
        None => {
            return exit(match cli.config {
                Some(config) => serve(&config),
                None => Err(anyhow::anyhow!(
                    "no configuration file given: run `kiln deploy.toml` (see `kiln --help`)"
                )),
            });
        }
    };
    admin::run(&args, &call)
}

/// The exit status of serving or validating, with the error's chain printed.
fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
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

/// The control plane's runtime: pool connections, the admin API, signals.
/// Requests run on the workers' own runtimes.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("kiln-control")
        .build()
        .context("cannot build the control runtime")
}
