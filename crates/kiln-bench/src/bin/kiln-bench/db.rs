//! `db`: the database path. `GET /q` (`pool.get()` + a prepared `SELECT 1`
//! on PostgreSQL) in kiln against bare axum + deadpool-postgres and
//! actix-web + deadpool-postgres, same pool size, every pool warm before
//! the socket is bound; throughput, latency, server CPU per request and
//! checkout-wait percentiles, then user-space instructions per request
//! under callgrind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use kiln_bench::dbq::Waits;
use kiln_bench::http::get_once;
use kiln_bench::process::{Server, free_port};
use kiln_bench::stats::{Summary, show};
use serde::Serialize;
use serde_json::json;

use crate::instructions::{callgrind_control, dumped_instructions};
use crate::overhead::wrk_path;
use crate::{Common, KilnConf, runtime};

/// Who serves `GET /q`.
#[derive(Clone, Copy)]
enum Kind {
    /// `dbq --server kiln`.
    Kiln,
    /// `dbq --server axum`.
    Axum,
    /// `dbq --server actix`.
    Actix,
}

const AXUM: &str = "bare axum + deadpool-postgres";
const ACTIX: &str = "actix-web + deadpool-postgres";

/// (label, server, workers or threads)
const VARIANTS: [(&str, Kind, usize); 6] = [
    ("kiln", Kind::Kiln, 1),
    (AXUM, Kind::Axum, 1),
    (ACTIX, Kind::Actix, 1),
    ("kiln", Kind::Kiln, 2),
    (AXUM, Kind::Axum, 2),
    (ACTIX, Kind::Actix, 2),
];

#[derive(Debug, Serialize)]
struct DbRun {
    variant: String,
    threads: usize,
    round: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_us_per_request: f64,
    waits: Waits,
}

#[derive(Debug, Serialize)]
struct Count {
    variant: String,
    threads: usize,
    requests: u64,
    per_request: f64,
}

/// A server under test, listening on `addr`.
fn start(
    c: &Common,
    kind: Kind,
    threads: usize,
    pool: usize,
    valgrind: Option<&[String]>,
) -> anyhow::Result<(Server, SocketAddr)> {
    let mut args = Vec::new();
    let addr = match kind {
        Kind::Kiln => {
            let mut conf = KilnConf::new(threads)?.postgres(c.pg_url(c.pg_addr), pool, pool);
            conf.warm_requests = vec!["/q".to_owned()];
            conf.log_level = "warn";
            conf.write(c, "db")?;
            args.extend(["--server", "kiln", "--config"].map(str::to_owned));
            args.push(c.tmp("db.toml").display().to_string());
            conf.addr()
        }
        Kind::Axum | Kind::Actix => {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let server = if matches!(kind, Kind::Axum) {
                "axum"
            } else {
                "actix"
            };
            args.extend(["--server", server, "--listen"].map(str::to_owned));
            args.push(addr.to_string());
            args.extend(["--url".to_owned(), c.pg_url(c.pg_addr)]);
            args.extend(["--max-size".to_owned(), pool.to_string()]);
            args.extend(["--threads".to_owned(), threads.to_string()]);
            addr
        }
    };
    let program = c.bin("dbq").display().to_string();
    let server = match valgrind {
        Some(tool) => {
            let mut all = tool.to_vec();
            all.push(program);
            all.extend(args);
            Server::start("valgrind".as_ref(), &all, &[], Some(&c.server_cpus), None)?
        }
        None => Server::start(
            program.as_ref(),
            &args,
            &[],
            Some(&c.server_cpus),
            Some(&c.tmp("db.log")),
        )?,
    };
    Ok((server, addr))
}

/// `GET path` once; its body.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let reply = runtime()?.block_on(get_once(addr, path))?;
    if reply.status != 200 {
        bail!("GET {path} answered {}", reply.status);
    }
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

/// Waits until `GET /q` answers 200 (valgrind starts a program slowly).
fn wait_serving(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if get(addr, "/q").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("GET /q did not answer on {addr} within {limit:?}")
}

/// The 1-minute load average, to say how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

pub(crate) fn db(
    c: &Common,
    seconds: u64,
    connections: usize,
    pool: usize,
    instruction_seconds: u64,
) -> anyhow::Result<()> {
    let load_before = load_average();
    let mut runs = Vec::new();
    for round in 0..c.runs {
        for (variant, kind, threads) in VARIANTS {
            let (mut server, addr) = start(c, kind, threads, pool, None)?;
            server.wait_accepting(addr, Duration::from_secs(30))?;
            wrk_path(c, addr, "/q", 1, connections)?;
            get(addr, "/wait")?; // forget the warm-up's waits
            let cpu_before = server.cpu_ns()?;
            let run = wrk_path(c, addr, "/q", seconds, connections)?;
            let cpu = server.cpu_ns()?.saturating_sub(cpu_before);
            let waits: Waits = serde_json::from_str(&get(addr, "/wait")?)?;
            let run = DbRun {
                variant: variant.to_owned(),
                threads,
                round,
                rps: run.rps,
                p50_ms: run.p50_ms,
                p99_ms: run.p99_ms,
                errors: run.errors + run.non_2xx,
                cpu_us_per_request: cpu as f64 / 1000.0 / run.requests.max(1) as f64,
                waits,
            };
            eprintln!(
                "db round {round} {variant}, {threads}: {:.0} req/s, p99 {:.3} ms, CPU {:.2} us/request, wait p99 {} us",
                run.rps, run.p99_ms, run.cpu_us_per_request, run.waits.p99_us
            );
            runs.push(run);
            server.stop(Duration::from_secs(3));
        }
    }
    let load_after = load_average();

    let mut counts = Vec::new();
    if instruction_seconds > 0 {
        for (variant, kind, threads) in VARIANTS.into_iter().filter(|v| v.2 == 1) {
            let out = c.tmp(&format!("callgrind-db-{}.out", counts.len()));
            let tool = [
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}", out.display()),
            ];
            let (server, addr) = start(c, kind, threads, pool, Some(&tool))?;
            wait_serving(addr, Duration::from_secs(120))?;
            wrk_path(c, addr, "/q", 2, connections)?;
            callgrind_control(&server, "-z")?;
            let run = wrk_path(c, addr, "/q", instruction_seconds, connections)?;
            callgrind_control(&server, "-d")?;
            server.stop(Duration::from_secs(10));
            let instructions = dumped_instructions(&out)?;
            let count = Count {
                variant: variant.to_owned(),
                threads,
                requests: run.requests,
                per_request: instructions as f64 / run.requests.max(1) as f64,
            };
            eprintln!("db instructions {count:?}");
            counts.push(count);
        }
    }

    let (table, ratios) = table(
        c,
        &runs,
        &counts,
        (seconds, connections, pool),
        [&load_before, &load_after],
    )?;
    let raw = json!({"runs": runs, "ratios": ratios, "instructions": counts, "seconds": seconds,
                     "connections": connections, "pool": pool,
                     "load_average": [load_before, load_after]});
    c.save("db", &raw, &table)
}

fn table(
    c: &Common,
    runs: &[DbRun],
    counts: &[Count],
    (seconds, connections, pool): (u64, usize, usize),
    load: [&str; 2],
) -> anyhow::Result<(String, BTreeMap<String, serde_json::Value>)> {
    let mut table = String::new();
    writeln!(
        table,
        "### The database path: `GET /q` = `pool.get()` + a prepared `SELECT 1`\n\n\
         wrk, 1 thread, {connections} keep-alive connections, {seconds} s per run after 1 s of warm-up; \
         PostgreSQL pool of {pool}, all of it opened and pinged before the socket is bound; \
         server pinned to CPU {}, wrk to CPU {}, PostgreSQL unpinned; {} rounds, variants interleaved. \
         Median (min–max) over rounds; ratios within a round against the anchor with the same thread count. \
         CPU µs/request: every server thread (PostgreSQL's backends not included). \
         Checkout wait: how long `pool.get()` took, µs (median over rounds of each run's percentile). \
         1-minute load average before / after: {} / {}.\n",
        c.server_cpus, c.client_cpus, c.runs, load[0], load[1]
    )?;
    writeln!(
        table,
        "| variant | workers | req/s | p99 ms | errors | req/s vs axum | req/s vs actix | p99 vs axum | CPU µs/request | CPU vs axum | wait p50 / p99 / p99.9, µs |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    let pick = |v: &str, t: usize, f: fn(&DbRun) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.variant == v && r.threads == t)
            .map(f)
            .collect()
    };
    let ratio =
        |a: Vec<f64>, b: Vec<f64>| -> Vec<f64> { a.iter().zip(&b).map(|(a, b)| a / b).collect() };
    let mut ratios = BTreeMap::new();
    for (variant, _, threads) in VARIANTS {
        let vs = |anchor: &str, f: fn(&DbRun) -> f64| {
            ratio(pick(variant, threads, f), pick(anchor, threads, f))
        };
        let rps_axum = vs(AXUM, |r| r.rps);
        let rps_actix = vs(ACTIX, |r| r.rps);
        let p99_axum = vs(AXUM, |r| r.p99_ms);
        let cpu_axum = vs(AXUM, |r| r.cpu_us_per_request);
        ratios.insert(
            format!("{variant}, {threads}"),
            json!({"rps_vs_axum": Summary::of(&rps_axum), "rps_vs_actix": Summary::of(&rps_actix),
                   "p99_vs_axum": Summary::of(&p99_axum), "cpu_vs_axum": Summary::of(&cpu_axum)}),
        );
        let errors: u64 = runs
            .iter()
            .filter(|r| r.variant == variant && r.threads == threads)
            .map(|r| r.errors)
            .sum();
        let median = |f: fn(&DbRun) -> f64| {
            Summary::of(&pick(variant, threads, f)).map_or(f64::NAN, |s| s.median)
        };
        writeln!(
            table,
            "| {variant} | {threads} | {} | {} | {errors} | **{}x** | {}x | {}x | {} | {}x | {:.0} / {:.0} / {:.0} |",
            show(&pick(variant, threads, |r| r.rps), 0),
            show(&pick(variant, threads, |r| r.p99_ms), 3),
            show(&rps_axum, 3),
            show(&rps_actix, 3),
            show(&p99_axum, 2),
            show(&pick(variant, threads, |r| r.cpu_us_per_request), 2),
            show(&cpu_axum, 3),
            median(|r| r.waits.p50_us),
            median(|r| r.waits.p99_us),
            median(|r| r.waits.p999_us),
        )?;
    }
    if !counts.is_empty() {
        let axum = counts
            .iter()
            .find(|n| n.variant == AXUM)
            .map_or(f64::NAN, |n| n.per_request);
        writeln!(
            table,
            "\nUser-space instructions per `GET /q` (every server thread, callgrind, 1 worker, \
             counted over the same wrk load after 2 s of warm-up):\n\n\
             | variant | requests | instructions per request | vs axum |\n|---|---|---|---|"
        )?;
        for n in counts {
            writeln!(
                table,
                "| {} | {} | {:.0} | **{:.3}x** |",
                n.variant,
                n.requests,
                n.per_request,
                n.per_request / axum
            )?;
        }
    }
    Ok((table, ratios))
}
