//! The few Kubernetes verbs the reconcilers use, behind a trait so tests run
//! them against an in-memory API (see `fake.rs`) and a cluster through kube.

use std::future::Future;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::crd::{
    ClusterMeshPolicy, MeshNode, MeshNodeSpec, MeshNodeStatus, MeshPolicy, MeshPolicyStatus,
    MeshUser, MeshUserStatus, PreAuthKey, PreAuthKeySpec, PreAuthKeyStatus,
};
use crate::injectkey::LABEL_INJECTION;

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

/// A Kubernetes event about one of our objects. Notes are built from our own
/// messages and admin errors, which never carry key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    /// PascalCase, e.g. `UserCreated`.
    pub reason: &'static str,
    /// What the operator did, e.g. `CreateUser`.
    pub action: &'static str,
    pub message: String,
}

pub trait Kube: Send + Sync + 'static {
    /// Best effort: callers log a failure and go on; an event never fails a reconcile.
    fn event(
        &self,
        regarding: ObjectReference,
        note: Note,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
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
    /// The same apply as a dry run: whether the API server would accept the
    /// write (RBAC, owner-reference enforcement, admission) before anything
    /// that cannot be undone, such as minting a key, happens.
    fn check_secret_write(
        &self,
        secret: Secret,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn list_mesh_users(&self) -> impl Future<Output = Result<Vec<MeshUser>, KubeError>> + Send;
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
    /// Sets `caBundle` (PEM) on every webhook of the MutatingWebhookConfiguration.
    fn set_webhook_ca_bundle(
        &self,
        config: &str,
        pem: &[u8],
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn list_cluster_mesh_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<ClusterMeshPolicy>, KubeError>> + Send;
    /// In every namespace.
    fn list_mesh_policies(&self)
    -> impl Future<Output = Result<Vec<MeshPolicy>, KubeError>> + Send;
    /// The names of every namespace.
    fn list_namespaces(&self) -> impl Future<Output = Result<Vec<String>, KubeError>> + Send;
    fn cluster_mesh_policy_status(
        &self,
        name: &str,
        s: &MeshPolicyStatus,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    fn mesh_policy_status(
        &self,
        ns: &str,
        name: &str,
        s: &MeshPolicyStatus,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    /// Creates the PreAuthKey unless one of that name exists; `true` when created.
    fn ensure_pre_auth_key(
        &self,
        ns: &str,
        name: &str,
        spec: PreAuthKeySpec,
    ) -> impl Future<Output = Result<bool, KubeError>> + Send;
}

/// The real API through kube.
#[derive(Clone)]
pub struct KubeClient {
    client: Client,
    recorder: Recorder,
}

impl KubeClient {
    /// `instance`: this replica's name, shown as the event's reporting instance.
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: Some(instance.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }
}

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
    async fn event(&self, regarding: ObjectReference, note: Note) -> Result<(), KubeError> {
        let ev = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_string(),
            // The API server refuses notes over 1 KiB.
            note: Some(note.message.chars().take(1000).collect()),
            action: note.action.to_string(),
            secondary: None,
        };
        Ok(self.recorder.publish(&ev, &regarding).await?)
    }
    async fn user_finalizers(&self, name: &str, f: Vec<String>) -> Result<(), KubeError> {
        let api: Api<MeshUser> = Api::all(self.client.clone());
        ignore_not_found(
            api.patch(name, &PatchParams::default(), &finalizers_patch(f))
                .await,
        )
    }
    async fn user_status(&self, name: &str, s: &MeshUserStatus) -> Result<(), KubeError> {
        let api: Api<MeshUser> = Api::all(self.client.clone());
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn pak_finalizers(&self, ns: &str, name: &str, f: Vec<String>) -> Result<(), KubeError> {
        let api: Api<PreAuthKey> = Api::namespaced(self.client.clone(), ns);
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
        let api: Api<PreAuthKey> = Api::namespaced(self.client.clone(), ns);
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn get_secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, KubeError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }
    async fn apply_secret(&self, secret: Secret) -> Result<(), KubeError> {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
        Ok(())
    }
    async fn check_secret_write(&self, secret: Secret) -> Result<(), KubeError> {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force().dry_run(),
            &Patch::Apply(&secret),
        )
        .await?;
        Ok(())
    }
    async fn list_mesh_users(&self) -> Result<Vec<MeshUser>, KubeError> {
        let api: Api<MeshUser> = Api::all(self.client.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }
    async fn list_mesh_nodes(&self) -> Result<Vec<MeshNode>, KubeError> {
        let api: Api<MeshNode> = Api::all(self.client.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }
    async fn create_mesh_node(
        &self,
        name: &str,
        spec: MeshNodeSpec,
        s: &MeshNodeStatus,
    ) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.client.clone());
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
        let api: Api<MeshNode> = Api::all(self.client.clone());
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn node_finalizers(&self, name: &str, f: Vec<String>) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.client.clone());
        ignore_not_found(
            api.patch(name, &PatchParams::default(), &finalizers_patch(f))
                .await,
        )
    }
    async fn delete_mesh_node(&self, name: &str) -> Result<(), KubeError> {
        let api: Api<MeshNode> = Api::all(self.client.clone());
        ignore_not_found(api.delete(name, &DeleteParams::default()).await)
    }
    async fn set_webhook_ca_bundle(&self, config: &str, pem: &[u8]) -> Result<(), KubeError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let mut mwc = api.get(config).await?;
        let want = ByteString(pem.to_vec());
        let mut changed = false;
        for hook in mwc.webhooks.iter_mut().flatten() {
            if hook.client_config.ca_bundle.as_ref() != Some(&want) {
                hook.client_config.ca_bundle = Some(want.clone());
                changed = true;
            }
        }
        if changed {
            // A replace carries the resourceVersion we read: a concurrent
            // `helm upgrade` makes it fail (409) and the next pass retries,
            // instead of one writer silently undoing the other.
            api.replace(config, &PostParams::default(), &mwc).await?;
        }
        Ok(())
    }
    async fn list_cluster_mesh_policies(&self) -> Result<Vec<ClusterMeshPolicy>, KubeError> {
        let api: Api<ClusterMeshPolicy> = Api::all(self.client.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }
    async fn list_mesh_policies(&self) -> Result<Vec<MeshPolicy>, KubeError> {
        let api: Api<MeshPolicy> = Api::all(self.client.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }
    async fn list_namespaces(&self) -> Result<Vec<String>, KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(api
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }
    async fn cluster_mesh_policy_status(
        &self,
        name: &str,
        s: &MeshPolicyStatus,
    ) -> Result<(), KubeError> {
        let api: Api<ClusterMeshPolicy> = Api::all(self.client.clone());
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn mesh_policy_status(
        &self,
        ns: &str,
        name: &str,
        s: &MeshPolicyStatus,
    ) -> Result<(), KubeError> {
        let api: Api<MeshPolicy> = Api::namespaced(self.client.clone(), ns);
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn ensure_pre_auth_key(
        &self,
        ns: &str,
        name: &str,
        spec: PreAuthKeySpec,
    ) -> Result<bool, KubeError> {
        let api: Api<PreAuthKey> = Api::namespaced(self.client.clone(), ns);
        if let Some(have) = api.get_opt(name).await? {
            // An injection key made before the tags changed (an upgrade that
            // added namespace tags, a new --inject-tags): the PreAuthKey
            // reconciler reissues the key once its spec says so.
            let ours = have
                .labels()
                .get(LABEL_INJECTION)
                .is_some_and(|v| v == "true");
            if ours && have.spec.tags != spec.tags {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "tags": spec.tags } })),
                )
                .await?;
            }
            return Ok(false);
        }
        let mut pak = PreAuthKey::new(name, spec);
        pak.metadata.namespace = Some(ns.to_string());
        pak.metadata.labels = Some(
            [
                (LABEL_INJECTION.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGER.to_string(),
                ),
            ]
            .into(),
        );
        match api.create(&PostParams::default(), &pak).await {
            Ok(_) => Ok(true),
            // Created by a concurrent event for another pod of the namespace.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
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
