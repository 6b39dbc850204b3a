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
