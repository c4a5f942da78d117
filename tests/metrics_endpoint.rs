//! `GET /admin/metrics`: real requests, reloads and pools show in the
//! Prometheus text, which `promtool check metrics` accepts.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{Config, Server};

/// The value of the one sample of `name` whose labels include every one of
/// `labels` (`key="value"`), or `None`.
pub(crate) fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = text.lines().filter(|line| {
        let Some(rest) = line.strip_prefix(name) else {
            return false;
        };
        (rest.starts_with('{') || rest.starts_with(' '))
            && labels.iter().all(|label| rest.contains(label))
    });
    let line = found.next()?;
    assert!(
        found.next().is_none(),
        "more than one {name} sample with {labels:?}:\n{text}"
    );
    line.rsplit(' ').next()?.parse().ok()
}

pub(crate) fn metrics(server: &Server) -> String {
    let reply = server.admin_get("/admin/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.body
}

/// Runs `promtool check metrics` on `text`; panics when promtool is missing
/// (CI installs it: Debian's `prometheus` package) or finds a problem.
pub(crate) fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it (apt-get install prometheus; .ci/run does)"
            )
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n--- the metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn metrics_count_requests_by_route_reloads_and_pools_and_pass_promtool() {
    let config = Config::sqlite().set_str("server.max_body", "1KiB");
    let server = Server::start(&config.render());
    for _ in 0..3 {
        assert_eq!(server.get("/").status, 200);
    }
    for id in [1, 2] {
        // Not found, but routed: the route is the pattern, never the path.
        server.get(&format!("/notes/{id}"));
    }
    assert_eq!(server.get("/no/such/route").status, 404);
    let too_big = server.post_raw("/notes", &"x".repeat(2048));
    assert_eq!(too_big.status, 413, "{too_big:?}");

    // One reload that applies, one refused.
    server
        .site
        .write_config(&config.clone().greeting("second").render());
    assert_eq!(server.reload().status, 200);
    server.site.write_config("[server\nbroken");
    assert_eq!(server.reload().status, 422);

    let text = metrics(&server);
    let requests = "kiln_http_requests_total";
    // Warm-up requests (2 workers × GET /) are not counted.
    assert_eq!(
        sample(
            &text,
            requests,
            &[r#"method="GET""#, r#"route="/""#, r#"status="2xx""#]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, requests, &[r#"route="/notes/{id}""#]),
        Some(2.0),
        "{text}"
    );
    assert!(
        !text.contains("/notes/1"),
        "a raw path became a label:\n{text}"
    );
    assert!(!text.contains("/no/such/route"), "{text}");
    assert_eq!(
        sample(
            &text,
            requests,
            &[r#"route="unmatched""#, r#"status="4xx""#, r#"method="GET""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            requests,
            &[r#"route="unmatched""#, r#"method="POST""#]
        ),
        Some(1.0),
        "the 413 answered before routing: {text}"
    );
    assert_eq!(
        sample(
            &text,
            "kiln_http_responses_cut_total",
            &[r#"reason="body_limit""#]
        ),
        Some(1.0),
        "{text}"
    );
    // A real histogram with kiln's buckets, not a summary.
    assert!(
        text.contains(
            r#"kiln_http_request_duration_seconds_bucket{method="GET",route="/",status="2xx",le="0.0005"}"#
        ),
        "{text}"
    );
    assert!(!text.contains("quantile="), "{text}");
    assert_eq!(
        sample(&text, "kiln_http_requests_in_flight", &[]),
        Some(0.0)
    );

    assert_eq!(sample(&text, "kiln_config_generation", &[]), Some(2.0));
    assert_eq!(
        sample(
            &text,
            "kiln_config_reloads_total",
            &[r#"trigger="http-reload""#, r#"result="success""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kiln_config_reloads_total",
            &[r#"trigger="http-reload""#, r#"result="failure""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_config_last_reload_successful", &[]),
        Some(0.0),
        "the last reload was refused: {text}"
    );
    let applied_at = sample(
        &text,
        "kiln_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .expect("a timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - 600.0..=now).contains(&applied_at), "{applied_at}");
    assert_eq!(
        sample(
            &text,
            "kiln_config_reload_duration_seconds_count",
            &[r#"result="success""#]
        ),
        Some(1.0),
        "{text}"
    );
    // Start-up and the applied reload each built and warmed their pools.
    assert_eq!(
        sample(
            &text,
            "kiln_warmup_duration_seconds_count",
            &[r#"phase="resources""#]
        ),
        Some(2.0),
        "{text}"
    );

    assert_eq!(
        sample(&text, "kiln_pool_size", &[r#"pool="main""#]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_pool_max_size", &[r#"pool="main""#]),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "kiln_pool_up", &[r#"pool="main""#]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "kiln_pool_connection_errors_total",
            &[r#"pool="main""#]
        ),
        Some(0.0)
    );
    // Each GET /notes/{id} checked a connection out of pool main.
    let waits = "kiln_pool_wait_duration_seconds";
    let checkouts = sample(&text, &format!("{waits}_count"), &[r#"pool="main""#]);
    assert!(checkouts.is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("{waits}_bucket"),
            &[r#"pool="main""#, r#"le="+Inf""#]
        ),
        checkouts,
        "{text}"
    );
    assert!(
        text.contains(&format!("# TYPE {waits} histogram")),
        "{text}"
    );
    assert!(
        !text.contains("kiln_fleet_"),
        "fleet metrics without [fleet]:\n{text}"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|rss| rss > 0.0),
        "{text}"
    );

    promtool_check(&text);
}

#[test]
fn request_metrics_off_counts_no_request_and_turns_on_by_reload() {
    let config = Config::sqlite().set("server.request_metrics", "false");
    let server = Server::start(&config.render());
    server.get("/");
    let text = metrics(&server);
    assert!(!text.contains("kiln_http_requests_total"), "{text}");
    assert_eq!(sample(&text, "kiln_config_generation", &[]), Some(1.0));

    server
        .site
        .write_config(&config.set("server.request_metrics", "true").render());
    assert_eq!(server.reload().status, 200);
    server.get("/");
    let text = metrics(&server);
    assert_eq!(
        sample(&text, "kiln_http_requests_total", &[r#"route="/""#]),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text);
}
