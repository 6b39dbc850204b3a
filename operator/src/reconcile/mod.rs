//! Reconcilers: small async functions over a context holding the admin API,
//! the Kubernetes API and the back-off state, as in kube-rs's controller-rs.

pub mod nodes;
pub mod pak;
pub mod pods;
pub mod policy;
pub mod user;

use std::time::Duration;

use crate::admin::{Admin, AdminError};
use crate::backoff::Backoff;
use crate::kubeops::{Kube, KubeError, Note};

pub struct Ctx<A: Admin, K: Kube> {
    pub admin: A,
    pub kube: K,
    pub backoff: Backoff,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl<A: Admin, K: Kube> Ctx<A, K> {
    pub fn new(admin: A, kube: K) -> Self {
        Self {
            admin,
            kube,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(300)),
            metrics: std::sync::Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// The reason a failed admin call shows in the `Synced` condition.
pub fn admin_reason(e: &AdminError) -> &'static str {
    match e {
        AdminError::Unavailable(_) => "ControlServerUnreachable",
        AdminError::NotFound(_) => "NotFound",
        AdminError::AlreadyExists(_) => "AlreadyExists",
        AdminError::Rejected(_) => "ControlServerRejected",
    }
}

/// Publishes an event about `obj`; a failure is logged, never returned: the
/// reconcile's real work is done either way.
pub async fn emit<A: Admin, K: Kube, R>(ctx: &Ctx<A, K>, obj: &R, note: Note)
where
    R: kube::Resource<DynamicType = ()>,
{
    let reason = note.reason;
    if let Err(e) = ctx.kube.event(obj.object_ref(&()), note).await {
        tracing::warn!(reason, error = %e, "could not publish an event");
    }
}

pub fn normal(reason: &'static str, action: &'static str, message: impl Into<String>) -> Note {
    Note {
        warning: false,
        reason,
        action,
        message: message.into(),
    }
}

/// A failed admin call as a Warning event; the reason says what kind of failure.
pub fn warning(action: &'static str, e: &AdminError) -> Note {
    Note {
        warning: true,
        reason: admin_reason(e),
        action,
        message: e.to_string(),
    }
}

/// How often a healthy object is looked at again, to notice drift in the control server.
pub const RESYNC: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod real_server;

#[cfg(test)]
mod live;
#[cfg(test)]
mod real_kube;
