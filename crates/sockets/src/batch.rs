//! Batched UDP receive and send. Receive: one `recvmmsg(2)` reads every datagram a socket has queued, up to
//! [`BATCH`], into one buffer set that a worker shares among all its sockets (no buffer per
//! socket, so an idle relay socket costs no receive buffer). No control messages are asked
//! for, so the kernel adds nothing per datagram.
//!
//! Use it from a tokio task with `UdpSocket::try_io(Interest::READABLE, ...)`, so that a read
//! that finds the socket empty (`WouldBlock`) clears tokio's readiness.
//!
//! The call is made here with libc rather than through nix's `recvmmsg`: nix keeps its message
//! headers between calls without resetting each `msg_namelen`, so a set that once read an
//! IPv4 source (16 bytes) truncates the IPv6 sources of the next read (28 bytes). Every header
//! is filled afresh for each call here, on the stack.
//!
//! Send: [`SendBatch`] collects datagrams (each with its own destination) and hands up to
//! [`BATCH`] of them to the kernel in one `sendmmsg(2)`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Most datagrams one read returns.
pub const BATCH: usize = 32;
/// Bytes per datagram slot: the largest UDP payload fits, so nothing is truncated. The slots
/// are allocated zeroed, so only the pages datagrams were written to are resident.
pub const SLOT: usize = 65_536;

/// A set of [`BATCH`] receive slots and what the last [`recv`](RecvBatch::recv) put there.
pub struct RecvBatch {
    storage: Vec<u8>,
    /// The source address of each slot's datagram, as the kernel wrote it.
    names: Box<[libc::sockaddr_storage]>,
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

/// The address in `name` (of `len` bytes), when it is IPv4 or IPv6.
#[allow(unsafe_code)]
fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, `len` says the kernel
            // wrote all of it, and sockaddr_storage is large and aligned enough for any
            // sockaddr.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl RecvBatch {
    /// An empty set of [`BATCH`] slots of [`SLOT`] bytes.
    #[allow(unsafe_code)]
    pub fn new() -> Self {
        Self {
            storage: vec![0u8; BATCH * SLOT],
            // SAFETY: sockaddr_storage is a plain C struct for which all zeroes is valid.
            names: (0..BATCH)
                .map(|_| unsafe { std::mem::zeroed::<libc::sockaddr_storage>() })
                .collect(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what `sock` has queued, up to [`BATCH`] datagrams, without waiting: the number
    /// read, or `WouldBlock` when there was none. The datagrams replace those of the last read.
    #[allow(unsafe_code)]
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.got.clear();
        // SAFETY: iovec and mmsghdr are plain C structs for which all zeroes is valid (null
        // pointers, zero lengths); every field the call reads is set below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, ((iov, hdr), slot)) in iovs
            .iter_mut()
            .zip(hdrs.iter_mut())
            .zip(self.storage.chunks_mut(SLOT))
            .enumerate()
        {
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = slot.len();
            hdr.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each of the BATCH headers points at its own iovec (on this stack frame) over
        // its own SLOT bytes of `self.storage`, and at its own sockaddr_storage with the
        // length of it; all outlive the call, and nothing else uses them during it. The fd is
        // borrowed from a live socket.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (hdr, name) in hdrs.iter().zip(self.names.iter()).take(n as usize) {
            let from = socket_addr(name, hdr.msg_hdr.msg_namelen);
            self.got.push(((hdr.msg_len as usize).min(SLOT), from));
        }
        Ok(self.got.len())
    }

    /// The datagrams of the last read with their source, in arrival order (a datagram whose
    /// source is not an IP address is skipped).
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

/// Datagrams queued for one socket, each with its destination, sent by [`SendBatch::send`] in
/// `sendmmsg(2)` calls of up to [`BATCH`]. The bytes live in one growing buffer that is kept
/// between rounds, so a steady load allocates nothing.
#[derive(Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    /// Start and length in `bytes`, and destination, of each queued datagram.
    queued: Vec<(usize, usize, socket2::SockAddr)>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SendBatch {{ datagrams: {} }}", self.queued.len())
    }
}

/// What one [`SendBatch::send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub datagrams: usize,
    /// Datagrams dropped: the socket buffer was full, or the kernel refused that one datagram
    /// (an ICMP error left on the socket, an unreachable destination).
    pub dropped: usize,
    /// `sendmmsg` calls made.
    pub calls: usize,
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one datagram to `to`, made of `parts` back to back (a header and a payload, say).
    pub fn push(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        let start = self.bytes.len();
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.queued
            .push((start, self.bytes.len() - start, socket2::SockAddr::from(to)));
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued on `sock` (non-blocking) and empties the batch. A datagram the
    /// kernel refuses is dropped and counted, and sending goes on with the next one; when the
    /// socket buffer is full (`WouldBlock`) the rest is dropped. Other errors than those two
    /// kinds are counted the same way: a relay drops rather than queues.
    #[allow(unsafe_code)]
    pub fn send(&mut self, sock: &impl AsRawFd) -> Sent {
        let mut out = Sent::default();
        let mut next = 0;
        while next < self.queued.len() {
            let chunk = &self.queued[next..(next + BATCH).min(self.queued.len())];
            // SAFETY: iovec and mmsghdr are plain C structs for which all zeroes is valid; every
            // field the call reads is set below.
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for ((iov, hdr), (start, len, to)) in iovs.iter_mut().zip(hdrs.iter_mut()).zip(chunk) {
                // The kernel only reads through this pointer (sendmmsg), never writes.
                iov.iov_base = self.bytes[*start..*start + *len].as_ptr() as *mut libc::c_void;
                iov.iov_len = *len;
                hdr.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
                hdr.msg_hdr.msg_namelen = to.len();
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first chunk.len() headers point at their own iovec (this stack frame)
            // over a range of `self.bytes`, and at the SockAddr of their datagram with its
            // length; all outlive the call and none is written by it except msg_len. The fd is
            // borrowed from a live socket.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    chunk.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            out.calls += 1;
            if n > 0 {
                out.datagrams += n as usize;
                next += n as usize;
            } else if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                out.dropped += self.queued.len() - next;
                break;
            } else {
                // The first datagram of the chunk was refused: drop it, go on.
                out.dropped += 1;
                next += 1;
            }
        }
        self.queued.clear();
        self.bytes.clear();
        out
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

    #[test]
    fn one_set_reads_ipv4_then_ipv6_sources_whole() {
        // The same set, as a worker shares it: an IPv4 read must not shorten the IPv6
        // addresses of the next one.
        let mut batch = RecvBatch::new();
        let rx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx4.send_to(b"four", rx4.local_addr().unwrap()).unwrap();
        let rx6 = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
        let tx6 = UdpSocket::bind("[::1]:0").unwrap();
        tx6.send_to(b"six", rx6.local_addr().unwrap()).unwrap();
        for (rx, tx, want) in [(&rx4, &tx4, &b"four"[..]), (&rx6, &tx6, &b"six"[..])] {
            rx.set_nonblocking(true).unwrap();
            let mut n = 0;
            for _ in 0..100 {
                if let Ok(k) = batch.recv(rx) {
                    n = k;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(n, 1);
            assert_eq!(
                batch.datagrams().next(),
                Some((tx.local_addr().unwrap(), want))
            );
        }
    }
    #[test]
    fn sends_every_queued_datagram_to_its_own_destination() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = SendBatch::new();
        assert_eq!(batch.send(&tx), Sent::default());
        // More than one call's worth: BATCH + 8, alternating destinations, header + payload.
        for i in 0..BATCH as u16 + 8 {
            let to = if i % 2 == 0 { &a } else { &b };
            batch.push(to.local_addr().unwrap(), &[&i.to_be_bytes(), &[0xab; 10]]);
        }
        assert_eq!(batch.len(), BATCH + 8);
        let sent = batch.send(&tx);
        assert_eq!(
            (sent.datagrams, sent.dropped, sent.calls),
            (BATCH + 8, 0, 2)
        );
        assert!(batch.is_empty());
        let mut buf = [0u8; 64];
        for (rx, first) in [(&a, 0u16), (&b, 1)] {
            for k in 0..(BATCH as u16 + 8) / 2 {
                let (len, from) = rx.recv_from(&mut buf).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(len, 12);
                assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), first + 2 * k);
                assert_eq!(&buf[2..12], &[0xab; 10]);
            }
        }
    }

    #[test]
    fn a_refused_datagram_is_dropped_and_the_rest_still_go() {
        // IPv4 socket, an IPv6 destination first: EAFNOSUPPORT / EINVAL for that one only.
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = SendBatch::new();
        batch.push("[::1]:9".parse().unwrap(), &[b"no"]);
        batch.push(rx.local_addr().unwrap(), &[b"yes"]);
        let sent = batch.send(&tx);
        assert_eq!((sent.datagrams, sent.dropped), (1, 1));
        let mut buf = [0u8; 8];
        assert_eq!(rx.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"yes");
    }
}
