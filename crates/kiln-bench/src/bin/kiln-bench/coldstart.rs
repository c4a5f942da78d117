//! `coldstart`: the first waves of traffic after start-up, kiln warm against a
//! lazily initialised server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kiln_bench::http::get_once;
use kiln_bench::process::{Server, free_port};
use kiln_bench::stats::{Summary, quantile, show};
use serde::Serialize;
use serde_json::json;

use crate::setup_db::connect_pg;
use crate::{Common, KilnConf, all_cpus};

#[derive(Debug, Serialize)]
pub(crate) struct ColdRun {
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
pub(crate) async fn wave(addr: SocketAddr, path: &str, width: usize) -> Vec<Option<f64>> {
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

pub(crate) async fn backends(pg: &tokio_postgres::Client, db: &str) -> anyhow::Result<i64> {
    Ok(pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await?
        .get(0))
}

pub(crate) async fn coldstart(c: &Common, pool: usize, waves: usize) -> anyhow::Result<()> {
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
