//! Logs an operator can steer and read: the live log filter (`GET`/`PUT
//! /admin/log-level`: checked before it applies, effective at once on every
//! worker, audited, guarded by the token, reset by the next reload that
//! changes `log.level`), JSON lines whose fields are keys, and the reload's
//! phases as spans.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::util::{self, APPLY_TIMEOUT, Config, Server, Site, send};

/// The line the demo app logs at debug level for each note it creates (on
/// the worker that served the request).
const DEBUG_NEEDLE: &str = "Note created";

/// `PUT /admin/log-level` with `{"filter": filter}`.
fn put_filter(server: &Server, filter: &str) -> util::Reply {
    server.admin_send(
        "PUT",
        "/admin/log-level",
        &json!({ "filter": filter }).to_string(),
        &[],
    )
}

fn get_filter(server: &Server) -> Value {
    let reply = server.admin_get("/admin/log-level");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Asserts the filter in force is the configuration's `level`.
fn assert_config_filter(server: &Server, level: &str) {
    let state = get_filter(server);
    assert_eq!(state["source"], "config", "{state}");
    assert!(
        state["filter"].as_str().unwrap().starts_with(level),
        "{state}"
    );
}

/// Creates `count` notes, each on a connection of its own (the workers
/// share the listener, so they are spread over them).
fn create_notes(server: &Server, count: usize) {
    for i in 0..count {
        let reply = util::call(
            &util::agent(),
            "POST",
            &server.url("/notes"),
            &[("content-type", "application/json")],
            Some(&json!({ "text": format!("note {i}") }).to_string()),
        )
        .expect("an answer");
        assert_eq!(reply.status, 201, "{reply:?}");
    }
}

/// The debug lines logged at `from` or later.
fn debug_lines(server: &Server, from: usize) -> usize {
    server.stderr.snapshot()[from..]
        .iter()
        .filter(|line| line.contains(DEBUG_NEEDLE))
        .count()
}

/// Waits (bounded) for `count` debug lines at `from` or later.
fn wait_for_debug_lines(server: &Server, from: usize, count: usize) {
    util::wait_until(APPLY_TIMEOUT, &format!("{count} debug lines"), || {
        debug_lines(server, from) >= count
    });
    assert_eq!(debug_lines(server, from), count, "{}", server.stderr.text());
}

/// The debug lines at `from` or later, before the first line holding
/// `marker` (waited for): stderr is one ordered pipe, so every line logged
/// before the marker has been read by then.
fn debug_lines_before(server: &Server, from: usize, marker: &str) -> usize {
    server
        .stderr
        .wait_for(from, marker, APPLY_TIMEOUT)
        .unwrap_or_else(|| panic!("no {marker:?} line:\n{}", server.stderr.text()));
    server.stderr.snapshot()[from..]
        .iter()
        .take_while(|line| !line.contains(marker))
        .filter(|line| line.contains(DEBUG_NEEDLE))
        .count()
}

/// The audit line of a filter change.
const AUDIT: &str = "Log filter set";

#[test]
fn log_level_set_live_kept_by_reloads_and_reset_by_a_level_change() {
    let base = Config::sqlite().greeting("one");
    let server = Server::start(&base.render());
    assert_config_filter(&server, "info");

    let from = server.stderr.len();
    create_notes(&server, 2);
    let filter = "info,kiln::notes=debug";
    let reply = put_filter(&server, filter);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        debug_lines_before(&server, from, AUDIT),
        0,
        "no debug at info"
    );
    let body = reply.json();
    // The access log stays on whatever the filter (kiln adds its target).
    let applied = format!("{filter},kiln::access=info");
    assert_eq!(body["filter"], applied, "{body}");
    assert_eq!(body["source"], "admin", "{body}");
    assert_eq!(
        get_filter(&server),
        body,
        "GET agrees with the PUT's answer"
    );
    let log = server.stderr.text();
    assert!(
        log.lines().any(|line| line.contains(AUDIT)
            && line.contains("peer=127.0.0.1:")
            && line.contains(filter)),
        "an audit line with the peer and the filter:\n{log}"
    );
    // Every worker logs at debug at once.
    let from = server.stderr.len();
    create_notes(&server, 4);
    wait_for_debug_lines(&server, from, 4);

    // A reload that does not change log.level keeps the filter.
    let two = base.clone().greeting("two");
    server.site.write_config(&two.render());
    util::assert_reloaded(&server.reload(), 2, &["app.greeting"], &[]);
    assert_eq!(get_filter(&server)["filter"], applied);
    let from = server.stderr.len();
    create_notes(&server, 1);
    wait_for_debug_lines(&server, from, 1);

    // One that changes log.level puts the file's level back.
    server
        .site
        .write_config(&two.set_str("log.level", "warn").render());
    util::assert_reloaded(&server.reload(), 3, &["log.level"], &[]);
    assert_config_filter(&server, "warn");
    let from = server.stderr.len();
    create_notes(&server, 2);
    // Turning logging up is audited under the new filter: the marker.
    assert_eq!(put_filter(&server, "info").status, 200);
    assert_eq!(
        debug_lines_before(&server, from, AUDIT),
        0,
        "debug is off again"
    );
}

#[test]
fn a_bad_filter_is_refused_naming_the_error_and_changes_nothing() {
    let server = Server::start(&Config::sqlite().render());
    let before = get_filter(&server);
    let reply = put_filter(&server, "info,kiln=loud");
    let body = util::assert_refused(&reply, 400, 1);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("kiln=loud"), "names the directive: {body}");
    for (body, status) in [
        (r#"{"filter": ""}"#, 400),
        (&json!({ "filter": "0".repeat(1025) }).to_string(), 400),
        (r#"{"filter": "info", "extra": 1}"#, 422),
        (r#"{"filter": 3}"#, 422),
        ("debug", 400),
    ] {
        let reply = server.admin_send("PUT", "/admin/log-level", body, &[]);
        util::assert_refused(&reply, status, 1);
    }
    let reply = util::call(
        &util::agent(),
        "PUT",
        &server.admin_url("/admin/log-level"),
        &[("content-type", "text/plain")],
        Some("debug"),
    )
    .expect("an answer");
    util::assert_refused(&reply, 415, 1);
    assert_eq!(get_filter(&server), before, "nothing changed");
}

#[test]
fn log_level_needs_the_admin_token() {
    let token = "tok-91c2-loglevel";
    let server = Server::start_with(&Config::sqlite().render(), &[("KILN__ADMIN__TOKEN", token)]);
    let before = get_filter(&server);
    let body = json!({ "filter": "debug" }).to_string();
    for authorization in [None, Some("Bearer wrong-token")] {
        let headers: Vec<(&str, &str)> = std::iter::once(("content-type", "application/json"))
            .chain(authorization.map(|value| ("authorization", value)))
            .collect();
        let url = server.admin_url("/admin/log-level");
        let reply = util::call(&util::agent(), "PUT", &url, &headers, Some(&body));
        util::assert_refused(&reply.expect("an answer"), 401, 1);
    }
    let reply = server.admin_call("GET", "/admin/log-level", None);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(get_filter(&server), before, "nothing changed");
    server.assert_not_printed(token);
}

/// An embedder that installed its own subscriber (this test binary calls
/// no `kiln::logging::init`): the route says why it cannot help.
#[tokio::test]
async fn log_level_without_kilns_subscriber_says_why() {
    let site = Site::new(&Config::sqlite().render());
    let loaded = kiln::load_config(&site.config_path()).expect("a valid config");
    let kiln = kiln::Kiln::start(util::GreetingApp, loaded)
        .await
        .expect("kiln starts");
    let admin = kiln.admin_router_unauthenticated();
    let get = axum::http::Request::get("/log-level")
        .body(axum::body::Body::empty())
        .unwrap();
    let put = axum::http::Request::put("/log-level")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"filter": "debug"}"#))
        .unwrap();
    for request in [get, put] {
        let reply = send(&admin, request).await;
        assert_eq!(reply.status, 409, "{reply:?}");
        let body = reply.json();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("kiln::logging::init"),
            "{body}"
        );
    }
}

#[test]
fn json_logs_carry_the_fields_and_the_reload_phases_as_keys() {
    let base = Config::sqlite().set_str("log.format", "json");
    let server = Server::start(&base.clone().greeting("one").render());
    server.site.write_config(&base.greeting("two").render());
    util::assert_reloaded(&server.reload(), 2, &["app.greeting"], &[]);
    let line = server
        .stderr
        .wait_for(0, "\"Reloaded\"", APPLY_TIMEOUT)
        .unwrap_or_else(|| panic!("no Reloaded line:\n{}", server.stderr.text()));
    let event: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["message"], "Reloaded", "{event}");
    assert_eq!(event["level"], "INFO", "{event}");
    assert_eq!(event["trigger"], "http-reload", "{event}");
    assert_eq!(event["generation"], 2, "{event}");
    assert_eq!(event["changed"], "app.greeting", "{event}");
    assert!(
        event["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{event}"
    );
    for key in [
        "took_ms",
        "load_ms",
        "validate_ms",
        "build_ms",
        "warm_ms",
        "swap_ms",
    ] {
        assert!(event[key].is_u64(), "{key} is a number: {event}");
    }
}

/// The reload's phases are spans of a `reload` span, in order, each with
/// the `took_ms` it recorded.
#[test]
fn reload_phases_are_spans_with_durations() {
    let site = Site::new(&Config::sqlite().greeting("one").render());
    let spans = SpanLog::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let outcome = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let loaded = kiln::load_config(&site.config_path()).expect("a valid config");
            let kiln = kiln::Kiln::start(util::GreetingApp, loaded)
                .await
                .expect("kiln starts");
            site.write_config(&Config::sqlite().greeting("two").render());
            kiln.reload(kiln::Trigger::Api).await
        })
    });
    assert_eq!(outcome.expect("the reload applies").generation, 2);
    let closed = spans.0.lock().unwrap().clone();
    let phases: Vec<&str> = closed
        .iter()
        .filter(|span| span.parent.as_deref() == Some("reload"))
        .map(|span| span.name)
        .collect();
    assert_eq!(
        phases,
        ["load", "validate", "build", "warm", "swap"],
        "{closed:?}"
    );
    for span in closed.iter().filter(|span| span.parent.is_some()) {
        assert!(span.took_ms.is_some(), "{span:?} has took_ms");
    }
    assert!(
        closed.iter().any(|span| span.name == "reload"),
        "{closed:?}"
    );
}

/// A closed span: its name, its parent's, and the `took_ms` it recorded.
#[derive(Clone, Debug)]
struct ClosedSpan {
    name: &'static str,
    parent: Option<String>,
    took_ms: Option<u64>,
}

/// Records every span as it closes.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<ClosedSpan>>>);

/// `took_ms`, kept in the span's extensions until it closes.
struct TookMs(u64);

impl<S> tracing_subscriber::Layer<S> for SpanLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Took(Option<u64>);
        impl tracing::field::Visit for Took {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "took_ms" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut took = Took(None);
        values.record(&mut took);
        if let (Some(took), Some(span)) = (took.0, ctx.span(id)) {
            span.extensions_mut().insert(TookMs(took));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.span(&id).expect("a closing span exists");
        let closed = ClosedSpan {
            name: span.name(),
            parent: span.parent().map(|parent| parent.name().to_owned()),
            took_ms: span.extensions().get::<TookMs>().map(|took| took.0),
        };
        self.0.lock().unwrap().push(closed);
    }
}
