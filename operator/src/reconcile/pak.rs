//! PreAuthKey ⇄ control-server pre-auth key. The key value goes from the
//! CreatePreAuthKey answer straight into the Secret: never into the CR, an
//! event, an error or a log line.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::{Ctx, ReconcileError, admin_reason, emit, normal, warning};
use crate::admin::{Admin, AdminError, ApiPreAuthKey, NewKey, from_timestamp};
use crate::conditions::{self, READY, SYNCED};
use crate::crd::{PreAuthKey, PreAuthKeyStatus};
use crate::duration;
use crate::kubeops::{Kube, KubeError, Note, has_finalizer, with_finalizer, without_finalizer};

/// The data key of the Secret, read by the injected sidecar as `MESHSCALE_AUTHKEY`.
pub const SECRET_KEY: &str = "authkey";
pub const ANN_KEY_ID: &str = "meshscale.dev/key-id";
pub const ANN_EXPIRES: &str = "meshscale.dev/expires-at";
/// Never look at a healthy key less often than this (its `used` flag changes).
const MAX_REQUEUE: Duration = Duration::from_secs(3600);

#[instrument(skip_all, fields(preauthkey = %format!("{}/{}", pak.namespace().unwrap_or_default(), pak.name_any())))]
pub async fn reconcile<A: Admin, K: Kube>(
    pak: &PreAuthKey,
    ctx: &Ctx<A, K>,
) -> Result<Action, ReconcileError> {
    let ns = pak.namespace().unwrap_or_default();
    let name = pak.name_any();
    let finalizers = pak.metadata.finalizers.as_ref();
    let mut status = pak.status.clone().unwrap_or_default();
    let g = pak.metadata.generation;

    if pak.metadata.deletion_timestamp.is_some() {
        if has_finalizer(finalizers) {
            // The Secret goes with its owner; the key must stop working too.
            if let Some(id) = status.id {
                match ctx.admin.expire_pre_auth_key(id).await {
                    Ok(()) | Err(AdminError::NotFound(_)) => {}
                    Err(e) => return fail(pak, ctx, status, e).await,
                }
            }
            ctx.kube
                .pak_finalizers(&ns, &name, without_finalizer(finalizers))
                .await?;
        }
        return Ok(Action::await_change());
    }
    if let Some(f) = with_finalizer(finalizers) {
        ctx.kube.pak_finalizers(&ns, &name, f).await?;
    }

    let (lifetime, rotate_before) = match parse_durations(pak) {
        Ok(d) => d,
        Err(message) => {
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "InvalidSpec",
                &message,
                g,
            );
            conditions::set(
                &mut status.conditions,
                SYNCED,
                false,
                "InvalidSpec",
                message,
                g,
            );
            ctx.kube.pak_status(&ns, &name, &status).await?;
            // Nothing to retry until the spec changes.
            return Ok(Action::await_change());
        }
    };

    let user = match ctx.admin.find_user(&pak.spec.user).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            let m = format!("no user {:?} in the control server", pak.spec.user);
            conditions::set(&mut status.conditions, READY, false, "UserNotFound", &m, g);
            conditions::set(&mut status.conditions, SYNCED, true, "Synced", "", g);
            ctx.kube.pak_status(&ns, &name, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(e) => return fail(pak, ctx, status, e).await,
    };

    let secret = ctx.kube.get_secret(&ns, &pak.spec.secret_name).await?;
    if let Some(s) = &secret
        && !owned_by(s, pak)
    {
        let m = format!(
            "Secret {} exists and is not owned by this PreAuthKey",
            pak.spec.secret_name
        );
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "SecretConflict",
            &m,
            g,
        );
        ctx.kube.pak_status(&ns, &name, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    // The Secret, not the status, is the record of the current key: it is
    // written first, so a crash before the status update does not mint a second key.
    let current_id = secret
        .as_ref()
        .and_then(|s| annotation(s, ANN_KEY_ID))
        .and_then(|v| v.parse::<u64>().ok());
    let keys = match ctx.admin.list_pre_auth_keys(user.id).await {
        Ok(k) => k,
        Err(e) => return fail(pak, ctx, status, e).await,
    };
    let now = Utc::now();
    let current = current_id.and_then(|id| keys.iter().find(|k| k.id == id));
    let decision = decide(pak, current, now, rotate_before);

    let (id, expires, used) = match decision {
        Decision::Keep { id, expires, used } => (id, expires, used),
        Decision::Issue { reason } => {
            let expiration =
                now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX);
            // Ask the API server whether the Secret can be written BEFORE
            // minting: a key minted into a Secret we cannot write would have
            // to be expired again, on every retry.
            let probe = ApiPreAuthKey {
                id: current_id.unwrap_or_default(),
                ..Default::default()
            };
            if let Err(e) = ctx
                .kube
                .check_secret_write(secret_for(pak, &probe, expiration))
                .await
            {
                return secret_failed(pak, ctx, status, e).await;
            }
            let new = NewKey {
                user_id: user.id,
                reusable: pak.spec.reusable,
                ephemeral: pak.spec.ephemeral,
                expiration,
                tags: pak.spec.tags.iter().map(|t| t.0.clone()).collect(),
            };
            let key = match ctx.admin.create_pre_auth_key(new).await {
                Ok(k) => k,
                Err(e) => return fail(pak, ctx, status, e).await,
            };
            let expires = key
                .expiration
                .as_ref()
                .and_then(from_timestamp)
                .unwrap_or(expiration);
            if let Err(e) = ctx.kube.apply_secret(secret_for(pak, &key, expires)).await {
                // Don't leave a working key that nothing knows about.
                if let Err(x) = ctx.admin.expire_pre_auth_key(key.id).await {
                    warn!(key_id = key.id, error = %x, "could not expire an orphaned key");
                }
                return secret_failed(pak, ctx, status, e).await;
            }
            info!(key_id = key.id, reason, "pre-auth key issued");
            let event = if reason == "Rotation" {
                "KeyRotated"
            } else {
                "KeyIssued"
            };
            let m = format!(
                "key {} written to Secret {}, expires {}",
                key.id,
                pak.spec.secret_name,
                expires.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
            emit(ctx, pak, normal(event, "CreatePreAuthKey", m)).await;
            // The key the new one replaces must stop working when it no longer
            // says what the user wants (SpecChanged) or when its Secret was
            // deleted (NoKey: whoever deleted it may have a copy). A rotated
            // key runs out on its own.
            let replaced = current.map(|k| k.id).or(status.id);
            if matches!(reason, "SpecChanged" | "NoKey")
                && let Some(old) = replaced.filter(|old| *old != key.id)
            {
                match ctx.admin.expire_pre_auth_key(old).await {
                    Ok(()) => info!(key_id = old, "replaced pre-auth key expired"),
                    Err(AdminError::NotFound(_)) => {}
                    Err(e) => warn!(key_id = old, error = %e, "could not expire the replaced key"),
                }
            }
            (key.id, expires, false)
        }
    };
    status.id = Some(id);
    status.expires_at = Some(expires.to_rfc3339_opts(SecondsFormat::Secs, true));
    status.used = used;
    conditions::set(&mut status.conditions, READY, true, "KeyIssued", "", g);
    conditions::set(&mut status.conditions, SYNCED, true, "Synced", "", g);
    ctx.kube.pak_status(&ns, &name, &status).await?;
    ctx.backoff.reset(&format!("pak/{ns}/{name}"));
    Ok(Action::requeue(next_check(expires, rotate_before, now)))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Keep {
        id: u64,
        expires: DateTime<Utc>,
        used: bool,
    },
    Issue {
        reason: &'static str,
    },
}

/// Whether the current key still serves the spec, or a new one is due.
pub fn decide(
    pak: &PreAuthKey,
    current: Option<&ApiPreAuthKey>,
    now: DateTime<Utc>,
    rotate_before: Duration,
) -> Decision {
    let Some(key) = current else {
        return Decision::Issue { reason: "NoKey" };
    };
    let Some(expires) = key.expiration.as_ref().and_then(from_timestamp) else {
        return Decision::Issue { reason: "NoExpiry" };
    };
    let mut tags: Vec<&str> = pak.spec.tags.iter().map(|t| t.0.as_str()).collect();
    let mut have: Vec<&str> = key.acl_tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    have.sort_unstable();
    if key.reusable != pak.spec.reusable || key.ephemeral != pak.spec.ephemeral || tags != have {
        return Decision::Issue {
            reason: "SpecChanged",
        };
    }
    if !key.reusable && key.used {
        return Decision::Issue { reason: "Used" };
    }
    let rotate = chrono::Duration::from_std(rotate_before).unwrap_or(chrono::Duration::MAX);
    if expires <= now || expires - now <= rotate {
        return Decision::Issue { reason: "Rotation" };
    }
    Decision::Keep {
        id: key.id,
        expires,
        used: key.used,
    }
}

/// Wake up when rotation is due, but at least hourly and at most every 10 s.
fn next_check(expires: DateTime<Utc>, rotate_before: Duration, now: DateTime<Utc>) -> Duration {
    let due = expires - chrono::Duration::from_std(rotate_before).unwrap_or(chrono::Duration::MAX);
    (due - now)
        .to_std()
        .unwrap_or_default()
        .clamp(Duration::from_secs(10), MAX_REQUEUE)
}

fn parse_durations(pak: &PreAuthKey) -> Result<(Duration, Duration), String> {
    let lifetime =
        duration::parse(&pak.spec.expiration).map_err(|e| format!("spec.expiration: {e}"))?;
    let rotate = match &pak.spec.rotate_before {
        Some(r) => duration::parse(r).map_err(|e| format!("spec.rotateBefore: {e}"))?,
        None => Duration::ZERO,
    };
    if lifetime.is_zero() {
        return Err("spec.expiration must be longer than 0s".into());
    }
    if rotate >= lifetime {
        // Every new key would be due for rotation at once: a tight loop of keys.
        return Err("spec.rotateBefore must be shorter than spec.expiration".into());
    }
    Ok((lifetime, rotate))
}

async fn fail<A: Admin, K: Kube>(
    pak: &PreAuthKey,
    ctx: &Ctx<A, K>,
    mut status: PreAuthKeyStatus,
    e: AdminError,
) -> Result<Action, ReconcileError> {
    emit(ctx, pak, warning("PreAuthKey", &e)).await;
    let g = pak.metadata.generation;
    conditions::set(
        &mut status.conditions,
        SYNCED,
        false,
        admin_reason(&e),
        e.to_string(),
        g,
    );
    if !matches!(e, AdminError::Unavailable(_)) {
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            admin_reason(&e),
            e.to_string(),
            g,
        );
    }
    ctx.kube
        .pak_status(
            &pak.namespace().unwrap_or_default(),
            &pak.name_any(),
            &status,
        )
        .await?;
    Err(e.into())
}

/// The key Secret cannot be written: say so on the PreAuthKey (condition and
/// Warning event) and retry with back-off.
async fn secret_failed<A: Admin, K: Kube>(
    pak: &PreAuthKey,
    ctx: &Ctx<A, K>,
    mut status: PreAuthKeyStatus,
    e: KubeError,
) -> Result<Action, ReconcileError> {
    let m = format!("cannot write Secret {}: {e}", pak.spec.secret_name);
    let note = Note {
        warning: true,
        reason: "SecretWriteFailed",
        action: "WriteSecret",
        message: m.clone(),
    };
    emit(ctx, pak, note).await;
    let g = pak.metadata.generation;
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        "SecretWriteFailed",
        &m,
        g,
    );
    ctx.kube
        .pak_status(
            &pak.namespace().unwrap_or_default(),
            &pak.name_any(),
            &status,
        )
        .await?;
    Err(e.into())
}

fn annotation<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn owned_by(s: &Secret, pak: &PreAuthKey) -> bool {
    let uid = pak.metadata.uid.as_deref().unwrap_or_default();
    s.metadata
        .owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.uid == uid && r.kind == "PreAuthKey"))
}

fn secret_for(pak: &PreAuthKey, key: &ApiPreAuthKey, expires: DateTime<Utc>) -> Secret {
    let owner = OwnerReference {
        api_version: PreAuthKey::api_version(&()).into_owned(),
        kind: PreAuthKey::kind(&()).into_owned(),
        name: pak.name_any(),
        uid: pak.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let annotations = BTreeMap::from([
        (ANN_KEY_ID.to_string(), key.id.to_string()),
        (
            ANN_EXPIRES.to_string(),
            expires.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(pak.spec.secret_name.clone()),
            namespace: pak.namespace(),
            annotations: Some(annotations),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "meshscale-operator".to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_string(),
            ByteString(key.key.clone().into_bytes()),
        )])),
        ..Default::default()
    }
}
