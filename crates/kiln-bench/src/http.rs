//! A minimal HTTP/1.1 client on hyper's connection API: one TCP connection,
//! keep-alive, one request at a time. Enough for probes and waves, with no
//! pool or retry that would hide what the server did.
//!
//! A connection the server closed after a complete answer (`Connection:
//! close`, a graceful restart) is reopened before the next request, as any
//! client does; a request that was sent and got no answer is an error.

use std::net::SocketAddr;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The header kiln tags every response with.
pub const GENERATION_HEADER: &str = "x-config-generation";

/// One answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// `X-Config-Generation`, when the server sent one.
    pub generation: Option<u64>,
    /// The whole body.
    pub body: Bytes,
}

/// One keep-alive HTTP/1.1 connection, reopened when the server closed it.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Opens a connection to `addr` (with `TCP_NODELAY`) and drives it on
    /// the current tokio runtime.
    ///
    /// # Errors
    ///
    /// When the connection or the HTTP handshake fails.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            sender: Some(open(addr).await?),
        })
    }

    /// `GET path`, waiting for the whole body.
    ///
    /// # Errors
    ///
    /// When the connection fails before the whole answer arrived.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with an empty body, waiting for the whole answer.
    ///
    /// # Errors
    ///
    /// When the connection fails before the whole answer arrived.
    pub async fn post(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::POST, path, None).await
    }

    /// `POST path` with `body` of `content_type`, waiting for the whole answer.
    ///
    /// # Errors
    ///
    /// When the connection fails before the whole answer arrived.
    pub async fn post_body(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.request(Method::POST, path, Some((content_type, body.into())))
            .await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<Reply> {
        let mut sender = match self.sender.take() {
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => open(self.addr).await?,
            },
            None => open(self.addr).await?,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                body
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status().as_u16();
        let generation = response
            .headers()
            .get(GENERATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.into_body().collect().await?.to_bytes();
        self.sender = Some(sender);
        Ok(Reply {
            status,
            generation,
            body,
        })
    }
}

async fn open(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET path` on a new connection, which is then closed.
///
/// # Errors
///
/// When connecting or the request fails.
pub async fn get_once(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    Conn::connect(addr).await?.get(path).await
}
