//! TURN over DTLS: a webrtc-rs `rtc-dtls` client endpoint (sans-IO, ring provider) on a connected
//! tokio UDP socket. The task feeds it datagrams and timer expiries and puts what it queues on
//! the socket; each DTLS application-data record is one STUN message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_dtls::config::{ConfigBuilder, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{channels, Close, Ends, Link, LinkError};

/// Largest datagram read.
const DATAGRAM_BYTES: usize = 64 * 1024;
/// Wake-up when the endpoint has no timer (it only arms one during the handshake).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A client configuration for `server` that accepts any certificate.
pub fn client_config(server: SocketAddr) -> Result<Arc<HandshakeConfig>, LinkError> {
    let provider =
        rtc_crypto::default_provider().map_err(|e| LinkError::Handshake(format!("{e:?}")))?;
    let config = ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_insecure_skip_verify(true)
        .build(true, Some(server))
        .map_err(|e| LinkError::Handshake(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Runs a DTLS handshake with `server` from a fresh UDP port and starts the link's task.
pub async fn connect(
    server: SocketAddr,
    config: Arc<HandshakeConfig>,
    timeout: Duration,
) -> Result<Link, LinkError> {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0)).await?;
    socket.connect(server).await?;
    let mut dtls = Dtls {
        endpoint: Endpoint::new(socket.local_addr()?, TransportProtocol::UDP, None),
        socket,
        server,
        buf: vec![0; DATAGRAM_BYTES],
    };
    dtls.endpoint
        .connect(Instant::now(), server, config, None)
        .map_err(|e| LinkError::Handshake(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut early = Vec::new();
    loop {
        dtls.transmit().await?;
        let wake = dtls.next_wake().min(deadline);
        tokio::select! {
            r = dtls.socket.recv(&mut dtls.buf) => {
                let n = r?;
                let events = dtls
                    .endpoint
                    .read(Instant::now(), server, None, BytesMut::from(&dtls.buf[..n]))
                    .map_err(|e| LinkError::Handshake(e.to_string()))?;
                let mut done = false;
                for e in events {
                    match e {
                        EndpointEvent::HandshakeComplete => done = true,
                        EndpointEvent::ApplicationData(d) => early.push(d.to_vec()),
                        EndpointEvent::PeerClosed => {
                            return Err(LinkError::Handshake("server closed".into()))
                        }
                        _ => {}
                    }
                }
                if done {
                    dtls.transmit().await?;
                    break;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(LinkError::Timeout);
                }
                dtls.endpoint
                    .handle_timeout(server, Instant::now())
                    .map_err(|e| LinkError::Handshake(e.to_string()))?;
            }
        }
    }
    let (ends, parts) = channels(false);
    for m in early {
        let _ = ends.responses.try_send(m);
    }
    let task = tokio::spawn(run(dtls, ends));
    Ok(parts.into_link(task))
}

/// One association: the endpoint and its socket.
struct Dtls {
    endpoint: Endpoint,
    socket: UdpSocket,
    server: SocketAddr,
    buf: Vec<u8>,
}

impl Dtls {
    /// Sends every datagram the endpoint queued.
    async fn transmit(&mut self) -> std::io::Result<()> {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.socket.send(&t.message).await?;
        }
        Ok(())
    }

    fn next_wake(&self) -> tokio::time::Instant {
        let now = Instant::now();
        let at = self
            .endpoint
            .poll_timeout(&self.server)
            .unwrap_or(now + IDLE_WAKE);
        tokio::time::Instant::now() + at.saturating_duration_since(now)
    }

    /// Seals one message for the server.
    async fn send(&mut self, message: &[u8]) -> Result<(), String> {
        self.endpoint
            .write(Instant::now(), self.server, message)
            .map_err(|e| e.to_string())?;
        self.transmit().await.map_err(|e| e.to_string())
    }

    /// Opens one datagram; STUN messages go to `responses`. False when the association ended.
    async fn receive(&mut self, n: usize, responses: &mpsc::Sender<Vec<u8>>) -> bool {
        let events = self.endpoint.read(
            Instant::now(),
            self.server,
            None,
            BytesMut::from(&self.buf[..n]),
        );
        let _ = self.transmit().await;
        match events {
            Ok(events) => {
                for e in events {
                    match e {
                        EndpointEvent::ApplicationData(d) => {
                            let _ = responses.try_send(d.to_vec());
                        }
                        EndpointEvent::PeerClosed => return false,
                        _ => {}
                    }
                }
                true
            }
            // A record that does not open (a stray or replayed datagram) is dropped, as the
            // server would.
            Err(_) => true,
        }
    }

    /// Sends close_notify.
    async fn close(&mut self) {
        self.endpoint.stop(Instant::now(), self.server);
        let _ = self.transmit().await;
    }
}

async fn run(mut dtls: Dtls, ends: Ends) {
    let Ends {
        mut outbound,
        responses,
        mut close,
    } = ends;
    loop {
        let wake = dtls.next_wake();
        tokio::select! {
            how = &mut close => {
                if how.unwrap_or(Close::Graceful) == Close::Graceful {
                    dtls.close().await;
                }
                return;
            }
            msg = outbound.recv() => match msg {
                Some(m) => {
                    if dtls.send(&m).await.is_err() {
                        return;
                    }
                }
                None => {
                    dtls.close().await;
                    return;
                }
            },
            r = dtls.socket.recv(&mut dtls.buf) => {
                // ICMP port unreachable surfaces as an error on a connected socket: the server
                // is gone.
                let Ok(n) = r else { return };
                if !dtls.receive(n, &responses).await {
                    return;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let _ = dtls.endpoint.handle_timeout(dtls.server, Instant::now());
                let _ = dtls.transmit().await;
            }
        }
    }
}
