//! The JSON types of the Tailscale control protocol (Go package `tailcfg`).
//!
//! Conventions shared by every type here:
//!
//! * JSON names are Go's field names (PascalCase, acronyms as Go spells them:
//!   `DERPMap`, `IPv4`, `NodeID`) unless Go has an explicit tag, e.g. the
//!   lowerCamel `omitDefaultRegions`, `sshHostKeys` or the SSH policy types.
//! * Emit only what is meant: where Go has `omitempty`/`omitzero`, `None`,
//!   empty and zero values are skipped. Where Go distinguishes nil from empty
//!   (`MapResponse.PacketFilter`, `Node.AllowedIPs`, `DERPMap.Regions`, …) the
//!   field is an `Option` so both can be expressed.
//! * Unknown fields are ignored on input, as the Go client does. `Hostinfo`
//!   and `NetInfo` also keep them (see [`Hostinfo::other`]) because a server
//!   relays a client's Hostinfo to its peers.
//! * `null` where Go would write it for a nil slice or map is accepted.
//! * Go `opt.Bool` is `Option<bool>` (JSON `true`/`false`/`null`); Go
//!   `[]byte` is `Vec<u8>` as standard base64; `netip.Prefix` is
//!   [`IpPrefix`]; `netip.AddrPort`/`netip.Addr` stay `String` because Go
//!   may print zones (`fe80::1%eth0`) that `std::net` cannot parse, and one
//!   odd endpoint must not make a whole request unreadable.

mod derp;
mod dns;
mod filter;
mod hostinfo;
mod map;
mod node;
mod noise;
mod register;
mod ssh;

pub use derp::{
    DerpAdmitClientRequest, DerpAdmitClientResponse, DerpHomeParams, DerpMap, DerpNode, DerpRegion,
};
pub use dns::{DnsConfig, DnsRecord, DnsResolver};
pub use filter::{CapGrant, FilterRule, NetPortRange, PortRange};
pub use hostinfo::{Hostinfo, Location, NetInfo, Service};
pub use map::{
    ClientVersion, ControlDialPlan, ControlIpCandidate, Debug, DisplayMessage,
    DisplayMessageAction, EndpointType, MapRequest, MapResponse, PeerChange, PingRequest,
};
pub use node::{DERP_MAGIC_IP, Node, UserProfile, legacy_derp_string, parse_legacy_derp_string};
pub use noise::{EarlyNoise, OverTlsPublicKeyResponse};
pub use register::{
    Login, Oauth2Token, RegisterRequest, RegisterResponse, RegisterResponseAuth, User,
};
pub use ssh::{SshAction, SshPolicy, SshPrincipal, SshRecorderFailureAction, SshRule};

pub use crate::netip::IpPrefix;

/// What a client build understands; sent as `Version` in register and map
/// requests and as the Noise handshake version (so it must fit in `u16`).
pub type CapabilityVersion = i64;

/// The capability version our own node agent claims: 133, the value of the
/// official v1.96 client (Headscale's `capver` table).
///
/// Claiming a version promises to understand everything control may send
/// to clients of that version. 133 covers what the agent must handle —
/// `Node.HomeDERP` (111), nil `AllowedIPs` meaning `Addresses` (112),
/// `DERPRegion.NoMeasureNoHome` (115), `DisplayMessages` (117) — and is well
/// above Headscale's minimum (113). It stays below 137, from which servers may
/// answer `/machine/register` with HTTP 429 + `Retry-After`; raise it only
/// once the agent handles that.
pub const CURRENT_CAPABILITY_VERSION: CapabilityVersion = 133;

/// From this version clients read `Node.HomeDERP`; older ones need the
/// legacy `"DERP": "127.3.3.40:<region>"` string.
pub const CAPVER_HOME_DERP: CapabilityVersion = 111;

/// From this version clients treat a missing `Node.AllowedIPs` as equal to
/// `Addresses`.
pub const CAPVER_NIL_ALLOWED_IPS: CapabilityVersion = 112;

/// A node's integer id. Must be positive; keep below 2^53 for JavaScript.
pub type NodeId = i64;
/// The string form of a node id (Headscale: the decimal `NodeId`).
pub type StableNodeId = String;
/// A user's integer id.
pub type UserId = i64;
/// A login's integer id (unused by clients).
pub type LoginId = i64;
/// A DERP region id; 900–999 are reserved for self-hosted regions.
pub type DerpRegionId = i64;

/// Capability name → raw JSON arguments (Go `NodeCapMap`/`PeerCapMap`). A
/// capability without arguments has an empty list; Go's `null` for that
/// case is read as empty.
pub type CapMap = std::collections::BTreeMap<String, Vec<serde_json::Value>>;
