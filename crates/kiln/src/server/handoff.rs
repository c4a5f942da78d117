//! The channel between a restarting process and the one it starts: a unix
//! `SOCK_SEQPACKET` socket (one message per send, never merged or split) in
//! a private `0700` folder, its path in [`HANDOFF_ENV`]. Each message is
//! JSON; the listening sockets travel with one of them as `SCM_RIGHTS`, so
//! the new process accepts from the very kernel queues the old one did.
//!
//! The exchange, old ↔ new:
//! 1. new connects (the old checks the peer's pid is its child);
//!    old → [`Message::Hello`]: its pid, generation and history;
//! 2. new warms everything as a cold start does, then → [`Message::Warm`]
//!    (or [`Message::Failed`]);
//! 3. old → [`Message::Sockets`] with the fds (main listeners, admin
//!    listener, its own stderr);
//! 4. new takes them, binds what is new, serves, → [`Message::Serving`];
//! 5. old tells systemd `MAINPID=<new>`, → [`Message::Commit`], and drains.
//!    The new one tells systemd `READY=1` only then.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

use crate::history::HistoryEntry;

/// The environment variable that tells a new process where the old one
/// waits for it.
pub(crate) const HANDOFF_ENV: &str = "KILN_HANDOFF";

/// The largest message: a history of reloads fits many times over.
const MAX_MESSAGE: usize = 4 << 20;
/// The most file descriptors one message carries: a listener per worker
/// with `reuse_port`, the admin listener and stderr.
const MAX_FDS: usize = 253;

/// What the two processes say to each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// Old → new, first: who hands over, and what the new one continues.
    Hello {
        /// The old process's pid.
        pid: u32,
        /// Its current generation: the new one's first is the next.
        generation: u64,
        /// Its reload history, oldest first.
        history: Vec<HistoryEntry>,
        /// Its configuration document, to tell what the restart changed.
        config: serde_json::Value,
    },
    /// New → old: warm; ready to take the listeners.
    Warm,
    /// Old → new, carrying `main` main listeners, then the admin listener,
    /// then the old process's stderr.
    Sockets {
        /// How many main listeners (one, or one per worker with `reuse_port`).
        main: usize,
        /// The old configuration's `server.listen`.
        main_listen: SocketAddr,
        /// The old configuration's `admin.listen`.
        admin_listen: SocketAddr,
    },
    /// New → old: serving on the listeners.
    Serving {
        /// The new process's first generation.
        generation: u64,
        /// Its main listener's address.
        main: SocketAddr,
        /// Its admin listener's address.
        admin: SocketAddr,
        /// Milliseconds from its start to serving.
        warm_ms: u64,
    },
    /// New → old: it cannot start, and why.
    Failed {
        /// The error, with its causes.
        error: String,
    },
    /// Old → new: systemd knows the new main pid; the old one stops
    /// accepting now.
    Commit,
}

/// One end of a connected handoff socket. Blocking.
#[derive(Debug)]
pub(crate) struct Channel(OwnedFd);

impl Channel {
    /// Connects to the old process's socket at `path` (the new side).
    pub(crate) fn connect(path: &Path) -> io::Result<Channel> {
        let socket = seqpacket()?;
        rustix::net::connect(&socket, &SocketAddrUnix::new(path)?)?;
        Ok(Channel(socket))
    }

    /// Sends `message`, with `fds` attached.
    pub(crate) fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other(
                "too many file descriptors for one message",
            ));
        }
        rustix::net::sendmsg(
            &self.0,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// Receives the next message and the fds it carries (close-on-exec);
    /// `None` when the peer has closed its end (it exited).
    pub(crate) fn recv(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut bytes = vec![0; MAX_MESSAGE];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &self.0,
            &mut [IoSliceMut::new(&mut bytes)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if received
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err(io::Error::other("handoff message truncated"));
        }
        if received.bytes == 0 {
            return Ok(None);
        }
        let message = serde_json::from_slice(&bytes[..received.bytes])
            .map_err(|e| io::Error::other(format!("malformed handoff message: {e}")))?;
        Ok(Some((message, fds)))
    }

    /// Waits up to `timeout` for a message (or the peer's end) to arrive;
    /// whether one has.
    pub(crate) fn readable(&self, timeout: Duration) -> io::Result<bool> {
        readable(self.0.as_fd(), timeout)
    }

    /// Limits how long [`recv`](Self::recv) blocks (`None`: forever).
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        rustix::net::sockopt::set_socket_timeout(
            &self.0,
            rustix::net::sockopt::Timeout::Recv,
            timeout,
        )?;
        Ok(())
    }
}

/// The old side's listening socket, at `path`, for one connection.
#[derive(Debug)]
pub(crate) struct Listener(OwnedFd);

impl Listener {
    pub(crate) fn bind(path: &Path) -> io::Result<Listener> {
        let socket = seqpacket()?;
        rustix::net::bind(&socket, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&socket, 1)?;
        Ok(Listener(socket))
    }

    /// Waits up to `timeout` for a connection to arrive; whether one has.
    pub(crate) fn readable(&self, timeout: Duration) -> io::Result<bool> {
        readable(self.0.as_fd(), timeout)
    }

    /// Accepts the connection that arrived, and the pid of the process that
    /// made it.
    pub(crate) fn accept(&self) -> io::Result<(Channel, i32)> {
        let socket = rustix::net::accept_with(&self.0, SocketFlags::CLOEXEC)?;
        let peer = rustix::net::sockopt::socket_peercred(&socket)?;
        Ok((Channel(socket), peer.pid.as_raw_pid()))
    }
}

/// How long a new process waits for the old one's first message.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// A restart's new process: what it continues from, and its channel to the
/// old process.
#[derive(Debug)]
pub(crate) struct Successor {
    channel: Channel,
    /// The old process's pid.
    pub(crate) old_pid: u32,
    /// The old process's generation.
    pub(crate) generation: u64,
    /// The old process's history, oldest first.
    pub(crate) history: Vec<HistoryEntry>,
    /// The old process's configuration document.
    pub(crate) config: serde_json::Value,
}

/// The listening sockets a new process received.
#[derive(Debug)]
pub(crate) struct Inherited {
    /// The main listeners.
    pub(crate) main: Vec<std::net::TcpListener>,
    /// The old configuration's `server.listen`.
    pub(crate) main_listen: SocketAddr,
    pub(crate) admin: std::net::TcpListener,
    /// The old configuration's `admin.listen`.
    pub(crate) admin_listen: SocketAddr,
}

impl Successor {
    /// With [`HANDOFF_ENV`] set, this process was started by a restart:
    /// connects to the old process and reads where to continue from.
    pub(crate) fn from_env() -> io::Result<Option<Successor>> {
        let Some(path) = std::env::var_os(HANDOFF_ENV) else {
            return Ok(None);
        };
        let channel = Channel::connect(Path::new(&path)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{HANDOFF_ENV} is set, but the process that started this one cannot be reached at {}: {e}",
                    Path::new(&path).display()
                ),
            )
        })?;
        channel.set_timeout(Some(HELLO_TIMEOUT))?;
        let hello = channel.recv()?;
        channel.set_timeout(None)?;
        match hello {
            Some((
                Message::Hello {
                    pid,
                    generation,
                    history,
                    config,
                },
                _,
            )) => Ok(Some(Successor {
                channel,
                old_pid: pid,
                generation,
                history,
                config,
            })),
            other => Err(unexpected("Hello", other.map(|(m, _)| m))),
        }
    }

    /// Tells the old process why this one cannot start (best effort: it
    /// also sees this process exit).
    pub(crate) fn fail(&self, error: &(dyn std::error::Error + 'static)) {
        let error = crate::ErrorChain(error).to_string();
        let _ = self.channel.send(&Message::Failed { error }, &[]);
    }

    /// Says this process is warm and takes the old one's listeners; from
    /// now on it logs to the old process's stderr. `None` when the old
    /// process has gone meanwhile (its listeners with it).
    pub(crate) fn take_sockets(&self) -> io::Result<Option<Inherited>> {
        self.channel.send(&Message::Warm, &[])?;
        let (message, fds) = match self.channel.recv()? {
            Some(received) => received,
            None => return Ok(None),
        };
        let Message::Sockets {
            main,
            main_listen,
            admin_listen,
        } = message
        else {
            return Err(unexpected("Sockets", Some(message)));
        };
        if fds.len() != main + 2 {
            return Err(io::Error::other(format!(
                "expected {} file descriptors, received {}",
                main + 2,
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let main: Vec<_> = fds
            .by_ref()
            .take(main)
            .map(listener)
            .collect::<Result<_, _>>()?;
        let admin = listener(fds.next().expect("counted"))?;
        rustix::stdio::dup2_stderr(fds.next().expect("counted"))?;
        Ok(Some(Inherited {
            main,
            main_listen,
            admin,
            admin_listen,
        }))
    }

    /// Tells the old process this one serves, then waits for its commit:
    /// whether it came (`false`: the old process has gone).
    pub(crate) fn serving(&self, serving: &Message) -> io::Result<bool> {
        self.channel.send(serving, &[])?;
        match self.channel.recv()? {
            Some((Message::Commit, _)) => Ok(true),
            None => Ok(false),
            Some((other, _)) => Err(unexpected("Commit", Some(other))),
        }
    }
}

/// A received descriptor as a listener, once it proves to be a listening
/// TCP socket.
pub(super) fn listener(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    if !rustix::net::sockopt::socket_acceptconn(&fd)? {
        return Err(io::Error::other(
            "a received descriptor is not a listening socket",
        ));
    }
    let listener = std::net::TcpListener::from(fd);
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn unexpected(expected: &str, got: Option<Message>) -> io::Error {
    match got {
        Some(message) => io::Error::other(format!("expected {expected}, received {message:?}")),
        None => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the old process closed the handoff before {expected}"),
        ),
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec::try_from(timeout).map_err(io::Error::other)?;
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_listening_sockets_across() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        let listener = Listener::bind(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let new = std::thread::spawn(move || {
            let channel = Channel::connect(&path).unwrap();
            let (message, fds) = channel.recv().unwrap().expect("a message");
            assert!(
                matches!(message, Message::Sockets { main: 1, .. }),
                "{message:?}"
            );
            let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
            assert_eq!(received.local_addr().unwrap(), addr);
            assert!(channel.recv().unwrap().is_none(), "the old side closed");
        });
        assert!(listener.readable(Duration::from_secs(30)).unwrap());
        let (channel, pid) = listener.accept().unwrap();
        assert_eq!(pid as u32, std::process::id());
        let sockets = Message::Sockets {
            main: 1,
            main_listen: addr,
            admin_listen: addr,
        };
        channel.send(&sockets, &[tcp.as_fd()]).unwrap();
        drop(channel);
        new.join().unwrap();
    }
}
