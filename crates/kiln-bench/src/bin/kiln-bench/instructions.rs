//! Instructions per request under `valgrind --tool=callgrind`: a count of
//! the server's own work (user space, every thread) that does not move with
//! whatever else the machine is doing, unlike req/s. The kernel's share of a
//! loopback request (most of it) is not counted.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_bench::http::get_once;
use kiln_bench::process::{Server, free_port};
use serde::Serialize;
use serde_json::json;

use crate::{Common, KilnConf, runtime, wrk};

/// What runs under callgrind.
enum Variant {
    /// kiln with this `server.header_read_timeout`, these other `[server]`
    /// lines, and `log.access`.
    Kiln(&'static str, &'static str, bool),
    /// A baseline program from `--bin-dir`.
    Baseline(&'static str),
}

#[derive(Debug, Serialize)]
struct Count {
    variant: &'static str,
    requests: u64,
    instructions: u64,
    per_request: f64,
}

/// Counts each variant's instructions over `seconds` of wrk (8 keep-alive
/// connections) after 2 s of warm-up, and writes the `instructions` table.
pub(crate) fn instructions(c: &Common, seconds: u64) -> anyhow::Result<()> {
    // (variant, the program for a baseline or kiln's header_read_timeout)
    let variants = [
        ("kiln, 1 worker", Variant::Kiln("30s", "", false)),
        (
            "kiln, 1 worker, header_read_timeout = 0s",
            Variant::Kiln("0s", "", false),
        ),
        (
            "kiln, 1 worker, http2 = false",
            Variant::Kiln("30s", "http2 = false\n", false),
        ),
        (
            "kiln, 1 worker, request_metrics = false",
            Variant::Kiln("30s", "request_metrics = false\n", false),
        ),
        (
            "kiln, 1 worker, log.access = true",
            Variant::Kiln("30s", "", true),
        ),
        ("actix-web, 1 worker", Variant::Baseline("actix")),
        ("bare axum, 1 thread", Variant::Baseline("bare")),
    ];
    let mut counts = Vec::new();
    for (variant, program) in variants {
        let out = c.tmp(&format!("callgrind-{}.out", counts.len()));
        let mut args = vec![
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        let addr = match program {
            Variant::Kiln(timeout, extra, access_log) => {
                let mut conf = KilnConf::new(1)?;
                conf.header_read_timeout = timeout;
                conf.server_extra = extra;
                conf.access_log = access_log;
                conf.log_level = "warn";
                conf.write(c, "instructions")?;
                args.push(c.bin("kiln").display().to_string());
                args.push(c.tmp("instructions.toml").display().to_string());
                conf.addr()
            }
            Variant::Baseline(program) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                args.extend([
                    c.bin(program).display().to_string(),
                    "--listen".to_owned(),
                    addr.to_string(),
                ]);
                addr
            }
        };
        let server = Server::start("valgrind".as_ref(), &args, &[], Some(&c.server_cpus), None)?;
        wait_serving(addr, Duration::from_secs(120))?;
        wrk(c, addr, 2, 8)?;
        callgrind_control(&server, "-z")?;
        let run = wrk(c, addr, seconds, 8)?;
        callgrind_control(&server, "-d")?;
        server.stop(Duration::from_secs(10));
        let instructions = dumped_instructions(&out)?;
        let count = Count {
            variant,
            requests: run.requests,
            instructions,
            per_request: instructions as f64 / run.requests.max(1) as f64,
        };
        eprintln!("instructions {count:?}");
        counts.push(count);
    }

    let bare = counts.last().map_or(f64::NAN, |b| b.per_request);
    let mut table = String::new();
    writeln!(
        table,
        "### Instructions per request (callgrind)\n\n\
         Each server under `valgrind --tool=callgrind`, pinned to CPU {}; wrk (8 keep-alive connections) \
         for 2 s to warm up, then the counters are zeroed, wrk runs {seconds} s, and the count is dumped: \
         every user-space instruction of every server thread, divided by the requests wrk completed. \
         Repeatable to about 1% from run to run on the same binaries; the kernel's part of each request \
         (most of its CPU time on loopback, see the overhead table) is not in it.\n",
        c.server_cpus
    )?;
    writeln!(
        table,
        "| variant | requests | instructions per request | vs bare axum |\n|---|---|---|---|"
    )?;
    for count in &counts {
        writeln!(
            table,
            "| {} | {} | {:.0} | **{:.3}x** |",
            count.variant,
            count.requests,
            count.per_request,
            count.per_request / bare
        )?;
    }
    c.save("instructions", &json!({"counts": counts}), &table)
}

/// The instruction count of the dump `callgrind_control -d` wrote for the
/// run whose output file is `out`.
pub(crate) fn dumped_instructions(out: &std::path::Path) -> anyhow::Result<u64> {
    let dump =
        std::fs::read_to_string(out.with_extension("out.1")).context("callgrind wrote no dump")?;
    Ok(dump
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .context("no summary line in the callgrind dump")?
        .trim()
        .parse()?)
}

pub(crate) fn callgrind_control(server: &Server, flag: &str) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .arg(flag)
        .arg(server.pid().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run callgrind_control (apt-get install valgrind)")?;
    if !status.success() {
        bail!("callgrind_control {flag} failed: {status}");
    }
    Ok(())
}

/// Waits until `GET /` answers (valgrind starts a program slowly).
fn wait_serving(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let rt = runtime()?;
    while started.elapsed() < limit {
        if rt
            .block_on(get_once(addr, "/"))
            .is_ok_and(|r| r.status == 200)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing answered on {addr} within {limit:?} under valgrind")
}
