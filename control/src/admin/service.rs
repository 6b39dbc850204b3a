use chrono::Utc;
use meshscale_api::MeshscaleService;
use meshscale_api::v1::*;
use tonic::{Request, Response, Status};

use super::convert;
use crate::acl::AclError;
use crate::pending::{PendingError, PendingNode};
use crate::state::SharedState;
use crate::store::{
    ApiKeySelector, NewNode, NewPreAuthKey, NewUser, RegisterMethod, StoreError, UserFilter,
};

#[derive(Clone)]
pub struct AdminService {
    state: SharedState,
}

impl AdminService {
    pub fn new(state: SharedState) -> Self {
        AdminService { state }
    }

    /// Records the call's outcome and logs failures the operator should see.
    fn finish<T>(
        &self,
        method: &'static str,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.state.metrics.grpc_request(method, code);
        match result {
            Ok(v) => Ok(Response::new(v)),
            Err(s) => {
                if matches!(code, tonic::Code::Internal | tonic::Code::Unavailable) {
                    tracing::warn!(method, error = %s.message(), "admin call failed");
                } else {
                    tracing::debug!(method, error = %s.message(), "admin call refused");
                }
                Err(s)
            }
        }
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        StoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StoreError::FailedPrecondition(_) | StoreError::Exhausted(..) => {
            Status::failed_precondition(e.to_string())
        }
        StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
        StoreError::Database(ref detail) => {
            tracing::error!(error = %detail, "database error");
            Status::internal("internal database error; see the server log")
        }
    }
}

fn acl_status(e: AclError) -> Status {
    match e {
        AclError::Refused(_) | AclError::TooLarge { .. } => Status::invalid_argument(e.to_string()),
        AclError::NotDatabaseMode => Status::failed_precondition(e.to_string()),
        AclError::NoPolicy => Status::not_found(e.to_string()),
        AclError::Read { .. } => Status::internal(e.to_string()),
        AclError::Store(e) => status(e),
    }
}

fn id_arg(v: u64, what: &str) -> Result<i64, Status> {
    match i64::try_from(v) {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Status::invalid_argument(format!(
            "{what} must be a positive id"
        ))),
    }
}

fn required_time(
    t: &Option<prost_types::Timestamp>,
    what: &str,
) -> Result<chrono::DateTime<Utc>, Status> {
    let t = t
        .as_ref()
        .ok_or_else(|| Status::invalid_argument(format!("{what} is required")))?;
    convert::from_timestamp(t)
        .ok_or_else(|| Status::invalid_argument(format!("{what} is out of range")))
}

impl AdminService {
    async fn list_nodes_of(&self, user: &str) -> Result<Vec<Node>, Status> {
        let s = &self.state;
        let user_id = if user.is_empty() {
            None
        } else {
            Some(s.store.resolve_user(user).await.map_err(status)?.id)
        };
        let nodes = s.store.list_nodes(user_id).await.map_err(status)?;
        let now = Utc::now();
        Ok(nodes
            .iter()
            .map(|n| convert::node(n, s.hub.is_online(n.id), now))
            .collect())
    }

    fn node_message(&self, n: &crate::store::Node) -> Node {
        convert::node(n, self.state.hub.is_online(n.id), Utc::now())
    }
}

#[tonic::async_trait]
impl MeshscaleService for AdminService {
    async fn create_user(
        &self,
        req: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let new = NewUser {
                name: r.name,
                display_name: r.display_name,
                email: r.email,
                profile_pic_url: r.picture_url,
            };
            let u = self.state.store.create_user(new).await.map_err(status)?;
            tracing::info!(user.id = u.id, user.name = %u.name, "user created");
            Ok(CreateUserResponse {
                user: Some(convert::user(&u)),
            })
        }
        .await;
        self.finish("CreateUser", result)
    }

    async fn rename_user(
        &self,
        req: Request<RenameUserRequest>,
    ) -> Result<Response<RenameUserResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let id = id_arg(r.old_id, "old_id")?;
            let u = self
                .state
                .store
                .rename_user(id, &r.new_name)
                .await
                .map_err(status)?;
            tracing::info!(user.id = u.id, user.name = %u.name, "user renamed");
            Ok(RenameUserResponse {
                user: Some(convert::user(&u)),
            })
        }
        .await;
        self.finish("RenameUser", result)
    }

    async fn delete_user(
        &self,
        req: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let id = id_arg(r.id, "id")?;
            let expelled = self.state.store.destroy_user(id).await.map_err(status)?;
            for node_id in &expelled {
                self.state.hub.remove(*node_id);
            }
            tracing::info!(
                user.id = id,
                nodes = expelled.len(),
                "user destroyed with its nodes and keys"
            );
            Ok(DeleteUserResponse {})
        }
        .await;
        self.finish("DeleteUser", result)
    }

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let filter = UserFilter {
                id: (r.id != 0).then(|| id_arg(r.id, "id")).transpose()?,
                name: (!r.name.is_empty()).then_some(r.name),
                email: (!r.email.is_empty()).then_some(r.email),
            };
            let users = self.state.store.list_users(&filter).await.map_err(status)?;
            Ok(ListUsersResponse {
                users: users.iter().map(convert::user).collect(),
            })
        }
        .await;
        self.finish("ListUsers", result)
    }

    async fn create_pre_auth_key(
        &self,
        req: Request<CreatePreAuthKeyRequest>,
    ) -> Result<Response<CreatePreAuthKeyResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let user_id = (r.user != 0).then(|| id_arg(r.user, "user")).transpose()?;
            let new = NewPreAuthKey {
                user_id,
                reusable: r.reusable,
                ephemeral: r.ephemeral,
                tags: r.acl_tags,
                expiration: required_time(&r.expiration, "expiration")?,
            };
            let (key, full) = self.state.store.create_preauth_key(new).await.map_err(status)?;
            tracing::info!(key.id = key.id, key.prefix = %key.prefix, user.id = ?user_id, "pre-auth key created");
            let mut msg = convert::preauth_key(&key);
            msg.key = full;
            Ok(CreatePreAuthKeyResponse { pre_auth_key: Some(msg) })
        }
        .await;
        self.finish("CreatePreAuthKey", result)
    }

    async fn expire_pre_auth_key(
        &self,
        req: Request<ExpirePreAuthKeyRequest>,
    ) -> Result<Response<ExpirePreAuthKeyResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let id = id_arg(r.id, "id")?;
            self.state
                .store
                .expire_preauth_key(id)
                .await
                .map_err(status)?;
            tracing::info!(key.id = id, "pre-auth key expired");
            Ok(ExpirePreAuthKeyResponse {})
        }
        .await;
        self.finish("ExpirePreAuthKey", result)
    }

    async fn delete_pre_auth_key(
        &self,
        req: Request<DeletePreAuthKeyRequest>,
    ) -> Result<Response<DeletePreAuthKeyResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let id = id_arg(r.id, "id")?;
            self.state
                .store
                .delete_preauth_key(id)
                .await
                .map_err(status)?;
            tracing::info!(key.id = id, "pre-auth key deleted");
            Ok(DeletePreAuthKeyResponse {})
        }
        .await;
        self.finish("DeletePreAuthKey", result)
    }

    async fn list_pre_auth_keys(
        &self,
        req: Request<ListPreAuthKeysRequest>,
    ) -> Result<Response<ListPreAuthKeysResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let user_id = if r.user == 0 {
                None
            } else {
                let id = id_arg(r.user, "user")?;
                Some(self.state.store.user_by_id(id).await.map_err(status)?.id)
            };
            let keys = self
                .state
                .store
                .list_preauth_keys(user_id)
                .await
                .map_err(status)?;
            Ok(ListPreAuthKeysResponse {
                pre_auth_keys: keys.iter().map(convert::preauth_key).collect(),
            })
        }
        .await;
        self.finish("ListPreAuthKeys", result)
    }

    async fn debug_create_node(
        &self,
        req: Request<DebugCreateNodeRequest>,
    ) -> Result<Response<DebugCreateNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            if r.name.is_empty() || r.name.len() > 255 {
                return Err(Status::invalid_argument("name must be 1 to 255 characters"));
            }
            if !r.user.is_empty() {
                self.state
                    .store
                    .resolve_user(&r.user)
                    .await
                    .map_err(status)?;
            }
            let machine_key = if r.key.is_empty() {
                random_key("mkey:")
            } else if is_key_text(&r.key, "mkey:") {
                r.key.to_ascii_lowercase()
            } else {
                return Err(Status::invalid_argument(
                    "key must be a machine key: mkey: followed by 64 hex digits",
                ));
            };
            let pending = PendingNode {
                machine_key,
                node_key: random_key("nodekey:"),
                hostname: r.name.clone(),
                request_tags: Vec::new(),
                on_approved: None,
            };
            let node = Node {
                machine_key: pending.machine_key.clone(),
                node_key: pending.node_key.clone(),
                name: r.name,
                ..Default::default()
            };
            let id = self
                .state
                .pending
                .insert(None, pending)
                .map_err(|e| match e {
                    PendingError::Full => Status::resource_exhausted(e.to_string()),
                    PendingError::InvalidId(_) => Status::invalid_argument(e.to_string()),
                    PendingError::Duplicate(_) => Status::already_exists(e.to_string()),
                })?;
            Ok(DebugCreateNodeResponse {
                node: Some(node),
                registration_id: id,
            })
        }
        .await;
        self.finish("DebugCreateNode", result)
    }

    async fn get_node(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let n = self
                .state
                .store
                .get_node(id_arg(r.node_id, "node_id")?)
                .await
                .map_err(status)?;
            Ok(GetNodeResponse {
                node: Some(self.node_message(&n)),
            })
        }
        .await;
        self.finish("GetNode", result)
    }

    async fn set_tags(
        &self,
        req: Request<SetTagsRequest>,
    ) -> Result<Response<SetTagsResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let id = id_arg(r.node_id, "node_id")?;
            if self.state.hub.has_policy() {
                // Checked as registration checks them: the node's user (or
                // the tags it holds) must own every tag per tagOwners.
                let node = self.state.store.get_node(id).await.map_err(status)?;
                let wanted: Vec<String> = r.tags.iter().filter(|t| !t.is_empty()).cloned().collect();
                let bad = crate::acl::unowned_tags(&self.state.hub, &wanted, &node.user, &node.tags);
                if !bad.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "tags {bad:?} are invalid or not permitted: neither user {:?} nor the node's tags own them in the policy's tagOwners",
                        node.user.name
                    )));
                }
            }
            let n = self
                .state
                .store
                .set_node_tags(id, &r.tags)
                .await
                .map_err(status)?;
            self.state.hub.upsert(n.clone());
            tracing::info!(node.id = n.id, tags = ?n.tags, "node tags set");
            Ok(SetTagsResponse {
                node: Some(self.node_message(&n)),
            })
        }
        .await;
        self.finish("SetTags", result)
    }

    async fn register_node(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let s = &self.state;
            let user = s.store.resolve_user(&r.user).await.map_err(status)?;
            let Some((machine_key, node_key, hostname)) = s.pending.peek(&r.key) else {
                return Err(Status::not_found(format!(
                    "no node is waiting for approval with registration id {:?} (ids expire after 15 minutes)",
                    r.key.chars().take(64).collect::<String>()
                )));
            };
            // Tags the client asked for: the user must own them (Headscale
            // refuses the registration otherwise, never drops them silently).
            let mut tags = s.pending.request_tags(&r.key);
            tags.sort();
            tags.dedup();
            let bad = crate::acl::unowned_tags(&s.hub, &tags, &user, &[]);
            if !bad.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "requested tags {bad:?} are invalid or not permitted: user {:?} does not own them in the policy's tagOwners",
                    user.name
                )));
            }
            let new = NewNode {
                machine_key,
                node_key,
                disco_key: String::new(),
                hostname,
                user_id: user.id,
                tags,
                ephemeral: false,
                auth_key_id: None,
                register_method: RegisterMethod::Cli,
                expiry: None,
            };
            // Stored first, released second: a client polling in between still
            // finds its entry and is woken below, never handed a new login URL.
            let n = s.store.register_node(new).await.map_err(status)?;
            s.hub.upsert(n.clone());
            tracing::info!(node.id = n.id, node.name = %n.given_name, user.name = %user.name, "node registered");
            if let Some(tx) = s.pending.take(&r.key).and_then(|mut p| p.on_approved.take()) {
                // The waiting client may have gone; its node stays registered all the same.
                let _ = tx.send(n.id);
            }
            Ok(RegisterNodeResponse { node: Some(self.node_message(&n)) })
        }
        .await;
        self.finish("RegisterNode", result)
    }

    async fn delete_node(
        &self,
        req: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let n = self.state.store.delete_node(id_arg(r.node_id, "node_id")?).await.map_err(status)?;
            self.state.hub.remove(n.id);
            tracing::info!(node.id = n.id, node.name = %n.given_name, user.name = %n.user.name, "node deleted");
            Ok(DeleteNodeResponse {})
        }
        .await;
        self.finish("DeleteNode", result)
    }

    async fn expire_node(
        &self,
        req: Request<ExpireNodeRequest>,
    ) -> Result<Response<ExpireNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let id = id_arg(r.node_id, "node_id")?;
            let expiry = if r.disable_expiry {
                None
            } else {
                match &r.expiry {
                    Some(t) => Some(
                        convert::from_timestamp(t).ok_or_else(|| Status::invalid_argument("expiry is out of range"))?,
                    ),
                    None => Some(Utc::now()),
                }
            };
            let n = self.state.store.set_node_expiry(id, expiry).await.map_err(status)?;
            self.state.hub.upsert(n.clone());
            tracing::info!(node.id = n.id, node.name = %n.given_name, expiry = ?n.expiry, "node expiry set");
            Ok(ExpireNodeResponse { node: Some(self.node_message(&n)) })
        }
        .await;
        self.finish("ExpireNode", result)
    }

    async fn rename_node(
        &self,
        req: Request<RenameNodeRequest>,
    ) -> Result<Response<RenameNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let n = self
                .state
                .store
                .rename_node(id_arg(r.node_id, "node_id")?, &r.new_name)
                .await
                .map_err(status)?;
            self.state.hub.upsert(n.clone());
            tracing::info!(node.id = n.id, node.name = %n.given_name, "node renamed");
            Ok(RenameNodeResponse {
                node: Some(self.node_message(&n)),
            })
        }
        .await;
        self.finish("RenameNode", result)
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let r = req.into_inner();
        let result = self
            .list_nodes_of(&r.user)
            .await
            .map(|nodes| ListNodesResponse { nodes });
        self.finish("ListNodes", result)
    }

    async fn move_node(
        &self,
        req: Request<MoveNodeRequest>,
    ) -> Result<Response<MoveNodeResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let n = self
                .state
                .store
                .move_node(id_arg(r.node_id, "node_id")?, id_arg(r.user, "user")?)
                .await
                .map_err(status)?;
            self.state.hub.upsert(n.clone());
            tracing::info!(node.id = n.id, user.name = %n.user.name, "node moved");
            Ok(MoveNodeResponse {
                node: Some(self.node_message(&n)),
            })
        }
        .await;
        self.finish("MoveNode", result)
    }

    async fn create_api_key(
        &self,
        req: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let expiration = required_time(&r.expiration, "expiration")?;
            let (key, full) = self
                .state
                .store
                .create_api_key(expiration)
                .await
                .map_err(status)?;
            tracing::info!(key.id = key.id, key.prefix = %key.prefix, "API key created");
            Ok(CreateApiKeyResponse { api_key: full })
        }
        .await;
        self.finish("CreateApiKey", result)
    }

    async fn expire_api_key(
        &self,
        req: Request<ExpireApiKeyRequest>,
    ) -> Result<Response<ExpireApiKeyResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let selector = selector(r.id, r.prefix)?;
            self.state
                .store
                .expire_api_key(&selector)
                .await
                .map_err(status)?;
            tracing::info!(key = ?selector, "API key expired");
            Ok(ExpireApiKeyResponse {})
        }
        .await;
        self.finish("ExpireApiKey", result)
    }

    async fn list_api_keys(
        &self,
        _req: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let result = async {
            let keys = self.state.store.list_api_keys().await.map_err(status)?;
            Ok(ListApiKeysResponse {
                api_keys: keys.iter().map(convert::api_key).collect(),
            })
        }
        .await;
        self.finish("ListApiKeys", result)
    }

    async fn delete_api_key(
        &self,
        req: Request<DeleteApiKeyRequest>,
    ) -> Result<Response<DeleteApiKeyResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            let selector = selector(r.id, r.prefix)?;
            self.state
                .store
                .delete_api_key(&selector)
                .await
                .map_err(status)?;
            tracing::info!(key = ?selector, "API key deleted");
            Ok(DeleteApiKeyResponse {})
        }
        .await;
        self.finish("DeleteApiKey", result)
    }

    async fn get_policy(
        &self,
        _req: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let result = self
            .state
            .acl
            .current()
            .map(|(policy, at)| GetPolicyResponse {
                policy,
                updated_at: Some(convert::timestamp(at)),
            })
            .map_err(acl_status);
        self.finish("GetPolicy", result)
    }

    async fn set_policy(
        &self,
        req: Request<SetPolicyRequest>,
    ) -> Result<Response<SetPolicyResponse>, Status> {
        let r = req.into_inner();
        let s = &self.state;
        let result = s
            .acl
            .set(&s.store, &s.hub, &r.policy)
            .await
            .map(|stored| {
                tracing::info!(bytes = stored.data.len(), "policy set and in force");
                SetPolicyResponse {
                    policy: stored.data,
                    updated_at: Some(convert::timestamp(stored.updated_at)),
                }
            })
            .map_err(acl_status);
        self.finish("SetPolicy", result)
    }

    async fn check_policy(
        &self,
        req: Request<CheckPolicyRequest>,
    ) -> Result<Response<CheckPolicyResponse>, Status> {
        let r = req.into_inner();
        let result = crate::acl::parse_and_check(&r.policy, &self.state.hub)
            .map(|_| CheckPolicyResponse {})
            .map_err(|e| acl_status(AclError::Refused(e)));
        self.finish("CheckPolicy", result)
    }

    async fn health(
        &self,
        _req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let ok = self.state.store.ping().await.is_ok();
        self.finish(
            "Health",
            Ok(HealthResponse {
                database_connectivity: ok,
            }),
        )
    }
}

fn selector(id: u64, prefix: String) -> Result<ApiKeySelector, Status> {
    match (id, prefix.is_empty()) {
        (0, false) => Ok(ApiKeySelector::Prefix(prefix)),
        (id, true) if id != 0 => Ok(ApiKeySelector::Id(id_arg(id, "id")?)),
        _ => Err(Status::invalid_argument(
            "give either an API key id or its prefix",
        )),
    }
}

fn is_key_text(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A throwaway key for a debug node: random, never used for cryptography.
fn random_key(prefix: &str) -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}
