//! The live log filter (`GET`/`PUT /admin/log-level`): checked before it
//! applies, effective at once on every worker, audited, guarded by the
//! token, and reset by the next reload that changes `log.level`.

use serde_json::{Value, json};

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
    let state = get_filter(&server);
    assert_eq!(state["source"], "config", "{state}");
    assert!(
        state["filter"].as_str().unwrap().starts_with("info"),
        "{state}"
    );

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
    let state = get_filter(&server);
    assert_eq!(state["source"], "config", "{state}");
    assert!(
        state["filter"].as_str().unwrap().starts_with("warn"),
        "{state}"
    );
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
