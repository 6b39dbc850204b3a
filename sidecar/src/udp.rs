//! The data plane's one UDP socket, IPv4 and IPv6: bound to `[::]:port`
//! with IPV6_V6ONLY off, so IPv4 peers appear as `::ffff:a.b.c.d`; this
//! module hides that mapping. Where IPv6 is unavailable (disabled in a
//! container), it falls back to an IPv4-only socket.
//!
//! Also the host's own interface addresses, our LAN endpoint candidates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::UdpSocket;
use tracing::{debug, warn};

pub struct Udp {
    sock: UdpSocket,
    dual: bool,
}

impl Udp {
    /// Binds `port` (0: any), falling back to a random port when it is
    /// taken: peers learn the port from our endpoints anyway.
    pub async fn bind(port: u16) -> std::io::Result<Udp> {
        match Self::bind_exact(port).await {
            Ok(u) => Ok(u),
            Err(e) if port != 0 => {
                warn!(port, error = %e, "UDP port busy; using a random one");
                Self::bind_exact(0).await
            }
            Err(e) => Err(e),
        }
    }

    async fn bind_exact(port: u16) -> std::io::Result<Udp> {
        match dual_stack(port) {
            Ok(sock) => Ok(Udp { sock, dual: true }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
            Err(e) => {
                debug!(error = %e, "no IPv6 UDP socket; IPv4 only");
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
                Ok(Udp { sock, dual: false })
            }
        }
    }

    pub fn port(&self) -> Option<u16> {
        self.sock.local_addr().ok().map(|a| a.port())
    }

    pub fn has_ipv6(&self) -> bool {
        self.dual
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        let (n, src) = self.sock.recv_from(buf).await?;
        Ok((n, SocketAddr::new(src.ip().to_canonical(), src.port())))
    }

    pub fn try_send_to(&self, buf: &[u8], dst: SocketAddr) -> std::io::Result<usize> {
        let dst = match (self.dual, dst.ip()) {
            (true, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), dst.port()),
            (false, IpAddr::V6(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "no IPv6 UDP socket",
                ));
            }
            _ => dst,
        };
        self.sock.try_send_to(buf, dst)
    }
}

/// `[::]:port` with IPV6_V6ONLY explicitly off: the host's
/// `net.ipv6.bindv6only` default must not decide whether IPv4 works.
fn dual_stack(port: u16) -> std::io::Result<UdpSocket> {
    // SAFETY: socket() has no memory preconditions; a valid fd is owned
    // by the UdpSocket right away, so every error path below closes it.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let sock = unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let off: libc::c_int = 0;
    // SAFETY: a valid fd, and a c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    };
    // SAFETY: addr is a valid sockaddr_in6 and the length is its size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    UdpSocket::from_std(sock)
}

/// The host's unicast addresses that peers on a LAN could reach: no
/// loopback, no link-local (they need a scope peers cannot know), nothing
/// in the mesh prefixes (our own tunnel), at most `max`.
pub fn interface_addrs(max: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() && out.len() < max {
        // SAFETY: cur is a node of the list getifaddrs returned, alive
        // until freeifaddrs; ifa_addr may be null and is checked.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as libc::c_uint == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family says which struct
        // it points to.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if usable(&ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: head came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn usable(ip: &IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || crate::netmap::in_mesh(ip) {
        return false;
    }
    match ip {
        IpAddr::V4(a) => !a.is_link_local(),
        IpAddr::V6(a) => !a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_addresses() {
        for ok in ["192.168.1.2", "10.0.0.5", "2001:db8::1", "fd00::5"] {
            assert!(usable(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "100.64.0.1",
            "fd7a:115c:a1e0::1",
            "0.0.0.0",
        ] {
            assert!(!usable(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[tokio::test]
    async fn dual_stack_talks_to_ipv4_and_ipv6() {
        let a = Udp::bind(0).await.unwrap();
        let port = a.port().unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // try_send_to needs the reactor to have seen the socket writable.
        a.sock.writable().await.unwrap();
        a.try_send_to(
            b"x",
            SocketAddr::new("127.0.0.1".parse().unwrap(), b.local_addr().unwrap().port()),
        )
        .unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(from.port(), port);
        b.send_to(b"y", ("127.0.0.1", port)).await.unwrap();
        let (n, src) = a.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], src.ip()),
            (&b"y"[..], "127.0.0.1".parse::<IpAddr>().unwrap())
        );
        if a.has_ipv6()
            && let Ok(c) = UdpSocket::bind("[::1]:0").await
        {
            a.try_send_to(b"z", c.local_addr().unwrap()).unwrap();
            let (_, from) = c.recv_from(&mut buf).await.unwrap();
            assert_eq!(from.port(), port);
        }
    }
}
