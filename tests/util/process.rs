//! The `kiln` process under test (and the examples), its output captured line
//! by line.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// The binary under test with a predictable environment: no inherited
/// `KILN_*` settings (config overrides, admin URL), systemd variables or
/// `RUST_LOG`, no colours.
pub(crate) fn kiln_command() -> Command {
    kiln_command_via(&[])
}

/// [`kiln_command`] started through `wrapper` (a program and its arguments,
/// kiln's path following them), such as `systemd-socket-activate -l ADDR`.
pub(crate) fn kiln_command_via(wrapper: &[&str]) -> Command {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(kiln);
            cmd
        }
        None => Command::new(kiln),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(key);
        }
    }
    // Nor the notification socket of a service manager running the tests.
    // Nor its socket activation.
    for key in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
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
    pub(super) fn capture(pipe: impl Read + Send + 'static) -> Lines {
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
    pub(super) child: Child,
    pub(crate) stderr: Lines,
    pub(crate) stdout: Lines,
    pub(super) addrs: Option<(SocketAddr, SocketAddr)>,
    pub(super) token: Option<String>,
    pub(super) agent: ureq::Agent,
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
        Server::spawn_via(site, &[], env)
    }

    /// [`Server::spawn`] through `wrapper` (see [`kiln_command_via`]).
    pub(crate) fn spawn_via(site: Site, wrapper: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = site.command_via(wrapper);
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
    pub(super) fn admin(&self, method: &str, path: &str) -> Reply {
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

    /// Waits up to `timeout` for the process to exit. Its last lines may
    /// still be in the pipe then: read them with `stderr.wait_closed()`.
    pub(crate) fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// Like [`Server::try_wait_exit`], failing the test after `EXIT_TIMEOUT`.
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
