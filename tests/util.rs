//! Shared helpers: a temp folder holding a config file, the `kiln` process under
//! test with its output captured, HTTP calls, and a PostgreSQL schema per test.
//!
//! Every wait here is bounded and fails loudly with what it waited for; nothing
//! asserts on elapsed time.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a server may take to log `ready:`. Generous: debug build, two test
/// threads each starting servers on a 2-core machine.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a process may take to exit once it is expected to.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-request budget for one HTTP call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------

/// A kiln config document, built from the contract's template with overrides.
/// Values are raw TOML so tests can also write wrong types on purpose.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Config {
    fn base(kind: &str, url: &str) -> Config {
        Config {
            sections: Vec::new(),
        }
        .set_str("server.listen", "127.0.0.1:0")
        .set("server.workers", "2")
        .set_str("server.warm_timeout", "30s")
        .set_str("server.shutdown_grace", "10s")
        .set("server.warm_requests", r#"["/"]"#)
        .set_str("admin.listen", "127.0.0.1:0")
        .set_str("pools.main.kind", kind)
        .set_str("pools.main.url", url)
        .set("pools.main.max_size", "4")
        .set("pools.main.warm", "4")
        .set_str("pools.main.wait_timeout", "10s")
        .set_str("log.level", "info")
        .set_str("log.format", "pretty")
        .set_str("app.greeting", "Hello from kiln")
    }

    /// Pool `main` on a SQLite file relative to the config file's folder.
    pub(crate) fn sqlite() -> Config {
        Config::base("sqlite", "data/kiln.sqlite3")
    }

    /// Pool `main` on PostgreSQL at `url`.
    pub(crate) fn postgres(url: &str) -> Config {
        Config::base("postgres", url)
    }

    /// Sets `section.key` (the last dot separates the key) to a raw TOML value,
    /// adding the key or section when missing.
    pub(crate) fn set(mut self, path: &str, raw: &str) -> Config {
        let (section, key) = path
            .rsplit_once('.')
            .expect("a key path like server.workers");
        let index = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let entries = &mut self.sections[index].1;
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = raw.to_owned(),
            None => entries.push((key.to_owned(), raw.to_owned())),
        }
        self
    }

    /// Sets a string value.
    pub(crate) fn set_str(self, path: &str, value: &str) -> Config {
        self.set(path, &toml_str(value))
    }

    pub(crate) fn greeting(self, greeting: &str) -> Config {
        self.set_str("app.greeting", greeting)
    }

    /// Fixed listen addresses instead of ephemeral ones.
    pub(crate) fn listen_on(self, main: SocketAddr, admin: SocketAddr) -> Config {
        self.set_str("server.listen", &main.to_string())
            .set_str("admin.listen", &admin.to_string())
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (section, entries) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (key, value) in entries {
                out.push_str(&format!("{key} = {value}\n"));
            }
            out.push('\n');
        }
        out
    }
}

/// A TOML basic string. JSON string escapes are a subset of TOML's.
pub(crate) fn toml_str(value: &str) -> String {
    serde_json::to_string(value).expect("a string serializes")
}

/// A temp folder laid out as `etc/kiln.toml` (the config) and `run/` (the
/// process's working directory), so that relative paths resolved against the
/// wrong folder are visible and never land in the repository.
#[derive(Clone)]
pub(crate) struct Site(Arc<TempDir>);

impl Site {
    pub(crate) fn new(config: &str) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir()
            .expect("create a temp dir");
        std::fs::create_dir(dir.path().join("etc")).expect("create etc/");
        std::fs::create_dir(dir.path().join("run")).expect("create run/");
        let site = Site(Arc::new(dir));
        site.write_config(config);
        site
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.path("kiln.toml")
    }

    /// A path relative to the config file's folder.
    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.0.path().join("etc").join(relative)
    }

    pub(crate) fn cwd(&self) -> PathBuf {
        self.0.path().join("run")
    }

    /// Replaces the config file atomically, so a reader never sees half of it.
    pub(crate) fn write_config(&self, text: &str) {
        let tmp = self.path("kiln.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config into place");
    }

    /// `kiln` run from this site's working directory.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = kiln_command();
        cmd.current_dir(self.cwd());
        cmd
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// The binary under test with a predictable environment: no inherited
/// `KILN_*` settings (config overrides, admin URL), systemd variables or
/// `RUST_LOG`, no colours.
pub(crate) fn kiln_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(key);
        }
    }
    // Nor the notification socket of a service manager running the tests.
    for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(key);
    }
    cmd.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// What a finished command printed.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion within `EXIT_TIMEOUT`, killing it and failing
/// the test when it hangs.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let stdout = Lines::capture(child.stdout.take().expect("piped stdout"));
    let stderr = Lines::capture(child.stderr.take().expect("piped stderr"));
    let status = match wait_child(&mut child, EXIT_TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {EXIT_TIMEOUT:?}\n--- stderr ---\n{}",
                stderr.text()
            );
        }
    };
    Output {
        status,
        stdout: stdout.wait_closed(),
        stderr: stderr.wait_closed(),
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Lines read from a child's pipe by a background thread, with waiting.
#[derive(Clone, Default)]
pub(crate) struct Lines(Arc<(Mutex<LinesState>, Condvar)>);

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    fn capture(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let shared = lines.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            // Lossy and byte-wise: a stray non-UTF-8 byte must not end capture.
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                shared.update(|state| state.lines.push(line));
                buf.clear();
            }
            shared.update(|state| state.closed = true);
        });
        lines
    }

    fn update(&self, f: impl FnOnce(&mut LinesState)) {
        let (lock, cvar) = &*self.0;
        f(&mut lock.lock().unwrap());
        cvar.notify_all();
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.0.0.lock().unwrap().lines.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.0.lock().unwrap().lines.len()
    }

    pub(crate) fn text(&self) -> String {
        self.snapshot().iter().map(|l| format!("{l}\n")).collect()
    }

    /// The first line at index `from` or later that contains `needle`; `None`
    /// when the pipe closed or `timeout` passed first.
    pub(crate) fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap();
        loop {
            if let Some(line) = state.lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Everything, once the writer closed the pipe (bounded).
    pub(crate) fn wait_closed(&self) -> String {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap();
        while !state.closed {
            let now = Instant::now();
            assert!(
                now < deadline,
                "output pipe still open after the process exited"
            );
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
        state.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Drops ANSI escape sequences, in case the log formatter colours anyway.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running (or starting) `kiln <CONFIG>` process. Dropping it kills the
/// process; when the test is failing, the captured stderr is printed.
pub(crate) struct Server {
    pub(crate) site: Site,
    child: Child,
    pub(crate) stderr: Lines,
    pub(crate) stdout: Lines,
    addrs: Option<(SocketAddr, SocketAddr)>,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Server {
    /// Serves `config` from a fresh site and waits for `ready:`.
    pub(crate) fn start(config: &str) -> Server {
        Server::start_with(config, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub(crate) fn start_with(config: &str, env: &[(&str, &str)]) -> Server {
        let mut server = Server::spawn(Site::new(config), env);
        server.wait_ready();
        server
    }

    /// Starts serving `site` without waiting for anything.
    pub(crate) fn spawn(site: Site, env: &[(&str, &str)]) -> Server {
        let mut cmd = site.command();
        cmd.arg(site.config_path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kiln");
        let stdout = Lines::capture(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::capture(child.stderr.take().expect("piped stderr"));
        let token = env
            .iter()
            .find(|(k, _)| *k == "KILN__ADMIN__TOKEN")
            .map(|(_, v)| v.to_string());
        Server {
            site,
            child,
            stderr,
            stdout,
            addrs: None,
            token,
            agent: agent(),
        }
    }

    /// Waits for the `ready:` line and learns the listening addresses from it.
    pub(crate) fn wait_ready(&mut self) -> String {
        let Some(line) = self.stderr.wait_for(0, "ready: ", READY_TIMEOUT) else {
            // Either stderr closed (the process is exiting) or time ran out.
            match self.try_wait_exit(Duration::from_secs(5)) {
                Some(status) => panic!("kiln exited ({status}) without logging `ready:`"),
                None => panic!("kiln did not log `ready:` within {READY_TIMEOUT:?}"),
            }
        };
        self.addrs = Some(parse_ready(&line));
        line
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn main_addr(&self) -> SocketAddr {
        self.addrs.expect("server not ready yet").0
    }

    pub(crate) fn admin_addr(&self) -> SocketAddr {
        self.addrs.expect("server not ready yet").1
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.main_addr())
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// GET on the server's keep-alive connection.
    pub(crate) fn get(&self, path: &str) -> Reply {
        expect_reply(call(&self.agent, "GET", &self.url(path), &[], None))
    }

    /// GET on a connection of its own.
    pub(crate) fn get_on_new_connection(&self, path: &str) -> Reply {
        expect_reply(call(&agent(), "GET", &self.url(path), &[], None))
    }

    pub(crate) fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, &body.to_string())
    }

    /// POSTs `body` as-is, labelled JSON (for malformed bodies).
    pub(crate) fn post_raw(&self, path: &str, body: &str) -> Reply {
        let headers = [("content-type", "application/json")];
        expect_reply(call(
            &self.agent,
            "POST",
            &self.url(path),
            &headers,
            Some(body),
        ))
    }

    /// An admin call with exactly the given `Authorization` header (or none).
    pub(crate) fn admin_call(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let body = (method == "POST").then_some("");
        expect_reply(call(
            &self.agent,
            method,
            &self.admin_url(path),
            &headers,
            body,
        ))
    }

    /// `curl -X method` on the admin listener with extra `-H` headers (a real
    /// client that sends exactly the `Host` and `Origin` it is given).
    pub(crate) fn admin_curl(&self, method: &str, path: &str, headers: &[&str]) -> Reply {
        curl(method, &self.admin_url(path), headers)
    }

    /// An admin call authorised with the token the server was started with.
    fn admin(&self, method: &str, path: &str) -> Reply {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        self.admin_call(method, path, bearer.as_deref())
    }

    pub(crate) fn admin_get(&self, path: &str) -> Reply {
        self.admin("GET", path)
    }

    pub(crate) fn reload(&self) -> Reply {
        self.admin("POST", "/admin/reload")
    }

    /// The generation `/admin/status` reports.
    pub(crate) fn status_generation(&self) -> u64 {
        let status = self.admin_get("/admin/status");
        assert_eq!(status.status, 200, "{status:?}");
        status.json()["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("status without a numeric generation: {status:?}"))
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`) with kill(1).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    pub(crate) fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        self.try_wait_exit(EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("kiln did not exit within {EXIT_TIMEOUT:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- kiln (pid {}) stderr ---\n{}--- end of kiln stderr ---",
                self.child.id(),
                self.stderr.text()
            );
        }
    }
}

/// Reads `listening on <ADDR>, admin on <ADDR>` from the ready line. An
/// unspecified admin IP (0.0.0.0) is reached through loopback.
fn parse_ready(line: &str) -> (SocketAddr, SocketAddr) {
    let addr_after = |marker: &str| -> SocketAddr {
        let start = line
            .find(marker)
            .unwrap_or_else(|| panic!("ready line lacks {marker:?}: {line}"))
            + marker.len();
        let token: String = line[start..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ';' | '"'))
            .collect();
        let mut addr: SocketAddr = token
            .trim_end_matches('.')
            .parse()
            .unwrap_or_else(|e| panic!("bad address {token:?} after {marker:?} ({e}): {line}"));
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        addr
    };
    (addr_after("listening on "), addr_after("admin on "))
}

// ---------------------------------------------------------------------------
// HTTP and sockets
// ---------------------------------------------------------------------------

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

fn expect_reply(result: Result<Reply, ureq::Error>) -> Reply {
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

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

const PG_ADDR: &str = "127.0.0.1:5432";
const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5";

/// A schema of its own in database `test`, dropped at the end of the test.
pub(crate) struct PgSchema {
    name: String,
}

impl PgSchema {
    /// The pool URL for kiln, putting the schema first on the search path.
    pub(crate) fn url(&self) -> String {
        self.url_at(PG_ADDR)
    }

    /// The same through another `host:port` (a proxy, a closed port).
    pub(crate) fn url_at(&self, host_port: &str) -> String {
        format!(
            "postgres://postgres@{host_port}/test?application_name={0}&options=-csearch_path%3D{0}",
            self.name
        )
    }

    /// The schema's name, also the `application_name` of kiln's connections.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// PostgreSQL backends serving kiln's connections to this schema now.
    pub(crate) fn backends(&self) -> i64 {
        pg_query_i64(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'",
            self.name
        ))
    }

    /// The same with a password, which trust auth ignores: a secret to hunt
    /// for in logs and answers.
    pub(crate) fn url_with_password(&self, password: &str) -> String {
        self.url()
            .replacen("postgres@", &format!("postgres:{password}@"), 1)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Best effort: a leftover schema harms nothing.
        let _ = pg_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// PostgreSQL at 127.0.0.1:5432 with a fresh schema. Starts the local cluster
/// when it is installed but stopped; panics (never skips) when unreachable.
pub(crate) fn postgres() -> PgSchema {
    static START: Once = Once::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    if pg_execute("SELECT 1").is_err() {
        START.call_once(|| {
            let out = Command::new("sh")
                .arg("-c")
                .arg("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
                .output();
            eprintln!("postgres was not reachable; tried to start it: {out:?}");
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match pg_execute("SELECT 1") {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => panic!(
                    "PostgreSQL is required at {PG_ADDR} (user postgres, db test, trust auth) \
                     and could not be reached or started: {e}"
                ),
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
    }
    let name = format!("kiln_{}_{}", std::process::id(), NEXT.fetch_add(1, SeqCst));
    pg_execute(&format!(
        "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
    ))
    .unwrap_or_else(|e| panic!("create schema {name}: {e}"));
    PgSchema { name }
}

/// A TCP proxy in front of PostgreSQL that counts connections and holds each
/// new one for `delay` before connecting upstream. [`cut`](PgProxy::cut)
/// makes the database vanish as a failover does (open connections end, new
/// ones are accepted and never answered); [`restore`](PgProxy::restore)
/// brings it back.
pub(crate) struct PgProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    /// Connections piped through to PostgreSQL and not closed yet.
    live: AtomicUsize,
    /// Whether the database is cut off, and every socket that a cut ends or
    /// a restore releases.
    outage: Mutex<Outage>,
}

#[derive(Default)]
struct Outage {
    cut: bool,
    /// Both ends of every piped connection.
    piped: Vec<TcpStream>,
    /// Connections accepted during a cut, held unanswered.
    held: Vec<TcpStream>,
}

impl PgProxy {
    pub(crate) fn start(delay: Duration) -> PgProxy {
        let upstream: SocketAddr = PG_ADDR.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (counts2, stop2) = (counts.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                counts2.accepted.fetch_add(1, SeqCst);
                {
                    let mut outage = counts2.outage.lock().unwrap();
                    if outage.cut {
                        outage.held.push(client);
                        continue;
                    }
                }
                let counts = counts2.clone();
                thread::spawn(move || pipe(client, upstream, delay, &counts));
            }
        });
        PgProxy { addr, counts, stop }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections the pool opened so far.
    pub(crate) fn accepted(&self) -> usize {
        self.counts.accepted.load(SeqCst)
    }

    /// Connections open right now.
    pub(crate) fn live(&self) -> usize {
        self.counts.live.load(SeqCst)
    }

    /// The database goes away: every open connection is shut down, and new
    /// ones are accepted but never answered (a black hole, as after a
    /// failover), until [`restore`](Self::restore).
    pub(crate) fn cut(&self) {
        let mut outage = self.counts.outage.lock().unwrap();
        outage.cut = true;
        for stream in outage.piped.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The database comes back: the connections held during the cut are
    /// closed and new ones reach PostgreSQL again.
    pub(crate) fn restore(&self) {
        let mut outage = self.counts.outage.lock().unwrap();
        outage.cut = false;
        for stream in outage.held.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        self.restore();
        self.cut();
    }
}

fn pipe(client: TcpStream, upstream: SocketAddr, delay: Duration, counts: &Counts) {
    thread::sleep(delay);
    let Ok(server) = TcpStream::connect(upstream) else {
        return; // the client sees EOF, as with a dead database
    };
    {
        let mut outage = counts.outage.lock().unwrap();
        if outage.cut {
            return; // cut while connecting: both ends close here
        }
        outage.piped.push(client.try_clone().unwrap());
        outage.piped.push(server.try_clone().unwrap());
    }
    counts.live.fetch_add(1, SeqCst);
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let forward = thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let (mut from_server, mut to_client) = (server, client);
    let _ = io::copy(&mut from_server, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Write);
    let _ = forward.join();
    counts.live.fetch_sub(1, SeqCst);
}

impl PgSchema {
    /// Holds `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE` in a transaction
    /// of its own until the returned guard is dropped: every query on the
    /// table waits meanwhile, holding its pool connection.
    pub(crate) fn lock_table(&self, table: &str) -> PgLock {
        let sql = format!(
            "BEGIN; LOCK TABLE {}.{table} IN ACCESS EXCLUSIVE MODE",
            self.name
        );
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            pg_session(|client| async move {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = locked_tx.send(());
                // Until the guard is dropped (the sender goes away).
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        locked
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("LOCK TABLE {table} did not succeed"));
        PgLock {
            release: Some(release),
            holder: Some(holder),
        }
    }

    /// How many backends wait for a lock on a table of this schema.
    pub(crate) fn waiting_for_locks(&self) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT l.granted AND n.nspname = '{}'",
            self.name
        );
        pg_session(|client| async move {
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get::<_, i64>(0))
        })
        .expect("count lock waiters")
    }
}

/// A table lock held by [`PgSchema::lock_table`]; dropping it commits.
pub(crate) struct PgLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

/// The first column of the first row of `sql`, run on a short-lived admin
/// connection.
pub(crate) fn pg_query_i64(sql: &str) -> i64 {
    pg_session(|client| async move {
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(|e| format!("{sql}: {e:?}"))?;
        Ok(row.get::<_, i64>(0))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `sql` as the superuser, panicking on failure.
pub(crate) fn pg_admin(sql: &str) {
    pg_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `work` on a short-lived admin connection.
fn pg_session<T, F>(work: impl FnOnce(tokio_postgres::Client) -> F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let result = work(client).await;
        let _ = driver.await;
        result
    })
}

/// Runs `sql` on a short-lived admin connection.
fn pg_execute(sql: &str) -> Result<(), String> {
    pg_session(|client| async move { client.batch_execute(sql).await.map_err(|e| e.to_string()) })
}

// ---------------------------------------------------------------------------
// Web-alterable configuration: PATCH, rollback, history, watched files
// ---------------------------------------------------------------------------

/// How long a change made through the file (a watched save, SIGHUP) may take
/// to be served: debounce, reload and warm-up in a debug build on a busy
/// machine.
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

impl Site {
    /// The config file's text as it is on disk now.
    pub(crate) fn read_config(&self) -> String {
        std::fs::read_to_string(self.config_path()).expect("read the config file")
    }

    /// Overwrites the config file in place (truncate, then write), as a
    /// plain `echo > file` or an editor without safe-save does.
    pub(crate) fn write_config_in_place(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config in place");
    }
}

impl Server {
    /// `PATCH /admin/config` with `body` sent as-is, labelled JSON, plus
    /// `headers` (`If-Match`, `Authorization`); the start-up token is sent
    /// unless `headers` carries an `Authorization` of its own.
    pub(crate) fn patch_config_raw(&self, body: &str, headers: &[(&str, &str)]) -> Reply {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all = vec![("content-type", "application/json")];
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            all.extend(bearer.as_deref().map(|b| ("authorization", b)));
        }
        all.extend_from_slice(headers);
        expect_reply(call(
            &self.agent,
            "PATCH",
            &self.admin_url("/admin/config"),
            &all,
            Some(body),
        ))
    }

    /// `PATCH /admin/config` with a JSON merge patch.
    pub(crate) fn patch_config(&self, patch: &Value) -> Reply {
        self.patch_config_raw(&patch.to_string(), &[])
    }

    /// `PATCH /admin/config` with a JSON merge patch and `If-Match: etag`.
    pub(crate) fn patch_config_if_match(&self, patch: &Value, etag: &str) -> Reply {
        self.patch_config_raw(&patch.to_string(), &[("if-match", etag)])
    }

    /// The `ETag` of `GET /admin/config`.
    pub(crate) fn config_etag(&self) -> String {
        let reply = self.admin_get("/admin/config");
        assert_eq!(reply.status, 200, "{reply:?}");
        reply
            .header("etag")
            .unwrap_or_else(|| panic!("GET /admin/config without an ETag: {reply:?}"))
            .to_owned()
    }

    /// `POST /admin/rollback`.
    pub(crate) fn rollback(&self) -> Reply {
        self.admin("POST", "/admin/rollback")
    }

    /// `GET /admin/history`: the reload attempts, newest first.
    pub(crate) fn history(&self) -> Vec<Value> {
        let reply = self.admin_get("/admin/history");
        assert_eq!(reply.status, 200, "{reply:?}");
        match reply.json() {
            Value::Array(entries) => entries,
            other => panic!("history is not a JSON array: {other}"),
        }
    }

    /// The history entries with `trigger`, newest first.
    pub(crate) fn history_of(&self, trigger: &str) -> Vec<Value> {
        self.history()
            .into_iter()
            .filter(|entry| entry["trigger"] == trigger)
            .collect()
    }

    /// Waits (bounded) until `GET /` answers `greeting`, and returns the
    /// generation that served it.
    pub(crate) fn wait_for_greeting(&self, greeting: &str) -> u64 {
        wait_until(
            APPLY_TIMEOUT,
            &format!("the greeting {greeting:?} to be served"),
            || self.get("/").body == greeting,
        );
        self.get("/").generation()
    }

    /// Asserts that `GET /` still answers `greeting` from `generation`, on
    /// this connection and on a new one.
    pub(crate) fn assert_serving(&self, greeting: &str, generation: u64) {
        for root in [self.get("/"), self.get_on_new_connection("/")] {
            assert_eq!(
                (root.body.as_str(), root.generation()),
                (greeting, generation),
                "GET / serves the expected greeting and generation"
            );
        }
    }

    /// Asserts `secret` appears nowhere the server printed.
    pub(crate) fn assert_not_printed(&self, secret: &str) {
        for (name, lines) in [("stderr", &self.stderr), ("stdout", &self.stdout)] {
            let text = lines.text();
            assert!(!text.contains(secret), "secret printed on {name}:\n{text}");
        }
    }

    /// Waits (bounded) until `GET /admin/history` holds the entry of
    /// `generation` (a watched or signalled reload is served a moment before
    /// it is recorded), and returns it.
    pub(crate) fn wait_for_history_entry(&self, generation: u64) -> Value {
        let mut found = None;
        wait_until(
            APPLY_TIMEOUT,
            &format!("generation {generation} in /admin/history"),
            || {
                found = self
                    .history()
                    .into_iter()
                    .find(|entry| entry["generation"] == generation);
                found.is_some()
            },
        );
        found.expect("found by the wait")
    }
}

/// Asserts `reply` is a successful reload answer (`200` with `generation`,
/// `previous`, `changed`, `rebuilt`, `took_ms`) that made `generation` out of
/// the one before, changing and rebuilding exactly what is listed.
pub(crate) fn assert_reloaded(reply: &Reply, generation: u64, changed: &[&str], rebuilt: &[&str]) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["generation"], generation, "{body}");
    assert_eq!(body["previous"], generation - 1, "{body}");
    assert_eq!(json_strings(&body["changed"]), changed, "{body}");
    assert_eq!(json_strings(&body["rebuilt"]), rebuilt, "{body}");
    assert!(body["took_ms"].is_u64(), "{body}");
}

/// Asserts `reply` refuses a change with `status`, an error message and the
/// `generation` that keeps serving; returns its JSON for case-specific checks.
pub(crate) fn assert_refused(reply: &Reply, status: u16, generation: u64) -> Value {
    assert_eq!(reply.status, status, "{reply:?}");
    let body = reply.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error message: {reply:?}"
    );
    assert_eq!(
        body["generation"], generation,
        "the serving generation: {reply:?}"
    );
    body
}

/// The strings of a JSON array (`changed`, `rebuilt`, `keys`).
pub(crate) fn json_strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected strings in {value}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Embedding: kiln as a library in a Router the test builds, and the examples
// ---------------------------------------------------------------------------

/// How long an embedded kiln may take to start, reload, or let a held request
/// in: generous, for a debug build on a busy machine.
pub(crate) const EMBED_TIMEOUT: Duration = Duration::from_secs(60);

/// An `[app]` section with the greeting every [`Config`] sets.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub(crate) struct Greeting {
    pub(crate) greeting: String,
}

impl kiln::AppConfig for Greeting {}

/// The smallest app to embed: the greeting of the generation it was built
/// for, at `/`.
pub(crate) struct GreetingApp;

impl kiln::App for GreetingApp {
    type Config = Greeting;
    type State = ();

    async fn prepare(
        &self,
        _: &kiln::Generation<Greeting>,
        _: Option<&()>,
    ) -> Result<(), kiln::BoxError> {
        Ok(())
    }

    fn router(&self, generation: &kiln::Generation<Greeting>, _: &()) -> axum::Router {
        let greeting = generation.app().greeting.clone();
        axum::Router::new().route("/", axum::routing::get(move || async move { greeting }))
    }
}

/// Sends `request` through `router` in-process and reads the answer in full.
pub(crate) async fn send(router: &axum::Router, request: axum::extract::Request) -> Reply {
    use tower::ServiceExt as _;
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("read the body");
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    }
}

/// `GET path` through `router`, with `Host: host` when given.
pub(crate) async fn get_in_process(router: &axum::Router, host: Option<&str>, path: &str) -> Reply {
    let mut request = axum::http::Request::get(path);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    send(
        router,
        request
            .body(axum::body::Body::empty())
            .expect("a valid request"),
    )
    .await
}

/// A point inside a handler where requests wait until the test opens it, so
/// that they are in flight for as long as the test needs.
pub(crate) struct Gate {
    entered: tokio::sync::watch::Sender<usize>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: tokio::sync::watch::Sender::new(0),
            open: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Gate {
    /// Called by the handler: counts itself in, then waits for the gate to open.
    pub(crate) async fn pass(&self) {
        self.entered.send_modify(|n| *n += 1);
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.expect("the gate lives");
    }

    /// Waits (bounded) until `count` requests wait at the gate.
    pub(crate) async fn wait_entered(&self, count: usize) {
        let mut entered = self.entered.subscribe();
        tokio::time::timeout(EMBED_TIMEOUT, entered.wait_for(|n| *n >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} requests did not reach the gate"))
            .expect("the gate lives");
    }

    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Polls `condition` every 10 ms (without blocking the runtime) until it holds;
/// fails naming `what` after `EMBED_TIMEOUT`.
pub(crate) async fn wait_until_async(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + EMBED_TIMEOUT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {EMBED_TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The compiled example `name`: `cargo test` builds examples into
/// `target/<profile>/examples/`, beside the folder of the `kiln` binary.
fn example_path(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    let path = bin
        .parent()
        .expect("the binary's folder")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {name} is not built at {}: run `cargo test` (which builds examples) or `cargo build --examples`",
        path.display()
    );
    path
}

impl Server {
    /// Runs example `name` with `site`'s config file, then `args`, and waits
    /// for its `ready:` line.
    pub(crate) fn start_example(name: &str, site: Site, args: &[&str]) -> Server {
        Server::start_example_with(name, site, args, &[])
    }

    /// Like [`Server::start_example`], with extra environment variables.
    pub(crate) fn start_example_with(
        name: &str,
        site: Site,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = Command::new(example_path(name));
        cmd.current_dir(site.cwd())
            .arg(site.config_path())
            .args(args)
            // No inherited `KILN__*` overrides or `RUST_LOG`.
            .env_clear()
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the example");
        let stdout = Lines::capture(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::capture(child.stderr.take().expect("piped stderr"));
        let mut server = Server {
            site,
            child,
            stderr,
            stdout,
            addrs: None,
            token: env
                .iter()
                .find(|(k, _)| *k == "KILN__ADMIN__TOKEN")
                .map(|(_, v)| v.to_string()),
            agent: agent(),
        };
        server.wait_ready();
        server
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body) and returns
/// its status and body.
pub(crate) fn read_response(reader: &mut impl BufRead) -> (u16, String) {
    let (status, _, body) = read_response_with_head(reader);
    (status, body)
}

/// Like [`read_response`], with the header lines too (lower-cased, trimmed).
pub(crate) fn read_response_with_head(reader: &mut impl BufRead) -> (u16, Vec<String>, String) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let (mut length, mut chunked, mut head) = (0, false, Vec::new());
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
        head.push(header);
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
    (status, head, String::from_utf8_lossy(&body).into_owned())
}
