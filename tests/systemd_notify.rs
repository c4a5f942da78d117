//! systemd's notification protocol, against a fake `NOTIFY_SOCKET` (a unix
//! datagram socket this test binds and reads): `READY=1` once bound,
//! `RELOADING=1` + `MONOTONIC_USEC` then `READY=1` around every reload
//! (a refused one too), `STOPPING=1` when the drain begins, and `WATCHDOG=1`
//! while `WATCHDOG_USEC` is set; nothing from an app that embeds kiln.

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tempfile::TempDir;

use crate::util::{Config, Server, Site, agent, call, free_addr};

/// How long one notification may take to arrive.
const WAIT: Duration = Duration::from_secs(60);

/// A stand-in for systemd's notification socket.
pub(crate) struct FakeSystemd {
    socket: UnixDatagram,
    pub(crate) path: String,
    /// Messages other than watchdog pings, received but not yet taken.
    pending: VecDeque<Vec<String>>,
    watchdog_pings: usize,
    _dir: TempDir,
}

impl FakeSystemd {
    pub(crate) fn bind() -> FakeSystemd {
        let dir = tempfile::Builder::new()
            .prefix("kiln-notify-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
        socket.set_read_timeout(Some(WAIT)).unwrap();
        FakeSystemd {
            socket,
            path: path.to_str().expect("a UTF-8 temp path").to_owned(),
            pending: VecDeque::new(),
            watchdog_pings: 0,
            _dir: dir,
        }
    }

    /// Receives one datagram (bounded by `WAIT`), filing it.
    fn receive(&mut self, waiting_for: &str) {
        let mut buf = [0; 4096];
        let n = self.socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no notification within {WAIT:?} while waiting for {waiting_for} ({e})")
        });
        let lines: Vec<String> = String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_owned)
            .collect();
        if lines == ["WATCHDOG=1"] {
            self.watchdog_pings += 1;
        } else {
            self.pending.push_back(lines);
        }
    }

    /// The next message that is not a watchdog ping, as its lines.
    pub(crate) fn next(&mut self, what: &str) -> Vec<String> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return message;
            }
            self.receive(what);
        }
    }

    /// Fails on any message other than a watchdog ping that arrived and was
    /// not taken.
    pub(crate) fn expect_silence(&mut self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]);
            assert_eq!(message, "WATCHDOG=1\n", "an unexpected notification");
        }
        self.socket.set_nonblocking(false).unwrap();
        assert!(
            self.pending.is_empty(),
            "unexpected notifications: {:?}",
            self.pending
        );
    }

    /// Waits until `count` watchdog pings have arrived in all.
    fn wait_watchdog(&mut self, count: usize) {
        while self.watchdog_pings < count {
            self.receive("WATCHDOG=1");
        }
    }
}

/// The value of `KEY=` in a message.
pub(crate) fn field<'a>(message: &'a [String], key: &str) -> Option<&'a str> {
    message
        .iter()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn notifies_ready_reloading_and_stopping_in_order() {
    let mut systemd = FakeSystemd::bind();
    let config = |greeting: &str| Config::sqlite().greeting(greeting).render();
    let mut server = Server::start_with(
        &config("one"),
        &[
            ("NOTIFY_SOCKET", systemd.path.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    let ready = systemd.next("READY=1 after bind");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS: {ready:?}"));
    for needle in [
        "generation 1".to_owned(),
        server.main_addr().to_string(),
        server.admin_addr().to_string(),
    ] {
        assert!(
            status.contains(&needle),
            "STATUS lacks {needle:?}: {status}"
        );
    }

    // A reload through the admin API.
    server.site.write_config(&config("two"));
    let reply = server.reload();
    assert_eq!(reply.status, 200, "{reply:?}");
    let reloading = systemd.next("RELOADING=1");
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let usec = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without a numeric MONOTONIC_USEC: {reloading:?}"));
    assert!(usec > 0, "{reloading:?}");
    let ready = systemd.next("READY=1 after the reload");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert_eq!(field(&ready, "STATUS"), Some("generation 2"), "{ready:?}");

    // A refused reload (SIGHUP, a bad file) still ends the reloading state.
    server
        .site
        .write_config(&Config::sqlite().set("pools.main.max_size", "0").render());
    server.signal("HUP");
    let reloading = systemd.next("RELOADING=1 for SIGHUP");
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    assert!(
        field(&reloading, "MONOTONIC_USEC").is_some(),
        "{reloading:?}"
    );
    let ready = systemd.next("READY=1 after the refused reload");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    let status = field(&ready, "STATUS").unwrap_or_default();
    assert!(
        status.starts_with("generation 2") && status.contains("refused"),
        "STATUS should keep generation 2 and say the reload was refused: {ready:?}"
    );

    // WATCHDOG_USEC=400ms: a ping every 200ms, from the running server.
    systemd.wait_watchdog(2);

    server.signal("TERM");
    let stopping = systemd.next("STOPPING=1");
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert!(server.wait_exit().success());
    systemd.socket.set_nonblocking(true).unwrap();
    let mut buf = [0; 4096];
    while let Ok(n) = systemd.socket.recv(&mut buf) {
        let message = String::from_utf8_lossy(&buf[..n]);
        assert!(
            !message.contains("READY=1"),
            "READY=1 after STOPPING=1: {message}"
        );
    }
}

#[test]
fn an_embedding_app_sends_nothing() {
    let systemd = FakeSystemd::bind();
    let token = "tok-notify-embed";
    let listen = free_addr().to_string();
    let server = Server::start_example_with(
        "embed",
        Site::new(&Config::sqlite().render()),
        &[&listen],
        &[
            ("KILN__ADMIN__TOKEN", token),
            ("NOTIFY_SOCKET", systemd.path.as_str()),
        ],
    );
    let bearer = format!("Bearer {token}");
    let reply = call(
        &agent(),
        "POST",
        &server.url("/ops/reload"),
        &[("authorization", bearer.as_str())],
        Some(""),
    )
    .expect("the example answers");
    assert_eq!(reply.status, 200, "{reply:?}");
    // kiln notifies synchronously, before the reload answers: anything it
    // sent is queued by now.
    systemd.socket.set_nonblocking(true).unwrap();
    let mut buf = [0; 4096];
    if let Ok(n) = systemd.socket.recv(&mut buf) {
        panic!(
            "an embedded kiln notified systemd: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}
