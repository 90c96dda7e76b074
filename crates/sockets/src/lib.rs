//! Socket set-up: the one place with socket options (SO_REUSEPORT, buffer sizes, DF).

pub mod batch;
pub mod poller;
pub mod xdp;

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

const LISTENER_BUFFER_BYTES: usize = 4 << 20;

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Sends one datagram now with a plain non-blocking `sendto`, bypassing tokio's readiness
/// cache (a freshly registered socket may not have seen its first writable event yet). A full
/// socket buffer returns `WouldBlock`; the caller drops and counts.
pub fn send_to(s: &tokio::net::UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(s).send_to(data, &to.into())
}

/// Fails with `AddrInUse` when anything already holds `addr` over UDP or TCP, including another
/// SO_REUSEPORT group (which would otherwise silently share the port with us). With port 0,
/// returns a port free for both.
pub fn probe_exclusive(addr: SocketAddr) -> io::Result<SocketAddr> {
    for _ in 0..16 {
        let udp = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        udp.bind(&addr.into())?;
        let bound = udp
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        let tcp = new_socket(bound, Type::STREAM, Protocol::TCP)?;
        // As the real listener does: connections of an earlier run in TIME_WAIT do not hold
        // the port (a listener still does, SO_REUSEPORT group or not).
        tcp.set_reuse_address(true)?;
        match tcp.bind(&bound.into()) {
            Ok(()) => return Ok(bound),
            Err(e) if addr.port() != 0 => return Err(e),
            Err(_) => continue,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no port free for both UDP and TCP",
    ))
}

/// A non-blocking UDP socket on `addr` with SO_REUSEPORT, so each worker can have its own.
pub fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(LISTENER_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(LISTENER_BUFFER_BYTES);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A non-blocking UDP socket on `addr` with large kernel buffers (an SFU worker's media port:
/// one inbound packet fans out to many subscribers in one burst, which the default 208 KiB
/// send buffer cannot hold). No SO_REUSEPORT: the port is this socket's alone.
/// An IPv6 `addr` keeps the system's dual-stack default, as a plain `bind` does.
pub fn media_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(LISTENER_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(LISTENER_BUFFER_BYTES);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A non-blocking TCP listener on `addr` with SO_REUSEPORT.
pub fn reuseport_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A TCP allocation's relayed transport address (RFC 6062 §5.1): a non-blocking listener on
/// exactly `addr`, with SO_REUSEADDR and SO_REUSEPORT so that [`relay_tcp_connector`] can open
/// connections to peers from the same address. SO_REUSEPORT would also let a second listener
/// share the port: the caller holds a UDP socket on the same port (bound without it) as the
/// port's lock.
pub fn relay_tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// A TCP socket bound to the relayed transport address `local` of a TCP allocation, ready to
/// connect to a peer from it (RFC 6062 §5.2).
pub fn relay_tcp_connector(local: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    let s = match local {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(local)?;
    Ok(s)
}

/// A non-blocking relay UDP socket on exactly `addr`; with `dont_fragment`, the DF bit is set on
/// every packet it sends (IP_MTU_DISCOVER = IP_PMTUDISC_DO / IPV6_DONTFRAG).
pub fn relay_udp(addr: SocketAddr, dont_fragment: bool) -> io::Result<UdpSocket> {
    let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.bind(&addr.into())?;
    if dont_fragment {
        set_dont_fragment(&s, addr.is_ipv6())?;
    }
    Ok(s.into())
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_dont_fragment(s: &Socket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1 as libc::c_int)
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: valid fd owned by `s`, a c_int option value whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_dont_fragment(_s: &Socket, _v6: bool) -> io::Result<()> {
    Ok(())
}
