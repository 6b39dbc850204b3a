//! `POST /machine/map` bodies: `tailcfg.MapRequest`, `MapResponse`,
//! `PeerChange` and the small types only a `MapResponse` carries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    CapMap, CapabilityVersion, DerpMap, DerpRegionId, DnsConfig, FilterRule, Hostinfo, Node,
    NodeId, SshPolicy, UserProfile,
};
use crate::gojson;
use crate::key::{DiscoPublic, NodePublic};

/// Where an endpoint in `MapRequest.Endpoints` came from
/// (`tailcfg.EndpointType`). Unknown values are kept.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EndpointType(pub i64);

impl EndpointType {
    pub const UNKNOWN: Self = Self(0);
    pub const LOCAL: Self = Self(1);
    pub const STUN: Self = Self(2);
    pub const PORTMAPPED: Self = Self(3);
    /// Hard NAT: STUN-learned IPv4 with the local port.
    pub const STUN4_LOCAL_PORT: Self = Self(4);
    pub const EXPLICIT_CONF: Self = Self(5);
}

/// A client's map poll or endpoint/Hostinfo update.
///
/// `stream && !omit_peers` is the long poll; `!stream && omit_peers` is a
/// "lite" update whose response body the client discards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MapRequest {
    pub version: CapabilityVersion,
    /// `"zstd"` (what official clients always send) or empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub compress: String,
    /// The client wants `{"KeepAlive":true}` messages when idle.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub keep_alive: bool,
    pub node_key: NodePublic,
    /// Always sent, possibly as the zero key.
    pub disco_key: DiscoPublic,
    /// Hardware attestation public key (`hwattestpub:<hex>`, not a
    /// Curve25519 key); kept opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_attestation_key: Option<String>,
    /// Signature of `"<unix time>|<node key>"` by the attestation key.
    #[serde(with = "gojson::base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub hardware_attestation_key_signature: Vec<u8>,
    #[serde(with = "gojson::zero_time", skip_serializing_if = "Option::is_none")]
    pub hardware_attestation_key_signature_timestamp: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub stream: bool,
    /// The client's current Hostinfo (Go sends `null` if it has none).
    #[serde(alias = "HostInfo", skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// Opaque handle of a map session to resume (servers may ignore it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub map_session_seq: i64,
    /// UDP `ip:port` endpoints, parallel to `endpoint_types`.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<String>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoint_types: Vec<EndpointType>,
    /// Tailnet-lock head hash, if the client runs tailnet lock.
    #[serde(rename = "TKAHead", skip_serializing_if = "String::is_empty")]
    pub tka_head: String,
    /// Deprecated: always false since capability version 68.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub omit_peers: bool,
    /// Free-form debug hints, e.g. `"warn-ip-forwarding-off"`.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub debug_flags: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connection_handle_for_test: String,
}

/// One netmap message from the server.
///
/// Absent/`None`/empty means "unchanged" for almost every field. The first
/// message of each stream must nevertheless be complete (`Node`, `DERPMap`,
/// `DNSConfig`, filters, `UserProfiles`, `Domain`): clients start every
/// stream with no memory of the previous one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MapResponse {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub seq: i64,
    /// An otherwise empty message; only `PingRequest`, `ControlTime` and
    /// `PopBrowserURL` are honoured alongside it. Use
    /// [`MapResponse::keep_alive`] to build one.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub keep_alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_request: Option<PingRequest>,
    #[serde(rename = "PopBrowserURL", skip_serializing_if = "String::is_empty")]
    pub pop_browser_url: String,
    /// The requesting node itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    #[serde(rename = "DERPMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<DerpMap>,
    /// The complete peer list, sorted by id. When non-empty, `peers_changed`
    /// and `peers_removed` are ignored by clients.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers: Vec<Node>,
    /// Added or changed peers (whole nodes), sorted by id.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_changed: Vec<Node>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_removed: Vec<NodeId>,
    /// Partial peer updates, applied after the fields above.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_changed_patch: Vec<PeerChange>,
    /// `true`: the peer's LastSeen is now; `false`: the peer is gone.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub peer_seen_change: BTreeMap<NodeId, bool>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub online_change: BTreeMap<NodeId, bool>,
    #[serde(rename = "DNSConfig", skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// The tailnet's name (Headscale: the server URL's host).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect_services: Option<bool>,
    /// Legacy single filter. `None` = unchanged; `Some(vec![])` blocks
    /// everything (Go's own type cannot express that; this one can).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// Named filter chunks, concatenated by the client. A `None` value
    /// deletes a chunk; key `"*"` with `None` clears all first;
    /// `packet_filter` is the chunk `"base"`.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "gojson::nullable"
    )]
    pub packet_filters: BTreeMap<String, Option<Vec<FilterRule>>>,
    /// New or changed user profiles only.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user_profiles: Vec<UserProfile>,
    /// Control-side health problems. `None` = unchanged; `Some(vec![])` =
    /// healthy. Not sent together with `display_messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// Structured health messages, as a patch: `None` deletes an id; key
    /// `"*"` with `None` clears all first (capability version ≥ 117).
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub display_messages: BTreeMap<String, Option<DisplayMessage>>,
    #[serde(rename = "SSHPolicy", skip_serializing_if = "Option::is_none")]
    pub ssh_policy: Option<SshPolicy>,
    /// The server's clock, used by clients to judge key expiry.
    #[serde(with = "gojson::opt_time", skip_serializing_if = "Option::is_none")]
    pub control_time: Option<DateTime<Utc>>,
    /// Tailnet-lock state, kept opaque. An initial `None` means TKA is off.
    #[serde(rename = "TKAInfo", skip_serializing_if = "Option::is_none")]
    pub tka_info: Option<serde_json::Value>,
    #[serde(
        rename = "DomainDataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub domain_data_plane_audit_log_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<Debug>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_dial_plan: Option<ControlDialPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<ClientVersion>,
    /// Deprecated: use the `default-auto-update` node capability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_auto_update: Option<bool>,
}

impl MapResponse {
    /// A keep-alive. It serialises to exactly `{"KeepAlive":true}`, the
    /// bytes clients recognise and cache.
    pub fn keep_alive() -> Self {
        Self {
            keep_alive: true,
            ..Self::default()
        }
    }
}

/// A partial update of one peer (`tailcfg.PeerChange`); `None`/zero/empty
/// fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeerChange {
    /// Unknown ids are ignored by clients.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// New home DERP region.
    #[serde(rename = "DERPRegion", skip_serializing_if = "gojson::is_zero_i64")]
    pub derp_region: DerpRegionId,
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub cap: CapabilityVersion,
    #[serde(
        deserialize_with = "gojson::nullable_map_values",
        skip_serializing_if = "CapMap::is_empty"
    )]
    pub cap_map: CapMap,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<NodePublic>,
    #[serde(with = "gojson::base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub key_signature: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<DiscoPublic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    #[serde(with = "gojson::opt_time", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    /// `Some(zero time)` means the key no longer expires.
    #[serde(with = "gojson::opt_time", skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<DateTime<Utc>>,
}

/// A request to the client to prove liveness or run a probe
/// (`tailcfg.PingRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PingRequest {
    /// Unique per request: `HEAD` it (no `types`) or `POST` results to it.
    #[serde(rename = "URL")]
    pub url: String,
    /// Reach `url` over the Noise channel rather than TLS.
    #[serde(rename = "URLIsNoise", skip_serializing_if = "gojson::is_false")]
    pub url_is_noise: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub log: bool,
    /// Comma-separated: `"disco"`, `"TSMP"`, `"ICMP"`, `"peerapi"`, or `"c2n"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub types: String,
    /// Ping target, for the ping types that need one.
    #[serde(rename = "IP", skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// For `c2n`: an HTTP/1.x request for the client's c2n handler.
    #[serde(with = "gojson::base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<u8>,
}

/// Remote debug settings (`tailcfg.Debug`). Headscale sends
/// `{"DisableLogTail":true}` so clients stop uploading logs to Tailscale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Debug {
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub sleep_seconds: f64,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub disable_log_tail: bool,
    /// Make the client exit with this code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i64>,
}

/// A structured health message (`tailcfg.DisplayMessage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DisplayMessage {
    pub title: String,
    pub text: String,
    /// `"high"`, `"medium"` or `"low"`.
    pub severity: String,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub impacts_connectivity: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_action: Option<DisplayMessageAction>,
}

/// A link offered with a [`DisplayMessage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DisplayMessageAction {
    #[serde(rename = "URL")]
    pub url: String,
    pub label: String,
}

/// Latest available client version (`tailcfg.ClientVersion`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientVersion {
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub running_latest: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub latest_version: String,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub urgent_security_update: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub notify: bool,
    #[serde(rename = "NotifyURL", skip_serializing_if = "String::is_empty")]
    pub notify_url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub notify_text: String,
}

/// How to reach the control server (`tailcfg.ControlDialPlan`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ControlDialPlan {
    /// Empty = use DNS.
    #[serde(deserialize_with = "gojson::nullable")]
    pub candidates: Vec<ControlIpCandidate>,
}

/// One way to dial the control server (`tailcfg.ControlIPCandidate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ControlIpCandidate {
    #[serde(rename = "IP", skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// Connect via an HTTPS CONNECT proxy at this host.
    #[serde(rename = "ACEHost", skip_serializing_if = "String::is_empty")]
    pub ace_host: String,
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub dial_start_delay_sec: f64,
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub dial_timeout_sec: f64,
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub priority: i64,
}
