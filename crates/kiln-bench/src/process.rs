//! Servers under test as child processes: start (optionally pinned to CPUs
//! with `taskset`), wait until the port accepts, read RSS, stop.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A server process started by the driver; killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// When the process was spawned.
    pub spawned: Instant,
    /// Lines the server wrote to stderr, as they arrive.
    lines: mpsc::Receiver<String>,
    /// Every stderr line so far (drained from `lines`).
    pub log: Vec<String>,
}

impl Server {
    /// Spawns `program args…`, pinned to `cpus` (a `taskset -c` list) when
    /// given, with `envs` added. Stderr is read line by line (and copied to
    /// `log_file` when given); stdout is discarded.
    ///
    /// # Errors
    ///
    /// When the program cannot be started.
    pub fn start(
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        cpus: Option<&str>,
        log_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut copy = log_file.map(File::create).transpose()?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = copy.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(file, "{line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            spawned,
            lines,
            log: Vec::new(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `addr` with TCP connects (every 0.5 ms) until one succeeds,
    /// and returns the time since spawn. Fails if the process exits or
    /// `timeout` passes.
    ///
    /// # Errors
    ///
    /// When the server exited or did not accept within `timeout`.
    pub fn wait_accepting(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(self.spawned.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                self.drain();
                bail!(
                    "the server exited ({status}) before accepting on {addr}; its log:\n{}",
                    self.log.join("\n")
                );
            }
            if Instant::now() > deadline {
                self.drain();
                bail!(
                    "the server did not accept on {addr} within {timeout:?}; its log:\n{}",
                    self.log.join("\n")
                );
            }
            thread::sleep(Duration::from_micros(500));
        }
    }

    /// Waits up to `timeout` for a stderr line containing `needle` and
    /// returns it.
    ///
    /// # Errors
    ///
    /// When no such line came in time.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return Ok(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line.clone());
                    if found {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "no log line with {needle:?} within {timeout:?}; the log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Moves every line already written into [`log`](Self::log).
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Resident set size in KiB, from `/proc/PID/status`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read (the process is gone).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line")
    }

    /// CPU time the process has run so far (every thread), in ns, from
    /// `/proc/PID/task/*/schedstat`: unaffected by time spent waiting for a
    /// CPU, so it stays comparable when other work shares the machine.
    ///
    /// # Errors
    ///
    /// When the process is gone.
    pub fn cpu_ns(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// SIGTERM, then up to `grace` to exit, then SIGKILL.
    pub fn stop(mut self, grace: Duration) {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` (a name as `kill` takes it: `TERM`, `USR2`) to `pid`;
/// whether it was delivered.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a running process: a zombie (exited, not yet reaped,
/// as a server that a restart orphaned can be) counts as gone.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in brackets.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
    })
}

/// Waits up to `timeout` for `pid` to be gone; whether it went.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    true
}

/// SIGTERM to `pid`, which need not be a child (a process a restart
/// started), then up to `grace` to exit, then SIGKILL.
pub fn terminate(pid: u32, grace: Duration) {
    if signal(pid, "TERM") && !wait_gone(pid, grace) {
        signal(pid, "KILL");
        wait_gone(pid, grace);
    }
}

/// The milliseconds in kiln's `ready: … warm in <ms> ms; …` line.
pub fn ready_ms(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once(" warm in ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A port on 127.0.0.1 that was free a moment ago, below Linux's ephemeral
/// range (32768–60999): a port the kernel hands out for `:0` can be taken by
/// an outgoing connection (the load generator's) before the server binds it.
///
/// # Errors
///
/// When no port in 20000–31999 can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start where other drivers running at once are unlikely to be.
    let offset = std::process::id().wrapping_mul(7_919);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + offset.wrapping_add(n) % COUNT).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {FIRST}..{}", FIRST + COUNT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_alive_and_a_reaped_one_is_not() {
        assert!(super::alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!super::alive(pid));
        assert!(super::wait_gone(pid, std::time::Duration::from_secs(1)));
    }

    #[test]
    fn parses_the_ready_line() {
        let line = "2026-01-01T00:00:00Z  INFO kiln::server: ready: 2 workers, 1 resources warm in 37 ms; listening on 127.0.0.1:8080, admin on 127.0.0.1:9090";
        assert_eq!(super::ready_ms(line), Some(37.0));
    }
}
