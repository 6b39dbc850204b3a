//! The server half of the controlbase handshake (Tailscale
//! `control/controlbase/handshake.go: Server`). Pure: bytes in, bytes out.
//!
//! Noise_IK_25519_ChaChaPoly_BLAKE2s with the client as initiator. The only
//! Tailscale-specific parts are the framing (see [`super::wire`]) and the
//! prologue, `"Tailscale Control Protocol v" + decimal(version)`, which binds
//! the cleartext version in the initiation header into the handshake.

use snow::params::{DHChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};

use super::error::HandshakeError;
use super::key::ServerKey;
use super::wire::{
    INITIATION_HEADER_LEN, INITIATION_LEN, INITIATION_PAYLOAD_LEN, MSG_INITIATION, MSG_RESPONSE,
    RESPONSE_LEN, RESPONSE_PAYLOAD_LEN, header,
};
use meshscale_ts2021::TransportCipher;

pub use meshscale_ts2021::wire::{PROLOGUE_PREFIX, PROTOCOL_NAME, prologue};

pub(crate) fn noise_params() -> NoiseParams {
    // A constant that snow's own tests parse; failing here is a build defect.
    match PROTOCOL_NAME.parse() {
        Ok(params) => params,
        Err(e) => unreachable!("snow rejects {PROTOCOL_NAME}: {e}"),
    }
}

/// The cleartext fields of a structurally valid initiation.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a> {
    pub version: u16,
    /// The 96-byte Noise message: e, encrypted s, tag.
    pub noise_message: &'a [u8],
}

impl<'a> Initiation<'a> {
    /// Checks the initiation in controlbase's order: total size, type, length.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, HandshakeError> {
        if bytes.len() != INITIATION_LEN {
            return Err(HandshakeError::WrongSize {
                got: bytes.len(),
                want: INITIATION_LEN,
            });
        }
        let version = u16::from_be_bytes([bytes[0], bytes[1]]);
        if bytes[2] != MSG_INITIATION {
            return Err(HandshakeError::WrongType(bytes[2]));
        }
        let length = u16::from_be_bytes([bytes[3], bytes[4]]);
        if usize::from(length) != INITIATION_PAYLOAD_LEN {
            // INITIATION_PAYLOAD_LEN is 96, it fits.
            return Err(HandshakeError::WrongLength {
                got: length,
                want: INITIATION_PAYLOAD_LEN as u16,
            });
        }
        Ok(Self {
            version,
            noise_message: &bytes[INITIATION_HEADER_LEN..],
        })
    }

    /// The client's ephemeral public key, sent in the clear.
    fn ephemeral(&self) -> &'a [u8] {
        &self.noise_message[..32]
    }
}

/// A completed handshake: what to send back and what was learned.
pub struct Accepted {
    /// The response message (type 0x02) to write before anything else.
    pub response: [u8; RESPONSE_LEN],
    /// The client's static key: its machine key.
    pub machine_key: [u8; 32],
    /// The version from the initiation header, agreed through the prologue.
    /// Tailscale clients send their capability version here.
    pub protocol_version: u16,
    pub transport: TransportCipher,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field(
                "machine_key",
                &super::key::machine_key_text(&self.machine_key),
            )
            .field("protocol_version", &self.protocol_version)
            .finish_non_exhaustive()
    }
}

/// Runs the responder on a client's initiation message. Versions below
/// `min_version` are refused before any crypto is done.
pub fn respond(
    key: &ServerKey,
    initiation: &[u8],
    min_version: u16,
) -> Result<Accepted, HandshakeError> {
    respond_inner(key, initiation, min_version, None)
}

fn respond_inner(
    key: &ServerKey,
    initiation: &[u8],
    min_version: u16,
    fixed_ephemeral: Option<&[u8; 32]>,
) -> Result<Accepted, HandshakeError> {
    let init = Initiation::parse(initiation)?;
    if init.version < min_version {
        return Err(HandshakeError::UnsupportedVersion {
            version: init.version,
            minimum: min_version,
        });
    }

    let prologue = prologue(init.version);
    let mut builder = snow::Builder::new(noise_params())
        .prologue(&prologue)
        .and_then(|b| b.local_private_key(key.private()))
        .map_err(HandshakeError::Noise)?;
    if let Some(e) = fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = builder.build_responder().map_err(HandshakeError::Noise)?;

    // -> e, es, s, ss (empty payload)
    let mut payload = [0u8; INITIATION_PAYLOAD_LEN];
    let n = hs
        .read_message(init.noise_message, &mut payload)
        .map_err(HandshakeError::Decrypt)?;
    if n != 0 {
        // Unreachable with a 96-byte IK message; refuse rather than ignore.
        return Err(HandshakeError::Decrypt(snow::Error::Input));
    }
    let machine_key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::Noise(snow::Error::Input))?;

    // Go's X25519 refuses low-order points (all-zero shared secret); snow
    // doesn't. Without this, a low-order "machine key" would pass `ss` with a
    // key anyone can compute, i.e. be claimable without a private key.
    if is_low_order(init.ephemeral()) {
        return Err(HandshakeError::LowOrderKey("ephemeral"));
    }
    if is_low_order(&machine_key) {
        return Err(HandshakeError::LowOrderKey("machine"));
    }

    // <- e, ee, se (empty payload)
    let mut response = [0u8; RESPONSE_LEN];
    response[..3].copy_from_slice(&header(MSG_RESPONSE, RESPONSE_PAYLOAD_LEN as u16));
    let n = hs
        .write_message(&[], &mut response[3..])
        .map_err(HandshakeError::Noise)?;
    if n != RESPONSE_PAYLOAD_LEN {
        return Err(HandshakeError::Noise(snow::Error::Input));
    }

    let transport = TransportCipher::from_handshake(hs).map_err(HandshakeError::Noise)?;
    Ok(Accepted {
        response,
        machine_key,
        protocol_version: init.version,
        transport,
    })
}

/// Whether `point` is of small order (on the curve or its twist): then
/// X25519 with any clamped scalar, a multiple of the cofactor, gives zero.
fn is_low_order(point: &[u8]) -> bool {
    let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) else {
        return true; // cannot check: refuse
    };
    dh.set(&[0x5a; 32]);
    let mut out = [0u8; 32];
    match dh.dh(point, &mut out) {
        Ok(()) => out.iter().all(|&b| b == 0),
        Err(_) => true,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::kat;
    use super::*;

    pub(crate) fn kat_accept() -> Accepted {
        let key = ServerKey::from_private(kat::SERVER_PRIV);
        respond_inner(&key, &kat::initiation(), 0, Some(&kat::SERVER_EPHEMERAL)).unwrap()
    }

    #[test]
    fn accepts_independently_built_initiation() {
        let acc = kat_accept();
        assert_eq!(acc.machine_key, kat::CLIENT_PUB);
        assert_eq!(acc.protocol_version, kat::VERSION);
        assert_eq!(acc.response.as_slice(), kat::response().as_slice());
    }

    #[test]
    fn transport_records_match_controlbase_nonces() {
        let mut acc = kat_accept();
        kat::check_transport(
            &mut acc.transport,
            &kat::SERVER_RECORDS,
            &kat::CLIENT_RECORDS,
            "server",
        );
    }

    #[test]
    fn version_mismatch_with_prologue_fails_to_decrypt() {
        // Same bytes, other version: the prologue differs, so the tag fails.
        let key = ServerKey::from_private(kat::SERVER_PRIV);
        let mut init = kat::initiation();
        init[1] ^= 1;
        assert!(matches!(
            respond(&key, &init, 0),
            Err(HandshakeError::Decrypt(_))
        ));
    }

    #[test]
    fn structural_errors_in_controlbase_order() {
        let key = ServerKey::from_private(kat::SERVER_PRIV);
        let init = kat::initiation();

        let err = respond(&key, &init[..100], 0).unwrap_err();
        assert!(matches!(err, HandshakeError::WrongSize { got: 100, .. }));
        assert_eq!(
            err.client_message().as_deref(),
            Some("wrong handshake initiation size")
        );
        assert!(matches!(
            respond(&key, &[], 0),
            Err(HandshakeError::WrongSize { .. })
        ));
        let mut long = init.clone();
        long.push(0);
        assert!(matches!(
            respond(&key, &long, 0),
            Err(HandshakeError::WrongSize { .. })
        ));

        let mut wrong_type = init.clone();
        wrong_type[2] = 0x02;
        let err = respond(&key, &wrong_type, 0).unwrap_err();
        assert!(matches!(err, HandshakeError::WrongType(2)));
        assert_eq!(
            err.client_message().as_deref(),
            Some("unexpected handshake message type")
        );

        let mut wrong_len = init.clone();
        wrong_len[4] = 95;
        let err = respond(&key, &wrong_len, 0).unwrap_err();
        assert!(matches!(err, HandshakeError::WrongLength { got: 95, .. }));
        assert_eq!(
            err.client_message().as_deref(),
            Some("wrong handshake initiation length")
        );
    }

    #[test]
    fn old_versions_are_refused_with_a_message() {
        let key = ServerKey::from_private(kat::SERVER_PRIV);
        let err = respond(&key, &kat::initiation(), 131).unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::UnsupportedVersion {
                version: 130,
                minimum: 131
            }
        ));
        let msg = err.client_message().unwrap();
        assert!(msg.contains("130") && msg.contains("131"), "{msg}");
        assert!(respond(&key, &kat::initiation(), 130).is_ok());
    }

    #[test]
    fn tampering_anywhere_fails_without_a_message() {
        let key = ServerKey::from_private(kat::SERVER_PRIV);
        for i in INITIATION_HEADER_LEN..INITIATION_LEN {
            let mut init = kat::initiation();
            init[i] ^= 0x80;
            let err = respond(&key, &init, 0).unwrap_err();
            assert!(
                matches!(
                    err,
                    HandshakeError::Decrypt(_) | HandshakeError::LowOrderKey(_)
                ),
                "byte {i}: {err}"
            );
            assert!(err.client_message().is_none());
        }
    }

    #[test]
    fn wrong_server_key_fails_to_decrypt() {
        let other = ServerKey::from_private([9; 32]);
        assert!(matches!(
            respond(&other, &kat::initiation(), 0),
            Err(HandshakeError::Decrypt(_))
        ));
    }

    #[test]
    fn low_order_points_are_detected() {
        let mut order_8 = [0u8; 32];
        order_8.copy_from_slice(
            &hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap(),
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(is_low_order(&[0; 32]));
        assert!(is_low_order(&one));
        assert!(is_low_order(&order_8));
        assert!(!is_low_order(&kat::CLIENT_PUB));
        assert!(!is_low_order(ServerKey::from_private([3; 32]).public()));
    }

    #[test]
    fn random_input_never_panics() {
        let key = ServerKey::from_private(kat::SERVER_PRIV);
        let mut rng = rand::rng();
        for len in [0usize, 1, 5, 50, 100, 101, 102, 500] {
            for _ in 0..20 {
                let mut bytes: Vec<u8> = (0..len).map(|_| rand::Rng::random(&mut rng)).collect();
                if len == INITIATION_LEN {
                    bytes[2] = MSG_INITIATION;
                    bytes[3] = 0;
                    bytes[4] = 96;
                }
                assert!(respond(&key, &bytes, 0).is_err());
            }
        }
    }
}
