//! `restart`: a new process taking over under load, kiln against the
//! anchors, measured as the reload anchors are (see [`anchors`](crate::anchors)):
//! every server answers `GET /` with a greeting ending in `rev N`, and each
//! restart starts the new process on the next N, so the first answer
//! carrying it is the first answer from the new process.

use std::fmt::Write as _;

use kiln_bench::kernel::Drops;
use kiln_bench::stats::{quantile, show};

use crate::Common;
use crate::anchors::{Anchor, AnchorRun, Capped, compare, raw, versions};

/// Runs `restarts` restarts over `seconds` under load at `rate` (capped at
/// half of each server's own saturation), for kiln, nginx and the axum
/// killed and started again in turn, over `c.runs` rounds, and writes the
/// `restart` table.
pub(crate) fn restart(c: &Common, rate: f64, restarts: usize, seconds: u64) -> anyhow::Result<()> {
    let (capped, runs) = compare(c, "restart", &Anchor::RESTARTS, rate, restarts, seconds)?;
    let versions = versions();
    c.save(
        "restart",
        &raw(rate, &capped, &runs, &versions),
        &table(c, rate, &capped, &runs, restarts, seconds, &versions)?,
    )
}

fn table(
    c: &Common,
    rate: f64,
    capped: &Capped,
    runs: &[AnchorRun],
    restarts: usize,
    seconds: u64,
    versions: &serde_json::Value,
) -> anyhow::Result<String> {
    let mut table = String::new();
    writeln!(
        table,
        "### Restarts under load: kiln, nginx's binary upgrade and a restarted axum\n\n\
         Each server answers `GET /` with a greeting ending in `rev N`; {restarts} restarts over {seconds} s (one at a time: \
         each waits for the previous one to be done), each starting the new process with the next N, while `oha -q` \
         (32 keep-alive connections) and the driver's probe (10 keep-alive connections) load it for {} s. Servers pinned to \
         CPU {} (a new process inherits it), load to CPU {}. The offered rate is {rate:.0} req/s, or half of the server's own \
         saturation (wrk, 64 connections, 3 s, measured first) when that is lower; \"load\" is the rate achieved. \
         \"new process serving\" = from the restart request to the first answer carrying the new N (probe, or a connection \
         polling `GET /` back to back), the new process's first answer as a client sees it; \"old process after return\" = \
         probe requests sent after the restart command returned that were still answered by the old process (draining, \
         not failed); \"in window\" = from the restart request until both the command returned and the new process \
         answered. Kernel counters: `nstat` deltas over each run's load (ListenOverflows / ListenDrops / TCPAbortOnClose, \
         summed over rounds; the machine's, so anything else running adds to them). {} rounds, servers interleaved; median \
         (min–max) over rounds, failures summed. {}.\n",
        seconds + 2,
        c.server_cpus,
        c.client_cpus,
        c.runs,
        versions["nginx"].as_str().unwrap_or("?"),
    )?;
    writeln!(
        table,
        "| server | how it restarts | load, req/s | failed requests | served | new process seen | new process serving, median ms | max, ms | p99 in window, ms | p99 outside, ms | old process after return | kernel drops |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for &(anchor, _, _) in capped {
        let mine: Vec<&AnchorRun> = runs.iter().filter(|r| r.anchor == anchor).collect();
        let of =
            |f: &dyn Fn(&AnchorRun) -> f64| -> Vec<f64> { mine.iter().map(|r| f(r)).collect() };
        let visible = |q: f64| -> Vec<f64> {
            mine.iter()
                .filter_map(|r| quantile(&r.visible(), q))
                .collect()
        };
        let kernel = Drops::sum(mine.iter().map(|r| &r.kernel));
        let (done, planned) = (
            mine.iter().map(|r| r.changes()).sum::<usize>(),
            mine.len() * restarts,
        );
        let late = if done < planned {
            format!(" ({planned} planned: the rest ran late)")
        } else {
            String::new()
        };
        writeln!(
            table,
            "| {} | {} | {} | **{}** | {} | {} of {done}{late} | **{}** | {} | {} | {} | {} | {} / {} / {} |",
            anchor.name(),
            anchor.how(),
            show(&of(&|r| r.achieved_rps), 0),
            mine.iter().map(|r| r.failed()).sum::<u64>(),
            mine.iter().map(|r| r.served()).sum::<u64>(),
            mine.iter().map(|r| r.reloads_seen).sum::<usize>(),
            show(&visible(0.5), 1),
            show(&visible(1.0), 1),
            show(&of(&|r| r.p99_in_ms), 2),
            show(&of(&|r| r.p99_out_ms), 2),
            mine.iter().map(|r| r.old_after_return).sum::<usize>(),
            kernel.listen_overflows,
            kernel.listen_drops,
            kernel.abort_on_close,
        )?;
    }
    Ok(table)
}
