//! Signals: SIGHUP reloads exactly like the admin route; SIGTERM drains
//! (stop accepting, finish what is in flight, exit 0); SIGINT exits cleanly.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use crate::util::{self, Config, Server};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn sighup_reloads_like_the_route() {
    let config = |greeting: &str| Config::sqlite().greeting(greeting);
    let server = Server::start(&config("before").render());

    // A bad file first: logged naming the key, nothing applied.
    let mark = server.stderr.len();
    server
        .site
        .write_config(&config("bad").set("pools.main.max_size", "0").render());
    server.signal("HUP");
    assert!(
        server
            .stderr
            .wait_for(mark, "pools.main.max_size", WAIT)
            .is_some(),
        "the failed SIGHUP reload was not logged naming pools.main.max_size"
    );
    let root = server.get("/");
    assert_eq!((root.body.as_str(), root.generation()), ("before", 1));

    server.site.write_config(&config("after").render());
    server.signal("HUP");
    util::wait_until(WAIT, "SIGHUP to apply the new greeting", || {
        server.get("/").body == "after"
    });
    assert_eq!(
        server.get("/").generation(),
        2,
        "the failed reload consumed no id"
    );
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body) and returns
/// its status and body.
fn read_response(reader: &mut impl BufRead) -> (u16, String) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let (mut length, mut chunked) = (0, false);
    loop {
        line.clear();
        reader.read_line(&mut line).expect("read header");
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().expect("numeric content-length");
        }
        chunked |= header.starts_with("transfer-encoding:") && header.contains("chunked");
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).expect("read chunk size");
            let size = usize::from_str_radix(line.trim(), 16).expect("hex chunk size");
            let mut chunk = vec![0; size + 2]; // data and CRLF
            reader.read_exact(&mut chunk).expect("read chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("read body");
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A connection with a POST whose body is only partly sent.
struct SlowPost {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
    rest: Vec<u8>,
}

impl SlowPost {
    fn begin(main: SocketAddr, text: &str) -> SlowPost {
        let mut conn = TcpStream::connect(main).expect("connect");
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        // A full round trip first: the server has accepted and serves this
        // connection before the slow request starts.
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: kiln\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader).0, 200);
        let body = serde_json::json!({ "text": text }).to_string().into_bytes();
        let head = format!(
            "POST /notes HTTP/1.1\r\nhost: kiln\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body[..5]).unwrap();
        SlowPost {
            conn,
            reader,
            rest: body[5..].to_vec(),
        }
    }

    /// Sends the rest of the body and returns the status and the note's id.
    fn finish(mut self) -> (u16, Option<i64>) {
        self.conn.write_all(&self.rest).unwrap();
        let (status, body) = read_response(&mut self.reader);
        let id = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_i64());
        (status, id)
    }
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let config = Config::sqlite().set_str("server.shutdown_grace", "30s");
    let mut server = Server::start(&config.render());
    let main = server.main_addr();

    let slow: Vec<SlowPost> = (0..3)
        .map(|i| SlowPost::begin(main, &format!("drained {i}")))
        .collect();
    // Give the server a moment to read the heads, so the requests are in
    // flight (a wait, not a timing assertion).
    thread::sleep(Duration::from_secs(1));
    server.signal("TERM");
    util::wait_until(
        WAIT,
        "the main port to refuse new connections after SIGTERM",
        || !util::accepts(main),
    );
    let mut ids = Vec::new();
    for post in slow {
        let (status, id) = post.finish();
        assert_eq!(
            status, 201,
            "an in-flight request completes during the drain"
        );
        ids.push(id.expect("201 answer has an id"));
    }

    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0), "kiln exits 0 after draining ({exit})");

    // The notes were committed before the pools closed: serve the same files again.
    let site = server.site.clone();
    drop(server);
    let mut again = Server::spawn(site, &[]);
    again.wait_ready();
    for id in ids {
        let note = again.get(&format!("/notes/{id}"));
        assert_eq!(note.status, 200, "{note:?}");
    }
}

#[test]
fn sigint_exits_zero_with_idle_connection_open() {
    let mut server = Server::start(&Config::sqlite().render());
    // Leaves an idle kept-alive connection in the server's agent.
    assert_eq!(server.get("/").status, 200);
    server.signal("INT");
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0), "kiln exits 0 on SIGINT ({exit})");
}
