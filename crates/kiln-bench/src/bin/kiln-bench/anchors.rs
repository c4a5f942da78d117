//! The reload anchors: what other servers do when their configuration
//! changes under load, measured the same way as kiln, in the same run,
//! alternating each round. Every server answers `GET /` with a greeting
//! ending in `rev N`, N being the configuration it was started or reloaded
//! with, so one probe reads every server's revision the same way.
//!
//! | anchor | how its configuration changes |
//! |---|---|
//! | kiln | file edited, `POST /admin/reload` |
//! | Caddy | `POST /load` on its admin API with the new JSON config |
//! | nginx | file edited, `nginx -s reload` |
//! | gunicorn (2 sync workers) | file edited, `SIGHUP` to the master; with `--preload` too |
//! | axum restarted | bare axum killed (`SIGKILL`) and started again with the new greeting |
//!
//! The `restart` section runs the same way with restarts in place of
//! reloads: kiln's `POST /admin/restart`, nginx's binary upgrade and the
//! restarted axum (see [`restart`](crate::restart)).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_bench::http::{Conn, get_once};
use kiln_bench::kernel::Drops;
use kiln_bench::load::{self, Oha};
use kiln_bench::process::{self, Server};
use kiln_bench::stats::{quantile, show};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Common, KilnConf, all_cpus, pin_self, runtime, wrk};

/// A server whose reloads or restarts kiln is compared with, or kiln.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Anchor {
    Kiln,
    Caddy,
    Nginx,
    Gunicorn,
    GunicornPreload,
    AxumRestart,
    /// kiln restarted (`POST /admin/restart`): a new process takes over.
    KilnRestart,
    /// nginx's binary upgrade: `USR2`, then `QUIT` to the old master.
    NginxUpgrade,
}

impl Anchor {
    /// The `anchors` section: configuration changes.
    const ALL: [Self; 6] = [
        Self::Kiln,
        Self::Caddy,
        Self::Nginx,
        Self::Gunicorn,
        Self::GunicornPreload,
        Self::AxumRestart,
    ];

    /// The `restart` section: a new process takes over.
    pub(crate) const RESTARTS: [Self; 3] =
        [Self::KilnRestart, Self::NginxUpgrade, Self::AxumRestart];

    /// Whether a change starts a new process (and so may take a warm-up).
    fn restarts(self) -> bool {
        matches!(
            self,
            Self::KilnRestart | Self::NginxUpgrade | Self::AxumRestart
        )
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kiln => "kiln, 1 worker",
            Self::Caddy => "Caddy",
            Self::Nginx => "nginx, 1 worker process",
            Self::Gunicorn => "gunicorn, 2 sync workers",
            Self::GunicornPreload => "gunicorn --preload, 2 sync workers",
            Self::AxumRestart => "bare axum, killed and restarted",
            Self::KilnRestart => "kiln, 1 worker, restarted",
            Self::NginxUpgrade => "nginx, 1 worker process, binary upgrade",
        }
    }

    pub(crate) fn how(self) -> &'static str {
        match self {
            Self::Kiln => "file edited, `POST /admin/reload`",
            Self::Caddy => "`POST /load` (admin API)",
            Self::Nginx => "file edited, `nginx -s reload`",
            Self::Gunicorn | Self::GunicornPreload => "file edited, `SIGHUP`",
            Self::AxumRestart => "`SIGKILL`, started again",
            Self::KilnRestart => "`POST /admin/restart`, then its new pid in `/admin/status`",
            Self::NginxUpgrade => {
                "`kill -USR2` master, new `nginx.pid` written, `kill -QUIT` old master"
            }
        }
    }

    /// The greeting every server answers `GET /` with.
    fn greeting(revision: u64) -> String {
        format!("Hello from kiln, rev {revision}")
    }
}

/// One anchor, running.
struct Running {
    anchor: Anchor,
    server: Option<Server>,
    /// The process serving now when a restart started it (not a child).
    successor: Option<u32>,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    kiln: KilnConf,
}

impl Running {
    /// Starts `anchor` serving `revision` and waits until `GET /` answers it.
    async fn start(c: &Common, anchor: Anchor, revision: u64) -> anyhow::Result<Self> {
        // Absolute: nginx resolves relative paths against its prefix.
        let dir = std::path::absolute(c.tmp(&format!("anchor-{anchor:?}").to_lowercase()))?;
        std::fs::create_dir_all(&dir)?;
        let mut kiln = KilnConf::new(1)?;
        kiln.greeting = Anchor::greeting(revision);
        let mut running = Self {
            anchor,
            server: None,
            successor: None,
            addr: kiln.addr(),
            admin: kiln.admin(),
            dir,
            kiln,
        };
        running.write(c, revision)?;
        running.server = Some(running.spawn(c)?);
        running
            .wait_serving(revision, Duration::from_secs(30))
            .await?;
        if anchor == Anchor::NginxUpgrade {
            // Daemonized: the master is the process the pid file names.
            running.successor = running.nginx_pid("nginx.pid");
        }
        Ok(running)
    }

    /// Writes the configuration that serves `revision`.
    fn write(&mut self, c: &Common, revision: u64) -> anyhow::Result<()> {
        let (addr, admin, greeting) = (self.addr, self.admin, Anchor::greeting(revision));
        match self.anchor {
            Anchor::Kiln | Anchor::KilnRestart => {
                self.kiln.greeting = greeting;
                self.kiln.write(c, "anchor-kiln")?;
            }
            Anchor::Caddy => std::fs::write(
                self.dir.join("caddy.json"),
                caddy_config(addr, admin, &greeting).to_string(),
            )?,
            Anchor::Nginx | Anchor::NginxUpgrade => std::fs::write(
                self.dir.join("nginx.conf"),
                nginx_config(
                    addr,
                    &self.dir,
                    &greeting,
                    self.anchor == Anchor::NginxUpgrade,
                ),
            )?,
            Anchor::Gunicorn | Anchor::GunicornPreload => {
                std::fs::write(self.dir.join("greeting.txt"), greeting)?;
            }
            Anchor::AxumRestart => {}
        }
        Ok(())
    }

    fn spawn(&self, c: &Common) -> anyhow::Result<Server> {
        let cpus = Some(c.server_cpus.as_str());
        let log = Some(self.dir.join("server.log"));
        let dir = self.dir.display().to_string();
        match self.anchor {
            Anchor::Kiln | Anchor::KilnRestart => self.kiln.start(c, "anchor-kiln", cpus),
            Anchor::Caddy => Server::start(
                Path::new("caddy"),
                &["run".into(), "--config".into(), format!("{dir}/caddy.json")],
                &[
                    ("XDG_CONFIG_HOME".into(), dir.clone()),
                    ("XDG_DATA_HOME".into(), dir.clone()),
                ],
                cpus,
                log.as_deref(),
            ),
            // By its full path: a binary upgrade runs the master's argv[0].
            Anchor::Nginx | Anchor::NginxUpgrade => Server::start(
                &in_path("nginx")?,
                &[
                    "-p".into(),
                    dir.clone(),
                    "-c".into(),
                    format!("{dir}/nginx.conf"),
                    "-e".into(),
                    format!("{dir}/error.log"),
                ],
                &[],
                cpus,
                log.as_deref(),
            ),
            Anchor::Gunicorn | Anchor::GunicornPreload => {
                let app_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("anchors");
                let mut args: Vec<String> = [
                    "-m",
                    "gunicorn",
                    "--workers",
                    "2",
                    "--bind",
                    &self.addr.to_string(),
                    "--chdir",
                    &app_dir.display().to_string(),
                ]
                .map(str::to_owned)
                .into();
                if self.anchor == Anchor::GunicornPreload {
                    args.push("--preload".into());
                }
                args.push("gunicorn_app:app".into());
                Server::start(
                    Path::new("python3"),
                    &args,
                    &[(
                        "KILN_BENCH_GREETING_FILE".into(),
                        format!("{dir}/greeting.txt"),
                    )],
                    cpus,
                    log.as_deref(),
                )
            }
            Anchor::AxumRestart => Server::start(
                &c.bin("bare"),
                &[
                    "--listen".into(),
                    self.addr.to_string(),
                    "--greeting".into(),
                    self.kiln.greeting.clone(),
                ],
                &[],
                cpus,
                log.as_deref(),
            ),
        }
    }

    async fn wait_serving(&self, revision: u64, limit: Duration) -> anyhow::Result<()> {
        if load::first_seen(
            self.addr,
            load::body_revision,
            revision,
            Instant::now(),
            limit,
        )
        .await
        .is_none()
        {
            bail!(
                "{} did not serve rev {revision} on {} within {limit:?}; see {}",
                self.anchor.name(),
                self.addr,
                self.dir.join("server.log").display()
            );
        }
        Ok(())
    }

    /// Changes the configuration to `revision` the anchor's own way; returns
    /// whether the change was accepted (the server may apply it later).
    async fn reload(&mut self, c: &Common, revision: u64) -> anyhow::Result<bool> {
        if self.anchor == Anchor::AxumRestart {
            self.kiln.greeting = Anchor::greeting(revision);
            drop(self.server.take()); // SIGKILL
            self.server = Some(self.spawn(c)?);
            return Ok(accepting(self.addr, Duration::from_secs(10)).await);
        }
        self.write(c, revision)?;
        let dir = self.dir.display().to_string();
        Ok(match self.anchor {
            Anchor::Kiln => Conn::connect(self.admin)
                .await?
                .post("/admin/reload")
                .await
                .is_ok_and(|r| r.status == 200),
            Anchor::Caddy => {
                let config = std::fs::read(self.dir.join("caddy.json"))?;
                Conn::connect(self.admin)
                    .await?
                    .post_body("/load", "application/json", config)
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
            Anchor::Nginx => tokio::process::Command::new("nginx")
                .args(["-p", &dir, "-c", &format!("{dir}/nginx.conf")])
                .args(["-e", &format!("{dir}/error.log"), "-s", "reload"])
                .status()
                .await?
                .success(),
            Anchor::Gunicorn | Anchor::GunicornPreload => send(self.pid()?, "HUP").await?,
            Anchor::KilnRestart => self.restart_kiln().await?,
            Anchor::NginxUpgrade => self.upgrade_nginx().await?,
            Anchor::AxumRestart => unreachable!("handled above"),
        })
    }

    /// The process serving now (for nginx and gunicorn, the master).
    fn pid(&self) -> anyhow::Result<u32> {
        match self.successor {
            Some(pid) => Ok(pid),
            None => Ok(self.server.as_ref().context("not running")?.pid()),
        }
    }

    /// `POST /admin/restart`, then `GET /admin/status` until the new pid
    /// answers; whether it did.
    async fn restart_kiln(&mut self) -> anyhow::Result<bool> {
        // Connections of their own: a kept-alive one could reach the old process.
        let reply = Conn::connect(self.admin)
            .await?
            .post("/admin/restart")
            .await?;
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let Some(pid) = body["new_pid"].as_u64().filter(|_| reply.status == 200) else {
            eprintln!(
                "restart: kiln answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            return Ok(false);
        };
        self.successor = Some(u32::try_from(pid)?);
        let admin = self.admin;
        Ok(until(Duration::from_secs(10), || async move {
            get_once(admin, "/admin/status").await.is_ok_and(|r| {
                serde_json::from_slice::<Value>(&r.body).is_ok_and(|s| s["pid"] == pid)
            })
        })
        .await)
    }

    /// nginx's binary upgrade: `USR2` to the master, which renames its pid
    /// file `nginx.pid.oldbin` and starts the binary again, inheriting the
    /// listening sockets; once the new master has written `nginx.pid`,
    /// `QUIT` to the old one (its workers finish what they serve and exit).
    /// nginx upgrades one at a time, so the previous old master must be
    /// gone first. Whether the new master took over.
    async fn upgrade_nginx(&mut self) -> anyhow::Result<bool> {
        let old = self.pid()?;
        if !until(Duration::from_secs(30), || async {
            !std::fs::exists(self.dir.join("nginx.pid.oldbin")).unwrap_or(true)
        })
        .await
        {
            bail!("nginx's previous old master did not exit within 30 s");
        }
        if !send(old, "USR2").await? {
            return Ok(false);
        }
        let new = std::cell::Cell::new(None);
        let started = until(Duration::from_secs(10), || async {
            new.set(self.nginx_pid("nginx.pid").filter(|&pid| pid != old));
            new.get().is_some() && self.nginx_pid("nginx.pid.oldbin") == Some(old)
        })
        .await;
        if !started {
            return Ok(false);
        }
        self.successor = new.get();
        send(old, "QUIT").await
    }

    /// The pid in the nginx pid file `name`, when there is one.
    fn nginx_pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn stop(mut self) {
        let grace = Duration::from_secs(5);
        if self.anchor == Anchor::NginxUpgrade
            && let Some(old) = self.nginx_pid("nginx.pid.oldbin")
        {
            process::terminate(old, grace);
        }
        if let Some(pid) = self.successor.take() {
            process::terminate(pid, grace);
        }
        if let Some(server) = self.server.take() {
            server.stop(grace);
        }
    }
}

/// `kill -SIG pid`, without blocking the probe; whether it was delivered.
async fn send(pid: u32, sig: &str) -> anyhow::Result<bool> {
    Ok(tokio::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .await?
        .success())
}

/// Polls `done` every half millisecond until it says so, up to `limit`;
/// whether it did.
async fn until<F: Future<Output = bool>>(limit: Duration, mut done: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    false
}

/// Polls `addr` with TCP connects until one succeeds, up to `limit`.
async fn accepting(addr: SocketAddr, limit: Duration) -> bool {
    until(limit, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// `program` as found on `PATH`.
fn in_path(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

fn caddy_config(addr: SocketAddr, admin: SocketAddr, greeting: &str) -> Value {
    json!({
        "admin": {"listen": admin.to_string(), "config": {"persist": false}},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {"http": {"servers": {"bench": {
            "listen": [addr.to_string()],
            "automatic_https": {"disable": true},
            "routes": [{"handle": [{
                "handler": "static_response",
                "status_code": 200,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": greeting,
            }]}],
        }}}},
    })
}

/// nginx serving `greeting` on `addr`; `daemon` for a binary upgrade,
/// which nginx ignores in a master whose parent is the one that started it.
fn nginx_config(addr: SocketAddr, dir: &Path, greeting: &str, daemon: bool) -> String {
    let dir = dir.display();
    let daemon = if daemon { "on" } else { "off" };
    format!(
        r#"# Written by kiln-bench.
daemon {daemon};
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen {addr};
        location / {{
            default_type "text/plain; charset=utf-8";
            return 200 "{greeting}";
        }}
    }}
}}
"#
    )
}

/// One anchor's run: a load, reloads (or restarts) during it, and what the
/// probe saw.
#[derive(Debug, Serialize)]
pub(crate) struct AnchorRun {
    pub(crate) anchor: Anchor,
    round: usize,
    rate: f64,
    pub(crate) achieved_rps: f64,
    oha: Oha,
    probe_requests: usize,
    probe_failed: usize,
    reloads_accepted: usize,
    pub(crate) reloads_seen: usize,
    visible_ms: Vec<Option<f64>>,
    pub(crate) old_after_return: usize,
    pub(crate) p99_in_ms: f64,
    pub(crate) p99_out_ms: f64,
    in_samples: usize,
    /// What the kernel's drop counters grew by while the load ran.
    pub(crate) kernel: Drops,
}

impl AnchorRun {
    pub(crate) fn failed(&self) -> u64 {
        self.oha.failed + self.probe_failed as u64
    }

    pub(crate) fn served(&self) -> u64 {
        self.oha.requests + self.probe_requests as u64
    }

    /// How many changes were asked for (fewer than planned when they ran late).
    pub(crate) fn changes(&self) -> usize {
        self.visible_ms.len()
    }

    pub(crate) fn visible(&self) -> Vec<f64> {
        self.visible_ms.iter().flatten().copied().collect()
    }
}

/// One section's anchors with the rate each is loaded at (`rate`, capped
/// at half of its own saturation: wrk, 3 s, 64 connections, measured first)
/// and that saturation.
pub(crate) type Capped = Vec<(Anchor, f64, f64)>;

/// Runs `changes` changes over `seconds` under load, for every anchor of
/// `capped` in turn, over `c.runs` rounds. `section` names the log lines.
pub(crate) fn compare(
    c: &Common,
    section: &str,
    anchors: &[Anchor],
    rate: f64,
    changes: usize,
    seconds: u64,
) -> anyhow::Result<(Capped, Vec<AnchorRun>)> {
    let rt = runtime()?;
    let mut capped = Vec::new();
    for &anchor in anchors {
        let running = rt.block_on(Running::start(c, anchor, 0))?;
        wrk(c, running.addr, 1, 64)?;
        let saturation = wrk(c, running.addr, 3, 64)?.rps;
        running.stop();
        eprintln!(
            "{section}: {} saturates at {saturation:.0} req/s",
            anchor.name()
        );
        capped.push((anchor, rate.min(saturation / 2.0), saturation));
    }
    pin_self(&c.client_cpus);
    let mut runs = Vec::new();
    for round in 0..c.runs {
        for &(anchor, rate, _) in &capped {
            let run = rt.block_on(anchor_run(c, anchor, round, rate, changes, seconds))?;
            eprintln!(
                "{section} round {round} {}: {:.0} req/s, failed {}, visible median {:.2} ms max {:.2} ms, p99 in {:.3} / out {:.3} ms, old after return {}, kernel {:?}",
                anchor.name(),
                run.achieved_rps,
                run.failed(),
                quantile(&run.visible(), 0.5).unwrap_or(f64::NAN),
                quantile(&run.visible(), 1.0).unwrap_or(f64::NAN),
                run.p99_in_ms,
                run.p99_out_ms,
                run.old_after_return,
                run.kernel,
            );
            runs.push(run);
        }
    }
    pin_self(&all_cpus());
    Ok((capped, runs))
}

/// The raw JSON of a [`compare`].
pub(crate) fn raw(rate: f64, capped: &Capped, runs: &[AnchorRun], versions: &Value) -> Value {
    json!({"rate": rate, "saturation": capped.iter().map(|(a, r, s)| json!({"anchor": a, "rate": r, "saturation": s})).collect::<Vec<_>>(), "versions": versions, "runs": runs})
}

/// Runs `reloads` reloads over `seconds` under load at `rate` (capped at
/// half of each anchor's own saturation), for every anchor in turn, over
/// `c.runs` rounds, and writes the `anchors` table.
pub(crate) fn anchors(c: &Common, rate: f64, reloads: usize, seconds: u64) -> anyhow::Result<()> {
    let (capped, runs) = compare(c, "anchors", &Anchor::ALL, rate, reloads, seconds)?;
    let versions = versions();
    c.save(
        "anchors",
        &raw(rate, &capped, &runs, &versions),
        &table(c, rate, &capped, &runs, reloads, seconds, &versions)?,
    )
}

async fn anchor_run(
    c: &Common,
    anchor: Anchor,
    round: usize,
    rate: f64,
    reloads: usize,
    seconds: u64,
) -> anyhow::Result<AnchorRun> {
    let mut running = Running::start(c, anchor, 0).await?;
    let spec = load::Spec::new(
        running.addr,
        rate,
        Duration::from_secs(seconds + 2),
        &c.client_cpus,
    )
    .marker(load::body_revision);
    let kernel_before = Drops::read()?;
    let load = load::Load::start(&spec).await?;
    let start = load.start;
    let local = tokio::task::LocalSet::new();
    // (sent, returned, accepted, poller's first sight) per reload, seconds since start.
    let events = local
        .run_until(async {
            let mut events = Vec::new();
            let spacing = Duration::from_secs(seconds).div_f64(reloads as f64);
            for i in 0..reloads {
                let revision = i as u64 + 1;
                let slot = start + Duration::from_secs(1) + spacing.mul_f64(i as f64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
                let sent = Instant::now();
                // Changes that run late (slow restarts) stop short of the
                // load's end, so that every one happens under load.
                if sent > start + Duration::from_secs(seconds + 1) {
                    break;
                }
                let poller = tokio::task::spawn_local(load::first_seen(
                    running.addr,
                    load::body_revision,
                    revision,
                    sent,
                    // A new process may take its warm-up to serve.
                    if anchor.restarts() {
                        Duration::from_secs(30)
                    } else {
                        spacing.max(Duration::from_millis(100))
                    },
                ));
                let accepted = running.reload(c, revision).await?;
                let returned = Instant::now();
                let seen = poller.await.unwrap_or(None);
                events.push((
                    revision,
                    (sent - start).as_secs_f64(),
                    (returned - start).as_secs_f64(),
                    accepted,
                    seen,
                ));
            }
            anyhow::Ok(events)
        })
        .await?;
    let (samples, oha) = load.finish().await?;
    let kernel = Drops::read()?.since(kernel_before);
    running.stop();

    let visible_ms: Vec<Option<f64>> = events
        .iter()
        .map(|&(revision, sent_s, _, _, seen)| load::visible_ms(&samples, revision, sent_s, seen))
        .collect();
    // A reload's window: from asking for it until it has both returned and
    // been seen (or returned, when it was never seen).
    let windows: Vec<(f64, f64)> = events
        .iter()
        .zip(&visible_ms)
        .map(|(&(_, sent_s, returned_s, _, _), seen)| {
            let seen_s = sent_s + seen.unwrap_or(0.0) / 1000.0;
            (sent_s, returned_s.max(seen_s))
        })
        .collect();
    let (p99_in_ms, p99_out_ms, in_samples) = load::p99_in_out(&samples, &windows);
    let returned: Vec<(f64, u64)> = events
        .iter()
        .filter(|e| e.3)
        .map(|&(revision, _, returned_s, _, _)| (returned_s, revision))
        .collect();
    Ok(AnchorRun {
        anchor,
        round,
        rate,
        achieved_rps: oha.rps + samples.len() as f64 / spec.duration.as_secs_f64(),
        probe_requests: samples.len(),
        probe_failed: samples.iter().filter(|s| !s.ok).count(),
        reloads_accepted: events.iter().filter(|e| e.3).count(),
        reloads_seen: visible_ms.iter().flatten().count(),
        old_after_return: load::stale_after_answer(&samples, &returned),
        visible_ms,
        p99_in_ms,
        p99_out_ms,
        in_samples,
        kernel,
        oha,
    })
}

/// What each anchor reports as its version.
pub(crate) fn versions() -> Value {
    let run = |program: &str, args: &[&str]| -> String {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|e| format!("not found: {e}"))
    };
    json!({
        "caddy": run("caddy", &["version"]),
        "nginx": run("nginx", &["-v"]),
        "gunicorn": run("python3", &["-m", "gunicorn", "--version"]),
    })
}

fn table(
    c: &Common,
    rate: f64,
    capped: &[(Anchor, f64, f64)],
    runs: &[AnchorRun],
    reloads: usize,
    seconds: u64,
    versions: &Value,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut table = String::new();
    writeln!(
        table,
        "### Reload anchors: kiln and other servers changing their configuration under load\n\n\
         Each server answers `GET /` with a greeting ending in `rev N`; {reloads} configuration changes over {seconds} s, \
         each to the next N, while `oha -q` (32 keep-alive connections) and the driver's probe (10 keep-alive connections) \
         load it for {} s. Servers pinned to CPU {}, load to CPU {}. The offered rate is {rate:.0} req/s, or half of the server's own \
         saturation (wrk, 64 connections, 3 s, measured first) when that is lower; \"load\" is the rate achieved. \
         \"visible\" = from asking for the change to the first answer carrying it (probe, or a connection polling `GET /` \
         back to back); \"old config after return\" = probe requests sent after the reload command returned that still \
         got the old greeting; \"in window\" = from asking until both returned and visible. {} rounds, servers \
         interleaved; median (min–max) over rounds, failures summed. Versions: Caddy {}, {}, {}.\n",
        seconds + 2,
        c.server_cpus,
        c.client_cpus,
        c.runs,
        versions["caddy"].as_str().unwrap_or("?"),
        versions["nginx"].as_str().unwrap_or("?"),
        versions["gunicorn"].as_str().unwrap_or("?"),
    )?;
    writeln!(
        table,
        "| server | how it reloads | saturation, req/s | load, req/s | failed requests | served | changes seen | visible median, ms | visible max, ms | p99 in window / outside | old config after return |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for &(anchor, _, saturation) in capped {
        let mine: Vec<&AnchorRun> = runs.iter().filter(|r| r.anchor == anchor).collect();
        let of =
            |f: &dyn Fn(&AnchorRun) -> f64| -> Vec<f64> { mine.iter().map(|r| f(r)).collect() };
        let failed: u64 = mine.iter().map(|r| r.failed()).sum();
        let served: u64 = mine.iter().map(|r| r.served()).sum();
        let seen: usize = mine.iter().map(|r| r.reloads_seen).sum();
        let asked = mine.len() * reloads;
        let old: usize = mine.iter().map(|r| r.old_after_return).sum();
        let visible = |q: f64| -> String {
            let per_run: Vec<f64> = mine
                .iter()
                .filter_map(|r| quantile(&r.visible(), q))
                .collect();
            if per_run.is_empty() {
                "never".to_owned()
            } else {
                show(&per_run, 2)
            }
        };
        writeln!(
            table,
            "| {} | {} | {saturation:.0} | {} | **{failed}** | {served} | {seen} of {asked} | **{}** | {} | {}x | {old} |",
            anchor.name(),
            anchor.how(),
            show(&of(&|r| r.achieved_rps), 0),
            visible(0.5),
            visible(1.0),
            show(&of(&|r| r.p99_in_ms / r.p99_out_ms), 2),
        )?;
    }
    Ok(table)
}
