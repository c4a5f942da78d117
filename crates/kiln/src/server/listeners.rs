//! The listeners, bound only once everything is warm: the main one shared
//! by (or, with `reuse_port`, one per) worker, and the admin one served on
//! the control runtime.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use hyper_util::service::TowerToHyperService;
use kiln_config::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};
use tower::Layer;

use super::workers::WorkerHandle;
use super::{Stop, io};
use crate::http::{ConnOptions, accept_loop};
use crate::{App, Kiln, StartError};

/// The admin listener's header-read timeout when `server.header_read_timeout`
/// is off: the admin port is never behind the proxy that turned it off.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the main and admin listeners (everything is warm by now) and hands
/// each worker its share of the main one. Shared: every worker accepts on a
/// clone of one socket (the last gets the original). `reuse_port`: the
/// first gets it, each other its own socket on the same address (the port
/// resolved, if it was 0). Returns the main address and the admin listener.
pub(super) fn bind_and_hand_out(
    server: &ServerConfig,
    admin_listen: SocketAddr,
    workers: &mut [WorkerHandle],
) -> Result<(SocketAddr, std::net::TcpListener), StartError> {
    let main = bind(server.listen, server.reuse_port).map_err(|source| StartError::Bind {
        key: "server.listen",
        addr: server.listen,
        source,
    })?;
    let admin = bind(admin_listen, false).map_err(|source| StartError::Bind {
        key: "admin.listen",
        addr: admin_listen,
        source,
    })?;
    let main_addr = main.local_addr().map_err(io("main listener"))?;
    let count = workers.len();
    let mut main = Some(main);
    for (id, worker) in workers.iter_mut().enumerate() {
        let listener = if server.reuse_port && id > 0 {
            bind(main_addr, true).map_err(|source| StartError::Bind {
                key: "server.listen",
                addr: main_addr,
                source,
            })?
        } else if server.reuse_port || id + 1 == count {
            main.take().expect("taken once")
        } else {
            main.as_ref()
                .expect("kept for the last worker")
                .try_clone()
                .map_err(io("cannot share the main listener"))?
        };
        worker.hand(listener);
    }
    Ok((main_addr, admin))
}

/// Serves the admin API on `listener` on this (the control) runtime, with
/// a header-read timeout, until the drain's deadline. Returns how many
/// connections the deadline cut.
pub(super) fn serve_admin<A: App>(
    kiln: &Kiln<A>,
    listener: std::net::TcpListener,
    stop: Stop,
    server: &ServerConfig,
) -> Result<tokio::task::JoinHandle<usize>, StartError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io("admin listener"))?;
    let addr = listener.local_addr().map_err(io("admin listener"))?;
    let router = axum::Router::new().nest(
        "/admin",
        crate::admin::router(kiln.clone(), crate::admin::Mount::Listener(addr)),
    );
    // HTTP/1.1 only, with the main listener's head size limit.
    let options = ConnOptions {
        header_read_timeout: Some(
            server
                .header_read_limit()
                .unwrap_or(ADMIN_HEADER_READ_TIMEOUT),
        ),
        http2: false,
        ..ConnOptions::of(server)
    };
    // The peer's address, for the audit log and the history.
    let service = move |peer: SocketAddr, _: &_| {
        TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(router.clone()))
    };
    Ok(tokio::spawn(async move {
        accept_loop(listener, service, stop, &options).await
    }))
}

/// Binds a non-blocking listener with a deep backlog; with `reuse_port`,
/// one of several on the same address.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
