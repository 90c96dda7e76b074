//! Relay socket binding for the core ([`RelayAllocator`]): random ports from the configured
//! range, EVEN-PORT, and RESERVATION-TOKEN reservations shared by all workers. A reserved
//! socket is closed when the core cancels it (its 30 s timer, RFC 8656 §7.2) and, as a
//! backstop, by a purge of expired reservations on every allocation.
//!
//! In the multiplexed relay mode (`--relay-multiplex N`), each worker binds N shared UDP
//! sockets per relay IP at start and grants them to every allocation they can serve (plain
//! UDP, or EVEN-PORT without R: their ports are even); the core tells the allocations apart by
//! peer endpoint and never releases them. What a shared socket cannot honour (EVEN-PORT with
//! R, RESERVATION-TOKEN, DONT-FRAGMENT, TCP) gets a socket of its own as usual.
//!
//! A TCP allocation (RFC 6062) gets a listening TCP socket, plus a UDP socket on the same port
//! that is never read: it keeps the port from every other relay, UDP or TCP (the TCP listener
//! has SO_REUSEPORT so connections to peers can leave from its address, which would let a
//! second listener share the port).

use super::sockets::{relay_tcp_listener, relay_udp};
use rand::Rng;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turn_proto::core::{
    AddressFamily, RelayAllocator, RelayError, RelayGrant, RelayRequest, RelayTransport,
};

/// How long a port reserved by EVEN-PORT(R) stays reserved (RFC 8656 §7.2 suggests ~30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Sockets reserved under RESERVATION-TOKENs, shared by all workers.
pub type Reservations = Arc<Mutex<HashMap<[u8; 8], (UdpSocket, Instant)>>>;

/// Binds relay sockets for one worker. New sockets and releases are queued for the worker to
/// start and stop their tasks after the core call returns.
#[derive(Debug)]
pub struct RelaySockets {
    relay_ips: Vec<IpAddr>,
    min_port: u16,
    max_port: u16,
    reservations: Reservations,
    /// Sockets bound during the last core call, to be served.
    pub pending_new: Vec<UdpSocket>,
    /// TCP relay listeners bound during the last core call, to be served, each with the UDP
    /// socket that holds its port.
    pub pending_new_tcp: Vec<(TcpListener, UdpSocket)>,
    /// Relay addresses released during the last core call, to be closed.
    pub pending_release: Vec<SocketAddr>,
    /// This worker's shared sockets (multiplexed mode; empty otherwise), by relay IP.
    shared: Vec<(IpAddr, Vec<SocketAddr>)>,
}

impl RelaySockets {
    /// A binder over `relay_ips` and ports `min_port..=max_port`.
    pub fn new(
        relay_ips: Vec<IpAddr>,
        min_port: u16,
        max_port: u16,
        reservations: Reservations,
    ) -> Self {
        Self {
            relay_ips,
            min_port,
            max_port,
            reservations,
            pending_new: Vec::new(),
            pending_new_tcp: Vec::new(),
            pending_release: Vec::new(),
            shared: Vec::new(),
        }
    }

    /// Turns on the multiplexed relay mode for this worker: binds `n` shared sockets on each
    /// relay IP from port `first` (every other port: they stay even when `first` is) and queues
    /// them in [`pending_new`](Self::pending_new) to be served. Fails when one cannot be bound.
    pub fn multiplex(&mut self, first: u32, n: u16) -> std::io::Result<()> {
        for &ip in &self.relay_ips {
            let mut addrs = Vec::with_capacity(n as usize);
            for k in 0..n as u32 {
                let port = u16::try_from(first + 2 * k).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "shared port > 65535")
                })?;
                let sock = relay_udp(SocketAddr::new(ip, port), false)?;
                addrs.push(sock.local_addr()?);
                self.pending_new.push(sock);
            }
            self.shared.push((ip, addrs));
        }
        Ok(())
    }

    /// A shared socket for `req` on `ip`, when the multiplexed mode is on and one can honour
    /// it.
    fn shared_for(&self, ip: IpAddr, req: &RelayRequest) -> Option<SocketAddr> {
        if req.transport != RelayTransport::Udp || req.reserve_next || req.dont_fragment {
            return None;
        }
        let (_, addrs) = self.shared.iter().find(|(i, _)| *i == ip)?;
        if addrs.is_empty() {
            return None;
        }
        Some(addrs[rand::rng().random_range(0..addrs.len())])
    }

    fn bind_in_range(
        &self,
        ip: IpAddr,
        req: &RelayRequest,
    ) -> Option<(UdpSocket, Option<UdpSocket>)> {
        let span = (self.max_port - self.min_port) as u32 + 1;
        let start = rand::rng().random_range(0..span);
        let attempts = span.min(4096);
        for i in 0..attempts {
            let port = self.min_port as u32 + (start + i) % span;
            if req.even_port && port % 2 == 1 {
                continue;
            }
            let Ok(sock) = relay_udp(SocketAddr::new(ip, port as u16), req.dont_fragment) else {
                continue;
            };
            if !req.reserve_next {
                return Some((sock, None));
            }
            if port + 1 > self.max_port as u32 {
                continue;
            }
            if let Ok(next) = relay_udp(SocketAddr::new(ip, port as u16 + 1), false) {
                return Some((sock, Some(next)));
            }
        }
        None
    }
}

impl RelaySockets {
    /// A TCP relay on a free port of `ip`: the port's UDP lock, then the listener.
    fn bind_tcp_in_range(&self, ip: IpAddr) -> Option<(TcpListener, UdpSocket)> {
        let span = (self.max_port - self.min_port) as u32 + 1;
        let start = rand::rng().random_range(0..span);
        for i in 0..span.min(4096) {
            let addr = SocketAddr::new(ip, (self.min_port as u32 + (start + i) % span) as u16);
            let Ok(lock) = relay_udp(addr, false) else {
                continue;
            };
            if let Ok(l) = relay_tcp_listener(addr) {
                return Some((l, lock));
            }
        }
        None
    }

    /// Closes every reserved socket whose reservation has expired.
    fn purge_expired(&self, now: Instant) {
        if let Ok(mut r) = self.reservations.lock() {
            r.retain(|_, (_, t)| *t > now);
        }
    }
}

impl RelayAllocator for RelaySockets {
    fn allocate(&mut self, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        self.purge_expired(Instant::now());
        if let Some(token) = req.reservation_token {
            let mut r = self
                .reservations
                .lock()
                .map_err(|_| RelayError::Exhausted)?;
            let (sock, _) = r.remove(&token).ok_or(RelayError::BadToken)?;
            let local = sock.local_addr().map_err(|_| RelayError::Exhausted)?;
            self.pending_new.push(sock);
            return Ok(RelayGrant {
                local,
                reservation_token: None,
                multiplexed: false,
            });
        }
        let ips: Vec<IpAddr> = self
            .relay_ips
            .iter()
            .copied()
            .filter(|ip| AddressFamily::of(*ip) == req.family)
            .collect();
        if ips.is_empty() {
            return Err(RelayError::FamilyUnsupported);
        }
        let ip = ips[rand::rng().random_range(0..ips.len())];
        if let Some(local) = self.shared_for(ip, req) {
            return Ok(RelayGrant {
                local,
                reservation_token: None,
                multiplexed: true,
            });
        }
        if req.transport == RelayTransport::Tcp {
            let (listener, lock) = self.bind_tcp_in_range(ip).ok_or(RelayError::Exhausted)?;
            let local = listener.local_addr().map_err(|_| RelayError::Exhausted)?;
            self.pending_new_tcp.push((listener, lock));
            return Ok(RelayGrant {
                local,
                reservation_token: None,
                multiplexed: false,
            });
        }
        let (sock, next) = self.bind_in_range(ip, req).ok_or(RelayError::Exhausted)?;
        let local = sock.local_addr().map_err(|_| RelayError::Exhausted)?;
        let mut reservation_token = None;
        if let Some(next) = next {
            let token: [u8; 8] = rand::rng().random();
            if let Ok(mut r) = self.reservations.lock() {
                r.insert(token, (next, Instant::now() + RESERVATION_LIFETIME));
                reservation_token = Some(token);
            }
        }
        self.pending_new.push(sock);
        Ok(RelayGrant {
            local,
            reservation_token,
            multiplexed: false,
        })
    }

    fn release(&mut self, local: SocketAddr) {
        // The core never releases a shared socket; should it, the socket stays.
        if !self.shared.iter().any(|(_, a)| a.contains(&local)) {
            self.pending_release.push(local);
        }
    }

    fn cancel_reservation(&mut self, token: [u8; 8]) {
        if let Ok(mut r) = self.reservations.lock() {
            r.remove(&token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_even_ports_reserves_next_and_hands_over_by_token() {
        let res: Reservations = Arc::default();
        let mut r = RelaySockets::new(
            vec!["127.0.0.1".parse().unwrap()],
            51000,
            51999,
            res.clone(),
        );
        let g = r
            .allocate(&RelayRequest {
                transport: RelayTransport::Udp,
                family: AddressFamily::V4,
                even_port: true,
                reserve_next: true,
                reservation_token: None,
                dont_fragment: true,
            })
            .unwrap();
        assert_eq!(g.local.port() % 2, 0);
        let token = g.reservation_token.unwrap();
        let mut other = RelaySockets::new(vec!["127.0.0.1".parse().unwrap()], 51000, 51999, res);
        let g2 = other
            .allocate(&RelayRequest {
                transport: RelayTransport::Udp,
                family: AddressFamily::V4,
                even_port: false,
                reserve_next: false,
                reservation_token: Some(token),
                dont_fragment: false,
            })
            .unwrap();
        assert_eq!(g2.local.port(), g.local.port() + 1);
        assert_eq!(
            other.allocate(&RelayRequest {
                transport: RelayTransport::Udp,
                family: AddressFamily::V4,
                even_port: false,
                reserve_next: false,
                reservation_token: Some(token),
                dont_fragment: false,
            }),
            Err(RelayError::BadToken)
        );
        assert_eq!(
            r.allocate(&RelayRequest {
                transport: RelayTransport::Udp,
                family: AddressFamily::V6,
                even_port: false,
                reserve_next: false,
                reservation_token: None,
                dont_fragment: false,
            }),
            Err(RelayError::FamilyUnsupported)
        );
    }

    #[test]
    fn reservations_are_closed_on_cancel_and_purged_when_expired() {
        let res: Reservations = Arc::default();
        let mut r = RelaySockets::new(
            vec!["127.0.0.1".parse().unwrap()],
            53000,
            53999,
            res.clone(),
        );
        let even_r = RelayRequest {
            transport: RelayTransport::Udp,
            family: AddressFamily::V4,
            even_port: true,
            reserve_next: true,
            reservation_token: None,
            dont_fragment: false,
        };
        let g = r.allocate(&even_r).unwrap();
        let token = g.reservation_token.unwrap();
        assert_eq!(res.lock().unwrap().len(), 1);
        r.cancel_reservation(token);
        assert_eq!(res.lock().unwrap().len(), 0);
        // The reserved port is free again: binding it works.
        let next = SocketAddr::new(g.local.ip(), g.local.port() + 1);
        assert!(relay_udp(next, false).is_ok());
        // An expired reservation is purged by the next allocation, whatever it asks for.
        let g2 = r.allocate(&even_r).unwrap();
        let t2 = g2.reservation_token.unwrap();
        res.lock().unwrap().get_mut(&t2).unwrap().1 = Instant::now() - Duration::from_secs(1);
        let plain = RelayRequest {
            reserve_next: false,
            even_port: false,
            ..even_r
        };
        let _ = r.allocate(&plain).unwrap();
        assert_eq!(res.lock().unwrap().len(), 0);
    }

    #[test]
    fn multiplexed_mode_shares_even_ports_and_binds_what_they_cannot_honour() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut r = RelaySockets::new(vec![ip], 55000, 55099, Arc::default());
        r.multiplex(55010, 3).unwrap();
        let shared: Vec<SocketAddr> = [55010, 55012, 55014]
            .map(|p| SocketAddr::new(ip, p))
            .to_vec();
        assert_eq!(r.pending_new.len(), 3);
        // A second worker's sockets cannot take the same ports.
        let mut clash = RelaySockets::new(vec![ip], 55000, 55099, Arc::default());
        assert!(clash.multiplex(55014, 1).is_err());
        let plain = RelayRequest {
            transport: RelayTransport::Udp,
            family: AddressFamily::V4,
            even_port: true,
            reserve_next: false,
            reservation_token: None,
            dont_fragment: false,
        };
        for _ in 0..20 {
            let g = r.allocate(&plain).unwrap();
            assert!(g.multiplexed && shared.contains(&g.local), "{g:?}");
            r.release(g.local);
        }
        assert!(
            r.pending_release.is_empty(),
            "shared sockets are never closed"
        );
        assert_eq!(r.pending_new.len(), 3, "no new socket for shared grants");
        for own in [
            RelayRequest {
                reserve_next: true,
                ..plain.clone()
            },
            RelayRequest {
                dont_fragment: true,
                ..plain.clone()
            },
            RelayRequest {
                transport: RelayTransport::Tcp,
                even_port: false,
                ..plain.clone()
            },
        ] {
            let g = r.allocate(&own).unwrap();
            assert!(!g.multiplexed && !shared.contains(&g.local), "{own:?}");
        }
    }

    #[test]
    fn small_range_is_exhausted_cleanly() {
        let mut r = RelaySockets::new(
            vec!["127.0.0.1".parse().unwrap()],
            52010,
            52011,
            Arc::default(),
        );
        let req = RelayRequest {
            transport: RelayTransport::Udp,
            family: AddressFamily::V4,
            even_port: false,
            reserve_next: false,
            reservation_token: None,
            dont_fragment: false,
        };
        let a = r.allocate(&req).unwrap();
        let b = r.allocate(&req).unwrap();
        assert_ne!(a.local, b.local);
        assert_eq!(r.allocate(&req), Err(RelayError::Exhausted));
        assert_eq!(r.pending_new.len(), 2);
    }

    #[test]
    fn a_tcp_relay_listens_and_holds_its_port_against_udp_relays() {
        let mut r = RelaySockets::new(
            vec!["127.0.0.1".parse().unwrap()],
            54010,
            54011,
            Arc::default(),
        );
        let tcp = RelayRequest {
            transport: RelayTransport::Tcp,
            family: AddressFamily::V4,
            even_port: false,
            reserve_next: false,
            reservation_token: None,
            dont_fragment: false,
        };
        let udp = RelayRequest {
            transport: RelayTransport::Udp,
            ..tcp.clone()
        };
        let t = r.allocate(&tcp).unwrap();
        assert_eq!(r.pending_new_tcp.len(), 1);
        // The only other port goes to the next relay, whatever its transport; then none.
        let u = r.allocate(&udp).unwrap();
        assert_ne!(t.local.port(), u.local.port());
        assert_eq!(r.allocate(&tcp), Err(RelayError::Exhausted));
        assert_eq!(r.allocate(&udp), Err(RelayError::Exhausted));
        // The listener accepts.
        let _c = std::net::TcpStream::connect(t.local).unwrap();
    }
}
