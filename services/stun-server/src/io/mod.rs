//! The tokio layer: UDP and TCP listeners that feed [`stun_proto::binding`] and send what it
//! returns. All the protocol decisions are in the sans-IO core; this module only reads sockets,
//! picks the socket a reply leaves from, and writes.
//!
//! - UDP and TCP on every `listen` address. With RFC 5780 ([`Rfc5780Config`]) the first listen
//!   address of the alternate IP's family is the primary one and gets three more UDP sockets:
//!   primary IP/alternate port, alternate IP/primary port, alternate IP/alternate port. A
//!   CHANGE-REQUEST reply is sent from the matching one of the four.
//! - TCP: RFC 8489 §6.2.2 framing (messages back to back, length from the header), a bounded
//!   per-connection buffer, an idle timeout and a connection limit. Bytes that are not STUN
//!   close the connection and are counted.
//! - Everything is bound before [`StunServer::start`] returns, so a caller can start the metrics
//!   listener afterwards and treat `/healthz` answering as "ready".

use crate::metrics::{
    StunMetrics, DROP_SEND_FAILED, DROP_TCP_CONNECTION_LIMIT, DROP_TCP_FRAME_TOO_LARGE,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use stun_proto::binding::{
    handle_datagram, BindingConfig, BindingDrop, BindingOutcome, RequestContext, ResponseSocket,
    Rfc5780Addrs,
};
use stun_proto::msg::{stream_frame_len, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

/// Largest STUN message accepted on a TCP connection, in bytes; a frame announcing more closes
/// the connection. A Binding request is well under 1 KiB.
pub const MAX_TCP_FRAME_BYTES: usize = 4096;
/// Largest UDP datagram read, in bytes.
const UDP_RECV_BUFFER_BYTES: usize = 65_536;
/// Backlog of the TCP listen sockets.
const TCP_BACKLOG: i32 = 1024;

/// What to listen on and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// UDP and TCP listen addresses. Port 0 picks a free port (the same one for UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// RFC 5780 NAT behaviour discovery; `None` for a plain Binding server.
    pub rfc5780: Option<Rfc5780Config>,
    /// SOFTWARE attribute value; `None` leaves it out.
    pub software: Option<String>,
    /// Most TCP connections open at once; more are accepted and closed at once (and counted).
    pub tcp_max_connections: usize,
    /// A TCP connection that sends nothing (or cannot take a reply) for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3478))],
            rfc5780: None,
            software: Some(turnkey_runtime::SOFTWARE.to_string()),
            tcp_max_connections: 1024,
            tcp_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The alternate address of an RFC 5780 server (RFC 5780 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc5780Config {
    /// The alternate IP address; must differ from the primary and have its family.
    pub alt_ip: IpAddr,
    /// The alternate port; `None` means the primary port + 1 (or a free port when the primary
    /// port is 0).
    pub alt_port: Option<u16>,
}

impl ServerConfig {
    /// The listen address that is the RFC 5780 primary address: the first one of the alternate
    /// IP's family with a specific IP. `Ok(None)` without RFC 5780.
    pub fn rfc5780_primary(&self) -> Result<Option<SocketAddr>, ServerError> {
        let Some(r) = self.rfc5780 else {
            return Ok(None);
        };
        let primary = self
            .listen
            .iter()
            .find(|a| a.is_ipv4() == r.alt_ip.is_ipv4() && !a.ip().is_unspecified())
            .copied()
            .ok_or(ServerError::NoRfc5780Primary { alt_ip: r.alt_ip })?;
        if primary.ip() == r.alt_ip || r.alt_ip.is_unspecified() {
            return Err(ServerError::BadAltIp { alt_ip: r.alt_ip });
        }
        if r.alt_port.is_some_and(|p| p == primary.port() || p == 0) {
            return Err(ServerError::BadAltPort {
                alt_port: r.alt_port.unwrap_or(0),
            });
        }
        Ok(Some(primary))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No listen address.
    #[error("no listen address")]
    NoListen,
    /// RFC 5780 needs a specific primary IP of the alternate IP's family among the listen
    /// addresses (a wildcard address cannot say which address a request arrived on).
    #[error("--alt-ip {alt_ip} needs a --listen address of the same family with a specific IP")]
    NoRfc5780Primary {
        /// The configured alternate IP.
        alt_ip: IpAddr,
    },
    /// The alternate IP is the primary IP or unspecified.
    #[error("--alt-ip {alt_ip} must be a specific address different from the primary listen IP")]
    BadAltIp {
        /// The configured alternate IP.
        alt_ip: IpAddr,
    },
    /// The alternate port is the primary port or 0.
    #[error("--alt-port {alt_port} must differ from the listen port and not be 0")]
    BadAltPort {
        /// The configured alternate port.
        alt_port: u16,
    },
    /// A socket could not be bound.
    #[error("cannot bind {transport} {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// A running server: its bound addresses and its tasks.
#[derive(Debug)]
pub struct StunServer {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    rfc5780: Option<Rfc5780Addrs>,
    tasks: JoinSet<()>,
}

/// The sockets of one RFC 5780 group, by local address, to send CHANGE-REQUEST replies from.
type SocketGroup = Arc<HashMap<SocketAddr, Arc<UdpSocket>>>;

impl StunServer {
    /// Binds every listener, spawns their tasks and returns; the server runs until `shutdown`
    /// is cancelled. Must be called inside a tokio runtime.
    pub async fn start(
        config: ServerConfig,
        metrics: StunMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        if config.listen.is_empty() {
            return Err(ServerError::NoListen);
        }
        let primary = config.rfc5780_primary()?;

        // Bind everything first, so nothing is running if anything fails.
        let mut udp: Vec<(Arc<UdpSocket>, SocketAddr)> = Vec::new();
        let mut rfc5780 = None;
        let mut group = HashMap::new();
        let mut listen_ports = Vec::new();
        for &addr in &config.listen {
            let (sock, local) = bind_udp(addr)?;
            listen_ports.push(local.port());
            if Some(addr) == primary {
                let r = config.rfc5780.expect("primary implies rfc5780");
                let alt_port = match r.alt_port {
                    Some(p) => p,
                    None if addr.port() == 0 => 0,
                    None => local.port().checked_add(1).ok_or(ServerError::BadAltPort {
                        alt_port: local.port(),
                    })?,
                };
                let (sock_pa, local_pa) = bind_udp(SocketAddr::new(local.ip(), alt_port))?;
                let addrs = Rfc5780Addrs {
                    primary_ip: local.ip(),
                    alt_ip: r.alt_ip,
                    primary_port: local.port(),
                    alt_port: local_pa.port(),
                };
                let (sock_ap, local_ap) = bind_udp(addrs.sockets()[2])?;
                let (sock_aa, local_aa) = bind_udp(addrs.sockets()[3])?;
                for (s, l) in [
                    (sock, local),
                    (sock_pa, local_pa),
                    (sock_ap, local_ap),
                    (sock_aa, local_aa),
                ] {
                    let s = Arc::new(s);
                    group.insert(l, s.clone());
                    udp.push((s, l));
                }
                rfc5780 = Some(addrs);
            } else {
                udp.push((Arc::new(sock), local));
            }
        }
        let mut tcp = Vec::new();
        for (&addr, &port) in config.listen.iter().zip(&listen_ports) {
            // Same port as the UDP socket, so port 0 gives one port number for both.
            tcp.push(bind_tcp(SocketAddr::new(addr.ip(), port))?);
        }

        let binding = Arc::new(BindingConfig {
            software: config.software.clone(),
            rfc5780,
        });
        let group: Option<SocketGroup> = rfc5780.map(|_| Arc::new(group));
        let mut tasks = JoinSet::new();
        let udp_addrs = udp.iter().map(|(_, l)| *l).collect();
        for (sock, local) in udp {
            let group = group.clone().filter(|g| g.contains_key(&local));
            tasks.spawn(serve_udp(
                sock,
                local,
                group,
                binding.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        let limit = Arc::new(Semaphore::new(config.tcp_max_connections));
        let mut tcp_addrs = Vec::new();
        for (listener, local) in tcp {
            tcp_addrs.push(local);
            tasks.spawn(serve_tcp(
                listener,
                local,
                binding.clone(),
                metrics.clone(),
                limit.clone(),
                config.tcp_idle_timeout,
                shutdown.clone(),
            ));
        }
        Ok(Self {
            udp: udp_addrs,
            tcp: tcp_addrs,
            rfc5780,
            tasks,
        })
    }

    /// Every bound UDP address (with RFC 5780, the four addresses of the group included).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// Every bound TCP address.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// The RFC 5780 addresses in use, with the ports actually bound.
    pub fn rfc5780(&self) -> Option<Rfc5780Addrs> {
        self.rfc5780
    }

    /// Waits for every task to finish (they finish once the shutdown token is cancelled and
    /// open TCP connections have closed).
    pub async fn join(mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    warn!(error = %e, "a STUN server task panicked");
                }
            }
        }
    }
}

/// A UDP socket on `addr`. No SO_REUSEADDR: on Linux it would let a second server silently share
/// the port. IPv6 sockets are IPv6-only so `[::]` and `0.0.0.0` can both be listened on.
fn bind_udp(addr: SocketAddr) -> Result<(UdpSocket, SocketAddr), ServerError> {
    let err = |source| ServerError::Bind {
        transport: "udp",
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    let socket = UdpSocket::from_std(socket.into()).map_err(err)?;
    let local = socket.local_addr().map_err(err)?;
    Ok((socket, local))
}

/// A TCP listener on `addr`, with SO_REUSEADDR so a restart does not wait for TIME_WAIT.
fn bind_tcp(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let err = |source| ServerError::Bind {
        transport: "tcp",
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(TCP_BACKLOG).map_err(err)?;
    let listener = TcpListener::from_std(socket.into()).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Reads datagrams from one UDP socket until shutdown, answering each from the socket the core
/// selects.
async fn serve_udp(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    group: Option<SocketGroup>,
    cfg: Arc<BindingConfig>,
    metrics: StunMetrics,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; UDP_RECV_BUFFER_BYTES];
    loop {
        let (n, source) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // E.g. ICMP errors surfacing on Windows; never fatal.
                    debug!(%local, error = %e, "udp recv error");
                    continue;
                }
            },
        };
        let ctx = RequestContext {
            source,
            local,
            transport: Transport::Udp,
        };
        match handle_datagram(&buf[..n], &ctx, &cfg) {
            BindingOutcome::Reply(reply) => {
                metrics.request(Transport::Udp, reply.result);
                let from = match (reply.via, &group, cfg.rfc5780) {
                    (ResponseSocket::Same, _, _) => &sock,
                    (via, Some(group), Some(r)) => r
                        .resolve(local, via)
                        .and_then(|a| group.get(&a))
                        .unwrap_or(&sock),
                    // The core only changes sockets when RFC 5780 applies to `local`.
                    _ => &sock,
                };
                trace!(%source, %local, to = %reply.to, via = ?reply.via, result = reply.result.as_str(), "binding reply");
                if let Err(e) = from.send_to(&reply.bytes, reply.to).await {
                    metrics.dropped_because(DROP_SEND_FAILED);
                    debug!(to = %reply.to, error = %e, "udp send failed");
                }
            }
            BindingOutcome::Drop(reason) => {
                metrics.dropped(reason);
                trace!(%source, %local, reason = reason.as_str(), "udp packet dropped");
            }
        }
    }
}

/// Accepts TCP connections until shutdown, then waits for open connections to close.
async fn serve_tcp(
    listener: TcpListener,
    local: SocketAddr,
    cfg: Arc<BindingConfig>,
    metrics: StunMetrics,
    limit: Arc<Semaphore>,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let cfg = cfg.clone();
                        let metrics = metrics.clone();
                        let shutdown = shutdown.clone();
                        conns.spawn(async move {
                            metrics.tcp_connection_delta(1);
                            serve_tcp_conn(stream, peer, local, &cfg, &metrics, idle, &shutdown).await;
                            metrics.tcp_connection_delta(-1);
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        metrics.dropped_because(DROP_TCP_CONNECTION_LIMIT);
                        debug!(%peer, "tcp connection limit reached: closing");
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%local, error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    while conns.join_next().await.is_some() {}
}

/// One TCP connection: frames STUN messages (RFC 8489 §6.2.2) and answers each in order.
async fn serve_tcp_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: &BindingConfig,
    metrics: &StunMetrics,
    idle: Duration,
    shutdown: &CancellationToken,
) {
    let ctx = RequestContext {
        source: peer,
        local,
        transport: Transport::Tcp,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        // Answer every complete frame in the buffer.
        while buf.len() >= 4 {
            let len = match stream_frame_len(&buf) {
                // ChannelData (0x40..) is framed too, but means nothing to a STUN server.
                Some(len) if buf[0] < 0x40 => len,
                _ => {
                    metrics.dropped(BindingDrop::NotStun);
                    debug!(%peer, "non-STUN bytes on tcp: closing");
                    return;
                }
            };
            if len > MAX_TCP_FRAME_BYTES {
                metrics.dropped_because(DROP_TCP_FRAME_TOO_LARGE);
                debug!(%peer, len, "tcp frame too large: closing");
                return;
            }
            if buf.len() < len {
                break;
            }
            let outcome = handle_datagram(&buf[..len], &ctx, cfg);
            buf.drain(..len);
            match outcome {
                BindingOutcome::Reply(reply) => {
                    metrics.request(Transport::Tcp, reply.result);
                    match tokio::time::timeout(idle, stream.write_all(&reply.bytes)).await {
                        Ok(Ok(())) => {}
                        _ => {
                            metrics.dropped_because(DROP_SEND_FAILED);
                            return;
                        }
                    }
                }
                BindingOutcome::Drop(reason) => {
                    metrics.dropped(reason);
                    // Without a magic cookie the framing cannot be trusted either.
                    if matches!(reason, BindingDrop::NotStun | BindingDrop::Rfc3489) {
                        debug!(%peer, reason = reason.as_str(), "tcp: closing");
                        return;
                    }
                }
            }
        }
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(idle, stream.read(&mut chunk)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => n,
                Err(_) => {
                    trace!(%peer, "tcp idle timeout");
                    return;
                }
            },
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use rtc_stun::attributes::{ATTR_CHANGE_REQUEST, ATTR_RESPONSE_ORIGIN, ATTR_XORMAPPED_ADDRESS};
    use rtc_stun::message::{TransactionId, BINDING_REQUEST};
    use stun_proto::binding::CHANGE_IP_FLAG;
    use stun_proto::msg::{self, MessageBuilder};

    fn metrics() -> (StunMetrics, Registry) {
        let mut registry = Registry::default();
        (StunMetrics::register(&mut registry), registry)
    }

    fn render(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
        s
    }

    fn config(listen: &str) -> ServerConfig {
        ServerConfig {
            listen: vec![listen.parse().unwrap()],
            ..ServerConfig::default()
        }
    }

    async fn udp_exchange(server: SocketAddr, req: &[u8]) -> (Vec<u8>, SocketAddr, SocketAddr) {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(req, server).await.unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a reply")
            .unwrap();
        (buf[..n].to_vec(), from, client.local_addr().unwrap())
    }

    #[tokio::test]
    async fn udp_and_tcp_binding() {
        let (m, registry) = metrics();
        let token = CancellationToken::new();
        let server = StunServer::start(config("127.0.0.1:0"), m, token.clone())
            .await
            .unwrap();
        let udp = server.udp_addrs()[0];
        let tcp = server.tcp_addrs()[0];
        assert_eq!(udp.port(), tcp.port());

        let req = MessageBuilder::new(BINDING_REQUEST, TransactionId::new()).finish();
        let (resp, from, me) = udp_exchange(udp, &req).await;
        assert_eq!(from, udp);
        let resp = msg::decode(&resp).unwrap();
        assert_eq!(msg::xor_address(&resp, ATTR_XORMAPPED_ADDRESS), Some(me));

        // TCP: two requests in one write, the second split across writes.
        let mut s = TcpStream::connect(tcp).await.unwrap();
        let me = s.local_addr().unwrap();
        let mut two = req.clone();
        two.extend_from_slice(&req[..10]);
        s.write_all(&two).await.unwrap();
        s.write_all(&req[10..]).await.unwrap();
        let mut got = vec![0u8; 0];
        let mut chunk = [0u8; 512];
        while got.len() < 2 * 44 {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        let first_len = stream_frame_len(&got).unwrap();
        let first = msg::decode(&got[..first_len]).unwrap();
        assert_eq!(msg::xor_address(&first, ATTR_XORMAPPED_ADDRESS), Some(me));
        msg::decode(&got[first_len..]).unwrap();

        // Non-STUN bytes close the connection.
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);

        let text = render(&registry);
        assert!(
            text.contains("stun_binding_requests_total{transport=\"udp\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("stun_binding_requests_total{transport=\"tcp\",result=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("stun_dropped_packets_total{reason=\"not_stun\"} 1"),
            "{text}"
        );

        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), server.join())
            .await
            .expect("drains");
    }

    #[tokio::test]
    async fn rfc5780_change_request_uses_the_other_socket() {
        let (m, _registry) = metrics();
        let token = CancellationToken::new();
        let mut cfg = config("127.0.0.1:0");
        cfg.rfc5780 = Some(Rfc5780Config {
            alt_ip: "127.0.0.2".parse().unwrap(),
            alt_port: None,
        });
        let server = match StunServer::start(cfg, m, token.clone()).await {
            Ok(s) => s,
            // Some sandboxes only have 127.0.0.1; nothing to test there.
            Err(ServerError::Bind { addr, .. })
                if addr.ip() != "127.0.0.1".parse::<IpAddr>().unwrap() =>
            {
                return
            }
            Err(e) => panic!("{e}"),
        };
        let r = server.rfc5780().unwrap();
        assert_eq!(server.udp_addrs().len(), 4);
        let [pp, _, ap, aa] = r.sockets();
        for (flags, want) in [(0, pp), (CHANGE_IP_FLAG, ap), (0x06, aa)] {
            let mut b = MessageBuilder::new(BINDING_REQUEST, TransactionId::new());
            b.raw(ATTR_CHANGE_REQUEST, &[0, 0, 0, flags]);
            let (resp, from, _) = udp_exchange(pp, &b.finish()).await;
            assert_eq!(from, want);
            let resp = msg::decode(&resp).unwrap();
            let origin = resp.get(ATTR_RESPONSE_ORIGIN).unwrap();
            assert_eq!(origin[2..4], want.port().to_be_bytes());
        }
        token.cancel();
        server.join().await;
    }

    #[test]
    fn rfc5780_primary_selection() {
        let mut cfg = ServerConfig {
            listen: vec![
                "0.0.0.0:3478".parse().unwrap(),
                "[::1]:3478".parse().unwrap(),
            ],
            rfc5780: Some(Rfc5780Config {
                alt_ip: "192.0.2.2".parse().unwrap(),
                alt_port: None,
            }),
            ..ServerConfig::default()
        };
        assert!(matches!(
            cfg.rfc5780_primary(),
            Err(ServerError::NoRfc5780Primary { .. })
        ));
        cfg.listen.push("192.0.2.1:3478".parse().unwrap());
        assert_eq!(cfg.rfc5780_primary().unwrap(), Some(cfg.listen[2]));
        cfg.rfc5780 = Some(Rfc5780Config {
            alt_ip: "192.0.2.1".parse().unwrap(),
            alt_port: None,
        });
        assert!(matches!(
            cfg.rfc5780_primary(),
            Err(ServerError::BadAltIp { .. })
        ));
        cfg.rfc5780 = Some(Rfc5780Config {
            alt_ip: "192.0.2.2".parse().unwrap(),
            alt_port: Some(3478),
        });
        assert!(matches!(
            cfg.rfc5780_primary(),
            Err(ServerError::BadAltPort { .. })
        ));
    }
}
