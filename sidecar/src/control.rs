//! The control-plane session: register (re-using the stored keys, so a
//! restart is the same node), keep the map stream open, reconnect with
//! back-off and jitter, and publish the netmap after each message. Endpoint
//! changes from the data plane are pushed with a lite map update.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshscale_controlclient::{ClientError, ConnectOptions, ControlClient, DiscoKey, requests};
use meshscale_wire::tailcfg::{EndpointType, Hostinfo, NetInfo};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::netmap::NetMap;
use crate::state::Identity;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("registration refused by the server: {0}")]
    Refused(String),
    #[error("interactive login failed: {0}")]
    NeedsLogin(String),
    #[error("node key expired and no auth key to renew it")]
    Expired,
    #[error("logged out: {0}; run `up` again with a new auth key")]
    LoggedOut(String),
    #[error("map stream ended")]
    StreamEnded,
    #[error("control task failed: {0}")]
    Task(String),
}

impl ControlError {
    /// Errors that retrying cannot fix.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ControlError::Refused(_)
                | ControlError::NeedsLogin(_)
                | ControlError::LoggedOut(_)
                | ControlError::Expired
        )
    }
}

pub struct ControlConfig {
    pub server_url: String,
    pub auth_key: Option<String>,
    pub hostname: String,
    pub ephemeral: bool,
    pub extra_ca_pem: Option<Vec<u8>>,
    /// `--advertise-tags`, validated: sent as `Hostinfo.RequestTags`.
    pub tags: Vec<String>,
}

/// What the data plane tells control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInfo {
    /// Addresses on our own interfaces.
    pub endpoints: Vec<SocketAddr>,
    /// Reflexive addresses learned by STUN (what a NAT maps us to).
    pub stun: Vec<SocketAddr>,
    pub preferred_derp: i64,
}

fn hostinfo(cfg: &ControlConfig, local: &LocalInfo) -> Hostinfo {
    let mut h = requests::hostinfo(&cfg.hostname);
    h.request_tags = cfg.tags.clone();
    h.ipn_version = concat!("meshscale-sidecar-", env!("CARGO_PKG_VERSION")).into();
    h.net_info = Some(NetInfo {
        preferred_derp: local.preferred_derp,
        working_udp: Some(true),
        ..NetInfo::default()
    });
    h
}

fn endpoints(local: &LocalInfo) -> Vec<(String, EndpointType)> {
    // STUN first: behind NAT it is the address that works across networks,
    // and peers try endpoints in order.
    let stun = local
        .stun
        .iter()
        .filter(|e| !local.endpoints.contains(e))
        .map(|e| (e.to_string(), EndpointType::STUN));
    let lan = local
        .endpoints
        .iter()
        .map(|e| (e.to_string(), EndpointType::LOCAL));
    stun.chain(lan).collect()
}

/// Why the server no longer accepts this node, if it says so in the map:
/// a deleted node gets a last map whose self node has an expired key.
pub fn self_expired(node: &meshscale_wire::tailcfg::Node) -> Option<String> {
    if node.expired {
        return Some("the server marked this node expired or deleted".into());
    }
    match node.key_expiry {
        // Go's zero time means "never expires".
        Some(t) if t.timestamp() > 0 && t <= chrono::Utc::now() => {
            Some(format!("the node key expired at {t}"))
        }
        _ => None,
    }
}

/// Logs the node out (`down`): a RegisterRequest whose expiry is in the
/// past, as the official client sends.
pub async fn logout(cfg: &ControlConfig, id: &Identity) -> Result<(), ControlError> {
    let opts = ConnectOptions {
        extra_ca_pem: cfg.extra_ca_pem.clone(),
        ..ConnectOptions::default()
    };
    let client = ControlClient::connect(&cfg.server_url, &id.machine, opts).await?;
    let resp = client.register(requests::logout(id.node.public())).await?;
    if !resp.error.is_empty() {
        return Err(ControlError::Refused(resp.error));
    }
    Ok(())
}

/// Runs until a fatal error; each map message updates `netmap_tx`.
pub async fn run(
    cfg: ControlConfig,
    id: Identity,
    disco: Arc<DiscoKey>,
    netmap_tx: watch::Sender<Arc<NetMap>>,
    mut local: watch::Receiver<LocalInfo>,
) -> Result<(), ControlError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut registered = false;
    // Keys made by this start, not yet sent to any server.
    let mut unsent = id.fresh;
    loop {
        match session(
            &cfg,
            &id,
            &disco,
            &netmap_tx,
            &mut local,
            (&mut registered, &mut unsent),
            &mut backoff,
        )
        .await
        {
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "control session ended");
                tokio::time::sleep(wait).await;
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// `unsent`: the keys were made by this start and never sent to a server.
async fn register(
    client: &ControlClient,
    cfg: &ControlConfig,
    id: &Identity,
    hi: Hostinfo,
    unsent: bool,
) -> Result<(), ControlError> {
    // "I'm back" first: a restart must not spend a single-use key, and the
    // server already knows a node key it registered. Keys no server has
    // seen cannot be known: a new pod goes straight to its auth key, one
    // round trip sooner. (After a failed attempt the server may have
    // admitted the key with an answer that got lost: ask first again.)
    let key = match &cfg.auth_key {
        Some(key) if unsent => key,
        auth_key => {
            let mut req = requests::register_plain(id.node.public(), hi.clone());
            req.ephemeral = cfg.ephemeral;
            let resp = client.register(req).await?;
            if resp.machine_authorized && !resp.node_key_expired && resp.error.is_empty() {
                info!(user = %resp.user.display_name, "registered (known node)");
                return Ok(());
            }
            match auth_key {
                Some(key) => key,
                None if !resp.auth_url.is_empty() => {
                    return interactive(client, id, hi, resp.auth_url).await;
                }
                None if resp.node_key_expired => return Err(ControlError::Expired),
                None => return Err(ControlError::Refused(resp.error)),
            }
        }
    };
    let mut req = requests::register_with_auth_key(id.node.public(), key, hi);
    req.ephemeral = cfg.ephemeral;
    let resp = client.register(req).await?;
    if !resp.error.is_empty() {
        return Err(ControlError::Refused(resp.error));
    }
    if !resp.machine_authorized {
        return Err(ControlError::Refused(
            "the server did not authorize the node with this auth key".into(),
        ));
    }
    info!(user = %resp.user.display_name, "registered with auth key");
    Ok(())
}

/// Interactive login: print the URL, then long-poll with `Followup` until
/// an admin approves the node (`meshscale nodes register --key <id>`).
async fn interactive(
    client: &ControlClient,
    id: &Identity,
    hi: Hostinfo,
    mut url: String,
) -> Result<(), ControlError> {
    warn!(%url, "needs login: to authenticate, visit the URL (or have an admin run `meshscale nodes register`)");
    loop {
        let asked = tokio::time::Instant::now();
        let req = requests::register_followup(id.node.public(), &url, hi.clone());
        let resp = client.register(req).await?;
        if !resp.error.is_empty() {
            return Err(ControlError::Refused(resp.error));
        }
        if resp.machine_authorized && !resp.node_key_expired {
            info!(user = %resp.user.display_name, "registered by interactive login");
            return Ok(());
        }
        if resp.auth_url.is_empty() {
            return Err(ControlError::NeedsLogin(
                "the server ended the interactive login without a new URL".into(),
            ));
        }
        if resp.auth_url != url {
            url = resp.auth_url;
            warn!(%url, "needs login: the previous login URL expired; visit this one");
        }
        // The server holds each follow-up open until approval or timeout;
        // one that returns at once must not turn into a busy loop.
        if asked.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn session(
    cfg: &ControlConfig,
    id: &Identity,
    disco: &DiscoKey,
    netmap_tx: &watch::Sender<Arc<NetMap>>,
    local: &mut watch::Receiver<LocalInfo>,
    (registered, unsent): (&mut bool, &mut bool),
    backoff: &mut Backoff,
) -> Result<(), ControlError> {
    let opts = ConnectOptions {
        extra_ca_pem: cfg.extra_ca_pem.clone(),
        ..ConnectOptions::default()
    };
    let client = ControlClient::connect(&cfg.server_url, &id.machine, opts).await?;
    let info = local.borrow_and_update().clone();
    if !*registered {
        let fresh = std::mem::replace(unsent, false);
        register(&client, cfg, id, hostinfo(cfg, &info), fresh).await?;
        *registered = true;
    }
    let mut req = requests::map_stream(id.node.public(), disco.public(), hostinfo(cfg, &info));
    let eps = endpoints(&info);
    req.endpoints = eps.iter().map(|(e, _)| e.clone()).collect();
    req.endpoint_types = eps.iter().map(|(_, t)| *t).collect();
    let mut stream = match client.map_stream(req).await {
        Ok(s) => s,
        // The server forgot us (`nodes delete`): retrying cannot help, and
        // re-registering with the auth key would make a different node.
        Err(ClientError::Status {
            status: 404, body, ..
        }) => {
            return Err(ControlError::LoggedOut(format!(
                "the server does not know this node ({})",
                body.trim()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    // The netmap is rebuilt per session: the first message is a full map.
    let mut nm = NetMap::default();
    loop {
        // The key may expire between map messages: stop then, too.
        let expires_in = nm
            .self_node
            .as_ref()
            .and_then(|n| n.key_expiry)
            .filter(|t| t.timestamp() > 0)
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::MAX);
        tokio::select! {
            _ = tokio::time::sleep(expires_in.min(Duration::from_secs(86_400))) => {
                if let Some(why) = nm.self_node.as_ref().and_then(self_expired) {
                    return Err(ControlError::LoggedOut(why));
                }
            }
            msg = stream.next_message() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(ClientError::from(e).into()),
                    None => return Err(ControlError::StreamEnded),
                };
                backoff.reset();
                let applied = nm.apply(&msg.response);
                if applied.self_changed
                    && let Some(why) = nm.self_node.as_ref().and_then(self_expired)
                {
                    return Err(ControlError::LoggedOut(why));
                }
                for a in &applied.refused_addresses {
                    warn!(address = %a, "ignoring an address outside the mesh prefixes");
                }
                if applied != Default::default() {
                    netmap_tx.send_replace(Arc::new(nm.clone()));
                }
            }
            changed = local.changed() => {
                if changed.is_err() {
                    return Ok(()); // the data plane is gone: shutting down
                }
                let info = local.borrow_and_update().clone();
                let req = requests::endpoint_update(
                    id.node.public(),
                    disco.public(),
                    &endpoints(&info),
                    hostinfo(cfg, &info),
                );
                client.map_update(req).await?;
            }
        }
    }
}
