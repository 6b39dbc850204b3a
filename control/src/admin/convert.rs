//! Store records → admin API messages.

use chrono::{DateTime, Utc};
use meshscale_api::v1;
use prost_types::Timestamp;

use crate::keys::{PREAUTH_KEY_KIND, masked};
use crate::store::{ApiKey, Node, PreAuthKey, User};

pub(super) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// `None` for out-of-range values rather than a panic: timestamps come from clients.
pub(super) fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::from_timestamp(t.seconds, nanos)
}

pub(super) fn user(u: &User) -> v1::User {
    v1::User {
        id: u.id as u64,
        name: u.name.clone(),
        created_at: Some(timestamp(u.created_at)),
        display_name: u.display_name.clone(),
        email: u.email.clone(),
        provider_id: String::new(),
        provider: String::new(),
        profile_pic_url: u.profile_pic_url.clone(),
    }
}

/// A key as listed: `key` carries only the masked prefix.
pub(super) fn preauth_key(k: &PreAuthKey) -> v1::PreAuthKey {
    v1::PreAuthKey {
        user: k.user.as_ref().map(user),
        id: k.id as u64,
        key: masked(PREAUTH_KEY_KIND, &k.prefix),
        reusable: k.reusable,
        ephemeral: k.ephemeral,
        used: k.used,
        expiration: Some(timestamp(k.expiration)),
        created_at: Some(timestamp(k.created_at)),
        acl_tags: k.tags.clone(),
    }
}

pub(super) fn api_key(k: &ApiKey) -> v1::ApiKey {
    v1::ApiKey {
        id: k.id as u64,
        prefix: k.prefix.clone(),
        expiration: Some(timestamp(k.expiration)),
        created_at: Some(timestamp(k.created_at)),
        last_seen: k.last_seen.map(timestamp),
    }
}

pub(super) fn node(n: &Node, online: bool, now: DateTime<Utc>) -> v1::Node {
    let mut ips = Vec::with_capacity(2);
    if let Some(a) = n.ipv4 {
        ips.push(a.to_string());
    }
    if let Some(a) = n.ipv6 {
        ips.push(a.to_string());
    }
    let method = match n.register_method {
        crate::store::RegisterMethod::Unspecified => v1::RegisterMethod::Unspecified,
        crate::store::RegisterMethod::AuthKey => v1::RegisterMethod::AuthKey,
        crate::store::RegisterMethod::Cli => v1::RegisterMethod::Cli,
        crate::store::RegisterMethod::Oidc => v1::RegisterMethod::Oidc,
    };
    v1::Node {
        id: n.id as u64,
        machine_key: n.machine_key.clone(),
        node_key: n.node_key.clone(),
        disco_key: n.disco_key.clone(),
        ip_addresses: ips,
        name: n.hostname.clone(),
        user: Some(user(&n.user)),
        last_seen: n.last_seen.map(timestamp),
        expiry: n.expiry.map(timestamp),
        pre_auth_key: None,
        created_at: Some(timestamp(n.created_at)),
        register_method: method as i32,
        tags: n.tags.clone(),
        given_name: n.given_name.clone(),
        online,
        ephemeral: n.ephemeral,
        expired: n.is_expired(now),
    }
}
