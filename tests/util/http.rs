//! HTTP calls and raw sockets: keep-alive agents, replies, ports that are free
//! or refuse.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// An HTTP reply, body read in full (so the connection goes back to the pool).
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: ureq::http::HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Config-Generation`, which every main-listener response carries.
    pub(crate) fn generation(&self) -> u64 {
        self.header("x-config-generation")
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("no numeric X-Config-Generation: {self:?}"))
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(2000).collect();
        write!(f, "HTTP {} {:?} {body}", self.status, self.headers)
    }
}

/// An agent that returns 4xx/5xx as replies and keeps connections alive.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .into()
}

/// One request; transport errors are returned, not panicked on.
pub(crate) fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = match body {
        Some(body) => agent.run(request.body(body).expect("valid request"))?,
        None => agent.run(request.body(()).expect("valid request"))?,
    };
    Ok(Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body_mut().read_to_string()?,
    })
}

/// One request with `curl`, headers given as `Name: value`; the reply's
/// headers and body are read from curl's output.
pub(crate) fn curl(method: &str, url: &str, headers: &[&str]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D", "-", "-X", method, url]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    let out = cmd.output().expect("run curl");
    assert!(out.status.success(), "curl {method} {url}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("curl printed UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let mut map = ureq::http::HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            map.append(
                ureq::http::HeaderName::try_from(name.trim()).expect("a header name"),
                ureq::http::HeaderValue::try_from(value.trim()).expect("a header value"),
            );
        }
    }
    Reply {
        status,
        headers: map,
        body: body.to_owned(),
    }
}

pub(super) fn expect_reply(result: Result<Reply, ureq::Error>) -> Reply {
    result.unwrap_or_else(|e| panic!("HTTP request failed: {e}"))
}

/// A loopback address for kiln to bind, on a port below the kernel's
/// ephemeral range: nothing bound to port 0 (another test's kiln, a client's
/// connection) can take it between this check and kiln's bind. Each call in
/// this process gets another port.
pub(crate) fn free_addr() -> SocketAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = ephemeral_low();
    // Start somewhere that depends on the process, so that two test runs at
    // once rarely walk the same ports.
    let span = low - FIXED_PORTS_FROM;
    let start = (std::process::id() as usize * 7919) % span;
    for _ in 0..span {
        let port = FIXED_PORTS_FROM + (start + NEXT.fetch_add(1, SeqCst)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in {FIXED_PORTS_FROM}..{low}");
}

/// Where [`free_addr`] starts looking.
const FIXED_PORTS_FROM: usize = 20_000;

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_low() -> usize {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".to_owned());
    let low = text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ip_local_port_range starts with a port");
    assert!(
        low > FIXED_PORTS_FROM + 1000,
        "the ephemeral range starts at {low}: too low for fixed test ports"
    );
    low
}

/// Two distinct loopback addresses for kiln's main and admin listeners (see
/// [`free_addr`]).
pub(crate) fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    (free_addr(), free_addr())
}

/// A loopback port that refuses connections for as long as this lives: a
/// socket bound but not listening holds it, so no other test can take it.
pub(crate) struct ClosedPort(socket2::Socket);

impl ClosedPort {
    pub(crate) fn new() -> ClosedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind an ephemeral port");
        ClosedPort(socket)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.0
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("an IPv4 address")
    }
}

/// The number of TCP sockets listening on `port` (`/proc/net/tcp`), however
/// many file descriptors share each.
pub(crate) fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is fields[1]; state 0A is LISTEN.
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
        })
        .count()
}

/// Asserts that some stderr line contains `error:` and every one of `needles`
/// (the contract: one line naming the file, the key path and the problem).
pub(crate) fn assert_error_line(stderr: &str, needles: &[&str]) {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert!(
        errors.iter().any(|l| needles.iter().all(|n| l.contains(n))),
        "expected an `error:` line naming {needles:?}; error lines: {errors:#?}\n--- stderr ---\n{stderr}"
    );
}

/// Whether something accepts TCP connections at `addr` right now.
pub(crate) fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Polls `condition` every 20 ms until it holds; fails naming `what` after
/// `timeout`.
pub(crate) fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
