//! The stored records, as the rest of the server sees them.

use std::net::{Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub profile_pic_url: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub profile_pic_url: String,
}

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub id: Option<i64>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A pre-auth key as listed: never its secret.
#[derive(Debug, Clone)]
pub struct PreAuthKey {
    pub id: i64,
    pub prefix: String,
    pub user: Option<User>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    pub tags: Vec<String>,
    pub expiration: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewPreAuthKey {
    pub user_id: Option<i64>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub tags: Vec<String>,
    pub expiration: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: i64,
    pub prefix: String,
    pub expiration: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// Names an API key the way the CLI does: by id or by its public prefix.
#[derive(Debug, Clone)]
pub enum ApiKeySelector {
    Id(i64),
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterMethod {
    Unspecified = 0,
    AuthKey = 1,
    Cli = 2,
    Oidc = 3,
}

impl RegisterMethod {
    pub fn from_i64(v: i64) -> RegisterMethod {
        match v {
            1 => RegisterMethod::AuthKey,
            2 => RegisterMethod::Cli,
            3 => RegisterMethod::Oidc,
            _ => RegisterMethod::Unspecified,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: i64,
    pub machine_key: String,
    pub node_key: String,
    pub disco_key: String,
    pub hostname: String,
    pub given_name: String,
    pub user: User,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub auth_key_id: Option<i64>,
    pub register_method: RegisterMethod,
    pub expiry: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Node {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

/// What a registration knows about the node being admitted.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub machine_key: String,
    pub node_key: String,
    pub disco_key: String,
    pub hostname: String,
    pub user_id: i64,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub auth_key_id: Option<i64>,
    pub register_method: RegisterMethod,
    pub expiry: Option<DateTime<Utc>>,
}

/// What a node reports about itself on its map session (kept as JSON text:
/// the store does not interpret it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLive {
    pub disco_key: String,
    pub endpoints_json: String,
    pub hostinfo_json: String,
    pub hostname: String,
}

/// Why a pre-auth key did not admit a node. The texts reach the client
/// (`tailscale up` prints them), so they say what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthKeyError {
    #[error("invalid auth key")]
    Invalid,
    #[error("auth key expired; create a new one with `meshscale preauthkeys create`")]
    Expired,
    #[error("auth key already used; single-use keys admit one node")]
    Used,
    #[error(transparent)]
    Store(#[from] super::StoreError),
}

impl From<sqlx::Error> for AuthKeyError {
    fn from(e: sqlx::Error) -> Self {
        AuthKeyError::Store(e.into())
    }
}
