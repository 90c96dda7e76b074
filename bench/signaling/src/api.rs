//! The session server's HTTP API as this generator uses it: `POST /v1/rooms/{room}/join`
//! (PROTOCOL.md "HTTP API") over a small pool of HTTP/1.1 keep-alive connections, so that 10k
//! joins do not leave 10k sockets in TIME_WAIT.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// What a join grants: where to connect and the access token for the `join` frame.
#[derive(Debug, Clone, Deserialize)]
pub struct JoinGrant {
    /// WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws`.
    pub url: String,
    /// Access token (JWT).
    pub token: String,
}

/// Why a join request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// TCP connect to the session server failed.
    #[error("connecting to the session server")]
    Connect(#[source] std::io::Error),
    /// HTTP-level failure (connection closed, malformed response).
    #[error("HTTP exchange")]
    Hyper(#[from] hyper::Error),
    /// A status other than 200.
    #[error("HTTP status {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The 200 body is not a join answer.
    #[error("join answer")]
    Body(#[from] serde_json::Error),
    /// No answer within the time allowed.
    #[error("no answer in time")]
    Timeout,
    /// The request could not be built (bad room name).
    #[error("building the request")]
    Request(#[from] http::Error),
}

impl HttpError {
    /// Short label for the failure tables (`http_401`, `http_connect`...).
    pub fn label(&self) -> String {
        match self {
            Self::Connect(_) => "http_connect".into(),
            Self::Hyper(_) => "http_error".into(),
            Self::Status { status, .. } => format!("http_{status}"),
            Self::Body(_) => "http_bad_body".into(),
            Self::Timeout => "http_timeout".into(),
            Self::Request(_) => "http_request".into(),
        }
    }
}

/// A bounded pool of keep-alive connections to the session server.
pub struct HttpPool {
    addr: SocketAddr,
    authority: String,
    base_path: String,
    authorization: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    permits: Semaphore,
}

impl HttpPool {
    /// `base` is the session server's URL (`http://HOST:PORT[/prefix]`), resolved to `addr`;
    /// `api_key` is `KEY:SECRET` for HTTP Basic; at most `connections` requests at a time.
    pub fn new(addr: SocketAddr, base: &http::Uri, api_key: &str, connections: usize) -> Self {
        let authority = base
            .authority()
            .map_or_else(|| addr.to_string(), |a| a.to_string());
        Self {
            addr,
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(api_key)
            ),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(connections.max(1)),
        }
    }

    /// Joins `room` as `identity`, creating the room (mesh, `capacity`) on the first join.
    /// Waits for a free connection first, then allows `limit` for the exchange (connecting
    /// included), and returns the grant with the exchange's duration.
    pub async fn join(
        &self,
        room: &str,
        identity: &str,
        name: &str,
        capacity: usize,
        limit: Duration,
    ) -> Result<(JoinGrant, Duration), HttpError> {
        let body = serde_json::json!({
            "identity": identity, "name": name, "mode": "mesh", "capacity": capacity,
        })
        .to_string();
        let request = hyper::Request::post(format!("{}/v1/rooms/{room}/join", self.base_path))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let _permit = self.permits.acquire().await.expect("never closed");
        let started = Instant::now();
        let grant = tokio::time::timeout(limit, self.exchange(request))
            .await
            .map_err(|_| HttpError::Timeout)??;
        Ok((grant, started.elapsed()))
    }

    async fn exchange(&self, request: hyper::Request<Full<Bytes>>) -> Result<JoinGrant, HttpError> {
        let pooled = self.idle.lock().expect("not poisoned").pop();
        let mut sender = match pooled {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !sender.is_closed() {
            self.idle.lock().expect("not poisoned").push(sender);
        }
        if status != hyper::StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(HttpError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(HttpError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}
