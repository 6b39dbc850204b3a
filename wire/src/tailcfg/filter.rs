//! Packet filter rules (`tailcfg.FilterRule` and friends).

use serde::{Deserialize, Serialize};

use super::{CapMap, IpPrefix};
use crate::gojson;

/// One allow rule. Sources are matched by `src_ips`; then either
/// `dst_ports` (network access) or `cap_grant` (application capabilities)
/// applies — at most one of the two is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FilterRule {
    /// IPs, CIDRs, `a-b` ranges, `"*"`, or `"cap:<name>"`.
    #[serde(rename = "SrcIPs", deserialize_with = "gojson::nullable")]
    pub src_ips: Vec<String>,
    /// Pre-capability-version-7 CIDR lengths for `src_ips`.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub src_bits: Vec<i64>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dst_ports: Vec<NetPortRange>,
    /// IP protocol numbers; empty = TCP, UDP and ICMP.
    #[serde(
        rename = "IPProto",
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_proto: Vec<i64>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cap_grant: Vec<CapGrant>,
}

impl FilterRule {
    /// The rule that lets everything through (Go's `FilterAllowAll`).
    pub fn allow_all() -> Self {
        Self {
            src_ips: vec!["*".into()],
            dst_ports: vec![NetPortRange {
                ip: "*".into(),
                bits: None,
                ports: PortRange::ANY,
            }],
            ..Self::default()
        }
    }
}

/// Destination addresses and ports (`tailcfg.NetPortRange`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetPortRange {
    /// Same forms as `FilterRule::src_ips`.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Deprecated CIDR length for `ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<i64>,
    pub ports: PortRange,
}

/// An inclusive port range (`tailcfg.PortRange`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ANY: Self = Self {
        first: 0,
        last: 65535,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Capabilities granted to sources for some destinations
/// (`tailcfg.CapGrant`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CapGrant {
    #[serde(deserialize_with = "gojson::nullable")]
    pub dsts: Vec<IpPrefix>,
    /// Deprecated; use `cap_map`.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub caps: Vec<String>,
    #[serde(
        deserialize_with = "gojson::nullable_map_values",
        skip_serializing_if = "CapMap::is_empty"
    )]
    pub cap_map: CapMap,
}
