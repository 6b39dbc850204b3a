//! MeshUser ⇄ control-server user.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{info, instrument};

use super::{Ctx, RESYNC, ReconcileError, admin_reason, emit, normal, warning};
use crate::admin::{Admin, AdminError, User};
use crate::conditions::{self, READY, SYNCED};
use crate::crd::MeshUser;
use crate::kubeops::{Kube, has_finalizer, with_finalizer, without_finalizer};

/// The control-server name of a MeshUser.
pub fn user_name(mu: &MeshUser) -> String {
    mu.spec.name.clone().unwrap_or_else(|| mu.name_any())
}

#[instrument(skip_all, fields(meshuser = %mu.name_any()))]
pub async fn reconcile<A: Admin, K: Kube>(
    mu: &MeshUser,
    ctx: &Ctx<A, K>,
) -> Result<Action, ReconcileError> {
    let name = mu.name_any();
    let finalizers = mu.metadata.finalizers.as_ref();
    if mu.metadata.deletion_timestamp.is_some() {
        if has_finalizer(finalizers) {
            match destroy(&user_name(mu), ctx).await {
                Ok(true) => {
                    let m = "user and its nodes deleted";
                    emit(ctx, mu, normal("UserDeleted", "DeleteUser", m)).await;
                }
                Ok(false) => {}
                Err(e) => {
                    emit(ctx, mu, warning("DeleteUser", &e)).await;
                    report(mu, ctx, Err(&e)).await?;
                    return Err(e.into());
                }
            }
            ctx.kube
                .user_finalizers(&name, without_finalizer(finalizers))
                .await?;
            info!("user deleted from the control server");
        }
        return Ok(Action::await_change());
    }
    // The finalizer goes on before the user exists, so no user is ever left behind.
    if let Some(f) = with_finalizer(finalizers) {
        ctx.kube.user_finalizers(&name, f).await?;
    }
    match ensure(mu, ctx).await {
        Ok((user, nodes, created)) => {
            if created {
                let m = format!("user {} created with id {}", user.name, user.id);
                emit(ctx, mu, normal("UserCreated", "CreateUser", m)).await;
            }
            let mut status = mu.status.clone().unwrap_or_default();
            status.id = Some(user.id);
            status.node_count = nodes;
            // The reason says how the user came to be, once: "Created" must not
            // turn into "Exists" at the reconcile its own status write triggers.
            let kept = status
                .conditions
                .iter()
                .find(|c| c.type_ == READY && c.status == "True")
                .map(|c| c.reason.clone());
            let reason = match (created, kept.as_deref()) {
                (true, _) => "Created",
                (false, Some("Created")) => "Created",
                _ => "Exists",
            };
            let g = mu.metadata.generation;
            conditions::set(&mut status.conditions, READY, true, reason, "", g);
            conditions::set(&mut status.conditions, SYNCED, true, "Synced", "", g);
            if mu.status.as_ref() != Some(&status) {
                ctx.kube.user_status(&name, &status).await?;
            }
            Ok(Action::requeue(RESYNC))
        }
        Err(e) => {
            emit(ctx, mu, warning("CreateUser", &e)).await;
            report(mu, ctx, Err(&e)).await?;
            Err(e.into())
        }
    }
}

async fn report<A: Admin, K: Kube>(
    mu: &MeshUser,
    ctx: &Ctx<A, K>,
    result: Result<(), &AdminError>,
) -> Result<(), ReconcileError> {
    let mut status = mu.status.clone().unwrap_or_default();
    if let Err(e) = result {
        let g = mu.metadata.generation;
        conditions::set(
            &mut status.conditions,
            SYNCED,
            false,
            admin_reason(e),
            e.to_string(),
            g,
        );
        // An unreachable server says nothing about the user; a refusal does.
        if !matches!(e, AdminError::Unavailable(_)) || status.id.is_none() {
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                admin_reason(e),
                e.to_string(),
                g,
            );
        }
    }
    ctx.kube.user_status(&mu.name_any(), &status).await?;
    Ok(())
}

/// Finds or creates the user; `true` when this call created it.
async fn ensure<A: Admin, K: Kube>(
    mu: &MeshUser,
    ctx: &Ctx<A, K>,
) -> Result<(User, u32, bool), AdminError> {
    let name = user_name(mu);
    // Look before creating: a repeated reconcile (or a second replica that lost
    // the lease mid-flight) then adopts the user instead of making another.
    let (user, created) = match ctx.admin.find_user(&name).await? {
        Some(u) => (u, false),
        None => {
            let display = mu.spec.display_name.as_deref().unwrap_or_default();
            let email = mu.spec.email.as_deref().unwrap_or_default();
            match ctx.admin.create_user(&name, display, email).await {
                Ok(u) => (u, true),
                // Lost a race with another creator: the server's unique name wins.
                Err(AdminError::AlreadyExists(_)) => match ctx.admin.find_user(&name).await? {
                    Some(u) => (u, false),
                    None => return Err(AdminError::Unavailable("user vanished".into())),
                },
                Err(e) => return Err(e),
            }
        }
    };
    let nodes = ctx.admin.list_nodes(&name).await?.len();
    Ok((user, u32::try_from(nodes).unwrap_or(u32::MAX), created))
}

/// Expels the user's nodes, then deletes the user; already gone is fine
/// (`false`: there was nothing to delete).
async fn destroy<A: Admin, K: Kube>(name: &str, ctx: &Ctx<A, K>) -> Result<bool, AdminError> {
    let Some(user) = ctx.admin.find_user(name).await? else {
        return Ok(false);
    };
    for node in ctx.admin.list_nodes(name).await? {
        match ctx.admin.delete_node(node.id).await {
            Ok(()) | Err(AdminError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match ctx.admin.delete_user(user.id).await {
        Ok(()) => Ok(true),
        Err(AdminError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}
