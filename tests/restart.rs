//! Zero-downtime restarts of the real binary (`kiln restart`,
//! `POST /admin/restart`, SIGUSR2): under keep-alive and
//! connection-per-request load no request fails and traffic moves to the
//! new process; restart-only keys (`server.workers`, `server.listen`) apply;
//! a streaming response spanning the handoff completes; a new process that
//! fails (invalid configuration, a pool that cannot warm, a hang) leaves the
//! old one serving with its listeners; one restart at a time; neither file
//! descriptors nor memory grow over fifty restarts; systemd hears
//! `RELOADING=1`, `MAINPID=<new>`, `READY=1`; sockets from systemd socket
//! activation are served and handed on; SIGTERM during a restart stops the
//! new process too.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use crate::systemd_notify::{FakeSystemd, field};
use crate::util::{self, Config, PgProxy, PgSchema, READY_TIMEOUT, Reply, Server, Site};

/// Restarts in a row under load: enough to show traffic moving every time,
/// few enough for a 2-core CI.
const RESTARTS: u64 = 5;
/// Restarts in a row without load: enough for a leak to show.
const MANY_RESTARTS: u64 = 50;
/// How long a restart's effects may take to show.
const WAIT: Duration = Duration::from_secs(60);

/// The processes restarts started. They are not the test's children: they
/// are killed here when the test ends, whatever its outcome.
#[derive(Default)]
struct Successors(Vec<u32>);

impl Drop for Successors {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// An admin call on a connection of its own: a kept-alive one could still
/// reach the process that handed over.
fn admin(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let body = (method == "POST").then_some("");
    util::call(
        &util::agent(),
        method,
        &format!("http://{addr}{path}"),
        &[],
        body,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn status(addr: SocketAddr) -> Value {
    let reply = admin(addr, "GET", "/admin/status");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Waits until `/admin/status` is answered by process `pid`.
fn wait_for_pid(addr: SocketAddr, pid: u64) -> Value {
    let mut last = Value::Null;
    util::wait_until(WAIT, &format!("pid {pid} in /admin/status"), || {
        last = status(addr);
        last["pid"].as_u64() == Some(pid)
    });
    last
}

/// The error of a restart that answered `503`.
fn failed(reply: Reply) -> String {
    assert_eq!(reply.status, 503, "{reply:?}");
    let error = reply.json()["error"].as_str().map(str::to_owned);
    error.unwrap_or_else(|| panic!("no error: {reply:?}"))
}

/// `kiln restart --json --admin …`, its exit status and the JSON it printed.
fn cli_restart(admin: SocketAddr) -> (bool, Value, String) {
    let out = util::run(util::kiln_command().args([
        "restart",
        "--json",
        "--admin",
        &format!("http://{admin}"),
    ]));
    let body = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln restart printed no JSON ({e}): {out:?}"));
    (out.status.success(), body, out.stderr)
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// What process `pid` has open: each descriptor and what it refers to.
fn open_files(pid: u64) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(Result::ok)
        .map(|fd| {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                fd.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect()
}

fn fd_count(pid: u64) -> usize {
    open_files(pid).len()
}

/// Process `pid`'s resident memory, in KiB.
fn rss_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The processes `pid` started (from any of its threads) that still run.
fn children(pid: u64) -> Vec<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|pids| {
            pids.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Process `pid`'s environment as it was started.
fn environment(pid: u64) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/environ: {e}"));
    environ
        .split(|&b| b == 0)
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .collect()
}

/// Serves `site` through `systemd-socket-activate` (Debian's systemd
/// package), which listens on each of `sockets` (address, name) and, at
/// the first connection, execs kiln with them as fds 3, 4, … and
/// `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` exactly as systemd does.
/// Returns once kiln has been started (not necessarily ready).
fn socket_activated(site: Site, sockets: &[(SocketAddr, &str)]) -> Server {
    let activate = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(activate).exists(),
        "{activate} is missing: install Debian's systemd package (.ci/run does)"
    );
    let addrs: Vec<String> = sockets.iter().map(|(addr, _)| addr.to_string()).collect();
    let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
    let fdnames = format!("--fdname={}", names.join(":"));
    let mut wrapper = vec![activate, fdnames.as_str()];
    for addr in &addrs {
        wrapper.extend(["-l", addr.as_str()]);
    }
    let server = Server::spawn_via(site, &wrapper, &[]);
    let last = &addrs[addrs.len() - 1];
    server
        .stderr
        .wait_for(0, &format!("Listening on {last}"), READY_TIMEOUT)
        .expect("systemd-socket-activate listens");
    // Its first connection starts kiln; kiln accepts it later and sees it
    // closed.
    drop(TcpStream::connect(sockets[0].0).expect("connect to the activated socket"));
    server
}

/// What process `pid` has open once start-up's background work is done: the
/// configuration file's watch opens its inotify descriptor just after
/// `ready:`.
fn settled_files(pid: u64) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    util::wait_until(WAIT, &format!("pid {pid}'s file watch"), || {
        files = open_files(pid);
        files.iter().any(|file| file.contains("inotify"))
    });
    files
}

/// Starts a restart of `server` whose new process hangs in its warm-up:
/// `base` with pool `main` on PostgreSQL (`pg`) behind a proxy that accepts
/// connections and never answers, for as long as it lives. Returns once the
/// new process has begun; the thread answers with the restart's reply.
fn hanging_restart(server: &Server, base: Config, pg: &PgSchema) -> (PgProxy, JoinHandle<Reply>) {
    let proxy = PgProxy::start(Duration::ZERO);
    proxy.cut();
    let hanging = base
        .set_str("server.warm_timeout", "120s")
        .set_str("pools.main.kind", "postgres")
        .set_str("pools.main.url", &pg.url_at(&proxy.addr().to_string()));
    server.site.write_config(&hanging.render());
    let from = server.stderr.len();
    let admin_addr = server.admin_addr();
    let restart = thread::spawn(move || admin(admin_addr, "POST", "/admin/restart"));
    server
        .stderr
        .wait_for(from, "Starting kiln: warming", WAIT)
        .expect("the new process starts");
    (proxy, restart)
}

/// Clients requesting a URL until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<(Arc<AtomicU64>, JoinHandle<Seen>)>,
    served: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Seen {
    generations: BTreeSet<u64>,
    failures: Vec<String>,
}

impl Load {
    /// `keep_alive` clients on one connection each, `per_request` clients
    /// opening a connection for every request.
    fn start(url: &str, keep_alive: usize, per_request: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let clients = (0..keep_alive + per_request)
            .map(|i| {
                let (url, stop, served) = (url.to_owned(), stop.clone(), served.clone());
                let last = Arc::new(AtomicU64::new(0));
                let seen_last = last.clone();
                let reuse = i < keep_alive;
                let client = thread::spawn(move || {
                    let mut seen = Seen::default();
                    let mut agent = util::agent();
                    while !stop.load(SeqCst) {
                        if !reuse {
                            agent = util::agent();
                        }
                        match util::call(&agent, "GET", &url, &[], None) {
                            Ok(reply) if reply.status == 200 => {
                                let generation = reply.generation();
                                seen.generations.insert(generation);
                                seen_last.store(generation, SeqCst);
                                served.fetch_add(1, SeqCst);
                            }
                            Ok(reply) => seen.failures.push(format!("{reply:?}")),
                            Err(e) => seen.failures.push(e.to_string()),
                        }
                    }
                    seen
                });
                (last, client)
            })
            .collect();
        Load {
            stop,
            clients,
            served,
        }
    }

    /// Waits until every client has been served by `generation`.
    fn wait_for(&self, generation: u64) {
        util::wait_until(
            WAIT,
            &format!("every client to be served by generation {generation}"),
            || {
                self.clients
                    .iter()
                    .all(|(last, _)| last.load(SeqCst) >= generation)
            },
        );
    }

    fn finish(mut self) -> (usize, Vec<Seen>) {
        self.stop.store(true, SeqCst);
        let seen = std::mem::take(&mut self.clients)
            .into_iter()
            .map(|(_, c)| c.join().expect("a client panicked"))
            .collect();
        (self.served.load(SeqCst), seen)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

#[test]
fn restarts_under_load_lose_no_request() {
    let config = |workers: &str, greeting: &str| {
        Config::sqlite()
            .set("server.workers", workers)
            .set("app.debug_routes", "true")
            .greeting(greeting)
            .render()
    };
    let server = Server::start(&config("1", "v0"));
    let admin_addr = server.admin_addr();
    let mut successors = Successors::default();

    // A streaming response that spans the first handoff.
    let stream_url = server.url("/debug/stream?chunks=30&ms=100");
    let stream = thread::spawn(move || util::call(&util::agent(), "GET", &stream_url, &[], None));
    server
        .stderr
        .wait_for(0, "debug: streaming", READY_TIMEOUT)
        .expect("the stream starts");

    let load = Load::start(&server.url("/"), 2, 2);
    load.wait_for(1);
    let mut pid = u64::from(server.pid());
    for k in 1..=RESTARTS {
        if k == 1 {
            // Restart-only: a reload would refuse it.
            server.site.write_config(&config("2", "v1"));
        }
        let new_pid = match k {
            1 => {
                let (ok, answer, stderr) = cli_restart(admin_addr);
                assert!(ok, "kiln restart failed: {answer}\n{stderr}");
                assert_eq!(answer["old_pid"].as_u64(), Some(pid), "{answer}");
                assert_eq!(answer["generation"].as_u64(), Some(k + 1), "{answer}");
                assert_eq!(answer["previous"].as_u64(), Some(k), "{answer}");
                answer["new_pid"].as_u64().expect("new_pid")
            }
            RESTARTS => {
                // SIGUSR2: nobody to answer, the status tells.
                let sent = Command::new("kill")
                    .args(["-USR2", &pid.to_string()])
                    .status()
                    .expect("run kill");
                assert!(sent.success());
                let mut new_pid = pid;
                util::wait_until(WAIT, "a new pid after SIGUSR2", || {
                    new_pid = status(admin_addr)["pid"].as_u64().unwrap_or(pid);
                    new_pid != pid
                });
                new_pid
            }
            _ => {
                let reply = admin(admin_addr, "POST", "/admin/restart");
                assert_eq!(reply.status, 200, "restart {k}: {reply:?}");
                // The answer comes from the process that handed over.
                assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
                let answer = reply.json();
                assert_eq!(answer["generation"].as_u64(), Some(k + 1), "{answer}");
                answer["new_pid"].as_u64().expect("new_pid")
            }
        };
        successors.0.push(new_pid as u32);
        assert_ne!(new_pid, pid, "restart {k} kept the pid");
        let status = wait_for_pid(admin_addr, new_pid);
        assert_eq!(status["generation"].as_u64(), Some(k + 1), "{status}");
        // Traffic moved: every client is served by the new process.
        load.wait_for(k + 1);
        pid = new_pid;
    }
    let (served, seen) = load.finish();

    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    let generations: BTreeSet<u64> = seen.iter().flat_map(|s| s.generations.clone()).collect();
    eprintln!(
        "restart under load: {served} requests served, {} failed, {RESTARTS} restarts, generations seen {generations:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests (first 20): {:#?}",
        failures.iter().take(20).collect::<Vec<_>>()
    );
    assert_eq!(
        generations,
        (1..=RESTARTS + 1).collect(),
        "every process served"
    );

    let streamed = stream.join().unwrap().expect("the stream completes");
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert_eq!(streamed.generation(), 1, "served by the first process");
    assert_eq!(streamed.body.lines().count(), 30, "{streamed:?}");

    let status = status(admin_addr);
    assert_eq!(
        status["workers"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    let history = admin(admin_addr, "GET", "/admin/history").json();
    let restarts: Vec<u64> = history
        .as_array()
        .expect("a history")
        .iter()
        .filter(|entry| entry["trigger"] == "restart")
        .filter_map(|entry| entry["generation"].as_u64())
        .collect();
    assert_eq!(
        restarts,
        (2..=RESTARTS + 1).rev().collect::<Vec<_>>(),
        "{history}"
    );
    let first = history
        .as_array()
        .and_then(|h| h.iter().find(|e| e["generation"] == 2))
        .expect("the first restart's entry");
    assert!(
        util::json_strings(&first["changed"]).contains(&"server.workers"),
        "{first}"
    );

    let mut server = server;
    assert!(server.wait_exit().success(), "the first process drained");
}

#[test]
fn a_moved_listen_applies_and_fifty_restarts_grow_neither_fds_nor_memory() {
    let server = Server::start(&Config::sqlite().render());
    let (old_main, admin_addr) = (server.main_addr(), server.admin_addr());
    let mut successors = Successors::default();

    let moved = util::free_addr();
    let config = Config::sqlite().set_str("server.listen", &moved.to_string());
    server.site.write_config(&config.render());
    let (ok, answer, stderr) = cli_restart(admin_addr);
    assert!(ok, "{answer}\n{stderr}");
    assert_eq!(answer["listen"], moved.to_string(), "{answer}");
    assert_eq!(answer["admin"], admin_addr.to_string(), "{answer}");
    let mut pid = answer["new_pid"].as_u64().expect("new_pid");
    successors.0.push(pid as u32);
    let reply = util::call(
        &util::agent(),
        "GET",
        &format!("http://{moved}/"),
        &[],
        None,
    )
    .expect("the new address serves");
    assert_eq!((reply.status, reply.generation()), (200, 2), "{reply:?}");
    let mut server = server;
    assert!(server.wait_exit().success(), "the first process drained");
    assert_eq!(
        util::listening_sockets(old_main.port()),
        0,
        "the address the configuration left is closed"
    );

    // Through the admin API: `kiln restart` would cost a process each time.
    let mut baseline = None;
    let mut rss = Vec::new();
    for k in 2..=MANY_RESTARTS {
        let reply = admin(admin_addr, "POST", "/admin/restart");
        assert_eq!(reply.status, 200, "restart {k}: {reply:?}");
        let new_pid = reply.json()["new_pid"].as_u64().expect("new_pid");
        successors.0.push(new_pid as u32);
        util::wait_until(WAIT, &format!("pid {pid} to end"), || ended(pid));
        pid = new_pid;
        rss.push(rss_kib(pid));
        // Admin connections close as the answers end: wait for the count
        // to settle at or below the first one measured.
        match baseline {
            None => baseline = Some(settled_files(pid).len()),
            Some(first) => util::wait_until(
                WAIT,
                &format!(
                    "pid {pid}'s open files ({}) to be at most {first}",
                    fd_count(pid)
                ),
                || fd_count(pid) <= first,
            ),
        }
    }
    assert_eq!(
        status(admin_addr)["generation"].as_u64(),
        Some(MANY_RESTARTS + 1)
    );
    // Each process is new, but what it inherits (the history, the
    // configuration, the sockets) must not pile up. A process's memory
    // varies by a few MiB (whether a handoff buffer reused touched pages):
    // compare the least of the first ten with the least of the last ten.
    let least = |window: &[u64]| window.iter().copied().min().expect("measured");
    let (first, last) = (least(&rss[..10]), least(&rss[rss.len() - 10..]));
    eprintln!(
        "resident memory (KiB), least of the first and of the last ten restarts: {first}, {last}"
    );
    assert!(
        last <= first + first / 8,
        "resident memory grew from {first} KiB to {last} KiB over {MANY_RESTARTS} restarts: {rss:?}"
    );
}

#[test]
fn a_failed_restart_leaves_the_old_process_serving() {
    let pg = util::postgres();
    let base = || Config::sqlite().set_str("server.restart_timeout", "3s");
    let server = Server::start(&base().render());
    let (main, admin_addr) = (server.main_addr(), server.admin_addr());
    let pid = u64::from(server.pid());
    let mut successors = Successors::default();
    let assert_still_serving = |what: &str| {
        let reply = server.get_on_new_connection("/");
        assert_eq!(
            (reply.status, reply.generation()),
            (200, 1),
            "{what}: {reply:?}"
        );
        assert_eq!(status(admin_addr)["pid"].as_u64(), Some(pid), "{what}");
        assert_eq!(util::listening_sockets(main.port()), 1, "{what}");
        assert_eq!(util::listening_sockets(admin_addr.port()), 1, "{what}");
    };

    // An invalid configuration: the new process exits at once.
    server
        .site
        .write_config(&base().set("server.workers", "\"many\"").render());
    let (ok, answer, stderr) = cli_restart(admin_addr);
    assert!(!ok, "{answer}");
    assert!(
        stderr.contains("server.workers"),
        "the cause names the key: {stderr}"
    );
    assert!(
        util::json_strings(&answer["log"])
            .iter()
            .any(|l| l.contains("server.workers")),
        "the new process's last lines: {answer}"
    );
    assert_still_serving("invalid configuration");
    let files_before = settled_files(pid);

    // A pool that cannot warm: PostgreSQL refuses.
    let refusing = util::ClosedPort::new();
    let unreachable = base()
        .set_str("pools.main.kind", "postgres")
        .set_str("pools.main.url", &pg.url_at(&refusing.addr().to_string()));
    server.site.write_config(&unreachable.render());
    let reply = admin(admin_addr, "POST", "/admin/restart");
    assert_eq!(reply.status, 503, "{reply:?}");
    let body = reply.json();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("main") && error.contains("keeps serving"),
        "{body}"
    );
    assert_eq!(body["generation"], 1, "{body}");
    assert_still_serving("unreachable pool");

    // A new process that hangs (its database never answers) is killed at
    // server.restart_timeout; a second restart meanwhile is refused.
    let (_proxy, first) = hanging_restart(&server, base(), &pg);
    let second = admin(admin_addr, "POST", "/admin/restart");
    assert_eq!(second.status, 409, "one restart at a time: {second:?}");
    let error = failed(first.join().unwrap());
    assert!(error.contains("server.restart_timeout"), "{error}");
    assert_still_serving("a hang");
    let mut files = BTreeSet::new();
    util::wait_until(WAIT, "the failed restarts' files to be closed", || {
        files = open_files(pid);
        files.len() <= files_before.len() || {
            let opened: Vec<_> = files.difference(&files_before).collect();
            eprintln!("opened since the first failure: {opened:?}");
            false
        }
    });

    // Nothing is wedged: a good configuration reloads, then restarts, and
    // the new process keeps the history (the reload, the failed restarts
    // are not in it: they made no generation).
    server.site.write_config(&base().greeting("after").render());
    assert_eq!(admin(admin_addr, "POST", "/admin/reload").status, 200);
    let reply = admin(admin_addr, "POST", "/admin/restart");
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer = reply.json();
    assert_eq!(answer["generation"], 3, "{answer}");
    let new_pid = answer["new_pid"].as_u64().expect("new_pid");
    successors.0.push(new_pid as u32);
    wait_for_pid(admin_addr, new_pid);
    let history = admin(admin_addr, "GET", "/admin/history").json();
    let triggers: Vec<(&str, u64)> = history
        .as_array()
        .expect("a history")
        .iter()
        .map(|e| {
            (
                e["trigger"].as_str().unwrap_or_default(),
                e["generation"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(triggers, [("restart", 3), ("http-reload", 2)], "{history}");
}

#[test]
fn systemd_hears_reloading_then_the_new_main_pid_then_ready() {
    let mut systemd = FakeSystemd::bind();
    let server = Server::start_with(
        &Config::sqlite().render(),
        &[("NOTIFY_SOCKET", systemd.path.as_str())],
    );
    let admin_addr = server.admin_addr();
    let mut successors = Successors::default();
    let ready = systemd.next("READY=1 at start");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");

    // A failed restart: RELOADING=1, then READY=1 from the old process.
    server
        .site
        .write_config(&Config::sqlite().set("server.workers", "\"many\"").render());
    assert_eq!(admin(admin_addr, "POST", "/admin/restart").status, 503);
    let reloading = systemd.next("RELOADING=1");
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    assert!(
        field(&reloading, "MONOTONIC_USEC").is_some(),
        "{reloading:?}"
    );
    let ready = systemd.next("READY=1 after the failed restart");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("restart failed")),
        "{ready:?}"
    );

    // A restart: RELOADING=1, MAINPID=<new>, then READY=1 with the new generation.
    server.site.write_config(&Config::sqlite().render());
    let reply = admin(admin_addr, "POST", "/admin/restart");
    assert_eq!(reply.status, 200, "{reply:?}");
    let new_pid = reply.json()["new_pid"].as_u64().expect("new_pid");
    successors.0.push(new_pid as u32);
    let reloading = systemd.next("RELOADING=1");
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    assert!(
        field(&reloading, "MONOTONIC_USEC").is_some(),
        "{reloading:?}"
    );
    let main_pid = systemd.next("MAINPID");
    assert_eq!(
        field(&main_pid, "MAINPID"),
        Some(new_pid.to_string().as_str()),
        "{main_pid:?}"
    );
    let ready = systemd.next("READY=1 from the new process");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.starts_with("generation 2")),
        "{ready:?}"
    );
    // The old process drains without a word: no STOPPING=1.
    let mut server = server;
    assert!(server.wait_exit().success());
    systemd.expect_silence();
}

#[test]
fn socket_activation_serves_systemds_sockets_and_a_restart_hands_them_on() {
    let (main, admin_listen) = util::free_addr_pair();
    let site = Site::new(&Config::sqlite().listen_on(main, admin_listen).render());
    // The admin socket first: kiln matches them by address, not by order.
    let mut server = socket_activated(site, &[(admin_listen, "admin"), (main, "main")]);
    let mut successors = Successors::default();
    let ready = server.wait_ready();
    assert_eq!(
        (server.main_addr(), server.admin_addr()),
        (main, admin_listen),
        "{ready}"
    );
    for (key, addr) in [("server.listen", main), ("admin.listen", admin_listen)] {
        let line = server
            .stderr
            .snapshot()
            .into_iter()
            .find(|l| l.contains("socket activation") && l.contains(&addr.to_string()));
        assert!(
            line.is_some_and(|l| l.contains(key)),
            "no log line saying {key} ({addr}) came from socket activation:\n{}",
            server.stderr.text()
        );
    }
    let reply = server.get("/");
    assert_eq!((reply.status, reply.generation()), (200, 1), "{reply:?}");

    // A restart under load hands the same sockets on; the new process
    // does not see LISTEN_FDS (they are not its).
    let load = Load::start(&server.url("/"), 1, 1);
    load.wait_for(1);
    let reply = admin(admin_listen, "POST", "/admin/restart");
    assert_eq!(reply.status, 200, "{reply:?}");
    let new_pid = reply.json()["new_pid"].as_u64().expect("new_pid");
    successors.0.push(new_pid as u32);
    wait_for_pid(admin_listen, new_pid);
    load.wait_for(2);
    let (served, seen) = load.finish();
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed: {failures:#?}",
        failures.len()
    );
    let inherited: Vec<String> = environment(new_pid)
        .into_iter()
        .filter(|var| var.starts_with("LISTEN_"))
        .collect();
    assert!(
        inherited.is_empty(),
        "the new process inherited {inherited:?}"
    );
    assert!(server.wait_exit().success(), "the first process drained");
    assert_eq!(
        util::listening_sockets(main.port()),
        1,
        "one main socket, handed on"
    );
    let reply = util::call(&util::agent(), "GET", &format!("http://{main}/"), &[], None)
        .expect("the new process serves");
    assert_eq!((reply.status, reply.generation()), (200, 2), "{reply:?}");
}

#[test]
fn socket_activation_refuses_a_socket_no_key_names() {
    let stray = util::free_addr();
    // Both keys at port 0: neither is the stray socket's address.
    let site = Site::new(&Config::sqlite().render());
    let server = socket_activated(site, &[(stray, "web")]);
    let ready = server.stderr.wait_for(0, "ready: ", READY_TIMEOUT);
    assert!(
        ready.is_none(),
        "kiln served beside a socket nobody accepts on: {ready:?}"
    );
    let mut server = server;
    assert!(!server.wait_exit().success());
    let error = server
        .stderr
        .snapshot()
        .into_iter()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", server.stderr.text()));
    for needle in [
        stray.to_string().as_str(),
        "web",
        "server.listen",
        "admin.listen",
    ] {
        assert!(error.contains(needle), "the error names {needle}: {error}");
    }
}

#[test]
fn sigterm_during_a_restart_stops_the_new_process_and_drains() {
    let pg = util::postgres();
    let mut server = Server::start(&Config::sqlite().render());
    let pid = u64::from(server.pid());
    let mut successors = Successors::default();

    // A restart whose new process hangs in its warm-up.
    let (_proxy, restart) = hanging_restart(&server, Config::sqlite(), &pg);
    let mut new = Vec::new();
    util::wait_until(WAIT, "the new process", || {
        new = children(pid);
        !new.is_empty()
    });
    successors.0.extend(new.iter().map(|&p| p as u32));

    server.signal("TERM");
    let error = failed(restart.join().unwrap());
    assert!(error.contains("SIGTERM"), "{error}");
    assert!(
        server.wait_exit().success(),
        "the old process drained cleanly"
    );
    // It waited for the new one: nothing of the service is left running.
    for &p in &new {
        assert!(ended(p), "the new process {p} outlived the old one");
    }
}
