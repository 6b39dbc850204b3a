//! In-memory stand-ins for the control server and the Kubernetes API, used by
//! the reconciler tests. They keep state the way the real ones do (ids, unique
//! names, finalizers) and can be switched "down" to test back-off paths.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Secret;

use crate::admin::{Admin, AdminError, ApiPreAuthKey, NewKey, Node, User, timestamp};
use crate::crd::{
    ClusterMeshPolicy, MeshNode, MeshNodeSpec, MeshNodeStatus, MeshPolicy, MeshPolicyStatus,
    MeshUser, MeshUserStatus, PreAuthKeySpec, PreAuthKeyStatus,
};
use crate::kubeops::{FINALIZER, FinalizerEdit, Kube, KubeError, Note};

#[derive(Default)]
pub struct FakeAdmin {
    pub down: AtomicBool,
    pub state: Mutex<AdminState>,
}

#[derive(Default)]
pub struct AdminState {
    pub next_id: u64,
    pub users: BTreeMap<u64, User>,
    pub keys: BTreeMap<u64, ApiPreAuthKey>,
    pub expired_keys: Vec<u64>,
    pub nodes: BTreeMap<u64, Node>,
    pub create_user_calls: usize,
    /// The policy in force (database mode), as set.
    pub policy: Option<String>,
    pub set_policy_calls: usize,
}

impl FakeAdmin {
    fn check(&self) -> Result<std::sync::MutexGuard<'_, AdminState>, AdminError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AdminError::Unavailable("connection refused".into()));
        }
        Ok(self.state.lock().unwrap())
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// A node as a sidecar registering with `hostname` would create.
    pub fn add_node(&self, user: &str, hostname: &str) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        let user = s.users.values().find(|u| u.name == user).cloned();
        s.nodes.insert(
            id,
            Node {
                id,
                name: hostname.into(),
                given_name: hostname.into(),
                user,
                ip_addresses: vec![format!("100.64.0.{id}")],
                online: true,
                ..Default::default()
            },
        );
        id
    }
}

impl Admin for FakeAdmin {
    async fn get_policy(&self) -> Result<String, AdminError> {
        self.check()?
            .policy
            .clone()
            .ok_or_else(|| AdminError::NotFound("no policy".into()))
    }

    async fn set_policy(&self, text: &str) -> Result<(), AdminError> {
        let mut s = self.check()?;
        // Refused as the server refuses it: parse errors, undefined tags, ...
        meshscale_policy::Policy::parse(text)
            .map_err(|e| AdminError::Rejected(format!("InvalidArgument: {e}")))?;
        s.set_policy_calls += 1;
        s.policy = Some(text.to_string());
        Ok(())
    }

    async fn find_user(&self, name: &str) -> Result<Option<User>, AdminError> {
        Ok(self
            .check()?
            .users
            .values()
            .find(|u| u.name == name)
            .cloned())
    }
    async fn create_user(
        &self,
        name: &str,
        display: &str,
        email: &str,
    ) -> Result<User, AdminError> {
        let mut s = self.check()?;
        s.create_user_calls += 1;
        if s.users.values().any(|u| u.name == name) {
            return Err(AdminError::AlreadyExists(format!("user {name}")));
        }
        s.next_id += 1;
        let user = User {
            id: s.next_id,
            name: name.into(),
            display_name: display.into(),
            email: email.into(),
            ..Default::default()
        };
        s.users.insert(user.id, user.clone());
        Ok(user)
    }
    async fn delete_user(&self, id: u64) -> Result<(), AdminError> {
        let mut s = self.check()?;
        if s.nodes
            .values()
            .any(|n| n.user.as_ref().is_some_and(|u| u.id == id))
        {
            return Err(AdminError::Rejected("user has nodes".into()));
        }
        s.users
            .remove(&id)
            .map(|_| ())
            .ok_or(AdminError::NotFound("user".into()))
    }
    async fn create_pre_auth_key(&self, k: NewKey) -> Result<ApiPreAuthKey, AdminError> {
        let mut s = self.check()?;
        let user = s
            .users
            .get(&k.user_id)
            .cloned()
            .ok_or(AdminError::NotFound("user".into()))?;
        s.next_id += 1;
        let key = ApiPreAuthKey {
            user: Some(user),
            id: s.next_id,
            key: format!("mskey-secret-{:032}", s.next_id),
            reusable: k.reusable,
            ephemeral: k.ephemeral,
            used: false,
            expiration: Some(timestamp(k.expiration)),
            created_at: None,
            acl_tags: k.tags,
        };
        // Like the server: only the prefix is kept for listing.
        let mut stored = key.clone();
        stored.key = "mskey-***".into();
        s.keys.insert(key.id, stored);
        Ok(key)
    }
    async fn list_pre_auth_keys(&self, user_id: u64) -> Result<Vec<ApiPreAuthKey>, AdminError> {
        let s = self.check()?;
        Ok(s.keys
            .values()
            .filter(|k| user_id == 0 || k.user.as_ref().is_some_and(|u| u.id == user_id))
            .cloned()
            .collect())
    }
    async fn expire_pre_auth_key(&self, id: u64) -> Result<(), AdminError> {
        let mut s = self.check()?;
        if !s.keys.contains_key(&id) {
            return Err(AdminError::NotFound("key".into()));
        }
        s.expired_keys.push(id);
        Ok(())
    }
    async fn list_nodes(&self, user: &str) -> Result<Vec<Node>, AdminError> {
        let s = self.check()?;
        Ok(s.nodes
            .values()
            .filter(|n| user.is_empty() || n.user.as_ref().is_some_and(|u| u.name == user))
            .cloned()
            .collect())
    }
    async fn delete_node(&self, id: u64) -> Result<(), AdminError> {
        let mut s = self.check()?;
        s.nodes
            .remove(&id)
            .map(|_| ())
            .ok_or(AdminError::NotFound("node".into()))
    }
}

/// Just the objects the reconcilers write, keyed by name (or `ns/name`).
#[derive(Default)]
pub struct FakeKube {
    pub state: Mutex<KubeState>,
}

#[derive(Default)]
pub struct KubeState {
    pub user_finalizers: BTreeMap<String, Vec<String>>,
    pub user_status: BTreeMap<String, MeshUserStatus>,
    pub pak_finalizers: BTreeMap<String, Vec<String>>,
    pub pak_status: BTreeMap<String, PreAuthKeyStatus>,
    pub secrets: BTreeMap<String, Secret>,
    pub nodes: BTreeMap<String, MeshNode>,
    /// MeshUsers as listed (tests put them here); `user_status` updates theirs.
    pub users: BTreeMap<String, MeshUser>,
    /// Every Secret write fails, dry runs included (RBAC, owner enforcement).
    pub fail_secret_writes: bool,
    /// Only the real write fails, after a dry run passed (a lost race).
    pub fail_secret_apply: bool,
    /// PreAuthKeys the operator created, by `ns/name`.
    pub paks: BTreeMap<String, PreAuthKeySpec>,
    /// (kind/namespace/name, note), in order.
    pub events: Vec<(String, Note)>,
    /// MutatingWebhookConfiguration name → the caBundle set on its webhooks.
    pub webhook_ca: BTreeMap<String, Vec<u8>>,
    /// ClusterMeshPolicies by name; status writes update them.
    pub cluster_policies: BTreeMap<String, ClusterMeshPolicy>,
    /// MeshPolicies by `ns/name`; status writes update them.
    pub mesh_policies: BTreeMap<String, MeshPolicy>,
    pub namespaces: Vec<String>,
}

impl FakeKube {
    pub fn reasons(&self) -> Vec<&'static str> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|(_, n)| n.reason)
            .collect()
    }
}

impl Kube for FakeKube {
    async fn list_cluster_mesh_policies(&self) -> Result<Vec<ClusterMeshPolicy>, KubeError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .cluster_policies
            .values()
            .cloned()
            .collect())
    }
    async fn list_mesh_policies(&self) -> Result<Vec<MeshPolicy>, KubeError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .mesh_policies
            .values()
            .cloned()
            .collect())
    }
    async fn list_namespaces(&self) -> Result<Vec<String>, KubeError> {
        Ok(self.state.lock().unwrap().namespaces.clone())
    }
    async fn cluster_mesh_policy_status(
        &self,
        name: &str,
        st: &MeshPolicyStatus,
    ) -> Result<(), KubeError> {
        if let Some(p) = self.state.lock().unwrap().cluster_policies.get_mut(name) {
            p.status = Some(st.clone());
        }
        Ok(())
    }
    async fn mesh_policy_status(
        &self,
        ns: &str,
        name: &str,
        st: &MeshPolicyStatus,
    ) -> Result<(), KubeError> {
        let key = format!("{ns}/{name}");
        if let Some(p) = self.state.lock().unwrap().mesh_policies.get_mut(&key) {
            p.status = Some(st.clone());
        }
        Ok(())
    }

    async fn event(
        &self,
        r: k8s_openapi::api::core::v1::ObjectReference,
        note: Note,
    ) -> Result<(), KubeError> {
        let who = format!(
            "{}/{}/{}",
            r.kind.unwrap_or_default(),
            r.namespace.unwrap_or_default(),
            r.name.unwrap_or_default()
        );
        self.state.lock().unwrap().events.push((who, note));
        Ok(())
    }
    async fn user_finalizers(&self, name: &str, edit: FinalizerEdit) -> Result<(), KubeError> {
        self.state
            .lock()
            .unwrap()
            .user_finalizers
            .insert(name.into(), edit.result());
        Ok(())
    }
    async fn user_status(&self, name: &str, s: &MeshUserStatus) -> Result<(), KubeError> {
        let mut st = self.state.lock().unwrap();
        if let Some(u) = st.users.get_mut(name) {
            u.status = Some(s.clone());
        }
        st.user_status.insert(name.into(), s.clone());
        Ok(())
    }
    async fn pak_finalizers(
        &self,
        ns: &str,
        name: &str,
        edit: FinalizerEdit,
    ) -> Result<(), KubeError> {
        self.state
            .lock()
            .unwrap()
            .pak_finalizers
            .insert(format!("{ns}/{name}"), edit.result());
        Ok(())
    }
    async fn pak_status(
        &self,
        ns: &str,
        name: &str,
        s: &PreAuthKeyStatus,
    ) -> Result<(), KubeError> {
        self.state
            .lock()
            .unwrap()
            .pak_status
            .insert(format!("{ns}/{name}"), s.clone());
        Ok(())
    }
    async fn get_secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, KubeError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .secrets
            .get(&format!("{ns}/{name}"))
            .cloned())
    }
    async fn apply_secret(&self, secret: Secret) -> Result<(), KubeError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_secret_writes || s.fail_secret_apply {
            return Err(KubeError::Api("secrets is forbidden".into()));
        }
        let key = format!(
            "{}/{}",
            secret.metadata.namespace.clone().unwrap_or_default(),
            secret.metadata.name.clone().unwrap_or_default()
        );
        s.secrets.insert(key, secret);
        Ok(())
    }
    async fn check_secret_write(&self, _secret: Secret) -> Result<(), KubeError> {
        if self.state.lock().unwrap().fail_secret_writes {
            return Err(KubeError::Api("secrets is forbidden".into()));
        }
        Ok(())
    }
    async fn list_mesh_users(&self) -> Result<Vec<MeshUser>, KubeError> {
        Ok(self.state.lock().unwrap().users.values().cloned().collect())
    }
    async fn list_mesh_nodes(&self) -> Result<Vec<MeshNode>, KubeError> {
        Ok(self.state.lock().unwrap().nodes.values().cloned().collect())
    }
    async fn create_mesh_node(
        &self,
        name: &str,
        spec: MeshNodeSpec,
        st: &MeshNodeStatus,
    ) -> Result<(), KubeError> {
        let mut node = MeshNode::new(name, spec);
        node.metadata.finalizers = Some(vec![FINALIZER.into()]);
        node.status = Some(st.clone());
        self.state.lock().unwrap().nodes.insert(name.into(), node);
        Ok(())
    }
    async fn node_status(&self, name: &str, st: &MeshNodeStatus) -> Result<(), KubeError> {
        if let Some(n) = self.state.lock().unwrap().nodes.get_mut(name) {
            n.status = Some(st.clone());
        }
        Ok(())
    }
    async fn node_finalizers(&self, name: &str, edit: FinalizerEdit) -> Result<(), KubeError> {
        let f = edit.result();
        let mut s = self.state.lock().unwrap();
        let remove = match s.nodes.get_mut(name) {
            Some(n) => {
                n.metadata.finalizers = Some(f.clone());
                // Like the API server: a deleted object goes once its finalizers are gone.
                n.metadata.deletion_timestamp.is_some() && f.is_empty()
            }
            None => false,
        };
        if remove {
            s.nodes.remove(name);
        }
        Ok(())
    }
    async fn delete_mesh_node(&self, name: &str) -> Result<(), KubeError> {
        let mut s = self.state.lock().unwrap();
        let has_finalizers = s.nodes.get(name).is_some_and(|n| {
            n.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
        });
        if has_finalizers {
            if let Some(n) = s.nodes.get_mut(name) {
                n.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
            }
        } else {
            s.nodes.remove(name);
        }
        Ok(())
    }
    async fn ensure_pre_auth_key(
        &self,
        ns: &str,
        name: &str,
        spec: PreAuthKeySpec,
    ) -> Result<bool, KubeError> {
        let mut s = self.state.lock().unwrap();
        let key = format!("{ns}/{name}");
        if let Some(have) = s.paks.get_mut(&key) {
            // As the real one: only the tags of an injection key are brought up to date.
            have.tags = spec.tags;
            return Ok(false);
        }
        s.paks.insert(key, spec);
        Ok(true)
    }
    async fn set_webhook_ca_bundle(&self, config: &str, pem: &[u8]) -> Result<(), KubeError> {
        self.state
            .lock()
            .unwrap()
            .webhook_ca
            .insert(config.into(), pem.to_vec());
        Ok(())
    }
}
