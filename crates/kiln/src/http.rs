//! Serving connections: HTTP/1.1 and (unless `server.http2 = false`)
//! HTTP/2 with prior knowledge (h2c) on the same port, both with upgrades
//! (WebSockets), as `axum::serve` does; the accept loop of a worker, its
//! header-read sweep and its drain; and in-process warm-up requests through
//! the very same connection stack over an in-memory pipe.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use futures_util::future::try_join_all;
use futures_util::task::AtomicWaker;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use crate::service::{Conn, GenerationBody, GenerationService, ResponseFuture};

/// How a worker serves its connections: the restart-only `[server]` keys.
#[derive(Clone, Debug)]
pub(crate) struct ConnOptions {
    /// `server.header_read_timeout`, if on.
    pub(crate) header_read_timeout: Option<Duration>,
    /// Whether the accept loop's [`Sweep`] enforces `header_read_timeout`,
    /// for a service that counts its requests on their [`Conn`]
    /// ([`ConnService`]), rather than hyper's timer on every request head.
    pub(crate) sweep: bool,
    /// `server.max_header_bytes`.
    pub(crate) max_header_bytes: usize,
    /// `server.http2`.
    pub(crate) http2: bool,
}

impl ConnOptions {
    /// The options of `server`.
    pub(crate) fn of(server: &kiln_config::ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_limit(),
            sweep: true,
            max_header_bytes: server.max_header_bytes.as_usize(),
            http2: server.http2,
        }
    }

    /// The sweep enforcing `header_read_timeout`, if it is on and swept.
    fn sweep(&self) -> Option<Sweep> {
        self.header_read_timeout
            .filter(|_| self.sweep)
            .map(Sweep::new)
    }

    /// The connection builder these options describe.
    fn builder(&self) -> Protocols {
        let hyper_timeout = self.header_read_timeout.filter(|_| !self.sweep);
        // hyper's and the auto builder's HTTP/1 settings share names, not a type.
        macro_rules! http1 {
            ($builder:expr) => {{
                let builder = $builder;
                builder
                    .header_read_timeout(hyper_timeout)
                    // A request head larger than this is answered 431 by hyper.
                    .max_buf_size(self.max_header_bytes)
                    // Head and body in one buffer, one write: for the small
                    // answers most requests get, about 450 fewer instructions
                    // than a vectored write (`kiln-bench instructions`);
                    // axum::serve's stack writes this way too.
                    .writev(false);
                // hyper arms a timer for every request to enforce the head timeout.
                if hyper_timeout.is_some() {
                    builder.timer(TokioTimer::new());
                }
            }};
        }
        if !self.http2 {
            let mut builder = hyper::server::conn::http1::Builder::new();
            http1!(&mut builder);
            return Protocols::Http1(builder);
        }
        let mut builder = auto::Builder::new(TokioExecutor::new());
        http1!(&mut builder.http1());
        builder
            .http2()
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        Protocols::Auto(builder)
    }
}

/// How a worker's connections are served: HTTP/1.1 and HTTP/2 (the auto
/// builder reads the first bytes to tell them apart), or HTTP/1.1 only.
/// Both with upgrades.
enum Protocols {
    Auto(auto::Builder<TokioExecutor>),
    Http1(hyper::server::conn::http1::Builder),
}

/// How long an idle HTTP/1 connection stays open once drain begins (at most
/// half of the time left), so that a request already on the wire is still
/// answered (with `Connection: close`) rather than cut.
const LINGER: Duration = Duration::from_secs(1);

/// One worker's connections, counted for the drain.
#[derive(Default)]
struct Tracker {
    /// Sockets open, upgraded ones included.
    open: AtomicUsize,
    /// Signalled when `open` drops to zero.
    closed: Notify,
    /// Set when the worker starts draining: HTTP/1 responses close their
    /// connection.
    draining: Arc<AtomicBool>,
}

/// A socket counted in its worker's [`Tracker`] until dropped (for an
/// upgraded connection, when the upgraded protocol lets go of it), and
/// holding what its connection's requests share.
struct Tracked<I> {
    io: I,
    tracker: Arc<Tracker>,
    conn: Arc<Conn>,
    /// How much of [`H2_PREFACE`] the first bytes read matched, while they
    /// still may be it (HTTP/2 served beside HTTP/1 and swept): the sweep
    /// never cuts an HTTP/2 connection, even before its first request.
    preface: Option<usize>,
}

/// What an HTTP/2 client sends first (with prior knowledge); hyper-util's
/// auto builder tells the protocols apart by it, but does not say.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<I> Tracked<I> {
    /// Follows the preface with `read`, the next bytes read (none at the
    /// end of the stream).
    fn sniff(&mut self, matched: usize, read: &[u8]) {
        let rest = &H2_PREFACE[matched..];
        let n = read.len().min(rest.len());
        self.preface = if read.is_empty() || read[..n] != rest[..n] {
            None
        } else if n == rest.len() {
            self.conn.set_h2();
            None
        } else {
            Some(matched + n)
        };
    }
}

impl<I> Drop for Tracked<I> {
    fn drop(&mut self) {
        if self.tracker.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.closed.notify_one();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let (Some(matched), Poll::Ready(Ok(()))) = (self.preface, &polled) {
            self.sniff(matched, &buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The hyper service of one connection: the worker's service, told which
/// connection each request came on.
pub(crate) struct ConnService {
    service: GenerationService,
    conn: Arc<Conn>,
}

impl ConnService {
    /// `service` serving requests of connection `conn`.
    pub(crate) fn new(service: GenerationService, conn: &Arc<Conn>) -> Self {
        Self {
            service,
            conn: conn.clone(),
        }
    }
}

/// A hyper service kiln serves connections with: a worker's
/// [`ConnService`], or the admin `Router` (through `TowerToHyperService`).
pub(crate) trait HttpService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
    /// The response body.
    type Body: HttpBody<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static,
{
    type Body = B;
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<GenerationBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> ResponseFuture {
        self.service.serve(request, Some(&self.conn))
    }
}

/// Serves one connection until it ends, or until the [`Sweep`] cuts it;
/// once `stop` carries the drain deadline, asks it to finish: HTTP/2 at
/// once (GOAWAY), HTTP/1 after [`LINGER`] (its responses meanwhile say
/// `Connection: close`). Whatever is still open at the deadline is cut by
/// the accept loop's caller.
async fn serve_connection<I, S: HttpService>(
    protocols: Arc<Protocols>,
    io: I,
    service: S,
    conn: Arc<Conn>,
    stop: watch::Receiver<Option<Instant>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match &*protocols {
        Protocols::Auto(builder) => {
            let connection = builder.serve_connection_with_upgrades(io, service);
            drain(connection, |c| c.graceful_shutdown(), &conn, stop).await;
        }
        Protocols::Http1(builder) => {
            let connection = builder.serve_connection(io, service).with_upgrades();
            drain(connection, |c| c.graceful_shutdown(), &conn, stop).await;
        }
    }
}

/// Drives `connection` to its end, or drops it when `conn` is cut, calling
/// `shutdown` on it once `stop` carries the drain deadline (see
/// [`serve_connection`]).
async fn drain<C, E>(
    connection: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    conn: &Conn,
    mut stop: watch::Receiver<Option<Instant>>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = pin!(connection);
    // `Some(deadline)` when stopped, `None` when cut.
    let rare = pin!(async {
        // Copied out: the watch's guard must not live across an await.
        let stopped = async { stop.wait_for(Option::is_some).await.map(|d| *d) };
        tokio::select! {
            biased;
            stopped = stopped => Some(stopped.ok().flatten()),
            () = conn.cut_off() => None,
        }
    });
    let deadline = match first_of(connection.as_mut(), rare).await {
        Ok(result) => return ended(result),
        Err(Some(deadline)) => deadline,
        Err(None) => {
            tracing::debug!("Connection cut: no request head within server.header_read_timeout");
            return;
        }
    };
    if !conn.is_h2() {
        let left = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            biased;
            result = connection.as_mut() => return ended(result),
            () = tokio::time::sleep(LINGER.min(left / 2)) => {}
        }
    }
    shutdown(connection.as_mut());
    ended(connection.await);
}

/// Whether `signal`'s future woke the task, and the task to wake.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The first of `main` (`Ok`) and `rare` (`Err`) to finish, polling `rare`
/// only when it woke the task itself: a connection's task wakes for every
/// request, and polling the drain watch (and the sweep's cut) each time
/// cost ~200 instructions a request (`kiln-bench instructions`), where
/// `select!` polls both.
async fn first_of<A: Future, B: Future>(
    mut main: Pin<&mut A>,
    mut rare: Pin<&mut B>,
) -> Result<A::Output, B::Output> {
    let signal = Arc::new(Signal {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let rare_waker = Waker::from(signal.clone());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = main.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // Registered before the flag is read: a wake in between finds it.
        signal.task.register(cx.waker());
        if signal.woken.swap(false, Ordering::AcqRel)
            && let Poll::Ready(out) = rare.as_mut().poll(&mut Context::from_waker(&rare_waker))
        {
            return Poll::Ready(Err(out));
        }
        Poll::Pending
    })
    .await
}

fn ended<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "Connection ended with an error");
    }
}

/// How many passes of the [`Sweep`] its limit spans.
const PASSES: u32 = 8;

/// Enforces `server.header_read_timeout` on the connections of one accept
/// loop: a connection that waits for a request head longer is cut. hyper's
/// own enforcement allocates, arms and drops a timer for every request head
/// (~1,500 of a `GET /`'s ~16,300 instructions); here each request counts
/// its start and its end on its [`Conn`] (two adds), and a pass every
/// `limit / PASSES` reads each connection's count. A connection seen
/// waiting (count even) at a pass, and then at `PASSES` more passes with
/// the count unchanged, has waited at least `limit` (the passes are at
/// least `limit / PASSES` apart) and at most `limit` plus one pass (plus
/// whatever kept the worker from sweeping on time): it is cut between
/// `limit` and `limit · 9/8`. Waiting for a head, as hyper counts it: from
/// the connection's start (before its first bytes) and from the end of
/// each response. Never cut: a request in flight (a slow handler, a long
/// response body), an upgraded connection, an HTTP/2 connection (hyper's
/// head timeout is HTTP/1's only).
struct Sweep {
    every: Duration,
    next: Pin<Box<Sleep>>,
    watched: Vec<Watched>,
}

/// A connection the [`Sweep`] watches.
struct Watched {
    conn: Arc<Conn>,
    /// Its count when a pass first saw it waiting, unchanged since.
    waiting: Option<u64>,
    /// Passes since then.
    passes: u32,
}

impl Sweep {
    fn new(limit: Duration) -> Self {
        let every = limit / PASSES;
        Self {
            every,
            next: Box::pin(tokio::time::sleep(every)),
            watched: Vec::new(),
        }
    }

    fn watch(&mut self, conn: &Arc<Conn>) {
        self.watched.push(Watched {
            conn: conn.clone(),
            waiting: None,
            passes: 0,
        });
    }

    /// The next pass, when it is due; cancel-safe.
    async fn pass(&mut self) {
        self.next.as_mut().await;
        self.watched.retain_mut(|watched| {
            let conn = &watched.conn;
            // Closed (only this reference is left), or not for the sweep.
            if Arc::strong_count(conn) == 1 || conn.is_h2() || conn.is_upgraded() {
                return false;
            }
            let turns = conn.turns();
            if turns % 2 == 1 || watched.waiting != Some(turns) {
                watched.waiting = (turns % 2 == 0).then_some(turns);
                watched.passes = 0;
            } else {
                watched.passes += 1;
                if watched.passes >= PASSES {
                    conn.cut(turns);
                }
            }
            true
        });
        // From the end of this pass: passes are never closer than `every`.
        self.next.as_mut().reset(Instant::now() + self.every);
    }
}

/// The next pass of `sweep`, if there is one: never without.
async fn next_pass(sweep: &mut Option<Sweep>) {
    match sweep {
        Some(sweep) => sweep.pass().await,
        None => std::future::pending().await,
    }
}

/// Accepts connections, each served by `service(peer, conn)`, until `stop`
/// carries a deadline, then drains: the
/// listener closes, HTTP/2 connections get GOAWAY, HTTP/1 responses say
/// `Connection: close` and idle HTTP/1 connections close after a short
/// linger; in-flight requests and upgraded connections may run until the
/// deadline. Throughout, a [`Sweep`] cuts connections that wait for a
/// request head too long. Returns how many connections were still open at
/// the deadline, each with a request in flight or upgraded: the caller cuts
/// them by dropping the worker's runtime.
pub(crate) async fn accept_loop<S: HttpService>(
    listener: TcpListener,
    service: impl Fn(SocketAddr, &Arc<Conn>) -> S,
    mut stop: watch::Receiver<Option<Instant>>,
    options: &ConnOptions,
) -> usize {
    let builder = Arc::new(options.builder());
    let mut sweep = options.sweep();
    // HTTP/2 beside HTTP/1: the sweep must tell them apart.
    let preface = (sweep.is_some() && options.http2).then_some(0);
    let tracker = Arc::new(Tracker::default());
    let each_stop = stop.clone();
    let deadline = loop {
        tokio::select! {
            // Once told to stop, accept nothing more: after a restart's
            // handover a new connection must reach the new process.
            biased;
            stopped = async { stop.wait_for(Option::is_some).await.map(|d| *d) } => {
                // A dropped sender means the server is gone: stop now.
                break stopped.ok().flatten().unwrap_or_else(Instant::now);
            }
            // Before accepting: a flood of connections must not starve it.
            () = next_pass(&mut sweep) => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = Arc::new(Conn::new(tracker.draining.clone()));
                    if let Some(sweep) = &mut sweep {
                        sweep.watch(&conn);
                    }
                    tracker.open.fetch_add(1, Ordering::AcqRel);
                    let io = TokioIo::new(Tracked {
                        io: stream,
                        tracker: tracker.clone(),
                        conn: conn.clone(),
                        preface,
                    });
                    let service = service(peer, &conn);
                    tokio::spawn(serve_connection(
                        builder.clone(),
                        io,
                        service,
                        conn,
                        each_stop.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    };
    // Draining before the listener closes: a client that sees the port
    // refuse knows its next answer on an open connection says close.
    tracker.draining.store(true, Ordering::Relaxed);
    drop(listener);
    let all_closed = async {
        while tracker.open.load(Ordering::Acquire) > 0 {
            tokio::select! {
                () = tracker.closed.notified() => {}
                () = next_pass(&mut sweep) => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline, all_closed).await {
        Ok(()) => 0,
        Err(_) => tracker.open.load(Ordering::Acquire),
    }
}

/// Serves `paths` with `Host: host` through the full HTTP stack in-process,
/// to `service` (made for each in-process connection: a worker's
/// [`ConnService`], a keyed instance's `Router`), so that everything first
/// use costs (routing tables, handler state, the HTTP codec's buffers, each
/// pooled connection's first run of the app's own statements) is paid
/// before a real client arrives. Each path is sent as a wave of `width`
/// concurrent requests on as many in-process connections, so that the
/// handlers hold `width` pool connections at once and every one of them
/// runs the app's queries. Any answer other than 2xx or 3xx is an error.
pub(crate) async fn warm_requests<S: HttpService>(
    service: impl Fn(&Arc<Conn>) -> S,
    host: &str,
    paths: &[String],
    width: usize,
) -> Result<(), String> {
    if paths.is_empty() {
        return Ok(());
    }
    // A key that is no header value (a custom `Keyed` key) is sent without.
    let host = HeaderValue::from_str(host).ok();
    let mut clients =
        try_join_all((0..width.max(1)).map(|_| InProcess::connect(&service, host.clone()))).await?;
    for path in paths {
        try_join_all(clients.iter_mut().map(|client| client.get(path))).await?;
    }
    for client in clients {
        client.close().await;
    }
    Ok(())
}

/// One in-process HTTP/1.1 connection over a pipe, served by the same
/// builder as a real one. Its tasks (the client and
/// server halves) are aborted when it is dropped, so that a warm-up given up
/// on (a reload's timeout) does not leave a request running.
struct InProcess {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: Option<HeaderValue>,
    tasks: tokio::task::JoinSet<()>,
}

impl InProcess {
    async fn connect<S: HttpService>(
        service: impl Fn(&Arc<Conn>) -> S,
        host: Option<HeaderValue>,
    ) -> Result<Self, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let builder = Arc::new(
            ConnOptions {
                header_read_timeout: None,
                sweep: false,
                max_header_bytes: kiln_config::MIN_HEADER_BYTES.as_usize(),
                http2: false,
            }
            .builder(),
        );
        let conn = Arc::new(Conn::new(Arc::default()));
        let service = service(&conn);
        // Never told to stop: it ends when the client hangs up.
        let (keep, never) = watch::channel(None);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            serve_connection(builder, TokioIo::new(server_io), service, conn, never).await;
            drop(keep);
        });
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .map_err(|e| format!("in-process connection failed: {e}"))?;
        tasks.spawn(async move { drop(connection.await) });
        Ok(Self {
            sender,
            host,
            tasks,
        })
    }

    async fn get(&mut self, path: &str) -> Result<(), String> {
        let failed = |e: &dyn std::fmt::Display| format!("warm request GET {path}: {e}");
        let mut request = Request::get(path)
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(&e))?;
        if let Some(host) = &self.host {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| failed(&e))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&e))?;
        warm_answer(path, status)
    }

    async fn close(mut self) {
        drop(self.sender);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A warm request's answer is fine when it is 2xx or 3xx.
pub(crate) fn warm_answer(path: &str, status: StatusCode) -> Result<(), String> {
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("warm request GET {path} answered {status}"))
    }
}
