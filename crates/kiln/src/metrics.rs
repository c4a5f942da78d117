//! kiln's Prometheus metrics (`GET /admin/metrics`): one registry per
//! [`Kiln`](crate::Kiln), never the process-wide `metrics` recorder, so an
//! embedding app keeps its own and two `Kiln`s in one process do not mix.
//!
//! What the request path records goes through handles registered once per
//! route and status class ([`crate::observe`]): atomic adds, no key
//! hashing. The request-duration and pool-wait histograms
//! ([`kiln_resources::Durations`]) and the in-flight gauge are atomics of
//! kiln's own, rendered at scrape time: the exporter's histogram sample
//! costs ~150 instructions (a lock-free sample list, a clock read, an epoch
//! pin), a bucket add ~20. Figures that exist anyway (the generation, the
//! pools, the fleet) are read at scrape time instead of being kept up to
//! date. Histograms have explicit buckets (the exporter would otherwise
//! render summaries), and an upkeep task folds their samples every few
//! seconds, so memory stays flat when nobody scrapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use ::metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use kiln_resources::{Durations, Health};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::fleet::FleetFigures;
use crate::reload::Trigger;
use crate::{App, Kiln};

/// `kiln_http_request_duration_seconds`: 0.5 ms to 10 s, in nanoseconds.
const REQUEST_BUCKETS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Reloads and warm-ups: 5 ms to 2 min (`server.warm_timeout` is 30 s by default).
const RELOAD_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// How often histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

pub(crate) const REQUESTS: &str = "kiln_http_requests_total";
const REQUEST_DURATION: &str = "kiln_http_request_duration_seconds";
const REQUEST_DURATION_HELP: &str = "Time from a request's arrival to its response head, by method, matched route and status class.";
const IN_FLIGHT: &str = "kiln_http_requests_in_flight";
const IN_FLIGHT_HELP: &str = "Requests whose response head is not ready yet.";
const CUT: &str = "kiln_http_responses_cut_total";
const RELOADS: &str = "kiln_config_reloads_total";
const RELOAD_DURATION: &str = "kiln_config_reload_duration_seconds";
const LAST_RELOAD_OK: &str = "kiln_config_last_reload_successful";
const LAST_RELOAD_AT: &str = "kiln_config_last_reload_success_timestamp_seconds";
const WARMUP_DURATION: &str = "kiln_warmup_duration_seconds";
const POOL_WAIT: &str = "kiln_pool_wait_duration_seconds";
const POOL_WAIT_HELP: &str = "Time a checkout through get_bounded took to get a connection (waiting for a free one, then recycling or opening it), failed ones included, by pool; since the pool was built.";

/// Why kiln answered a request itself instead of its handler, or closed its
/// connection (`kiln_http_responses_cut_total{reason}`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cut {
    /// `server.max_body`: 413.
    BodyLimit,
    /// `server.max_concurrent`: 503.
    Concurrency,
    /// `server.request_timeout`: 503.
    Timeout,
    /// The handler panicked: 500.
    Panic,
    /// Answered with `Connection: close` because the worker is draining.
    Drain,
}

impl Cut {
    const ALL: [Self; 5] = [
        Self::BodyLimit,
        Self::Concurrency,
        Self::Timeout,
        Self::Panic,
        Self::Drain,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::BodyLimit => "body_limit",
            Self::Concurrency => "concurrency",
            Self::Timeout => "timeout",
            Self::Panic => "panic",
            Self::Drain => "drain",
        }
    }
}

/// What a warm-up duration measures (`kiln_warmup_duration_seconds{phase}`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Phase {
    /// Building and warming a generation's pools and resources.
    Resources,
    /// Building every worker's app and serving its warm requests.
    Workers,
}

/// One kiln's metrics registry and the handles kiln records through.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// `kiln_http_requests_in_flight`.
    in_flight: AtomicI64,
    /// `kiln_http_request_duration_seconds`, by method, route and status
    /// class.
    durations: Mutex<BTreeMap<[String; 3], Arc<Durations>>>,
    cut: [Counter; Cut::ALL.len()],
    last_reload_ok: Gauge,
    last_reload_at: Gauge,
    warmup: [Histogram; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The metadata the exporter ignores but the `Recorder` API asks for.
const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// A new registry with every metric described; the configuration it
    /// started on counts as the last successful load, as in Prometheus.
    pub(crate) fn new() -> Arc<Self> {
        let buckets = |builder: PrometheusBuilder, name: &str, buckets: &[f64]| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .expect("bucket lists are not empty")
        };
        let mut builder = PrometheusBuilder::new();
        for name in [RELOAD_DURATION, WARMUP_DURATION] {
            builder = buckets(builder, name, RELOAD_BUCKETS);
        }
        let recorder = builder.build_recorder();
        describe(&recorder);
        let process = metrics_process::Collector::default();
        ::metrics::with_local_recorder(&recorder, || process.describe());
        let handle = recorder.handle();
        let metrics = Self {
            in_flight: AtomicI64::new(0),
            durations: Mutex::default(),
            cut: Cut::ALL.map(|cut| {
                recorder.register_counter(
                    &Key::from_parts(CUT, vec![Label::from_static_parts("reason", cut.label())]),
                    &METADATA,
                )
            }),
            last_reload_ok: recorder
                .register_gauge(&Key::from_static_name(LAST_RELOAD_OK), &METADATA),
            last_reload_at: recorder
                .register_gauge(&Key::from_static_name(LAST_RELOAD_AT), &METADATA),
            warmup: ["resources", "workers"].map(|phase| {
                recorder.register_histogram(
                    &Key::from_parts(
                        WARMUP_DURATION,
                        vec![Label::from_static_parts("phase", phase)],
                    ),
                    &METADATA,
                )
            }),
            recorder,
            handle,
            process,
        };
        metrics.last_reload_ok.set(1.0);
        metrics.last_reload_at.set(unix_seconds(SystemTime::now()));
        Arc::new(metrics)
    }

    /// Folds histogram samples into their buckets every few seconds, on the
    /// calling runtime, until the registry is dropped.
    pub(crate) fn spawn_upkeep(self: &Arc<Self>) {
        let metrics: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(metrics) = metrics.upgrade() else {
                    return;
                };
                metrics.handle.run_upkeep();
            }
        });
    }

    /// A counter with these labels, registered (or found) once: the handle
    /// is then a plain atomic.
    pub(crate) fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A histogram with these labels, registered (or found) once.
    pub(crate) fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// A request began (`1`) or its response head is ready (`-1`).
    pub(crate) fn in_flight(&self, change: i64) {
        self.in_flight.fetch_add(change, Ordering::Relaxed);
    }

    /// The request-duration histogram of `labels` (method, route, status
    /// class), registered (or found) once.
    pub(crate) fn durations(&self, labels: [String; 3]) -> Arc<Durations> {
        let mut durations = self.durations.lock().expect("durations lock");
        durations
            .entry(labels)
            .or_insert_with(|| Arc::new(Durations::new(REQUEST_BUCKETS)))
            .clone()
    }

    /// The request-duration histograms in the Prometheus text format.
    fn render_durations(&self, text: &mut String) {
        let durations = self.durations.lock().expect("durations lock");
        render_histograms(
            text,
            REQUEST_DURATION,
            REQUEST_DURATION_HELP,
            durations
                .iter()
                .map(|([method, route, status], histogram)| {
                    let labels = format!(
                        "method=\"{}\",route=\"{}\",status=\"{}\"",
                        escape(method),
                        escape(route),
                        escape(status)
                    );
                    (labels, &**histogram)
                }),
        );
    }

    pub(crate) fn cut(&self, cut: Cut) {
        self.cut[cut as usize].increment(1);
    }

    /// A reload attempt ended.
    pub(crate) fn reloaded(&self, trigger: Trigger, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "failure" };
        let trigger = Label::new("trigger", trigger.to_string());
        self.counter(
            RELOADS,
            vec![trigger.clone(), Label::from_static_parts("result", result)],
        )
        .increment(1);
        self.histogram(
            RELOAD_DURATION,
            vec![Label::from_static_parts("result", result)],
        )
        .record(took.as_secs_f64());
        self.last_reload_ok.set(if ok { 1.0 } else { 0.0 });
        if ok {
            self.last_reload_at.set(unix_seconds(SystemTime::now()));
        }
    }

    /// A warm-up phase took `took`.
    pub(crate) fn warmed(&self, phase: Phase, took: Duration) {
        self.warmup[phase as usize].record(took.as_secs_f64());
    }

    /// The exposition: the registry, the process figures, then what is read
    /// now (the generation, the pools, the fleet).
    fn render(
        &self,
        generation: u64,
        pools: &kiln_resources::Pools,
        fleet: Option<FleetFigures>,
    ) -> String {
        ::metrics::with_local_recorder(&self.recorder, || self.process.collect());
        let mut text = self.handle.render();
        self.render_durations(&mut text);
        render_histograms(
            &mut text,
            POOL_WAIT,
            POOL_WAIT_HELP,
            pools
                .iter()
                .map(|(name, pool)| (format!("pool=\"{}\"", escape(name)), pool.waits())),
        );
        let pools = pools.status();
        // The figures of this instant, in a registry of their own so that a
        // pool removed by a reload leaves no stale series behind.
        let now = PrometheusBuilder::new().build_recorder();
        let gauge = |name: &'static str, help: &'static str| {
            now.describe_gauge(name.into(), None, help.into());
        };
        gauge(IN_FLIGHT, IN_FLIGHT_HELP);
        now.register_gauge(&Key::from_static_name(IN_FLIGHT), &METADATA)
            .set(self.in_flight.load(Ordering::Relaxed) as f64);
        gauge(
            "kiln_config_generation",
            "The id of the generation serving requests.",
        );
        now.register_gauge(&Key::from_static_name("kiln_config_generation"), &METADATA)
            .set(generation as f64);
        gauge("kiln_pool_size", "Connections open, in use or idle.");
        gauge(
            "kiln_pool_available",
            "Idle connections ready for checkout.",
        );
        gauge("kiln_pool_waiting", "Requests waiting for a connection.");
        gauge("kiln_pool_max_size", "Most connections the pool may hold.");
        gauge(
            "kiln_pool_up",
            "1 when the database answered the pool's last connection attempt.",
        );
        now.describe_counter(
            "kiln_pool_connection_errors_total".into(),
            None,
            "Connection attempts that failed, since the pool was built.".into(),
        );
        for (name, status) in &pools {
            let labels = || vec![Label::new("pool", name.clone())];
            let set = |metric: &'static str, value: usize| {
                now.register_gauge(&Key::from_parts(metric, labels()), &METADATA)
                    .set(value as f64);
            };
            set("kiln_pool_size", status.size);
            set("kiln_pool_available", status.available);
            set("kiln_pool_waiting", status.waiting);
            set("kiln_pool_max_size", status.max_size);
            set("kiln_pool_up", usize::from(status.health == Health::Ok));
            now.register_counter(
                &Key::from_parts("kiln_pool_connection_errors_total", labels()),
                &METADATA,
            )
            .absolute(status.connection_errors);
        }
        if let Some(fleet) = fleet {
            render_fleet(&now, &fleet);
        }
        text.push_str(&now.handle().render());
        text
    }
}

/// The fleet's figures, only with `[fleet]`.
fn render_fleet(now: &PrometheusRecorder, fleet: &FleetFigures) {
    let gauges = [
        (
            "kiln_fleet_applied_version",
            "The fleet version this instance serves (0: none, its own file alone).",
            fleet.applied as f64,
        ),
        (
            "kiln_fleet_desired_version",
            "The fleet's desired version as this instance last read it (0: none published).",
            fleet.desired as f64,
        ),
        (
            "kiln_fleet_store_connected",
            "1 while the fleet store answers, 0 while it is unreachable.",
            f64::from(u8::from(fleet.connected)),
        ),
        (
            "kiln_fleet_last_ack_timestamp_seconds",
            "When this instance last wrote an ACK (a version applied) to the fleet store, in seconds since the epoch; 0 before the first.",
            fleet.acked_at.map_or(0.0, unix_seconds),
        ),
    ];
    for (name, help, value) in gauges {
        now.describe_gauge(name.into(), None, help.into());
        now.register_gauge(&Key::from_static_name(name), &METADATA)
            .set(value);
    }
}

impl<A: App> Kiln<A> {
    /// kiln's metrics in the Prometheus text format, as `GET /admin/metrics`
    /// serves them: requests by method, matched route and status class,
    /// reloads, warm-ups, pools and the process (the README lists them).
    pub fn render_metrics(&self) -> String {
        let current = self.current();
        let fleet = (self.shared.fleet.as_ref()).map(|fleet| fleet.figures(current.text()));
        self.shared
            .metrics
            .render(current.id(), current.pools(), fleet)
    }
}

/// Histograms of one name, each with its labels (rendered, without the
/// braces), in the Prometheus text format; nothing when there are none.
fn render_histograms<'a>(
    text: &mut String,
    name: &str,
    help: &str,
    histograms: impl Iterator<Item = (String, &'a Durations)>,
) {
    let mut histograms = histograms.peekable();
    if histograms.peek().is_none() {
        return;
    }
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} histogram");
    for (labels, histogram) in histograms {
        let counts = histogram.read();
        for (bound, below) in &counts.buckets {
            let le = *bound as f64 / 1e9;
            let _ = writeln!(text, "{name}_bucket{{{labels},le=\"{le}\"}} {below}");
        }
        let (total, sum) = (counts.count, counts.sum_nanos as f64 / 1e9);
        let _ = writeln!(text, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let _ = writeln!(text, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(text, "{name}_count{{{labels}}} {total}");
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds since the Unix epoch.
fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `# HELP` lines (promtool wants one for every metric).
fn describe(recorder: &PrometheusRecorder) {
    let counters = [
        (
            REQUESTS,
            "Requests answered on the main listener, by method, matched route (`unmatched` when none) and status class.",
        ),
        (
            CUT,
            "Responses kiln answered itself (body_limit 413, concurrency 503, timeout 503, panic 500) or whose connection it closed while draining (drain).",
        ),
        (RELOADS, "Reload attempts, by trigger and result."),
    ];
    for (name, help) in counters {
        recorder.describe_counter(name.into(), None, help.into());
    }
    let gauges = [
        (
            LAST_RELOAD_OK,
            "1 when the last reload succeeded (or none has run since start), 0 when it was refused.",
        ),
        (
            LAST_RELOAD_AT,
            "When the configuration was last applied successfully (start-up or reload), in seconds since the epoch.",
        ),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(name.into(), None, help.into());
    }
    let histograms = [
        (
            RELOAD_DURATION,
            "Time a reload attempt took, from the request to every worker serving (or the refusal).",
        ),
        (
            WARMUP_DURATION,
            "Time to build and warm a generation's pools and resources (phase=resources) or every worker's app and warm requests (phase=workers), at start-up and on each reload.",
        ),
    ];
    for (name, help) in histograms {
        recorder.describe_histogram(name.into(), Some(Unit::Seconds), help.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_durations_render_as_cumulative_buckets_with_escaped_labels() {
        let metrics = Metrics::new();
        let labels = || ["GET".to_owned(), r#"/a"b\c"#.to_owned(), "2xx".to_owned()];
        let histogram = metrics.durations(labels());
        assert!(Arc::ptr_eq(&histogram, &metrics.durations(labels())));
        histogram.record(Duration::from_micros(200));
        histogram.record(Duration::from_millis(2));
        histogram.record(Duration::from_secs(60));
        let mut text = String::new();
        metrics.render_durations(&mut text);
        let series = r#"method="GET",route="/a\"b\\c",status="2xx""#;
        for line in [
            format!("{REQUEST_DURATION}_bucket{{{series},le=\"0.0005\"}} 1"),
            format!("{REQUEST_DURATION}_bucket{{{series},le=\"0.001\"}} 1"),
            format!("{REQUEST_DURATION}_bucket{{{series},le=\"0.0025\"}} 2"),
            format!("{REQUEST_DURATION}_bucket{{{series},le=\"10\"}} 2"),
            format!("{REQUEST_DURATION}_bucket{{{series},le=\"+Inf\"}} 3"),
            format!("{REQUEST_DURATION}_sum{{{series}}} 60.0022"),
            format!("{REQUEST_DURATION}_count{{{series}}} 3"),
            format!("# TYPE {REQUEST_DURATION} histogram"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
