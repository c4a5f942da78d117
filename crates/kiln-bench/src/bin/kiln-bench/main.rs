//! The benchmark driver behind `crates/kiln-bench/run.sh`: each subcommand
//! runs one measurement of issue 5 against loopback only, with bounded
//! durations, interleaving the variants (A B A B …) over `--runs` rounds,
//! and writes raw JSON plus a markdown table to `--out` (`target/bench/`).
//! `report` gathers the tables (and criterion's figures) into one file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

mod anchors;
mod coldstart;
mod conf;
mod db;
mod fleet;
mod instructions;
mod memory;
mod overhead;
mod reload;
mod report;
mod restart;
mod setup_db;
mod startup;

use crate::coldstart::coldstart;
use crate::conf::KilnConf;
use crate::memory::memory;
use crate::overhead::{overhead, wrk};
use crate::reload::{half_saturation, reload};
use crate::report::report;
use crate::setup_db::setup_db;
use crate::startup::startup;

/// kiln's benchmark driver. Start with `crates/kiln-bench/run.sh`.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Cmd,
}

/// What every measurement needs.
#[derive(Args, Clone)]
struct Common {
    /// The folder holding the release binaries (kiln, bare, lazy, delay-proxy).
    #[arg(long, global = true, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where raw JSON, tables, configs and logs go.
    #[arg(long, global = true, default_value = "target/bench")]
    out: PathBuf,
    /// Rounds of each measurement (each round runs every variant once, in turn).
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// PostgreSQL server (host:port) on loopback.
    #[arg(long, global = true, default_value = "127.0.0.1:5432")]
    pg_addr: SocketAddr,
    /// PostgreSQL user.
    #[arg(long, global = true, default_value = "postgres")]
    pg_user: String,
    /// The database the benchmarks create and use.
    #[arg(long, global = true, default_value = "kiln_bench")]
    pg_db: String,
    /// CPUs the server under test is pinned to (`taskset -c` list).
    #[arg(long, global = true, default_value = "0")]
    server_cpus: String,
    /// CPUs the load generator (and this driver, while loading) is pinned to.
    #[arg(long, global = true, default_value = "1")]
    client_cpus: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the benchmark database and the notes table, with rows.
    SetupDb,
    /// Request overhead: kiln `GET /` vs bare axum, 1 and 2 workers, at saturation (wrk).
    Overhead {
        /// Seconds of each measured load run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Instructions per request under callgrind: kiln (with and without the header timer) vs bare axum.
    Instructions {
        /// Seconds of the counted load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The database path: `GET /q` (`pool.get()` + `SELECT 1`) in kiln vs axum and actix-web with deadpool-postgres.
    Db {
        /// Seconds of each measured load run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Every server's pool size (all of it warm).
        #[arg(long, default_value_t = 16)]
        pool: usize,
        /// Seconds of counted load per variant under callgrind; 0 skips it.
        #[arg(long, default_value_t = 5)]
        instruction_seconds: u64,
    },
    /// Cold start: first wave vs steady waves against PostgreSQL, kiln vs lazy.
    Coldstart {
        /// Pool size = first-wave width.
        #[arg(long, default_value_t = 32)]
        pool: usize,
        /// Steady-state waves after the first.
        #[arg(long, default_value_t = 20)]
        waves: usize,
    },
    /// Time to ready with 1, 8, 32 warm connections, direct and behind a connect delay.
    Startup {
        /// The proxy's delay per new connection, in ms.
        #[arg(long, default_value_t = 100)]
        delay_ms: u64,
    },
    /// Reloads under load (oha -q at half saturation): hot key, then pool rebuild.
    Reload {
        /// Total request rate; default half of kiln's 1-worker saturation from overhead.json.
        #[arg(long)]
        rate: Option<f64>,
        /// Pool-rebuild reloads per run.
        #[arg(long, default_value_t = 20)]
        reloads: usize,
        /// Hot-key reloads per run (more than rebuilds: their windows are
        /// ~1 ms, and at least 2,000 requests should fall inside them).
        #[arg(long, default_value_t = 100)]
        hot_reloads: usize,
        /// Seconds over which they are spread.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The in-window burst's rate (req/s), on top of the steady load.
        #[arg(long, default_value_t = 20_000.0)]
        burst_rate: f64,
        /// The in-window burst's keep-alive connections.
        #[arg(long, default_value_t = 16)]
        burst_connections: usize,
        /// kiln's worker count.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Reloads under load, kiln against Caddy, nginx, gunicorn and a restarted axum.
    Anchors {
        /// Total request rate, capped at half of each server's own saturation.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Configuration changes per run.
        #[arg(long, default_value_t = 30)]
        reloads: usize,
        /// Seconds over which they are spread.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Restarts under load: kiln's `POST /admin/restart` against nginx's
    /// binary upgrade and a killed and restarted axum.
    Restart {
        /// Total request rate, capped at half of each server's own saturation.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Restarts per run, one at a time.
        #[arg(long, default_value_t = 20)]
        restarts: usize,
        /// Seconds over which they are spread.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// RSS before and after 1,000 hot-key reloads and 100 pool-rebuild reloads.
    Memory {
        /// Hot-key reloads.
        #[arg(long, default_value_t = 1000)]
        hot: usize,
        /// Pool-rebuild reloads.
        #[arg(long, default_value_t = 100)]
        rebuild: usize,
    },
    /// A fleet: PATCH-to-every-instance time for 3 processes and for
    /// simulated instances in this process; PostgreSQL load at rest.
    Fleet {
        /// Changes measured.
        #[arg(long, default_value_t = 30)]
        changes: usize,
        /// Instances simulated in this process (2 connections each).
        #[arg(long, default_value_t = 50)]
        simulated: usize,
        /// Seconds of rest over which the load is counted, per mode.
        #[arg(long, default_value_t = 60)]
        rest: u64,
    },
    /// Gather every table (and criterion's config-read figures) into report.md.
    Report {
        /// Criterion's output folder.
        #[arg(long, default_value = "target/criterion")]
        criterion: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    std::fs::create_dir_all(c.out.join("tmp"))?;
    match cli.command {
        Cmd::SetupDb => runtime()?.block_on(setup_db(c)),
        Cmd::Overhead {
            seconds,
            connections,
        } => overhead(c, seconds, connections),
        Cmd::Instructions { seconds } => instructions::instructions(c, seconds),
        Cmd::Db {
            seconds,
            connections,
            pool,
            instruction_seconds,
        } => db::db(c, seconds, connections, pool, instruction_seconds),
        Cmd::Coldstart { pool, waves } => runtime()?.block_on(coldstart(c, pool, waves)),
        Cmd::Startup { delay_ms } => startup(c, delay_ms),
        Cmd::Reload {
            rate,
            reloads,
            hot_reloads,
            seconds,
            burst_rate,
            burst_connections,
            workers,
        } => reload(
            c,
            half_saturation(c, rate)?,
            reload::Schedule {
                hot: hot_reloads,
                rebuild: reloads,
                seconds,
            },
            reload::Burst {
                connections: burst_connections,
                rate: burst_rate,
            },
            workers,
        ),
        Cmd::Anchors {
            rate,
            reloads,
            seconds,
        } => anchors::anchors(c, rate, reloads, seconds),
        Cmd::Restart {
            rate,
            restarts,
            seconds,
        } => restart::restart(c, rate, restarts, seconds),
        Cmd::Memory { hot, rebuild } => runtime()?.block_on(memory(c, hot, rebuild)),
        Cmd::Fleet {
            changes,
            simulated,
            rest,
        } => fleet::fleet(c, changes, simulated, rest),
        Cmd::Report { criterion } => report(c, &criterion),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

impl Common {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn pg_url(&self, addr: SocketAddr) -> String {
        format!("postgres://{}@{addr}/{}", self.pg_user, self.pg_db)
    }

    fn tmp(&self, name: &str) -> PathBuf {
        self.out.join("tmp").join(name)
    }

    /// Writes `raw` as `<name>.json` and `table` as `<name>.md`.
    fn save(&self, name: &str, raw: &Value, table: &str) -> anyhow::Result<()> {
        std::fs::write(
            self.out.join(format!("{name}.json")),
            serde_json::to_string_pretty(raw)?,
        )?;
        std::fs::write(self.out.join(format!("{name}.md")), table)?;
        println!("{table}");
        Ok(())
    }
}

/// Pins every thread of this process to `cpus`; children started later
/// inherit it unless they are pinned themselves.
fn pin_self(cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

/// Every CPU of the machine as a `taskset -c` list.
fn all_cpus() -> String {
    let n = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1);
    format!("0-{}", n - 1)
}
