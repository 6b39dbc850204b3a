//! DNS configuration pushed to clients (`tailcfg.DNSConfig`,
//! `tailcfg.DNSRecord`, `types/dnstype.Resolver`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gojson;

/// A client's DNS settings; `MapResponse.DNSConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DnsConfig {
    /// Global resolvers, in order of preference.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resolvers: Vec<DnsResolver>,
    /// Split DNS: name suffix → resolvers. An empty list means "answer from
    /// the built-in resolver" (e.g. for `extra_records`).
    #[serde(
        deserialize_with = "gojson::nullable_map_values",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub routes: BTreeMap<String, Vec<DnsResolver>>,
    /// Resolvers used only when split DNS needs a default on platforms that
    /// cannot otherwise keep the OS resolvers.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub fallback_resolvers: Vec<DnsResolver>,
    /// Search domains, FQDNs without the trailing dot.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub domains: Vec<String>,
    /// Turns MagicDNS on (the name is historical).
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub proxied: bool,
    /// Deprecated (capability versions 9–13); use `resolvers`.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    /// Names control can get TLS certificates for.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cert_domains: Vec<String>,
    /// Extra A/AAAA records served by MagicDNS.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_records: Vec<DnsRecord>,
    /// Suffixes an exit node's DNS proxy must not answer.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exit_node_filtered_set: Vec<String>,
}

/// One DNS resolver (`dnstype.Resolver`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DnsResolver {
    /// An IP (port 53), `ip:port`, or a DoH `https://` URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// Suggested IPs for a DoH/DoT host name (unused by clients so far).
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub bootstrap_resolution: Vec<String>,
    /// Keep using this resolver while an exit node is in use (capability
    /// version ≥ 125).
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub use_with_exit_node: bool,
}

impl DnsResolver {
    /// A classic resolver at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ..Self::default()
        }
    }
}

/// An extra MagicDNS record (`tailcfg.DNSRecord`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DnsRecord {
    /// FQDN; the trailing dot is optional.
    pub name: String,
    /// Empty = A or AAAA depending on `value`; other types are ignored.
    #[serde(rename = "Type", skip_serializing_if = "String::is_empty")]
    pub record_type: String,
    /// The IP address.
    pub value: String,
}
