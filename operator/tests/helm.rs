//! `helm lint` and `helm template` of charts/meshscale, checking what renders.
//! Helm comes from $HELM, the tools cache e2e/setup.sh fills, or PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn helm() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM") {
        return h.into();
    }
    let cached = Path::new("/var/cache/meshscale-tools/bin/helm");
    if cached.exists() {
        return cached.into();
    }
    "helm".into()
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/meshscale")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm ({}): {e}; set HELM", helm().display()));
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "rel",
        chart.to_str().unwrap(),
        "-n",
        "mesh",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let yaml = run(&args);
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn chart_lints() {
    run(&["lint", "--strict", chart().to_str().unwrap()]);
}

#[test]
fn chart_renders_crds_deployments_rbac_and_a_safe_webhook() {
    let docs = render(&[]);
    for crd in [
        "meshusers.meshscale.dev",
        "preauthkeys.meshscale.dev",
        "meshnodes.meshscale.dev",
    ] {
        find(&docs, "CustomResourceDefinition", crd);
    }
    let control = find(&docs, "Deployment", "rel-control");
    assert_eq!(
        control["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "serve"
    );
    let operator = find(&docs, "Deployment", "rel-operator");
    let args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap();
    assert!(
        args.iter()
            .any(|a| a == "--control-server=https://rel-control.mesh.svc:50443")
    );
    for wanted in [
        "--inject-user=k8s",
        "--inject-tags=tag:k8s",
        "--inject-key-expiration=30d",
        "--inject-key-rotate-before=7d",
        "--metrics-addr=0.0.0.0:9090",
        "--webhook-secret=rel-webhook-tls",
        "--webhook-config=rel-inject",
        "--webhook-dns=rel-webhook.mesh.svc",
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} missing");
    }
    assert!(
        !args
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains("sidecar-ca")))
    );
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");

    let role = find(&docs, "ClusterRole", "rel-operator");
    let rules = serde_yaml::to_string(&role["rules"]).unwrap();
    for needed in [
        "meshusers/status",
        "secrets",
        "pods",
        "watch",
        "create",
        "events",
    ] {
        assert!(rules.contains(needed), "{needed} missing from {rules}");
    }
    let lease = find(&docs, "Role", "rel-operator-lease");
    assert_eq!(lease["rules"][0]["resources"][0], "leases");

    let mwc = find(&docs, "MutatingWebhookConfiguration", "rel-inject");
    let hooks = mwc["webhooks"].as_sequence().unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in hooks {
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["sideEffects"], "None");
        // The operator's to fill: without a cluster (no lookup) the chart renders none.
        assert!(hook["clientConfig"]["caBundle"].is_null());
        let excl = &hook["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excl["key"], "kubernetes.io/metadata.name");
        assert_eq!(excl["operator"], "NotIn");
        let values = excl["values"].as_sequence().unwrap();
        assert!(values.iter().any(|v| v == "kube-system"));
        assert!(
            values.iter().any(|v| v == "mesh"),
            "release namespace not excluded"
        );
    }
    find(&docs, "Service", "rel-webhook");
}

/// `helm upgrade` re-renders the chart: anything random in it would change
/// on every upgrade (and on every GitOps sync, which renders without a
/// cluster). The chart therefore renders no key material at all (the
/// operator generates the webhook and control certificates and the admin API
/// key once, into Secrets Helm does not own), so two renders are identical.
#[test]
fn chart_renders_no_key_material_and_two_renders_are_identical() {
    let chart = chart();
    let args = [
        "template",
        "rel",
        chart.to_str().unwrap(),
        "-n",
        "mesh",
        "--set",
        "control.ingress.enabled=true",
    ];
    let first = run(&args);
    let second = run(&args);
    assert_eq!(first, second, "a render differs from the previous one");
    for secret_text in [
        "PRIVATE KEY",
        "BEGIN CERTIFICATE",
        "tls.key: ",
        "kind: Secret",
    ] {
        assert!(!first.contains(secret_text), "{secret_text} rendered");
    }
}

/// Zero-touch: the operator generates and uses the admin API key Secret the
/// control server reads as its bootstrap key, and creates the injection user;
/// nothing names a Secret a human must create.
#[test]
fn operator_and_control_server_share_the_generated_credentials() {
    let docs = render(&[]);
    let operator = find(&docs, "Deployment", "rel-operator");
    let pod = &operator["spec"]["template"]["spec"];
    let args = serde_yaml::to_string(&pod["containers"][0]["args"]).unwrap();
    for wanted in [
        "--api-key-secret=rel-admin-apikey",
        "--control-tls-secret=rel-control-tls",
        "--control-dns=rel-control.mesh.svc",
        "--create-inject-user",
    ] {
        assert!(args.contains(wanted), "{wanted} missing from {args}");
    }
    assert!(
        !args.contains("--api-key-file") && !args.contains("--ca-file"),
        "{args}"
    );
    assert!(pod["volumes"].is_null(), "the operator mounts no Secret");

    let control = find(&docs, "Deployment", "rel-control");
    let volumes = serde_yaml::to_string(&control["spec"]["template"]["spec"]["volumes"]).unwrap();
    assert!(
        volumes.contains("secretName: rel-admin-apikey"),
        "{volumes}"
    );
    assert!(volumes.contains("secretName: rel-control-tls"), "{volumes}");
    let cm = find(&docs, "ConfigMap", "rel-control");
    let config = cm["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("bootstrap_api_key_path: /etc/meshscale/admin/apikey"),
        "{config}"
    );
    let notes = std::fs::read_to_string(chart().join("templates/NOTES.txt")).unwrap();
    assert!(
        !notes.contains("apikeys create") && !notes.contains("kind: MeshUser"),
        "NOTES.txt still asks for a manual step:\n{notes}"
    );

    let off = render(&[
        "--set",
        "injection.createUser=false",
        "--set",
        "operator.apiKeySecret=mine",
    ]);
    let args =
        serde_yaml::to_string(
            &find(&off, "Deployment", "rel-operator")["spec"]["template"]["spec"]["containers"][0]
                ["args"],
        )
        .unwrap();
    assert!(!args.contains("--create-inject-user") && args.contains("--api-key-secret=mine"));
}

/// Hardened clusters: owner references need `update` on the owner's
/// finalizers where OwnerReferencesPermissionEnforcement is on, and the
/// webhook reads namespaces' Pod Security labels.
#[test]
fn cluster_role_covers_owner_finalizers_and_namespaces() {
    let docs = render(&[]);
    let role = find(&docs, "ClusterRole", "rel-operator");
    let rules = role["rules"].as_sequence().unwrap();
    let allows = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|x| x == resource)
                && r["verbs"].as_sequence().unwrap().iter().any(|x| x == verb)
        })
    };
    for owner in ["meshusers", "preauthkeys", "meshnodes"] {
        assert!(
            allows(&format!("{owner}/finalizers"), "update"),
            "{owner}/finalizers"
        );
    }
    for verb in ["get", "list", "watch"] {
        assert!(allows("namespaces", verb), "namespaces {verb}");
        assert!(
            allows("clustermeshpolicies", verb),
            "clustermeshpolicies {verb}"
        );
        assert!(allows("meshpolicies", verb), "meshpolicies {verb}");
    }
    for status in ["clustermeshpolicies/status", "meshpolicies/status"] {
        assert!(allows(status, "patch"), "{status}");
    }
    // Policies are the users' to write; the operator only reads them.
    assert!(!allows("meshpolicies", "update"));
}

#[test]
fn managed_policy_means_database_mode_and_file_mode_stays_possible() {
    let control_config = |docs: &[Value]| -> Value {
        let cm = find(docs, "ConfigMap", "rel-control");
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap()
    };
    let operator_args = |docs: &[Value]| {
        serde_yaml::to_string(
            &find(docs, "Deployment", "rel-operator")["spec"]["template"]["spec"]["containers"][0]
                ["args"],
        )
        .unwrap()
    };
    let docs = render(&[]);
    assert_eq!(control_config(&docs)["policy"]["mode"], "database");
    let args = operator_args(&docs);
    assert!(args.contains("--manage-policy"), "{args}");
    assert!(
        args.contains("--namespace-tag-prefix=tag:k8s-ns-"),
        "{args}"
    );
    for crd in [
        "clustermeshpolicies.meshscale.dev",
        "meshpolicies.meshscale.dev",
    ] {
        find(&docs, "CustomResourceDefinition", crd);
    }

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "policy:\n  managed: false\n  file: |\n    // web only\n    {\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:80\"]}]}\n",
    )
    .unwrap();
    let docs = render(&["-f", values.to_str().unwrap()]);
    let config = control_config(&docs);
    assert_eq!(config["policy"]["mode"], "file");
    assert_eq!(
        config["policy"]["path"],
        "/etc/meshscale/config/policy.hujson"
    );
    let cm = find(&docs, "ConfigMap", "rel-control");
    assert!(
        cm["data"]["policy.hujson"]
            .as_str()
            .unwrap()
            .contains("*:80")
    );
    assert!(!operator_args(&docs).contains("--manage-policy"));

    // Not managed and no file: no policy (allow-all), as before.
    let docs = render(&["--set", "policy.managed=false"]);
    assert_eq!(control_config(&docs)["policy"]["path"], "");
}

/// Bug: the Ingress pointed at the port named `http`, which serves only TLS.
#[test]
fn ingress_reaches_the_tls_port_over_https() {
    let docs = render(&["--set", "control.ingress.enabled=true"]);
    let ing = find(&docs, "Ingress", "rel-control");
    let backend = &ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["port"]["name"], "https");
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"],
        "HTTPS"
    );
    let svc = find(&docs, "Service", "rel-control");
    let port = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .expect("an https port");
    assert_eq!(port["appProtocol"], "https");
    let control = find(&docs, "Deployment", "rel-control");
    let ports =
        serde_yaml::to_string(&control["spec"]["template"]["spec"]["containers"][0]["ports"])
            .unwrap();
    assert!(!ports.contains("name: http\n"), "{ports}");
}

#[test]
fn failure_policy_and_postgres_are_configurable() {
    let docs = render(&[
        "--set",
        "webhook.failurePolicy=Fail",
        "--set",
        "control.postgres.host=db",
        "--set",
        "control.postgres.passwordSecret=pg",
    ]);
    let mwc = find(&docs, "MutatingWebhookConfiguration", "rel-inject");
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Fail");
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    let cm = find(&docs, "ConfigMap", "rel-control");
    assert!(
        cm["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("type: postgres")
    );
}

#[test]
fn sidecar_ca_bundle_and_injection_user_are_configurable() {
    let docs = render(&[
        "--set",
        "sidecar.caBundle.configMapName=mesh-ca",
        "--set",
        "injection.user=apps",
        "--set",
        "injection.tags={tag:a,tag:b}",
    ]);
    let operator = find(&docs, "Deployment", "rel-operator");
    let args =
        serde_yaml::to_string(&operator["spec"]["template"]["spec"]["containers"][0]["args"])
            .unwrap();
    for wanted in [
        "--sidecar-ca-configmap=mesh-ca",
        "--sidecar-ca-key=ca.crt",
        "--inject-user=apps",
        "--inject-tags=tag:a,tag:b",
    ] {
        assert!(args.contains(wanted), "{wanted} missing from {args}");
    }
}

#[test]
fn sidecar_resources_are_passed_to_the_operator() {
    let docs = render(&[
        "--set",
        "sidecar.resources.requests.cpu=50m",
        "--set",
        "sidecar.resources.limits.memory=128Mi",
    ]);
    let operator = find(&docs, "Deployment", "rel-operator");
    let args =
        serde_yaml::to_string(&operator["spec"]["template"]["spec"]["containers"][0]["args"])
            .unwrap();
    for wanted in [
        "--sidecar-cpu-request=50m",
        "--sidecar-memory-request=32Mi",
        "--sidecar-memory-limit=128Mi",
    ] {
        assert!(args.contains(wanted), "{wanted} missing from {args}");
    }
    assert!(!args.contains("--sidecar-cpu-limit"), "{args}");
}

/// kubernetes-validate (PyPI, installed by e2e/setup.sh into a venv): it ships
/// the OpenAPI-derived JSON schemas of every Kubernetes minor in its wheel, so
/// validation needs no network and no cluster.
fn kubernetes_validate() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBERNETES_VALIDATE") {
        return p.into();
    }
    let cached = Path::new("/var/cache/meshscale-tools/bin/kubernetes-validate");
    if cached.exists() {
        return cached.into();
    }
    "kubernetes-validate".into()
}

/// Kinds served by our CRDs have no schema in kubernetes-validate; the chart
/// renders none today, and a CR instance would need checking against crds/.
const CRD_BACKED_KINDS: [&str; 3] = ["MeshUser", "PreAuthKey", "MeshNode"];

#[test]
fn rendered_chart_validates_against_the_kubernetes_schemas_offline() {
    let chart = chart();
    let dir = tempfile::tempdir().unwrap();
    let variants: [&[&str]; 3] = [
        &[],
        &[
            "--set",
            "control.postgres.host=db",
            "--set",
            "control.postgres.passwordSecret=pg",
            "--set",
            "control.ingress.enabled=true",
            "--set",
            "webhook.failurePolicy=Fail",
        ],
        &[
            "--set",
            "sidecar.caBundle.secretName=mesh-ca",
            "--set",
            "sidecar.resources.limits.cpu=1",
            "--set",
            "webhook.excludeNamespaces={legacy}",
        ],
    ];
    for (i, extra) in variants.iter().enumerate() {
        let mut args = vec![
            "template",
            "rel",
            chart.to_str().unwrap(),
            "-n",
            "mesh",
            "--include-crds",
        ];
        args.extend_from_slice(extra);
        let file = dir.path().join(format!("variant-{i}.yaml"));
        std::fs::write(&file, run(&args)).unwrap();
        // The oldest Kubernetes with native sidecars on by default, and the newest.
        let out = Command::new(kubernetes_validate())
            .args(["--strict", "-k", "1.29.0", "-k", "1.37.0"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run kubernetes-validate ({}): {e}; run e2e/setup.sh or set KUBERNETES_VALIDATE",
                    kubernetes_validate().display()
                )
            });
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Every resource must have been checked: a missing schema is a WARN
        // line, which only our own CRD-backed kinds may produce.
        let unchecked: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("WARN"))
            .filter(|l| !CRD_BACKED_KINDS.iter().any(|k| l.contains(k)))
            .collect();
        assert!(
            out.status.success() && unchecked.is_empty() && !stdout.contains("ERROR"),
            "variant {extra:?} does not validate:\n{stdout}{stderr}"
        );
        let passed = stdout.lines().filter(|l| l.starts_with("INFO")).count();
        assert!(passed >= 2 * 15, "too few resources validated:\n{stdout}");
    }
}

/// deploy/manifests/meshscale.yaml: the chart with default values for release
/// `meshscale` in namespace `meshscale`, for users without Helm. The chart
/// renders no key material (the operator generates it), so this is exactly
/// `helm template`.
fn plain_manifests() -> String {
    let chart = chart();
    let yaml = run(&[
        "template",
        "meshscale",
        chart.to_str().unwrap(),
        "-n",
        "meshscale",
        "--include-crds",
    ]);
    let mut out = String::from(PLAIN_HEADER);
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&v).unwrap());
    }
    out
}

const PLAIN_HEADER: &str = "\
# Meshscale for clusters without Helm: charts/meshscale with default values,
# release `meshscale`, namespace `meshscale`. GENERATED by operator/tests/helm.rs
# (MESHSCALE_UPDATE_MANIFESTS=1 cargo test -p meshscale-operator --test helm);
# a test fails when it drifts from the chart. Edit the chart, not this file.
#
#   kubectl create namespace meshscale
#   kubectl apply -f deploy/manifests/meshscale.yaml
# At its first start the operator generates the control server's TLS Secret,
# the admin API key Secret and the webhook certificate (it keeps the webhook's
# caBundle in step), and creates the MeshUser `k8s` injected pods join as.
# Edit serverUrl: search for meshscale.example.com.
";

#[test]
fn plain_manifests_match_the_chart() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/manifests/meshscale.yaml");
    let want = plain_manifests();
    if std::env::var_os("MESHSCALE_UPDATE_MANIFESTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} drifted from charts/meshscale; regenerate with \
         MESHSCALE_UPDATE_MANIFESTS=1 cargo test -p meshscale-operator --test helm",
        path.display()
    );
    // Deterministic, so the check above is meaningful, and free of key material.
    assert_eq!(plain_manifests(), want);
    assert!(!want.contains("PRIVATE KEY") && !want.contains("tls.key: "));
}
