//! The HTTP protocol as axum users rely on it: WebSockets (upgrades) and
//! HTTP/2 with prior knowledge beside HTTP/1.1, and a drain that closes
//! keep-alive connections politely and counts only what it cuts.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, Config, Server, read_response, read_response_with_head};

const WAIT: Duration = Duration::from_secs(30);

/// Sends `text` on `socket` and returns the next text message.
async fn round_trip<S>(socket: &mut S, text: &str) -> String
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    socket
        .send(Message::text(text))
        .await
        .expect("send a frame");
    let reply = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("an echo within the wait")
        .expect("the socket is still open")
        .expect("a frame");
    reply.into_text().expect("a text frame").to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_websocket_echoes_and_outlives_a_reload() {
    let config = |greeting: &str| Config::sqlite().greeting(greeting);
    let server = Server::start(&config("before").render());
    let url = format!("ws://{}/ws", server.main_addr());
    runtime().block_on(async {
        let (mut socket, answer) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("the WebSocket handshake");
        assert_eq!(answer.status().as_u16(), 101);
        assert_eq!(round_trip(&mut socket, "one").await, "one");

        // A reload while the socket is open: new requests see the new
        // generation, the socket keeps working on its own.
        server.site.write_config(&config("after").render());
        let reload = server.reload();
        assert_eq!(reload.status, 200, "{reload:?}");
        assert_eq!(server.get("/").body, "after");
        assert_eq!(round_trip(&mut socket, "two").await, "two");
        socket.close(None).await.expect("close the socket");
    });
}

#[test]
fn an_open_websocket_is_cut_at_the_drain_deadline() {
    let config = Config::sqlite().set_str("server.shutdown_grace", "1s");
    let mut server = Server::start(&config.render());
    let url = format!("ws://{}/ws", server.main_addr());
    runtime().block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("the WebSocket handshake");
        assert_eq!(round_trip(&mut socket, "one").await, "one");
        server.signal("TERM");
        // The socket ends (the process drains for 1 s, then cuts it).
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the upgraded connection was never closed");
    });
    assert_eq!(server.wait_exit().code(), Some(1), "something was cut");
    assert!(
        server.stderr.wait_closed().contains("requests=1"),
        "the drain reports the one open upgraded connection as cut"
    );
}

/// `curl` with the given arguments; its stdout.
fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn http2_with_prior_knowledge_is_served_beside_http1() {
    let server = Server::start(&Config::sqlite().render());
    let h2 = curl(&["-i", "--http2-prior-knowledge", &server.url("/")]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(h2.contains("x-config-generation: 1"), "{h2}");
    assert!(h2.ends_with("Hello from kiln"), "{h2}");
    let h1 = curl(&["-i", "--http1.1", &server.url("/")]);
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.ends_with("Hello from kiln"), "{h1}");
}

#[test]
fn http2_false_serves_http1_only() {
    let server = Server::start(&Config::sqlite().set("server.http2", "false").render());
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--http2-prior-knowledge"])
        .arg(server.url("/"))
        .output()
        .expect("run curl");
    assert!(!output.status.success(), "HTTP/2 was served");
    assert_eq!(server.get("/").body, "Hello from kiln");
}

/// A kept-alive connection that has served one request.
fn kept_alive(server: &Server) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(server.main_addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream)
        .write_all(b"GET / HTTP/1.1\r\nhost: kiln\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).0, 200);
    (stream, reader)
}

#[test]
fn during_drain_a_keep_alive_request_is_answered_with_connection_close() {
    let config = Config::sqlite()
        .set_str("server.shutdown_grace", "10s")
        .set("app.debug_routes", "true");
    let mut server = Server::start(&config.render());
    let (mut stream, mut reader) = kept_alive(&server);
    let main = server.main_addr();
    server.signal("TERM");
    util::wait_until(WAIT, "the main port to close for the drain", || {
        !util::accepts(main)
    });
    // The idle connection lingers: a request sent now is still answered,
    // and the answer closes the connection.
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: kiln\r\n\r\n")
        .unwrap();
    let (status, head, body) = read_response_with_head(&mut reader);
    assert_eq!((status, body.as_str()), (200, "Hello from kiln"));
    assert!(head.iter().any(|h| h == "connection: close"), "{head:?}");
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn the_drain_counts_only_requests_in_flight_as_cut() {
    let config = Config::sqlite()
        .set_str("server.shutdown_grace", "2s")
        .set("server.workers", "1")
        .set("app.debug_routes", "true");
    let mut server = Server::start(&config.render());
    // Three idle keep-alive connections and one request that outlasts the grace.
    let idle: Vec<_> = (0..3).map(|_| kept_alive(&server)).collect();
    let (mut slow, _reader) = kept_alive(&server);
    let mark = server.stderr.len();
    slow.write_all(b"GET /debug/sleep?ms=60000 HTTP/1.1\r\nhost: kiln\r\n\r\n")
        .unwrap();
    server
        .stderr
        .wait_for(mark, "debug: sleeping", WAIT)
        .expect("the slow request is in its handler");
    server.signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(1), "something was cut");
    let log = server.stderr.wait_closed();
    assert!(log.contains("requests=1"), "one request was cut:\n{log}");
    drop(idle);
}

#[test]
fn during_drain_http2_gets_goaway_and_its_stream_in_flight_finishes() {
    let config = Config::sqlite()
        .set_str("server.shutdown_grace", "20s")
        .set("app.debug_routes", "true");
    let mut server = Server::start(&config.render());
    let mark = server.stderr.len();
    let curl = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "30", "--http2-prior-knowledge"])
        .arg(server.url("/debug/sleep?ms=2000"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    server
        .stderr
        .wait_for(mark, "debug: sleeping", WAIT)
        .expect("the HTTP/2 request is in its handler");
    server.signal("TERM");
    let output = curl.wait_with_output().expect("curl ends");
    let verbose = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "slept",
        "{verbose}"
    );
    assert!(
        verbose.contains("GOAWAY"),
        "no GOAWAY seen by curl:\n{verbose}"
    );
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn http2_and_max_header_bytes_are_restart_only() {
    let server = Server::start(&Config::sqlite().render());
    for (key, value) in [
        ("server.http2", "false"),
        ("server.max_header_bytes", "\"32KiB\""),
    ] {
        server.site.write_config(
            &Config::sqlite()
                .greeting("must not apply")
                .set(key, value)
                .render(),
        );
        let reload = server.reload();
        assert_eq!(reload.status, 409, "{reload:?}");
        assert_eq!(
            reload.json()["keys"],
            serde_json::json!([key]),
            "{reload:?}"
        );
    }
    assert_eq!(server.get("/").body, "Hello from kiln");
}
