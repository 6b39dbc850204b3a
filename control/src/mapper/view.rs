//! Pure builders: store records and live session data → the `tailcfg`
//! values a client receives. No locks, no I/O: the hub calls these.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use meshscale_wire::key::{DiscoPublic, MachinePublic, NodePublic};
use meshscale_wire::tailcfg::{
    CapabilityVersion, DerpMap, DnsConfig, DnsResolver, FilterRule, Hostinfo, IpPrefix,
    NetPortRange, Node, PortRange, UserProfile, legacy_derp_string,
};

use crate::store;

/// What a node reports on its map session; kept in memory by the hub and
/// mirrored to the store so peers see it after a server restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub disco_key: DiscoPublic,
    pub endpoints: Vec<String>,
    pub hostinfo: Option<Hostinfo>,
    pub capver: CapabilityVersion,
    pub online: bool,
    pub last_seen: Option<DateTime<Utc>>,
}

impl Live {
    /// The node's home DERP region, as its netcheck chose it.
    pub fn home_derp(&self) -> i64 {
        self.hostinfo
            .as_ref()
            .and_then(|h| h.net_info.as_ref())
            .map_or(0, |n| n.preferred_derp)
    }

    /// Rebuilds what the store kept from the last session.
    pub fn from_store(live: &store::NodeLive, last_seen: Option<DateTime<Utc>>) -> Live {
        Live {
            disco_key: live.disco_key.parse().unwrap_or_default(),
            endpoints: serde_json::from_str(&live.endpoints_json).unwrap_or_default(),
            hostinfo: serde_json::from_str(&live.hostinfo_json).ok(),
            capver: 0,
            online: false,
            last_seen,
        }
    }

    pub fn to_store(&self, hostname: &str) -> store::NodeLive {
        store::NodeLive {
            disco_key: if self.disco_key.is_zero() {
                String::new()
            } else {
                self.disco_key.to_string()
            },
            endpoints_json: serde_json::to_string(&self.endpoints).unwrap_or_else(|_| "[]".into()),
            hostinfo_json: self
                .hostinfo
                .as_ref()
                .and_then(|h| serde_json::to_string(h).ok())
                .unwrap_or_else(|| "{}".into()),
            hostname: hostname.to_string(),
        }
    }
}

/// Tailnet-wide settings every view needs.
#[derive(Debug, Clone)]
pub struct Tailnet {
    pub base_domain: Option<String>,
    /// `MapResponse.Domain`: the tailnet's name as clients display it.
    pub domain: String,
    pub derp_map: DerpMap,
    pub dns: DnsConfig,
}

const CAP_ADMIN: &str = "https://tailscale.com/cap/is-admin";
const CAP_SSH: &str = "https://tailscale.com/cap/ssh";

/// The FQDN with a trailing dot: clients take the MagicDNS suffix from their own name.
pub fn fqdn(given_name: &str, tailnet: &Tailnet) -> String {
    match &tailnet.base_domain {
        Some(d) => format!("{given_name}.{d}."),
        None => given_name.to_string(),
    }
}

/// How `node` looks to others (and, with `is_self`, to itself).
pub fn node_view(
    node: &store::Node,
    live: &Live,
    tailnet: &Tailnet,
    now: DateTime<Utc>,
    is_self: bool,
) -> Node {
    let mut addresses = Vec::with_capacity(2);
    if let Some(a) = node.ipv4 {
        addresses.push(IpPrefix::host(IpAddr::V4(a)));
    }
    if let Some(a) = node.ipv6 {
        addresses.push(IpPrefix::host(IpAddr::V6(a)));
    }
    let expired = node.is_expired(now);
    let home_derp = live.home_derp();
    let mut cap_map = BTreeMap::new();
    if is_self {
        cap_map.insert(CAP_ADMIN.to_string(), vec![]);
        cap_map.insert(CAP_SSH.to_string(), vec![]);
    }
    Node {
        id: node.id,
        stable_id: node.id.to_string(),
        name: fqdn(&node.given_name, tailnet),
        user: node.user.id,
        key: node.node_key.parse().unwrap_or(NodePublic::zero()),
        key_expiry: node.expiry,
        machine: node.machine_key.parse().unwrap_or(MachinePublic::zero()),
        disco_key: live.disco_key,
        allowed_ips: Some(addresses.clone()),
        addresses,
        endpoints: live.endpoints.clone(),
        legacy_derp: if home_derp > 0 {
            legacy_derp_string(home_derp)
        } else {
            String::new()
        },
        home_derp,
        hostinfo: Some(live.hostinfo.clone().unwrap_or_default()),
        created: Some(node.created_at),
        cap: live.capver,
        tags: node.tags.clone(),
        // An online peer with a LastSeen confuses clients; send it only for offline ones.
        last_seen: if live.online { None } else { live.last_seen },
        online: Some(live.online),
        machine_authorized: !expired,
        cap_map,
        expired,
        ..Node::default()
    }
}

pub fn user_profile(u: &store::User) -> UserProfile {
    let login_name = if u.email.is_empty() {
        u.name.clone()
    } else {
        u.email.clone()
    };
    UserProfile {
        id: u.id,
        display_name: if u.display_name.is_empty() {
            u.name.clone()
        } else {
            u.display_name.clone()
        },
        login_name,
        profile_pic_url: u.profile_pic_url.clone(),
        groups: vec![],
    }
}

/// Everyone may reach everyone: the policy until ACLs exist.
pub fn allow_all_filter() -> Vec<FilterRule> {
    vec![FilterRule {
        src_ips: vec!["*".into()],
        dst_ports: vec![NetPortRange {
            ip: "*".into(),
            bits: None,
            ports: PortRange::ANY,
        }],
        ..FilterRule::default()
    }]
}

pub fn dns_config(magic_dns: bool, base_domain: &str, nameservers: &[String]) -> DnsConfig {
    DnsConfig {
        resolvers: nameservers
            .iter()
            .map(|a| DnsResolver {
                addr: a.clone(),
                ..DnsResolver::default()
            })
            .collect(),
        domains: if magic_dns {
            vec![base_domain.to_string()]
        } else {
            vec![]
        },
        proxied: magic_dns,
        ..DnsConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::tailcfg::NetInfo;

    fn record() -> store::Node {
        let user = store::User {
            id: 3,
            name: "vpn1".into(),
            display_name: String::new(),
            email: String::new(),
            profile_pic_url: String::new(),
            created_at: Utc::now(),
        };
        store::Node {
            id: 7,
            machine_key: format!("mkey:{}", "1".repeat(64)),
            node_key: format!("nodekey:{}", "2".repeat(64)),
            disco_key: String::new(),
            hostname: "laptop".into(),
            given_name: "laptop".into(),
            user,
            ipv4: Some("100.64.0.7".parse().unwrap()),
            ipv6: Some("fd7a:115c:a1e0::7".parse().unwrap()),
            tags: vec![],
            ephemeral: false,
            auth_key_id: None,
            register_method: store::RegisterMethod::AuthKey,
            expiry: None,
            last_seen: None,
            created_at: Utc::now(),
        }
    }

    fn tailnet() -> Tailnet {
        Tailnet {
            base_domain: Some("mesh.internal".into()),
            domain: "mesh.internal".into(),
            derp_map: DerpMap::default(),
            dns: DnsConfig::default(),
        }
    }

    #[test]
    fn view_has_what_clients_need_to_run() {
        let mut live = Live {
            online: true,
            last_seen: Some(Utc::now()),
            ..Live::default()
        };
        live.hostinfo = Some(Hostinfo {
            net_info: Some(NetInfo {
                preferred_derp: 999,
                ..NetInfo::default()
            }),
            ..Hostinfo::default()
        });
        let v = node_view(&record(), &live, &tailnet(), Utc::now(), true);
        assert_eq!(v.name, "laptop.mesh.internal.");
        assert_eq!(v.stable_id, "7");
        assert!(v.machine_authorized && !v.expired);
        assert_eq!(v.home_derp, 999);
        assert_eq!(v.legacy_derp, "127.3.3.40:999");
        assert_eq!(v.last_seen, None, "online peers carry no LastSeen");
        let json = serde_json::to_string(&v).unwrap();
        assert!(
            json.contains(r#""Addresses":["100.64.0.7/32","fd7a:115c:a1e0::7/128"]"#),
            "{json}"
        );
        assert!(json.contains(CAP_ADMIN));
    }

    #[test]
    fn expired_nodes_are_not_authorized() {
        let mut r = record();
        r.expiry = Some(Utc::now() - chrono::Duration::seconds(5));
        let v = node_view(&r, &Live::default(), &tailnet(), Utc::now(), false);
        assert!(v.expired && !v.machine_authorized);
        assert!(
            v.cap_map.is_empty(),
            "peers do not get the self capabilities"
        );
    }
}
