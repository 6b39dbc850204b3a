//! MeshNode: a mirror of the control server's node table. `sync` makes the
//! CRs follow the server; `reconcile` makes a deleted CR delete its node.

use std::collections::{BTreeMap, HashMap};

use chrono::SecondsFormat;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{info, instrument};

use super::{Ctx, ReconcileError, emit, normal, warning};
use crate::admin::{Admin, AdminError, Node, from_timestamp};
use crate::crd::{MeshNode, MeshNodeSpec, MeshNodeStatus, mesh_node_name};
use crate::kubeops::{Kube, has_finalizer, without_finalizer};

/// Deleting a MeshNode deletes its node; the finalizer holds the CR until it has.
#[instrument(skip_all, fields(meshnode = %mn.name_any()))]
pub async fn reconcile<A: Admin, K: Kube>(
    mn: &MeshNode,
    ctx: &Ctx<A, K>,
) -> Result<Action, ReconcileError> {
    let finalizers = mn.metadata.finalizers.as_ref();
    if mn.metadata.deletion_timestamp.is_some() && has_finalizer(finalizers) {
        match ctx.admin.delete_node(mn.spec.node_id).await {
            Ok(()) => {
                info!(node_id = mn.spec.node_id, "node deleted");
                let m = format!("node {} deleted from the control server", mn.spec.node_id);
                emit(ctx, mn, normal("NodeDeleted", "DeleteNode", m)).await;
            }
            Err(AdminError::NotFound(_)) => {}
            Err(e) => {
                emit(ctx, mn, warning("DeleteNode", &e)).await;
                return Err(e.into());
            }
        }
        ctx.kube
            .node_finalizers(&mn.name_any(), without_finalizer(finalizers))
            .await?;
    }
    Ok(Action::await_change())
}

/// What the mirror of `node` should say. `pods` maps hostnames of injected pods to `ns/name`.
pub fn status_of(node: &Node, pods: &HashMap<String, String>) -> MeshNodeStatus {
    let ts = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(from_timestamp)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
    };
    MeshNodeStatus {
        hostname: node.name.clone(),
        given_name: node.given_name.clone(),
        user: node
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default(),
        addresses: node.ip_addresses.clone(),
        tags: node.tags.clone(),
        online: node.online,
        last_seen: ts(&node.last_seen),
        expiry: ts(&node.expiry),
        ephemeral: node.ephemeral,
        pod: pods.get(&node.name).cloned(),
        conditions: Vec::new(),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// One pass of control server → CRs. Idempotent; run periodically by the leader.
#[instrument(skip_all)]
pub async fn sync<A: Admin, K: Kube>(
    ctx: &Ctx<A, K>,
    pods: &HashMap<String, String>,
) -> Result<SyncReport, ReconcileError> {
    let nodes = ctx.admin.list_nodes("").await?;
    let crs: BTreeMap<String, MeshNode> = ctx
        .kube
        .list_mesh_nodes()
        .await?
        .into_iter()
        .map(|mn| (mn.name_any(), mn))
        .collect();
    let mut report = SyncReport::default();
    let mut live = std::collections::HashSet::new();
    for node in &nodes {
        let name = mesh_node_name(node.id);
        live.insert(name.clone());
        let want = status_of(node, pods);
        match crs.get(&name) {
            None => {
                let spec = MeshNodeSpec { node_id: node.id };
                ctx.kube.create_mesh_node(&name, spec, &want).await?;
                report.created += 1;
            }
            Some(cr) if cr.metadata.deletion_timestamp.is_some() => {}
            Some(cr) => {
                let have = cr.status.clone().unwrap_or_default();
                let mut want = want;
                want.conditions = have.conditions.clone();
                if have != want {
                    ctx.kube.node_status(&name, &want).await?;
                    report.updated += 1;
                }
            }
        }
    }
    for (name, cr) in &crs {
        if live.contains(name) {
            continue;
        }
        // The node is gone from the server: drop the mirror without a DeleteNode.
        if has_finalizer(cr.metadata.finalizers.as_ref()) {
            ctx.kube
                .node_finalizers(name, without_finalizer(cr.metadata.finalizers.as_ref()))
                .await?;
        }
        if cr.metadata.deletion_timestamp.is_none() {
            ctx.kube.delete_mesh_node(name).await?;
        }
        report.deleted += 1;
    }
    update_node_counts(ctx, &nodes).await?;
    Ok(report)
}

/// Keeps every MeshUser's `nodeCount` in step with the node list just read,
/// so it follows node changes within one sync instead of the user's resync.
/// Only counts that changed are written.
async fn update_node_counts<A: Admin, K: Kube>(
    ctx: &Ctx<A, K>,
    nodes: &[Node],
) -> Result<(), ReconcileError> {
    let mut per_user: HashMap<&str, u32> = HashMap::new();
    for n in nodes {
        if let Some(u) = &n.user {
            *per_user.entry(u.name.as_str()).or_default() += 1;
        }
    }
    for mu in ctx.kube.list_mesh_users().await? {
        // Only users the operator has reconciled: their status is its to write.
        let Some(mut status) = mu.status.clone().filter(|s| s.id.is_some()) else {
            continue;
        };
        if mu.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let count = per_user
            .get(super::user::user_name(&mu).as_str())
            .copied()
            .unwrap_or(0);
        if status.node_count != count {
            status.node_count = count;
            ctx.kube.user_status(&mu.name_any(), &status).await?;
        }
    }
    Ok(())
}
