//! DERP relay map (`tailcfg/derpmap.go`) and the DERP admission check.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::DerpRegionId;
use crate::gojson;
use crate::key::NodePublic;

/// The DERP relays a client may use. Region ids are JSON object keys, i.e.
/// decimal strings (`{"Regions":{"999":{…}}}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DerpMap {
    /// A change in home-region selection parameters; `None` = unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_params: Option<DerpHomeParams>,
    /// The regions by id. `None` (JSON null/absent) means unchanged from
    /// the previous map in the stream; the first map of a stream must set
    /// it. `null` region entries, which Headscale once sent and the Go
    /// client drops, are dropped on input.
    #[serde(
        deserialize_with = "regions_without_nulls",
        skip_serializing_if = "Option::is_none"
    )]
    pub regions: Option<BTreeMap<DerpRegionId, DerpRegion>>,
    /// Use only these regions, not Tailscale's defaults. Go's JSON tag is
    /// lowerCamel here.
    #[serde(
        rename = "omitDefaultRegions",
        alias = "OmitDefaultRegions",
        skip_serializing_if = "gojson::is_false"
    )]
    pub omit_default_regions: bool,
}

fn regions_without_nulls<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<DerpRegionId, DerpRegion>>, D::Error> {
    let raw: Option<BTreeMap<DerpRegionId, Option<DerpRegion>>> = Option::deserialize(d)?;
    Ok(raw.map(|m| {
        m.into_iter()
            .filter_map(|(id, r)| r.map(|r| (id, r)))
            .collect()
    }))
}

/// Home-region selection tuning (`tailcfg.DERPHomeParams`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DerpHomeParams {
    /// Latency multiplier per region (<1 preferred, >1 penalised). `None` =
    /// unchanged; `Some(empty)` resets all scores to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_score: Option<BTreeMap<DerpRegionId, f64>>,
}

/// A geographic region of DERP nodes (`tailcfg.DERPRegion`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DerpRegion {
    #[serde(rename = "RegionID")]
    pub region_id: DerpRegionId,
    /// Short code, e.g. `"nyc"`; Headscale's embedded region is `"headscale"`.
    pub region_code: String,
    pub region_name: String,
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub latitude: f64,
    #[serde(skip_serializing_if = "gojson::is_zero_f64")]
    pub longitude: f64,
    /// Deprecated in favour of `no_measure_no_home`.
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub avoid: bool,
    /// Never measured, never chosen as home; used only to reach peers homed
    /// here (capability version ≥ 115).
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub no_measure_no_home: bool,
    /// In priority order; clients use the first reachable one.
    #[serde(deserialize_with = "gojson::nullable")]
    pub nodes: Vec<DerpNode>,
}

/// One DERP/STUN server (`tailcfg.DERPNode`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DerpNode {
    /// Unique across all regions, e.g. `"1b"`; not a host name.
    pub name: String,
    #[serde(rename = "RegionID")]
    pub region_id: DerpRegionId,
    /// Required: used for the TLS dial and SNI.
    pub host_name: String,
    /// Expected certificate name if not `host_name`; `"sha256-raw:<hex>"`
    /// pins a self-signed certificate.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cert_name: String,
    /// Forced IPv4 address instead of DNS; `"none"` disables IPv4.
    #[serde(rename = "IPv4", skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// Forced IPv6 address instead of DNS; `"none"` disables IPv6.
    #[serde(rename = "IPv6", skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// 0 = 3478; -1 disables STUN.
    #[serde(rename = "STUNPort", skip_serializing_if = "gojson::is_zero_i64")]
    pub stun_port: i64,
    #[serde(rename = "STUNOnly", skip_serializing_if = "gojson::is_false")]
    pub stun_only: bool,
    /// 0 = 443.
    #[serde(rename = "DERPPort", skip_serializing_if = "gojson::is_zero_i64")]
    pub derp_port: i64,
    /// Skip TLS verification (tests only).
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub insecure_for_tests: bool,
    #[serde(rename = "STUNTestIP", skip_serializing_if = "String::is_empty")]
    pub stun_test_ip: String,
    /// Reachable over plain HTTP on port 80 (captive-portal checks).
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub can_port80: bool,
}

/// Body of a DERP server's admission check (`POST` to its verify URL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DerpAdmitClientRequest {
    pub node_public: NodePublic,
    /// The DERP client's IP address.
    pub source: String,
}

/// Answer to a [`DerpAdmitClientRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DerpAdmitClientResponse {
    pub allow: bool,
}
