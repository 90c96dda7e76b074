//! Readiness of many sockets through one epoll instance (nix), so that one task serves all of a
//! worker's relay sockets: a relay socket is a plain non-blocking socket in the interest list,
//! with no task, no buffer and no registration of its own in the async runtime. Wrap the
//! [`Poller`] in `tokio::io::unix::AsyncFd`: the epoll descriptor is readable while any socket
//! in it is. Level-triggered, so a socket left with datagrams queued is reported again.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// Most ready sockets one [`Poller::ready`] returns.
pub const MAX_EVENTS: usize = 256;

/// An epoll interest list of sockets, each named by a token (`u64`) the caller chooses.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }
}

impl Poller {
    /// An empty interest list (close-on-exec).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    /// Registers the poller with tokio's reactor for readability (call within a runtime).
    #[allow(unsafe_code)]
    pub fn register(self) -> io::Result<tokio::io::unix::AsyncFd<Poller>> {
        // SAFETY: the poller owns its epoll descriptor (an OwnedFd that is never replaced),
        // `as_raw_fd` always returns that descriptor, and it stays open until the poller is
        // dropped, which the AsyncFd does after deregistering it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }

    /// Watches `sock` for input, reported as `token`.
    pub fn add(&self, sock: &impl AsFd, token: u64) -> io::Result<()> {
        self.epoll
            .add(sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        Ok(())
    }

    /// Stops watching `sock` (before it is closed).
    pub fn remove(&self, sock: &impl AsFd) -> io::Result<()> {
        self.epoll.delete(sock.as_fd())?;
        Ok(())
    }

    /// The tokens of the sockets readable now, without waiting, into `out` (cleared first; at
    /// most [`MAX_EVENTS`]). A socket in error is reported too (its read returns the error).
    pub fn ready(&self, out: &mut Vec<u64>) -> io::Result<usize> {
        out.clear();
        let mut events = [EpollEvent::empty(); MAX_EVENTS];
        let n = self.epoll.wait(&mut events, EpollTimeout::ZERO)?;
        out.extend(events[..n].iter().map(|e| e.data()));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn reports_readable_sockets_by_token_until_drained() {
        let p = Poller::new().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        p.add(&a, 7).unwrap();
        p.add(&b, 9).unwrap();
        let mut ready = Vec::new();
        assert_eq!(p.ready(&mut ready).unwrap(), 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", b.local_addr().unwrap()).unwrap();
        tx.send_to(b"y", b.local_addr().unwrap()).unwrap();
        assert_eq!(p.ready(&mut ready).unwrap(), 1);
        assert_eq!(ready, [9]);
        // Level-triggered: still reported while a datagram is queued.
        let mut buf = [0u8; 8];
        b.recv(&mut buf).unwrap();
        p.ready(&mut ready).unwrap();
        assert_eq!(ready, [9]);
        b.recv(&mut buf).unwrap();
        assert_eq!(p.ready(&mut ready).unwrap(), 0);
        // Removed: no longer reported.
        tx.send_to(b"z", a.local_addr().unwrap()).unwrap();
        p.remove(&a).unwrap();
        assert_eq!(p.ready(&mut ready).unwrap(), 0);
    }
}
