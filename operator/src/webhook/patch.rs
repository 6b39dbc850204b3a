//! Which pods get the sidecar, and the JSON patch (RFC 6902) that adds it.

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::injectkey::{ANN_TAGS, AnnotationError, KeyDefaults, key_for};

pub const SIDECAR_NAME: &str = "meshscale-sidecar";
pub const ANN_INJECT: &str = "meshscale.dev/inject";
pub const ANN_INJECTED: &str = "meshscale.dev/injected";
const STATE_VOLUME: &str = "meshscale-state";
const TUN_VOLUME: &str = "meshscale-tun";
const STATE_DIR: &str = "/var/lib/meshscale-sidecar";
const CA_VOLUME: &str = "meshscale-ca";
const CA_DIR: &str = "/etc/meshscale/ca";
/// Per-pod overrides of the sidecar's resources (the chart's values are the default).
pub const ANN_CPU: &str = "meshscale.dev/cpu";
pub const ANN_MEMORY: &str = "meshscale.dev/memory";
pub const ANN_CPU_LIMIT: &str = "meshscale.dev/cpu-limit";
pub const ANN_MEMORY_LIMIT: &str = "meshscale.dev/memory-limit";

/// Where the CA bundle that signed the control server's certificate comes
/// from, for clusters whose login server is not under a public CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A Secret in the pod's namespace; `key` is the data key (e.g. `ca.crt`).
    Secret { name: String, key: String },
    /// A ConfigMap in the pod's namespace (e.g. one filled by trust-manager).
    ConfigMap { name: String, key: String },
}

#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub image: String,
    pub login_server: String,
    /// Which per-namespace Secret holds the pod's auth key (under `authkey`).
    pub keys: KeyDefaults,
    /// Mounted into the sidecar and passed as `--ca-file` when set.
    pub ca: Option<CaSource>,
    /// Never inject here: kube-system and the operator's own namespace at least.
    pub excluded_namespaces: Vec<String>,
    pub healthz_port: u16,
    pub cpu_request: String,
    pub memory_request: String,
    /// No limit when unset: a throttled sidecar stalls every connection of the pod.
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    /// Namespaces whose Pod Security level rejects the sidecar (empty when
    /// the webhook runs without a cluster client).
    pub pod_security: super::podsecurity::PodSecurity,
}

/// Whether `s` is a Kubernetes resource quantity: a non-negative decimal with
/// an optional binary (Ki..Ei), decimal (m, k, M..E) or exponent suffix.
pub fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let mut parts = number.split('.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    let number_ok = parts.next().is_none()
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()))
        && number.len() <= 30;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || ((suffix.starts_with('e') || suffix.starts_with('E'))
        && suffix.len() > 1
        && suffix.len() <= 4
        && suffix[1..].bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

/// The sidecar's `resources`: the configured defaults, overridden per pod by
/// the resource annotations. A bad annotation is an error, not a silent default.
pub fn resources(pod: &Pod, cfg: &InjectConfig) -> Result<Value, AnnotationError> {
    let ann = pod.metadata.annotations.as_ref();
    let pick =
        |name: &'static str, default: Option<&String>| -> Result<Option<String>, AnnotationError> {
            match ann.and_then(|a| a.get(name)).map(|v| v.trim()) {
                Some(v) if is_quantity(v) => Ok(Some(v.to_string())),
                Some(v) => Err(AnnotationError::BadQuantity {
                    annotation: name,
                    value: v.to_string(),
                }),
                None => Ok(default.cloned()),
            }
        };
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    for (is_limit, key, ann_name, default) in [
        (false, "cpu", ANN_CPU, Some(&cfg.cpu_request)),
        (false, "memory", ANN_MEMORY, Some(&cfg.memory_request)),
        (true, "cpu", ANN_CPU_LIMIT, cfg.cpu_limit.as_ref()),
        (true, "memory", ANN_MEMORY_LIMIT, cfg.memory_limit.as_ref()),
    ] {
        if let Some(v) = pick(ann_name, default)?.filter(|v| !v.is_empty()) {
            let map = if is_limit { &mut limits } else { &mut requests };
            map.insert(key.to_string(), Value::String(v));
        }
    }
    let mut out = serde_json::Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Ok(Value::Object(out))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Inject,
    Skip(&'static str),
}

/// `namespace_opted_in`: the request came through the webhook entry whose
/// namespaceSelector matches namespaces labelled `meshscale.dev/inject=true`.
pub fn verdict(
    pod: &Pod,
    namespace: &str,
    namespace_opted_in: bool,
    cfg: &InjectConfig,
) -> Verdict {
    if cfg.excluded_namespaces.iter().any(|n| n == namespace) {
        return Verdict::Skip("excluded namespace");
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        // A TUN device and routes in the host's network namespace would hijack the node.
        return Verdict::Skip("hostNetwork pod");
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_INJECT))
        .map(|v| v.trim().to_ascii_lowercase());
    let wanted = match annotation.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => namespace_opted_in,
    };
    if !wanted {
        return Verdict::Skip("not requested");
    }
    let already = spec.is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_NAME)
    });
    if already {
        return Verdict::Skip("already injected");
    }
    Verdict::Inject
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// The sidecar as a native sidecar: an init container with `restartPolicy: Always`,
/// started before everything else and, through its startup probe, holding the
/// app containers back until the tunnel is up.
pub fn sidecar(cfg: &InjectConfig, secret_name: &str, resources: Value) -> Value {
    let mut args = vec![
        json!("up"),
        json!("--login-server"),
        json!(cfg.login_server),
        // `$(POD_NAME)`: the kubelet expands it at run time. At admission a
        // ReplicaSet's pod has only generateName. The namespace makes the node
        // unique across namespaces (see `reconcile::pods::hostname_of`).
        json!("--hostname"),
        json!("$(POD_NAME)-$(POD_NAMESPACE)"),
        json!("--state-dir"),
        json!(STATE_DIR),
        // The kubelet probes the pod IP, so the endpoint cannot be loopback-only.
        json!("--healthz-addr"),
        json!(format!("0.0.0.0:{}", cfg.healthz_port)),
    ];
    let mut mounts = vec![
        json!({"name": STATE_VOLUME, "mountPath": STATE_DIR}),
        json!({"name": TUN_VOLUME, "mountPath": "/dev/net/tun"}),
    ];
    if let Some(ca) = &cfg.ca {
        let key = match ca {
            CaSource::Secret { key, .. } | CaSource::ConfigMap { key, .. } => key,
        };
        args.push(json!("--ca-file"));
        args.push(json!(format!("{CA_DIR}/{key}")));
        mounts.push(json!({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true}));
    }
    json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "restartPolicy": "Always",
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MESHSCALE_AUTHKEY", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "authkey"}}},
        ],
        "securityContext": {
            "capabilities": {"add": ["NET_ADMIN"]},
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": cfg.healthz_port},
            "periodSeconds": 2,
            "failureThreshold": 150,
        },
        "resources": resources,
        "volumeMounts": mounts,
    })
}

fn ca_volume(ca: &CaSource) -> Value {
    match ca {
        CaSource::Secret { name, key } => json!({"name": CA_VOLUME, "secret": {
            "secretName": name, "items": [{"key": key, "path": key}]}}),
        CaSource::ConfigMap { name, key } => json!({"name": CA_VOLUME, "configMap": {
            "name": name, "items": [{"key": key, "path": key}]}}),
    }
}

/// The patch for a pod `verdict` said yes to.
/// Fails only on bad `meshscale.dev/user`/`meshscale.dev/tags` annotations.
pub fn patch(pod: &Pod, namespace: &str, cfg: &InjectConfig) -> Result<Patch, AnnotationError> {
    // The namespace's `meshscale.dev/tags` are written onto the pod, so the
    // operator's pod watch, which sees only the pod, picks the same key.
    let annotations_before = pod.metadata.annotations.is_some();
    let ns_tags = cfg.pod_security.namespace_tags(namespace);
    let pod_tags = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_TAGS))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let merged_tags = match (&ns_tags, &pod_tags) {
        (Some(n), Some(p)) => Some(format!("{p},{n}")),
        (Some(n), None) => Some(n.clone()),
        _ => None,
    };
    let tagged;
    let pod = match &merged_tags {
        Some(t) => {
            let mut p = pod.clone();
            p.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANN_TAGS.to_string(), t.clone());
            tagged = p;
            &tagged
        }
        None => pod,
    };
    let key = key_for(pod, namespace, &cfg.keys)?;
    let resources = resources(pod, cfg)?;
    let spec = pod.spec.as_ref();
    let mut ops = Vec::new();
    // Node state in an emptyDir: a restarted container is the same node, a new pod a new one.
    let mut volumes = vec![
        json!({"name": STATE_VOLUME, "emptyDir": {}}),
        json!({"name": TUN_VOLUME, "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}}),
    ];
    if let Some(ca) = &cfg.ca {
        volumes.push(ca_volume(ca));
    }
    if spec.is_some_and(|s| s.volumes.is_some()) {
        for v in volumes {
            ops.push(add(&["spec", "volumes", "-"], v));
        }
    } else {
        ops.push(add(&["spec", "volumes"], Value::Array(volumes)));
    }
    if spec.is_some_and(|s| s.init_containers.is_some()) {
        // First, so other init containers already have the mesh.
        ops.push(add(
            &["spec", "initContainers", "0"],
            sidecar(cfg, &key.name, resources),
        ));
    } else {
        ops.push(add(
            &["spec", "initContainers"],
            json!([sidecar(cfg, &key.name, resources)]),
        ));
    }
    if annotations_before {
        ops.push(add(
            &["metadata", "annotations", ANN_INJECTED],
            json!("true"),
        ));
        if let Some(t) = merged_tags {
            ops.push(add(&["metadata", "annotations", ANN_TAGS], json!(t)));
        }
    } else {
        let mut a = serde_json::Map::new();
        a.insert(ANN_INJECTED.to_string(), json!("true"));
        if let Some(t) = merged_tags {
            a.insert(ANN_TAGS.to_string(), json!(t));
        }
        ops.push(add(&["metadata", "annotations"], Value::Object(a)));
    }
    Ok(Patch(ops))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn cfg() -> InjectConfig {
        InjectConfig {
            image: "meshscale-sidecar:test".into(),
            login_server: "https://mesh.example".into(),
            keys: KeyDefaults {
                secret_prefix: "meshscale-authkey".into(),
                user: "k8s".into(),
                tags: vec!["tag:k8s".into()],
                namespace_tag_prefix: "tag:k8s-ns-".into(),
                expiration: "30d".into(),
                rotate_before: "7d".into(),
            },
            ca: None,
            excluded_namespaces: vec!["kube-system".into(), "meshscale".into()],
            healthz_port: 9099,
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: None,
            memory_limit: None,
            pod_security: Default::default(),
        }
    }

    pub fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn apply(p: &Pod, patch: &Patch) -> Value {
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, patch).unwrap();
        doc
    }

    fn annotated() -> Pod {
        pod(json!({
            "metadata": {"generateName": "web-", "annotations": {"meshscale.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        }))
    }

    #[test]
    fn annotated_pod_gets_a_native_sidecar_with_everything() {
        let p = annotated();
        assert_eq!(verdict(&p, "apps", false, &cfg()), Verdict::Inject);
        let doc = apply(&p, &patch(&p, "apps", &cfg()).unwrap());
        let init = &doc["spec"]["initContainers"][0];
        assert_eq!(init["name"], SIDECAR_NAME);
        assert_eq!(init["restartPolicy"], "Always");
        assert_eq!(init["startupProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(
            init["securityContext"]["capabilities"]["add"][0],
            "NET_ADMIN"
        );
        assert_eq!(
            init["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            init["env"][2]["valueFrom"]["secretKeyRef"]["name"],
            "meshscale-authkey"
        );
        let args: Vec<&str> = init["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--hostname", "$(POD_NAME)-$(POD_NAMESPACE)"])
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--login-server", "https://mesh.example"])
        );
        let vols = doc["spec"]["volumes"].as_array().unwrap();
        assert!(vols.iter().any(|v| v["emptyDir"].is_object()));
        assert!(vols.iter().any(|v| v["hostPath"]["path"] == "/dev/net/tun"));
        assert_eq!(doc["metadata"]["annotations"][ANN_INJECTED], "true");
        // The result is still a valid Pod, with the app container untouched.
        let out: Pod = serde_json::from_value(doc).unwrap();
        assert_eq!(out.spec.unwrap().containers[0].name, "app");
    }

    #[test]
    fn injected_pods_carry_their_namespace_tag_and_the_namespace_tags_annotation() {
        let c = cfg();
        let secret_of = |doc: &Value| {
            doc["spec"]["initContainers"][0]["env"][2]["valueFrom"]["secretKeyRef"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // A plain pod: the namespace's default key, which carries tag:k8s-ns-<ns>.
        let p = annotated();
        let doc = apply(&p, &patch(&p, "payments", &c).unwrap());
        assert_eq!(secret_of(&doc), "meshscale-authkey");
        let key = key_for(&pod(doc.clone()), "payments", &c.keys).unwrap();
        assert_eq!(key.tags, ["tag:k8s", "tag:k8s-ns-payments"]);
        assert!(doc["metadata"]["annotations"].get(ANN_TAGS).is_none());

        // The namespace's `meshscale.dev/tags` is added to the pod's own, and
        // written onto the pod so the pod watch picks the same key.
        c.pod_security.set_tags("payments", Some("tag:pci"));
        for (p, want) in [
            (
                annotated(),
                vec!["tag:k8s", "tag:k8s-ns-payments", "tag:pci"],
            ),
            (
                pod(json!({
                    "metadata": {"name": "w", "annotations": {"meshscale.dev/inject": "true", ANN_TAGS: "tag:web"}},
                    "spec": {"containers": [{"name": "app", "image": "nginx"}]}
                })),
                vec!["tag:k8s", "tag:k8s-ns-payments", "tag:pci", "tag:web"],
            ),
            (
                pod(json!({
                    "metadata": {"name": "n", "labels": {"app": "x"}},
                    "spec": {"containers": [{"name": "app", "image": "nginx"}]}
                })),
                vec!["tag:k8s", "tag:k8s-ns-payments", "tag:pci"],
            ),
        ] {
            let doc = apply(&p, &patch(&p, "payments", &c).unwrap());
            let seen_by_watch = key_for(&pod(doc.clone()), "payments", &c.keys).unwrap();
            assert_eq!(seen_by_watch.tags, want);
            assert_eq!(secret_of(&doc), seen_by_watch.name);
            assert_ne!(seen_by_watch.name, "meshscale-authkey");
            assert_eq!(doc["metadata"]["annotations"][ANN_INJECTED], "true");
        }
        // Other namespaces are unaffected.
        let doc = apply(&p, &patch(&p, "apps", &c).unwrap());
        assert_eq!(secret_of(&doc), "meshscale-authkey");
    }

    #[test]
    fn existing_volumes_and_init_containers_are_kept() {
        let p = pod(json!({
            "metadata": {"name": "x", "annotations": {"meshscale.dev/inject": "true"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "m"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "a"}]
            }
        }));
        let doc = apply(&p, &patch(&p, "apps", &cfg()).unwrap());
        let init = doc["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 2);
        assert_eq!(init[0]["name"], SIDECAR_NAME);
        assert_eq!(init[1]["name"], "migrate");
        assert_eq!(doc["spec"]["volumes"].as_array().unwrap().len(), 3);
        assert_eq!(doc["spec"]["volumes"][0]["name"], "data");
    }

    #[test]
    fn skips_what_must_never_be_injected() {
        let c = cfg();
        assert_eq!(
            verdict(&annotated(), "kube-system", true, &c),
            Verdict::Skip("excluded namespace")
        );
        assert_eq!(
            verdict(&annotated(), "meshscale", false, &c),
            Verdict::Skip("excluded namespace")
        );
        let host = pod(json!({
            "metadata": {"annotations": {"meshscale.dev/inject": "true"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "a"}]}
        }));
        assert_eq!(
            verdict(&host, "apps", true, &c),
            Verdict::Skip("hostNetwork pod")
        );
        let plain = pod(json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(
            verdict(&plain, "apps", false, &c),
            Verdict::Skip("not requested")
        );
        let opted_out = pod(json!({
            "metadata": {"annotations": {"meshscale.dev/inject": "false"}},
            "spec": {"containers": [{"name": "a"}]}
        }));
        assert_eq!(
            verdict(&opted_out, "apps", true, &c),
            Verdict::Skip("not requested")
        );
    }

    #[test]
    fn labelled_namespace_injects_unannotated_pods_once() {
        let c = cfg();
        let plain = pod(json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(verdict(&plain, "apps", true, &c), Verdict::Inject);
        let doc = apply(&plain, &patch(&plain, "apps", &c).unwrap());
        let injected: Pod = serde_json::from_value(doc).unwrap();
        assert_eq!(
            verdict(&injected, "apps", true, &c),
            Verdict::Skip("already injected")
        );
    }

    #[test]
    fn user_annotation_picks_its_key_secret_and_ca_bundle_is_mounted() {
        let mut c = cfg();
        c.ca = Some(CaSource::ConfigMap {
            name: "meshscale-ca".into(),
            key: "ca.crt".into(),
        });
        let p = pod(json!({
            "metadata": {"name": "x", "annotations": {
                "meshscale.dev/inject": "true", "meshscale.dev/user": "team-a"}},
            "spec": {"containers": [{"name": "app", "image": "a"}]}
        }));
        let doc = apply(&p, &patch(&p, "apps", &c).unwrap());
        let init = &doc["spec"]["initContainers"][0];
        let secret = init["env"][2]["valueFrom"]["secretKeyRef"]["name"]
            .as_str()
            .unwrap();
        assert!(secret.starts_with("meshscale-authkey-team-a-"), "{secret}");
        let args = init["args"].as_array().unwrap();
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--ca-file" && w[1] == "/etc/meshscale/ca/ca.crt")
        );
        assert!(
            init["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == CA_VOLUME && m["readOnly"] == true)
        );
        let vols = doc["spec"]["volumes"].as_array().unwrap();
        assert!(
            vols.iter()
                .any(|v| v["configMap"]["name"] == "meshscale-ca")
        );
        // Still a valid Pod.
        let _: Pod = serde_json::from_value(doc).unwrap();
        // Without a CA source nothing CA-related is added.
        let doc = apply(&p, &patch(&p, "apps", &cfg()).unwrap());
        assert!(!doc.to_string().contains("--ca-file"));
    }

    #[test]
    fn sidecar_resources_come_from_config_and_annotations() {
        // Defaults: requests only.
        let p = annotated();
        let doc = apply(&p, &patch(&p, "apps", &cfg()).unwrap());
        let res = &doc["spec"]["initContainers"][0]["resources"];
        assert_eq!(res, &json!({"requests": {"cpu": "10m", "memory": "32Mi"}}));

        // Configured limits appear; annotations override single values.
        let mut c = cfg();
        c.memory_limit = Some("128Mi".into());
        let p = pod(json!({
            "metadata": {"name": "x", "annotations": {
                "meshscale.dev/inject": "true",
                "meshscale.dev/cpu": "250m",
                "meshscale.dev/cpu-limit": " 1 ",
                "meshscale.dev/memory": "1.5Gi"}},
            "spec": {"containers": [{"name": "app", "image": "a"}]}
        }));
        let doc = apply(&p, &patch(&p, "apps", &c).unwrap());
        let res = &doc["spec"]["initContainers"][0]["resources"];
        assert_eq!(
            res,
            &json!({"requests": {"cpu": "250m", "memory": "1.5Gi"},
                    "limits": {"cpu": "1", "memory": "128Mi"}})
        );
        // Still a valid Pod with parseable quantities.
        let out: Pod = serde_json::from_value(doc).unwrap();
        let init = &out.spec.unwrap().init_containers.unwrap()[0];
        let limits = init.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "128Mi");
    }

    #[test]
    fn bad_resource_annotation_is_an_error_naming_it() {
        for bad in ["lots", "-1", "1.2.3", "10mb", "", "1e", "Mi"] {
            let p = pod(json!({
                "metadata": {"name": "x", "annotations": {
                    "meshscale.dev/inject": "true", "meshscale.dev/memory": bad}},
                "spec": {"containers": [{"name": "app", "image": "a"}]}
            }));
            let err = patch(&p, "apps", &cfg()).unwrap_err().to_string();
            assert!(err.contains("meshscale.dev/memory"), "{bad}: {err}");
        }
        for good in ["1", "100m", "0.5", ".5", "64Mi", "1G", "2e3", "1E6"] {
            assert!(is_quantity(good), "{good}");
        }
    }

    #[test]
    fn bad_user_annotation_is_an_error_not_a_patch() {
        let p = pod(json!({
            "metadata": {"name": "x", "annotations": {
                "meshscale.dev/inject": "true", "meshscale.dev/user": "Not/A/User"}},
            "spec": {"containers": [{"name": "app", "image": "a"}]}
        }));
        assert!(patch(&p, "apps", &cfg()).is_err());
    }
}
