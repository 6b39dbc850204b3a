//! Address plan: which mesh addresses exist and in which order they are handed out.
//!
//! Pure: the store decides which candidates are taken. Allocation is
//! sequential like Headscale's (`100.64.0.1`, `fd7a:115c:a1e0::1` first) and
//! walks forward from a persisted high-water mark, so the address of a
//! deleted node comes back only after the whole range has been used once.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Tailscale clients assume mesh addresses inside these ranges.
const CGNAT: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
const TAILSCALE_ULA: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);
/// MagicDNS resolver address (Quad100) and its IPv6 twin; ChromeOS VM range.
const QUAD100_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
const QUAD100_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
const CHROMEOS_VM: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 115, 92, 0), 23);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix4 {
    network: u32,
    len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix6 {
    network: u128,
    len: u8,
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

fn split_prefix(s: &str) -> Result<(&str, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a prefix like 100.64.0.0/10"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?} has an invalid prefix length"))?;
    Ok((addr, len))
}

impl FromStr for Prefix4 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s)?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 prefix"))?;
        if len > 32 {
            return Err(format!("{s:?} has a prefix length over 32"));
        }
        Ok(Prefix4 {
            network: u32::from(addr) & mask32(len),
            len,
        })
    }
}

impl FromStr for Prefix6 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s)?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv6 prefix"))?;
        if len > 128 {
            return Err(format!("{s:?} has a prefix length over 128"));
        }
        Ok(Prefix6 {
            network: u128::from(addr) & mask128(len),
            len,
        })
    }
}

impl fmt::Display for Prefix4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.len)
    }
}

impl fmt::Display for Prefix6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv6Addr::from(self.network), self.len)
    }
}

impl Prefix4 {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask32(self.len) == self.network
    }
    fn last(&self) -> u32 {
        self.network | !mask32(self.len)
    }
    /// Usable host addresses: not the network or broadcast address, not a reserved service address.
    pub fn is_assignable(&self, a: Ipv4Addr) -> bool {
        let n = u32::from(a);
        let chromeos = Prefix4 {
            network: u32::from(CHROMEOS_VM.0),
            len: CHROMEOS_VM.1,
        };
        self.contains(a)
            && n != self.network
            && n != self.last()
            && a != QUAD100_V4
            && !chromeos.contains(a)
    }
    /// Candidates in hand-out order after `cursor`: forward to the end of the range, then from the start.
    pub fn candidates(&self, cursor: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = self.network.saturating_add(1);
        let last = self.last().saturating_sub(1);
        let start = match cursor.map(u32::from) {
            Some(c) if c >= first && c < last => c + 1,
            _ => first,
        };
        (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .filter(|a| self.is_assignable(*a))
    }
}

impl Prefix6 {
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        u128::from(a) & mask128(self.len) == self.network
    }
    fn last(&self) -> u128 {
        self.network | !mask128(self.len)
    }
    pub fn is_assignable(&self, a: Ipv6Addr) -> bool {
        self.contains(a) && u128::from(a) != self.network && a != QUAD100_V6
    }
    pub fn candidates(&self, cursor: Option<Ipv6Addr>) -> impl Iterator<Item = Ipv6Addr> + '_ {
        let first = self.network.saturating_add(1);
        let last = self.last();
        let start = match cursor.map(u128::from) {
            Some(c) if self.contains(Ipv6Addr::from(c)) && c >= first && c < last => c + 1,
            _ => first,
        };
        let forward = U128Range {
            next: start,
            end: last,
            done: false,
        };
        let wrapped = U128Range {
            next: first,
            end: start.saturating_sub(1),
            done: start <= first,
        };
        forward
            .chain(wrapped)
            .map(Ipv6Addr::from)
            .filter(|a| self.is_assignable(*a))
    }
}

/// What address allocation needs to know about a family, so one allocator serves both.
pub trait AddressFamily: fmt::Display {
    type Addr: Copy + fmt::Display + FromStr;
    /// The family's row in the allocator table and its column in `nodes`.
    const CURSOR: &'static str;
    const COLUMN: &'static str;
    const NAME: &'static str;
    fn candidates(
        &self,
        cursor: Option<Self::Addr>,
    ) -> Box<dyn Iterator<Item = Self::Addr> + Send + '_>;
}

impl AddressFamily for Prefix4 {
    type Addr = Ipv4Addr;
    const CURSOR: &'static str = "v4";
    const COLUMN: &'static str = "ipv4";
    const NAME: &'static str = "IPv4";
    fn candidates(
        &self,
        cursor: Option<Ipv4Addr>,
    ) -> Box<dyn Iterator<Item = Ipv4Addr> + Send + '_> {
        Box::new(Prefix4::candidates(self, cursor))
    }
}

impl AddressFamily for Prefix6 {
    type Addr = Ipv6Addr;
    const CURSOR: &'static str = "v6";
    const COLUMN: &'static str = "ipv6";
    const NAME: &'static str = "IPv6";
    fn candidates(
        &self,
        cursor: Option<Ipv6Addr>,
    ) -> Box<dyn Iterator<Item = Ipv6Addr> + Send + '_> {
        Box::new(Prefix6::candidates(self, cursor))
    }
}

/// `RangeInclusive<u128>` is not an iterator in std; this is.
struct U128Range {
    next: u128,
    end: u128,
    done: bool,
}

impl Iterator for U128Range {
    type Item = u128;
    fn next(&mut self) -> Option<u128> {
        if self.done {
            return None;
        }
        let v = self.next;
        if v >= self.end {
            self.done = true;
        } else {
            self.next += 1;
        }
        Some(v)
    }
}

/// The validated pair of mesh prefixes.
#[derive(Debug, Clone, Copy)]
pub struct IpPrefixes {
    pub v4: Prefix4,
    pub v6: Prefix6,
}

impl IpPrefixes {
    /// Refuses prefixes outside the ranges Tailscale clients accept, or too small to hold a node.
    pub fn new(v4: Prefix4, v6: Prefix6) -> Result<Self, (&'static str, String)> {
        let cgnat = Prefix4 {
            network: u32::from(CGNAT.0),
            len: CGNAT.1,
        };
        if v4.len < CGNAT.1 || !cgnat.contains(Ipv4Addr::from(v4.network)) {
            return Err(("prefixes.v4", format!("{v4} is not inside 100.64.0.0/10")));
        }
        if v4.len > 30 {
            return Err(("prefixes.v4", format!("{v4} is too small: at most /30")));
        }
        let ula = Prefix6 {
            network: u128::from(TAILSCALE_ULA.0),
            len: TAILSCALE_ULA.1,
        };
        if v6.len < TAILSCALE_ULA.1 || !ula.contains(Ipv6Addr::from(v6.network)) {
            return Err((
                "prefixes.v6",
                format!("{v6} is not inside fd7a:115c:a1e0::/48"),
            ));
        }
        if v6.len > 126 {
            return Err(("prefixes.v6", format!("{v6} is too small: at most /126")));
        }
        Ok(IpPrefixes { v4, v6 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p4(s: &str) -> Prefix4 {
        s.parse().unwrap()
    }
    fn p6(s: &str) -> Prefix6 {
        s.parse().unwrap()
    }

    #[test]
    fn first_addresses_match_headscale() {
        let v4 = p4("100.64.0.0/10");
        let v6 = p6("fd7a:115c:a1e0::/48");
        let a: Vec<_> = v4.candidates(None).take(2).collect();
        assert_eq!(
            a,
            [Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2)]
        );
        assert_eq!(
            v6.candidates(None).next().unwrap().to_string(),
            "fd7a:115c:a1e0::1"
        );
    }

    #[test]
    fn walks_forward_then_wraps() {
        let v4 = p4("100.64.0.0/29"); // hosts .1 to .6
        let order: Vec<_> = v4
            .candidates(Some(Ipv4Addr::new(100, 64, 0, 4)))
            .map(|a| a.octets()[3])
            .collect();
        assert_eq!(order, [5, 6, 1, 2, 3, 4]);
        let from_end: Vec<_> = v4
            .candidates(Some(Ipv4Addr::new(100, 64, 0, 6)))
            .map(|a| a.octets()[3])
            .collect();
        assert_eq!(from_end, [1, 2, 3, 4, 5, 6]);
        let v6 = p6("fd7a:115c:a1e0::/125"); // ::1 to ::7
        let order: Vec<_> = v6
            .candidates(Some("fd7a:115c:a1e0::5".parse().unwrap()))
            .map(|a| a.segments()[7])
            .collect();
        assert_eq!(order, [6, 7, 1, 2, 3, 4, 5]);
        let from_end: Vec<_> = v6
            .candidates(Some("fd7a:115c:a1e0::7".parse().unwrap()))
            .map(|a| a.segments()[7])
            .collect();
        assert_eq!(from_end, [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn skips_service_addresses() {
        let v4 = p4("100.100.100.0/24");
        assert!(!v4.candidates(None).any(|a| a == QUAD100_V4));
        let v6 = p6("fd7a:115c:a1e0::/120");
        assert!(!v6.candidates(None).any(|a| a == QUAD100_V6));
        let chromeos = p4("100.115.92.0/22");
        assert!(chromeos.candidates(None).all(|a| a.octets()[2] >= 94));
    }

    #[test]
    fn prefixes_outside_tailscale_ranges_are_refused() {
        assert!(IpPrefixes::new(p4("10.0.0.0/8"), p6("fd7a:115c:a1e0::/48")).is_err());
        assert!(IpPrefixes::new(p4("100.0.0.0/8"), p6("fd7a:115c:a1e0::/48")).is_err());
        assert!(IpPrefixes::new(p4("100.64.0.0/10"), p6("fd00::/8")).is_err());
        assert!(IpPrefixes::new(p4("100.64.0.0/32"), p6("fd7a:115c:a1e0::/48")).is_err());
        assert!(IpPrefixes::new(p4("100.64.0.0/24"), p6("fd7a:115c:a1e0:1::/64")).is_ok());
        assert!("100.64.0.0".parse::<Prefix4>().is_err());
        assert!("100.64.0.0/33".parse::<Prefix4>().is_err());
    }
}
