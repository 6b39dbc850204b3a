//! `/machine/map` bodies: requests as official clients send them, responses
//! as a server must write them.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use meshscale_wire::framing::{FrameDecoder, encode_frame};
use meshscale_wire::gojson::go_zero_time;
use meshscale_wire::tailcfg::{
    Debug, DerpMap, DerpNode, DerpRegion, DnsConfig, DnsResolver, EndpointType, FilterRule,
    Hostinfo, IpPrefix, MapRequest, MapResponse, NetInfo, Node, PeerChange, UserProfile,
    legacy_derp_string,
};
use meshscale_wire::{DiscoPublic, MachinePublic, NodePublic};
use serde_json::{Value, json};

const NODE_KEY: &str = "nodekey:5b0c1d7e36a3f2c4b8e9d0a1f2e3d4c5b6a79881726354f3e2d1c0b9a8f7e6d5";
const DISCO_KEY: &str = "discokey:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The streaming poll from `direct.go: sendMapRequest` (v1.96 Linux).
fn stream_request_json() -> Value {
    json!({
        "Version": 133,
        "Compress": "zstd",
        "KeepAlive": true,
        "NodeKey": NODE_KEY,
        "DiscoKey": DISCO_KEY,
        "Stream": true,
        "Hostinfo": {
            "IPNVersion": "1.96.2-t1a2b3c4d5-g6e7f8a9b0",
            "BackendLogID": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d3f6ce0bb4a4a7d0c4f0e2b5e",
            "OS": "linux",
            "OSVersion": "6.8.0-60-generic",
            "Hostname": "laptop",
            "GoArch": "amd64",
            "RoutableIPs": ["10.10.0.0/24"],
            "NetInfo": {"WorkingUDP": true, "PreferredDERP": 999, "DERPLatency": {"999-v4": 0.01}, "HavePortMap": true},
            "TPM": {"FamilyIndicator": "2.0"},
            "Cloud": "aws",
            "IngressEnabled": true,
            "ExitNodeID": "nStable123"
        },
        "Endpoints": ["192.0.2.10:41641", "[2001:db8::10]:41641", "10.0.0.5:41641", "[fe80::1%eth0]:41641"],
        "EndpointTypes": [2, 2, 1, 1],
        "TKAHead": "",
        "DebugFlags": ["warn-ip-forwarding-off"],
        "HardwareAttestationKey": "hwattestpub:04abcdef",
        "HardwareAttestationKeySignature": "c2lnbmF0dXJl",
        "HardwareAttestationKeySignatureTimestamp": "2026-05-01T10:20:30Z",
        "MapRequestFieldFromTheFuture": 1
    })
}

#[test]
fn map_request_from_official_client() {
    let raw = stream_request_json();
    let req: MapRequest = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(req.version, 133);
    assert_eq!(req.compress, "zstd");
    assert!(req.keep_alive && req.stream && !req.omit_peers && !req.read_only);
    assert_eq!(req.node_key.to_string(), NODE_KEY);
    assert_eq!(req.disco_key.to_string(), DISCO_KEY);
    assert_eq!(req.endpoints.len(), 4);
    assert_eq!(
        req.endpoint_types,
        [
            EndpointType::STUN,
            EndpointType::STUN,
            EndpointType::LOCAL,
            EndpointType::LOCAL
        ]
    );
    assert_eq!(req.debug_flags, ["warn-ip-forwarding-off"]);
    assert_eq!(req.hardware_attestation_key_signature, b"signature");
    let hi = req.hostinfo.as_ref().unwrap();
    assert_eq!(hi.net_info.as_ref().unwrap().preferred_derp, 999);
    assert_eq!(hi.exit_node_id, "nStable123");
    assert!(hi.other.contains_key("TPM"));

    let out = serde_json::to_value(&req).unwrap();
    assert_eq!(
        out["Hostinfo"], raw["Hostinfo"],
        "Hostinfo must survive a round trip"
    );
    assert_eq!(out["Endpoints"], raw["Endpoints"]);
    assert_eq!(out["EndpointTypes"], raw["EndpointTypes"]);
    assert_eq!(
        out["HardwareAttestationKeySignatureTimestamp"],
        "2026-05-01T10:20:30Z"
    );
    let obj = out.as_object().unwrap();
    assert!(!obj.contains_key("TKAHead") && !obj.contains_key("OmitPeers"));
    let again: MapRequest = serde_json::from_value(out).unwrap();
    assert_eq!(again, req);
}

#[test]
fn lite_update_request() {
    // Endpoint change pushed outside the stream; Go writes Hostinfo null if
    // it has none and omits every zero field.
    let raw = json!({
        "Version": 133, "Compress": "zstd", "KeepAlive": true,
        "NodeKey": NODE_KEY,
        "DiscoKey": "discokey:0000000000000000000000000000000000000000000000000000000000000000",
        "Hostinfo": null, "OmitPeers": true,
        "Endpoints": null, "EndpointTypes": null, "DebugFlags": null
    });
    let req: MapRequest = serde_json::from_value(raw).unwrap();
    assert!(req.omit_peers && !req.stream);
    assert!(req.disco_key.is_zero());
    assert!(req.hostinfo.is_none() && req.endpoints.is_empty());
}

fn key<T: std::str::FromStr>(prefix: &str, fill: u8) -> T
where
    T::Err: std::fmt::Debug,
{
    format!("{prefix}{}", hex::encode([fill; 32]))
        .parse()
        .unwrap()
}

fn peer(id: i64, home: i64) -> Node {
    let v4: IpPrefix = format!("100.64.0.{id}/32").parse().unwrap();
    let v6: IpPrefix = format!("fd7a:115c:a1e0::{id}/128").parse().unwrap();
    Node {
        id,
        stable_id: id.to_string(),
        name: format!("peer{id}.tailnet.example.com."),
        user: 1,
        key: key::<NodePublic>("nodekey:", id as u8),
        machine: key::<MachinePublic>("mkey:", id as u8),
        disco_key: key::<DiscoPublic>("discokey:", id as u8),
        addresses: vec![v4, v6],
        allowed_ips: Some(vec![v4, v6]),
        endpoints: vec!["192.0.2.1:41641".into()],
        home_derp: home,
        legacy_derp: legacy_derp_string(home),
        hostinfo: Some(Hostinfo {
            hostname: format!("peer{id}"),
            os: "linux".into(),
            net_info: Some(NetInfo {
                preferred_derp: home,
                ..NetInfo::default()
            }),
            ..Hostinfo::default()
        }),
        created: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
        cap: 133,
        online: Some(true),
        machine_authorized: true,
        cap_map: BTreeMap::from([("https://tailscale.com/cap/is-admin".to_string(), vec![])]),
        ..Node::default()
    }
}

fn derp_map() -> DerpMap {
    let region = DerpRegion {
        region_id: 999,
        region_code: "headscale".into(),
        region_name: "Headscale Embedded DERP".into(),
        nodes: vec![DerpNode {
            name: "999".into(),
            region_id: 999,
            host_name: "hs.example.com".into(),
            ipv4: "198.51.100.1".into(),
            ipv6: "2001:db8::1".into(),
            stun_port: 3478,
            derp_port: 443,
            ..DerpNode::default()
        }],
        ..DerpRegion::default()
    };
    DerpMap {
        regions: Some(BTreeMap::from([(999, region)])),
        ..DerpMap::default()
    }
}

fn full_response() -> MapResponse {
    // The self node carries no `Online`.
    let self_node = Node {
        online: None,
        ..peer(1, 999)
    };
    MapResponse {
        node: Some(self_node),
        derp_map: Some(derp_map()),
        peers: vec![peer(2, 999), peer(3, 1)],
        dns_config: Some(DnsConfig {
            resolvers: vec![DnsResolver::new("1.1.1.1")],
            domains: vec!["tailnet.example.com".into()],
            proxied: true,
            ..DnsConfig::default()
        }),
        domain: "hs.example.com".into(),
        collect_services: Some(false),
        packet_filter: Some(vec![FilterRule::allow_all()]),
        packet_filters: BTreeMap::from([("base".to_string(), Some(vec![FilterRule::allow_all()]))]),
        user_profiles: vec![UserProfile {
            id: 1,
            login_name: "alice@example.com".into(),
            display_name: "Alice".into(),
            ..UserProfile::default()
        }],
        control_time: Some(Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()),
        debug: Some(Debug {
            disable_log_tail: true,
            ..Debug::default()
        }),
        ..MapResponse::default()
    }
}

#[test]
fn map_response_uses_go_field_names() {
    let resp = full_response();
    let s = serde_json::to_string(&resp).unwrap();
    for needle in [
        "\"Node\":{\"ID\":1,\"StableID\":\"1\"",
        "\"DERPMap\":{\"Regions\":{\"999\":{\"RegionID\":999,\"RegionCode\":\"headscale\"",
        "\"HostName\":\"hs.example.com\"",
        "\"IPv4\":\"198.51.100.1\"",
        "\"IPv6\":\"2001:db8::1\"",
        "\"STUNPort\":3478",
        "\"DERPPort\":443",
        "\"HomeDERP\":999",
        "\"DERP\":\"127.3.3.40:999\"",
        "\"Peers\":[{\"ID\":2",
        "\"Addresses\":[\"100.64.0.2/32\",\"fd7a:115c:a1e0::2/128\"]",
        "\"AllowedIPs\":[\"100.64.0.2/32\"",
        "\"Key\":\"nodekey:0202",
        "\"Machine\":\"mkey:0202",
        "\"DiscoKey\":\"discokey:0202",
        "\"Endpoints\":[\"192.0.2.1:41641\"]",
        "\"Created\":\"2026-01-02T03:04:05Z\"",
        "\"Cap\":133",
        "\"Online\":true",
        "\"MachineAuthorized\":true",
        "\"CapMap\":{\"https://tailscale.com/cap/is-admin\":[]}",
        "\"NetInfo\":{\"PreferredDERP\":999}",
        "\"DNSConfig\":{\"Resolvers\":[{\"Addr\":\"1.1.1.1\"}],\"Domains\":[\"tailnet.example.com\"],\"Proxied\":true}",
        "\"Domain\":\"hs.example.com\"",
        "\"CollectServices\":false",
        "\"PacketFilter\":[{\"SrcIPs\":[\"*\"],\"DstPorts\":[{\"IP\":\"*\",\"Ports\":{\"First\":0,\"Last\":65535}}]}]",
        "\"PacketFilters\":{\"base\":[{\"SrcIPs\":[\"*\"]",
        "\"UserProfiles\":[{\"ID\":1,\"LoginName\":\"alice@example.com\",\"DisplayName\":\"Alice\"}]",
        "\"ControlTime\":\"2026-05-01T12:00:00Z\"",
        "\"Debug\":{\"DisableLogTail\":true}",
    ] {
        assert!(s.contains(needle), "missing {needle} in {s}");
    }
    // Nothing that was not set: no nulls, no empty strings, no zero keys.
    for absent in [
        "null",
        "\"\"",
        "KeyExpiry",
        "LastSeen",
        "PeersChanged",
        "PeersRemoved",
        "SSHPolicy",
        "Health",
        "KeepAlive",
        "omitDefaultRegions",
        "Sharer",
        "ComputedName",
    ] {
        assert!(!s.contains(absent), "unexpected {absent} in {s}");
    }
    let back: MapResponse = serde_json::from_str(&s).unwrap();
    assert_eq!(back, resp);
}

#[test]
fn incremental_updates_use_go_field_names() {
    let resp = MapResponse {
        peers_changed: vec![peer(4, 999)],
        peers_removed: vec![2, 3],
        peers_changed_patch: vec![PeerChange {
            node_id: 5,
            derp_region: 999,
            disco_key: Some(key::<DiscoPublic>("discokey:", 9)),
            endpoints: vec!["192.0.2.9:41641".into()],
            online: Some(false),
            last_seen: Some(Utc.with_ymd_and_hms(2026, 5, 1, 11, 59, 0).unwrap()),
            key_expiry: Some(go_zero_time()),
            ..PeerChange::default()
        }],
        online_change: BTreeMap::from([(6, true)]),
        peer_seen_change: BTreeMap::from([(7, false)]),
        packet_filters: BTreeMap::from([
            ("*".to_string(), None),
            ("base".to_string(), Some(vec![])),
        ]),
        health: Some(vec![]),
        ..MapResponse::default()
    };
    let s = serde_json::to_string(&resp).unwrap();
    for needle in [
        "\"PeersChanged\":[{\"ID\":4",
        "\"PeersRemoved\":[2,3]",
        "\"PeersChangedPatch\":[{\"NodeID\":5,\"DERPRegion\":999,\"Endpoints\":[\"192.0.2.9:41641\"],\"DiscoKey\":\"discokey:0909",
        "\"Online\":false,\"LastSeen\":\"2026-05-01T11:59:00Z\",\"KeyExpiry\":\"0001-01-01T00:00:00Z\"}]",
        "\"PeerSeenChange\":{\"7\":false}",
        "\"OnlineChange\":{\"6\":true}",
        "\"PacketFilters\":{\"*\":null,\"base\":[]}",
        "\"Health\":[]",
    ] {
        assert!(s.contains(needle), "missing {needle} in {s}");
    }
    let back: MapResponse = serde_json::from_str(&s).unwrap();
    assert_eq!(back, resp);
    // The zero KeyExpiry in a patch is a value ("never expires"), not absence.
    assert_eq!(back.peers_changed_patch[0].key_expiry, Some(go_zero_time()));
}

#[test]
fn keep_alive_is_exactly_what_clients_cache() {
    assert_eq!(
        serde_json::to_string(&MapResponse::keep_alive()).unwrap(),
        r#"{"KeepAlive":true}"#
    );
    assert_eq!(
        serde_json::to_string(&MapResponse::default()).unwrap(),
        "{}"
    );
}

#[test]
fn block_all_filter_is_expressible() {
    let resp = MapResponse {
        packet_filter: Some(vec![]),
        ..MapResponse::default()
    };
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        r#"{"PacketFilter":[]}"#
    );
    let unchanged: MapResponse = serde_json::from_str(r#"{"PacketFilter":null}"#).unwrap();
    assert_eq!(unchanged.packet_filter, None);
}

#[test]
fn derp_region_ids_are_decimal_string_keys() {
    let dm = derp_map();
    let v = serde_json::to_value(&dm).unwrap();
    assert!(v["Regions"]["999"].is_object());
    let s = serde_json::to_string(&dm).unwrap();
    assert!(s.starts_with(r#"{"Regions":{"999":{"#), "{s}");
    let back: DerpMap = serde_json::from_str(&s).unwrap();
    assert_eq!(back, dm);
    // Non-numeric keys are refused, not mangled.
    assert!(serde_json::from_str::<DerpMap>(r#"{"Regions":{"abc":{}}}"#).is_err());
}

/// A full first response as a Go server (Headscale) writes it: Go's nulls
/// for nil slices, the zero time, a null DERP region, the lowerCamel
/// `omitDefaultRegions`, capabilities with `null` arguments, and fields this
/// crate does not know.
#[test]
fn go_server_response_is_accepted() {
    let raw = json!({
        "KeepAlive": false,
        "Node": {
            "ID": 1, "StableID": "1", "Name": "laptop.tailnet.example.com.", "User": 1,
            "Key": NODE_KEY,
            "KeyExpiry": "0001-01-01T00:00:00Z",
            "Machine": "mkey:0101010101010101010101010101010101010101010101010101010101010101",
            "DiscoKey": DISCO_KEY,
            "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
            "AllowedIPs": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
            "Endpoints": null,
            "HomeDERP": 999,
            "Hostinfo": {"Hostname": "laptop", "NetInfo": {"PreferredDERP": 999}},
            "Created": "2026-01-02T03:04:05.5Z",
            "Cap": 133,
            "Tags": null,
            "PrimaryRoutes": null,
            "MachineAuthorized": true,
            "CapMap": {
                "https://tailscale.com/cap/is-admin": null,
                "https://tailscale.com/cap/file-sharing": [],
                "default-auto-update": [false],
                "some-attr": [{"k": "v"}, "str", 3]
            },
            "NodeFieldFromTheFuture": true
        },
        "DERPMap": {
            "Regions": {
                "999": {"RegionID": 999, "RegionCode": "headscale", "RegionName": "Headscale Embedded DERP",
                        "Nodes": [{"Name": "999", "RegionID": 999, "HostName": "hs.example.com",
                                   "STUNPort": 3478, "STUNOnly": false, "DERPPort": 443, "CanPort80": true}]},
                "1": null
            },
            "omitDefaultRegions": true
        },
        "Peers": null,
        "DNSConfig": {"Resolvers": null, "Routes": {"corp.example.": null, "lab.example.": [{"Addr": "10.0.0.53"}]},
                      "Domains": ["tailnet.example.com"], "Proxied": true,
                      "ExtraRecords": [{"Name": "db.tailnet.example.com", "Value": "100.64.0.9"}]},
        "Domain": "hs.example.com",
        "CollectServices": false,
        "PacketFilters": {"base": [{"SrcIPs": ["100.64.0.0/10"], "DstPorts": [{"IP": "*", "Ports": {"First": 22, "Last": 22}}], "IPProto": [6]}]},
        "UserProfiles": [{"ID": 1, "LoginName": "alice", "DisplayName": "alice", "Roles": []}],
        "SSHPolicy": {"rules": [{
            "principals": [{"nodeIP": "100.64.0.2"}, {"any": true}],
            "sshUsers": {"*": "="},
            "action": {"accept": true, "allowAgentForwarding": true, "sessionDuration": 3600000000000i64},
            "ruleExpires": "2026-06-01T00:00:00Z"
        }, {"principals": null, "sshUsers": null, "action": null}]},
        "ControlTime": "2026-05-01T12:00:00.123Z",
        "TKAInfo": {"Head": "abc", "Disabled": false},
        "Debug": {"DisableLogTail": true},
        "ClientVersion": {"RunningLatest": true},
        "ResponseFieldFromTheFuture": [1]
    });
    let resp: MapResponse = serde_json::from_value(raw).unwrap();

    let node = resp.node.as_ref().unwrap();
    assert_eq!(node.key_expiry, None, "zero KeyExpiry means never");
    assert_eq!(node.home_derp_region(), Some(999));
    assert!(node.endpoints.is_empty() && node.tags.is_empty());
    assert_eq!(
        node.cap_map["https://tailscale.com/cap/is-admin"],
        Vec::<Value>::new()
    );
    assert_eq!(node.cap_map["default-auto-update"], vec![json!(false)]);
    assert_eq!(node.created.unwrap().timestamp_subsec_millis(), 500);

    let dm = resp.derp_map.as_ref().unwrap();
    assert!(dm.omit_default_regions);
    let regions = dm.regions.as_ref().unwrap();
    assert_eq!(
        regions.keys().copied().collect::<Vec<_>>(),
        [999],
        "null regions are dropped"
    );
    assert!(regions[&999].nodes[0].can_port80);

    assert!(resp.peers.is_empty());
    let dns = resp.dns_config.as_ref().unwrap();
    assert!(dns.routes["corp.example."].is_empty());
    assert_eq!(dns.routes["lab.example."][0].addr, "10.0.0.53");
    assert_eq!(
        resp.packet_filters["base"].as_ref().unwrap()[0].ip_proto,
        [6]
    );
    let ssh = resp.ssh_policy.as_ref().unwrap();
    assert_eq!(ssh.rules[0].principals[0].node_ip, "100.64.0.2");
    assert_eq!(
        ssh.rules[0].action.as_ref().unwrap().session_duration,
        3_600_000_000_000
    );
    assert!(ssh.rules[1].action.is_none());
    assert!(resp.tka_info.is_some());
    assert_eq!(resp.collect_services, Some(false));

    // Our re-serialisation keeps the lowerCamel tags Go expects.
    let s = serde_json::to_string(&resp).unwrap();
    assert!(s.contains("\"omitDefaultRegions\":true"), "{s}");
    assert!(
        s.contains(
            "\"rules\":[{\"ruleExpires\":\"2026-06-01T00:00:00Z\",\"principals\":[{\"nodeIP\":"
        ),
        "{s}"
    );
    assert!(s.contains("\"sshUsers\":{\"*\":\"=\"}"), "{s}");
    let back: MapResponse = serde_json::from_str(&s).unwrap();
    assert_eq!(back, resp);
}

#[test]
fn map_responses_through_the_framing() {
    let msgs = [
        serde_json::to_vec(&full_response()).unwrap(),
        serde_json::to_vec(&MapResponse::keep_alive()).unwrap(),
    ];
    let mut stream = Vec::new();
    for m in &msgs {
        stream.extend(encode_frame(m, 1 << 20).unwrap());
    }
    let mut dec = FrameDecoder::new(1 << 20);
    let mut got = Vec::new();
    for piece in stream.chunks(13) {
        dec.push(piece);
        while let Some(frame) = dec.next_frame().unwrap() {
            got.push(serde_json::from_slice::<MapResponse>(&frame).unwrap());
        }
    }
    dec.finish().unwrap();
    assert_eq!(got, [full_response(), MapResponse::keep_alive()]);
}
