//! The policy file's shape, as `serde` reads it. Unknown keys are refused
//! (Headscale and Tailscale both do); meaning is checked in `resolve`.

use std::collections::BTreeMap;

use meshscale_wire::gojson::nullable;
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
    /// `None` (absent) differs from empty: with neither `acls` nor
    /// `grants`, everything is allowed.
    #[serde(default)]
    pub(crate) acls: Option<Vec<Acl>>,
    #[serde(default)]
    pub(crate) grants: Option<Vec<Grant>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) node_attrs: Vec<NodeAttr>,
    #[serde(default)]
    pub(crate) auto_approvers: AutoApprovers,
    #[serde(default)]
    pub(crate) ssh: Option<Vec<Ssh>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) tests: Vec<AclTest>,
    #[serde(default, deserialize_with = "nullable")]
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
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) src: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) dst: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) src: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) dst: Vec<String>,
    #[serde(default)]
    pub(crate) ip: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) app: Option<BTreeMap<String, Vec<Value>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) via: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NodeAttr {
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) target: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) attr: Vec<String>,
    #[serde(default)]
    pub(crate) app: Option<BTreeMap<String, Vec<Value>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) ip_pool: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AutoApprovers {
    #[serde(default)]
    pub(crate) routes: BTreeMap<String, Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) exit_node: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Ssh {
    #[serde(default)]
    pub(crate) action: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) src: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) dst: Vec<String>,
    /// `None` when absent or `null` — both refused ("users must be specified").
    #[serde(default)]
    pub(crate) users: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) check_period: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) accept_env: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclTest {
    #[serde(default)]
    pub(crate) src: String,
    #[serde(default)]
    pub(crate) proto: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) accept: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) deny: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshTest {
    #[serde(default)]
    pub(crate) src: String,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) dst: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) accept: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) check: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) deny: Vec<String>,
}

/// Field names per object kind, in their canonical spelling.
const TOP: &[&str] = &[
    "groups",
    "hosts",
    "tagOwners",
    "acls",
    "grants",
    "nodeAttrs",
    "autoApprovers",
    "ssh",
    "tests",
    "sshTests",
    "randomizeClientPort",
];
const ACL: &[&str] = &["action", "proto", "src", "dst"];
const GRANT: &[&str] = &["src", "dst", "ip", "app", "via"];
const SSH: &[&str] = &["action", "src", "dst", "users", "checkPeriod", "acceptEnv"];
const NODE_ATTR: &[&str] = &["target", "attr", "app", "ipPool"];
const AUTO_APPROVERS: &[&str] = &["routes", "exitNode"];
const TEST: &[&str] = &["src", "proto", "accept", "deny"];
const SSH_TEST: &[&str] = &["src", "dst", "accept", "check", "deny"];

/// Tailscale matches field names case-insensitively (`ACLs`, `TagOwners`)
/// and ignores `#`-prefixed keys in entries (comments as keys); this
/// rewrites a parsed document to the canonical spelling so `serde` can stay
/// strict about everything else.
pub(crate) fn canonicalize(value: &mut Value) {
    let Value::Object(top) = value else { return };
    rename_keys(top, TOP);
    for (key, names) in [
        ("acls", ACL),
        ("grants", GRANT),
        ("ssh", SSH),
        ("nodeAttrs", NODE_ATTR),
        ("tests", TEST),
        ("sshTests", SSH_TEST),
    ] {
        if let Some(Value::Array(entries)) = top.get_mut(key) {
            for e in entries {
                if let Value::Object(map) = e {
                    rename_keys(map, names);
                }
            }
        }
    }
    if let Some(Value::Object(map)) = top.get_mut("autoApprovers") {
        rename_keys(map, AUTO_APPROVERS);
    }
}

fn rename_keys(map: &mut serde_json::Map<String, Value>, names: &[&str]) {
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if key.starts_with('#') {
            map.remove(&key);
            continue;
        }
        if let Some(canon) = names.iter().find(|n| n.eq_ignore_ascii_case(&key))
            && *canon != key
            && let Some(v) = map.remove(&key)
        {
            map.insert((*canon).to_string(), v);
        }
    }
}
