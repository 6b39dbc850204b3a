//! Ephemeral nodes go away once they have been without a map session for
//! `ephemeral_node_inactivity_timeout`.

use crate::state::SharedState;

/// Deletes `node_id` after the timeout unless it has come back online by then.
pub fn schedule_ephemeral_deletion(state: SharedState, node_id: i64) {
    let Ok(timeout) = state.config.ephemeral_inactivity_timeout() else {
        return;
    };
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if state.hub.is_online(node_id) {
            return;
        }
        match state.store.get_node(node_id).await {
            Ok(node) if node.ephemeral => match state.store.delete_node(node_id).await {
                Ok(_) => {
                    state.hub.remove(node_id);
                    tracing::info!(node.id = node_id, node.name = %node.given_name, "ephemeral node removed after inactivity");
                }
                Err(e) => {
                    tracing::warn!(node.id = node_id, error = %e, "cannot remove ephemeral node")
                }
            },
            _ => {}
        }
    });
}

/// At start-up every ephemeral node is offline: start each one's clock.
pub async fn schedule_all_ephemeral(state: &SharedState) {
    match state.store.list_nodes(None).await {
        Ok(nodes) => {
            for n in nodes.into_iter().filter(|n| n.ephemeral) {
                schedule_ephemeral_deletion(state.clone(), n.id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list ephemeral nodes"),
    }
}
