//! `POST /machine/register` bodies (`tailcfg.RegisterRequest`,
//! `RegisterResponse`, `User`, `Login`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CapabilityVersion, Hostinfo, LoginId, UserId};
use crate::gojson::{self, go_zero_time, is_go_zero_time};
use crate::key::{NlPublic, NodePublic};

/// A client asking to register (or re-check, rotate, or log out) a node key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterRequest {
    /// The client's capability version (set just before sending).
    #[serde(default)]
    pub version: CapabilityVersion,
    /// The node key being registered (the new one during rotation).
    #[serde(default)]
    pub node_key: NodePublic,
    /// The previous node key during rotation, otherwise the zero key. Go
    /// always sends it.
    #[serde(default)]
    pub old_node_key: NodePublic,
    /// Tailnet-lock public key; the client always sends one.
    #[serde(rename = "NLKey", default)]
    pub nl_key: NlPublic,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegisterResponseAuth>,
    /// Requested key expiry. Go's zero time (the default) means none; a time
    /// in the past is a logout (clients send `time.Unix(123, 0)`).
    #[serde(default = "go_zero_time", with = "gojson::time")]
    pub expiry: DateTime<Utc>,
    /// The `AuthURL` of an earlier response, when waiting for interactive
    /// login to complete.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub followup: String,
    /// Go sends `null` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    #[serde(default, skip_serializing_if = "gojson::is_false")]
    pub ephemeral: bool,
    /// Tailnet lock: the node's own signature, re-signed for a new key.
    #[serde(
        default,
        with = "gojson::base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub node_key_signature: Vec<u8>,
    /// Device-certificate signing scheme, as Go's text form
    /// (`"signature-v2"`); absent for unsigned requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_type: Option<String>,
    /// When the client built the request.
    #[serde(
        default,
        with = "gojson::opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "gojson::base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub device_cert: Vec<u8>,
    #[serde(
        default,
        with = "gojson::base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub signature: Vec<u8>,
    /// Optional hint naming the tailnet to join (`"required:"` prefix = must).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tailnet: String,
}

impl Default for RegisterRequest {
    fn default() -> Self {
        Self {
            version: 0,
            node_key: NodePublic::zero(),
            old_node_key: NodePublic::zero(),
            nl_key: NlPublic::zero(),
            auth: None,
            expiry: go_zero_time(),
            followup: String::new(),
            hostinfo: None,
            ephemeral: false,
            node_key_signature: Vec::new(),
            signature_type: None,
            timestamp: None,
            device_cert: Vec::new(),
            signature: Vec::new(),
            tailnet: String::new(),
        }
    }
}

impl RegisterRequest {
    /// Whether the client asked for a specific expiry (non-zero `Expiry`).
    pub fn has_expiry(&self) -> bool {
        !is_go_zero_time(&self.expiry)
    }

    /// Whether this is a logout: a non-zero `Expiry` that is not after `now`.
    pub fn is_logout(&self, now: DateTime<Utc>) -> bool {
        self.has_expiry() && self.expiry <= now
    }
}

/// Credentials in a [`RegisterRequest`] (Go's misnamed
/// `RegisterResponseAuth`). Current clients send only `AuthKey`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterResponseAuth {
    /// A pre-auth key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
    /// Pre-1.66 Android only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_token: Option<Oauth2Token>,
    /// Removed from tailcfg in April 2024; read so old clients round-trip.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Removed from tailcfg in April 2024; read so old clients round-trip.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub login_name: String,
}

/// Go's copy of `oauth2.Token` (snake_case JSON tags).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oauth2Token {
    #[serde(default)]
    pub access_token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refresh_token: String,
    #[serde(
        default,
        with = "gojson::zero_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiry: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Oauth2Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oauth2Token")
            .field("token_type", &self.token_type)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// The server's answer to a [`RegisterRequest`].
///
/// Clients check, in order: `Error` (fail), `NodeKeySignature` (tailnet
/// lock), `NodeKeyExpired` (make a new key and retry), `AuthURL` (show it,
/// then retry with `Followup`), else registration is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterResponse {
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub login: Login,
    /// The node key must be replaced.
    #[serde(default)]
    pub node_key_expired: bool,
    #[serde(default)]
    pub machine_authorized: bool,
    /// Non-empty while interactive authorization is pending.
    #[serde(rename = "AuthURL", default)]
    pub auth_url: String,
    /// Tailnet lock: the current signature, to be re-signed for a new key.
    #[serde(
        default,
        with = "gojson::base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub node_key_signature: Vec<u8>,
    /// Non-empty on failure; the other fields are then ignored.
    #[serde(default)]
    pub error: String,
}

/// A user (`tailcfg.User`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct User {
    #[serde(rename = "ID", default)]
    pub id: UserId,
    #[serde(default)]
    pub display_name: String,
    #[serde(
        rename = "ProfilePicURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub profile_pic_url: String,
    #[serde(
        default,
        with = "gojson::zero_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<DateTime<Utc>>,
}

/// A login at an identity provider (`tailcfg.Login`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Login {
    #[serde(rename = "ID", default)]
    pub id: LoginId,
    #[serde(default)]
    pub provider: String,
    /// An email address or email-like name.
    #[serde(default)]
    pub login_name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(
        rename = "ProfilePicURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub profile_pic_url: String,
}
