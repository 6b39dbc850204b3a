//! `/machine/register` bodies in the shape official clients send them.

use meshscale_wire::gojson::{go_zero_time, is_go_zero_time};
use meshscale_wire::tailcfg::{Login, RegisterRequest, RegisterResponse, User};
use serde_json::{Value, json};

const NODE_KEY: &str = "nodekey:5b0c1d7e36a3f2c4b8e9d0a1f2e3d4c5b6a79881726354f3e2d1c0b9a8f7e6d5";
const ZERO_NODE_KEY: &str =
    "nodekey:0000000000000000000000000000000000000000000000000000000000000000";
const NL_KEY: &str = "nlpub:a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A first registration with a pre-auth key, as `direct.go: doLogin` builds
/// it (field order as Go's encoder writes it), plus a field from the future.
fn first_register_json() -> Value {
    json!({
        "Version": 133,
        "NodeKey": NODE_KEY,
        "OldNodeKey": ZERO_NODE_KEY,
        "NLKey": NL_KEY,
        "Auth": {"AuthKey": "hskey-auth-0123456789ab-0000000000000000000000000000000000000000000000000000000000000000"},
        "Expiry": "0001-01-01T00:00:00Z",
        "Followup": "",
        "Hostinfo": hostinfo_json(),
        "NodeKeySignature": null,
        "Timestamp": "2026-05-01T10:20:30.123456789Z",
        "FieldFromTheFuture": {"x": [1, 2, 3]}
    })
}

/// A Linux tailscaled Hostinfo, including fields this crate does not model
/// (`TPM`, `WoLMACs`, `PushDeviceToken`, a made-up future field, and one
/// inside NetInfo).
fn hostinfo_json() -> Value {
    json!({
        "IPNVersion": "1.96.2-t1a2b3c4d5-g6e7f8a9b0",
        "FrontendLogID": "3f6ce0bb4a4a7d0c4f0e2b5e9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
        "BackendLogID": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d3f6ce0bb4a4a7d0c4f0e2b5e",
        "OS": "linux",
        "OSVersion": "6.8.0-60-generic",
        "Container": false,
        "Distro": "ubuntu",
        "DistroVersion": "24.04",
        "DistroCodeName": "noble",
        "Desktop": true,
        "Hostname": "Alice's Laptop",
        "Machine": "x86_64",
        "GoArch": "amd64",
        "GoArchVar": "v1",
        "GoVersion": "go1.26.2",
        "RoutableIPs": ["10.10.0.0/24", "0.0.0.0/0", "::/0"],
        "RequestTags": ["tag:laptop"],
        "WoLMACs": ["aa:bb:cc:dd:ee:ff"],
        "Services": [
            {"Proto": "peerapi4", "Port": 45123},
            {"Proto": "peerapi6", "Port": 45123},
            {"Proto": "peerapi-dns-proxy", "Port": 1},
            {"Proto": "tcp", "Port": 22, "Description": "sshd"}
        ],
        "NetInfo": {
            "MappingVariesByDestIP": false,
            "WorkingIPv6": false,
            "OSHasIPv6": true,
            "WorkingUDP": true,
            "WorkingICMPv4": true,
            "UPnP": false,
            "PMP": false,
            "PCP": null,
            "PreferredDERP": 999,
            "LinkType": "wired",
            "DERPLatency": {"999-v4": 0.012345, "1-v4": 0.081},
            "FirewallMode": "nft-default",
            "NetInfoFieldFromTheFuture": "kept"
        },
        "sshHostKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx3q", "ecdsa-sha2-nistp256 AAAAE2VjZHNh"],
        "Userspace": false,
        "UserspaceRouter": false,
        "AppConnector": false,
        "ServicesHash": "abc123",
        "PeerRelay": true,
        "Location": {"Country": "Canada", "CountryCode": "CA", "City": "Squamish", "CityCode": "YSE", "Priority": 10},
        "TPM": {"Manufacturer": "MSFT", "Vendor": "fTPM", "Model": 1, "FirmwareVersion": 600011, "SpecRevision": 138, "FamilyIndicator": "2.0"},
        "StateEncrypted": true,
        "PushDeviceToken": "opaque-token",
        "HostinfoFieldFromTheFuture": {"nested": [true, null, 1.5]}
    })
}

#[test]
fn register_request_from_official_client() {
    let raw = first_register_json();
    let req: RegisterRequest = serde_json::from_value(raw.clone()).unwrap();

    assert_eq!(req.version, 133);
    assert_eq!(req.node_key.to_string(), NODE_KEY);
    assert!(req.old_node_key.is_zero());
    assert_eq!(req.nl_key.to_string(), NL_KEY);
    assert!(
        req.auth
            .as_ref()
            .unwrap()
            .auth_key
            .starts_with("hskey-auth-")
    );
    assert!(is_go_zero_time(&req.expiry));
    assert!(!req.has_expiry());
    assert!(!req.is_logout(chrono::Utc::now()));
    assert!(req.followup.is_empty());
    assert!(req.node_key_signature.is_empty());
    assert_eq!(req.timestamp.unwrap().timestamp_subsec_nanos(), 123_456_789);

    let hi = req.hostinfo.as_ref().unwrap();
    assert_eq!(hi.hostname, "Alice's Laptop");
    assert_eq!(hi.os, "linux");
    assert_eq!(hi.ipn_version, "1.96.2-t1a2b3c4d5-g6e7f8a9b0");
    assert_eq!(hi.routable_ips.len(), 3);
    assert_eq!(hi.request_tags, ["tag:laptop"]);
    assert_eq!(hi.services[3].description, "sshd");
    assert_eq!(hi.ssh_host_keys.len(), 2);
    assert_eq!(hi.desktop, Some(true));
    assert_eq!(hi.container, Some(false));
    let ni = hi.net_info.as_ref().unwrap();
    assert_eq!(ni.preferred_derp, 999);
    assert_eq!(ni.working_udp, Some(true));
    assert_eq!(ni.pcp, None);
    assert_eq!(ni.derp_latency["999-v4"], 0.012345);
    assert!(ni.other.contains_key("NetInfoFieldFromTheFuture"));
    for unknown in [
        "TPM",
        "WoLMACs",
        "PushDeviceToken",
        "HostinfoFieldFromTheFuture",
    ] {
        assert!(hi.other.contains_key(unknown), "{unknown} not kept");
    }
    assert!(
        !hi.other.contains_key("Hostname"),
        "modelled fields must not be duplicated"
    );

    // Re-serialising keeps every Hostinfo field the client sent. (`"PCP":
    // null` is Go's unset opt.Bool, the same as absent.)
    let out = serde_json::to_value(&req).unwrap();
    let mut want_hi = hostinfo_json();
    want_hi["NetInfo"].as_object_mut().unwrap().remove("PCP");
    assert_eq!(out["Hostinfo"], want_hi);

    // Top level: known fields kept, Go's empty/null noise dropped.
    assert_eq!(out["Expiry"], "0001-01-01T00:00:00Z");
    assert_eq!(out["OldNodeKey"], ZERO_NODE_KEY);
    assert_eq!(out["NLKey"], NL_KEY);
    assert_eq!(out["Timestamp"], "2026-05-01T10:20:30.123456789Z");
    assert_eq!(out["Auth"], raw["Auth"]);
    let obj = out.as_object().unwrap();
    for absent in [
        "Followup",
        "NodeKeySignature",
        "Ephemeral",
        "Tailnet",
        "SignatureType",
        "FieldFromTheFuture",
    ] {
        assert!(!obj.contains_key(absent), "{absent} should be omitted");
    }

    // And the re-serialised form reads back identically.
    let again: RegisterRequest = serde_json::from_value(out).unwrap();
    assert_eq!(again, req);
}

#[test]
fn logout_and_followup_requests() {
    // Logout: time.Unix(123, 0) in the client's local zone.
    let mut raw = first_register_json();
    raw["Expiry"] = json!("1970-01-01T01:02:03+01:00");
    raw["Auth"] = Value::Null;
    raw["Hostinfo"] = Value::Null;
    let req: RegisterRequest = serde_json::from_value(raw).unwrap();
    assert!(req.auth.is_none());
    assert!(req.hostinfo.is_none());
    assert_eq!(req.expiry.timestamp(), 123);
    assert!(req.is_logout(chrono::Utc::now()));
    assert_eq!(
        serde_json::to_value(&req).unwrap()["Expiry"],
        "1970-01-01T00:02:03Z"
    );

    // Interactive follow-up with tailnet-lock signature and ephemeral flag.
    let raw = json!({
        "Version": 130,
        "NodeKey": NODE_KEY,
        "OldNodeKey": ZERO_NODE_KEY,
        "NLKey": NL_KEY,
        "Expiry": "0001-01-01T00:00:00Z",
        "Followup": "https://hs.example.com/register/hskey-authreq-0123456789abcdef01234567",
        "Hostinfo": {"Hostname": "ci-runner"},
        "Ephemeral": true,
        "NodeKeySignature": "AQIDBA==",
    });
    let req: RegisterRequest = serde_json::from_value(raw).unwrap();
    assert!(req.ephemeral);
    assert_eq!(req.node_key_signature, [1, 2, 3, 4]);
    assert!(req.followup.ends_with("0123456789abcdef01234567"));
    let out = serde_json::to_value(&req).unwrap();
    assert_eq!(out["NodeKeySignature"], "AQIDBA==");
    assert_eq!(out["Ephemeral"], true);
}

#[test]
fn register_request_rejects_bad_keys_without_panicking() {
    for (field, bad) in [
        ("NodeKey", json!("")),
        (
            "NodeKey",
            json!("mkey:5b0c1d7e36a3f2c4b8e9d0a1f2e3d4c5b6a79881726354f3e2d1c0b9a8f7e6d5"),
        ),
        ("OldNodeKey", json!("nodekey:00")),
        ("NLKey", json!(42)),
        ("Expiry", json!("not a time")),
        ("NodeKeySignature", json!("***")),
        ("Hostinfo", json!({"RoutableIPs": ["10.0.0.0/33"]})),
    ] {
        let mut raw = first_register_json();
        raw[field] = bad;
        assert!(
            serde_json::from_value::<RegisterRequest>(raw).is_err(),
            "{field}"
        );
    }
}

#[test]
fn minimal_register_request_defaults() {
    let req: RegisterRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(req, RegisterRequest::default());
    assert_eq!(req.expiry, go_zero_time());
    let out = serde_json::to_string(&req).unwrap();
    assert!(out.contains("\"Expiry\":\"0001-01-01T00:00:00Z\""), "{out}");
}

#[test]
fn register_response_shapes() {
    let ok = RegisterResponse {
        user: User {
            id: 7,
            display_name: "Alice".into(),
            ..User::default()
        },
        login: Login {
            id: 7,
            provider: "headscale".into(),
            login_name: "alice@example.com".into(),
            display_name: "Alice".into(),
            ..Login::default()
        },
        machine_authorized: true,
        ..RegisterResponse::default()
    };
    let v = serde_json::to_value(&ok).unwrap();
    assert_eq!(
        v,
        json!({
            "User": {"ID": 7, "DisplayName": "Alice"},
            "Login": {"ID": 7, "Provider": "headscale", "LoginName": "alice@example.com", "DisplayName": "Alice"},
            "NodeKeyExpired": false,
            "MachineAuthorized": true,
            // Go has no omitempty on these; clients such as tailscale-rs require them.
            "AuthURL": "",
            "Error": ""
        })
    );

    let pending = RegisterResponse {
        auth_url: "https://hs.example.com/register/hskey-authreq-0123456789abcdef01234567".into(),
        ..RegisterResponse::default()
    };
    let s = serde_json::to_string(&pending).unwrap();
    assert!(
        s.contains("\"AuthURL\":\"https://hs.example.com/register/"),
        "{s}"
    );

    // What a Go server writes, including nulls, zero times and empties.
    let go = json!({
        "User": {"ID": 7, "DisplayName": "Alice", "ProfilePicURL": "", "Created": "0001-01-01T00:00:00Z"},
        "Login": {"ID": 0, "Provider": "", "LoginName": "alice", "DisplayName": "Alice", "ProfilePicURL": ""},
        "NodeKeyExpired": false,
        "MachineAuthorized": true,
        "AuthURL": "",
        "NodeKeySignature": null,
        "Error": ""
    });
    let resp: RegisterResponse = serde_json::from_value(go).unwrap();
    assert!(resp.machine_authorized);
    assert_eq!(resp.user.created, None);
    assert_eq!(resp.login.login_name, "alice");
    assert!(resp.error.is_empty());
    let back: RegisterResponse =
        serde_json::from_value(serde_json::to_value(&resp).unwrap()).unwrap();
    assert_eq!(back, resp);
}
