//! `tailcfg.Hostinfo` and `tailcfg.NetInfo`: what a client reports about
//! itself. Only the fields a server or agent acts on are modelled; the rest
//! are kept verbatim in `other` so a server relaying a client's Hostinfo to
//! its peers loses nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DerpRegionId, IpPrefix, StableNodeId};
use crate::gojson;

/// Unmodelled JSON fields, kept verbatim.
pub type ExtraFields = serde_json::Map<String, serde_json::Value>;

/// Device information sent in register and map requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Hostinfo {
    /// Client version in `version.Long` form, e.g. `"1.96.2-t0123abcd-g4567"`.
    #[serde(
        rename = "IPNVersion",
        alias = "IpnVersion",
        skip_serializing_if = "String::is_empty"
    )]
    pub ipn_version: String,
    #[serde(rename = "FrontendLogID", skip_serializing_if = "String::is_empty")]
    pub frontend_log_id: String,
    #[serde(rename = "BackendLogID", skip_serializing_if = "String::is_empty")]
    pub backend_log_id: String,
    /// `"linux"`, `"windows"`, `"macOS"`, `"iOS"`, `"android"`, …
    #[serde(rename = "OS", skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(rename = "OSVersion", skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub env: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro_code_name: String,
    /// Set by tsnet applications to tell them apart.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desktop: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub package: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_model: String,
    /// The OS hostname; servers derive the node's DNS name from it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub shields_up: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub sharee_node: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub no_logs_no_support: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub wire_ingress: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub ingress_enabled: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub allows_update: bool,
    /// `uname -m`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub machine: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_arch: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_arch_var: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_version: String,
    /// Routes the client offers to serve (subnet router / exit node).
    #[serde(
        rename = "RoutableIPs",
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routable_ips: Vec<IpPrefix>,
    /// ACL tags the client asks for (`--advertise-tags`).
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_tags: Vec<String>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub services: Vec<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_info: Option<NetInfo>,
    /// Advertised SSH host keys; non-empty means Tailscale SSH is enabled.
    #[serde(
        rename = "sshHostKeys",
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ssh_host_keys: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cloud: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userspace: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userspace_router: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_connector: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub services_hash: String,
    /// Willing to relay traffic for other peers.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub peer_relay: bool,
    /// The exit node the client selected, if any.
    #[serde(rename = "ExitNodeID", skip_serializing_if = "String::is_empty")]
    pub exit_node_id: StableNodeId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_encrypted: Option<bool>,
    /// Every other field the client sent (e.g. `TPM`, `WoLMACs`,
    /// `PushDeviceToken`, fields newer than this crate), re-emitted as is.
    #[serde(flatten)]
    pub other: ExtraFields,
}

/// A service a node advertises (`tailcfg.Service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    /// `"tcp"`, `"udp"`, `"peerapi4"`, `"peerapi6"`, `"peerapi-dns-proxy"`.
    pub proto: String,
    pub port: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Optional geographic data a node declares (`tailcfg.Location`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Location {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country_code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub city: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub city_code: String,
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub latitude: f64,
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub longitude: f64,
    /// Exit-node preference among matching locations; higher wins.
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub priority: i64,
}

/// The client's view of its network (`tailcfg.NetInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetInfo {
    #[serde(
        rename = "MappingVariesByDestIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub mapping_varies_by_dest_ip: Option<bool>,
    #[serde(
        rename = "WorkingIPv6",
        alias = "WorkingIpv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub working_ipv6: Option<bool>,
    #[serde(
        rename = "OSHasIPv6",
        alias = "OsHasIpv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_has_ipv6: Option<bool>,
    #[serde(
        rename = "WorkingUDP",
        alias = "WorkingUdp",
        skip_serializing_if = "Option::is_none"
    )]
    pub working_udp: Option<bool>,
    #[serde(rename = "WorkingICMPv4", skip_serializing_if = "Option::is_none")]
    pub working_icmpv4: Option<bool>,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub have_port_map: bool,
    #[serde(rename = "UPnP", skip_serializing_if = "Option::is_none")]
    pub upnp: Option<bool>,
    #[serde(rename = "PMP", skip_serializing_if = "Option::is_none")]
    pub pmp: Option<bool>,
    #[serde(rename = "PCP", skip_serializing_if = "Option::is_none")]
    pub pcp: Option<bool>,
    /// Home DERP region; 0 = unknown. Servers copy it to `Node.HomeDERP`.
    #[serde(
        rename = "PreferredDERP",
        alias = "PreferredDerp",
        skip_serializing_if = "gojson::is_zero_i64"
    )]
    pub preferred_derp: DerpRegionId,
    /// `"wired"`, `"wifi"`, `"mobile"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_type: String,
    /// Seconds to each DERP region, keyed `"<region>-v4"` / `"<region>-v6"`.
    #[serde(
        rename = "DERPLatency",
        alias = "DerpLatency",
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub derp_latency: BTreeMap<String, f64>,
    /// Linux firewall mode and reason, e.g. `"nft-forced"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firewall_mode: String,
    /// Unmodelled fields, re-emitted as is.
    #[serde(flatten)]
    pub other: ExtraFields,
}
