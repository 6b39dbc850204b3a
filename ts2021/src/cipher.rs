//! The transport ciphers left by the handshake, with controlbase's nonces.
//!
//! controlbase builds the 12-byte ChaCha20-Poly1305 nonce as 4 zero bytes
//! and the per-direction message counter in BIG-endian; the Noise spec (and
//! snow) put the counter little-endian. The two agree on counter 0 only, so
//! a stock Noise transport fails on the second record.
//!
//! snow's stateless transport takes the counter from the caller and writes
//! it little-endian, so handing it the byte-swapped counter yields exactly
//! the big-endian layout. Keys, AEAD and (empty) associated data are stock.

use snow::StatelessTransportState;

use crate::error::RecordError;
use crate::wire::TAG_LEN;

/// One direction's message counter. `u64::MAX` is reserved, as in Noise and
/// controlbase (`invalidNonce`): once reached, the direction is exhausted.
#[derive(Debug, Default, Clone, Copy)]
struct Counter(u64);

impl Counter {
    /// The value to hand snow for the current message, then advances.
    fn next(&mut self) -> Result<u64, RecordError> {
        if self.0 == u64::MAX {
            return Err(RecordError::NonceExhausted);
        }
        let snow_nonce = self.0.swap_bytes();
        self.0 += 1;
        Ok(snow_nonce)
    }
}

/// Both directions of one finished handshake.
pub struct TransportCipher {
    state: StatelessTransportState,
    tx: Counter,
    rx: Counter,
    /// Set after a failed decryption: controlbase nils its rx cipher then,
    /// and so does this.
    rx_broken: bool,
}

impl std::fmt::Debug for TransportCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportCipher")
            .field("tx", &self.tx.0)
            .field("rx", &self.rx.0)
            .finish_non_exhaustive()
    }
}

impl TransportCipher {
    /// Takes over a finished snow handshake, in either role: snow picks the
    /// send and receive keys by role (the initiator sends with k1, the
    /// responder with k2).
    pub fn from_handshake(hs: snow::HandshakeState) -> Result<Self, snow::Error> {
        Ok(Self {
            state: hs.into_stateless_transport_mode()?,
            tx: Counter::default(),
            rx: Counter::default(),
            rx_broken: false,
        })
    }

    /// Encrypts `plaintext` into `out` (at least `plaintext.len() + 16`
    /// bytes) and returns the ciphertext length.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if out.len() < plaintext.len() + TAG_LEN {
            return Err(RecordError::TooLarge(plaintext.len() + TAG_LEN));
        }
        let nonce = self.tx.next()?;
        // With `out` sized above, snow has nothing left to fail on.
        self.state
            .write_message(nonce, plaintext, out)
            .map_err(|_| RecordError::NonceExhausted)
    }

    /// Decrypts `ciphertext` into `out` (at least `ciphertext.len() - 16`
    /// bytes) and returns the plaintext length. A failure is final.
    pub fn open(&mut self, ciphertext: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if self.rx_broken {
            return Err(RecordError::Closed);
        }
        // The counter advances even on failure, as in controlbase; the
        // direction is dead afterwards anyway.
        let nonce = self.rx.next()?;
        if ciphertext.len() < TAG_LEN || out.len() < ciphertext.len() - TAG_LEN {
            self.rx_broken = true;
            return Err(RecordError::Decrypt);
        }
        self.state
            .read_message(nonce, ciphertext, out)
            .map_err(|_| {
                self.rx_broken = true;
                RecordError::Decrypt
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_big_endian_in_snow_layout() {
        // snow writes the value little-endian into nonce bytes 4..12.
        let mut c = Counter(1);
        assert_eq!(c.next().unwrap().to_le_bytes(), [0, 0, 0, 0, 0, 0, 0, 1]);
        let mut c = Counter(0x0102);
        assert_eq!(c.next().unwrap().to_le_bytes(), [0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn counter_exhausts_at_max() {
        let mut c = Counter(u64::MAX - 1);
        assert!(c.next().is_ok());
        assert_eq!(c.next(), Err(RecordError::NonceExhausted));
        assert_eq!(c.next(), Err(RecordError::NonceExhausted));
    }
}
