//! Pods take their nodes with them: when an injected pod is deleted (or has
//! finished), the node registered under its name is deleted at once instead of
//! waiting for the ephemeral-node inactivity timeout.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tracing::{info, instrument};

use super::{Ctx, ReconcileError};
use crate::admin::{Admin, AdminError, Node, from_timestamp};
use crate::crd::MeshNode;
use crate::injectkey::{KeyDefaults, key_for, spec_for};
use crate::kubeops::Kube;
use crate::webhook::patch::SIDECAR_NAME;

/// Whether the pod carries our sidecar (injected by annotation or namespace label).
pub fn is_injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_NAME)
    })
}

/// A pod whose containers will never run again.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The hostname an injected pod's sidecar registers with: `<pod>-<namespace>`
/// (the webhook passes `--hostname $(POD_NAME)-$(POD_NAMESPACE)`), so pods of
/// the same name in two namespaces are two distinct nodes and the cleanup of
/// one never takes the other's node.
pub fn hostname_of(pod: &Pod) -> String {
    format!("{}-{}", pod.name_any(), pod.namespace().unwrap_or_default())
}

/// Deletes the nodes registered under the pod's hostname (see `hostname_of`),
/// optionally only those of `user`.
#[instrument(skip_all, fields(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())))]
pub async fn pod_gone<A: Admin, K: Kube>(
    pod: &Pod,
    user: Option<&str>,
    ctx: &Ctx<A, K>,
) -> Result<usize, ReconcileError> {
    let hostname = hostname_of(pod);
    let nodes = ctx.admin.list_nodes(user.unwrap_or_default()).await?;
    let mut deleted = 0;
    for node in nodes.iter().filter(|n| n.name == hostname) {
        match ctx.admin.delete_node(node.id).await {
            Ok(()) => {
                info!(node_id = node.id, "node of a gone pod deleted");
                deleted += 1;
            }
            Err(AdminError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// The two timestamps compared in `stale_nodes` come from two clocks (the
/// control server's and the API server's): a node counts as older than a pod
/// only by more than this, so a live pod's own node is never taken for its
/// predecessor. A predecessor younger than this is left to ephemeral cleanup.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(30);

/// An injected pod that is alive, by the hostname its sidecar registers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePod {
    /// `namespace/name`.
    pub pod: String,
    pub created: Option<DateTime<Utc>>,
}

pub fn live_pod(pod: &Pod) -> LivePod {
    LivePod {
        pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0)),
    }
}

/// The nodes that belonged to pods which are gone. Two rules, both safe for
/// nodes that never were pods (laptops, servers):
/// - a node whose MeshNode recorded a pod (`status.pod`) whose hostname is no
///   longer among the live pods: the pod went while the operator was away;
/// - a node registered under a live pod's hostname before that pod was
///   created: a predecessor of the same name (StatefulSet pods come back
///   with their old name but a fresh `emptyDir`, so as a new node).
pub fn stale_nodes(
    nodes: &[Node],
    recorded: &[MeshNode],
    live: &HashMap<String, LivePod>,
) -> Vec<u64> {
    let recorded_pod: HashMap<u64, &str> = recorded
        .iter()
        .filter_map(|mn| Some((mn.spec.node_id, mn.status.as_ref()?.pod.as_deref()?)))
        .collect();
    nodes
        .iter()
        .filter(|n| match live.get(&n.name) {
            None => recorded_pod.contains_key(&n.id),
            Some(p) => {
                let created = n.created_at.as_ref().and_then(from_timestamp);
                matches!((created, p.created), (Some(node), Some(pod)) if node < pod - CLOCK_SKEW)
            }
        })
        .map(|n| n.id)
        .collect()
}

/// Run once the pod watch has listed every pod: catches up on pods deleted
/// while no operator was leading.
#[instrument(skip_all)]
pub async fn resync<A: Admin, K: Kube>(
    live: &HashMap<String, LivePod>,
    ctx: &Ctx<A, K>,
) -> Result<usize, ReconcileError> {
    let nodes = ctx.admin.list_nodes("").await?;
    let recorded = ctx.kube.list_mesh_nodes().await?;
    let mut deleted = 0;
    for id in stale_nodes(&nodes, &recorded, live) {
        match ctx.admin.delete_node(id).await {
            Ok(()) => {
                info!(
                    node_id = id,
                    "node of a pod gone while the operator was away deleted"
                );
                deleted += 1;
            }
            Err(AdminError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// Makes sure the PreAuthKey behind the pod's injection Secret exists; the
/// PreAuthKey reconciler then issues the key into the Secret and rotates it.
/// `Ok(None)` for pods with bad annotations (the webhook refused those).
#[instrument(skip_all, fields(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())))]
pub async fn ensure_injection_key<A: Admin, K: Kube>(
    pod: &Pod,
    defaults: &KeyDefaults,
    ctx: &Ctx<A, K>,
) -> Result<Option<String>, ReconcileError> {
    let ns = pod.namespace().unwrap_or_default();
    let Ok(key) = key_for(pod, &ns, defaults) else {
        return Ok(None);
    };
    if ctx
        .kube
        .ensure_pre_auth_key(&ns, &key.name, spec_for(&key, defaults))
        .await?
    {
        info!(preauthkey = %format!("{ns}/{}", key.name), user = %key.user, "injection key requested");
    }
    Ok(Some(key.name))
}
