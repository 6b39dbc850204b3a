//! Which pre-auth key an injected pod joins with. Shared by the webhook (which
//! names the Secret in the pod spec) and the leader's pod watch (which makes
//! sure a `PreAuthKey` for that Secret exists), so both always agree.
//!
//! One key per (namespace, user, tags): the default user and tags give the
//! Secret `<prefix>` itself; `meshscale.dev/user` and `meshscale.dev/tags`
//! give `<prefix>-<user>-<hash of tags>`.

use k8s_openapi::api::core::v1::Pod;

use crate::crd::{PreAuthKeySpec, Tag};

pub const ANN_USER: &str = "meshscale.dev/user";
pub const ANN_TAGS: &str = "meshscale.dev/tags";
/// Set on the PreAuthKeys the operator makes for injection, so they can be told
/// apart from the ones users write.
pub const LABEL_INJECTION: &str = "meshscale.dev/injection-key";

/// What every injection key looks like, from the operator's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDefaults {
    /// Secret name for the default user and tags, and the prefix of the others.
    pub secret_prefix: String,
    /// The control-server user pods join as without `meshscale.dev/user`.
    pub user: String,
    pub tags: Vec<String>,
    /// Every pod also gets `<prefix><namespace>` (default `tag:k8s-ns-`), so
    /// the policy can name a namespace's pods; empty: no namespace tag.
    pub namespace_tag_prefix: String,
    /// Key lifetime, e.g. `30d`; rotated `rotate_before` ahead of expiry, so
    /// a pod scheduled long after the key was made still joins.
    pub expiration: String,
    pub rotate_before: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectKey {
    pub user: String,
    pub tags: Vec<String>,
    /// The Secret and the PreAuthKey share this name.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation {ANN_USER}: {0:?} is not a DNS label of at most 40 characters")]
    BadUser(String),
    #[error("annotation {ANN_TAGS}: {0:?} is not a tag (tag:<dns label>)")]
    BadTag(String),
    /// Namespace tags are the operator's: a pod claiming another namespace's
    /// tag would be let into that namespace's policy.
    #[error("annotation {ANN_TAGS}: {0:?} is reserved for the namespace tags the operator assigns")]
    ReservedTag(String),
    /// A sidecar resource annotation (`meshscale.dev/cpu`, ...) that is not a
    /// Kubernetes quantity: the API server would reject the patched pod anyway.
    #[error("annotation {annotation}: {value:?} is not a resource quantity (e.g. 100m, 64Mi)")]
    BadQuantity {
        annotation: &'static str,
        value: String,
    },
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_tag(s: &str) -> bool {
    s.strip_prefix("tag:").is_some_and(|l| is_dns_label(l, 59))
}

/// FNV-1a: a stable, dependency-free name suffix (not a security boundary).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `prefix` makes valid tags when a namespace name is appended.
pub fn is_namespace_tag_prefix(prefix: &str) -> bool {
    prefix.len() <= 40
        && is_tag(&format!("{prefix}x"))
        && prefix[4..].starts_with(|c: char| c.is_ascii_lowercase())
}

/// The tag of `namespace`'s pods: `<prefix><namespace>`, or, when that is
/// longer than a DNS label allows, a cut name plus a hash (still unique).
pub fn namespace_tag(prefix: &str, namespace: &str) -> String {
    let label_prefix = prefix.strip_prefix("tag:").unwrap_or(prefix);
    if label_prefix.len() + namespace.len() <= 63 {
        return format!("{prefix}{namespace}");
    }
    let keep = 63usize.saturating_sub(label_prefix.len() + 9);
    let cut: String = namespace.chars().take(keep).collect();
    format!(
        "{prefix}{}-{:08x}",
        cut.trim_end_matches('-'),
        fnv1a(namespace) & 0xffff_ffff
    )
}

/// The key for `pod` in `namespace`, from its annotations (untrusted:
/// validated here) and the defaults. Its tags: the default tags, the
/// namespace's tag and those of `meshscale.dev/tags`.
pub fn key_for(pod: &Pod, namespace: &str, d: &KeyDefaults) -> Result<InjectKey, AnnotationError> {
    let ann = pod.metadata.annotations.as_ref();
    let get = |k: &str| {
        ann.and_then(|a| a.get(k))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let user = match get(ANN_USER) {
        Some(u) if is_dns_label(&u, 40) => u,
        Some(u) => return Err(AnnotationError::BadUser(u.chars().take(80).collect())),
        None => d.user.clone(),
    };
    let mut extra = Vec::new();
    for t in get(ANN_TAGS)
        .iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if !is_tag(t) {
            return Err(AnnotationError::BadTag(t.chars().take(80).collect()));
        }
        if !d.namespace_tag_prefix.is_empty() && t.starts_with(&d.namespace_tag_prefix) {
            return Err(AnnotationError::ReservedTag(t.to_string()));
        }
        extra.push(t.to_string());
    }
    let mut default_tags = d.tags.clone();
    if !d.namespace_tag_prefix.is_empty() && !namespace.is_empty() {
        default_tags.push(namespace_tag(&d.namespace_tag_prefix, namespace));
    }
    default_tags.sort();
    default_tags.dedup();
    let mut tags = default_tags.clone();
    tags.extend(extra);
    tags.sort();
    tags.dedup();
    let name = if user == d.user && tags == default_tags {
        d.secret_prefix.clone()
    } else {
        let h = fnv1a(&format!("{user}\n{}", tags.join(",")));
        format!("{}-{user}-{:08x}", d.secret_prefix, h & 0xffff_ffff)
    };
    Ok(InjectKey { user, tags, name })
}

/// The PreAuthKey spec the operator keeps for an injection key: reusable (one
/// key for every pod), ephemeral (a pod's node is not meant to outlive it).
pub fn spec_for(key: &InjectKey, d: &KeyDefaults) -> PreAuthKeySpec {
    PreAuthKeySpec {
        user: key.user.clone(),
        reusable: true,
        ephemeral: true,
        expiration: d.expiration.clone(),
        rotate_before: Some(d.rotate_before.clone()),
        tags: key.tags.iter().cloned().map(Tag).collect(),
        secret_name: key.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> KeyDefaults {
        KeyDefaults {
            secret_prefix: "meshscale-authkey".into(),
            user: "k8s".into(),
            tags: vec!["tag:k8s".into()],
            namespace_tag_prefix: "tag:k8s-ns-".into(),
            expiration: "30d".into(),
            rotate_before: "7d".into(),
        }
    }

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "annotations": annotations}}))
            .unwrap()
    }

    #[test]
    fn default_pod_uses_the_namespace_default_secret() {
        let k = key_for(&pod(json!({})), "apps", &defaults()).unwrap();
        assert_eq!(k.name, "meshscale-authkey");
        assert_eq!(k.user, "k8s");
        assert_eq!(k.tags, vec!["tag:k8s", "tag:k8s-ns-apps"]);
        let spec = spec_for(&k, &defaults());
        assert!(spec.reusable && spec.ephemeral);
        assert_eq!(spec.secret_name, "meshscale-authkey");
        assert_eq!(spec.rotate_before.as_deref(), Some("7d"));
    }

    #[test]
    fn user_and_tags_annotations_pick_their_own_stable_key() {
        let d = defaults();
        let a = key_for(
            &pod(json!({ANN_USER: "team-a", ANN_TAGS: "tag:web, tag:db"})),
            "apps",
            &d,
        )
        .unwrap();
        let b = key_for(
            &pod(json!({ANN_USER: "team-a", ANN_TAGS: "tag:db,tag:web,tag:db"})),
            "apps",
            &d,
        )
        .unwrap();
        assert_eq!(a, b, "order and duplicates do not matter");
        assert!(
            a.name.starts_with("meshscale-authkey-team-a-"),
            "{}",
            a.name
        );
        assert!(a.name.len() <= 63);
        // Annotation tags come on top of the default and namespace tags.
        assert_eq!(
            a.tags,
            vec!["tag:db", "tag:k8s", "tag:k8s-ns-apps", "tag:web"]
        );
        let c = key_for(&pod(json!({ANN_USER: "team-a"})), "apps", &d).unwrap();
        assert_ne!(a.name, c.name);
        assert_eq!(c.tags, vec!["tag:k8s", "tag:k8s-ns-apps"]);
        // Naming a default tag again is still the default key.
        let same = key_for(&pod(json!({ANN_TAGS: "tag:k8s"})), "apps", &d).unwrap();
        assert_eq!(same.name, "meshscale-authkey");
    }

    #[test]
    fn bad_annotations_are_refused_not_passed_on() {
        let d = defaults();
        for bad in ["Team", "a/b", "-a", &"x".repeat(41)] {
            assert!(matches!(
                key_for(&pod(json!({ANN_USER: bad})), "apps", &d),
                Err(AnnotationError::BadUser(_))
            ));
        }
        for bad in ["web", "tag:", "tag:UP", "tag:a b"] {
            assert!(matches!(
                key_for(&pod(json!({ANN_TAGS: bad})), "apps", &d),
                Err(AnnotationError::BadTag(_))
            ));
        }
        // Another namespace's tag cannot be claimed by annotation.
        assert!(matches!(
            key_for(
                &pod(json!({ANN_TAGS: "tag:web,tag:k8s-ns-payments"})),
                "apps",
                &d
            ),
            Err(AnnotationError::ReservedTag(_))
        ));
    }

    #[test]
    fn namespace_tags_are_valid_tags_even_for_long_namespaces() {
        assert_eq!(
            namespace_tag("tag:k8s-ns-", "payments"),
            "tag:k8s-ns-payments"
        );
        let long = "a".repeat(63);
        let other = format!("{}b", "a".repeat(62));
        let t = namespace_tag("tag:k8s-ns-", &long);
        assert!(is_dns_label(&t[4..], 63), "{t}");
        assert_ne!(t, namespace_tag("tag:k8s-ns-", &other));
        assert!(is_namespace_tag_prefix("tag:k8s-ns-"));
        for bad in ["k8s-ns-", "tag:", "tag:-x", "tag:K8s-", "tag:9ns-"] {
            assert!(!is_namespace_tag_prefix(bad), "{bad}");
        }
    }
}
