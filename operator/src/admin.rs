//! The control server's admin API as the reconcilers need it. A trait, so the
//! reconcilers run against an in-memory control server in tests and against
//! gRPC (TLS + API key) in a cluster.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshscale_api::MeshscaleServiceClient;
use meshscale_api::v1 as api;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use api::{Node, PreAuthKey as ApiPreAuthKey, User};

/// Why an admin call failed, sorted by what the reconciler should do about it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// Retry with back-off: the server is down, restarting or slow.
    #[error("control server unreachable: {0}")]
    Unavailable(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The server refused the request; retrying the same request will not help.
    #[error("control server refused the request: {0}")]
    Rejected(String),
}

impl From<tonic::Status> for AdminError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        // Only the server's message: metadata could carry the bearer token back.
        let msg = s.message().chars().take(512).collect::<String>();
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                AdminError::Unavailable(if msg.is_empty() {
                    s.code().description().to_string()
                } else {
                    msg
                })
            }
            Code::NotFound => AdminError::NotFound(msg),
            Code::AlreadyExists => AdminError::AlreadyExists(msg),
            _ => AdminError::Rejected(format!("{:?}: {msg}", s.code())),
        }
    }
}

/// What a new pre-auth key should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub user_id: u64,
    pub reusable: bool,
    pub ephemeral: bool,
    pub expiration: DateTime<Utc>,
    pub tags: Vec<String>,
}

pub trait Admin: Send + Sync + 'static {
    fn find_user(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<User>, AdminError>> + Send;
    fn create_user(
        &self,
        name: &str,
        display_name: &str,
        email: &str,
    ) -> impl Future<Output = Result<User, AdminError>> + Send;
    fn delete_user(&self, id: u64) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// The answer is the only place the full key ever appears.
    fn create_pre_auth_key(
        &self,
        key: NewKey,
    ) -> impl Future<Output = Result<ApiPreAuthKey, AdminError>> + Send;
    fn list_pre_auth_keys(
        &self,
        user_id: u64,
    ) -> impl Future<Output = Result<Vec<ApiPreAuthKey>, AdminError>> + Send;
    fn expire_pre_auth_key(&self, id: u64) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Every node when `user` is empty.
    fn list_nodes(&self, user: &str) -> impl Future<Output = Result<Vec<Node>, AdminError>> + Send;
    fn delete_node(&self, id: u64) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// The policy text in force; `NotFound` when there is none.
    fn get_policy(&self) -> impl Future<Output = Result<String, AdminError>> + Send;
    /// Replaces the policy (database mode); a refused one is `Rejected` with the reason.
    fn set_policy(&self, text: &str) -> impl Future<Output = Result<(), AdminError>> + Send;
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid control server address {0:?}")]
    BadAddress(String),
    #[error("the API key is empty or contains characters not allowed in a header")]
    BadApiKey,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// The admin API over gRPC.
#[derive(Clone)]
pub struct GrpcAdmin {
    client: MeshscaleServiceClient<InterceptedService<Channel, Bearer>>,
}

impl GrpcAdmin {
    /// Connects lazily, so the operator starts (and reports `Synced=False`)
    /// while the control server is still coming up.
    pub fn connect(
        address: &str,
        ca_file: Option<&Path>,
        server_name: Option<&str>,
        api_key: &str,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let ca = match ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| ConnectError::Read {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        Self::connect_pem(address, ca.as_deref(), server_name, api_key, timeout)
    }

    /// [`connect`](Self::connect) with the CA as PEM bytes (read from a Secret).
    pub fn connect_pem(
        address: &str,
        ca_pem: Option<&[u8]>,
        server_name: Option<&str>,
        api_key: &str,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let api_key = api_key.trim();
        if api_key.is_empty() {
            return Err(ConnectError::BadApiKey);
        }
        let mut bearer: MetadataValue<Ascii> = format!("Bearer {api_key}")
            .parse()
            .map_err(|_| ConnectError::BadApiKey)?;
        bearer.set_sensitive(true);
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("https://{address}")
        };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|_| ConnectError::BadAddress(address.to_string()))?
            .timeout(timeout)
            .connect_timeout(timeout);
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        let endpoint = if uri.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().domain_name(server_name.unwrap_or(&host));
            tls = match ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            endpoint
                .tls_config(tls)
                .map_err(|e| ConnectError::Tls(e.to_string()))?
        } else {
            endpoint
        };
        let channel = endpoint.connect_lazy();
        Ok(Self {
            client: MeshscaleServiceClient::with_interceptor(channel, Bearer(bearer))
                .max_decoding_message_size(64 * 1024 * 1024),
        })
    }
}

impl Admin for GrpcAdmin {
    async fn find_user(&self, name: &str) -> Result<Option<User>, AdminError> {
        let req = api::ListUsersRequest {
            name: name.to_string(),
            ..Default::default()
        };
        let users = self
            .client
            .clone()
            .list_users(req)
            .await?
            .into_inner()
            .users;
        // Filter again: an older server might ignore the name filter.
        Ok(users.into_iter().find(|u| u.name == name))
    }

    async fn create_user(
        &self,
        name: &str,
        display_name: &str,
        email: &str,
    ) -> Result<User, AdminError> {
        let req = api::CreateUserRequest {
            name: name.to_string(),
            display_name: display_name.to_string(),
            email: email.to_string(),
            picture_url: String::new(),
        };
        let resp = self.client.clone().create_user(req).await?.into_inner();
        resp.user
            .ok_or_else(|| AdminError::Rejected("CreateUser answered without a user".into()))
    }

    async fn delete_user(&self, id: u64) -> Result<(), AdminError> {
        self.client
            .clone()
            .delete_user(api::DeleteUserRequest { id })
            .await?;
        Ok(())
    }

    async fn create_pre_auth_key(&self, key: NewKey) -> Result<ApiPreAuthKey, AdminError> {
        let req = api::CreatePreAuthKeyRequest {
            user: key.user_id,
            reusable: key.reusable,
            ephemeral: key.ephemeral,
            expiration: Some(timestamp(key.expiration)),
            acl_tags: key.tags,
        };
        let resp = self
            .client
            .clone()
            .create_pre_auth_key(req)
            .await?
            .into_inner();
        resp.pre_auth_key
            .ok_or_else(|| AdminError::Rejected("CreatePreAuthKey answered without a key".into()))
    }

    async fn list_pre_auth_keys(&self, user_id: u64) -> Result<Vec<ApiPreAuthKey>, AdminError> {
        let req = api::ListPreAuthKeysRequest { user: user_id };
        Ok(self
            .client
            .clone()
            .list_pre_auth_keys(req)
            .await?
            .into_inner()
            .pre_auth_keys)
    }

    async fn expire_pre_auth_key(&self, id: u64) -> Result<(), AdminError> {
        self.client
            .clone()
            .expire_pre_auth_key(api::ExpirePreAuthKeyRequest { id })
            .await?;
        Ok(())
    }

    async fn list_nodes(&self, user: &str) -> Result<Vec<Node>, AdminError> {
        let req = api::ListNodesRequest {
            user: user.to_string(),
        };
        Ok(self
            .client
            .clone()
            .list_nodes(req)
            .await?
            .into_inner()
            .nodes)
    }

    async fn delete_node(&self, id: u64) -> Result<(), AdminError> {
        self.client
            .clone()
            .delete_node(api::DeleteNodeRequest { node_id: id })
            .await?;
        Ok(())
    }

    async fn get_policy(&self) -> Result<String, AdminError> {
        Ok(self
            .client
            .clone()
            .get_policy(api::GetPolicyRequest {})
            .await?
            .into_inner()
            .policy)
    }

    async fn set_policy(&self, text: &str) -> Result<(), AdminError> {
        self.client
            .clone()
            .set_policy(api::SetPolicyRequest {
                policy: text.to_string(),
            })
            .await?;
        Ok(())
    }
}
