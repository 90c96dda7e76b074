//! Batched UDP receive: one `recvmmsg(2)` reads every datagram a socket has queued, up to
//! [`BATCH`], into one buffer set that a worker shares among all its sockets (no buffer per
//! socket, so an idle relay socket costs no receive buffer). Through nix's `recvmmsg`; no
//! control messages are asked for, so the kernel adds nothing per datagram.
//!
//! Use it from a tokio task with `UdpSocket::try_io(Interest::READABLE, ...)`, so that a read
//! that finds the socket empty (`WouldBlock`) clears tokio's readiness.

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Most datagrams one read returns.
pub const BATCH: usize = 32;
/// Bytes per datagram slot: the largest UDP payload fits, so nothing is truncated. The slots
/// are allocated zeroed, so only the pages datagrams were written to are resident.
pub const SLOT: usize = 65_536;

/// A set of [`BATCH`] receive slots and what the last [`recv`](RecvBatch::recv) put there.
pub struct RecvBatch {
    storage: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length and source of each datagram of the last read.
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBatch {{ datagrams: {} }}", self.got.len())
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

impl RecvBatch {
    /// An empty set of [`BATCH`] slots of [`SLOT`] bytes.
    pub fn new() -> Self {
        Self {
            storage: vec![0u8; BATCH * SLOT],
            headers: MultiHeaders::preallocate(BATCH, None),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what `sock` has queued, up to [`BATCH`] datagrams, without waiting: the number
    /// read, or `WouldBlock` when there was none. The datagrams replace those of the last read.
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.got.clear();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] = {
            let mut chunks = self.storage.chunks_mut(SLOT);
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())])
        };
        let results = recvmmsg(
            sock.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        for r in results {
            let from = r.address.as_ref().and_then(socket_addr);
            self.got.push((r.bytes.min(SLOT), from));
        }
        Ok(self.got.len())
    }

    /// The datagrams of the last read with their source, in arrival order (a datagram whose
    /// source the kernel did not report is skipped).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.got
            .iter()
            .zip(self.storage.chunks(SLOT))
            .filter_map(|(&(len, from), slot)| Some((from?, &slot[..len])))
    }

    /// The number of datagrams of the last read.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    /// True when the last read returned nothing.
    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn reads_every_queued_datagram_with_its_source_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        // Nothing queued: WouldBlock.
        assert_eq!(
            batch.recv(&rx).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u16 {
            let from = if i % 2 == 0 { &a } else { &b };
            let len = usize::from(i) * 37 + 1;
            from.send_to(&vec![i as u8; len], rx.local_addr().unwrap())
                .unwrap();
        }
        let big = vec![0xee; 60_000];
        a.send_to(&big, rx.local_addr().unwrap()).unwrap();
        // The first read takes BATCH of them, the second the rest and the big one, whole.
        let mut seen = Vec::new();
        for want in [BATCH, 41 - BATCH] {
            assert_eq!(batch.recv(&rx).unwrap(), want);
            assert_eq!(batch.len(), want);
            for (from, data) in batch.datagrams() {
                seen.push((from, data.to_vec()));
            }
        }
        assert_eq!(seen.len(), 41);
        for (i, (from, data)) in seen.iter().take(40).enumerate() {
            let sender = if i % 2 == 0 { &a } else { &b };
            assert_eq!(*from, sender.local_addr().unwrap());
            assert_eq!(data.len(), i * 37 + 1);
            assert!(data.iter().all(|&x| x == i as u8));
        }
        assert_eq!(seen[40].1, big);
        assert!(batch.recv(&rx).is_err());
        assert!(batch.is_empty());
    }

    #[test]
    fn reads_ipv6_sources() {
        let rx = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        tx.send_to(b"v6", rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new();
        let mut n = 0;
        for _ in 0..100 {
            if let Ok(k) = batch.recv(&rx) {
                n = k;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(n, 1);
        let (from, data) = batch.datagrams().next().unwrap();
        assert_eq!((from, data), (tx.local_addr().unwrap(), &b"v6"[..]));
    }
}
