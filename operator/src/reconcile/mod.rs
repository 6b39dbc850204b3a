//! Reconcilers: small async functions over a context holding the admin API,
//! the Kubernetes API and the back-off state, as in kube-rs's controller-rs.

pub mod nodes;
pub mod pak;
pub mod pods;
pub mod user;

use std::time::Duration;

use crate::admin::{Admin, AdminError};
use crate::backoff::Backoff;
use crate::kubeops::{Kube, KubeError};

pub struct Ctx<A: Admin, K: Kube> {
    pub admin: A,
    pub kube: K,
    pub backoff: Backoff,
}

impl<A: Admin, K: Kube> Ctx<A, K> {
    pub fn new(admin: A, kube: K) -> Self {
        Self {
            admin,
            kube,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(300)),
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

/// How often a healthy object is looked at again, to notice drift in the control server.
pub const RESYNC: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests;
