//! The policy file's shape, as `serde` reads it. Unknown keys are refused
//! (Headscale and Tailscale both do); meaning is checked in `resolve`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The whole policy document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PolicyFile {
    #[serde(default)]
    pub(crate) groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) hosts: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) tag_owners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) acls: Vec<Acl>,
    #[serde(default)]
    pub(crate) grants: Vec<Grant>,
    #[serde(default)]
    pub(crate) node_attrs: Vec<NodeAttr>,
    #[serde(default)]
    pub(crate) auto_approvers: AutoApprovers,
    #[serde(default)]
    pub(crate) ssh: Vec<Ssh>,
    #[serde(default)]
    pub(crate) tests: Vec<AclTest>,
    #[serde(default)]
    pub(crate) ssh_tests: Vec<SshTest>,
    #[serde(default)]
    pub(crate) randomize_client_port: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Acl {
    #[serde(default)]
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) proto: Option<Value>,
    #[serde(default)]
    pub(crate) src: Vec<String>,
    #[serde(default)]
    pub(crate) dst: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    #[serde(default)]
    pub(crate) src: Vec<String>,
    #[serde(default)]
    pub(crate) dst: Vec<String>,
    #[serde(default)]
    pub(crate) ip: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) app: Option<BTreeMap<String, Vec<Value>>>,
    #[serde(default)]
    pub(crate) via: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NodeAttr {
    #[serde(default)]
    pub(crate) target: Vec<String>,
    #[serde(default)]
    pub(crate) attr: Vec<String>,
    #[serde(default)]
    pub(crate) app: Option<BTreeMap<String, Vec<Value>>>,
    #[serde(default)]
    pub(crate) ip_pool: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AutoApprovers {
    #[serde(default)]
    pub(crate) routes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) exit_node: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Ssh {
    #[serde(default)]
    pub(crate) action: Option<String>,
    #[serde(default)]
    pub(crate) src: Vec<String>,
    #[serde(default)]
    pub(crate) dst: Vec<String>,
    /// `None` when absent or `null` — both refused ("users must be specified").
    #[serde(default)]
    pub(crate) users: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) check_period: Option<String>,
    #[serde(default)]
    pub(crate) accept_env: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclTest {
    #[serde(default)]
    pub(crate) src: String,
    #[serde(default)]
    pub(crate) proto: Option<Value>,
    #[serde(default)]
    pub(crate) accept: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshTest {
    #[serde(default)]
    pub(crate) src: String,
    #[serde(default)]
    pub(crate) dst: Vec<String>,
    #[serde(default)]
    pub(crate) accept: Vec<String>,
    #[serde(default)]
    pub(crate) check: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
}
