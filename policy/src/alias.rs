//! The small grammars inside policy strings: aliases (`tag:web`,
//! `group:eng`, `alice@`, `10.0.0.0/8`, `autogroup:member`, host names),
//! `alias:ports` destinations, port lists, protocols and `proto:ports`.

use std::net::IpAddr;

use meshscale_wire::netip::IpPrefix;
use meshscale_wire::tailcfg::PortRange;

use crate::ipset::IpSet;

/// Tailscale's special groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AutoGroup {
    /// Every address outside the tailnet, reached through exit nodes.
    Internet,
    /// Every node owned by a user (not tagged).
    Member,
    /// Every tagged node.
    Tagged,
    /// The destination node's own user's nodes (per-node).
    SelfNodes,
    /// SSH: any local user except root.
    NonRoot,
    /// Every address, including outside the tailnet (`"*"` on the wire).
    DangerAll,
    /// Tailscale's admin-console roles (`autogroup:admin`, `owner`, ...).
    /// Headscale has no such roles, so they match no one; they are
    /// accepted where Tailscale accepts them for nodes' attributes and tag
    /// ownership.
    Role(&'static str),
}

const ROLES: &[&str] = &[
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:it-admin",
    "autogroup:network-admin",
    "autogroup:billing-admin",
    "autogroup:auditor",
    "autogroup:shared",
];

impl AutoGroup {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "autogroup:internet" => Self::Internet,
            "autogroup:member" => Self::Member,
            "autogroup:tagged" => Self::Tagged,
            "autogroup:self" => Self::SelfNodes,
            "autogroup:nonroot" => Self::NonRoot,
            "autogroup:danger-all" => Self::DangerAll,
            _ => return ROLES.iter().find(|r| **r == name).map(|r| Self::Role(r)),
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Internet => "autogroup:internet",
            Self::Member => "autogroup:member",
            Self::Tagged => "autogroup:tagged",
            Self::SelfNodes => "autogroup:self",
            Self::NonRoot => "autogroup:nonroot",
            Self::DangerAll => "autogroup:danger-all",
            Self::Role(name) => name,
        }
    }
}

/// One parsed alias.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Alias {
    /// `*`: every tailnet address (and approved subnets as a source).
    Wildcard,
    /// `name@` or an email; matched against user names and emails.
    User(String),
    /// `user:*@domain`: every user whose email is in `domain`.
    UserDomain(String),
    Group(String),
    Tag(String),
    /// A name from `hosts`.
    Host(String),
    /// An address, prefix or `a-b` range (`zero_bits`: a `/0` prefix).
    Addr {
        set: IpSet,
        zero_bits: bool,
    },
    AutoGroup(AutoGroup),
}

impl Alias {
    /// Parses the way Headscale does: an address first, then the prefixed
    /// kinds, then a bare host name.
    pub(crate) fn parse(text: &str) -> Result<Alias, String> {
        let s = text.trim();
        if let Some(addr) = parse_addr_set(s) {
            return Ok(addr);
        }
        if s == "*" {
            return Ok(Alias::Wildcard);
        }
        if let Some(domain) = s.strip_prefix("user:*@") {
            return Ok(Alias::UserDomain(domain.to_string()));
        }
        if s.contains('@') {
            return Ok(Alias::User(s.to_string()));
        }
        if s.starts_with("group:") {
            return Ok(Alias::Group(s.to_string()));
        }
        if s.starts_with("tag:") {
            validate_tag_name(s)?;
            return Ok(Alias::Tag(s.to_string()));
        }
        if s.starts_with("autogroup:") {
            return AutoGroup::parse(s)
                .map(Alias::AutoGroup)
                .ok_or_else(|| format!("unknown autogroup {s:?}"));
        }
        if !s.is_empty() && !s.contains(':') {
            return Ok(Alias::Host(s.to_string()));
        }
        Err(format!("invalid alias {s:?}"))
    }

    pub(crate) fn autogroup(&self) -> Option<AutoGroup> {
        match self {
            Alias::AutoGroup(ag) => Some(*ag),
            _ => None,
        }
    }

    pub(crate) fn is(&self, ag: AutoGroup) -> bool {
        self.autogroup() == Some(ag)
    }
}

/// `tag:` followed by a name starting with a letter.
pub(crate) fn validate_tag_name(s: &str) -> Result<(), String> {
    let rest = s.strip_prefix("tag:").unwrap_or("");
    match rest.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => Ok(()),
        _ => Err(format!("tag {s:?}: tag names must start with a letter")),
    }
}

/// An IP, a CIDR prefix or an `a-b` range of one family.
fn parse_addr_set(s: &str) -> Option<Alias> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Alias::Addr {
            set: IpSet::from_addr(ip),
            zero_bits: false,
        });
    }
    if s.contains('/') {
        let prefix: IpPrefix = s.parse().ok()?;
        return Some(Alias::Addr {
            set: IpSet::from_prefix(&prefix),
            zero_bits: prefix.bits() == 0,
        });
    }
    let (a, b) = s.split_once('-')?;
    let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
    if a.is_ipv4() != b.is_ipv4() || crate::ipset::to_u128(a) > crate::ipset::to_u128(b) {
        return None;
    }
    let mut set = IpSet::new();
    set.add_ip_range(a, b);
    Some(Alias::Addr {
        set,
        zero_bits: false,
    })
}

/// Splits `alias:ports` at the last colon (`[v6]:ports` allowed).
pub(crate) fn split_dst_ports(input: &str) -> Result<(String, String), String> {
    let mut text = input.to_string();
    if let Some(rest) = input.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err("square brackets are only valid around IPv6 addresses".into());
        };
        let host = &rest[..close];
        if !matches!(host.parse::<IpAddr>(), Ok(IpAddr::V6(_))) {
            return Err(format!(
                "square brackets are only valid around IPv6 addresses: {host:?}"
            ));
        }
        let after = &rest[close + 1..];
        if !after.starts_with(':') && !after.starts_with('/') {
            return Err(format!(
                "square brackets are only valid around IPv6 addresses: {input:?}"
            ));
        }
        text = format!("{host}{after}");
    }
    let Some(idx) = text.rfind(':') else {
        return Err("destination must be alias:ports (no colon)".into());
    };
    if idx == 0 {
        return Err("destination cannot start with a colon".into());
    }
    if idx == text.len() - 1 {
        return Err("destination cannot end with a colon".into());
    }
    Ok((text[..idx].to_string(), text[idx + 1..].to_string()))
}

/// `*`, `n`, `n-m`, or a comma-separated list of those. A single port must
/// be > 0, as Tailscale requires.
pub(crate) fn parse_ports(def: &str) -> Result<Vec<PortRange>, String> {
    if def == "*" {
        return Ok(vec![PortRange::ANY]);
    }
    let mut out = Vec::new();
    for part in def.split(',') {
        if part.contains('-') {
            let pieces: Vec<&str> = part.split('-').filter(|p| !p.is_empty()).collect();
            let [a, b] = pieces.as_slice() else {
                return Err(format!("port range {def:?}: invalid port range format"));
            };
            let first = parse_port(def, a)?;
            let last = parse_port(def, b)?;
            if first > last {
                return Err(format!(
                    "port range {def:?}: first port is greater than last port"
                ));
            }
            out.push(PortRange { first, last });
        } else {
            let port = parse_port(def, part)?;
            if port == 0 {
                return Err(format!(
                    "port range {part:?}: first port must be >0, or use '*' for wildcard"
                ));
            }
            out.push(PortRange {
                first: port,
                last: port,
            });
        }
    }
    Ok(out)
}

fn parse_port(def: &str, s: &str) -> Result<u16, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| format!("port range {def:?}: invalid first integer"))?;
    u16::try_from(n).map_err(|_| format!("port range {def:?}: port number out of range"))
}

/// A protocol: `None` = Tailscale's default (TCP, UDP, ICMP); otherwise the
/// IANA number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proto(pub(crate) Option<u8>);

const NAMED_PROTOS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("ipv4", 4),
    ("ip-in-ip", 4),
    ("tcp", 6),
    ("egp", 8),
    ("igp", 9),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", 58),
    ("sctp", 132),
    ("fc", 133),
];

impl Proto {
    /// A protocol name (any case) or number 1–255; empty = default.
    pub(crate) fn parse(text: &str) -> Result<Proto, String> {
        let s = text.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Ok(Proto(None));
        }
        if s == "*" {
            return Err(
                "proto name \"*\" not known; use protocol number 0-255 or protocol name (icmp, tcp, udp, etc.)"
                    .into(),
            );
        }
        if let Some((_, n)) = NAMED_PROTOS.iter().find(|(name, _)| *name == s) {
            return Ok(Proto(Some(*n)));
        }
        if s.starts_with('0') {
            return Err(format!("protocol number {s:?} has a leading zero"));
        }
        match s.parse::<u16>() {
            Ok(n) if (1..=255).contains(&n) => Ok(Proto(Some(n as u8))),
            Ok(n) => Err(format!("protocol number {n} is out of range 0-255")),
            Err(_) => Err(format!(
                "protocol {s:?} must be a known protocol name or valid protocol number 0-255"
            )),
        }
    }

    /// Only TCP, UDP, SCTP (and the default) have ports.
    pub(crate) fn has_ports(self) -> bool {
        matches!(self.0, None | Some(6) | Some(17) | Some(132))
    }

    /// The wire form (`IPProto`): empty for the default.
    pub(crate) fn numbers(self) -> Vec<i64> {
        self.0.map(|n| vec![i64::from(n)]).unwrap_or_default()
    }
}

/// One entry of a grant's `ip` list: `*`, `ports`, or `proto:ports`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProtoPorts {
    pub(crate) proto: Proto,
    pub(crate) ports: Vec<PortRange>,
}

impl ProtoPorts {
    pub(crate) fn parse(text: &str) -> Result<ProtoPorts, String> {
        if text == "*" {
            return Ok(ProtoPorts {
                proto: Proto(None),
                ports: vec![PortRange::ANY],
            });
        }
        let Some((proto, ports)) = text.split_once(':') else {
            return Ok(ProtoPorts {
                proto: Proto(None),
                ports: parse_ports(text)?,
            });
        };
        if ports.contains(':') {
            return Err(format!("{text:?}: expected proto:ports"));
        }
        let proto = Proto::parse(proto)?;
        let ports = parse_ports(ports)?;
        if !proto.has_ports() && ports.iter().any(|p| *p != PortRange::ANY) {
            return Err(format!(
                "{text:?}: protocol does not support specific ports, only \"*\" is allowed"
            ));
        }
        Ok(ProtoPorts { proto, ports })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn aliases() {
        assert_eq!(Alias::parse("*").unwrap(), Alias::Wildcard);
        assert_eq!(
            Alias::parse("alice@").unwrap(),
            Alias::User("alice@".into())
        );
        assert_eq!(
            Alias::parse(" tag:web ").unwrap(),
            Alias::Tag("tag:web".into())
        );
        assert!(matches!(
            Alias::parse("10.0.0.0/8").unwrap(),
            Alias::Addr { .. }
        ));
        assert!(matches!(
            Alias::parse("10.0.0.1-10.0.0.9").unwrap(),
            Alias::Addr { .. }
        ));
        assert_eq!(Alias::parse("web").unwrap(), Alias::Host("web".into()));
        assert!(Alias::parse("autogroup:nope").is_err());
        assert!(Alias::parse("tag:9x").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("*").unwrap(), vec![PortRange::ANY]);
        assert_eq!(parse_ports("22,80-90").unwrap().len(), 2);
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("ssh").is_err());
        assert!(parse_ports("90-80").is_err());
        assert!(parse_ports("70000").is_err());
    }

    #[test]
    fn dst_split() {
        assert_eq!(
            split_dst_ports("tag:web:80").unwrap(),
            ("tag:web".to_string(), "80".to_string())
        );
        assert_eq!(
            split_dst_ports("[fd7a::1]:22").unwrap(),
            ("fd7a::1".to_string(), "22".to_string())
        );
        assert!(split_dst_ports("tag").is_err());
    }

    #[test]
    fn protos() {
        assert_eq!(ProtoPorts::parse("tcp:22").unwrap().proto, Proto(Some(6)));
        assert!(ProtoPorts::parse("icmp").is_err());
        assert!(ProtoPorts::parse("icmp:*").is_ok());
        assert!(ProtoPorts::parse("icmp:22").is_err());
        assert!(Proto::parse("*").is_err());
    }
}
