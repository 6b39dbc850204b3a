//! Messages around the Noise transport: the `/key` answer and the early
//! payload sent before HTTP/2.

use serde::{Deserialize, Serialize};

use crate::key::{ChallengePublic, MachinePublic};

/// JSON answer to `GET /key?v=<capver>` (`tailcfg.OverTLSPublicKeyResponse`;
/// lowerCamel tags). Both keys are always written; the zero legacy key is
/// what current servers send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OverTlsPublicKeyResponse {
    /// The pre-Noise NaCl key; zero for any client new enough to matter.
    pub legacy_public_key: MachinePublic,
    /// The server's Noise static key. Clients refuse a zero key.
    pub public_key: MachinePublic,
}

/// The early payload (`tailcfg.EarlyNoise`), sent by the server through the
/// Noise channel right after the handshake, framed as magic `"\xff\xff\xffTS"`
/// + big-endian u32 length + this JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EarlyNoise {
    /// Random per connection.
    pub node_key_challenge: ChallengePublic,
}
