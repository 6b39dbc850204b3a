//! The injection webhook as users get it: the real `meshscale-operator webhook`
//! binary serving HTTPS under a certificate from an rcgen CA. Tests post
//! AdmissionReview JSON the way the API server does, apply the returned JSON
//! patch to the pod and check the resulting spec.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use meshscale_operator::webhook::tls::{Generated, generate};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

const DNS: &str = "meshscale-webhook.mesh.svc";
const BIN: &str = env!("CARGO_BIN_EXE_meshscale-operator");

/// The running binary; killed when the test ends, pass or fail.
struct Server {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_certs(dir: &Path) -> Generated {
    let g = generate(&[DNS.to_string()], 30).unwrap();
    std::fs::write(dir.join("tls.crt"), &g.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &g.key_pem).unwrap();
    g
}

fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let g = write_certs(dir.path());
    let mut child = Command::new(BIN)
        .arg("webhook")
        .arg("--cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--key")
        .arg(dir.path().join("tls.key"))
        .args([
            "--listen=127.0.0.1:0",
            "--namespace=mesh",
            "--sidecar-image=registry.example/meshscale-sidecar:1",
            "--login-server=https://mesh.example",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the webhook exited before listening")
            .unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    // Keep draining the JSON logs so the binary never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        addr,
        ca_pem: g.ca_pem,
        _dir: dir,
    }
}

/// One HTTPS request, verified against `ca_pem`; (status line, body).
async fn post(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    body: &[u8],
) -> Result<(String, Vec<u8>), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(DNS).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {DNS}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = Vec::new();
    // The server closes without close_notify at times; what was read is enough.
    let _ = tls.read_to_end(&mut out).await;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {}", String::from_utf8_lossy(&out)))?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, out[split + 4..].to_vec()))
}

fn review(pod: &Value, ns: &str, op: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6e0f5f5a-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": op,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false
        }
    }))
    .unwrap()
}

/// Posts `pod` and returns (the response object, the pod with the patch applied).
async fn admit(s: &Server, path: &str, pod: &Value, ns: &str) -> (Value, Value) {
    let (status, body) = post(s.addr, &s.ca_pem, path, &review(pod, ns, "CREATE"))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let resp = out["response"].clone();
    assert_eq!(resp["uid"], "6e0f5f5a-0000-4000-8000-000000000001");
    let mut doc = pod.clone();
    if let Some(p) = resp["patch"].as_str() {
        assert_eq!(resp["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    }
    (resp, doc)
}

fn deployment_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}, "annotations": annotations},
        "spec": {
            "containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}],
            "initContainers": [{"name": "migrate", "image": "migrate"}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })
}

fn sidecar(doc: &Value) -> &Value {
    &doc["spec"]["initContainers"][0]
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn annotated_pod_is_patched_into_a_valid_pod_with_a_native_sidecar() {
    let s = start(&["--sidecar-memory-limit=256Mi"]);
    let pod = deployment_pod(json!({"meshscale.dev/inject": "true", "meshscale.dev/cpu": "200m"}));
    let (resp, doc) = admit(&s, "/inject", &pod, "apps").await;
    assert_eq!(resp["allowed"], true);

    // The patched object is still a Pod the API server would accept.
    let typed: Pod = serde_json::from_value(doc.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let inits = spec.init_containers.unwrap();
    assert_eq!(
        inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["meshscale-sidecar", "migrate"],
        "the sidecar goes first so other init containers have the mesh"
    );
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].name, "app");

    let sc = sidecar(&doc);
    assert_eq!(sc["image"], "registry.example/meshscale-sidecar:1");
    assert_eq!(sc["restartPolicy"], "Always");
    assert_eq!(sc["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        sc["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN"])
    );
    let a = args(sc);
    assert!(
        a.windows(2)
            .any(|w| w == ["--login-server", "https://mesh.example"])
    );
    assert!(
        a.windows(2)
            .any(|w| w == ["--hostname", "$(POD_NAME)-$(POD_NAMESPACE)"])
    );
    assert!(!a.iter().any(|x| x == "--ca-file"));
    let env = sc["env"].as_array().unwrap();
    let authkey = env
        .iter()
        .find(|e| e["name"] == "MESHSCALE_AUTHKEY")
        .unwrap();
    assert_eq!(
        authkey["valueFrom"]["secretKeyRef"],
        json!({"name": "meshscale-authkey", "key": "authkey"})
    );
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name")
    );
    // CPU from the annotation, memory request from the default, limit from the flag.
    assert_eq!(
        sc["resources"],
        json!({"requests": {"cpu": "200m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
    );

    let vols = doc["spec"]["volumes"].as_array().unwrap();
    assert_eq!(vols[0]["name"], "data", "existing volumes are kept");
    assert!(
        vols.iter()
            .any(|v| v["emptyDir"].is_object() && v["name"] == "meshscale-state")
    );
    assert!(vols.iter().any(|v| v["hostPath"]["path"] == "/dev/net/tun"));
    assert_eq!(
        doc["metadata"]["annotations"]["meshscale.dev/injected"],
        "true"
    );
    assert_eq!(doc["metadata"]["labels"]["app"], "web");

    // Re-admitting the injected pod (e.g. a second webhook pass) changes nothing.
    let (resp, again) = admit(&s, "/inject", &doc, "apps").await;
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_null());
    assert_eq!(again, doc);
}

#[tokio::test]
async fn pods_that_must_not_be_injected_are_admitted_unchanged() {
    let s = start(&["--exclude-namespace=legacy"]);
    let annotated = deployment_pod(json!({"meshscale.dev/inject": "true"}));
    let plain = deployment_pod(json!({}));
    let opted_out = deployment_pod(json!({"meshscale.dev/inject": "false"}));
    let mut host_network = annotated.clone();
    host_network["spec"]["hostNetwork"] = json!(true);
    let cases: [(&str, &Value, &str); 7] = [
        ("/inject", &plain, "apps"),
        ("/inject", &annotated, "kube-system"),
        ("/inject", &annotated, "mesh"),
        ("/inject", &annotated, "legacy"),
        ("/inject", &host_network, "apps"),
        ("/inject-namespace", &opted_out, "apps"),
        ("/inject-namespace", &plain, "kube-system"),
    ];
    for (path, pod, ns) in cases {
        let (resp, doc) = admit(&s, path, pod, ns).await;
        assert_eq!(resp["allowed"], true, "{path} {ns}");
        assert!(resp["patch"].is_null(), "{path} {ns}: {resp}");
        assert_eq!(&doc, pod);
    }
    // Updates are never mutated, even of annotated pods.
    let (status, body) = post(
        s.addr,
        &s.ca_pem,
        "/inject",
        &review(&annotated, "apps", "UPDATE"),
    )
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"));
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"]["patch"].is_null());
}

#[tokio::test]
async fn labelled_namespace_injects_pods_without_the_annotation() {
    let s = start(&[
        "--sidecar-ca-configmap=mesh-ca",
        "--inject-user=apps",
        "--inject-tags=tag:k8s,tag:web",
    ]);
    let plain = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "solo"},
        "spec": {"containers": [{"name": "app", "image": "a"}]}
    });
    let (resp, doc) = admit(&s, "/inject-namespace", &plain, "apps").await;
    assert_eq!(resp["allowed"], true);
    let _: Pod = serde_json::from_value(doc.clone()).unwrap();
    let sc = sidecar(&doc);
    assert_eq!(sc["name"], "meshscale-sidecar");
    let a = args(sc);
    assert!(
        a.windows(2)
            .any(|w| w == ["--ca-file", "/etc/meshscale/ca/ca.crt"])
    );
    assert!(
        doc["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "mesh-ca")
    );
    assert_eq!(
        doc["metadata"]["annotations"]["meshscale.dev/injected"],
        "true"
    );
}

#[tokio::test]
async fn bad_annotations_are_denied_with_the_reason() {
    let s = start(&[]);
    for (ann, value) in [
        ("meshscale.dev/user", "Not/A/User"),
        ("meshscale.dev/tags", "web"),
        ("meshscale.dev/memory", "lots"),
        ("meshscale.dev/cpu-limit", "-1"),
    ] {
        let pod = deployment_pod(json!({"meshscale.dev/inject": "true", ann: value}));
        let (resp, _) = admit(&s, "/inject", &pod, "apps").await;
        assert_eq!(resp["allowed"], false, "{ann}={value}");
        let msg = resp["status"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(ann), "{ann}: {msg}");
    }
}

#[tokio::test]
async fn malformed_reviews_get_a_well_formed_refusal_and_tls_is_verified() {
    let s = start(&[]);
    let bodies: [&[u8]; 5] = [
        b"",
        b"{garbage",
        b"{}",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
    ];
    for body in bodies {
        let (status, out) = post(s.addr, &s.ca_pem, "/inject", body).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["allowed"], false);
        assert!(out["response"]["patch"].is_null());
    }
    // Unknown paths are 404s, not admissions.
    let (status, _) = post(s.addr, &s.ca_pem, "/mutate", b"{}").await.unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    // A client trusting another CA cannot talk to it.
    let other = generate(&[DNS.to_string()], 30).unwrap();
    assert!(post(s.addr, &other.ca_pem, "/inject", b"{}").await.is_err());
}

#[test]
fn bad_settings_stop_the_binary_at_start() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let out = Command::new(BIN)
        .arg("webhook")
        .arg("--cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--key")
        .arg(dir.path().join("tls.key"))
        .args([
            "--listen=127.0.0.1:0",
            "--sidecar-image=s",
            "--login-server=https://m",
            "--sidecar-memory-request=lots",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sidecar-memory-request"), "{err}");

    // A missing certificate is an error too, not a server without TLS.
    let out = Command::new(BIN)
        .args([
            "webhook",
            "--cert=/nonexistent/tls.crt",
            "--key=/nonexistent/tls.key",
            "--listen=127.0.0.1:0",
            "--sidecar-image=s",
            "--login-server=https://m",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
