//! The benchmark driver behind `crates/kiln-bench/run.sh`: each subcommand
//! runs one measurement of issue 5 against loopback only, with bounded
//! durations, interleaving the variants (A B A B …) over `--runs` rounds,
//! and writes raw JSON plus a markdown table to `--out` (`target/bench/`).
//! `report` gathers the tables (and criterion's figures) into one file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use kiln_bench::http::{Conn, get_once};
use kiln_bench::load;
use kiln_bench::process::{Server, free_port, ready_ms};
use kiln_bench::stats::{Summary, quantile, show};
use serde::Serialize;
use serde_json::{Value, json};

mod anchors;
mod instructions;

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
        /// Reloads per run.
        #[arg(long, default_value_t = 20)]
        reloads: usize,
        /// Seconds over which they are spread.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
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
    /// RSS before and after 1,000 hot-key reloads and 100 pool-rebuild reloads.
    Memory {
        /// Hot-key reloads.
        #[arg(long, default_value_t = 1000)]
        hot: usize,
        /// Pool-rebuild reloads.
        #[arg(long, default_value_t = 100)]
        rebuild: usize,
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
        Cmd::Coldstart { pool, waves } => runtime()?.block_on(coldstart(c, pool, waves)),
        Cmd::Startup { delay_ms } => startup(c, delay_ms),
        Cmd::Reload {
            rate,
            reloads,
            seconds,
            workers,
        } => reload(c, half_saturation(c, rate)?, reloads, seconds, workers),
        Cmd::Anchors {
            rate,
            reloads,
            seconds,
        } => anchors::anchors(c, rate, reloads, seconds),
        Cmd::Memory { hot, rebuild } => runtime()?.block_on(memory(c, hot, rebuild)),
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

// === kiln's configuration ===

/// A kiln configuration for one benchmark run.
#[derive(Clone)]
struct KilnConf {
    port: u16,
    admin_port: u16,
    workers: usize,
    reuse_port: bool,
    header_read_timeout: &'static str,
    warm_requests: Vec<String>,
    pool_kind: &'static str,
    pool_url: String,
    max_size: usize,
    warm: usize,
    wait_timeout: &'static str,
    greeting: String,
    log_level: &'static str,
}

impl KilnConf {
    fn new(workers: usize) -> anyhow::Result<Self> {
        Ok(Self {
            port: free_port()?,
            admin_port: free_port()?,
            workers,
            reuse_port: false,
            header_read_timeout: "30s",
            warm_requests: vec!["/".to_owned()],
            pool_kind: "sqlite",
            pool_url: "kiln-bench.sqlite3".to_owned(),
            max_size: 8,
            warm: 8,
            wait_timeout: "2s",
            greeting: "Hello from kiln".to_owned(),
            log_level: "info",
        })
    }

    fn postgres(mut self, url: String, size: usize, warm: usize) -> Self {
        self.pool_kind = "postgres";
        self.pool_url = url;
        self.max_size = size;
        self.warm = warm;
        self
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    fn toml(&self) -> String {
        let warm_requests: Vec<String> = self
            .warm_requests
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        format!(
            r#"# Written by kiln-bench.
[server]
listen = "127.0.0.1:{port}"
workers = {workers}
reuse_port = {reuse_port}
header_read_timeout = "{header_read_timeout}"
warm_timeout = "30s"
shutdown_grace = "2s"
warm_requests = [{warm_requests}]

[admin]
listen = "127.0.0.1:{admin_port}"

[pools.main]
kind = "{kind}"
url = "{url}"
max_size = {max_size}
warm = {warm}
wait_timeout = "{wait_timeout}"

[log]
level = "{log_level}"
format = "pretty"

[app]
greeting = "{greeting}"
"#,
            port = self.port,
            workers = self.workers,
            reuse_port = self.reuse_port,
            header_read_timeout = self.header_read_timeout,
            warm_requests = warm_requests.join(", "),
            admin_port = self.admin_port,
            kind = self.pool_kind,
            url = self.pool_url,
            max_size = self.max_size,
            warm = self.warm,
            wait_timeout = self.wait_timeout,
            log_level = self.log_level,
            greeting = self.greeting,
        )
    }

    /// Writes the file and starts kiln on it.
    fn start(&self, c: &Common, name: &str, cpus: Option<&str>) -> anyhow::Result<Server> {
        let path = c.tmp(&format!("{name}.toml"));
        std::fs::write(&path, self.toml())?;
        Server::start(
            &c.bin("kiln"),
            &[path.display().to_string()],
            &[],
            cpus,
            Some(&c.tmp(&format!("{name}.log"))),
        )
    }

    fn write(&self, c: &Common, name: &str) -> anyhow::Result<()> {
        std::fs::write(c.tmp(&format!("{name}.toml")), self.toml())?;
        Ok(())
    }
}

// === setup-db ===

async fn connect_pg(c: &Common, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let url = format!("postgres://{}@{}/{db}", c.pg_user, c.pg_addr);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn setup_db(c: &Common) -> anyhow::Result<()> {
    let admin = connect_pg(c, "postgres").await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&c.pg_db])
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", c.pg_db))
            .await?;
    }
    let db = connect_pg(c, &c.pg_db).await?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, text TEXT NOT NULL)",
    )
    .await?;
    let count: i64 = db
        .query_one("SELECT count(*) FROM notes", &[])
        .await?
        .get(0);
    if count < 200 {
        db.batch_execute(
            "INSERT INTO notes (text) SELECT 'note number ' || g FROM generate_series(1, 200) g",
        )
        .await?;
    }
    println!("database {} ready on {}", c.pg_db, c.pg_addr);
    Ok(())
}

// === overhead ===

#[derive(Debug, Serialize)]
struct LoadRun {
    variant: String,
    round: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    non_2xx: u64,
    requests: u64,
    server_cpu_us_per_request: f64,
}

fn overhead(c: &Common, seconds: u64, connections: usize) -> anyhow::Result<()> {
    let variants = [
        ("kiln, 1 worker", "kiln", 1),
        (
            "kiln, 1 worker, header_read_timeout = 0s",
            "kiln-no-header-timeout",
            1,
        ),
        ("bare axum, 1 thread", "bare", 1),
        ("actix-web, 1 worker", "actix", 1),
        ("kiln, 2 workers", "kiln", 2),
        ("kiln, 2 workers, SO_REUSEPORT", "kiln-reuse-port", 2),
        ("bare axum, 2 threads", "bare", 2),
    ];
    let mut runs = Vec::new();
    for round in 0..c.runs {
        for (variant, program, threads) in variants {
            let (server, addr) = match program {
                "kiln" | "kiln-reuse-port" | "kiln-no-header-timeout" => {
                    let mut conf = KilnConf::new(threads)?;
                    conf.reuse_port = program == "kiln-reuse-port";
                    if program == "kiln-no-header-timeout" {
                        conf.header_read_timeout = "0s";
                    }
                    let server = conf.start(c, "overhead", Some(&c.server_cpus))?;
                    (server, conf.addr())
                }
                // bare axum or actix-web
                _ => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                    let server = Server::start(
                        &c.bin(program),
                        &[
                            "--listen".into(),
                            addr.to_string(),
                            "--threads".into(),
                            threads.to_string(),
                        ],
                        &[],
                        Some(&c.server_cpus),
                        None,
                    )?;
                    (server, addr)
                }
            };
            let mut server = server;
            server.wait_accepting(addr, Duration::from_secs(30))?;
            // One second to settle caches, connections and the CPU clock.
            wrk(c, addr, 1, connections)?;
            let cpu_before = server.cpu_ns()?;
            let mut run = wrk(c, addr, seconds, connections)?;
            let cpu = server.cpu_ns()?.saturating_sub(cpu_before);
            run.server_cpu_us_per_request = cpu as f64 / 1000.0 / run.requests.max(1) as f64;
            run.variant = variant.to_owned();
            run.round = round;
            eprintln!(
                "overhead round {round} {variant}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, server CPU {:.2} us/request",
                run.rps, run.p50_ms, run.p99_ms, run.server_cpu_us_per_request
            );
            runs.push(run);
            server.stop(Duration::from_secs(3));
        }
    }

    let mut table = String::new();
    writeln!(
        table,
        "### Request overhead: `GET /` at saturation\n\n\
         wrk, 1 thread, {connections} keep-alive connections, {seconds} s per run after 1 s of warm-up; \
         server pinned to CPU {}, wrk to CPU {}; {} rounds, variants interleaved. \
         Median (min–max) over rounds; ratios are taken within a round (same window) and then summarised. \
         Server CPU µs/request = CPU time of all the server's threads during the measured run \
         (`/proc/PID/task/*/schedstat`) divided by the requests wrk completed: unlike req/s it does not move \
         when other work on the machine takes the CPU away, so it is the steadier overhead figure.\n",
        c.server_cpus, c.client_cpus, c.runs
    )?;
    writeln!(
        table,
        "| variant | req/s | p50 ms | p99 ms | errors | req/s vs bare | p99 vs bare | server CPU µs/request | CPU/request vs bare |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    let pick = |v: &str, f: fn(&LoadRun) -> f64| -> Vec<f64> {
        runs.iter().filter(|r| r.variant == v).map(f).collect()
    };
    let mut ratios = BTreeMap::new();
    for (variant, program, threads) in variants {
        let baseline = variants
            .iter()
            .find(|(_, p, t)| *p == "bare" && *t == threads)
            .map(|(v, _, _)| *v)
            .expect("a bare variant per thread count");
        let (rps_ratio, p99_ratio, cpu_ratio) = if program != "bare" {
            let a = pick(variant, |r| r.rps);
            let b = pick(baseline, |r| r.rps);
            let rps: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
            let a = pick(variant, |r| r.p99_ms);
            let b = pick(baseline, |r| r.p99_ms);
            let p99: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
            let a = pick(variant, |r| r.server_cpu_us_per_request);
            let b = pick(baseline, |r| r.server_cpu_us_per_request);
            let cpu: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
            ratios.insert(
                variant,
                json!({"rps_vs_bare": Summary::of(&rps), "p99_vs_bare": Summary::of(&p99),
                       "cpu_per_request_vs_bare": Summary::of(&cpu)}),
            );
            (
                format!("{}x", show(&rps, 3)),
                format!("{}x", show(&p99, 2)),
                format!("**{}x**", show(&cpu, 3)),
            )
        } else {
            ("1 (the limit)".to_owned(), "1".to_owned(), "1".to_owned())
        };
        let errors: u64 = runs
            .iter()
            .filter(|r| r.variant == variant)
            .map(|r| r.errors + r.non_2xx)
            .sum();
        writeln!(
            table,
            "| {variant} | {} | {} | {} | {errors} | {rps_ratio} | {p99_ratio} | {} | {cpu_ratio} |",
            show(&pick(variant, |r| r.rps), 0),
            show(&pick(variant, |r| r.p50_ms), 3),
            show(&pick(variant, |r| r.p99_ms), 3),
            show(&pick(variant, |r| r.server_cpu_us_per_request), 2),
        )?;
    }
    writeln!(
        table,
        "\nkiln's workers share one listener by default; `server.reuse_port = true` \
         gives each worker its own `SO_REUSEPORT` listener (the kernel spreads connections). \
         kiln arms hyper's header-read timer on every request by default (`server.header_read_timeout = \"30s\"`); \
         the `0s` row turns it off, as bare axum (`axum::serve`) has none."
    )?;
    let raw =
        json!({"runs": runs, "ratios": ratios, "seconds": seconds, "connections": connections});
    c.save("overhead", &raw, &table)
}

/// Runs wrk against `addr` for `seconds`, pinned to the client CPUs.
fn wrk(c: &Common, addr: SocketAddr, seconds: u64, connections: usize) -> anyhow::Result<LoadRun> {
    let output = Command::new("taskset")
        .args(["-c", &c.client_cpus, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(format!("http://{addr}/"))
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<LoadRun> {
    let duration = |s: &str| -> Option<f64> {
        let s = s.trim();
        let (number, scale) = if let Some(v) = s.strip_suffix("us") {
            (v, 0.001)
        } else if let Some(v) = s.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = s.strip_suffix('s') {
            (v, 1000.0)
        } else {
            return None;
        };
        number.parse::<f64>().ok().map(|n| n * scale)
    };
    let mut run = LoadRun {
        variant: String::new(),
        round: 0,
        rps: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
        non_2xx: 0,
        requests: 0,
        server_cpu_us_per_request: f64::NAN,
    };
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50_ms = duration(v).context("p50")?;
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_ms = duration(v).context("p99")?;
        } else if line.contains(" requests in ") {
            run.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            run.errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    if run.rps.is_nan() || run.p99_ms.is_nan() {
        bail!("no Requests/sec or 99% line");
    }
    Ok(run)
}

// === cold start ===

#[derive(Debug, Serialize)]
struct ColdRun {
    variant: String,
    round: usize,
    accepting_ms: f64,
    first_p99_ms: f64,
    first_max_ms: f64,
    steady_p99_ms: f64,
    ratio: f64,
    first_failed: usize,
    steady_failed: usize,
    new_connections_in_first_wave: i64,
}

/// Fires `width` concurrent `GET path`, each on a new connection; returns
/// each one's latency (connect included) in ms, or `None` for a failure.
async fn wave(addr: SocketAddr, path: &str, width: usize) -> Vec<Option<f64>> {
    let tasks: Vec<_> = (0..width)
        .map(|_| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let started = Instant::now();
                match get_once(addr, &path).await {
                    Ok(reply) if reply.status == 200 => {
                        Some(started.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => None,
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(width);
    for t in tasks {
        out.push(t.await.unwrap_or(None));
    }
    out
}

async fn backends(pg: &tokio_postgres::Client, db: &str) -> anyhow::Result<i64> {
    Ok(pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await?
        .get(0))
}

async fn coldstart(c: &Common, pool: usize, waves: usize) -> anyhow::Result<()> {
    let pg = connect_pg(c, &c.pg_db).await?;
    let url = c.pg_url(c.pg_addr);
    let path = "/notes?limit=20";
    let variants = [
        "kiln (warm_requests = [\"/\"], the default)",
        "lazy baseline (axum + deadpool, nothing warmed)",
        "kiln (warm_requests = [\"/\", \"/notes?limit=20\"])",
        "kiln lazy mode (warm = 0, warm_requests = [])",
    ];
    let mut runs = Vec::new();
    let cpus = all_cpus();
    for round in 0..c.runs {
        for (i, variant) in variants.iter().enumerate() {
            // Let the previous server's backends go away.
            for _ in 0..200 {
                if backends(&pg, &c.pg_db).await? == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (mut server, addr) = if i == 1 {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                let server = Server::start(
                    &c.bin("lazy"),
                    &[
                        "--listen".into(),
                        addr.to_string(),
                        "--url".into(),
                        url.clone(),
                        "--max-size".into(),
                        pool.to_string(),
                        "--threads".into(),
                        "2".into(),
                    ],
                    &[],
                    Some(&cpus),
                    Some(&c.tmp("coldstart-lazy.log")),
                )?;
                (server, addr)
            } else {
                let mut conf = KilnConf::new(2)?.postgres(url.clone(), pool, pool);
                match i {
                    2 => conf.warm_requests.push(path.to_owned()),
                    3 => {
                        conf.warm = 0;
                        conf.warm_requests.clear();
                    }
                    _ => {}
                }
                let server = conf.start(c, "coldstart", Some(&cpus))?;
                (server, conf.addr())
            };
            let accepting = server.wait_accepting(addr, Duration::from_secs(30))?;
            let before = backends(&pg, &c.pg_db).await?;
            let first = wave(addr, path, pool).await;
            let after = backends(&pg, &c.pg_db).await?;
            let mut steady = Vec::new();
            for _ in 0..waves {
                tokio::time::sleep(Duration::from_millis(20)).await;
                steady.extend(wave(addr, path, pool).await);
            }
            server.stop(Duration::from_secs(3));
            let ok = |v: &[Option<f64>]| v.iter().flatten().copied().collect::<Vec<f64>>();
            let first_ok = ok(&first);
            let steady_ok = ok(&steady);
            let first_p99 = quantile(&first_ok, 0.99).unwrap_or(f64::NAN);
            let steady_p99 = quantile(&steady_ok, 0.99).unwrap_or(f64::NAN);
            let run = ColdRun {
                variant: (*variant).to_owned(),
                round,
                accepting_ms: accepting.as_secs_f64() * 1000.0,
                first_p99_ms: first_p99,
                first_max_ms: quantile(&first_ok, 1.0).unwrap_or(f64::NAN),
                steady_p99_ms: steady_p99,
                ratio: first_p99 / steady_p99,
                first_failed: first.len() - first_ok.len(),
                steady_failed: steady.len() - steady_ok.len(),
                new_connections_in_first_wave: after - before,
            };
            eprintln!("coldstart {run:?}");
            runs.push(run);
        }
    }

    // One new connection vs one query on an open one.
    let mut connects = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let client = connect_pg(c, &c.pg_db).await?;
        connects.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(client);
    }
    // The first query on a new connection vs the next ones (as the demo app
    // queries: an unnamed statement each time).
    let (mut first_query, mut second_query) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let client = connect_pg(c, &c.pg_db).await?;
        client.simple_query("SELECT 1").await?;
        for out in [&mut first_query, &mut second_query] {
            let started = Instant::now();
            client
                .query(
                    "SELECT id, text FROM notes ORDER BY id DESC LIMIT $1",
                    &[&20_i64],
                )
                .await?;
            out.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut queries = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        pg.simple_query("SELECT 1").await?;
        queries.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let statement = pg
        .prepare("SELECT id, text FROM notes ORDER BY id DESC LIMIT $1")
        .await?;
    let mut notes = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        pg.query(&statement, &[&20_i64]).await?;
        notes.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    let mut table = String::new();
    writeln!(
        table,
        "### Cold start against PostgreSQL: first wave vs steady waves\n\n\
         Pool of {pool} connections, 2 workers (threads), unpinned. The driver starts the server, polls its port every 0.5 ms, \
         and the moment it accepts fires a first wave of {pool} concurrent `GET {path}`, each on a new connection \
         (latency includes the TCP connect), then {waves} steady waves of {pool} (20 ms apart). \
         p99 by nearest rank ({pool} samples in the first wave, {} in the steady ones). {} rounds, variants interleaved; \
         median (min–max) over rounds.\n",
        pool * waves,
        c.runs
    )?;
    writeln!(
        table,
        "| variant | spawn → accepting, ms | first-wave p99, ms | steady p99, ms | first / steady p99 | failed | PostgreSQL connections opened by the first wave |\n|---|---|---|---|---|---|---|"
    )?;
    let mut summary = BTreeMap::new();
    for variant in variants {
        let of = |f: fn(&ColdRun) -> f64| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.variant == variant)
                .map(f)
                .collect()
        };
        let failed: usize = runs
            .iter()
            .filter(|r| r.variant == variant)
            .map(|r| r.first_failed + r.steady_failed)
            .sum();
        writeln!(
            table,
            "| {variant} | {} | {} | {} | **{}x** | {failed} | {} |",
            show(&of(|r| r.accepting_ms), 1),
            show(&of(|r| r.first_p99_ms), 2),
            show(&of(|r| r.steady_p99_ms), 2),
            show(&of(|r| r.ratio), 2),
            show(&of(|r| r.new_connections_in_first_wave as f64), 0),
        )?;
        summary.insert(variant, Summary::of(&of(|r| r.ratio)));
    }
    writeln!(
        table,
        "\n| PostgreSQL on loopback | median ms | p99 ms |\n|---|---|---|\n\
         | open a new connection (connect + auth + startup) | {:.3} | {:.3} |\n\
         | `SELECT 1` on an open connection | {:.3} | {:.3} |\n\
         | the notes query (prepared) on an open connection | {:.3} | {:.3} |\n\
         | the notes query as the app sends it, first on a new connection (after `SELECT 1`, as kiln's warm-up leaves it) | {:.3} | {:.3} |\n\
         | the same query, second on that connection | {:.3} | {:.3} |\n\n\
         A new connection costs {:.0}x a query on an open one.",
        quantile(&connects, 0.5).unwrap_or(f64::NAN),
        quantile(&connects, 0.99).unwrap_or(f64::NAN),
        quantile(&queries, 0.5).unwrap_or(f64::NAN),
        quantile(&queries, 0.99).unwrap_or(f64::NAN),
        quantile(&notes, 0.5).unwrap_or(f64::NAN),
        quantile(&notes, 0.99).unwrap_or(f64::NAN),
        quantile(&first_query, 0.5).unwrap_or(f64::NAN),
        quantile(&first_query, 0.99).unwrap_or(f64::NAN),
        quantile(&second_query, 0.5).unwrap_or(f64::NAN),
        quantile(&second_query, 0.99).unwrap_or(f64::NAN),
        quantile(&connects, 0.5).unwrap_or(f64::NAN) / quantile(&queries, 0.5).unwrap_or(f64::NAN),
    )?;
    let raw = json!({
        "runs": runs,
        "ratio": summary,
        "pg_connect_ms": connects,
        "pg_select1_ms": queries,
        "pg_notes_query_ms": notes,
        "pg_first_app_query_on_new_connection_ms": first_query,
        "pg_second_app_query_on_new_connection_ms": second_query,
    });
    c.save("coldstart", &raw, &table)
}

// === start-up scaling ===

#[derive(Debug, Serialize)]
struct StartRun {
    variant: String,
    warm: usize,
    delay_ms: u64,
    round: usize,
    accepting_ms: f64,
    ready_line_ms: f64,
}

fn startup(c: &Common, delay_ms: u64) -> anyhow::Result<()> {
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut proxy = Server::start(
        &c.bin("delay-proxy"),
        &[
            "--listen".into(),
            proxy_addr.to_string(),
            "--upstream".into(),
            c.pg_addr.to_string(),
            "--delay-ms".into(),
            delay_ms.to_string(),
        ],
        &[],
        None,
        None,
    )?;
    proxy.wait_line("delay-proxy on", Duration::from_secs(10))?;
    let cpus = all_cpus();
    let mut runs = Vec::new();
    let mut bare_runs = Vec::new();
    for round in 0..c.runs {
        // The floor: a process that binds at once (bare axum).
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut bare = Server::start(
            &c.bin("bare"),
            &["--listen".into(), addr.to_string()],
            &[],
            Some(&cpus),
            None,
        )?;
        bare_runs.push(
            bare.wait_accepting(addr, Duration::from_secs(10))?
                .as_secs_f64()
                * 1000.0,
        );
        bare.stop(Duration::from_secs(2));
        for delay in [0, delay_ms] {
            for warm in [1, 8, 32] {
                let target = if delay == 0 { c.pg_addr } else { proxy_addr };
                let conf = KilnConf::new(2)?.postgres(c.pg_url(target), 32, warm);
                let mut server = conf.start(c, "startup", Some(&cpus))?;
                let accepting = server.wait_accepting(conf.addr(), Duration::from_secs(30))?;
                let line = server.wait_line("ready:", Duration::from_secs(5))?;
                let run = StartRun {
                    variant: if delay == 0 {
                        "direct".to_owned()
                    } else {
                        format!("+{delay} ms per connect")
                    },
                    warm,
                    delay_ms: delay,
                    round,
                    accepting_ms: accepting.as_secs_f64() * 1000.0,
                    ready_line_ms: ready_ms(&line).unwrap_or(f64::NAN),
                };
                eprintln!("startup {run:?}");
                runs.push(run);
                server.stop(Duration::from_secs(3));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    proxy.stop(Duration::from_secs(1));

    let mut table = String::new();
    writeln!(
        table,
        "### Start-up scaling: time to ready by warm connections\n\n\
         kiln with 2 workers, a PostgreSQL pool of `max_size = 32` and `warm` = 1, 8 or 32, \
         either direct or through `delay-proxy` adding {delay_ms} ms before each new connection. \
         \"spawn → accepting\" is wall time from starting the process until its port accepts \
         (what a client or load balancer sees); \"ready line\" is the figure kiln logs. \
         {} rounds, interleaved; median (min–max).\n",
        c.runs
    )?;
    writeln!(
        table,
        "| PostgreSQL | warm connections | spawn → accepting, ms | ready line, ms | in connect delays |\n|---|---|---|---|---|"
    )?;
    for delay in [0, delay_ms] {
        for warm in [1, 8, 32] {
            let of = |f: fn(&StartRun) -> f64| -> Vec<f64> {
                runs.iter()
                    .filter(|r| r.delay_ms == delay && r.warm == warm)
                    .map(f)
                    .collect()
            };
            let delays = if delay == 0 {
                "–".to_owned()
            } else {
                let d: Vec<f64> = of(|r| r.accepting_ms)
                    .iter()
                    .map(|ms| ms / delay as f64)
                    .collect();
                format!("**{}**", show(&d, 2))
            };
            writeln!(
                table,
                "| {} | {warm} | {} | {} | {delays} |",
                if delay == 0 {
                    "direct".to_owned()
                } else {
                    format!("+{delay} ms per connect")
                },
                show(&of(|r| r.accepting_ms), 1),
                show(&of(|r| r.ready_line_ms), 0),
            )?;
        }
    }
    writeln!(
        table,
        "\nFloor: bare axum (binds at once, nothing to warm) accepts {} ms after spawn.",
        show(&bare_runs, 1)
    )?;
    let raw = json!({"runs": runs, "bare_accepting_ms": bare_runs, "delay_ms": delay_ms});
    c.save("startup", &raw, &table)
}

// === reloads under load ===

/// One reload: when it was asked for, answered, and seen.
#[derive(Clone, Debug, Serialize)]
struct ReloadEvent {
    sent_s: f64,
    answered_s: f64,
    latency_ms: f64,
    visible_ms: Option<f64>,
    status: u16,
    generation: u64,
    took_ms: Option<u64>,
    rebuilt: Vec<String>,
    wave_before_ms: Vec<f64>,
    wave_after_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct ReloadRun {
    mode: &'static str,
    round: usize,
    target_rate: f64,
    oha: load::Oha,
    probe_requests: usize,
    probe_failed: usize,
    probe_stale_after_answer: usize,
    probe_generation_went_back: usize,
    probe_p99_in_ms: f64,
    probe_p99_out_ms: f64,
    probe_in_samples: usize,
    reloads_ok: usize,
    reload_latency_median_ms: f64,
    reload_latency_max_ms: f64,
    visible_median_ms: f64,
    visible_max_ms: f64,
    wave_before_p99_ms: f64,
    wave_after_p99_ms: f64,
    rss_kib_before: u64,
    rss_kib_after: u64,
    events: Vec<ReloadEvent>,
}

/// `rate` when given, else half of kiln's 1-worker saturation from the
/// overhead measurement.
fn half_saturation(c: &Common, rate: Option<f64>) -> anyhow::Result<f64> {
    if let Some(rate) = rate {
        return Ok(rate);
    }
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(c.out.join("overhead.json"))
            .context("no --rate and no overhead.json: run `overhead` first")?,
    )?;
    let rps: Vec<f64> = raw["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["variant"] == "kiln, 1 worker")
        .filter_map(|r| r["rps"].as_f64())
        .collect();
    Ok(Summary::of(&rps)
        .context("no kiln runs in overhead.json")?
        .median
        / 2.0)
}

fn reload(
    c: &Common,
    rate: f64,
    reloads: usize,
    seconds: u64,
    workers: usize,
) -> anyhow::Result<()> {
    pin_self(&c.client_cpus);
    let mut runs = Vec::new();
    for round in 0..c.runs {
        for mode in ["hot key", "pool rebuild"] {
            let run =
                runtime()?.block_on(reload_run(c, mode, round, rate, reloads, seconds, workers))?;
            eprintln!(
                "reload round {round} {mode}: oha {:.0} req/s, failed {} + probe failed {}, p99 in {:.3} ms / out {:.3} ms, reload median {:.1} ms max {:.1} ms, visible median {:.2} ms max {:.2} ms",
                run.oha.rps,
                run.oha.failed,
                run.probe_failed,
                run.probe_p99_in_ms,
                run.probe_p99_out_ms,
                run.reload_latency_median_ms,
                run.reload_latency_max_ms,
                run.visible_median_ms,
                run.visible_max_ms
            );
            runs.push(run);
        }
    }
    pin_self(&all_cpus());

    let mut table = String::new();
    writeln!(
        table,
        "### Reloads under load\n\n\
         kiln with {workers} worker(s), a PostgreSQL pool of 8 and `warm_requests = [\"/\", \"/notes?limit=20\"]`, pinned to CPU {}; load pinned to CPU {}: \
         `oha -q` (keep-alive, 32 connections) plus the driver's probe (10 keep-alive connections, 40% of the rate up to 4,000 req/s) \
         for {} s, {:.0} req/s in all (half of kiln's 1-worker saturation from the overhead table). \
         During it, {reloads} `POST /admin/reload` over {seconds} s, each after an edit of the config file: \
         `app.greeting` (hot key) or `pools.main.wait_timeout` (the pool is rebuilt: 8 new connections opened and pinged). \
         \"in window\" = probe requests sent between a reload's request and its answer. \
         \"visible\" = from sending the reload to the first answer received that carries the new generation \
         (from the probe, or from a connection polling `GET /` back to back; client-side, so it includes the \
         load generator's own queueing on its busy CPU). oha's requests cut by its own `-z` deadline are not failures. Around each reload, a wave of 8 concurrent `GET /notes?limit=20` \
         (keep-alive) is sent 100 ms before it and right after its answer. {} rounds, modes interleaved; median (min–max).\n",
        c.server_cpus,
        c.client_cpus,
        seconds + 2,
        rate,
        c.runs
    )?;
    writeln!(
        table,
        "| reload kind | failed requests (oha + probe) | requests served | p99 in window, ms | p99 outside, ms | in / out | reload latency median, ms | max, ms | visible median, ms | max, ms | `/notes` wave after swap / before, p99 |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    let mut summary = BTreeMap::new();
    for mode in ["hot key", "pool rebuild"] {
        let of = |f: &dyn Fn(&ReloadRun) -> f64| -> Vec<f64> {
            runs.iter().filter(|r| r.mode == mode).map(f).collect()
        };
        let failed: u64 = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.oha.failed + r.probe_failed as u64)
            .sum();
        let served: u64 = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.oha.requests + r.probe_requests as u64)
            .sum();
        let in_out = of(&|r| r.probe_p99_in_ms / r.probe_p99_out_ms);
        let waves = of(&|r| r.wave_after_p99_ms / r.wave_before_p99_ms);
        writeln!(
            table,
            "| {mode} | **{failed}** | {served} | {} | {} | **{}x** | {} | {} | **{}** | {} | {}x |",
            show(&of(&|r| r.probe_p99_in_ms), 3),
            show(&of(&|r| r.probe_p99_out_ms), 3),
            show(&in_out, 2),
            show(&of(&|r| r.reload_latency_median_ms), 2),
            show(&of(&|r| r.reload_latency_max_ms), 2),
            show(&of(&|r| r.visible_median_ms), 2),
            show(&of(&|r| r.visible_max_ms), 2),
            show(&waves, 2),
        )?;
        let reloads_ok: usize = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.reloads_ok)
            .sum();
        let stale: usize = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.probe_stale_after_answer + r.probe_generation_went_back)
            .sum();
        summary.insert(
            mode,
            json!({"failed": failed, "served": served, "reloads_ok": reloads_ok, "stale_or_backwards": stale,
                   "p99_in_over_out": Summary::of(&in_out), "wave_after_over_before": Summary::of(&waves)}),
        );
    }
    let total_reloads = runs.iter().map(|r| r.events.len()).sum::<usize>();
    let ok_reloads = runs.iter().map(|r| r.reloads_ok).sum::<usize>();
    let stale = runs
        .iter()
        .map(|r| r.probe_stale_after_answer + r.probe_generation_went_back)
        .sum::<usize>();
    writeln!(
        table,
        "\n{ok_reloads} of {total_reloads} reloads answered 200. Probe requests sent after a reload's answer that still saw the old generation, \
         or a connection seeing a generation go backwards: {stale}."
    )?;
    let raw = json!({"rate": rate, "summary": summary, "runs": runs});
    c.save("reload", &raw, &table)
}

async fn reload_run(
    c: &Common,
    mode: &'static str,
    round: usize,
    rate: f64,
    reloads: usize,
    seconds: u64,
    workers: usize,
) -> anyhow::Result<ReloadRun> {
    let name = "reload";
    let mut conf = KilnConf::new(workers)?.postgres(c.pg_url(c.pg_addr), 8, 8);
    // As the repo's deploy.toml does: the database path is warmed too, so a
    // rebuilt pool's connections have served a query before the swap.
    conf.warm_requests.push("/notes?limit=20".to_owned());
    let mut server = conf.start(c, name, Some(&c.server_cpus))?;
    server.wait_accepting(conf.addr(), Duration::from_secs(30))?;
    let addr = conf.addr();
    let rss_before = server.rss_kib()?;

    let spec = load::Spec::new(addr, rate, Duration::from_secs(seconds + 2), &c.client_cpus);
    let load = load::Load::start(&spec).await?;
    let start = load.start;
    let mut admin_conn = Conn::connect(conf.admin()).await?;
    let mut wave_conns = Vec::new();
    for _ in 0..8 {
        wave_conns.push(Rc::new(tokio::sync::Mutex::new(Conn::connect(addr).await?)));
    }
    let local = tokio::task::LocalSet::new();
    let mut events = local
        .run_until(async {
            let mut events = Vec::new();
            let mut generation = 1_u64;
            let spacing = Duration::from_secs(seconds).div_f64(reloads as f64);
            for i in 0..reloads {
                let slot = start + Duration::from_secs(1) + spacing.mul_f64(i as f64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
                let wave_before = notes_wave(&wave_conns).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut next = conf.clone();
                match mode {
                    "hot key" => next.greeting = format!("Hello from reload {i}"),
                    _ => next.wait_timeout = if i.is_multiple_of(2) { "3s" } else { "2s" },
                }
                next.write(c, name)?;
                let sent = Instant::now();
                let poller = tokio::task::spawn_local(load::first_seen(
                    addr,
                    spec.marker,
                    generation + 1,
                    sent,
                    Duration::from_secs(5),
                ));
                let reply = admin_conn.post("/admin/reload").await?;
                let answered = Instant::now();
                let wave_after = notes_wave(&wave_conns).await;
                let visible_ms = poller.await.unwrap_or(None);
                let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                if reply.status == 200 {
                    generation = body["generation"].as_u64().unwrap_or(generation + 1);
                }
                events.push(ReloadEvent {
                    sent_s: (sent - start).as_secs_f64(),
                    answered_s: (answered - start).as_secs_f64(),
                    latency_ms: (answered - sent).as_secs_f64() * 1000.0,
                    visible_ms,
                    status: reply.status,
                    generation,
                    took_ms: body["took_ms"].as_u64(),
                    rebuilt: body["rebuilt"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    wave_before_ms: wave_before,
                    wave_after_ms: wave_after,
                });
            }
            anyhow::Ok(events)
        })
        .await?;
    let (samples, oha) = load.finish().await?;
    let rss_after = server.rss_kib()?;
    server.stop(Duration::from_secs(3));

    let windows: Vec<(f64, f64)> = events.iter().map(|e| (e.sent_s, e.answered_s)).collect();
    let (p99_in, p99_out, in_samples) = load::p99_in_out(&samples, &windows);
    let answered: Vec<(f64, u64)> = events
        .iter()
        .filter(|e| e.status == 200)
        .map(|e| (e.answered_s, e.generation))
        .collect();
    for e in events.iter_mut().filter(|e| e.status == 200) {
        e.visible_ms = load::visible_ms(&samples, e.generation, e.sent_s, e.visible_ms);
    }
    let ok_events: Vec<&ReloadEvent> = events.iter().filter(|e| e.status == 200).collect();
    let latencies: Vec<f64> = ok_events.iter().map(|e| e.latency_ms).collect();
    let visible: Vec<f64> = ok_events.iter().filter_map(|e| e.visible_ms).collect();
    let before: Vec<f64> = events
        .iter()
        .flat_map(|e| e.wave_before_ms.clone())
        .collect();
    let after: Vec<f64> = events
        .iter()
        .flat_map(|e| e.wave_after_ms.clone())
        .collect();
    Ok(ReloadRun {
        mode,
        round,
        target_rate: rate,
        probe_requests: samples.len(),
        probe_failed: samples.iter().filter(|s| !s.ok).count(),
        probe_stale_after_answer: load::stale_after_answer(&samples, &answered),
        probe_generation_went_back: load::went_back(&samples),
        probe_p99_in_ms: p99_in,
        probe_p99_out_ms: p99_out,
        probe_in_samples: in_samples,
        reloads_ok: ok_events.len(),
        reload_latency_median_ms: quantile(&latencies, 0.5).unwrap_or(f64::NAN),
        reload_latency_max_ms: quantile(&latencies, 1.0).unwrap_or(f64::NAN),
        visible_median_ms: quantile(&visible, 0.5).unwrap_or(f64::NAN),
        visible_max_ms: quantile(&visible, 1.0).unwrap_or(f64::NAN),
        wave_before_p99_ms: quantile(&before, 0.99).unwrap_or(f64::NAN),
        wave_after_p99_ms: quantile(&after, 0.99).unwrap_or(f64::NAN),
        rss_kib_before: rss_before,
        rss_kib_after: rss_after,
        oha,
        events,
    })
}

/// One `GET /notes?limit=20` on each of `conns` at once; latencies in ms.
async fn notes_wave(conns: &[Rc<tokio::sync::Mutex<Conn>>]) -> Vec<f64> {
    let tasks: Vec<_> = conns
        .iter()
        .map(|conn| {
            let conn = conn.clone();
            tokio::task::spawn_local(async move {
                let mut conn = conn.lock().await;
                let started = Instant::now();
                match conn.get("/notes?limit=20").await {
                    Ok(r) if r.status == 200 => Some(started.elapsed().as_secs_f64() * 1000.0),
                    _ => None,
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(Some(ms)) = t.await {
            out.push(ms);
        }
    }
    out
}

// === memory ===

#[derive(Debug, Serialize)]
struct MemoryRun {
    round: usize,
    rss_start_kib: u64,
    rss_before_hot_kib: u64,
    rss_after_hot_kib: u64,
    rss_before_rebuild_kib: u64,
    rss_after_rebuild_kib: u64,
    hot_failed: usize,
    rebuild_failed: usize,
    pg_backends_before: i64,
    pg_backends_after: i64,
    last_generation: u64,
}

async fn reloads(
    c: &Common,
    conf: &KilnConf,
    admin: &mut Conn,
    count: usize,
    rebuild: bool,
    base: usize,
) -> anyhow::Result<(usize, u64)> {
    let mut failed = 0;
    let mut generation = 0;
    let mut next = conf.clone();
    for i in 0..count {
        if rebuild {
            next.wait_timeout = if (base + i).is_multiple_of(2) {
                "3s"
            } else {
                "2s"
            };
        } else {
            next.greeting = format!("Hello from reload {}", base + i);
        }
        next.write(c, "memory")?;
        let reply = admin.post("/admin/reload").await?;
        if reply.status == 200 {
            let body: Value = serde_json::from_slice(&reply.body)?;
            generation = body["generation"].as_u64().unwrap_or(0);
        } else {
            failed += 1;
        }
    }
    Ok((failed, generation))
}

async fn memory(c: &Common, hot: usize, rebuild: usize) -> anyhow::Result<()> {
    let pg = connect_pg(c, &c.pg_db).await?;
    let mut runs = Vec::new();
    for round in 0..c.runs {
        let conf = KilnConf::new(2)?.postgres(c.pg_url(c.pg_addr), 8, 8);
        let mut server = conf.start(c, "memory", Some(&all_cpus()))?;
        server.wait_accepting(conf.addr(), Duration::from_secs(30))?;
        let mut admin = Conn::connect(conf.admin()).await?;
        let mut client = Conn::connect(conf.addr()).await?;
        let settle = async |client: &mut Conn| -> anyhow::Result<()> {
            // Let replaced generations drain, and touch the app once.
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.get("/").await?;
            Ok(())
        };
        let rss_start = server.rss_kib()?;
        // Warm the allocator and the reload path before the baseline.
        reloads(c, &conf, &mut admin, 20, false, 0).await?;
        reloads(c, &conf, &mut admin, 4, true, 0).await?;
        settle(&mut client).await?;
        let rss_before_hot = server.rss_kib()?;
        let pg_before = backends(&pg, &c.pg_db).await?;
        let (hot_failed, _) = reloads(c, &conf, &mut admin, hot, false, 20).await?;
        settle(&mut client).await?;
        let rss_after_hot = server.rss_kib()?;
        let (rebuild_failed, last_generation) =
            reloads(c, &conf, &mut admin, rebuild, true, 4).await?;
        settle(&mut client).await?;
        let rss_after_rebuild = server.rss_kib()?;
        let pg_after = backends(&pg, &c.pg_db).await?;
        server.stop(Duration::from_secs(3));
        let run = MemoryRun {
            round,
            rss_start_kib: rss_start,
            rss_before_hot_kib: rss_before_hot,
            rss_after_hot_kib: rss_after_hot,
            rss_before_rebuild_kib: rss_after_hot,
            rss_after_rebuild_kib: rss_after_rebuild,
            hot_failed,
            rebuild_failed,
            pg_backends_before: pg_before,
            pg_backends_after: pg_after,
            last_generation,
        };
        eprintln!("memory {run:?}");
        runs.push(run);
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let of = |f: &dyn Fn(&MemoryRun) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let mut table = String::new();
    writeln!(
        table,
        "### Memory across reloads\n\n\
         kiln with 2 workers and a PostgreSQL pool of 8. After start-up, 20 hot-key and 4 pool-rebuild reloads warm the \
         allocator; then RSS (from `/proc/PID/status`) before and after {hot} hot-key reloads (`app.greeting`), \
         then after {rebuild} pool-rebuild reloads (`pools.main.wait_timeout`; each opens and pings 8 new connections and \
         closes the old pool). 300 ms of quiet before each reading. {} rounds; median (min–max).\n",
        c.runs
    )?;
    writeln!(
        table,
        "| step | RSS, MiB | growth, MiB | failed reloads | PostgreSQL backends after |\n|---|---|---|---|---|"
    )?;
    writeln!(
        table,
        "| right after start | {} | | | |",
        show(&of(&|r| mib(r.rss_start_kib)), 2)
    )?;
    writeln!(
        table,
        "| baseline (after warm-up reloads) | {} | | | {} |",
        show(&of(&|r| mib(r.rss_before_hot_kib)), 2),
        show(&of(&|r| r.pg_backends_before as f64), 0)
    )?;
    writeln!(
        table,
        "| after {hot} hot-key reloads | {} | **{}** | {} | |",
        show(&of(&|r| mib(r.rss_after_hot_kib)), 2),
        show(
            &of(&|r| mib(r.rss_after_hot_kib) - mib(r.rss_before_hot_kib)),
            2
        ),
        runs.iter().map(|r| r.hot_failed).sum::<usize>()
    )?;
    writeln!(
        table,
        "| after {rebuild} pool-rebuild reloads | {} | **{}** | {} | {} |",
        show(&of(&|r| mib(r.rss_after_rebuild_kib)), 2),
        show(
            &of(&|r| mib(r.rss_after_rebuild_kib) - mib(r.rss_before_rebuild_kib)),
            2
        ),
        runs.iter().map(|r| r.rebuild_failed).sum::<usize>(),
        show(&of(&|r| r.pg_backends_after as f64), 0)
    )?;
    let raw = json!({"runs": runs});
    c.save("memory", &raw, &table)
}

// === report ===

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "n/a".to_owned())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.0} GiB", kib / 1048576.0),
        );
    format!(
        "| | |\n|---|---|\n| CPU | {model}, {cpus} vCPU |\n| memory | {memory} |\n| kernel | {} |\n| rustc | {} |\n| PostgreSQL | {} |\n| wrk | {} |\n| oha | {} |\n",
        command_line("uname", &["-sr"]),
        command_line("rustc", &["--version"]),
        command_line("psql", &["--version"]),
        Command::new("wrk")
            .arg("-v")
            .output()
            .ok()
            .and_then(
                |o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l
                    .split(" [")
                    .next()
                    .unwrap_or(l)
                    .to_owned())
            )
            .unwrap_or_else(|| "n/a".to_owned()),
        command_line("oha", &["--version"]),
    )
}

/// Criterion's estimates for `config_read`, as a table (ns per read).
fn criterion_table(dir: &Path) -> anyhow::Result<String> {
    let group = dir.join("config_read");
    let mut rows: BTreeMap<(String, String), (f64, f64, f64)> = BTreeMap::new();
    let mut stack = vec![group.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    let bench: Value = serde_json::from_str(&std::fs::read_to_string(
                        path.join("benchmark.json"),
                    )?)?;
                    let est: Value = serde_json::from_str(&std::fs::read_to_string(
                        path.join("estimates.json"),
                    )?)?;
                    let m = &est["median"];
                    rows.insert(
                        (
                            bench["function_id"].as_str().unwrap_or("?").to_owned(),
                            bench["value_str"].as_str().unwrap_or("?").to_owned(),
                        ),
                        (
                            m["point_estimate"].as_f64().unwrap_or(f64::NAN),
                            m["confidence_interval"]["lower_bound"]
                                .as_f64()
                                .unwrap_or(f64::NAN),
                            m["confidence_interval"]["upper_bound"]
                                .as_f64()
                                .unwrap_or(f64::NAN),
                        ),
                    );
                } else if path
                    .file_name()
                    .is_some_and(|n| n != "report" && n != "base")
                {
                    stack.push(path);
                }
            }
        }
    }
    if rows.is_empty() {
        bail!("no criterion results under {}", group.display());
    }
    let columns = [
        "readers=1,writer=none",
        "readers=2,writer=none",
        "readers=1,writer=1000/s",
        "readers=2,writer=1000/s",
    ];
    let mut table = String::new();
    writeln!(
        table,
        "### Config read cost (criterion)\n\n\
         One read = get at the current configuration and touch a field, as a request does. Time per read \
         as one reader thread sees it (criterion's median over 30 samples, 95% confidence interval in brackets), \
         with 1 or 2 reader threads and with or without a writer storing a new configuration 1,000 times a second.\n"
    )?;
    writeln!(
        table,
        "| mechanism | 1 reader, ns | 2 readers, ns | 1 reader + writer, ns | 2 readers + writer, ns |\n|---|---|---|---|---|"
    )?;
    for name in kiln_bench::CONFIG_READ_MECHANISMS {
        let cells: Vec<String> = columns
            .iter()
            .map(|col| {
                rows.get(&(name.to_owned(), (*col).to_owned()))
                    .or_else(|| rows.get(&(name.to_owned(), col.replace('/', "_"))))
                    .map_or_else(
                        || "n/a".to_owned(),
                        |(m, lo, hi)| format!("{m:.1} ({lo:.1}–{hi:.1})"),
                    )
            })
            .collect();
        writeln!(table, "| `{name}` | {} |", cells.join(" | "))?;
    }
    Ok(table)
}

fn report(c: &Common, criterion: &Path) -> anyhow::Result<()> {
    let mut out = String::new();
    writeln!(out, "## Machine\n\n{}", machine())?;
    match criterion_table(criterion) {
        Ok(t) => writeln!(out, "{t}")?,
        Err(e) => writeln!(out, "### Config read cost\n\nnot measured: {e}\n")?,
    }
    for name in [
        "overhead",
        "instructions",
        "coldstart",
        "startup",
        "reload",
        "save-to-serve",
        "anchors",
        "memory",
    ] {
        match std::fs::read_to_string(c.out.join(format!("{name}.md"))) {
            Ok(t) => writeln!(out, "{t}")?,
            Err(_) => writeln!(out, "### {name}\n\nnot measured in this run.\n")?,
        }
    }
    let path = c.out.join("report.md");
    std::fs::write(&path, &out)?;
    println!("{out}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
