//! Pre-HTTP/2 messages: `/key` and the Noise early payload, plus DERP
//! admission. Their JSON tags differ from the PascalCase default.

use meshscale_wire::tailcfg::{
    DerpAdmitClientRequest, DerpAdmitClientResponse, EarlyNoise, OverTlsPublicKeyResponse,
};
use meshscale_wire::{ChallengePublic, MachinePublic, NodePublic};
use serde_json::json;

#[test]
fn key_response_is_lower_camel_and_always_has_both_keys() {
    let pk = MachinePublic::from_bytes([0x11; 32]);
    let resp = OverTlsPublicKeyResponse {
        public_key: pk,
        ..OverTlsPublicKeyResponse::default()
    };
    let v = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        v,
        json!({
            "legacyPublicKey": format!("mkey:{}", "0".repeat(64)),
            "publicKey": format!("mkey:{}", "11".repeat(32)),
        })
    );
    let back: OverTlsPublicKeyResponse = serde_json::from_value(v).unwrap();
    assert_eq!(back, resp);
    // Headscale-style answer without the legacy key.
    let only: OverTlsPublicKeyResponse =
        serde_json::from_value(json!({"publicKey": format!("mkey:{}", "11".repeat(32))})).unwrap();
    assert!(only.legacy_public_key.is_zero());
    assert_eq!(only.public_key, pk);
}

#[test]
fn early_noise_is_lower_camel() {
    let en = EarlyNoise {
        node_key_challenge: ChallengePublic::from_bytes([0xab; 32]),
    };
    let s = serde_json::to_string(&en).unwrap();
    assert_eq!(
        s,
        format!("{{\"nodeKeyChallenge\":\"chalpub:{}\"}}", "ab".repeat(32))
    );
    assert_eq!(serde_json::from_str::<EarlyNoise>(&s).unwrap(), en);
}

#[test]
fn derp_admission() {
    let req = DerpAdmitClientRequest {
        node_public: NodePublic::from_bytes([2; 32]),
        source: "192.0.2.1".into(),
    };
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(
        v,
        json!({"NodePublic": format!("nodekey:{}", "02".repeat(32)), "Source": "192.0.2.1"})
    );
    assert_eq!(
        serde_json::from_value::<DerpAdmitClientRequest>(v).unwrap(),
        req
    );
    assert_eq!(
        serde_json::to_string(&DerpAdmitClientResponse { allow: true }).unwrap(),
        r#"{"Allow":true}"#
    );
}
