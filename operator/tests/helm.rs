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
        assert!(
            hook["clientConfig"]["caBundle"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
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
    find(&docs, "Secret", "rel-webhook-tls");
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
/// `meshscale` in namespace `meshscale`, for users without Helm. Two things
/// differ from `helm template`, both because a checked-in file is the same
/// for every user: the TLS Secrets (their private keys would be public) are
/// left out, and the webhook's caBundle is empty (the operator fills it once
/// the webhook Secret exists). The header says how to create both Secrets.
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
        let mut v = Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        if v["kind"] == "Secret" && v["type"] == "kubernetes.io/tls" {
            continue;
        }
        if v["kind"] == "MutatingWebhookConfiguration" {
            for hook in v["webhooks"].as_sequence_mut().unwrap() {
                hook["clientConfig"]["caBundle"] = Value::String(String::new());
            }
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
# Not included, because their private keys must not be shared: the two TLS
# Secrets. Create them first (meshscale-operator is the operator image's binary):
#   kubectl create namespace meshscale
#   meshscale-operator webhook-cert --out control-tls \\
#     --dns meshscale-control.meshscale.svc --dns meshscale-control
#   kubectl -n meshscale create secret generic meshscale-control-tls --type=kubernetes.io/tls \\
#     --from-file=control-tls/tls.crt --from-file=control-tls/tls.key --from-file=control-tls/ca.crt
#   meshscale-operator webhook-cert --out webhook-tls --dns meshscale-webhook.meshscale.svc
#   kubectl -n meshscale create secret generic meshscale-webhook-tls --type=kubernetes.io/tls \\
#     --from-file=webhook-tls/tls.crt --from-file=webhook-tls/tls.key --from-file=webhook-tls/ca.crt
#   kubectl apply -f deploy/manifests/meshscale.yaml
# The operator patches the webhook's caBundle from its Secret at start and
# renews the certificate before it expires. Then follow the chart's NOTES.txt
# (API key Secret, MeshUser). Edit serverUrl: search for meshscale.example.com.
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
