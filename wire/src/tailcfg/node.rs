//! `tailcfg.Node` (self and peers in a netmap) and `tailcfg.UserProfile`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    CapMap, CapabilityVersion, DerpRegionId, DnsResolver, Hostinfo, IpPrefix, NodeId, StableNodeId,
    UserId,
};
use crate::gojson;
use crate::key::{DiscoPublic, MachinePublic, NodePublic};

/// The fake IP of the legacy `Node.DERP` string: "127.3.3.40" is the digits
/// above the keys D, E, R, P.
pub const DERP_MAGIC_IP: &str = "127.3.3.40";

/// The legacy `Node.DERP` value for a home region: `"127.3.3.40:<region>"`.
pub fn legacy_derp_string(region: DerpRegionId) -> String {
    format!("{DERP_MAGIC_IP}:{region}")
}

/// The region id inside a legacy `Node.DERP` string, if it is one.
pub fn parse_legacy_derp_string(s: &str) -> Option<DerpRegionId> {
    let port = s.strip_prefix(DERP_MAGIC_IP)?.strip_prefix(':')?;
    port.parse().ok().filter(|r: &DerpRegionId| *r > 0)
}

/// A device in a tailnet, as sent to itself (`MapResponse.Node`) and to its
/// peers (`Peers`, `PeersChanged`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: NodeId,
    #[serde(rename = "StableID")]
    pub stable_id: StableNodeId,
    /// The MagicDNS FQDN with a trailing dot (`"host.example.ts.net."`);
    /// clients derive the tailnet's DNS suffix from the self node's name.
    pub name: String,
    /// The owning user (for tagged nodes, a placeholder user).
    pub user: UserId,
    /// The user who shared this node in, if not `user`.
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub sharer: UserId,
    /// WireGuard public key.
    pub key: NodePublic,
    /// `None` = never expires.
    #[serde(with = "gojson::zero_time", skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<DateTime<Utc>>,
    /// Tailnet-lock signature of `key`.
    #[serde(with = "gojson::base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub key_signature: Vec<u8>,
    #[serde(skip_serializing_if = "MachinePublic::is_zero")]
    pub machine: MachinePublic,
    /// Needed by peers for NAT traversal; from `MapRequest.DiscoKey`.
    #[serde(skip_serializing_if = "DiscoPublic::is_zero")]
    pub disco_key: DiscoPublic,
    /// The node's own tailnet addresses (`/32` and `/128`), IPv4 first.
    #[serde(deserialize_with = "gojson::nullable")]
    pub addresses: Vec<IpPrefix>,
    /// Ranges routed to this node. `None` means "same as `addresses`"
    /// (capability version ≥ 112); `Some(vec![])` means nothing.
    #[serde(rename = "AllowedIPs", skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpPrefix>>,
    /// UDP `ip:port` candidates for direct connections.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<String>,
    /// Legacy home DERP as `"127.3.3.40:<region>"`; see
    /// [`Node::home_derp_region`].
    #[serde(rename = "DERP", skip_serializing_if = "String::is_empty")]
    pub legacy_derp: String,
    /// Home DERP region id; 0 = unknown.
    #[serde(rename = "HomeDERP", skip_serializing_if = "gojson::is_zero_i64")]
    pub home_derp: DerpRegionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    #[serde(with = "gojson::zero_time", skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// The node's capability version, if known (not a capability list).
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub cap: CapabilityVersion,
    /// ACL tags (`"tag:x"`).
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    /// Subnet routes this node is the primary router for.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub primary_routes: Vec<IpPrefix>,
    /// When the node was last online; not updated while online. Headscale
    /// only sends it for offline peers (with `Online` it confuses clients).
    #[serde(with = "gojson::opt_time", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    /// `None` = unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Must be true for the self node, or the client stops in
    /// `NeedsMachineAuth`.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub machine_authorized: bool,
    /// Deprecated capability list; clients fold it into `cap_map`.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub capabilities: Vec<String>,
    #[serde(
        deserialize_with = "gojson::nullable_map_values",
        skip_serializing_if = "CapMap::is_empty"
    )]
    pub cap_map: CapMap,
    /// Not signed by tailnet lock; may only reach peerapi.
    #[serde(
        rename = "UnsignedPeerAPIOnly",
        skip_serializing_if = "gojson::is_false"
    )]
    pub unsigned_peer_api_only: bool,
    /// Filled in by clients, not by control; servers should leave it empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub computed_name: String,
    /// Filled in by clients, not by control; servers should leave it empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub computed_name_with_host: String,
    #[serde(
        rename = "DataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub data_plane_audit_log_id: String,
    /// The key has expired. Clients only ever flip this false → true.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub expired: bool,
    /// The IPv4 address this peer knows the self node as, if masqueraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_node_v4_masq_addr_for_this_peer: Option<String>,
    /// The IPv6 address this peer knows the self node as, if masqueraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_node_v6_masq_addr_for_this_peer: Option<String>,
    /// A plain WireGuard peer: no disco, no DERP, needs `endpoints`.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub is_wire_guard_only: bool,
    /// May not initiate connections.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub is_jailed: bool,
    #[serde(
        rename = "ExitNodeDNSResolvers",
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exit_node_dns_resolvers: Vec<DnsResolver>,
}

impl Node {
    /// The home DERP region: `HomeDERP`, or else the legacy `DERP` string
    /// that old servers send (what the Go client does on receipt).
    pub fn home_derp_region(&self) -> Option<DerpRegionId> {
        if self.home_derp != 0 {
            return Some(self.home_derp);
        }
        parse_legacy_derp_string(&self.legacy_derp)
    }
}

/// Display data for a user (`tailcfg.UserProfile`), sent in
/// `MapResponse.UserProfiles` for the self node's and every peer's owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UserProfile {
    #[serde(rename = "ID")]
    pub id: UserId,
    /// For display only, e.g. `"alice@example.com"`.
    pub login_name: String,
    pub display_name: String,
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_derp_strings() {
        assert_eq!(legacy_derp_string(999), "127.3.3.40:999");
        assert_eq!(parse_legacy_derp_string("127.3.3.40:999"), Some(999));
        for bad in [
            "",
            "127.3.3.40",
            "127.3.3.40:",
            "127.3.3.40:0",
            "127.3.3.41:1",
            "127.3.3.40:x",
        ] {
            assert_eq!(parse_legacy_derp_string(bad), None, "{bad:?}");
        }
        let n = Node {
            legacy_derp: "127.3.3.40:7".into(),
            ..Node::default()
        };
        assert_eq!(n.home_derp_region(), Some(7));
        let n = Node {
            home_derp: 9,
            legacy_derp: "127.3.3.40:7".into(),
            ..Node::default()
        };
        assert_eq!(n.home_derp_region(), Some(9));
    }
}
