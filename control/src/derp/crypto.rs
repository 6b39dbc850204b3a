//! The DERP handshake's cryptography and JSON: NaCl `crypto_box`
//! (Curve25519 + XSalsa20-Poly1305), laid out as Go's `key.NodePrivate.SealTo`
//! does: `nonce(24) || box`, where the box carries its Poly1305 tag first.

use crypto_box::aead::{Aead, generic_array::GenericArray};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use serde::{Deserialize, Serialize};

use super::frame::{NONCE_LEN, NodeKey, PROTOCOL_VERSION};

/// Generates a Curve25519 private key, clamped the way Go's `key.NewNode`
/// stores it (X25519 clamps again anyway; this keeps files comparable).
pub fn generate_private_key() -> [u8; 32] {
    let mut k: [u8; 32] = rand::random();
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

pub fn public_key(private: &[u8; 32]) -> NodeKey {
    SecretKey::from_bytes(*private).public_key().to_bytes()
}

/// Seals `msg` from `ours` to `theirs`: `nonce || box`.
pub fn seal(ours: &SecretKey, theirs: &NodeKey, msg: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealer = SalsaBox::new(&PublicKey::from_bytes(*theirs), ours);
    // Encryption with a fresh nonce and an in-memory buffer cannot fail;
    // an empty box would be refused by the peer, never trusted.
    let boxed = sealer
        .encrypt(GenericArray::from_slice(&nonce), msg)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + boxed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&boxed);
    out
}

/// Opens `nonce || box` sent by `theirs` to `ours`; `None` if it does not
/// authenticate.
pub fn open(ours: &SecretKey, theirs: &NodeKey, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, boxed) = sealed.split_at(NONCE_LEN);
    SalsaBox::new(&PublicKey::from_bytes(*theirs), ours)
        .decrypt(GenericArray::from_slice(nonce), boxed)
        .ok()
}

/// What a client says about itself in the ClientInfo frame
/// (`derp.ClientInfo`). Go matches JSON keys case-insensitively; the
/// aliases cover the spellings clients actually produce.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(rename = "version", alias = "Version", default)]
    pub version: i64,
    #[serde(rename = "CanAckPings", alias = "canAckPings", default)]
    pub can_ack_pings: bool,
    #[serde(
        rename = "IsProber",
        alias = "isProber",
        default,
        skip_serializing_if = "is_false"
    )]
    pub is_prober: bool,
    #[serde(
        rename = "AppName",
        alias = "appName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub app_name: String,
    /// Only DERP meshes use it; we have no mesh, so it is never trusted.
    #[serde(
        rename = "meshKey",
        alias = "MeshKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mesh_key: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `derp.ServerInfo`: `{"version":2}`; the token-bucket fields are omitted
/// (zero means "no limit advertised").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    #[serde(rename = "version", default)]
    pub version: i64,
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_per_second: i64,
    #[serde(
        rename = "TokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_burst: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Default for ServerInfo {
    fn default() -> Self {
        ServerInfo {
            version: i64::from(PROTOCOL_VERSION),
            token_bucket_bytes_per_second: 0,
            token_bucket_bytes_burst: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let a = generate_private_key();
        let b = generate_private_key();
        let (sa, sb) = (SecretKey::from_bytes(a), SecretKey::from_bytes(b));
        let sealed = seal(&sa, &public_key(&b), b"{\"version\":2}");
        assert_eq!(sealed.len(), NONCE_LEN + 16 + 13, "nonce, tag, message");
        assert_eq!(
            open(&sb, &public_key(&a), &sealed).as_deref(),
            Some(&b"{\"version\":2}"[..])
        );
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN + 20] ^= 1;
        assert_eq!(open(&sb, &public_key(&a), &tampered), None);
        assert_eq!(
            open(&sb, &public_key(&b), &sealed),
            None,
            "wrong sender key"
        );
        assert_eq!(open(&sb, &public_key(&a), &sealed[..10]), None);
    }

    /// The NaCl distribution's box test vector (tests/box.c, as carried
    /// by libsodium and PyNaCl): pins the layout Go's `box.Seal` produces,
    /// Poly1305 tag first, then the ciphertext.
    #[test]
    fn matches_nacl_box_vector() {
        let alice_sk: [u8; 32] =
            hex_arr("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let bob_sk: [u8; 32] =
            hex_arr("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let nonce: [u8; 24] = hex_arr("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37");
        let msg = hex::decode(concat!(
            "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc",
            "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31",
            "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde",
            "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864",
            "5e0705",
        ))
        .unwrap();
        let want = concat!(
            "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce",
            "48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c972",
            "71d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae",
            "90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b3",
            "7973f622a43d14a6599b1f654cb45a74e355a5",
        );
        let alice = SecretKey::from_bytes(alice_sk);
        let bob_pk = public_key(&bob_sk);
        assert_eq!(
            hex::encode(bob_pk),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        let out = SalsaBox::new(&PublicKey::from_bytes(bob_pk), &alice)
            .encrypt(GenericArray::from_slice(&nonce), msg.as_slice())
            .unwrap();
        assert_eq!(hex::encode(&out), want);
        // And `open` accepts it in our nonce || box framing.
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        let bob = SecretKey::from_bytes(bob_sk);
        assert_eq!(open(&bob, &public_key(&alice_sk), &sealed), Some(msg));
    }

    fn hex_arr<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn client_info_json_like_go() {
        let info: ClientInfo = serde_json::from_str(r#"{"version":2,"CanAckPings":true}"#).unwrap();
        assert_eq!(info.version, 2);
        assert!(info.can_ack_pings);
        let info: ClientInfo =
            serde_json::from_str(r#"{"meshKey":"abc","version":2,"CanAckPings":false,"IsProber":true,"AppName":"x","Extra":1}"#)
                .unwrap();
        assert_eq!(info.mesh_key.as_deref(), Some("abc"));
        assert!(info.is_prober);
        assert_eq!(
            serde_json::to_string(&ServerInfo::default()).unwrap(),
            r#"{"version":2}"#
        );
    }
}
