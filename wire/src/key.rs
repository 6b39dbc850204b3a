//! Curve25519 key newtypes and their text forms (Go `types/key`).
//!
//! Text form = type prefix + 64 hex characters of the 32 raw bytes. Writers
//! use lowercase; readers accept either case, require the exact prefix and
//! exactly 64 hex characters. The empty string is not a key: the Go client's
//! JSON decoder rejects it, so optional key fields must be omitted instead.
//!
//! No cryptography lives here. Generating keys and deriving public keys
//! (X25519) is done by the crates that own the secrets; these are only the
//! bytes and their encodings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length in bytes of every key type here.
pub const KEY_LEN: usize = 32;
const HEX_LEN: usize = KEY_LEN * 2;

/// Why a key string was refused. Deliberately never echoes the input: it
/// may be (part of) a private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("key is empty")]
    Empty,
    #[error("key does not start with the expected prefix {expected:?}")]
    WrongPrefix { expected: &'static str },
    #[error("key hex has the wrong length: got {got} characters, want 64")]
    WrongLength { got: usize },
    #[error("key contains a non-hex character")]
    InvalidHex,
}

fn parse_hex_key(s: &str, prefixes: &[&'static str]) -> Result<[u8; KEY_LEN], KeyParseError> {
    if s.is_empty() {
        return Err(KeyParseError::Empty);
    }
    let hex_part =
        prefixes
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .ok_or(KeyParseError::WrongPrefix {
                expected: prefixes[0],
            })?;
    if hex_part.len() != HEX_LEN {
        return Err(KeyParseError::WrongLength {
            got: hex_part.len(),
        });
    }
    let mut out = [0u8; KEY_LEN];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| KeyParseError::InvalidHex)?;
    Ok(out)
}

fn write_hex_key(f: &mut fmt::Formatter<'_>, prefix: &str, bytes: &[u8; KEY_LEN]) -> fmt::Result {
    f.write_str(prefix)?;
    let mut buf = [0u8; HEX_LEN];
    // Cannot fail: the buffer is exactly twice the input length.
    hex::encode_to_slice(bytes, &mut buf).map_err(|_| fmt::Error)?;
    f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
}

/// Implements the text form, serde and the byte accessors shared by every
/// key type. `$prefixes[0]` is written; all of them are accepted.
macro_rules! key_common {
    ($name:ident, [$($prefix:literal),+]) => {
        impl $name {
            /// The text prefix written for this key type.
            pub const PREFIX: &'static str = [$($prefix),+][0];

            /// The all-zero key, Go's zero value (`IsZero`).
            pub const fn zero() -> Self {
                Self([0u8; KEY_LEN])
            }

            pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }

            pub fn is_zero(&self) -> bool {
                self.0 == [0u8; KEY_LEN]
            }
        }

        impl FromStr for $name {
            type Err = KeyParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex_key(s, &[$($prefix),+]).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex_key(f, Self::PREFIX, &self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! public_key {
    ($(#[$doc:meta])* $name:ident, [$($prefix:literal),+]) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; KEY_LEN]);

        key_common!($name, [$($prefix),+]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

macro_rules! private_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// `Debug` prints `privkey:<redacted>`; `Display` and `Serialize`
        /// print the secret on purpose (key files use that form), so never
        /// log this type with `{}`. Equality is constant-time.
        #[derive(Clone)]
        pub struct $name([u8; KEY_LEN]);

        key_common!($name, ["privkey:"]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("privkey:<redacted>")
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                // Fold over every byte so timing does not reveal where
                // two secrets first differ.
                self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
        }

        impl Eq for $name {}

        impl Drop for $name {
            fn drop(&mut self) {
                // Best effort: scrub the secret so it does not linger in
                // freed memory; black_box keeps the store from being elided.
                self.0 = [0u8; KEY_LEN];
                std::hint::black_box(&self.0);
            }
        }
    };
}

public_key!(
    /// A machine's long-term public key (`mkey:`): the Noise static key that
    /// identifies a device to the control server.
    MachinePublic,
    ["mkey:"]
);

public_key!(
    /// A node's public key (`nodekey:`): its WireGuard key and DERP address.
    NodePublic,
    ["nodekey:"]
);

public_key!(
    /// A disco public key (`discokey:`), regenerated by clients on every
    /// start and used for NAT-traversal messages.
    DiscoPublic,
    ["discokey:"]
);

public_key!(
    /// A tailnet-lock public key (`nlpub:`). Like Go, parsing also accepts the
    /// CLI spelling `tlpub:`; it is always written as `nlpub:`.
    NlPublic,
    ["nlpub:", "tlpub:"]
);

public_key!(
    /// A per-connection challenge public key (`chalpub:`), sent by the server
    /// in [`crate::tailcfg::EarlyNoise`].
    ChallengePublic,
    ["chalpub:"]
);

private_key!(
    /// A machine private key (`privkey:`), e.g. the control server's Noise key.
    MachinePrivate
);

private_key!(
    /// A node private key (`privkey:`), e.g. a node's WireGuard key or the
    /// DERP server key.
    NodePrivate
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_private_keys_is_redacted() {
        let k = MachinePrivate::from_bytes([0xab; KEY_LEN]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "privkey:<redacted>");
        assert!(!dbg.contains("abab"));
        let wrapped = format!("{:?}", Some(NodePrivate::from_bytes([0xcd; KEY_LEN])));
        assert!(!wrapped.contains("cdcd"));
    }

    #[test]
    fn errors_do_not_echo_input() {
        let secret = format!("privkey:{}", "z".repeat(64));
        let err = secret.parse::<MachinePrivate>().unwrap_err();
        assert_eq!(err, KeyParseError::InvalidHex);
        assert!(!err.to_string().contains("zzzz"));
    }

    #[test]
    fn private_equality() {
        let a = NodePrivate::from_bytes([1; KEY_LEN]);
        let b = NodePrivate::from_bytes([1; KEY_LEN]);
        let mut c_bytes = [1; KEY_LEN];
        c_bytes[31] = 2;
        assert_eq!(a, b);
        assert_ne!(a, NodePrivate::from_bytes(c_bytes));
    }
}
