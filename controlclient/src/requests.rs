//! Requests shaped like the official client's (`direct.go: doLogin`,
//! `sendMapRequest`), so callers fill in only what differs.

use chrono::{DateTime, Utc};
use meshscale_wire::tailcfg::{
    EndpointType, Hostinfo, MapRequest, RegisterRequest, RegisterResponseAuth,
};
use meshscale_wire::{DiscoPublic, NodePublic};

/// The expiry a logout sends: Go's `time.Unix(123, 0)`.
pub fn logout_expiry() -> DateTime<Utc> {
    DateTime::from_timestamp(123, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A minimal Hostinfo: what servers need to name and describe a node.
pub fn hostinfo(hostname: &str) -> Hostinfo {
    Hostinfo {
        ipn_version: concat!("meshscale-controlclient-", env!("CARGO_PKG_VERSION")).into(),
        os: std::env::consts::OS.into(),
        hostname: hostname.into(),
        go_arch: std::env::consts::ARCH.into(),
        ..Hostinfo::default()
    }
}

/// Registration with a pre-auth key.
pub fn register_with_auth_key(
    node_key: NodePublic,
    auth_key: &str,
    hostinfo: Hostinfo,
) -> RegisterRequest {
    RegisterRequest {
        node_key,
        auth: Some(RegisterResponseAuth {
            auth_key: auth_key.into(),
            ..RegisterResponseAuth::default()
        }),
        hostinfo: Some(hostinfo),
        timestamp: Some(Utc::now()),
        ..RegisterRequest::default()
    }
}

/// Registration without credentials: an "I'm back" check for a known node
/// key, an interactive login for a new one.
pub fn register_plain(node_key: NodePublic, hostinfo: Hostinfo) -> RegisterRequest {
    RegisterRequest {
        node_key,
        hostinfo: Some(hostinfo),
        timestamp: Some(Utc::now()),
        ..RegisterRequest::default()
    }
}

/// The follow-up poll of an interactive login.
pub fn register_followup(
    node_key: NodePublic,
    auth_url: &str,
    hostinfo: Hostinfo,
) -> RegisterRequest {
    RegisterRequest {
        followup: auth_url.into(),
        ..register_plain(node_key, hostinfo)
    }
}

/// Node-key rotation: the new key, with the old one in `OldNodeKey`.
pub fn register_rotation(
    old_node_key: NodePublic,
    new_node_key: NodePublic,
    hostinfo: Hostinfo,
) -> RegisterRequest {
    RegisterRequest {
        old_node_key,
        ..register_plain(new_node_key, hostinfo)
    }
}

/// Logout: an expiry in the past.
pub fn logout(node_key: NodePublic) -> RegisterRequest {
    RegisterRequest {
        node_key,
        expiry: logout_expiry(),
        timestamp: Some(Utc::now()),
        ..RegisterRequest::default()
    }
}

/// The long poll, as official clients send it: keep-alives on, zstd.
pub fn map_stream(node_key: NodePublic, disco_key: DiscoPublic, hostinfo: Hostinfo) -> MapRequest {
    MapRequest {
        compress: "zstd".into(),
        keep_alive: true,
        node_key,
        disco_key,
        stream: true,
        hostinfo: Some(hostinfo),
        ..MapRequest::default()
    }
}

/// The "lite" update carrying new endpoints (`Stream: false, OmitPeers:
/// true`).
pub fn endpoint_update(
    node_key: NodePublic,
    disco_key: DiscoPublic,
    endpoints: &[(String, EndpointType)],
    hostinfo: Hostinfo,
) -> MapRequest {
    MapRequest {
        compress: "zstd".into(),
        keep_alive: true,
        node_key,
        disco_key,
        omit_peers: true,
        endpoints: endpoints.iter().map(|(e, _)| e.clone()).collect(),
        endpoint_types: endpoints.iter().map(|(_, t)| *t).collect(),
        hostinfo: Some(hostinfo),
        ..MapRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_is_unix_123() {
        let json = serde_json::to_value(logout(NodePublic::from_bytes([1; 32]))).unwrap();
        assert_eq!(json["Expiry"], "1970-01-01T00:02:03Z");
        assert!(json.get("Auth").is_none());
    }

    #[test]
    fn register_json_has_what_go_sends() {
        let req = register_with_auth_key(NodePublic::from_bytes([2; 32]), "k", hostinfo("h"));
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["Auth"]["AuthKey"], "k");
        assert_eq!(json["OldNodeKey"], format!("nodekey:{}", "0".repeat(64)));
        assert_eq!(json["Expiry"], "0001-01-01T00:00:00Z");
        assert_eq!(json["Hostinfo"]["Hostname"], "h");
    }

    #[test]
    fn map_requests() {
        let s = map_stream(NodePublic::zero(), DiscoPublic::zero(), hostinfo("h"));
        assert!(s.stream && s.keep_alive && !s.omit_peers && s.compress == "zstd");
        let u = endpoint_update(
            NodePublic::zero(),
            DiscoPublic::zero(),
            &[("10.0.0.1:41641".into(), EndpointType::LOCAL)],
            hostinfo("h"),
        );
        assert!(!u.stream && u.omit_peers);
        assert_eq!(u.endpoint_types, [EndpointType::LOCAL]);
    }
}
