//! `POST /machine/register`: logins with a pre-auth key, interactive logins,
//! "I'm back" checks, node-key rotation and logout — Headscale's decision
//! tree (`hscontrol/auth.go`), keyed on the Noise-authenticated machine key.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meshscale_wire::tailcfg::{Login, RegisterRequest, RegisterResponse, User as WireUser};
use tracing::Instrument;

use super::unsupported_version;
use crate::acl;
use crate::noise::NoisePeer;
use crate::pending::{PENDING_TTL, PendingNode, validate_registration_id};
use crate::state::SharedState;
use crate::store::{AuthKeyError, NewNode, Node, RegisterMethod, StoreError};

/// How long a follow-up request waits for an admin before answering; the
/// client then asks again with the same URL.
const FOLLOWUP_WAIT: Duration = PENDING_TTL;

pub async fn register(
    State(state): State<SharedState>,
    axum::Extension(peer): axum::Extension<NoisePeer>,
    body: Bytes,
) -> Response {
    let req: RegisterRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid register request: {e}"),
            )
                .into_response();
        }
    };
    if req.version < super::MIN_CAPABILITY_VERSION {
        return unsupported_version(req.version).into_response();
    }
    let machine_key = peer.machine_key_text();
    let span = tracing::info_span!("register", machine = %&machine_key[..17], node_key = %short(&req.node_key.to_string()));
    match decide(&state, &machine_key, req).instrument(span).await {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "registration failed");
            let code = if matches!(e, StoreError::Unavailable(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (code, "registration failed on the server; retry").into_response()
        }
    }
}

fn short(key: &str) -> &str {
    let start = key.find(':').map_or(0, |i| i + 1);
    &key[start..(start + 8).min(key.len())]
}

fn is_zero_time(t: &DateTime<Utc>) -> bool {
    t.timestamp() <= DateTime::<Utc>::MIN_UTC.timestamp() || t.format("%Y").to_string() == "0001"
}

fn authorized(node: &Node) -> RegisterResponse {
    let u = &node.user;
    let display = if u.display_name.is_empty() {
        u.name.clone()
    } else {
        u.display_name.clone()
    };
    let login_name = if u.email.is_empty() {
        u.name.clone()
    } else {
        u.email.clone()
    };
    let expired = node.is_expired(Utc::now());
    RegisterResponse {
        user: WireUser {
            id: u.id,
            display_name: display.clone(),
            profile_pic_url: u.profile_pic_url.clone(),
            created: Some(u.created_at),
        },
        login: Login {
            id: u.id,
            provider: String::new(),
            login_name,
            display_name: display,
            profile_pic_url: u.profile_pic_url.clone(),
        },
        node_key_expired: expired,
        machine_authorized: !expired,
        ..RegisterResponse::default()
    }
}

fn refused(message: impl Into<String>) -> RegisterResponse {
    RegisterResponse {
        error: message.into(),
        ..RegisterResponse::default()
    }
}

async fn decide(
    state: &SharedState,
    machine_key: &str,
    req: RegisterRequest,
) -> Result<RegisterResponse, StoreError> {
    let now = Utc::now();
    let node_key = req.node_key.to_string();
    if req.node_key.is_zero() {
        return Ok(refused("register request without a node key"));
    }
    let existing = state.store.node_by_machine_key(machine_key).await?;
    if let Some(owner) = state.store.node_by_node_key(&node_key).await?
        && owner.machine_key != machine_key
    {
        return Ok(refused("this node key belongs to another machine"));
    }

    // Logout: an expiry in the past.
    if !is_zero_time(&req.expiry) && req.expiry <= now {
        let Some(node) = existing.filter(|n| n.node_key == node_key) else {
            return Ok(RegisterResponse {
                node_key_expired: true,
                ..RegisterResponse::default()
            });
        };
        if node.ephemeral {
            state.store.delete_node(node.id).await?;
            state.hub.remove(node.id);
            tracing::info!(node.id = node.id, "ephemeral node logged out and removed");
        } else {
            let node = state.store.set_node_expiry(node.id, Some(now)).await?;
            tracing::info!(node.id = node.id, "node logged out");
            state.hub.upsert(node);
        }
        return Ok(RegisterResponse {
            node_key_expired: true,
            ..RegisterResponse::default()
        });
    }

    let hostname = req
        .hostinfo
        .as_ref()
        .map(|h| h.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string());
    let request_tags = req
        .hostinfo
        .as_ref()
        .map(|h| h.request_tags.clone())
        .unwrap_or_default();

    // A pre-auth key.
    if let Some(key) = req
        .auth
        .as_ref()
        .map(|a| a.auth_key.trim())
        .filter(|k| !k.is_empty())
    {
        if let Some(reason) = tag_refusal(state, key, &request_tags).await? {
            tracing::info!(%reason, "registration refused: tags");
            return Ok(refused(reason));
        }
        let new = NewNode {
            machine_key: machine_key.to_string(),
            node_key: node_key.clone(),
            disco_key: String::new(),
            hostname,
            user_id: 0,
            tags: request_tags,
            ephemeral: false,
            auth_key_id: None,
            register_method: RegisterMethod::AuthKey,
            expiry: None,
        };
        return match state.store.register_with_preauth_key(key, new).await {
            Ok((node, _key)) => {
                tracing::info!(node.id = node.id, node.name = %node.given_name, user.name = %node.user.name, "node registered with a pre-auth key");
                let resp = authorized(&node);
                state.hub.upsert(node);
                Ok(resp)
            }
            Err(AuthKeyError::Store(e)) => Err(e),
            Err(e) => {
                tracing::info!(reason = %e, "pre-auth key refused");
                Ok(refused(e.to_string()))
            }
        };
    }

    // A client polling for the outcome of an interactive login.
    if let Some(id) = (!req.followup.is_empty())
        .then(|| followup_id(&req.followup))
        .flatten()
        && let Some(approved) = state.pending.wait(&id)
    {
        return match tokio::time::timeout(FOLLOWUP_WAIT, approved).await {
            Ok(Ok(node_id)) => Ok(authorized(&state.store.get_node(node_id).await?)),
            _ => Ok(RegisterResponse {
                auth_url: req.followup.clone(),
                ..RegisterResponse::default()
            }),
        };
    }
    // A follow-up for a login approved already, or expired: fall through, with
    // a fresh look at the node, which the approval may have just stored.
    let existing = if req.followup.is_empty() {
        existing
    } else {
        state.store.node_by_machine_key(machine_key).await?
    };

    // A known machine: "I'm back", or a node-key rotation.
    if let Some(node) = existing {
        let rotating = !req.old_node_key.is_zero() && req.old_node_key.to_string() == node.node_key;
        if node.node_key == node_key || rotating {
            if node.is_expired(now) {
                return Ok(RegisterResponse {
                    node_key_expired: true,
                    ..authorized(&node)
                });
            }
            let node = if rotating {
                let n = state.store.set_node_key(node.id, &node_key).await?;
                tracing::info!(node.id = n.id, "node key rotated");
                state.hub.upsert(n.clone());
                n
            } else {
                node
            };
            return Ok(authorized(&node));
        }
    }

    // Interactive login: park the node until an admin admits it.
    let pending = PendingNode {
        machine_key: machine_key.to_string(),
        node_key,
        hostname,
        request_tags,
        on_approved: None,
    };
    match state.pending.insert(None, pending) {
        Ok(id) => {
            let url = format!(
                "{}/register/{id}",
                state.config.server_url.trim_end_matches('/')
            );
            tracing::info!(registration_id = %id, "interactive login waiting for approval");
            Ok(RegisterResponse {
                auth_url: url,
                ..RegisterResponse::default()
            })
        }
        Err(e) => Ok(refused(e.to_string())),
    }
}

/// Why the tags a pre-auth key registration would give the node are not
/// allowed, if they are not. Tags are identity: a node gets the key's tags
/// only when, under a policy, the key's user owns them per `tagOwners`
/// (without a policy the admin who made the key vouches for them, as in
/// Headscale); tags the client requests (`--advertise-tags`) must be owned
/// by the key's user or by the key's tags, and are refused, not dropped,
/// when they are not (without a policy nobody owns any tag).
async fn tag_refusal(
    state: &SharedState,
    key: &str,
    requested: &[String],
) -> Result<Option<String>, StoreError> {
    let policy = state.hub.has_policy();
    if requested.is_empty() && !policy {
        return Ok(None);
    }
    // An unknown key, or one without a user, is refused by the registration itself.
    let Some(k) = state.store.preauth_key_by_secret(key).await? else {
        return Ok(None);
    };
    let Some(user) = &k.user else {
        return Ok(None);
    };
    if policy {
        let bad = acl::unowned_tags(&state.hub, &k.tags, user, &[]);
        if !bad.is_empty() {
            return Ok(Some(format!(
                "the auth key's tags {bad:?} are not owned by user {:?} in the policy's tagOwners",
                user.name
            )));
        }
    }
    let bad = acl::unowned_tags(&state.hub, requested, user, &k.tags);
    if bad.is_empty() {
        return Ok(None);
    }
    let why = if policy {
        format!(
            "neither user {:?} nor the auth key's tags own them in the policy's tagOwners",
            user.name
        )
    } else {
        "no access policy is in force, so no tag has an owner".to_string()
    };
    Ok(Some(format!(
        "requested tags {bad:?} are invalid or not permitted: {why}"
    )))
}

/// The registration id at the end of a follow-up URL (`.../register/<id>`).
fn followup_id(url: &str) -> Option<String> {
    let id = url.trim_end_matches('/').rsplit('/').next()?;
    validate_registration_id(id).ok().map(|_| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followup_ids() {
        assert_eq!(
            followup_id("https://h:8080/register/abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(followup_id("https://h/register/bad$id"), None);
    }

    #[test]
    fn zero_time() {
        let zero: DateTime<Utc> = "0001-01-01T00:00:00Z".parse().unwrap();
        assert!(is_zero_time(&zero));
        assert!(!is_zero_time(&Utc::now()));
    }
}
