//! The custom resources, defined once here; `meshscale-operator crds` renders
//! them into `crds/*.yaml` and a test keeps the checked-in files in sync.

// Several `printcolumn(type_ = "string", ...)` read as duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "meshscale.dev";

/// A DNS label (RFC 1123): what Kubernetes and the tailnet's MagicDNS both accept.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Durations such as `30m`, `24h`, `7d` or `1h30m` (see `duration::parse`).
const DURATION: &str = "^([0-9]+(s|m|h|d))+$";
/// An ACL tag as the control server accepts it.
const TAG: &str = "^tag:[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// One condition, shaped like `metav1.Condition` so `kubectl wait --for=condition=Ready` works.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase machine-readable reason.
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339; changes only when `status` does.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A user of the control server. Deleting it deletes the user and expels its nodes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshscale.dev",
    version = "v1alpha1",
    kind = "MeshUser",
    shortname = "mu",
    status = "MeshUserStatus",
    printcolumn(name = "ID", type_ = "integer", json_path = ".status.id"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodeCount"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshUserSpec {
    /// The user name in the control server; defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 320))]
    pub email: Option<String>,
}

// Status `Option` fields serialize as `null`, never as absent: the operator
// writes statuses with JSON merge patches, where only an explicit `null`
// clears a field the server has dropped (e.g. a node's expiry disabled).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshUserStatus {
    /// The user's id in the control server.
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub node_count: u32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A pre-auth key whose value the operator writes into a Secret, and only there.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshscale.dev",
    version = "v1alpha1",
    kind = "PreAuthKey",
    namespaced,
    shortname = "pak",
    status = "PreAuthKeyStatus",
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".spec.secretName"),
    printcolumn(name = "ID", type_ = "integer", json_path = ".status.id"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(name = "Used", type_ = "boolean", json_path = ".status.used"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PreAuthKeySpec {
    /// The control-server user name (a MeshUser's `spec.name`, or its resource name).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub user: String,
    #[serde(default)]
    pub reusable: bool,
    #[serde(default)]
    pub ephemeral: bool,
    /// How long a key is valid from its creation, e.g. `24h` or `30d`.
    #[serde(default = "default_expiration")]
    #[schemars(regex(pattern = DURATION))]
    pub expiration: String,
    /// Re-issue the key this long before it expires, e.g. `72h`. Unset: only once expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub rotate_before: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The Secret (same namespace) that receives the key under `authkey`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_LABEL))]
    pub secret_name: String,
}

/// An ACL tag such as `tag:k8s`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Tag(#[schemars(regex(pattern = TAG), length(max = 64))] pub String);

fn default_expiration() -> String {
    "24h".to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreAuthKeyStatus {
    /// The key's id in the control server (never the key itself).
    #[serde(default)]
    pub id: Option<u64>,
    /// RFC 3339.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub used: bool,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One node of the control server, mirrored; deleting it deletes the node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshscale.dev",
    version = "v1alpha1",
    kind = "MeshNode",
    shortname = "mn",
    status = "MeshNodeStatus",
    printcolumn(name = "ID", type_ = "integer", json_path = ".spec.nodeId"),
    printcolumn(name = "Hostname", type_ = "string", json_path = ".status.hostname"),
    printcolumn(name = "User", type_ = "string", json_path = ".status.user"),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".status.addresses"),
    printcolumn(name = "Tags", type_ = "string", json_path = ".status.tags"),
    printcolumn(name = "Online", type_ = "boolean", json_path = ".status.online"),
    printcolumn(name = "Last Seen", type_ = "date", json_path = ".status.lastSeen"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeSpec {
    /// The node's id in the control server; the resource is named `node-<id>`.
    #[schemars(range(min = 1))]
    pub node_id: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeStatus {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub given_name: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The node's ACL tags: its identity in the access policy.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub online: bool,
    #[serde(default)]
    pub last_seen: Option<String>,
    #[serde(default)]
    pub expiry: Option<String>,
    #[serde(default)]
    pub ephemeral: bool,
    /// `namespace/name` of the pod this node runs in, when it is an injected pod.
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The resource name of the mirror of node `id`.
pub fn mesh_node_name(id: u64) -> String {
    format!("node-{id}")
}

/// Policy in Tailscale's language, as structured fields, as one `hujson`
/// text, or both (merged by the same rules as between objects).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBody {
    /// `group:<name>` → members (`user@`, other groups).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Host alias → IP or CIDR.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
    /// `tag:<name>` → who may give nodes that tag.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_owners: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "policy_entries")]
    pub acls: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "policy_entries")]
    pub grants: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "policy_entries")]
    pub ssh: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "policy_entries")]
    pub tests: Vec<serde_json::Value>,
    /// A whole policy document (HuJSON: JSON with comments and trailing commas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub hujson: Option<String>,
}

/// Entries of a policy list, checked by the control server, not the schema:
/// its one-line refusal is more precise than a schema error would be.
fn policy_entries(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicyStatus {
    /// The generation the conditions describe.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Cluster-wide access policy; every one is merged into the server's policy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshscale.dev",
    version = "v1alpha1",
    kind = "ClusterMeshPolicy",
    shortname = "cmp",
    status = "MeshPolicyStatus",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ClusterMeshPolicySpec {
    #[serde(flatten)]
    pub policy: PolicyBody,
}

/// A namespace's access policy: it may only grant access to its own
/// namespace's pods (`tag:k8s-ns-<namespace>`); sources are free.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshscale.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    namespaced,
    shortname = "mp",
    status = "MeshPolicyStatus",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct MeshPolicySpec {
    #[serde(flatten)]
    pub policy: PolicyBody,
}
