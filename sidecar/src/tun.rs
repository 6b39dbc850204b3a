//! The TUN device: the node's mesh addresses, MTU 1280 (as the official
//! client, so that WireGuard over any path fits a 1500-byte link) and routes
//! for the mesh prefixes. Addresses and routes are set with iproute2 (`ip`),
//! which handles both families; tokio-tun only configures IPv4.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use tokio_tun::Tun;

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

/// Creates and brings up `name`.
pub fn create(name: &str) -> Result<Tun, TunError> {
    let mut tuns = Tun::builder()
        .name(name)
        .mtu(MTU)
        .up()
        .build()
        .map_err(|e| TunError::Create {
            name: name.into(),
            reason: e.to_string(),
        })?;
    tuns.pop().ok_or_else(|| TunError::Create {
        name: name.into(),
        reason: "no queue returned".into(),
    })
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
