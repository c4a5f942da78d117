//! `memory`: resident memory across many reloads, hot and pool-rebuilding.

use std::fmt::Write as _;
use std::time::Duration;

use kiln_bench::http::Conn;
use kiln_bench::stats::show;
use serde::Serialize;
use serde_json::{Value, json};

use crate::coldstart::backends;
use crate::setup_db::connect_pg;
use crate::{Common, KilnConf, all_cpus};

#[derive(Debug, Serialize)]
pub(crate) struct MemoryRun {
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

pub(crate) async fn reloads(
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

pub(crate) async fn memory(c: &Common, hot: usize, rebuild: usize) -> anyhow::Result<()> {
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
