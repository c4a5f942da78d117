//! A minimal client for the admin API, as `kiln reload` uses it.

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Why the admin API could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin URL is not `http://host:port`.
    #[error("invalid admin URL {url:?}: expected http://HOST:PORT")]
    Url {
        /// The URL given.
        url: String,
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

/// Sends `method` to `base` + `path` (e.g. `http://127.0.0.1:9090` +
/// `/admin/reload`), with a bearer token when given, and returns the status
/// and the body as JSON (`null` when the body is not JSON).
///
/// # Errors
///
/// When the URL is malformed or the admin API cannot be reached.
pub async fn request(
    method: Method,
    base: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    let uri: Uri = base.parse().map_err(|_| ClientError::Url {
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
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", base.trim_end_matches('/')))
        .header(header::HOST, authority.as_str());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
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
