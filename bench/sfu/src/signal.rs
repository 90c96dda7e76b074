//! One signaling link per participant, as the signaling server opens it (services/sfu/PROTOCOL.md
//! "The link"): `GET ws://LINK/v1/signal?room=R&participant=P`, `Authorization: Bearer SECRET`,
//! text frames holding the `msg` objects.

use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Messages from the SFU to a client thread: (participant slot in that thread, `msg`).
pub type Inbox = (mpsc::Sender<(usize, serde_json::Value)>, Arc<mio::Waker>);

/// Link failures, counted for the report.
#[derive(Debug, Default)]
pub struct LinkErrors {
    /// Could not connect or upgrade.
    pub connect: AtomicUsize,
    /// Closed by the SFU before the end.
    pub closed: AtomicUsize,
}

/// Runs one link until `shutdown` or until the SFU closes it.
#[allow(clippy::too_many_arguments)]
pub async fn run_link(
    link: std::net::SocketAddr,
    secret: String,
    room: String,
    participant: String,
    slot: usize,
    inbox: Inbox,
    mut outbox: UnboundedReceiver<String>,
    errors: Arc<LinkErrors>,
    shutdown: CancellationToken,
) {
    let url = format!("ws://{link}/v1/signal?room={room}&participant={participant}");
    let Ok(mut req) = url.into_client_request() else {
        errors.connect.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Ok(v) = format!("Bearer {secret}").parse() {
        req.headers_mut().insert("authorization", v);
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            eprintln!("link {room}/{participant}: {e}");
            errors.connect.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let (tx, waker) = inbox;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str(t.as_str()) {
                        if tx.send((slot, v)).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    eprintln!("link {room}/{participant} closed by the sfu: {f:?}");
                    errors.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                _ => {
                    errors.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            out = outbox.recv() => match out {
                Some(text) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        errors.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
        }
    }
}

/// What a participant saw of the signaling server (the `--simulate` report).
#[derive(Debug, Default)]
pub struct SignalingSeen {
    /// The channel node's WebSocket URL the join went to.
    pub ws_url: std::sync::Mutex<String>,
    /// `error` frames received after `joined` (code: message).
    pub errors: std::sync::Mutex<Vec<String>>,
    /// `room-closed` received.
    pub room_closed: std::sync::atomic::AtomicBool,
}

/// A plain HTTP/1.1 GET with HTTP Basic `KEY:SECRET` (loopback, no TLS): the JSON body of a
/// 200 answer.
pub async fn get_json(base: &str, path: &str, api_key: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http(base, "GET", path, api_key, "").await?;
    if status != 200 {
        anyhow::bail!("GET {path}: HTTP {status} {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

async fn post_json(
    base: &str,
    path: &str,
    api_key: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    http(base, "POST", path, api_key, body).await
}

/// A plain HTTP/1.1 request with a JSON body and HTTP Basic `KEY:SECRET` (loopback, no TLS): the
/// status and the body.
async fn http(
    base: &str,
    method: &str,
    path: &str,
    api_key: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("signaling URL must be http://HOST:PORT: {base}"))?
        .trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(authority).await?;
    let auth = base64::engine::general_purpose::STANDARD.encode(api_key);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// One participant through the signaling server (services/signaling/PROTOCOL.md): `POST
/// /v1/rooms/{room}/join` (creating the `sfu` room of 4 on first join) on `base`, then the
/// WebSocket of the room's channel node, `join`, and the SFU's messages both ways inside
/// `{"type":"sfu","msg":...}`. Pings every 20 s; on `shutdown`, `leave`.
#[allow(clippy::too_many_arguments)]
pub async fn run_signaling_link(
    base: String,
    api_key: String,
    room: String,
    identity: String,
    slot: usize,
    inbox: Inbox,
    mut outbox: UnboundedReceiver<String>,
    errors: Arc<LinkErrors>,
    seen: Arc<SignalingSeen>,
    shutdown: CancellationToken,
) {
    let body = serde_json::json!({"identity": identity, "mode": "sfu", "capacity": 4}).to_string();
    let joined = match post_json(&base, &format!("/v1/rooms/{room}/join"), &api_key, &body).await {
        Ok((200, b)) => serde_json::from_str::<serde_json::Value>(&b).ok(),
        Ok((status, b)) => {
            eprintln!("join {room}/{identity}: HTTP {status} {b}");
            None
        }
        Err(e) => {
            eprintln!("join {room}/{identity}: {e}");
            None
        }
    };
    let Some((url, token)) = joined.and_then(|j| {
        Some((
            j.get("url")?.as_str()?.to_string(),
            j.get("token")?.as_str()?.to_string(),
        ))
    }) else {
        errors.connect.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Ok(mut u) = seen.ws_url.lock() {
        *u = url.clone();
    }
    let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            eprintln!("ws {room}/{identity}: {e}");
            errors.connect.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let join = serde_json::json!({"type": "join", "v": 1, "room": room, "token": token});
    if ws
        .send(Message::Text(join.to_string().into()))
        .await
        .is_err()
    {
        errors.connect.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (tx, waker) = inbox;
    let mut ping = tokio::time::interval(std::time::Duration::from_secs(20));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                leave(&mut ws).await;
                return;
            }
            _ = ping.tick() => {
                let _ = ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                        continue;
                    };
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("sfu") => {
                            if let Some(msg) = v.get("msg") {
                                if tx.send((slot, msg.clone())).is_err() {
                                    return;
                                }
                                let _ = waker.wake();
                            }
                        }
                        Some("error") => {
                            if let Ok(mut e) = seen.errors.lock() {
                                e.push(format!("{} {}", v["code"], v["message"]));
                            }
                        }
                        Some("room-closed") => {
                            seen.room_closed.store(true, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    eprintln!("ws {room}/{identity} closed by signaling: {f:?}");
                    errors.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                _ => {
                    errors.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            out = outbox.recv() => match out {
                Some(text) => {
                    let Ok(msg) = serde_json::from_str::<serde_json::Value>(&text) else {
                        continue;
                    };
                    let frame = serde_json::json!({"type": "sfu", "msg": msg}).to_string();
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        errors.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                // The participant's client thread ended: it leaves.
                None => {
                    leave(&mut ws).await;
                    return;
                }
            },
        }
    }
}

/// Sends `leave` and waits (at most 3 s) for `left` or the server's close, so the room sees
/// the participant go now rather than after its resume grace; then closes.
async fn leave<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while let Some(Ok(m)) = ws.next().await {
            match &m {
                Message::Text(t) if t.as_str().contains("\"left\"") => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    let _ = ws.close(None).await;
}
