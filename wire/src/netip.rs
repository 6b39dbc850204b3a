//! `IpPrefix`, the Rust side of Go's `netip.Prefix` (`"100.64.0.1/32"`).
//!
//! The standard library has no prefix type. Parsing follows Go's
//! `netip.ParsePrefix`: no zones, decimal bits without sign or leading zeros,
//! and host bits are kept as written (Go does not mask on parse either), so a
//! value re-serialises exactly as received.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP address plus a prefix length, e.g. `100.64.0.1/32` or
/// `fd7a:115c:a1e0::/48`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    bits: u8,
}

/// Why a prefix string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("prefix {0:?} has no '/'")]
    MissingSlash(String),
    #[error("prefix {0:?} has an invalid IP address")]
    BadAddr(String),
    #[error("prefix {0:?} has invalid bits")]
    BadBits(String),
    #[error("prefix length {bits} is too long for {addr}")]
    BitsTooLong { addr: IpAddr, bits: u8 },
}

impl IpPrefix {
    /// Builds a prefix, refusing lengths longer than the address.
    pub fn new(addr: IpAddr, bits: u8) -> Result<Self, PrefixError> {
        if bits > max_bits(&addr) {
            return Err(PrefixError::BitsTooLong { addr, bits });
        }
        Ok(Self { addr, bits })
    }

    /// The single-address prefix (`/32` or `/128`) used for node addresses.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            bits: max_bits(&addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Whether this is a single-address prefix.
    pub fn is_host(&self) -> bool {
        self.bits == max_bits(&self.addr)
    }

    /// The same prefix with host bits cleared (Go's `Prefix.Masked`).
    pub fn masked(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.bits))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.bits))),
        };
        Self {
            addr,
            bits: self.bits,
        }
    }

    /// Whether `ip` lies inside the prefix. Addresses of the other family
    /// never match, as in Go.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let m = mask32(self.bits);
                u32::from(p) & m == u32::from(*a) & m
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let m = mask128(self.bits);
                u128::from(p) & m == u128::from(*a) & m
            }
            _ => false,
        }
    }
}

fn max_bits(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, bits) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::MissingSlash(s.into()))?;
        // std's parser already refuses zones ("fe80::1%eth0"), like Go's.
        let addr: IpAddr = addr.parse().map_err(|_| PrefixError::BadAddr(s.into()))?;
        let digits_ok = !bits.is_empty()
            && bits.len() <= 3
            && bits.bytes().all(|b| b.is_ascii_digit())
            && !(bits.len() > 1 && bits.starts_with('0'));
        if !digits_ok {
            return Err(PrefixError::BadBits(s.into()));
        }
        let bits: u8 = bits.parse().map_err(|_| PrefixError::BadBits(s.into()))?;
        Self::new(addr, bits)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_go() {
        for s in [
            "100.64.0.1/32",
            "0.0.0.0/0",
            "fd7a:115c:a1e0::1/128",
            "fd7a:115c:a1e0::/48",
            "::/0",
            "10.1.2.3/8", // host bits kept, as netip does
            "::ffff:1.2.3.4/128",
        ] {
            let p: IpPrefix = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_input() {
        for s in [
            "",
            "100.64.0.1",
            "100.64.0.1/33",
            "::/129",
            "100.64.0.1/",
            "100.64.0.1/+8",
            "100.64.0.1/08",
            "100.64.0.1/-1",
            "100.64.0.1/1000",
            "fe80::1%eth0/64",
            "nope/8",
            "*",
        ] {
            assert!(s.parse::<IpPrefix>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn contains_and_masked() {
        let p: IpPrefix = "100.64.0.0/10".parse().unwrap();
        assert!(p.contains(&"100.127.255.255".parse().unwrap()));
        assert!(!p.contains(&"100.128.0.0".parse().unwrap()));
        assert!(!p.contains(&"::1".parse().unwrap()));
        let all: IpPrefix = "::/0".parse().unwrap();
        assert!(all.contains(&"fd7a::1".parse().unwrap()));
        let host: IpPrefix = "10.1.2.3/8".parse().unwrap();
        assert_eq!(host.masked().to_string(), "10.0.0.0/8");
        assert!(IpPrefix::host("fd7a::1".parse().unwrap()).is_host());
    }

    #[test]
    fn serde_is_a_string() {
        let p: IpPrefix = serde_json::from_str("\"100.64.0.1/32\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"100.64.0.1/32\"");
        assert!(serde_json::from_str::<IpPrefix>("\"bogus\"").is_err());
        assert!(serde_json::from_str::<IpPrefix>("32").is_err());
    }
}
