//! Serving HTTP/1.1 connections: the accept loop of a worker, with a bounded
//! graceful shutdown, and in-process warm-up requests through the very same
//! connection stack over an in-memory pipe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::http::{Request, Response, StatusCode, header};
use futures_util::future::try_join_all;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::service::{GenerationService, WorkerApp};

/// Serves one connection. With `header_read_timeout`, a client that never
/// finishes a request head (or idles between requests) for that long is
/// cut; hyper arms a timer for every request to enforce it.
fn serve_connection<I, S>(
    io: I,
    service: S,
    header_read_timeout: Option<Duration>,
) -> hyper::server::conn::http1::Connection<TokioIo<I>, TowerToHyperService<S>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService,
{
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(header_read_timeout)
        // Head and body in one buffer, one write: for the small answers most
        // requests get, about 450 fewer instructions than a vectored write
        // (`kiln-bench instructions`); axum::serve's stack writes this way too.
        .writev(false);
    if header_read_timeout.is_some() {
        builder.timer(TokioTimer::new());
    }
    builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
}

/// A tower service kiln serves connections with: a worker's
/// [`GenerationService`] or the admin `Router`.
pub(crate) trait HttpService:
    Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type Body: HttpBody<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static,
{
    type Body = B;
}

/// Accepts connections, each served by `service(peer)`, until `shutdown`
/// holds a deadline, then lets open connections finish their requests until
/// that deadline. Returns how many connections were cut at the deadline.
pub(crate) async fn accept_loop<S: HttpService>(
    listener: TcpListener,
    service: impl Fn(SocketAddr) -> S,
    mut shutdown: watch::Receiver<Option<Instant>>,
    header_read_timeout: Option<Duration>,
) -> usize {
    let graceful = GracefulShutdown::new();
    let deadline = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = graceful.watch(serve_connection(
                        stream,
                        service(peer),
                        header_read_timeout,
                    ));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "Connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            deadline = async { shutdown.wait_for(Option::is_some).await.map(|d| *d) } => {
                // A dropped sender means the server is gone: stop now.
                break deadline.ok().flatten().unwrap_or_else(Instant::now);
            }
        }
    };
    drop(listener);
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => 0,
        () = tokio::time::sleep_until(deadline) => open,
    }
}

/// Serves `paths` through `app`'s full HTTP stack in-process, so that
/// everything first use costs (routing tables, handler state, the HTTP
/// codec's buffers, each pooled connection's first run of the app's own
/// statements) is paid before a real client arrives. Each path is sent as a
/// wave of `width` concurrent requests on as many in-process connections,
/// so that the handlers hold `width` pool connections at once and every
/// one of them runs the app's queries. Any answer other than 2xx or 3xx is
/// an error.
pub(crate) async fn warm_requests(
    app: Arc<WorkerApp>,
    paths: &[String],
    width: usize,
) -> Result<(), String> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut clients =
        try_join_all((0..width.max(1)).map(|_| InProcess::connect(app.clone()))).await?;
    for path in paths {
        try_join_all(clients.iter_mut().map(|client| client.get(path))).await?;
    }
    for client in clients {
        client.close().await;
    }
    Ok(())
}

/// One in-process HTTP/1.1 connection to a worker's app over a pipe. Its
/// tasks (the client and server halves) are aborted when it is dropped, so
/// that a warm-up given up on (a reload's timeout) does not leave a request
/// running.
struct InProcess {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    tasks: tokio::task::JoinSet<()>,
}

impl InProcess {
    async fn connect(app: Arc<WorkerApp>) -> Result<Self, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = serve_connection(server_io, GenerationService::fixed(app), None);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move { drop(server.await) });
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .map_err(|e| format!("in-process connection failed: {e}"))?;
        tasks.spawn(async move { drop(connection.await) });
        Ok(Self { sender, tasks })
    }

    async fn get(&mut self, path: &str) -> Result<(), String> {
        let failed = |e: &dyn std::fmt::Display| format!("warm request GET {path}: {e}");
        let request = Request::get(path)
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(&e))?;
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
