//! A minimal client for the admin API, as the `kiln` admin commands
//! (`reload`, `status`, `log-level`, ...) use it: one request, bounded in
//! time, its answer as JSON. It is part of the public
//! API so that tools embedding kiln can drive another kiln's admin API the
//! same way the command line does.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kiln_resources::within;

/// Why the admin API could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin URL is not `http://host:port` (or `host:port`).
    #[error("invalid admin URL {url:?}: expected http://HOST:PORT or HOST:PORT")]
    Url {
        /// The URL given.
        url: String,
    },
    /// The admin API accepted the connection but did not answer in time.
    #[error(
        "no answer from the admin API at {url} within {}: it may be busy (a long warm-up) or not kiln; raise --timeout to wait longer",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        /// The URL given.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// Nothing answered, or the exchange broke.
    #[error(
        "cannot reach the admin API at {url}: {message} (is kiln running, and is admin.listen this address?)"
    )]
    Unreachable {
        /// The URL given.
        url: String,
        /// What failed.
        message: String,
    },
}

/// How long connecting may take: the admin API is local or near.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `method` to `base` + `path` (e.g. `http://127.0.0.1:9090` or
/// `http://[::1]:9090` + `/admin/reload`; `http://` may be left out), with a
/// bearer token when given, and returns the status and the body as JSON
/// (`null` when the body is not JSON). Connecting may take 5 s; the whole
/// exchange `timeout` (a reload answers once its warm-up is done).
///
/// # Errors
///
/// When the URL is malformed, the admin API cannot be reached, or it does
/// not answer within `timeout`.
pub async fn request(
    method: Method,
    base: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    request_json(method, base, path, token, None, timeout).await
}

/// Like [`request`], sending `body` as JSON when given.
///
/// # Errors
///
/// As [`request`].
pub async fn request_json(
    method: Method,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    within(timeout, base, exchange(method, base, path, token, body))
        .await
        .unwrap_or_else(|late| {
            Err(ClientError::Timeout {
                url: late.what,
                timeout,
            })
        })
}

async fn exchange(
    method: Method,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    let with_scheme;
    let url = if base.contains("://") {
        base
    } else {
        with_scheme = format!("http://{base}");
        &with_scheme
    };
    let uri: Uri = url.parse().map_err(|_| ClientError::Url {
        url: base.to_owned(),
    })?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => authority.clone(),
        _ => {
            return Err(ClientError::Url {
                url: base.to_owned(),
            });
        }
    };
    let port = authority.port_u16().unwrap_or(80);
    let unreachable = |message: String| ClientError::Unreachable {
        url: base.to_owned(),
        message,
    };
    // An IPv6 literal keeps its brackets in the authority, not in a socket address.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = within(
        CONNECT_TIMEOUT,
        "a connection",
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|late| unreachable(late.to_string()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", uri.path().trim_end_matches('/')))
        .header(header::HOST, authority.as_str());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(body))
        .map_err(|_| ClientError::Url {
            url: base.to_owned(),
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}
