//! `reload`: reloads under a steady load, the reload windows against the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kiln_bench::http::Conn;
use kiln_bench::load;
use kiln_bench::stats::{Summary, quantile, show};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Common, KilnConf, all_cpus, pin_self, runtime};

/// One reload: when it was asked for, answered, and seen.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReloadEvent {
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
    /// The control burst's window: as long as this reload's, no reload in it.
    control_s: (f64, f64),
}

/// The in-window burst: its connections and rate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Burst {
    pub(crate) connections: usize,
    pub(crate) rate: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ReloadRun {
    mode: &'static str,
    round: usize,
    target_rate: f64,
    oha_rate: f64,
    oha: load::Oha,
    probe_requests: usize,
    probe_failed: usize,
    probe_stale_after_answer: usize,
    probe_generation_went_back: usize,
    /// The steady probe alone, inside reload windows and outside them.
    probe_p99_in_ms: f64,
    probe_p99_out_ms: f64,
    probe_in_samples: usize,
    burst_requests: usize,
    /// Every request (steady probe and bursts) sent inside a reload window,
    /// and inside a control window.
    p99_in_ms: f64,
    in_requests: usize,
    p99_control_ms: f64,
    control_requests: usize,
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
pub(crate) fn half_saturation(c: &Common, rate: Option<f64>) -> anyhow::Result<f64> {
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

/// How many reloads of each kind a run makes, over how many seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) hot: usize,
    pub(crate) rebuild: usize,
    pub(crate) seconds: u64,
}

pub(crate) fn reload(
    c: &Common,
    rate: f64,
    schedule: Schedule,
    burst: Burst,
    workers: usize,
) -> anyhow::Result<()> {
    pin_self(&c.client_cpus);
    let seconds = schedule.seconds;
    let mut runs = Vec::new();
    for round in 0..c.runs {
        for (mode, reloads) in [
            ("hot key", schedule.hot),
            ("pool rebuild", schedule.rebuild),
        ] {
            let run = runtime()?.block_on(reload_run(
                c, mode, round, rate, reloads, seconds, burst, workers,
            ))?;
            eprintln!(
                "reload round {round} {mode}: oha {:.0} req/s, failed {} + probe failed {}, p99 in {:.3} ms ({} requests) / control {:.3} ms ({}), reload median {:.1} ms max {:.1} ms, visible median {:.2} ms max {:.2} ms, wave after/before p99 {:.2}/{:.2} ms",
                run.oha.rps,
                run.oha.failed,
                run.probe_failed,
                run.p99_in_ms,
                run.in_requests,
                run.p99_control_ms,
                run.control_requests,
                run.reload_latency_median_ms,
                run.reload_latency_max_ms,
                run.visible_median_ms,
                run.visible_max_ms,
                run.wave_after_p99_ms,
                run.wave_before_p99_ms,
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
         for {} s, {:.0} req/s in all offered (`--rate`, by default half of kiln's 1-worker saturation from the overhead table; oha's achieved rate is in `reload.json`). \
         During it, {} hot-key or {} pool-rebuild `POST /admin/reload` over {seconds} s, each after an edit of the config file: \
         `app.greeting` (hot key) or `pools.main.wait_timeout` (the pool is rebuilt: 8 new connections opened and pinged). \
         A reload's window = from sending it to its answer; during each, a burst of `GET /` at {:.0} req/s more \
         (open-loop, {} keep-alive connections of its own) makes the windows dense. \
         The same burst, as long, runs again in a control window half a reload spacing after each answer, with no reload in it: \
         \"p99 in window\" and \"p99 control\" are over every request (probe and burst) sent inside the reload windows and inside the \
         control windows, the offered load being the same in both; \"in-window requests\" is the fewest of any run. \
         \"visible\" = from sending the reload to the first answer received that carries the new generation \
         (from the probe, or from a connection polling `GET /` back to back; client-side, so it includes the \
         load generator's own queueing on its busy CPU). oha's requests cut by its own `-z` deadline are not failures. Around each reload, a wave of 8 concurrent `GET /notes?limit=20` \
         (keep-alive) is sent a fifth of the reload spacing before it (100 ms for rebuilds, 20 ms for hot keys) and right after its answer. {} rounds, modes interleaved; median (min–max).\n",
        c.server_cpus,
        c.client_cpus,
        seconds + 2,
        rate,
        schedule.hot,
        schedule.rebuild,
        burst.rate,
        burst.connections,
        c.runs
    )?;
    writeln!(
        table,
        "| reload kind | failed requests (oha + probe + burst) | requests served | in-window requests | p99 in window, ms | p99 control, ms | in / control | reload latency median, ms | max, ms | visible median, ms | max, ms | `/notes` wave after swap / before, p99 |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
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
            .map(|r| r.oha.requests + (r.probe_requests + r.burst_requests) as u64)
            .sum();
        let fewest_in = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.in_requests)
            .min()
            .unwrap_or(0);
        let in_out = of(&|r| r.p99_in_ms / r.p99_control_ms);
        let waves = of(&|r| r.wave_after_p99_ms / r.wave_before_p99_ms);
        writeln!(
            table,
            "| {mode} | **{failed}** | {served} | {fewest_in} | {} | {} | **{}x** | {} | {} | **{}** | {} | **{}x** |",
            show(&of(&|r| r.p99_in_ms), 3),
            show(&of(&|r| r.p99_control_ms), 3),
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
                   "fewest_in_window": fewest_in, "p99_in_over_control": Summary::of(&in_out),
                   "wave_after_over_before": Summary::of(&waves)}),
        );
    }
    let total_reloads = runs.iter().map(|r| r.events.len()).sum::<usize>();
    let ok_reloads = runs.iter().map(|r| r.reloads_ok).sum::<usize>();
    let stale = runs
        .iter()
        .map(|r| r.probe_stale_after_answer + r.probe_generation_went_back)
        .sum::<usize>();
    let achieved: Vec<f64> = runs.iter().map(|r| r.oha.rps / r.oha_rate).collect();
    writeln!(
        table,
        "\noha achieved {}x the rate it was asked for (all runs). \
         {ok_reloads} of {total_reloads} reloads answered 200. Probe requests sent after a reload's answer that still saw the old generation, \
         or a connection seeing a generation go backwards: {stale}.",
        show(&achieved, 2),
    )?;
    let raw = json!({"rate": rate, "burst_rate": burst.rate, "burst_connections": burst.connections,
                     "summary": summary, "runs": runs});
    c.save("reload", &raw, &table)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn reload_run(
    c: &Common,
    mode: &'static str,
    round: usize,
    rate: f64,
    reloads: usize,
    seconds: u64,
    burst: Burst,
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
    let mut burst_conns = Vec::new();
    for _ in 0..burst.connections {
        burst_conns.push(Conn::connect(addr).await?);
    }
    let mut bursts = Vec::new();
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
                tokio::time::sleep_until(tokio::time::Instant::from_std(slot + spacing / 5)).await;
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
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let reloading = async {
                    let reply = admin_conn.post("/admin/reload").await;
                    let answered = Instant::now();
                    drop(tx);
                    (reply, answered)
                };
                let stop = async {
                    let _ = rx.await;
                };
                let ((reply, answered), in_window) = tokio::join!(
                    reloading,
                    load::burst(&mut burst_conns, burst.rate, start, spec.marker, stop)
                );
                let reply = reply?;
                bursts.extend(in_window);
                let wave_after = notes_wave(&wave_conns).await;
                let visible_ms = poller.await.unwrap_or(None);
                // The same burst for as long, with no reload, once this one has settled.
                let control = answered + spacing / 2;
                load::until(control, || false).await;
                let end = control + (answered - sent);
                let (control_start, control_end) =
                    ((control - start).as_secs_f64(), (end - start).as_secs_f64());
                bursts.extend(
                    load::burst(&mut burst_conns, burst.rate, start, spec.marker, async {
                        load::until(end, || false).await;
                    })
                    .await,
                );
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
                    control_s: (control_start, control_end),
                });
            }
            anyhow::Ok(events)
        })
        .await?;
    let (probe, oha) = load.finish().await?;
    let rss_after = server.rss_kib()?;
    server.stop(Duration::from_secs(3));

    let windows: Vec<(f64, f64)> = events.iter().map(|e| (e.sent_s, e.answered_s)).collect();
    let controls: Vec<(f64, f64)> = events.iter().map(|e| e.control_s).collect();
    let (probe_p99_in, probe_p99_out, probe_in) = load::p99_in_out(&probe, &windows);
    let burst_requests = bursts.len();
    let samples = [probe, bursts].concat();
    let (p99_in, in_requests) = load::p99_within(&samples, &windows);
    let (p99_control, control_requests) = load::p99_within(&samples, &controls);
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
        oha_rate: spec.oha_rate(),
        probe_requests: samples.len() - burst_requests,
        probe_failed: samples.iter().filter(|s| !s.ok).count(),
        probe_stale_after_answer: load::stale_after_answer(&samples, &answered),
        probe_generation_went_back: load::went_back(&samples),
        probe_p99_in_ms: probe_p99_in,
        probe_p99_out_ms: probe_p99_out,
        probe_in_samples: probe_in,
        burst_requests,
        p99_in_ms: p99_in,
        in_requests,
        p99_control_ms: p99_control,
        control_requests,
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
pub(crate) async fn notes_wave(conns: &[Rc<tokio::sync::Mutex<Conn>>]) -> Vec<f64> {
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
