//! Connection limits: a client that never finishes its request head is cut
//! after `server.header_read_timeout`; `0s` turns the limit off.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::util::{Config, Server};

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
    let config = Config::sqlite().set_str("server.header_read_timeout", "1s");
    let server = Server::start(&config.render());
    assert_cut_by_the_limit(&mut half_a_head(&server));
    // The server keeps serving everyone else.
    assert_eq!(server.get("/").body, "Hello from kiln");
}

#[test]
fn the_admin_listener_cuts_an_unfinished_request_head_too() {
    let config = Config::sqlite().set_str("server.header_read_timeout", "1s");
    let server = Server::start(&config.render());
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
