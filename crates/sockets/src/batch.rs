//! Batched UDP receive and send.
//!
//! Receive: one `recvmmsg(2)` reads every datagram a socket has queued, up to
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
//! Send: [`SendBatch`] queues what one wake-up produces and hands each run of datagrams that
//! leave the same socket to one `sendmmsg(2)`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

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

/// The C form of `addr`, and its length, for a message header.
#[allow(unsafe_code)]
fn c_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is a plain C struct for which all zeroes is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in, and
            // the reference is the only one to `st` while it lives.
            let sin = unsafe {
                &mut *(&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo().to_be();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

/// Datagrams queued to be sent together: up to [`BATCH`], each with the socket it leaves from
/// (named by a key of the caller's, `K`, resolved to the socket only when sent, so a socket
/// closed meanwhile is never written to by a stale descriptor) and its destination.
///
/// Each entry has its own buffer, kept between flushes, so a worker frames into it without an
/// allocation per datagram. A run of consecutive entries with the same key goes out in one
/// `sendmmsg(2)`; within it, consecutive datagrams to one destination of one size (the last
/// may be shorter) form one message with UDP GSO, which the kernel sends as one buffer as far
/// down the stack as it can and cuts into the same datagrams.
pub struct SendBatch<K> {
    bufs: Vec<Vec<u8>>,
    queued: Vec<(K, SocketAddr)>,
    /// UDP GSO (`UDP_SEGMENT`, Linux 4.18) for runs to one destination; turned off for good
    /// the first time the kernel cannot do it (EIO: no checksum offload on the route).
    gso: bool,
    /// Entries before this index go without GSO in this flush: a message the kernel refused
    /// with EINVAL (a segment over the path MTU with DF set) is sent again one by one.
    no_gso_before: usize,
    /// GSO messages the kernel refused (sent again one datagram at a time).
    gso_refused: u64,
    /// `sendmmsg(2)` calls made so far.
    calls: u64,
}

impl<K> std::fmt::Debug for SendBatch<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SendBatch {{ queued: {} }}", self.queued.len())
    }
}

impl<K: PartialEq + Copy> Default for SendBatch<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: PartialEq + Copy> SendBatch<K> {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| Vec::new()).collect(),
            queued: Vec::with_capacity(BATCH),
            gso: true,
            no_gso_before: 0,
            gso_refused: 0,
            calls: 0,
        }
    }

    /// GSO messages the kernel refused so far (their datagrams went again one at a time).
    pub fn gso_refused(&self) -> u64 {
        self.gso_refused
    }

    /// `sendmmsg(2)` calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Queues a datagram made of `parts` back to back (a header and a payload, say), to leave
    /// socket `via` for `to`. Returns false (nothing queued) when the batch is full.
    pub fn push_parts(&mut self, via: K, to: SocketAddr, parts: &[&[u8]]) -> bool {
        let Some(b) = self.next_buf() else {
            return false;
        };
        for p in parts {
            b.extend_from_slice(p);
        }
        self.commit(via, to)
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// True when [`BATCH`] datagrams are queued: flush before the next.
    pub fn is_full(&self) -> bool {
        self.queued.len() == BATCH
    }

    /// The (emptied) buffer of the next datagram, to write it into before [`commit`]; `None`
    /// when the batch is full.
    ///
    /// [`commit`]: SendBatch::commit
    pub fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        let b = self.bufs.get_mut(self.queued.len())?;
        b.clear();
        Some(b)
    }

    /// Queues the datagram written into [`next_buf`](SendBatch::next_buf), to leave socket
    /// `via` for `to`. Returns false (nothing queued) when the batch is full.
    pub fn commit(&mut self, via: K, to: SocketAddr) -> bool {
        if self.is_full() {
            return false;
        }
        self.queued.push((via, to));
        true
    }

    /// Queues a copy of `data`, to leave socket `via` for `to`. Returns false (nothing
    /// queued) when the batch is full.
    pub fn push(&mut self, via: K, to: SocketAddr, data: &[u8]) -> bool {
        self.push_parts(via, to, &[data])
    }

    /// Sends everything queued, without waiting, and empties the batch. `socket` resolves a
    /// key to its socket now (`None`: it is gone, and its datagrams are reported with
    /// `NotFound`); `failed` hears each datagram not sent (a full socket buffer gives
    /// `WouldBlock`, an ICMP error remembered by the socket `ConnectionRefused`...). Returns the
    /// number sent.
    pub fn flush<'s>(
        &mut self,
        mut socket: impl FnMut(&K) -> Option<BorrowedFd<'s>>,
        mut failed: impl FnMut(&K, SocketAddr, io::Error),
    ) -> usize {
        let mut sent = 0;
        let mut i = 0;
        while i < self.queued.len() {
            let via = self.queued[i].0;
            let end = i + self.queued[i..]
                .iter()
                .take_while(|(k, _)| *k == via)
                .count();
            match socket(&via) {
                None => {
                    for &(k, to) in &self.queued[i..end] {
                        failed(&k, to, io::ErrorKind::NotFound.into());
                    }
                }
                Some(fd) => {
                    let mut at = i;
                    while at < end {
                        match self.send_run(fd, at, end) {
                            Ok(n) => {
                                sent += n;
                                at += n;
                            }
                            Err((e, n)) => {
                                // The message at `at` (n datagrams) failed: report them and
                                // go on after it.
                                for &(k, to) in &self.queued[at..at + n] {
                                    failed(&k, to, io::Error::from(e.kind()));
                                }
                                at += n;
                            }
                        }
                    }
                }
            }
            i = end;
        }
        self.queued.clear();
        self.no_gso_before = 0;
        sent
    }

    /// How many entries from `at` (before `end`) one GSO message takes: consecutive entries
    /// to one destination whose sizes equal the first's, the last possibly shorter, at most
    /// [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`] in all. 1 when GSO is off.
    fn gso_run(&self, at: usize, end: usize) -> usize {
        let size = self.bufs[at].len();
        if !self.gso || size == 0 || at < self.no_gso_before {
            return 1;
        }
        let to = self.queued[at].1;
        let mut n = 1;
        let mut bytes = size;
        while at + n < end && n < GSO_MAX_SEGMENTS {
            let len = self.bufs[at + n].len();
            if self.queued[at + n].1 != to || len == 0 || len > size || bytes + len > GSO_MAX_BYTES
            {
                break;
            }
            bytes += len;
            n += 1;
            if len < size {
                break;
            }
        }
        n
    }

    /// One `sendmmsg(2)` of entries `from..to` on `fd`: how many entries the kernel took (at
    /// least 1), or the error of the first message with the number of entries it carried.
    #[allow(unsafe_code)]
    fn send_run(
        &mut self,
        fd: BorrowedFd<'_>,
        from: usize,
        to: usize,
    ) -> Result<usize, (io::Error, usize)> {
        debug_assert!(from < to && to - from <= BATCH);
        // SAFETY: iovec and mmsghdr are plain C structs for which all zeroes is valid; every
        // field the call reads is set below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut names: [(libc::sockaddr_storage, libc::socklen_t); BATCH] =
            std::array::from_fn(|_| c_addr(SocketAddr::from(([0, 0, 0, 0], 0))));
        // One control buffer per message, 8-byte aligned, room for one UDP_SEGMENT cmsg.
        let mut cmsgs = [[0u64; 4]; BATCH];
        // Entries per message, in order.
        let mut spans = [0usize; BATCH];
        let mut msgs = 0;
        let mut at = from;
        while at < to {
            let n = self.gso_run(at, to);
            for k in 0..n {
                let buf = &self.bufs[at + k];
                iovs[at - from + k].iov_base = buf.as_ptr() as *mut libc::c_void;
                iovs[at - from + k].iov_len = buf.len();
            }
            names[msgs] = c_addr(self.queued[at].1);
            let hdr = &mut hdrs[msgs].msg_hdr;
            hdr.msg_name = (&mut names[msgs].0 as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = names[msgs].1;
            hdr.msg_iov = &mut iovs[at - from];
            hdr.msg_iovlen = n as _;
            if n > 1 {
                let segment = self.bufs[at].len() as u16;
                hdr.msg_control = cmsgs[msgs].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: msg_control points at 32 aligned bytes of `cmsgs`, more than the
                // CMSG_SPACE(2) announced, so CMSG_FIRSTHDR returns a header inside them, and
                // its data (2 bytes, CMSG_LEN(2)) fits too.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
                }
            }
            spans[msgs] = n;
            msgs += 1;
            at += n;
        }
        self.calls += 1;
        // SAFETY: the first `msgs` headers each point at their own iovecs over live buffers of
        // `self.bufs` (only read by the call), their own destination address with its length,
        // and (GSO) their own control buffer, all on this stack frame or in `self`, outliving
        // the call. The fd is borrowed from a live socket.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                msgs as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            let e = if r < 0 {
                io::Error::last_os_error()
            } else {
                io::ErrorKind::WriteZero.into()
            };
            if spans[0] > 1 {
                match e.raw_os_error() {
                    // The route cannot segment (no checksum offload): the same datagrams go
                    // again one by one, and GSO stays off.
                    Some(libc::EIO) => {
                        self.gso = false;
                        self.gso_refused += 1;
                        return Ok(0);
                    }
                    // This message cannot be segmented (over the path MTU with DF set, or an
                    // old kernel): these datagrams go again one by one.
                    Some(libc::EINVAL) => {
                        self.no_gso_before = from + spans[0];
                        self.gso_refused += 1;
                        return Ok(0);
                    }
                    _ => {}
                }
            }
            return Err((e, spans[0]));
        }
        Ok(spans[..r as usize].iter().sum())
    }
}

/// Most datagrams the kernel cuts one GSO message into (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message (an IP datagram's limit less headers, with room to spare).
const GSO_MAX_BYTES: usize = 60_000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Reads `rx` (made non-blocking) until `want` datagrams arrived or half a second passed:
    /// their sources and bytes, in order.
    fn recv_all(rx: &UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        rx.set_nonblocking(true).unwrap();
        let mut rb = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            if rb.recv(rx).is_ok() {
                got.extend(rb.datagrams().map(|(f, d)| (f, d.to_vec())));
                if got.len() >= want {
                    break;
                }
            } else {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        got
    }

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
    fn sends_runs_of_one_socket_in_order_to_each_destination() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
        let rx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx6 = UdpSocket::bind("[::1]:0").unwrap();
        let (to4, to6) = (rx4.local_addr().unwrap(), rx6.local_addr().unwrap());
        let mut batch: SendBatch<u8> = SendBatch::new();
        // 1 and 2 are the sockets; 3 names one that is gone.
        for i in 0..10u8 {
            assert!(batch.push(1, to4, &[i; 3]));
        }
        assert!(batch.push(3, to4, b"lost"));
        for i in 10..BATCH as u8 - 1 {
            let buf = batch.next_buf().unwrap();
            buf.extend_from_slice(&[i; 5]);
            assert!(batch.commit(2, to6));
        }
        assert!(batch.is_full());
        assert!(!batch.push(1, to4, b"over"));
        assert!(batch.next_buf().is_none());
        let mut failures = Vec::new();
        let sent = batch.flush(
            |k| match k {
                1 => Some(std::os::fd::AsFd::as_fd(&a)),
                2 => Some(std::os::fd::AsFd::as_fd(&b)),
                _ => None,
            },
            |k, to, e| failures.push((*k, to, e.kind())),
        );
        assert_eq!(sent, BATCH - 1);
        assert_eq!(failures, vec![(3, to4, io::ErrorKind::NotFound)]);
        assert!(batch.is_empty());
        for (sock, from, want) in [(&rx4, &a, 10), (&rx6, &b, BATCH - 11)] {
            let got = recv_all(sock, want);
            assert_eq!(got.len(), want);
            for (f, d) in &got {
                assert_eq!(*f, from.local_addr().unwrap());
                assert!(d.iter().all(|&x| x == d[0]));
            }
            // In order.
            let firsts: Vec<u8> = got.iter().map(|(_, d)| d[0]).collect();
            let mut sorted = firsts.clone();
            sorted.sort_unstable();
            assert_eq!(firsts, sorted);
        }
    }

    #[test]
    fn a_failed_datagram_is_reported_and_the_rest_of_its_run_still_goes() {
        // An IPv4 socket cannot send to an IPv6 destination: the kernel fails that one.
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let mut batch: SendBatch<u8> = SendBatch::new();
        batch.push(1, to, b"one");
        batch.push(1, v6, b"bad");
        batch.push(1, to, b"three");
        let mut failures = Vec::new();
        let sent = batch.flush(
            |_| Some(std::os::fd::AsFd::as_fd(&a)),
            |_, to, _| failures.push(to),
        );
        assert_eq!(sent, 2);
        assert_eq!(failures, vec![v6]);
        let got: Vec<Vec<u8>> = recv_all(&rx, 2).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, vec![b"one".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn runs_to_one_destination_of_one_size_go_as_one_gso_message_and_arrive_as_sent() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to, to2) = (rx.local_addr().unwrap(), other.local_addr().unwrap());
        let mut batch: SendBatch<u8> = SendBatch::new();
        let sizes = [100, 100, 100, 40, 100, 100, 120, 100];
        for (i, &n) in sizes.iter().enumerate() {
            batch.push(1, to, &vec![i as u8; n]);
        }
        batch.push(1, to2, &[9; 100]);
        batch.push(1, to, &[10; 100]);
        // Grouping: a shorter datagram ends a run, a longer one or another destination starts
        // a new one.
        let mut runs = Vec::new();
        let mut at = 0;
        while at < batch.len() {
            let n = batch.gso_run(at, batch.len());
            runs.push(n);
            at += n;
        }
        assert_eq!(runs, vec![4, 2, 2, 1, 1]);
        let sent = batch.flush(
            |_| Some(std::os::fd::AsFd::as_fd(&a)),
            |_, to, e| panic!("{to}: {e}"),
        );
        assert_eq!(sent, 10);
        let got = recv_all(&rx, 9);
        let want: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .chain([vec![10u8; 100]])
            .collect();
        assert_eq!(got.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), want);
        assert!(got.iter().all(|(f, _)| *f == a.local_addr().unwrap()));
    }

    #[test]
    #[allow(unsafe_code)]
    fn a_gso_message_the_kernel_refuses_goes_again_one_datagram_at_a_time() {
        // UDP checksums off (SO_NO_CHECK) makes the kernel refuse GSO with EINVAL.
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let one: libc::c_int = 1;
        // SAFETY: a valid fd, option and a c_int of the size given.
        let r = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch: SendBatch<u8> = SendBatch::new();
        for i in 0..4u8 {
            batch.push(1, to, &[i; 64]);
        }
        assert_eq!(batch.gso_run(0, 4), 4);
        let sent = batch.flush(
            |_| Some(std::os::fd::AsFd::as_fd(&a)),
            |_, to, e| panic!("{to}: {e}"),
        );
        assert_eq!(sent, 4);
        assert_eq!(batch.gso_refused(), 1);
        // Only that flush went without GSO.
        assert!(batch.gso);
        assert_eq!(batch.no_gso_before, 0);
        let got: Vec<Vec<u8>> = recv_all(&rx, 4).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, (0..4u8).map(|i| vec![i; 64]).collect::<Vec<_>>());
    }
}
