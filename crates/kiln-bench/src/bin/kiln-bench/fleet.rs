//! `fleet`: how fast a change reaches every instance of a fleet, and what a
//! fleet costs PostgreSQL at rest.
//!
//! - Convergence: `--changes` `PATCH /admin/config` on one instance; from
//!   its answer to every instance serving the new greeting (each polled in
//!   a tight loop), for 3 `kiln` processes and for `--simulated` instances
//!   in this process through the library (each its own `Kiln` with its own
//!   store connections, `LISTEN` included).
//! - Load at rest: the 3 processes idle for `--rest` seconds, once with
//!   `fleet.listen = true` and once with `false` (polling only): their
//!   connections, and their statements per second from
//!   `pg_stat_statements` when the server loads it, else from the database's
//!   `xact_commit` delta.
//!
//! The simulated instances need 2 connections each: give a server with a
//! `max_connections` to match (run.sh starts one).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::http::Method;
use axum::routing::get;
use kiln::{App, AppConfig, BoxError, Generation, Kiln};
use kiln_bench::http::Conn;
use kiln_bench::process::{Server, free_port};
use kiln_bench::stats::quantile;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Common;
use crate::setup_db::connect_pg;

/// `[app]` of the simulated instances.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Greeter {
    greeting: String,
}

impl AppConfig for Greeter {}

/// The simulated instances' app: nothing is served, the greeting is read.
struct GreeterApp;

impl App for GreeterApp {
    type Config = Greeter;
    type State = ();

    async fn prepare(&self, _: &Generation<Greeter>, _: Option<&()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn router(&self, _: &Generation<Greeter>, _: &()) -> Router {
        Router::new().route("/", get(|| async { "" }))
    }
}

pub(crate) fn fleet(c: &Common, changes: usize, simulated: usize, rest: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure(c, changes, simulated, rest))
}

async fn measure(c: &Common, changes: usize, simulated: usize, rest: u64) -> anyhow::Result<()> {
    let db = connect_pg(c, &c.pg_db).await?;
    let statements = db
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT 1 FROM pg_stat_statements LIMIT 1")
        .await
        .is_ok();
    let run = std::process::id();
    let store = c.pg_url(c.pg_addr);

    let three = |fleet: &str, listen: bool| -> anyhow::Result<Vec<Process>> {
        (0..3)
            .map(|i| Process::start(c, &store, &format!("bench-{run}-{fleet}"), i, listen))
            .collect()
    };
    let processes = three("p", true)?;
    let procs = converge_processes(&processes, changes).await?;
    let at_rest = load_at_rest(&db, statements, "kiln fleet %", rest, processes.len()).await?;
    drop(processes);
    let polling = three("q", false)?;
    let at_rest_polling =
        load_at_rest(&db, statements, "kiln fleet %", rest, polling.len()).await?;
    drop(polling);

    let sims = converge_simulated(c, &store, &format!("bench-{run}-s"), simulated, changes).await?;

    let row = |name: &str, samples: &[f64], target: f64| {
        let median = quantile(samples, 0.5).unwrap_or(f64::NAN);
        let p99 = quantile(samples, 0.99).unwrap_or(f64::NAN);
        let max = samples.iter().copied().fold(0.0, f64::max);
        let verdict = if p99 <= target { "met" } else { "missed" };
        format!(
            "| {name} | {} | {median:.1} | {p99:.1} | {max:.1} | ≤ {target:.0} ({verdict}) |\n",
            samples.len()
        )
    };
    let mut table = String::from(
        "| instances | changes | median ms | p99 ms | max ms | p99 target ms |\n|---|---|---|---|---|---|\n",
    );
    table.push_str(&row("3 processes", &procs, 100.0));
    table.push_str(&row(
        &format!("{simulated} in one process (library)"),
        &sims,
        250.0,
    ));
    table.push_str(&format!(
        "\nAt rest ({rest} s, 3 processes, heartbeat 5s, poll 30s; statements counted {}):\n\n\
         | mode | connections per instance | statements/s per instance | 1,000 instances: connections | 1,000 instances: statements/s |\n|---|---|---|---|---|\n",
        if statements { "by pg_stat_statements" } else { "as committed transactions" }
    ));
    for (mode, load) in [
        ("fleet.listen = true", &at_rest),
        ("fleet.listen = false", &at_rest_polling),
    ] {
        table.push_str(&format!(
            "| {mode} | {:.1} | {:.3} | {:.0} | {:.0} |\n",
            load.connections,
            load.per_second,
            load.connections * 1000.0,
            load.per_second * 1000.0
        ));
    }
    let raw = json!({
        "processes_ms": procs,
        "simulated": simulated,
        "simulated_ms": sims,
        "at_rest": at_rest,
        "at_rest_polling": at_rest_polling,
        "pg_stat_statements": statements,
    });
    c.save("fleet", &raw, &table)
}

/// One `kiln` process in a fleet.
struct Process {
    server: Server,
    addr: std::net::SocketAddr,
    admin: String,
}

impl Process {
    fn start(c: &Common, store: &str, fleet: &str, i: usize, listen: bool) -> anyhow::Result<Self> {
        let (port, admin_port) = (free_port()?, free_port()?);
        let name = format!("{fleet}{i}");
        let path = c.tmp(&format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\
                 [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
                 [pools.main]\nkind = \"sqlite\"\nurl = \"{name}.sqlite3\"\nmax_size = 2\n\
                 [log]\nlevel = \"warn\"\n\
                 [app]\ngreeting = \"start\"\n\
                 [fleet]\nstore = \"{store}\"\nname = \"{fleet}\"\ninstance = \"{name}\"\nlisten = {listen}\n"
            ),
        )?;
        let server = Server::start(
            &c.bin("kiln"),
            &[path.display().to_string()],
            &[],
            None,
            Some(&c.tmp(&format!("{name}.log"))),
        )?;
        let mut process = Self {
            server,
            addr: ([127, 0, 0, 1], port).into(),
            admin: format!("http://127.0.0.1:{admin_port}"),
        };
        process
            .server
            .wait_accepting(process.addr, Duration::from_secs(30))
            .with_context(|| format!("{name} did not start"))?;
        Ok(process)
    }
}

/// Milliseconds from each `PATCH` answer to every process serving it.
async fn converge_processes(processes: &[Process], changes: usize) -> anyhow::Result<Vec<f64>> {
    let mut conns = Vec::new();
    for process in processes {
        conns.push(Conn::connect(process.addr).await?);
    }
    let mut samples = Vec::new();
    for change in 0..changes {
        let greeting = format!("change {change}");
        let (status, body) = kiln::client::request_json(
            Method::PATCH,
            &processes[0].admin,
            "/admin/config",
            None,
            Some(&json!({"app": {"greeting": greeting}})),
            Duration::from_secs(30),
        )
        .await?;
        anyhow::ensure!(status == 200, "PATCH answered {status}: {body}");
        let answered = Instant::now();
        for conn in &mut conns {
            let deadline = answered + Duration::from_secs(30);
            while conn.get("/").await?.body != greeting.as_bytes() {
                anyhow::ensure!(Instant::now() < deadline, "no convergence within 30 s");
            }
        }
        samples.push(answered.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

/// Milliseconds from each patch (applied by the first instance) to every
/// one of `count` library instances serving it.
async fn converge_simulated(
    c: &Common,
    store: &str,
    fleet: &str,
    count: usize,
    changes: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut kilns = Vec::new();
    for i in 0..count {
        let dir = c.tmp(&format!("{fleet}{i}"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("kiln.toml");
        let text = format!(
            "[log]\nlevel = \"warn\"\n[app]\ngreeting = \"start\"\n\
             [fleet]\nstore = \"{store}\"\nname = \"{fleet}\"\ninstance = \"{fleet}{i}\"\n"
        );
        std::fs::write(&path, &text)?;
        let loaded = kiln::config::parse(Path::new(&path), text)?;
        let kiln = Kiln::start(GreeterApp, loaded).await?;
        tokio::spawn(kiln.clone().watch());
        kilns.push(kiln);
    }
    // Every LISTEN connection up before the first change.
    let db = connect_pg(c, &c.pg_db).await?;
    let listening = format!("kiln fleet listen {fleet}%");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                &[&listening],
            )
            .await?
            .get(0);
        if up as usize == count {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{up} of {count} LISTEN connections after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut samples = Vec::new();
    for change in 0..changes {
        let greeting = format!("change {change}");
        kilns[0]
            .patch(&json!({"app": {"greeting": greeting}}), None)
            .await?;
        let answered = Instant::now();
        let deadline = answered + Duration::from_secs(30);
        for kiln in &kilns {
            while kiln.current().app().greeting != greeting {
                anyhow::ensure!(Instant::now() < deadline, "no convergence within 30 s");
                tokio::task::yield_now().await;
            }
        }
        samples.push(answered.elapsed().as_secs_f64() * 1e3);
    }
    for kiln in &kilns {
        kiln.shutdown(Duration::from_secs(1)).await;
    }
    Ok(samples)
}

/// PostgreSQL load of idle instances.
#[derive(Debug, Serialize)]
struct Load {
    connections: f64,
    per_second: f64,
}

/// The load the `instances` whose connections are named like `application`
/// put on the database over `seconds` of rest.
async fn load_at_rest(
    db: &tokio_postgres::Client,
    statements: bool,
    application: &str,
    seconds: u64,
    instances: usize,
) -> anyhow::Result<Load> {
    // Let start-up settle (first reads, reports) before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = async || -> anyhow::Result<f64> {
        let sql = if statements {
            "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat%'"
        } else {
            "SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = current_database()"
        };
        Ok(db.query_one(sql, &[]).await?.get(0))
    };
    let before = count().await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = count().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let connections: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&application],
        )
        .await?
        .get(0);
    Ok(Load {
        connections: connections as f64 / instances as f64,
        // Without pg_stat_statements, this connection's own two reads count.
        per_second: (after - before - if statements { 0.0 } else { 2.0 }).max(0.0)
            / elapsed
            / instances as f64,
    })
}
