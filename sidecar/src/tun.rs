//! The TUN device: the node's mesh addresses, MTU 1280 (as the official
//! client, so that WireGuard over any path fits a 1500-byte link) and routes
//! for the mesh prefixes. Addresses, MTU and routes are set with iproute2
//! (`ip`), which handles both families.
//!
//! The device is opened with `IFF_VNET_HDR` and TCP segmentation offload
//! (as tailscaled and wireguard-go do): the kernel then hands over TCP
//! super-packets of up to 64 KiB that [`crate::offload`] cuts up, instead
//! of one read per 1,280-byte packet. Every read and write then starts with
//! a virtio-net header ([`Tun::vnet`]). Where the kernel refuses offloads
//! (or `MESHSCALE_TUN_OFFLOAD=0`), the device works packet by packet.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

pub const MTU: i32 = 1280;
pub const ROUTE_V4: &str = "100.64.0.0/10";
pub const ROUTE_V6: &str = "fd7a:115c:a1e0::/48";
/// Linux capability number of CAP_NET_ADMIN.
const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "missing CAP_NET_ADMIN: the sidecar creates a TUN device and sets routes; run as root or \
         grant NET_ADMIN (Kubernetes: securityContext.capabilities.add: [NET_ADMIN])"
    )]
    NoNetAdmin,
    #[error(
        "/dev/net/tun is missing: load the tun module (modprobe tun) or mount the device into the \
         container"
    )]
    NoDevNetTun,
    #[error("creating TUN device {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("`ip {args}` failed: {reason}")]
    Ip { args: String, reason: String },
}

/// Checks, before any network work, what `up` needs from the system, so
/// the operator gets one clear message instead of an ioctl error.
pub fn preflight() -> Result<(), TunError> {
    if !Path::new("/dev/net/tun").exists() {
        return Err(TunError::NoDevNetTun);
    }
    if !has_net_admin() {
        return Err(TunError::NoNetAdmin);
    }
    Ok(())
}

fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
// _IOW('T', 202, int) and _IOW('T', 208, unsigned int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One TUN queue, non-blocking, driven by tokio.
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    vnet: bool,
}

impl Tun {
    /// Whether reads and writes carry a virtio-net header (offloads on).
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    /// Waits for and reads one packet (with offloads: one header plus a
    /// packet or a TCP super-packet).
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read(fd.as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one packet if one is queued, else `WouldBlock`.
    pub fn try_recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        read(self.fd.get_ref().as_raw_fd(), buf)
    }

    /// Writes one packet (with offloads, `buf` starts with the header);
    /// never waits: a full queue drops the packet, as a NIC would.
    pub fn try_send(&self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe {
            libc::write(
                self.fd.get_ref().as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

fn read(fd: libc::c_int, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() writable bytes.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Creates `name` (offloads on where the kernel allows), sets its MTU and
/// brings it up.
pub fn create(name: &str) -> Result<Tun, TunError> {
    let fail = |reason: String| TunError::Create {
        name: name.into(),
        reason,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(fail(format!(
            "not a valid interface name (1 to {} characters, no '/' or spaces)",
            libc::IFNAMSIZ - 1
        )));
    }
    let want_offload = std::env::var("MESHSCALE_TUN_OFFLOAD").map_or(true, |v| v != "0");
    let (fd, vnet) = if want_offload {
        match open(name, IFF_VNET_HDR) {
            Ok(fd) => match set_offload(&fd) {
                Ok(()) => (fd, true),
                Err(e) => {
                    warn!(error = %e, "TUN offloads refused by the kernel; packet by packet");
                    drop(fd);
                    (open(name, 0).map_err(|e| fail(e.to_string()))?, false)
                }
            },
            Err(e) => {
                warn!(error = %e, "TUN with virtio-net headers refused; packet by packet");
                (open(name, 0).map_err(|e| fail(e.to_string()))?, false)
            }
        }
    } else {
        (open(name, 0).map_err(|e| fail(e.to_string()))?, false)
    };
    debug!(tun = name, offload = vnet, "TUN device open");
    ip(&["link", "set", "dev", name, "mtu", &MTU.to_string(), "up"])?;
    // SAFETY: the Tun owns the fd for as long as the AsyncFd lives and
    // never closes or replaces it behind tokio's back.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| fail(e.to_string()))?;
    Ok(Tun { fd, vnet })
}

fn open(name: &str, extra: libc::c_short) -> std::io::Result<OwnedFd> {
    // SAFETY: a constant NUL-terminated path; the fd is owned right away.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | extra,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: req is a valid ifreq-sized struct that outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_offload(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes the flags by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), TunError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| TunError::Ip {
            args: args.join(" "),
            reason: format!("cannot run ip (is iproute2 installed?): {e}"),
        })?;
    if !out.status.success() {
        return Err(TunError::Ip {
            args: args.join(" "),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Puts exactly `addrs` on the device and the mesh routes through it. An
/// IPv6 failure (IPv6 disabled in the namespace) is reported, not fatal:
/// IPv4 still works.
pub fn configure(name: &str, addrs: &[IpAddr]) -> Result<Vec<String>, TunError> {
    let mut warnings = Vec::new();
    ip(&["addr", "flush", "dev", name])?;
    for a in addrs {
        let (fam, cidr) = match a {
            IpAddr::V4(v4) => ("-4", format!("{v4}/32")),
            IpAddr::V6(v6) => ("-6", format!("{v6}/128")),
        };
        let r = ip(&[fam, "addr", "add", &cidr, "dev", name]);
        match (r, a) {
            (Err(e), IpAddr::V6(_)) => warnings.push(e.to_string()),
            (r, _) => r?,
        }
    }
    ip(&["-4", "route", "replace", ROUTE_V4, "dev", name])?;
    if addrs.iter().any(IpAddr::is_ipv6)
        && let Err(e) = ip(&["-6", "route", "replace", ROUTE_V6, "dev", name])
    {
        warnings.push(e.to_string());
    }
    Ok(warnings)
}
