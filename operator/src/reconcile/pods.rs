//! Pods take their nodes with them: when an injected pod is deleted (or has
//! finished), the node registered under its name is deleted at once instead of
//! waiting for the ephemeral-node inactivity timeout.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tracing::{info, instrument};

use super::{Ctx, ReconcileError};
use crate::admin::{Admin, AdminError};
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

/// Deletes the nodes whose hostname is the pod's name (the sidecar registers
/// with `--hostname $(POD_NAME)`), optionally only those of `user`.
#[instrument(skip_all, fields(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())))]
pub async fn pod_gone<A: Admin, K: Kube>(
    pod: &Pod,
    user: Option<&str>,
    ctx: &Ctx<A, K>,
) -> Result<usize, ReconcileError> {
    let hostname = pod.name_any();
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
