//! Limits and overload, each with the status clients expect and a JSON body:
//! `server.max_body` (413), `server.max_header_bytes` (431),
//! `server.request_timeout` (503), `server.max_concurrent` (503 +
//! Retry-After), and a panicking handler (500, the worker lives on).

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Config, Server, assert_error_line, read_response, run};

const WAIT: Duration = Duration::from_secs(30);

fn debug() -> Config {
    Config::sqlite().set("app.debug_routes", "true")
}

/// A note whose JSON body is `size` bytes long.
fn note_of(size: usize) -> String {
    let text = "x".repeat(size - r#"{"text":""}"#.len());
    format!(r#"{{"text":"{text}"}}"#)
}

/// POSTs `body` to `/notes` with curl, chunked (no Content-Length); returns
/// the status and body.
fn post_chunked(server: &Server, body: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", "transfer-encoding: chunked", "--data-binary", body])
        .arg(server.url("/notes"))
        .output()
        .expect("run curl");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').expect("a status line");
    (status.parse().expect("a status"), body.to_owned())
}

#[test]
fn a_body_over_max_body_is_refused_with_413_and_the_limit_reloads() {
    let config = Config::sqlite().set_str("server.max_body", "1KiB");
    let server = Server::start(&config.render());
    let small = server.post_raw("/notes", &note_of(1000));
    assert_eq!(small.status, 201, "{small:?}");

    // Declared too large: kiln refuses before the handler reads anything.
    let large = server.post_raw("/notes", &note_of(2000));
    assert_eq!(large.status, 413, "{large:?}");
    assert!(
        large.json()["error"]
            .as_str()
            .unwrap()
            .contains("server.max_body"),
        "{large:?}"
    );
    // Streamed without a length: the body fails to read past the limit.
    let (status, body) = post_chunked(&server, &note_of(2000));
    assert_eq!(status, 413, "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_ok(),
        "{body}"
    );

    // Raised above axum's own 2 MiB default by a reload.
    server
        .site
        .write_config(&Config::sqlite().set_str("server.max_body", "4MiB").render());
    assert_eq!(server.reload().status, 200);
    let text = 3 << 20;
    let big = server.post_raw("/notes", &note_of(text));
    // The demo caps notes at 10,000 characters: 422 is its answer to the
    // body it read, not a size limit.
    assert_eq!(big.status, 422, "{big:?}");
}

#[test]
fn a_bad_max_body_or_max_header_bytes_is_refused_at_start_naming_the_key() {
    for (key, value, needle) in [
        ("server.max_body", "2MB", "server.max_body"),
        ("server.max_header_bytes", "4KiB", "server.max_header_bytes"),
    ] {
        let site = crate::util::Site::new(&Config::sqlite().set_str(key, value).render());
        let output = run(site.command().arg(site.config_path()));
        assert!(!output.status.success(), "{key} = {value:?} started");
        assert_error_line(&output.stderr, &[needle, value]);
    }
}

/// Sends a GET whose head carries a header of `size` bytes; the status.
fn get_with_header_of(server: &Server, size: usize) -> u16 {
    let mut stream = TcpStream::connect(server.main_addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nhost: kiln\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "y".repeat(size)
    );
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes());
    read_response(&mut BufReader::new(stream)).0
}

#[test]
fn a_request_head_over_max_header_bytes_is_answered_431() {
    let server = Server::start(&Config::sqlite().render());
    assert_eq!(get_with_header_of(&server, 4 << 10), 200);
    // Over the 64 KiB default (hyper's own limit is about 400 KiB).
    assert_eq!(get_with_header_of(&server, 100 << 10), 431);

    let server = Server::start(
        &Config::sqlite()
            .set_str("server.max_header_bytes", "16KiB")
            .render(),
    );
    assert_eq!(get_with_header_of(&server, 20 << 10), 431);
    assert_eq!(server.get("/").status, 200, "the server serves on");
}

#[test]
fn a_request_over_request_timeout_is_answered_503_with_json() {
    let server = Server::start(&debug().set_str("server.request_timeout", "500ms").render());
    let started = Instant::now();
    let slow = server.get("/debug/sleep?ms=20000");
    assert_eq!(slow.status, 503, "{slow:?}");
    assert!(
        slow.json()["error"]
            .as_str()
            .unwrap()
            .contains("server.request_timeout"),
        "{slow:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at the limit, not after the handler"
    );
    assert_eq!(server.get("/debug/sleep?ms=1").body, "slept");
}

#[test]
fn past_max_concurrent_a_worker_sheds_load_with_503_and_retry_after() {
    let config = debug()
        .set("server.workers", "1")
        .set("server.max_concurrent", "1");
    let server = Server::start(&config.render());
    let mark = server.stderr.len();
    let url = server.url("/debug/sleep?ms=3000");
    let busy = thread::spawn(move || {
        crate::util::call(&crate::util::agent(), "GET", &url, &[], None)
            .expect("the slow request is answered")
            .status
    });
    server
        .stderr
        .wait_for(mark, "debug: sleeping", WAIT)
        .expect("the first request is in its handler");
    let shed = server.get_on_new_connection("/");
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(shed.header("retry-after"), Some("1"), "{shed:?}");
    assert!(
        shed.json()["error"]
            .as_str()
            .unwrap()
            .contains("server.max_concurrent"),
        "{shed:?}"
    );
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(
        server.get("/").status,
        200,
        "served again once the slot is free"
    );
}

#[test]
fn a_panicking_handler_is_answered_500_and_the_worker_serves_on() {
    let server = Server::start(&debug().set("server.workers", "1").render());
    // A kept-alive connection that is busy elsewhere keeps working too.
    assert_eq!(server.get_on_new_connection("/").status, 200);
    let mark = server.stderr.len();
    let panicked = server.get("/debug/panic");
    assert_eq!(panicked.status, 500, "{panicked:?}");
    assert!(panicked.json()["error"].is_string(), "{panicked:?}");
    let line = server
        .stderr
        .wait_for(mark, "panicked; answered 500", WAIT)
        .expect("the panic is logged");
    assert!(
        line.contains("/debug/panic"),
        "the log names the route: {line}"
    );
    assert_eq!(server.get("/").body, "Hello from kiln", "same connection");
    assert_eq!(server.get_on_new_connection("/").body, "Hello from kiln");
}
