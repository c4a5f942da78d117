//! Connection limits: a client that never finishes its request head (or
//! sends none, or idles between keep-alive requests) is cut after
//! `server.header_read_timeout`; `0s` turns the limit off. What is not
//! waiting for a request head is never cut by it: a slow handler, a long
//! streaming response, a WebSocket, an HTTP/2 connection.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Config, Server, read_response};

/// The limit these tests set.
const LIMIT: &str = "1s";

/// A server with `header_read_timeout` = [`LIMIT`] and the debug routes.
fn limited() -> Server {
    let config = Config::sqlite()
        .set_str("server.header_read_timeout", LIMIT)
        .set("app.debug_routes", "true");
    Server::start(&config.render())
}

/// Opens a connection and sends half a request head.
fn half_a_head(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.main_addr()).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: kiln\r\n")
        .expect("send half a head");
    stream
}

/// Asserts the server ends `stream` (a half-sent head) well within 20 s.
fn assert_cut_by_the_limit(stream: &mut TcpStream) {
    // Far longer than the limit, so that only a limit that never fires fails.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0; 1024];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => {
            // hyper may answer 408 before closing; the connection must end.
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                head.starts_with("HTTP/1.1 408"),
                "unexpected answer: {head}"
            );
        }
        Err(e) => panic!("the connection was not cut by header_read_timeout = 1s: {e}"),
    }
}

#[test]
fn an_unfinished_request_head_is_cut_after_header_read_timeout() {
    let server = limited();
    assert_cut_by_the_limit(&mut half_a_head(&server));
    // The server keeps serving everyone else.
    assert_eq!(server.get("/").body, "Hello from kiln");
}

#[test]
fn the_admin_listener_cuts_an_unfinished_request_head_too() {
    let server = limited();
    let mut stream = TcpStream::connect(server.admin_addr()).expect("connect");
    stream
        .write_all(b"GET /admin/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("send half a head");
    assert_cut_by_the_limit(&mut stream);
    assert_eq!(server.admin_get("/admin/status").status, 200);
}

#[test]
fn header_read_timeout_zero_turns_the_limit_off() {
    let config = Config::sqlite().set_str("server.header_read_timeout", "0s");
    let server = Server::start(&config.render());
    let mut stream = half_a_head(&server);
    // Longer than the 1 s limit of the test above: still open, and the head
    // finished now is answered.
    thread::sleep(Duration::from_secs(2));
    stream.write_all(b"Connection: close\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("Hello from kiln"), "{answer}");
}

#[test]
fn a_connection_that_sends_nothing_is_cut_after_header_read_timeout() {
    let server = limited();
    let mut stream = TcpStream::connect(server.main_addr()).expect("connect");
    assert_cut_by_the_limit(&mut stream);
}

/// Sends `GET path` on `stream` (kept alive) and returns the answer's
/// status and body.
fn get(stream: &TcpStream, path: &str) -> (u16, String) {
    let mut writer = stream;
    write!(writer, "GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n").expect("send a request");
    read_response(&mut BufReader::new(stream))
}

#[test]
fn an_idle_keep_alive_connection_is_cut_after_header_read_timeout() {
    let server = limited();
    let mut stream = TcpStream::connect(server.main_addr()).expect("connect");
    assert_eq!(get(&stream, "/"), (200, "Hello from kiln".to_owned()));
    assert_cut_by_the_limit(&mut stream);
}

#[test]
fn a_handler_slower_than_header_read_timeout_is_not_cut() {
    let server = limited();
    let stream = TcpStream::connect(server.main_addr()).expect("connect");
    // 2.5 limits with a request in flight, then the next on the same
    // connection.
    assert_eq!(
        get(&stream, "/debug/sleep?ms=2500"),
        (200, "slept".to_owned())
    );
    assert_eq!(get(&stream, "/"), (200, "Hello from kiln".to_owned()));
}

#[test]
fn a_response_streamed_longer_than_header_read_timeout_is_not_cut() {
    let server = limited();
    let stream = TcpStream::connect(server.main_addr()).expect("connect");
    // Three chunks 1.5 s apart: each gap longer than the limit.
    let (status, body) = get(&stream, "/debug/stream?chunks=3&ms=1500");
    assert_eq!(status, 200);
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(get(&stream, "/"), (200, "Hello from kiln".to_owned()));
}

/// Returns once the limit has passed since the call: a connection opened
/// now with half a request head has been cut.
fn wait_past_the_limit(server: &Server) {
    assert_cut_by_the_limit(&mut half_a_head(server));
}

#[test]
fn a_websocket_idle_longer_than_header_read_timeout_is_not_cut() {
    let server = limited();
    let url = format!("ws://{}/ws", server.main_addr());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut socket, answer) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("the WebSocket handshake");
        assert_eq!(answer.status().as_u16(), 101);
        wait_past_the_limit(&server);
        socket
            .send(Message::text("still here"))
            .await
            .expect("send");
        let echo = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an echo")
            .expect("the socket is still open")
            .expect("a frame");
        assert_eq!(echo.into_text().unwrap().as_str(), "still here");
    });
}

/// HTTP/2's connection preface and an empty SETTINGS frame.
const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Reads HTTP/2 frames from `stream` until one of `kind` with `flags`;
/// panics if the connection ends first.
fn read_frame_until(stream: &mut TcpStream, kind: u8, flags: u8) {
    loop {
        let mut head = [0; 9];
        stream.read_exact(&mut head).expect("an HTTP/2 frame");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        stream
            .read_exact(&mut payload)
            .expect("the frame's payload");
        if head[3] == kind && head[4] & flags == flags {
            return;
        }
    }
}

#[test]
fn an_http2_connection_idle_longer_than_header_read_timeout_is_not_cut() {
    // HTTP/2 has no head timeout (hyper's is HTTP/1's); only an HTTP/1
    // connection waits for a head.
    let server = limited();
    let mut stream = TcpStream::connect(server.main_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(H2_START).expect("the preface");
    read_frame_until(&mut stream, 0x4, 0x0); // the server's SETTINGS
    wait_past_the_limit(&server);
    // A PING is answered: the connection is still served.
    stream
        .write_all(b"\0\0\x08\x06\0\0\0\0\0kiln-png")
        .expect("a PING");
    read_frame_until(&mut stream, 0x6, 0x1);
}
