//! The client half of the controlbase handshake (Tailscale
//! `control/controlbase/handshake.go: ClientDeferred`,
//! `continueClientHandshake`). Pure: bytes in, bytes out.
//!
//! Noise_IK_25519_ChaChaPoly_BLAKE2s with the client as initiator and the
//! server's static key known from `/key`. The Tailscale parts are the framing
//! ([`super::wire`]) and the prologue `"Tailscale Control Protocol v" +
//! decimal(version)`, which binds the cleartext version of the initiation
//! header into the handshake.
//!
//! The handshake is split like Go's: [`Initiator::new`] builds the 101-byte
//! initiation, which rides in the `X-Tailscale-Handshake` header of the HTTP
//! upgrade; [`Initiator::finish`] takes the server's 51-byte response.

use meshscale_wire::MachinePublic;

use super::error::HandshakeError;
use super::wire::{
    HEADER_LEN, INITIATION_LEN, INITIATION_PAYLOAD_LEN, MSG_ERROR, MSG_INITIATION, MSG_RESPONSE,
    RESPONSE_LEN, RESPONSE_PAYLOAD_LEN, header, parse_header,
};
use crate::keys::{MachineKey, is_low_order};
use meshscale_ts2021::TransportCipher;

pub use meshscale_ts2021::wire::{PROLOGUE_PREFIX, PROTOCOL_NAME, prologue};

fn noise_params() -> Result<snow::params::NoiseParams, HandshakeError> {
    PROTOCOL_NAME.parse().map_err(HandshakeError::Noise)
}

/// A client mid-handshake: the initiation is built, the response not read.
pub struct Initiator {
    hs: snow::HandshakeState,
    initiation: [u8; INITIATION_LEN],
    version: u16,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Builds the initiation for `server` (its Noise public key, from
    /// `/key`). `version` is the client's capability version: it goes into
    /// the header and the prologue, and servers gate on it.
    pub fn new(
        machine: &MachineKey,
        server: &MachinePublic,
        version: u16,
    ) -> Result<Self, HandshakeError> {
        Self::build(machine, server, version, None)
    }

    fn build(
        machine: &MachineKey,
        server: &MachinePublic,
        version: u16,
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> Result<Self, HandshakeError> {
        let prologue = prologue(version);
        let mut builder = snow::Builder::new(noise_params()?)
            .prologue(&prologue)
            .and_then(|b| b.local_private_key(machine.private().as_bytes()))
            .and_then(|b| b.remote_public_key(server.as_bytes()))
            .map_err(HandshakeError::Noise)?;
        if let Some(e) = fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = builder.build_initiator().map_err(HandshakeError::Noise)?;

        let mut initiation = [0u8; INITIATION_LEN];
        initiation[..2].copy_from_slice(&version.to_be_bytes());
        // INITIATION_PAYLOAD_LEN is 96, it fits in a u16.
        initiation[2..5].copy_from_slice(&header(MSG_INITIATION, INITIATION_PAYLOAD_LEN as u16));
        // -> e, es, s, ss with an empty payload.
        let n = hs
            .write_message(&[], &mut initiation[5..])
            .map_err(HandshakeError::Noise)?;
        if n != INITIATION_PAYLOAD_LEN {
            return Err(HandshakeError::Noise(snow::Error::Input));
        }
        Ok(Self {
            hs,
            initiation,
            version,
        })
    }

    #[cfg(test)]
    pub(crate) fn with_fixed_ephemeral(
        machine: &MachineKey,
        server: &MachinePublic,
        version: u16,
        ephemeral: &[u8; 32],
    ) -> Result<Self, HandshakeError> {
        Self::build(machine, server, version, Some(ephemeral))
    }

    /// The 101-byte initiation message.
    pub fn initiation(&self) -> &[u8; INITIATION_LEN] {
        &self.initiation
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// Consumes the server's response (`<- e, ee, se`) and returns the
    /// transport ciphers.
    pub fn finish(
        mut self,
        response: &[u8; RESPONSE_LEN],
    ) -> Result<TransportCipher, HandshakeError> {
        let hdr = [response[0], response[1], response[2]];
        match parse_answer_header(hdr)? {
            AnswerHeader::Response => {}
            AnswerHeader::Error { .. } => return Err(HandshakeError::UnexpectedType(MSG_ERROR)),
        }
        let payload = &response[HEADER_LEN..];
        // Go's X25519 refuses small-order points (ee would be all zero);
        // snow doesn't check, so do it here.
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&payload[..32]);
        if is_low_order(&ephemeral) {
            return Err(HandshakeError::LowOrderKey);
        }
        let mut out = [0u8; RESPONSE_PAYLOAD_LEN];
        let n = self
            .hs
            .read_message(payload, &mut out)
            .map_err(|_| HandshakeError::Decrypt)?;
        if n != 0 {
            // Unreachable with a 48-byte message; refuse rather than ignore.
            return Err(HandshakeError::Decrypt);
        }
        TransportCipher::from_handshake(self.hs).map_err(HandshakeError::Noise)
    }
}

/// What the 3-byte header of the server's first message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerHeader {
    /// A handshake response: [`RESPONSE_PAYLOAD_LEN`] bytes follow.
    Response,
    /// A refusal: `len` bytes of text follow.
    Error { len: usize },
}

/// Classifies the header of the server's answer, with controlbase's checks:
/// a response must announce exactly 48 bytes; anything but a response or an
/// error message is a protocol violation.
pub fn parse_answer_header(hdr: [u8; HEADER_LEN]) -> Result<AnswerHeader, HandshakeError> {
    match parse_header(hdr) {
        (MSG_RESPONSE, RESPONSE_PAYLOAD_LEN) => Ok(AnswerHeader::Response),
        (MSG_RESPONSE, len) => Err(HandshakeError::WrongLength(len)),
        (MSG_ERROR, len) => Ok(AnswerHeader::Error { len }),
        (other, _) => Err(HandshakeError::UnexpectedType(other)),
    }
}

/// Builds a controlbase error message (type 0x03), as servers send it; for
/// tests and fake servers.
pub use meshscale_ts2021::wire::error_message;

#[cfg(test)]
mod tests {
    use super::super::kat;
    use super::*;
    use crate::keys::public_of;
    use meshscale_wire::MachinePrivate;

    fn kat_initiator() -> Initiator {
        let machine =
            MachineKey::from_private(MachinePrivate::from_bytes(kat::CLIENT_PRIV)).unwrap();
        assert_eq!(machine.public().as_bytes(), &kat::CLIENT_PUB);
        let server = MachinePublic::from_bytes(public_of(&kat::SERVER_PRIV).unwrap());
        Initiator::with_fixed_ephemeral(&machine, &server, kat::VERSION, &kat::CLIENT_EPHEMERAL)
            .unwrap()
    }

    fn kat_response() -> [u8; RESPONSE_LEN] {
        kat::bytes(kat::RESPONSE).try_into().unwrap()
    }

    #[test]
    fn initiation_matches_independent_implementation() {
        let init = kat_initiator();
        assert_eq!(init.initiation().as_slice(), kat::bytes(kat::INITIATION));
        assert_eq!(&init.initiation()[..5], &[0, 130, 1, 0, 96]);
    }

    #[test]
    fn transport_records_use_big_endian_nonces() {
        let mut cipher = kat_initiator().finish(&kat_response()).unwrap();
        kat::check_transport(
            &mut cipher,
            &kat::CLIENT_RECORDS,
            &kat::SERVER_RECORDS,
            "client",
        );
    }

    #[test]
    fn answer_headers() {
        assert_eq!(
            parse_answer_header([2, 0, 48]).unwrap(),
            AnswerHeader::Response
        );
        assert!(matches!(
            parse_answer_header([2, 0, 47]),
            Err(HandshakeError::WrongLength(47))
        ));
        assert_eq!(
            parse_answer_header([3, 1, 0]).unwrap(),
            AnswerHeader::Error { len: 256 }
        );
        assert!(matches!(
            parse_answer_header([4, 0, 48]),
            Err(HandshakeError::UnexpectedType(4))
        ));
        assert!(matches!(
            parse_answer_header([0x48, 0x54, 0x54]), // "HTT": an HTTP answer
            Err(HandshakeError::UnexpectedType(0x48))
        ));
    }

    #[test]
    fn tampered_responses_are_refused() {
        for i in 3..RESPONSE_LEN {
            let mut resp = kat_response();
            resp[i] ^= 0x01;
            let err = kat_initiator().finish(&resp).unwrap_err();
            assert!(
                matches!(err, HandshakeError::Decrypt | HandshakeError::LowOrderKey),
                "byte {i}: {err}"
            );
        }
        let mut low = kat_response();
        low[3..35].copy_from_slice(&[0; 32]);
        assert!(matches!(
            kat_initiator().finish(&low),
            Err(HandshakeError::LowOrderKey)
        ));
        let mut wrong_type = kat_response();
        wrong_type[0] = 3;
        assert!(kat_initiator().finish(&wrong_type).is_err());
    }

    #[test]
    fn error_message_layout() {
        assert_eq!(error_message("nope"), b"\x03\x00\x04nope");
        let long = "é".repeat(40_000);
        let msg = error_message(&long);
        assert_eq!(
            msg.len() - 3,
            usize::from(u16::from_be_bytes([msg[1], msg[2]]))
        );
        assert!(std::str::from_utf8(&msg[3..]).is_ok());
    }

    #[test]
    fn fresh_initiations_differ() {
        let machine = MachineKey::generate().unwrap();
        let server = MachineKey::generate().unwrap().public();
        let a = Initiator::new(&machine, &server, 133).unwrap();
        let b = Initiator::new(&machine, &server, 133).unwrap();
        assert_ne!(a.initiation(), b.initiation(), "fresh ephemeral keys");
        assert_eq!(&a.initiation()[..5], &[0, 133, 1, 0, 96]);
    }
}
