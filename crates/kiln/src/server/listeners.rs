//! The listeners, bound (or taken over from a restarting process) only once
//! everything is warm: the main one shared by (or, with `reuse_port`, one
//! per) worker, and the admin one served on the control runtime.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use hyper_util::service::TowerToHyperService;
use kiln_config::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};
use tower::Layer;

use super::handoff::Inherited;
use super::restart::Sockets;
use super::workers::WorkerHandle;
use super::{Stop, io};
use crate::http::{ConnOptions, accept_loop};
use crate::{App, Kiln, StartError};

/// The admin listener's header-read timeout when `server.header_read_timeout`
/// is off: the admin port is never behind the proxy that turned it off.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The listeners, bound or taken over.
pub(super) struct Bound {
    /// The main listener's address.
    pub(super) main_addr: SocketAddr,
    /// The admin listener.
    pub(super) admin: std::net::TcpListener,
    /// Copies of them all, for a later restart to hand over.
    pub(super) sockets: Sockets,
}

/// Listening sockets this process was given rather than binding them: by a
/// restart's old process, or by systemd (socket activation).
#[derive(Debug, Default)]
pub(super) struct Given {
    /// For `server.listen` (several with `reuse_port`); empty: bind it.
    pub(super) main: Vec<std::net::TcpListener>,
    /// For `admin.listen`; `None`: bind it.
    pub(super) admin: Option<std::net::TcpListener>,
}

impl Given {
    /// What a restart handed over, kept where the configured address
    /// (`main`, `admin`) is unchanged; a moved one is bound anew, and the
    /// old process closes the old address.
    pub(super) fn inherited(inherited: Inherited, main: SocketAddr, admin: SocketAddr) -> Given {
        Given {
            main: if inherited.main_listen == main {
                inherited.main
            } else {
                Vec::new()
            },
            admin: (inherited.admin_listen == admin).then_some(inherited.admin),
        }
    }
}

/// Binds the main and admin listeners (everything is warm by now), or takes
/// those `given` (by a restart or by systemd), and hands each worker its
/// share of the main ones. Without `reuse_port` every worker accepts on (a
/// copy of) every main socket; with it, each gets a socket of its own on
/// the same address (the port resolved, if it was 0). Given sockets are
/// never closed here: their queued connections would be reset. A given
/// socket beyond the worker count is shared by the workers instead.
pub(super) fn bind_and_hand_out(
    server: &ServerConfig,
    admin_listen: SocketAddr,
    workers: &mut [WorkerHandle],
    Given { main, admin }: Given,
) -> Result<Bound, StartError> {
    let bind_error = |key, addr| move |source| StartError::Bind { key, addr, source };
    let mut main = match main.is_empty() {
        true => vec![
            bind(server.listen, server.reuse_port)
                .map_err(bind_error("server.listen", server.listen))?,
        ],
        false => main,
    };
    let admin = match admin {
        Some(admin) => admin,
        None => bind(admin_listen, false).map_err(bind_error("admin.listen", admin_listen))?,
    };
    let main_addr = main[0].local_addr().map_err(io("main listener"))?;
    if server.reuse_port {
        while main.len() < workers.len() {
            match bind(main_addr, true) {
                Ok(socket) => main.push(socket),
                // A given socket without SO_REUSEPORT holds the port: the
                // workers share what there is.
                Err(e) if !main.is_empty() && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::warn!(
                        "server.reuse_port: the listener taken over (from the old process, or from systemd) does not have SO_REUSEPORT; the workers share it until the address changes"
                    );
                    break;
                }
                Err(e) => return Err(bind_error("server.listen", main_addr)(e)),
            }
        }
    }
    let sockets = Sockets {
        main: main
            .iter()
            .map(|socket| socket.try_clone().map(OwnedFd::from))
            .collect::<Result<_, _>>()
            .map_err(io("cannot copy the main listener"))?,
        admin: admin
            .try_clone()
            .map(OwnedFd::from)
            .map_err(io("cannot copy the admin listener"))?,
    };
    let count = workers.len();
    let mut shares: Vec<Vec<std::net::TcpListener>> = (0..count).map(|_| Vec::new()).collect();
    if server.reuse_port && main.len() >= count {
        // One each; any beyond the worker count shared round the workers.
        for (i, socket) in main.into_iter().enumerate() {
            shares[i % count].push(socket);
        }
    } else {
        for share in &mut shares {
            for socket in &main {
                share.push(
                    socket
                        .try_clone()
                        .map_err(io("cannot share the main listener"))?,
                );
            }
        }
    }
    for (worker, share) in workers.iter_mut().zip(shares) {
        worker.hand(share);
    }
    Ok(Bound {
        main_addr,
        admin,
        sockets,
    })
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
    // HTTP/1.1 only, with the main listener's head size limit; hyper's
    // head timer, as the admin router counts no requests for a sweep.
    let options = ConnOptions {
        header_read_timeout: Some(
            server
                .header_read_limit()
                .unwrap_or(ADMIN_HEADER_READ_TIMEOUT),
        ),
        sweep: false,
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
