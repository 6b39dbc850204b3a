//! Tailscale SSH policy (`tailcfg.SSHPolicy` …). Go tags these lowerCamel,
//! except `SSHRecorderFailureAction`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StableNodeId;
use crate::gojson;

/// How a node handles incoming Tailscale SSH connections; the first
/// matching rule decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshPolicy {
    #[serde(deserialize_with = "gojson::nullable")]
    pub rules: Vec<SshRule>,
}

/// A match predicate and an action (`tailcfg.SSHRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SshRule {
    #[serde(with = "gojson::opt_time", skip_serializing_if = "Option::is_none")]
    pub rule_expires: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "gojson::nullable")]
    pub principals: Vec<SshPrincipal>,
    /// Requested SSH user (or `"*"`) → local user; `"="` maps to the same
    /// name.
    #[serde(deserialize_with = "gojson::nullable")]
    pub ssh_users: BTreeMap<String, String>,
    /// `None` denies.
    pub action: Option<SshAction>,
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub accept_env: Vec<String>,
}

/// Who a rule matches; any one set field matching is enough.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SshPrincipal {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: StableNodeId,
    #[serde(rename = "nodeIP", skip_serializing_if = "String::is_empty")]
    pub node_ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_login: String,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub any: bool,
}

/// What to do with a matched connection (`tailcfg.SSHAction`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SshAction {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub reject: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub accept: bool,
    /// Maximum session length in nanoseconds (Go `time.Duration`).
    #[serde(skip_serializing_if = "gojson::is_zero_i64")]
    pub session_duration: i64,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub allow_agent_forwarding: bool,
    /// Long-poll URL (over Noise) that returns the final `SshAction`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hold_and_delegate: String,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub allow_local_port_forwarding: bool,
    #[serde(skip_serializing_if = "gojson::is_false")]
    pub allow_remote_port_forwarding: bool,
    /// Session recorder `ip:port`s.
    #[serde(
        deserialize_with = "gojson::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub recorders: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_recording_failure: Option<SshRecorderFailureAction>,
}

/// What to do when session recording fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SshRecorderFailureAction {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reject_session_with_message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub terminate_session_with_message: String,
    #[serde(rename = "NotifyURL", skip_serializing_if = "String::is_empty")]
    pub notify_url: String,
}
