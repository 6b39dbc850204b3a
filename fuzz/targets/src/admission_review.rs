//! The operator's mutating webhook: any body must yield a well-formed
//! AdmissionReview answer, never a panic.
use meshscale_operator::injectkey::KeyDefaults;
use meshscale_operator::webhook::patch::InjectConfig;
use meshscale_operator::webhook::review::answer;
use std::sync::LazyLock;

static CFG: LazyLock<InjectConfig> = LazyLock::new(|| InjectConfig {
    image: "meshscale-sidecar:fuzz".into(),
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
});

pub fn run(data: &[u8]) {
    let opted_in = data.first().is_some_and(|b| b & 1 == 1);
    let out = answer(data, opted_in, &CFG);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("answer is JSON");
    assert!(v.is_object());
}
