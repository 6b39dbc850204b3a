//! The few Kubernetes verbs the reconcilers use, behind a trait so tests run
//! them against an in-memory API (see `fake.rs`) and a cluster through kube.

use std::future::Future;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::crd::{
    MeshNode, MeshNodeSpec, MeshNodeStatus, MeshUser, MeshUserStatus, PreAuthKey, PreAuthKeyStatus,
};

/// Set on everything the operator owns, so no reconcile outlives its cleanup.
pub const FINALIZER: &str = "meshscale.dev/cleanup";
const MANAGER: &str = "meshscale-operator";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes API: {0}")]
    Api(String),
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        KubeError::Api(e.to_string())
    }
}

pub trait Kube: Send + Sync + 'static {
    fn user_finalizers(
        &self,
        name: &str,
        f: Vec<String>,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn user_status(
        &self,
        name: &str,
        s: &MeshUserStatus,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn pak_finalizers(
        &self,
        ns: &str,
        name: &str,
        f: Vec<String>,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn pak_status(
        &self,
        ns: &str,
        name: &str,
        s: &PreAuthKeyStatus,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn get_secret(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>, KubeError>> + Send;
    /// Creates or replaces the Secret (server-side apply).
    fn apply_secret(&self, secret: Secret) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn list_mesh_nodes(&self) -> impl Future<Output = Result<Vec<MeshNode>, KubeError>> + Send;
    /// Creates `name` with the finalizer already set, then its status.
    fn create_mesh_node(
        &self,
        name: &str,
        spec: MeshNodeSpec,
        s: &MeshNodeStatus,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn node_status(
        &self,
        name: &str,
        s: &MeshNodeStatus,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn node_finalizers(
        &self,
        name: &str,
        f: Vec<String>,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn delete_mesh_node(&self, name: &str) -> impl Future<Output = Result<(), KubeError>> + Send;
}

/// The real API through kube.
#[derive(Clone)]
pub struct KubeClient(pub Client);

fn finalizers_patch(f: Vec<String>) -> Patch<serde_json::Value> {
    Patch::Merge(json!({ "metadata": { "finalizers": f } }))
}

fn status_patch<S: serde::Serialize>(s: &S) -> Patch<serde_json::Value> {
    Patch::Merge(json!({ "status": s }))
}

/// A delete or patch of something already gone is done, not failed.
fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<(), KubeError> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Kube for KubeClient {
    async fn user_finalizers(&self, name: &str, f: Vec<String>) -> Result<(), KubeError> {
        let api: Api<MeshUser> = Api::all(self.0.clone());
        ignore_not_found(
            api.patch(name, &PatchParams::default(), &finalizers_patch(f))
                .await,
        )
    }
    async fn user_status(&self, name: &str, s: &MeshUserStatus) -> Result<(), KubeError> {
        let api: Api<MeshUser> = Api::all(self.0.clone());
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn pak_finalizers(&self, ns: &str, name: &str, f: Vec<String>) -> Result<(), KubeError> {
        let api: Api<PreAuthKey> = Api::namespaced(self.0.clone(), ns);
        ignore_not_found(
            api.patch(name, &PatchParams::default(), &finalizers_patch(f))
                .await,
        )
    }
    async fn pak_status(
        &self,
        ns: &str,
        name: &str,
        s: &PreAuthKeyStatus,
    ) -> Result<(), KubeError> {
        let api: Api<PreAuthKey> = Api::namespaced(self.0.clone(), ns);
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn get_secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, KubeError> {
        let api: Api<Secret> = Api::namespaced(self.0.clone(), ns);
        Ok(api.get_opt(name).await?)
    }
    async fn apply_secret(&self, secret: Secret) -> Result<(), KubeError> {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.0.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
        Ok(())
    }
    async fn list_mesh_nodes(&self) -> Result<Vec<MeshNode>, KubeError> {
        let api: Api<MeshNode> = Api::all(self.0.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }
    async fn create_mesh_node(
        &self,
        name: &str,
        spec: MeshNodeSpec,
        s: &MeshNodeStatus,
    ) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.0.clone());
        let mut node = MeshNode::new(name, spec);
        node.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            // Another sync created it first: only the status is left to write.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn node_status(&self, name: &str, s: &MeshNodeStatus) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.0.clone());
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn node_finalizers(&self, name: &str, f: Vec<String>) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.0.clone());
        ignore_not_found(
            api.patch(name, &PatchParams::default(), &finalizers_patch(f))
                .await,
        )
    }
    async fn delete_mesh_node(&self, name: &str) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.0.clone());
        ignore_not_found(api.delete(name, &DeleteParams::default()).await)
    }
}

/// `f` plus the finalizer, or `None` when it is already there.
pub fn with_finalizer(f: Option<&Vec<String>>) -> Option<Vec<String>> {
    let f = f.cloned().unwrap_or_default();
    if f.iter().any(|x| x == FINALIZER) {
        return None;
    }
    let mut f = f;
    f.push(FINALIZER.to_string());
    Some(f)
}

/// `f` without the finalizer.
pub fn without_finalizer(f: Option<&Vec<String>>) -> Vec<String> {
    f.cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x != FINALIZER)
        .collect()
}

pub fn has_finalizer(f: Option<&Vec<String>>) -> bool {
    f.is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}
