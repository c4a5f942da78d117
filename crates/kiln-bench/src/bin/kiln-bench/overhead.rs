//! `overhead`: kiln against the baselines under wrk, throughput, latency and
//! server CPU per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kiln_bench::process::{Server, free_port};
use kiln_bench::stats::{Summary, show};
use serde::Serialize;
use serde_json::json;

use crate::{Common, KilnConf};

#[derive(Debug, Serialize)]
pub(crate) struct LoadRun {
    pub(crate) variant: String,
    pub(crate) round: usize,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
    pub(crate) non_2xx: u64,
    pub(crate) requests: u64,
    pub(crate) server_cpu_us_per_request: f64,
}

pub(crate) fn overhead(c: &Common, seconds: u64, connections: usize) -> anyhow::Result<()> {
    let variants = [
        ("kiln, 1 worker", "kiln", 1),
        (
            "kiln, 1 worker, header_read_timeout = 0s",
            "kiln-no-header-timeout",
            1,
        ),
        ("kiln, 1 worker, http2 = false", "kiln-http1-only", 1),
        (
            "kiln, 1 worker, request_metrics = false",
            "kiln-no-metrics",
            1,
        ),
        ("kiln, 1 worker, log.access = true", "kiln-access-log", 1),
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
                "kiln"
                | "kiln-reuse-port"
                | "kiln-no-header-timeout"
                | "kiln-http1-only"
                | "kiln-no-metrics"
                | "kiln-access-log" => {
                    let mut conf = KilnConf::new(threads)?;
                    conf.reuse_port = program == "kiln-reuse-port";
                    if program == "kiln-no-header-timeout" {
                        conf.header_read_timeout = "0s";
                    }
                    if program == "kiln-http1-only" {
                        conf.server_extra = "http2 = false\n";
                    }
                    if program == "kiln-no-metrics" {
                        conf.server_extra = "request_metrics = false\n";
                    }
                    conf.access_log = program == "kiln-access-log";
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
         kiln enforces `server.header_read_timeout = \"30s\"` by default (a sweep per worker); \
         the `0s` row turns it off, as bare axum (`axum::serve`) has none."
    )?;
    let raw =
        json!({"runs": runs, "ratios": ratios, "seconds": seconds, "connections": connections});
    c.save("overhead", &raw, &table)
}

/// Runs wrk against `addr` for `seconds`, pinned to the client CPUs.
pub(crate) fn wrk(
    c: &Common,
    addr: SocketAddr,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<LoadRun> {
    wrk_path(c, addr, "/", seconds, connections)
}

/// [`wrk`] on `GET path`.
pub(crate) fn wrk_path(
    c: &Common,
    addr: SocketAddr,
    path: &str,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<LoadRun> {
    let output = Command::new("taskset")
        .args(["-c", &c.client_cpus, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(format!("http://{addr}{path}"))
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

pub(crate) fn parse_wrk(text: &str) -> anyhow::Result<LoadRun> {
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
