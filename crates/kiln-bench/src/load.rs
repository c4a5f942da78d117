//! Load while reloads happen: `oha` at a fixed rate on keep-alive
//! connections, plus the driver's own probe, whose every request is timed
//! and tagged with the configuration revision its answer carried. The
//! figures drawn from them (failures, p99 inside and outside reload
//! windows, when a new revision became visible) are the same whether the
//! server is kiln or one of the anchors it is compared with.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::http::{Conn, Reply};
use crate::stats::quantile;

/// Reads the configuration revision an answer was served with.
pub type Marker = fn(&Reply) -> Option<u64>;

/// kiln's revision: the `X-Config-Generation` header.
pub fn generation(reply: &Reply) -> Option<u64> {
    reply.generation
}

/// Any server's revision, from a body that ends in `rev N`: the anchors
/// (and kiln, when compared with them) serve a greeting that says which
/// configuration produced it.
pub fn body_revision(reply: &Reply) -> Option<u64> {
    let body = std::str::from_utf8(&reply.body).ok()?;
    body.trim_end().rsplit_once("rev ")?.1.parse().ok()
}

/// One probe request: when it was sent (since the load started) and how it went.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Seconds since the load started.
    pub sent_s: f64,
    /// From sending to the whole answer.
    pub latency_ms: f64,
    /// A 200 answer arrived.
    pub ok: bool,
    /// The revision the answer carried (0 when none).
    pub revision: u64,
}

impl Probe {
    /// Seconds since the load started when the answer was complete.
    pub fn done_s(&self) -> f64 {
        self.sent_s + self.latency_ms / 1000.0
    }
}

/// What to load and how hard.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The server under load (`GET /`).
    pub addr: SocketAddr,
    /// Requests per second in all, oha and probe together.
    pub rate: f64,
    /// How long the load lasts.
    pub duration: Duration,
    /// CPUs oha is pinned to (a `taskset -c` list).
    pub client_cpus: String,
    /// oha's keep-alive connections.
    pub oha_connections: usize,
    /// The probe's keep-alive connections.
    pub probe_connections: usize,
    /// The probe's share of `rate`.
    pub probe_rate: f64,
    /// How the probe reads an answer's revision.
    pub marker: Marker,
}

impl Spec {
    /// 32 oha connections and a probe of 10 connections at up to 4,000
    /// req/s (40% of `rate` when that is less).
    pub fn new(addr: SocketAddr, rate: f64, duration: Duration, client_cpus: &str) -> Self {
        Self {
            addr,
            rate,
            duration,
            client_cpus: client_cpus.to_owned(),
            oha_connections: 32,
            probe_connections: 10,
            probe_rate: (rate * 0.4).min(4000.0),
            marker: generation,
        }
    }

    /// The rate oha is asked for: `rate` less the probe's share.
    pub fn oha_rate(&self) -> f64 {
        (self.rate - self.probe_rate).max(1.0)
    }

    /// The same load, reading revisions with `marker`.
    pub fn marker(mut self, marker: Marker) -> Self {
        self.marker = marker;
        self
    }
}

/// A load in progress.
#[derive(Debug)]
pub struct Load {
    /// When the load started; every `sent_s` counts from here.
    pub start: Instant,
    oha: tokio::process::Child,
    probes: Vec<JoinHandle<Vec<Probe>>>,
}

/// oha's figures, with requests cut by its own deadline not counted as failures.
#[derive(Clone, Debug, Serialize)]
pub struct Oha {
    /// Requests per second it achieved.
    pub rps: f64,
    /// Requests answered with a status.
    pub requests: u64,
    /// Transport errors plus answers other than 200.
    pub failed: u64,
    /// Requests in flight when `-z` ended ("aborted due to deadline").
    pub aborted_at_deadline: u64,
    /// p99 latency.
    pub p99_ms: f64,
    /// oha's whole JSON output.
    pub raw: Value,
}

impl Load {
    /// Starts oha and the probe against `spec.addr`. Must run on a tokio
    /// runtime with the process feature (oha is a child process).
    ///
    /// # Errors
    ///
    /// When oha cannot be started or the probe cannot connect.
    pub async fn start(spec: &Spec) -> anyhow::Result<Self> {
        let oha_rate = spec.oha_rate();
        let oha = tokio::process::Command::new("taskset")
            .args(["-c", &spec.client_cpus, "oha", "--no-tui"])
            .args(["--output-format", "json"])
            .arg("-z")
            .arg(format!("{}ms", spec.duration.as_millis()))
            .arg("-q")
            .arg(format!("{oha_rate:.0}"))
            .arg("-c")
            .arg(spec.oha_connections.to_string())
            .arg(format!("http://{}/", spec.addr))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run oha (cargo install oha --locked)")?;
        let start = Instant::now();
        let interval = Duration::from_secs_f64(spec.probe_connections as f64 / spec.probe_rate);
        let mut probes = Vec::new();
        for i in 0..spec.probe_connections {
            let mut conn = Conn::connect(spec.addr).await?;
            let offset = interval.mul_f64(i as f64 / spec.probe_connections as f64);
            let (end, marker) = (start + spec.duration, spec.marker);
            probes.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut next = tokio::time::Instant::from_std(start) + offset;
                while Instant::now() < end {
                    tokio::time::sleep_until(next).await;
                    next += interval;
                    samples.push(timed_get(&mut conn, start, marker).await);
                }
                samples
            }));
        }
        Ok(Self { start, oha, probes })
    }

    /// Waits for the load to end: the probe's samples and oha's figures.
    ///
    /// # Errors
    ///
    /// When oha's output is not its JSON report.
    pub async fn finish(self) -> anyhow::Result<(Vec<Probe>, Oha)> {
        let mut samples = Vec::new();
        for probe in self.probes {
            samples.extend(probe.await?);
        }
        let out = self.oha.wait_with_output().await?;
        let raw: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "oha's output is not JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((samples, Oha::of(raw)))
    }
}

impl Oha {
    fn of(raw: Value) -> Self {
        let codes = raw["statusCodeDistribution"].as_object();
        let ok = raw["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
        let requests: u64 = codes
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        // oha counts requests still in flight when `-z` ends as "aborted due
        // to deadline": the load generator's cut, not a failure of the server.
        const DEADLINE: &str = "aborted due to deadline";
        let errors: u64 = raw["errorDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !k.contains(DEADLINE))
                    .filter_map(|(_, v)| v.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        Self {
            rps: raw["summary"]["requestsPerSec"]
                .as_f64()
                .unwrap_or(f64::NAN),
            requests,
            failed: errors + (requests - ok),
            aborted_at_deadline: raw["errorDistribution"][DEADLINE].as_u64().unwrap_or(0),
            p99_ms: raw["latencyPercentiles"]["p99"]
                .as_f64()
                .map_or(f64::NAN, |s| s * 1000.0),
            raw,
        }
    }
}

/// Open-loop `GET /` at `rate` req/s in all on `conns` (connection `j`
/// sends its `m`-th request at `start + (j + m·n) / rate`, or when its
/// previous answer arrives if that is later), from now until `stop`
/// completes. Sends are timed with [`until`], so that a window shorter than
/// a timer tick still gets its share. Every request is a
/// [`Probe`] (sent time counted from `start`, revision read by `marker`).
pub async fn burst(
    conns: &mut [Conn],
    rate: f64,
    start: Instant,
    marker: Marker,
    stop: impl Future<Output = ()>,
) -> Vec<Probe> {
    let stopped = std::cell::Cell::new(false);
    let began = Instant::now();
    let n = conns.len();
    let each = conns.iter_mut().enumerate().map(|(j, conn)| {
        let stopped = &stopped;
        async move {
            let mut samples = Vec::new();
            for m in 0.. {
                let at = began + Duration::from_secs_f64((j + m * n) as f64 / rate);
                until(at, || stopped.get()).await;
                if stopped.get() {
                    break;
                }
                samples.push(timed_get(conn, start, marker).await);
            }
            samples
        }
    });
    let sending = futures_util::future::join_all(each);
    let stopping = async {
        stop.await;
        stopped.set(true);
    };
    let (samples, ()) = tokio::join!(sending, stopping);
    samples.into_iter().flatten().collect()
}

/// Waits until `at`, to the microsecond rather than to tokio's 1 ms timer
/// ticks (the last millisecond is spent yielding), or until `given_up`.
pub async fn until(at: Instant, given_up: impl Fn() -> bool) {
    while !given_up() {
        match at.checked_duration_since(Instant::now()) {
            None => return,
            Some(left) if left > Duration::from_millis(1) => {
                tokio::time::sleep(left - Duration::from_millis(1)).await;
            }
            Some(_) => tokio::task::yield_now().await,
        }
    }
}

/// One `GET /` on `conn`, timed from `start`. A failed request is
/// counted, and the next one reconnects.
async fn timed_get(conn: &mut Conn, start: Instant, marker: Marker) -> Probe {
    let sent = Instant::now();
    let reply = conn.get("/").await;
    Probe {
        sent_s: (sent - start).as_secs_f64(),
        latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
        ok: reply.as_ref().is_ok_and(|r| r.status == 200),
        revision: reply.ok().as_ref().and_then(marker).unwrap_or(0),
    }
}

/// Polls `GET /` back to back on a connection of its own until an answer
/// carries `revision` or later: milliseconds since `since`, or `None` after
/// `limit`. Failed requests are retried (the server may be restarting).
pub async fn first_seen(
    addr: SocketAddr,
    marker: Marker,
    revision: u64,
    since: Instant,
    limit: Duration,
) -> Option<f64> {
    let mut conn = None;
    while since.elapsed() < limit {
        if conn.is_none() {
            conn = Conn::connect(addr).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        match c.get("/").await {
            Ok(r) if marker(&r).unwrap_or(0) >= revision => {
                return Some(since.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(_) => {}
            Err(_) => conn = None,
        }
    }
    None
}

/// From the first probe answer carrying `revision` or later, completed
/// after `sent_s`: milliseconds since `sent_s`, combined with a poller's
/// figure (the earlier of the two).
pub fn visible_ms(
    samples: &[Probe],
    revision: u64,
    sent_s: f64,
    poller: Option<f64>,
) -> Option<f64> {
    let seen = samples
        .iter()
        .filter(|s| s.ok && s.revision >= revision)
        .map(|s| (s.done_s() - sent_s) * 1000.0)
        .filter(|ms| *ms >= 0.0)
        .fold(f64::INFINITY, f64::min);
    let first = seen.min(poller.unwrap_or(f64::INFINITY));
    first.is_finite().then_some(first)
}

/// p99 latency of the successful probe requests sent inside any of
/// `windows` (start, end in seconds since the load started) and outside
/// them, and how many were inside.
pub fn p99_in_out(samples: &[Probe], windows: &[(f64, f64)]) -> (f64, f64, usize) {
    let (lat_in, lat_out): (Vec<&Probe>, Vec<&Probe>) = samples
        .iter()
        .filter(|s| s.ok)
        .partition(|s| inside(s, windows));
    (p99(&lat_in), p99(&lat_out), lat_in.len())
}

/// p99 latency of the successful requests sent inside any of `windows`, and
/// how many there were.
pub fn p99_within(samples: &[Probe], windows: &[(f64, f64)]) -> (f64, usize) {
    let within: Vec<&Probe> = samples
        .iter()
        .filter(|s| s.ok && inside(s, windows))
        .collect();
    (p99(&within), within.len())
}

fn inside(s: &Probe, windows: &[(f64, f64)]) -> bool {
    windows
        .iter()
        .any(|(a, b)| s.sent_s >= *a && s.sent_s <= *b)
}

fn p99(samples: &[&Probe]) -> f64 {
    quantile(
        &samples.iter().map(|s| s.latency_ms).collect::<Vec<_>>(),
        0.99,
    )
    .unwrap_or(f64::NAN)
}

/// Probe requests sent after a reload was answered (`answered_s`, the
/// revision it installed) that still saw an older revision.
pub fn stale_after_answer(samples: &[Probe], answered: &[(f64, u64)]) -> usize {
    samples
        .iter()
        .filter(|s| s.ok)
        .filter(|s| {
            answered
                .iter()
                .any(|(at, revision)| *at <= s.sent_s && s.revision < *revision)
        })
        .count()
}

/// Probe requests that saw an older revision than one a request completed
/// before they were sent had seen: a revision going backwards.
pub fn went_back(samples: &[Probe]) -> usize {
    let mut ordered: Vec<&Probe> = samples.iter().filter(|s| s.ok).collect();
    ordered.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    let mut recent: Vec<(f64, u64)> = Vec::new(); // (completed, revision)
    let mut count = 0;
    for s in ordered {
        if recent
            .iter()
            .any(|(done, revision)| *done <= s.sent_s && *revision > s.revision)
        {
            count += 1;
        }
        recent.push((s.done_s(), s.revision));
        if recent.len() > 64 {
            recent.remove(0);
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: &'static str) -> Reply {
        Reply {
            status: 200,
            generation: None,
            body: body.into(),
        }
    }

    #[test]
    fn body_revision_reads_the_trailing_number() {
        assert_eq!(body_revision(&reply("Hello from kiln, rev 12\n")), Some(12));
        assert_eq!(body_revision(&reply("rev 0")), Some(0));
        assert_eq!(body_revision(&reply("Hello from kiln")), None);
    }

    #[test]
    fn a_revision_going_backwards_is_counted() {
        let probe = |sent_s, revision| Probe {
            sent_s,
            latency_ms: 1.0,
            ok: true,
            revision,
        };
        let samples = [
            probe(0.0, 1),
            probe(0.010, 2),
            probe(0.020, 1),
            probe(0.030, 2),
        ];
        assert_eq!(went_back(&samples), 1);
        assert_eq!(stale_after_answer(&samples, &[(0.005, 2)]), 1);
    }

    #[test]
    fn only_successful_requests_sent_inside_a_window_count() {
        let probe = |sent_s, latency_ms, ok| Probe {
            sent_s,
            latency_ms,
            ok,
            revision: 1,
        };
        let samples = [
            probe(0.9, 50.0, true),
            probe(1.0, 2.0, true),
            probe(1.001, 3.0, false),
            probe(1.002, 4.0, true),
            probe(2.0, 60.0, true),
        ];
        assert_eq!(p99_within(&samples, &[(1.0, 1.002)]), (4.0, 2));
        assert_eq!(p99_in_out(&samples, &[(1.0, 1.002)]), (4.0, 60.0, 2));
    }
}
