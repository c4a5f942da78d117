//! Listening sockets from systemd socket activation (`sd_listen_fds(3)`:
//! fds from 3 on, `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), matched to
//! `server.listen` and `admin.listen` by the address each is bound to. As
//! systemd's own services do, kiln uses what is passed and binds the rest;
//! a passed socket that no key names is an error, since nobody would accept
//! on it while systemd keeps it open.

use std::net::{SocketAddr, TcpListener};

use listenfd::ListenFd;

use super::handoff;
use super::listeners::Given;
use crate::StartError;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: usize = 3;

/// One passed listening socket.
#[derive(Debug)]
struct Passed {
    listener: TcpListener,
    addr: SocketAddr,
    fd: usize,
    /// Its `FileDescriptorName=` (`unknown` when systemd named none).
    name: String,
}

/// The sockets systemd passed to this process.
#[derive(Debug, Default)]
pub(super) struct Activated(Vec<Passed>);

impl Activated {
    /// Takes the sockets passed to this process: none unless `LISTEN_PID`
    /// is this process. The variables are then removed from the
    /// environment (by `listenfd`; a restart's new process is also started
    /// without them): they describe this process's descriptors, not its
    /// children's. Call it before any other thread reads the environment.
    pub(super) fn from_env() -> Result<Activated, StartError> {
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            == Some(std::process::id());
        if !ours || std::env::var_os("LISTEN_FDS").is_none() {
            return Ok(Activated::default());
        }
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        let mut fds = ListenFd::from_env();
        let mut passed = Vec::new();
        for index in 0..fds.len() {
            let fd = FIRST_FD + index;
            let name = names
                .next()
                .filter(|name| !name.is_empty())
                .unwrap_or("unknown")
                .to_owned();
            let refuse = |e: std::io::Error| {
                StartError::Activation(format!(
                    "fd {fd} ({name:?}) is not a listening TCP socket ({e}): kiln takes only ListenStream= sockets, with Accept=no"
                ))
            };
            let listener = fds
                .take_tcp_listener(index)
                .map_err(refuse)?
                .ok_or_else(|| refuse(std::io::Error::other("already taken")))?;
            let listener = handoff::listener(listener.into()).map_err(refuse)?;
            let addr = listener.local_addr().map_err(refuse)?;
            passed.push(Passed {
                listener,
                addr,
                fd,
                name,
            });
        }
        Ok(Activated(passed))
    }

    /// Sorts the sockets into those for `main` (`server.listen`; all of
    /// them bound there) and the one for `admin` (`admin.listen`). A
    /// configured address that none is bound to is left for kiln to bind.
    pub(super) fn sort(self, main: SocketAddr, admin: SocketAddr) -> Result<Given, StartError> {
        let mut given = Given::default();
        for passed in self.0 {
            if passed.addr == main {
                passed.log("server.listen");
                given.main.push(passed.listener);
            } else if passed.addr == admin && given.admin.is_none() {
                passed.log("admin.listen");
                given.admin = Some(passed.listener);
            } else {
                return Err(StartError::Activation(format!(
                    "fd {} ({:?}) listens on {}, which is neither server.listen ({main}) nor admin.listen ({admin}): set the key to the socket unit's ListenStream= address (the same IP and port; ListenStream=PORT alone is [::]:PORT), or remove that ListenStream=",
                    passed.fd, passed.name, passed.addr
                )));
            }
        }
        Ok(given)
    }
}

impl Passed {
    fn log(&self, key: &str) {
        tracing::info!(
            key,
            addr = %self.addr,
            fd = self.fd,
            name = self.name,
            "Listening on a socket from systemd socket activation"
        );
    }
}
