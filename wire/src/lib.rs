//! Wire types of the Tailscale control protocol, shared by the Meshscale
//! control server (which reads requests and writes responses) and the
//! Meshscale node agent (which does the reverse). Every type therefore
//! derives both `Serialize` and `Deserialize` and round-trips.
//!
//! The JSON must match what official Tailscale clients (v1.9x, capability
//! versions ~130–145) produce and accept. Field names, omission rules and
//! semantics were taken from the Go sources; the Rust is written from
//! scratch. Which Go source each module mirrors:
//!
//! | Module | Go source (`tailscale/tailscale`) |
//! |---|---|
//! | [`key`] | `types/key/{machine,node,disco,nl,chal,util}.go` |
//! | [`tailcfg`] `RegisterRequest`, `RegisterResponse`, `User`, `Login` | `tailcfg/tailcfg.go` |
//! | [`tailcfg`] `MapRequest`, `MapResponse`, `PeerChange`, `PingRequest`, `Debug`, `DisplayMessage`, `ClientVersion`, `ControlDialPlan` | `tailcfg/tailcfg.go` |
//! | [`tailcfg`] `Node`, `UserProfile`, `Hostinfo`, `NetInfo`, `Service`, `Location` | `tailcfg/tailcfg.go` |
//! | [`tailcfg`] `FilterRule`, `NetPortRange`, `PortRange`, `CapGrant` | `tailcfg/tailcfg.go` |
//! | [`tailcfg`] `DnsConfig`, `DnsRecord` / `DnsResolver` | `tailcfg/tailcfg.go` / `types/dnstype/dnstype.go` |
//! | [`tailcfg`] `SshPolicy`, `SshRule`, `SshPrincipal`, `SshAction` | `tailcfg/tailcfg.go` |
//! | [`tailcfg`] `OverTlsPublicKeyResponse`, `EarlyNoise` | `tailcfg/tailcfg.go` |
//! | [`tailcfg`] `DerpMap`, `DerpRegion`, `DerpNode`, `DerpAdmitClient*` | `tailcfg/derpmap.go` |
//! | [`framing`] | `control/controlclient/direct.go` (map stream reader) |
//! | [`netip`] | Go's `net/netip.Prefix` text form |
//! | [`gojson`] | Go `encoding/json` conventions (`time.Time`, `[]byte`, nil) |
//!
//! How clients interpret these messages is described in
//! `control/controlclient/{direct,map}.go`; Headscale's server-side use is in
//! `hscontrol/mapper/*.go` and `hscontrol/types/node.go`
//! (`juanfont/headscale`).
//!
//! What this crate deliberately does not do: cryptography (key generation,
//! X25519, Noise), compression (zstd), and I/O.

#![forbid(unsafe_code)]

pub mod framing;
pub mod gojson;
pub mod key;
pub mod netip;
pub mod tailcfg;

pub use key::{
    ChallengePublic, DiscoPublic, KeyParseError, MachinePrivate, MachinePublic, NlPublic,
    NodePrivate, NodePublic,
};
