//! Embedding: kiln as a library in a Router the test builds, and the examples.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

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
