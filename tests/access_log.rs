//! `log.access`: one line per request with its matched route, status,
//! duration, bytes, generation and request id, in either log format; the
//! `X-Request-Id` taken when valid, made otherwise, and returned.

use std::time::Duration;

use serde_json::Value;

use crate::util::{self, Config, Reply, Server};

const ACCESS: &str = "kiln::access";
/// How long an access line may take to appear after its response.
const LOGGED: Duration = Duration::from_secs(30);

fn get_with_id(server: &Server, path: &str, id: &str) -> Reply {
    let reply = util::call(
        &util::agent(),
        "GET",
        &server.url(path),
        &[("x-request-id", id)],
        None,
    );
    reply.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The next access line from `from` on that carries `needle`.
fn access_line(server: &Server, from: usize, needle: &str) -> String {
    let line = server
        .stderr
        .wait_for(from, needle, LOGGED)
        .unwrap_or_else(|| panic!("no access line with {needle}:\n{}", server.stderr.text()));
    assert!(line.contains(ACCESS), "{line}");
    line
}

/// A made-up id: 16 hex digits, a dash, a hex counter.
fn is_generated(id: &str) -> bool {
    id.split_once('-').is_some_and(|(prefix, n)| {
        prefix.len() == 16
            && !n.is_empty()
            && (prefix.chars().chain(n.chars())).all(|c| c.is_ascii_hexdigit())
    })
}

#[test]
fn access_lines_name_the_route_status_bytes_generation_and_request_id() {
    let server = Server::start(&Config::sqlite().set("log.access", "true").render());
    let from = server.stderr.len();
    let reply = get_with_id(&server, "/notes/41", "client-id-41");
    assert_eq!(reply.header("x-request-id"), Some("client-id-41"));
    let line = access_line(&server, from, "client-id-41");
    for field in [
        "method=GET",
        r#"route="/notes/{id}""#,
        &format!("status={}", reply.status),
        &format!("bytes={}", reply.body.len()),
        "generation=1",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    // Without an id, one is made, returned and logged.
    let from = server.stderr.len();
    let reply = server.get("/");
    let made = reply
        .header("x-request-id")
        .expect("a request id")
        .to_owned();
    assert!(is_generated(&made), "{made}");
    let line = access_line(&server, from, &made);
    assert!(
        line.contains(r#"route="/""#) && line.contains("status=200"),
        "{line}"
    );
    let next = server.get("/");
    assert_ne!(next.header("x-request-id"), Some(made.as_str()));

    // An unmatched path is logged by a fixed name, never its own.
    let from = server.stderr.len();
    let reply = get_with_id(&server, "/no/such/path", "unmatched-1");
    assert_eq!(reply.status, 404);
    let line = access_line(&server, from, "unmatched-1");
    assert!(line.contains(r#"route="unmatched""#), "{line}");
    assert!(!line.contains("/no/such/path"), "{line}");
}

#[test]
fn a_bad_request_id_is_replaced_not_echoed() {
    let server = Server::start(&Config::sqlite().set("log.access", "true").render());
    let too_long = "a".repeat(129);
    for bad in [too_long.as_str(), "has space", "tab\there"] {
        let from = server.stderr.len();
        let reply = get_with_id(&server, "/", bad);
        assert_eq!(reply.status, 200, "{reply:?}");
        let id = reply.header("x-request-id").expect("a request id");
        assert!(is_generated(id), "{bad:?} answered with id {id:?}");
        let line = access_line(&server, from, id);
        assert!(!line.contains(bad), "{line}");
    }
    // 128 visible characters are the longest id taken.
    let longest = "b".repeat(128);
    assert_eq!(
        get_with_id(&server, "/", &longest).header("x-request-id"),
        Some(longest.as_str())
    );
}

#[test]
fn access_lines_in_json_carry_the_fields_as_keys() {
    let config = Config::sqlite()
        .set("log.access", "true")
        .set_str("log.format", "json");
    let server = Server::start(&config.render());
    // The access log shows whatever the level.
    let quiet = config.set_str("log.level", "warn");
    server.site.write_config(&quiet.render());
    assert_eq!(server.reload().status, 200);
    let from = server.stderr.len();
    let reply = get_with_id(&server, "/notes/7", "json-7");
    let line = access_line(&server, from, "json-7");
    let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["target"], ACCESS, "{entry}");
    // The event's fields are top-level keys.
    assert_eq!(entry["method"], "GET", "{entry}");
    assert_eq!(entry["route"], "/notes/{id}", "{entry}");
    assert_eq!(entry["status"], u64::from(reply.status), "{entry}");
    assert_eq!(entry["bytes"], reply.body.len() as u64, "{entry}");
    assert_eq!(entry["generation"], 2, "{entry}");
    assert_eq!(entry["request_id"], "json-7", "{entry}");
    assert!(entry["duration_ms"].is_f64(), "{entry}");
}

#[test]
fn the_access_log_is_off_by_default_and_a_reload_turns_it_on() {
    let config = Config::sqlite();
    let server = Server::start(&config.render());
    let reply = get_with_id(&server, "/", "before-reload");
    assert_eq!(reply.header("x-request-id"), None, "{reply:?}");

    server
        .site
        .write_config(&config.set("log.access", "true").render());
    assert_eq!(server.reload().status, 200);
    let from = server.stderr.len();
    let reply = get_with_id(&server, "/", "after-reload");
    assert_eq!(reply.header("x-request-id"), Some("after-reload"));
    let line = access_line(&server, from, "after-reload");
    assert!(line.contains("generation=2"), "{line}");
    assert!(
        !server.stderr.text().contains("before-reload"),
        "{}",
        server.stderr.text()
    );
}

/// Access lines are written in batches: none is lost when kiln stops with
/// requests still arriving.
#[test]
fn every_answered_request_is_logged_through_a_shutdown() {
    let config = Config::sqlite()
        .set("log.access", "true")
        .set("server.workers", "2");
    let mut server = Server::start(&config.render());
    let (answered, ids) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let url = server.url("/");
            let answered = answered.clone();
            std::thread::spawn(move || {
                let agent = util::agent();
                for n in 0.. {
                    let id = format!("drain-{client}-{n}");
                    match util::call(&agent, "GET", &url, &[("x-request-id", &id)], None) {
                        Ok(reply) if reply.status == 200 => {
                            if answered.send(id).is_err() {
                                return;
                            }
                        }
                        // Refused or closed: kiln is stopping.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    drop(answered);
    let mut logged_before_stop: Vec<String> = ids.iter().take(200).collect();
    server.signal("TERM");
    assert!(server.wait_exit().success());
    for client in clients {
        client.join().expect("a client thread");
    }
    logged_before_stop.extend(ids.try_iter());
    let text = server.stderr.wait_closed();
    for id in &logged_before_stop {
        assert!(
            text.contains(&format!("request_id=\"{id}\"")),
            "no access line for {id} among {} answered",
            logged_before_stop.len()
        );
    }
}
