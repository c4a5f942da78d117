//! Serving HTTP/1.1 connections: the accept loop of a worker, with a bounded
//! graceful shutdown, and in-process warm-up requests through the very same
//! connection stack over an in-memory pipe.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::{GenerationService, WorkerApp};

fn connection_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // A client that never finishes its head must not hold a slot forever.
        .header_read_timeout(Duration::from_secs(30));
    builder
}

fn serve_connection<I>(
    io: I,
    service: GenerationService,
) -> hyper::server::conn::http1::Connection<TokioIo<I>, TowerToHyperService<GenerationService>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    connection_builder().serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
}

/// Accepts connections until `shutdown` turns true, then lets open
/// connections finish their requests for at most `grace`. Returns how many
/// connections were cut at the deadline.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    service: GenerationService,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = graceful.watch(serve_connection(stream, service.clone()));
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
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => 0,
        () = tokio::time::sleep(grace) => open,
    }
}

/// Serves `paths` through `app`'s full HTTP stack in-process, so that
/// everything first use costs (routing tables, handler state, the HTTP
/// codec's buffers, pooled connections' statement caches) is paid before a
/// real client arrives. Any answer other than 2xx or 3xx is an error.
pub(crate) async fn warm_requests(app: Arc<WorkerApp>, paths: &[String]) -> Result<(), String> {
    if paths.is_empty() {
        return Ok(());
    }
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve_connection(server_io, GenerationService::fixed(app)));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .map_err(|e| format!("in-process connection failed: {e}"))?;
    let client = tokio::spawn(connection);
    for path in paths {
        let request = Request::get(path.as_str())
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("warm request GET {path}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("warm request GET {path}: {e}"))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("warm request GET {path}: reading the body: {e}"))?;
        if !(status.is_success() || status.is_redirection()) {
            return Err(format!("warm request GET {path} answered {status}"));
        }
    }
    drop(sender);
    let _ = client.await;
    let _ = server.await;
    Ok(())
}
