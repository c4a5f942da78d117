//! `startup`: how start-up time grows with pools, workers and database latency.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use kiln_bench::process::{Server, free_port, ready_ms};
use kiln_bench::stats::show;
use serde::Serialize;
use serde_json::json;

use crate::{Common, KilnConf, all_cpus};

#[derive(Debug, Serialize)]
pub(crate) struct StartRun {
    variant: String,
    warm: usize,
    delay_ms: u64,
    round: usize,
    accepting_ms: f64,
    ready_line_ms: f64,
}

pub(crate) fn startup(c: &Common, delay_ms: u64) -> anyhow::Result<()> {
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
