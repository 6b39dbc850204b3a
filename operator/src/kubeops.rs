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
        edit: FinalizerEdit,
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
        edit: FinalizerEdit,
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
        edit: FinalizerEdit,
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

/// `None` when there is nothing to send.
fn finalizers_patch(edit: &FinalizerEdit) -> Result<Option<Patch<serde_json::Value>>, KubeError> {
    if edit.is_noop() {
        return Ok(None);
    }
    let ops: json_patch::Patch = serde_json::from_value(edit.patch())
        .map_err(|e| KubeError::Api(format!("finalizer patch: {e}")))?;
    Ok(Some(Patch::Json(ops)))
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
    async fn user_finalizers(&self, name: &str, edit: FinalizerEdit) -> Result<(), KubeError> {
        let Some(patch) = finalizers_patch(&edit)? else {
            return Ok(());
        };
        let api: Api<MeshUser> = Api::all(self.client.clone());
        ignore_not_found(api.patch(name, &PatchParams::default(), &patch).await)
    }
    async fn user_status(&self, name: &str, s: &MeshUserStatus) -> Result<(), KubeError> {
        let api: Api<MeshUser> = Api::all(self.client.clone());
        ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &status_patch(s))
                .await,
        )
    }
    async fn pak_finalizers(
        &self,
        ns: &str,
        name: &str,
        edit: FinalizerEdit,
    ) -> Result<(), KubeError> {
        let Some(patch) = finalizers_patch(&edit)? else {
            return Ok(());
        };
        let api: Api<PreAuthKey> = Api::namespaced(self.client.clone(), ns);
        ignore_not_found(api.patch(name, &PatchParams::default(), &patch).await)
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
    async fn node_finalizers(&self, name: &str, edit: FinalizerEdit) -> Result<(), KubeError> {
        let Some(patch) = finalizers_patch(&edit)? else {
            return Ok(());
        };
        let api: Api<MeshNode> = Api::all(self.client.clone());
        ignore_not_found(api.patch(name, &PatchParams::default(), &patch).await)
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

/// A change to an object's finalizer list, computed from the list the
/// reconciler saw. It goes out as a JSON patch that first tests that list
/// (kube-runtime's `finalizer()` technique): if another controller edited
/// the finalizers meanwhile, the API server refuses the patch and the next
/// reconcile starts over, instead of a merge patch overwriting their entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizerEdit {
    /// Append ours to `current` (`None`: the object has no list yet).
    Add { current: Option<Vec<String>> },
    /// Remove ours from `current`, where it sits at `index` (`None`: it is
    /// not there, nothing to do).
    Remove {
        current: Vec<String>,
        index: Option<usize>,
    },
}

impl FinalizerEdit {
    /// The list after the edit.
    pub fn result(&self) -> Vec<String> {
        match self {
            FinalizerEdit::Add { current } => {
                let mut f = current.clone().unwrap_or_default();
                f.push(FINALIZER.to_string());
                f
            }
            FinalizerEdit::Remove { current, index } => {
                let mut f = current.clone();
                if let Some(i) = *index {
                    f.remove(i);
                }
                f
            }
        }
    }

    /// The JSON patch; empty when there is nothing to do.
    pub fn patch(&self) -> serde_json::Value {
        match self {
            FinalizerEdit::Add { current: None } => json!([
                { "op": "test", "path": "/metadata/finalizers", "value": null },
                { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
            ]),
            FinalizerEdit::Add {
                current: Some(current),
            } => json!([
                { "op": "test", "path": "/metadata/finalizers", "value": current },
                { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
            ]),
            FinalizerEdit::Remove { index: None, .. } => json!([]),
            FinalizerEdit::Remove { index: Some(i), .. } => json!([
                { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER },
                { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
            ]),
        }
    }

    fn is_noop(&self) -> bool {
        matches!(self, FinalizerEdit::Remove { index: None, .. })
    }
}

/// Adds our finalizer, or `None` when it is already there.
pub fn with_finalizer(f: Option<&Vec<String>>) -> Option<FinalizerEdit> {
    if has_finalizer(f) {
        return None;
    }
    Some(FinalizerEdit::Add {
        current: f.cloned(),
    })
}

/// Removes our finalizer (a no-op edit when it is not there).
pub fn without_finalizer(f: Option<&Vec<String>>) -> FinalizerEdit {
    let current = f.cloned().unwrap_or_default();
    let index = current.iter().position(|x| x == FINALIZER);
    FinalizerEdit::Remove { current, index }
}

pub fn has_finalizer(f: Option<&Vec<String>>) -> bool {
    f.is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(doc: &serde_json::Value, edit: &FinalizerEdit) -> Result<serde_json::Value, String> {
        let ops: json_patch::Patch =
            serde_json::from_value(edit.patch()).map_err(|e| e.to_string())?;
        let mut doc = doc.clone();
        json_patch::patch(&mut doc, &ops).map_err(|e| e.to_string())?;
        Ok(doc)
    }

    #[test]
    fn adding_keeps_other_controllers_finalizers_and_matches_result() {
        let seen = vec!["other.example/keep".to_string()];
        let doc = json!({ "metadata": { "finalizers": seen } });
        let Some(edit) = with_finalizer(Some(&seen)) else {
            panic!("our finalizer is not there yet");
        };
        let after = apply(&doc, &edit).expect("the list is as seen");
        assert_eq!(
            after["metadata"]["finalizers"],
            json!(["other.example/keep", FINALIZER])
        );
        assert_eq!(
            after["metadata"]["finalizers"],
            serde_json::to_value(edit.result()).expect("json")
        );
        assert_eq!(with_finalizer(Some(&edit.result())), None);
    }

    #[test]
    fn a_list_changed_since_it_was_read_refuses_the_patch() {
        // Read with [other]; meanwhile a third controller added its own.
        let seen = vec!["other.example/keep".to_string()];
        let now =
            json!({ "metadata": { "finalizers": ["other.example/keep", "third.example/x"] } });
        let Some(add) = with_finalizer(Some(&seen)) else {
            panic!("our finalizer is not there yet");
        };
        assert!(apply(&now, &add).is_err(), "a stale add must not land");

        // Removal: ours was at index 1 when read; the list shifted since.
        let seen = vec!["other.example/keep".to_string(), FINALIZER.to_string()];
        let remove = without_finalizer(Some(&seen));
        let shifted = json!({ "metadata": { "finalizers": ["other.example/keep", "third.example/x", FINALIZER] } });
        assert!(
            apply(&shifted, &remove).is_err(),
            "a stale remove must not drop another entry"
        );
        let as_seen = json!({ "metadata": { "finalizers": seen } });
        let after = apply(&as_seen, &remove).expect("the list is as seen");
        assert_eq!(
            after["metadata"]["finalizers"],
            json!(["other.example/keep"])
        );
    }

    #[test]
    fn removing_an_absent_finalizer_sends_nothing() {
        let seen = vec!["other.example/keep".to_string()];
        let edit = without_finalizer(Some(&seen));
        assert!(edit.is_noop());
        assert_eq!(edit.result(), seen);
        assert!(matches!(finalizers_patch(&edit), Ok(None)));
        assert!(without_finalizer(None).is_noop());
    }

    #[test]
    fn the_first_finalizer_on_an_object_without_a_list() {
        let edit = with_finalizer(None).expect("not there");
        assert_eq!(edit.result(), vec![FINALIZER.to_string()]);
        assert!(matches!(finalizers_patch(&edit), Ok(Some(_))));
    }
}
