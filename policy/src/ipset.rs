//! Address sets as sorted, disjoint, non-adjacent inclusive intervals.
//!
//! IPv4 and IPv6 share one 128-bit space: an IPv4 address is stored as its
//! IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so one interval list holds
//! both families and set algebra needs no special cases. Tailnets never use
//! real addresses in `::ffff:0:0/96`, and the mapping is undone on output.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use meshscale_wire::netip::IpPrefix;

const V4_BASE: u128 = 0xffff_0000_0000;
const V4_LAST: u128 = V4_BASE | 0xffff_ffff;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IpSet {
    ranges: Vec<(u128, u128)>,
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_BASE | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128) -> IpAddr {
    if (V4_BASE..=V4_LAST).contains(&n) {
        // Lossless: the low 32 bits are the IPv4 address.
        IpAddr::V4(Ipv4Addr::from((n & 0xffff_ffff) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// First and last address of a prefix, in the shared space.
fn prefix_bounds(p: &IpPrefix) -> (u128, u128) {
    let start = to_u128(p.masked().addr());
    let host_bits = match p.addr() {
        IpAddr::V4(_) => 32 - u32::from(p.bits()),
        IpAddr::V6(_) => 128 - u32::from(p.bits()),
    };
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (start, start.saturating_add(span))
}

impl IpSet {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Every IPv4 and IPv6 address (`0.0.0.0/0` and `::/0`).
    pub(crate) fn all() -> Self {
        let mut s = Self::new();
        s.add_range(0, u128::MAX);
        s
    }

    pub(crate) fn from_prefix(p: &IpPrefix) -> Self {
        let mut s = Self::new();
        s.add_prefix(p);
        s
    }

    pub(crate) fn from_addr(ip: IpAddr) -> Self {
        let mut s = Self::new();
        s.add_addr(ip);
        s
    }

    /// Builds from many addresses at once (one sort, not one per address).
    pub(crate) fn from_addrs(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut s = Self {
            ranges: ips
                .into_iter()
                .map(|ip| {
                    let n = to_u128(ip);
                    (n, n)
                })
                .collect(),
        };
        s.normalize();
        s
    }

    /// The union of many sets (one sort, not one merge per set).
    pub(crate) fn union_of<'a>(sets: impl IntoIterator<Item = &'a IpSet>) -> Self {
        let mut s = Self {
            ranges: sets
                .into_iter()
                .flat_map(|x| x.ranges.iter().copied())
                .collect(),
        };
        s.normalize();
        s
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub(crate) fn add_addr(&mut self, ip: IpAddr) {
        let n = to_u128(ip);
        self.add_range(n, n);
    }

    pub(crate) fn add_prefix(&mut self, p: &IpPrefix) {
        let (a, b) = prefix_bounds(p);
        // A short IPv6 prefix (e.g. `::/0`) spans the IPv4-mapped block in
        // this shared space; it must not take IPv4 with it.
        if p.addr().is_ipv6() && a < V4_BASE && b > V4_LAST {
            self.add_range(a, V4_BASE - 1);
            self.add_range(V4_LAST + 1, b);
        } else {
            self.add_range(a, b);
        }
    }

    /// `0.0.0.0/0`.
    pub(crate) fn all_v4() -> Self {
        let mut s = Self::new();
        s.add_range(V4_BASE, V4_LAST);
        s
    }

    /// `::/0` (without the IPv4-mapped block).
    pub(crate) fn all_v6() -> Self {
        let mut s = Self::new();
        s.add_range(0, V4_BASE - 1);
        s.add_range(V4_LAST + 1, u128::MAX);
        s
    }

    /// Adds `[a, b]` (inclusive; `a <= b` is the caller's duty).
    pub(crate) fn add_range(&mut self, a: u128, b: u128) {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        // Appending past the end is the common case and needs no sort.
        match self.ranges.last_mut() {
            None => self.ranges.push((a, b)),
            Some(last) if a > last.1.saturating_add(1) => self.ranges.push((a, b)),
            Some(last) if a >= last.0 => last.1 = last.1.max(b),
            Some(_) => {
                self.ranges.push((a, b));
                self.normalize();
            }
        }
    }

    pub(crate) fn add_ip_range(&mut self, a: IpAddr, b: IpAddr) {
        self.add_range(to_u128(a), to_u128(b));
    }

    pub(crate) fn union_with(&mut self, other: &IpSet) {
        if other.is_empty() {
            return;
        }
        // Both lists are sorted: merge them in one pass.
        let mut merged: Vec<(u128, u128)> =
            Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() || j < other.ranges.len() {
            let next = match (self.ranges.get(i), other.ranges.get(j)) {
                (Some(a), Some(b)) if a <= b => {
                    i += 1;
                    *a
                }
                (Some(_), Some(b)) | (None, Some(b)) => {
                    j += 1;
                    *b
                }
                (Some(a), None) => {
                    i += 1;
                    *a
                }
                (None, None) => break,
            };
            match merged.last_mut() {
                Some(last) if next.0 <= last.1.saturating_add(1) => {
                    last.1 = last.1.max(next.1);
                }
                _ => merged.push(next),
            }
        }
        self.ranges = merged;
    }

    fn normalize(&mut self) {
        self.ranges.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(self.ranges.len());
        for &(a, b) in &self.ranges {
            match out.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => {
                    if b > last.1 {
                        last.1 = b;
                    }
                }
                _ => out.push((a, b)),
            }
        }
        self.ranges = out;
    }

    pub(crate) fn remove_prefix(&mut self, p: &IpPrefix) {
        let (ra, rb) = prefix_bounds(p);
        self.remove_range(ra, rb);
    }

    fn remove_range(&mut self, ra: u128, rb: u128) {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b < ra || a > rb {
                out.push((a, b));
                continue;
            }
            if a < ra {
                out.push((a, ra - 1));
            }
            if b > rb {
                out.push((rb + 1, b));
            }
        }
        self.ranges = out;
    }

    pub(crate) fn intersect(&self, other: &IpSet) -> IpSet {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a1, b1) = self.ranges[i];
            let (a2, b2) = other.ranges[j];
            let lo = a1.max(a2);
            let hi = b1.min(b2);
            if lo <= hi {
                out.push((lo, hi));
            }
            if b1 < b2 {
                i += 1;
            } else {
                j += 1;
            }
        }
        IpSet { ranges: out }
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let n = to_u128(ip);
        let idx = self.ranges.partition_point(|&(_, b)| b < n);
        self.ranges.get(idx).is_some_and(|&(a, _)| a <= n)
    }

    pub(crate) fn overlaps(&self, other: &IpSet) -> bool {
        !self.intersect(other).is_empty()
    }

    pub(crate) fn overlaps_prefix(&self, p: &IpPrefix) -> bool {
        self.overlaps(&IpSet::from_prefix(p))
    }

    pub(crate) fn is_subset_of(&self, other: &IpSet) -> bool {
        self.intersect(other) == *self
    }

    pub(crate) fn ranges(&self) -> &[(u128, u128)] {
        &self.ranges
    }

    /// The intervals to print: IPv4 first, then IPv6, where IPv6 pieces
    /// on both sides of the IPv4-mapped block are joined (that block never
    /// carries tailnet traffic, and `::/0` should read `::/0`).
    fn render_parts(&self) -> Vec<(u128, u128)> {
        let mut v4 = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for &(a, b) in &self.ranges {
            for (a, b) in split_families(a, b) {
                if (V4_BASE..=V4_LAST).contains(&a) {
                    v4.push((a, b));
                } else {
                    match v6.last_mut() {
                        Some(last) if last.1 == V4_BASE - 1 && a == V4_LAST + 1 => last.1 = b,
                        _ => v6.push((a, b)),
                    }
                }
            }
        }
        v4.extend(v6);
        v4
    }

    /// The set as the fewest CIDR prefixes.
    pub(crate) fn prefixes(&self) -> Vec<IpPrefix> {
        let mut out = Vec::new();
        for (a, b) in self.render_parts() {
            range_to_prefixes(a, b, &mut out);
        }
        out
    }

    /// The set in Tailscale's text forms: a bare address for one address, a
    /// prefix when the interval is exactly one, else `first-last`.
    pub(crate) fn strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (a, b) in self.render_parts() {
            if a == b {
                out.push(from_u128(a).to_string());
                continue;
            }
            let mut one = Vec::new();
            range_to_prefixes(a, b, &mut one);
            match one.as_slice() {
                [p] => out.push(p.to_string()),
                _ => out.push(format!("{}-{}", from_u128(a), from_u128(b))),
            }
        }
        out
    }
}

fn split_families(a: u128, b: u128) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut cur = a;
    for (lo, hi) in [
        (0, V4_BASE - 1),
        (V4_BASE, V4_LAST),
        (V4_LAST + 1, u128::MAX),
    ] {
        if cur > b {
            break;
        }
        if cur > hi {
            continue;
        }
        let s = cur.max(lo);
        let e = b.min(hi);
        if s <= e {
            out.push((s, e));
            cur = e.saturating_add(1);
            if e == u128::MAX {
                break;
            }
        }
    }
    out
}

/// Largest aligned blocks covering `[a, b]` (one family).
fn range_to_prefixes(a: u128, b: u128, out: &mut Vec<IpPrefix>) {
    let is_v4 = (V4_BASE..=V4_LAST).contains(&a);
    let mut cur = a;
    loop {
        // Largest block size 2^k aligned at `cur` and not past `b`.
        let align = if cur == 0 { 128 } else { cur.trailing_zeros() };
        let mut k = align.min(if is_v4 { 32 } else { 128 });
        while k > 0 {
            let last = if k == 128 {
                u128::MAX
            } else {
                cur + ((1u128 << k) - 1)
            };
            if last <= b && (k == 128 || cur.checked_add((1u128 << k) - 1).is_some()) {
                break;
            }
            k -= 1;
        }
        let bits = if is_v4 { 32 - k } else { 128 - k };
        if let Ok(p) = IpPrefix::new(from_u128(cur), bits as u8) {
            out.push(p);
        }
        let span_last = if k == 128 {
            u128::MAX
        } else {
            cur + ((1u128 << k) - 1)
        };
        if span_last >= b {
            break;
        }
        cur = span_last + 1;
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    #[test]
    fn wildcard_shape_prints_like_tailscale() {
        let mut s = IpSet::from_prefix(&p("100.64.0.0/10"));
        s.remove_prefix(&p("100.115.92.0/23"));
        s.add_prefix(&p("fd7a:115c:a1e0::/48"));
        assert_eq!(
            s.strings(),
            vec![
                "100.64.0.0-100.115.91.255",
                "100.115.94.0-100.127.255.255",
                "fd7a:115c:a1e0::/48"
            ]
        );
    }

    #[test]
    fn all_splits_into_two_families() {
        let all = IpSet::all();
        let ps: Vec<String> = all.prefixes().iter().map(|p| p.to_string()).collect();
        assert!(ps.contains(&"0.0.0.0/0".to_string()));
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(all.contains("::1".parse().unwrap()));
    }

    #[test]
    fn ipv6_default_route_leaves_ipv4_alone() {
        let v6 = IpSet::from_prefix(&p("::/0"));
        assert!(!v6.contains("100.64.0.1".parse().unwrap()));
        assert!(v6.contains("fd7a:115c:a1e0::1".parse().unwrap()));
        assert_eq!(v6, IpSet::all_v6());
        assert_eq!(v6.strings(), vec!["::/0".to_string()]);
        let mut both = IpSet::all_v4();
        both.union_with(&v6);
        assert_eq!(
            both.strings(),
            vec!["0.0.0.0/0".to_string(), "::/0".to_string()]
        );
    }

    #[test]
    fn algebra() {
        let a = IpSet::from_prefix(&p("10.0.0.0/8"));
        let b = IpSet::from_prefix(&p("10.33.0.0/16"));
        assert!(b.is_subset_of(&a));
        assert!(!a.is_subset_of(&b));
        assert_eq!(a.intersect(&b), b);
        assert_eq!(
            IpSet::from_addr("1.2.3.4".parse().unwrap()).strings(),
            vec!["1.2.3.4"]
        );
    }
}
