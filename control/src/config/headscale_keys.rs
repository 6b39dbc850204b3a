//! Headscale's config keys that Meshscale reads differently or not at all,
//! so that a Headscale admin's `config.yaml` starts Meshscale:
//!
//! - renamed: Headscale's current name for a key Meshscale knows under its
//!   older name (moved before anything else reads the tree);
//! - ignored: Headscale keys Meshscale does not implement. They are taken
//!   out of the tree and the server starts with one warning naming each.
//!   A key that the [`Config`](super::Config) struct knows (another branch
//!   implements it later) is never ignored: what it holds wins;
//! - `database.postgres.ssl` may be a boolean, as in Headscale;
//! - anything else unknown is refused, with a "did you mean" suggestion
//!   from the known, renamed and ignored keys (edit distance).

use serde_yaml::{Mapping, Value};

use super::ConfigError;

/// Headscale's name → Meshscale's.
const RENAMED: &[(&str, &str)] = &[(
    "node.ephemeral.inactivity_timeout",
    "ephemeral_node_inactivity_timeout",
)];

/// Keys Headscale reads as a boolean or a string and Meshscale as a string
/// (`database.postgres.ssl: false`, libpq's `disable`).
const BOOL_AS_STRING: &[&str] = &["database.postgres.ssl"];

/// A whole section (every key under it is ignored, and each is named in
/// the warning) or one key (named as is; its value may be a map).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Section,
    Key,
}

/// Headscale keys (its `config-example.yaml` and `hscontrol/types/config.go`,
/// July 2026) that Meshscale does not implement. `policy.*` is not here: it
/// is being implemented.
const IGNORED: &[(&str, Kind)] = &[
    ("acme_email", Kind::Key),
    ("acme_url", Kind::Key),
    ("auto_update", Kind::Section),
    ("cli", Kind::Section),
    ("database.debug", Kind::Key),
    ("database.gorm", Kind::Section),
    ("database.postgres.conn_max_idle_time_secs", Kind::Key),
    ("database.postgres.max_idle_conns", Kind::Key),
    ("database.sqlite.wal_autocheckpoint", Kind::Key),
    // Meshscale's relay always admits registered nodes only.
    ("derp.server.verify_clients", Kind::Key),
    ("derp.server.stun", Kind::Section),
    ("disable_check_updates", Kind::Key),
    ("dns.extra_records", Kind::Key),
    ("dns.extra_records_path", Kind::Key),
    ("dns.nameservers.split", Kind::Key),
    ("dns.override_local_dns", Kind::Key),
    ("dns.search_domains", Kind::Key),
    ("logtail", Kind::Section),
    ("node.expiry", Kind::Key),
    ("node.routes", Kind::Section),
    ("oidc", Kind::Section),
    ("preauth_keys", Kind::Section),
    ("randomize_client_port", Kind::Key),
    ("taildrop", Kind::Section),
    ("tls_letsencrypt_cache_dir", Kind::Key),
    ("tls_letsencrypt_challenge_type", Kind::Key),
    ("tls_letsencrypt_hostname", Kind::Key),
    ("tls_letsencrypt_listen", Kind::Key),
    ("trusted_proxies", Kind::Key),
    ("tuning", Kind::Section),
];

fn split(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

fn get<'a>(tree: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(tree, |node, key| node.as_mapping()?.get(*key))
}

fn mapping_at<'a>(tree: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    path.iter()
        .try_fold(tree, |node, key| node.as_mapping_mut()?.get_mut(*key))?
        .as_mapping_mut()
}

/// Whether the config struct reads `path` (`defaults` is the serialized
/// default config): it exists there, or lies under a value there that is
/// not a mapping (an optional section, a free-form map).
fn is_known(defaults: &Value, path: &[&str]) -> bool {
    let mut node = defaults;
    for key in path {
        match node {
            Value::Mapping(m) => match m.get(*key) {
                Some(child) => node = child,
                None => return false,
            },
            _ => return true,
        }
    }
    true
}

/// Takes the value at `path` out of the tree, then drops the mappings left
/// empty above it that the config does not know (`node:` once its only
/// key moved), so they are not refused as unknown.
fn take(tree: &mut Value, defaults: &Value, path: &[&str]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let value = mapping_at(tree, parents)?.remove(*last)?;
    for depth in (1..path.len()).rev() {
        let prefix = &path[..depth];
        let empty = get(tree, prefix)
            .and_then(Value::as_mapping)
            .is_some_and(Mapping::is_empty);
        if !empty || is_known(defaults, prefix) {
            break;
        }
        let (last, parents) = prefix.split_last()?;
        mapping_at(tree, parents)?.remove(*last);
    }
    Some(value)
}

fn put(tree: &mut Value, path: &[&str], value: Value) {
    let mut node = tree;
    for key in path {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = node else { return };
        node = m
            .entry(Value::String((*key).to_string()))
            .or_insert(Value::Null);
    }
    *node = value;
}

/// Applies [`RENAMED`] and takes the [`IGNORED`] keys out of `tree` (the
/// file, before environment overrides). Returns the ignored keys present,
/// in order, for the start-up warning.
pub(super) fn prepare(tree: &mut Value, defaults: &Value) -> Result<Vec<String>, ConfigError> {
    for (from, to) in RENAMED {
        let (from_path, to_path) = (split(from), split(to));
        if is_known(defaults, &from_path) {
            continue;
        }
        let Some(value) = take(tree, defaults, &from_path) else {
            continue;
        };
        match get(tree, &to_path) {
            Some(existing) if *existing != value => {
                return Err(ConfigError::key(
                    from,
                    format!("is Headscale's name for `{to}`, which is also set, to another value"),
                ));
            }
            _ => put(tree, &to_path, value),
        }
    }
    for key in BOOL_AS_STRING {
        let path = split(key);
        if let Some((last, parents)) = path.split_last()
            && let Some(m) = mapping_at(tree, parents)
            && let Some(v) = m.get_mut(*last)
            && let Value::Bool(b) = v
        {
            *v = Value::String(b.to_string());
        }
    }
    let mut ignored = Vec::new();
    for (entry, kind) in IGNORED {
        let path = split(entry);
        if is_known(defaults, &path) {
            continue;
        }
        let Some(value) = take(tree, defaults, &path) else {
            continue;
        };
        match (kind, value) {
            (Kind::Section, Value::Mapping(m)) if !m.is_empty() => {
                for key in m.keys() {
                    let key = match key {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    ignored.push(format!("{entry}.{key}"));
                }
            }
            _ => ignored.push((*entry).to_string()),
        }
    }
    Ok(ignored)
}

/// Every key path a config may hold: the known ones (from `defaults`),
/// Headscale's renamed and ignored ones.
fn candidates(defaults: &Value) -> Vec<String> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        if let Value::Mapping(m) = v {
            for (k, child) in m {
                if let Some(k) = k.as_str() {
                    let path = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(path.clone());
                    walk(&path, child, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk("", defaults, &mut out);
    for (from, _) in RENAMED {
        out.push((*from).to_string());
    }
    for (entry, _) in IGNORED {
        out.push((*entry).to_string());
    }
    out
}

/// The next path segments under `parent` among the candidates.
fn children<'a>(all: &'a [String], parent: &[&str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = all
        .iter()
        .filter_map(|c| {
            let segs: Vec<&str> = c.split('.').collect();
            (segs.len() > parent.len() && segs[..parent.len()] == *parent)
                .then(|| c.split('.').nth(parent.len()))
                .flatten()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The closest name to `name` among `options`, if close enough to be a typo.
fn closest<'a>(name: &str, options: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    options
        .iter()
        .map(|o| (strsim::osa_distance(name, o), *o))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, o)| o)
}

/// The problem text for an unknown key that serde refused at `path` (the
/// path of the parent mapping, `.` for the top level) with `message`
/// ("unknown field `x`, expected ..."): the full name of the unknown key
/// and, when one is close, the key that was probably meant.
pub(super) fn unknown_key(
    tree: &Value,
    defaults: &Value,
    path: &str,
    message: &str,
) -> Option<(String, String)> {
    let field = message
        .strip_prefix("unknown field `")?
        .split('`')
        .next()?
        .to_string();
    let mut parent: Vec<String> = if path == "." || path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_string).collect()
    };
    // serde_path_to_error may or may not include the field itself.
    if parent.last() == Some(&field) {
        parent.pop();
    }
    let all = candidates(defaults);
    let mut name = field;
    // A Headscale section Meshscale does not have (`node`): the unknown
    // key is further down, e.g. `node.expiri`.
    loop {
        let refs: Vec<&str> = parent.iter().map(String::as_str).collect();
        let options = children(&all, &refs);
        if !options.contains(&name.as_str()) {
            let mut full = refs.clone();
            full.push(&name);
            let full = full.join(".");
            let hint = closest(&name, &options)
                .map(|o| {
                    let mut p = refs.clone();
                    p.push(o);
                    p.join(".")
                })
                .or_else(|| {
                    // Right name, wrong place (`magic_dns` at the top level).
                    all.iter()
                        .find(|c| c.rsplit('.').next() == Some(name.as_str()))
                        .cloned()
                });
            let problem = match hint {
                Some(h) => format!("unknown key; did you mean `{h}`?"),
                None => format!("unknown key ({message})"),
            };
            return Some((full, problem));
        }
        let mut here = refs.clone();
        here.push(&name);
        let user_children: Vec<String> = get(tree, &here)
            .and_then(Value::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let sub_options = children(&all, &here);
        let next = user_children
            .into_iter()
            .find(|c| !sub_options.contains(&c.as_str()))
            .or_else(|| {
                get(tree, &here)
                    .and_then(Value::as_mapping)
                    .and_then(|m| m.keys().find_map(|k| k.as_str().map(str::to_string)))
            })?;
        parent.push(name);
        name = next;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn defaults() -> Value {
        serde_yaml::to_value(Config::default()).unwrap()
    }

    #[test]
    fn unknown_names_get_the_nearest_key() {
        let d = defaults();
        let tree: Value = serde_yaml::from_str("derp:\n  url: [x]\n").unwrap();
        let (key, problem) = unknown_key(
            &tree,
            &d,
            "derp",
            "unknown field `url`, expected one of `server`",
        )
        .unwrap();
        assert_eq!(key, "derp.url");
        assert!(problem.contains("did you mean `derp.urls`?"), "{problem}");
        // A typo of an ignored Headscale key is suggested too.
        let tree: Value = serde_yaml::from_str("odic: {}\n").unwrap();
        let (_, problem) = unknown_key(&tree, &d, ".", "unknown field `odic`").unwrap();
        assert!(problem.contains("`oidc`"), "{problem}");
        // Right name, wrong level.
        let tree: Value = serde_yaml::from_str("magic_dns: true\n").unwrap();
        let (_, problem) = unknown_key(&tree, &d, ".", "unknown field `magic_dns`").unwrap();
        assert!(problem.contains("`dns.magic_dns`"), "{problem}");
        // Inside a Headscale-only section.
        let tree: Value = serde_yaml::from_str("node:\n  expiri: 0\n").unwrap();
        let (key, problem) = unknown_key(&tree, &d, ".", "unknown field `node`").unwrap();
        assert_eq!(key, "node.expiri");
        assert!(problem.contains("`node.expiry`"), "{problem}");
        // Nothing close: serde's own explanation stays.
        let tree: Value = serde_yaml::from_str("zzzzzz: 1\n").unwrap();
        let (_, problem) = unknown_key(
            &tree,
            &d,
            ".",
            "unknown field `zzzzzz`, expected one of `a`",
        )
        .unwrap();
        assert!(!problem.contains("did you mean"), "{problem}");
        assert!(problem.contains("expected one of"), "{problem}");
    }

    /// A Headscale admin's config starts Meshscale: every key is read,
    /// renamed or ignored (and named), none refused.
    #[test]
    fn headscale_example_config_loads() {
        let text = include_str!("headscale-config-example.yaml");
        let c = Config::from_sources(None, Some(text), &[]).unwrap();
        assert_eq!(
            c.derp.urls,
            ["https://controlplane.tailscale.com/derpmap/default"]
        );
        assert_eq!(
            c.derp_update_frequency().unwrap(),
            Some(std::time::Duration::from_secs(3 * 3600))
        );
        assert!(!c.derp.server.enabled);
        assert_eq!(
            c.ephemeral_inactivity_timeout().unwrap(),
            std::time::Duration::from_secs(30 * 60)
        );
        assert_eq!(c.unix_socket_permission, "0770");
        assert_eq!(c.dns.base_domain, "example.com");
        for key in [
            "trusted_proxies",
            "derp.server.verify_clients",
            "disable_check_updates",
            "node.expiry",
            "node.routes.ha",
            "database.debug",
            "database.gorm.prepare_stmt",
            "database.sqlite.wal_autocheckpoint",
            "database.postgres.max_idle_conns",
            "acme_url",
            "tls_letsencrypt_listen",
            "dns.override_local_dns",
            "dns.nameservers.split",
            "dns.extra_records_path",
            "oidc.issuer",
            "oidc.pkce",
            "logtail.enabled",
            "taildrop.enabled",
            "auto_update.enabled",
            "tuning.node_store_batch_timeout",
        ] {
            // Once implemented (the dns.* keys are being), a key is read instead.
            assert!(
                c.ignored_keys.iter().any(|k| k == key) || is_known(&defaults(), &split(key)),
                "{key} neither read nor in {:?}",
                c.ignored_keys
            );
        }
        // Nothing Meshscale reads is reported as ignored.
        for key in &c.ignored_keys {
            assert!(!is_known(&defaults(), &split(key)), "{key}");
        }
    }

    #[test]
    fn meshscale_example_config_loads_with_nothing_ignored() {
        let text = include_str!("../../../deploy/config.example.yaml");
        let c = Config::from_sources(None, Some(text), &[]).unwrap();
        assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        let err = Config::from_sources(None, Some("derp:\n  url: [https://d.example/m]\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`derp.url`") && err.contains("did you mean `derp.urls`?"),
            "{err}"
        );
        let err = Config::from_sources(None, Some("logtial:\n  enabled: false\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `logtail`?"), "{err}");
        let err = Config::from_sources(None, Some("listen_adr: 127.0.0.1:1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `listen_addr`?"), "{err}");
    }

    #[test]
    fn known_keys_are_never_ignored() {
        // `policy` as an optional section (null by default) and `dns.nameservers`
        // as a known mapping: neither may be taken out.
        let d: Value = serde_yaml::from_str("policy: null\ndns:\n  search_domains: []\n").unwrap();
        let mut tree: Value =
            serde_yaml::from_str("policy:\n  mode: file\ndns:\n  search_domains: [a.example]\noidc:\n  issuer: x\n  client_id: y\n")
                .unwrap();
        let ignored = prepare(&mut tree, &d).unwrap();
        assert_eq!(ignored, ["oidc.issuer", "oidc.client_id"]);
        assert!(get(&tree, &["policy", "mode"]).is_some());
        assert!(get(&tree, &["dns", "search_domains"]).is_some());
        assert!(get(&tree, &["oidc"]).is_none());
    }

    #[test]
    fn renamed_key_moves_and_conflicts_are_refused() {
        let d = defaults();
        let mut tree: Value =
            serde_yaml::from_str("node:\n  expiry: 0\n  ephemeral:\n    inactivity_timeout: 5m\n")
                .unwrap();
        let ignored = prepare(&mut tree, &d).unwrap();
        assert_eq!(ignored, ["node.expiry"]);
        assert_eq!(
            get(&tree, &["ephemeral_node_inactivity_timeout"]),
            Some(&Value::String("5m".into()))
        );
        assert!(get(&tree, &["node"]).is_none(), "{tree:?}");
        let mut tree: Value = serde_yaml::from_str(
            "ephemeral_node_inactivity_timeout: 1m\nnode:\n  ephemeral:\n    inactivity_timeout: 5m\n",
        )
        .unwrap();
        let err = prepare(&mut tree, &d).unwrap_err().to_string();
        assert!(err.contains("node.ephemeral.inactivity_timeout"), "{err}");
    }
}
