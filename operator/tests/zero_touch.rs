//! Zero-touch install, end to end with the real binaries: the REAL operator
//! (`meshscale-operator run` with the chart's flags) against the fake API
//! server over TLS, and a REAL `meshscale serve` configured as the chart
//! configures it. Nobody creates an API key or a MeshUser:
//!
//! 1. the operator generates the control TLS Secret and the admin API key
//!    Secret (the test then hands their files to the server, as the kubelet
//!    mounts them into the control pod);
//! 2. the server accepts the key as its bootstrap key over the admin API;
//! 3. the operator creates the MeshUser `k8s` and reconciles it into a user
//!    on the server.

#[allow(dead_code)]
#[path = "../src/fake_apiserver.rs"]
mod fake_apiserver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use fake_apiserver::FakeApiServer;
use meshscale_operator::admin::{Admin, GrpcAdmin};
use serde_json::json;

const OPERATOR: &str = env!("CARGO_BIN_EXE_meshscale-operator");

/// `target/debug/meshscale`, built on demand (another package's binary).
fn meshscale_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MESHSCALE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    {
        return bin;
    }
    let debug = Path::new(OPERATOR)
        .parent()
        .expect("target/debug")
        .to_path_buf();
    let bin = debug.join("meshscale");
    if !bin.exists() {
        let target = debug.parent().expect("target dir");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "meshscale-control", "--bins"])
            .env("CARGO_TARGET_DIR", target)
            .status()
            .expect("cargo build");
        assert!(status.success(), "building meshscale failed");
    }
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Proc(Child, PathBuf);

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).expect("log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn");
    Proc(child, log)
}

fn secret_file(fake: &FakeApiServer, name: &str, key: &str) -> Option<Vec<u8>> {
    let s = fake.get("v1", "secrets", "mesh", name)?;
    let b = s["data"][key].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

async fn wait_for<T>(what: &str, logs: &[&Proc], mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        let all: String = logs.iter().map(|p| p.log()).collect();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{all}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_alone_gives_a_reconciling_operator_and_an_injection_user() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let fake = FakeApiServer::default();
    let tls = fake.serve_tls().await.expect("serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    tls.write_kubeconfig(&d.join("kubeconfig"), "mesh")
        .expect("kubeconfig");
    let grpc = format!("127.0.0.1:{}", free_port());

    // The operator as the chart runs it (no key file, no CA file, no MeshUser).
    let operator = spawn(
        Command::new(OPERATOR)
            .arg("run")
            .args([
                &format!("--control-server=https://{grpc}"),
                "--tls-server-name=localhost",
                "--control-tls-secret=rel-control-tls",
                "--control-dns=localhost",
                "--api-key-secret=rel-admin-apikey",
                "--create-inject-user",
                "--inject-user=k8s",
                "--manage-policy",
                "--sidecar-image=registry.example/meshscale-sidecar:1",
                "--login-server=https://mesh.example",
                "--webhook-addr=127.0.0.1:0",
                "--metrics-addr=127.0.0.1:0",
                "--node-sync-seconds=1",
                "--webhook-secret=rel-webhook-tls",
                "--webhook-config=rel-inject",
                "--webhook-dns=rel-webhook.mesh.svc",
            ])
            .env("KUBECONFIG", d.join("kubeconfig"))
            .env("POD_NAMESPACE", "mesh")
            .env("POD_NAME", "rel-operator-0"),
        d.join("operator.log"),
    );

    // What the kubelet mounts into the control pod once the Secrets exist.
    let (crt, key, apikey) = wait_for("the generated Secrets", &[&operator], || {
        Some((
            secret_file(&fake, "rel-control-tls", "tls.crt")?,
            secret_file(&fake, "rel-control-tls", "tls.key")?,
            secret_file(&fake, "rel-admin-apikey", "apikey")?,
        ))
    })
    .await;
    std::fs::write(d.join("tls.crt"), &crt).expect("write");
    std::fs::write(d.join("tls.key"), &key).expect("write");
    std::fs::write(d.join("apikey"), &apikey).expect("write");
    let http = format!("127.0.0.1:{}", free_port());
    let config = d.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server_url: https://{http}\nlisten_addr: {http}\nmetrics_listen_addr: 127.0.0.1:{metrics}\n\
             grpc_listen_addr: {grpc}\ntls_cert_path: {d}/tls.crt\ntls_key_path: {d}/tls.key\n\
             admin:\n  bootstrap_api_key_path: {d}/apikey\n\
             data_dir: {d}/data\nunix_socket: {d}/run/meshscale.sock\n\
             derp:\n  server:\n    enabled: false\ndatabase:\n  type: sqlite\n\
             policy:\n  mode: database\n",
            metrics = free_port(),
            d = d.display(),
        ),
    )
    .expect("config");
    let mut server = spawn(
        Command::new(meshscale_bin())
            .args(["serve", "-c"])
            .arg(&config),
        d.join("server.log"),
    );

    // The server takes the generated key over the admin API (as the operator does)...
    let ca = secret_file(&fake, "rel-control-tls", "ca.crt").expect("ca.crt");
    let key_text = String::from_utf8(apikey.clone()).expect("utf-8");
    let admin = GrpcAdmin::connect_pem(
        &format!("https://{grpc}"),
        Some(&ca),
        Some("localhost"),
        &key_text,
        Duration::from_secs(5),
    )
    .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.find_user("nobody").await.is_err() {
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("meshscale serve exited ({st}):\n{}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "the server never accepted the bootstrap key:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and refuses any other.
    let wrong = GrpcAdmin::connect_pem(
        &format!("https://{grpc}"),
        Some(&ca),
        Some("localhost"),
        "msboot-000000000000000000000000000000000000000000000000",
        Duration::from_secs(5),
    )
    .expect("connect");
    assert!(wrong.find_user("nobody").await.is_err());

    // The operator made the injection MeshUser and reconciled it onto the server.
    let id = wait_for("MeshUser k8s Ready", &[&operator, &server], || {
        let mu = fake.get("meshscale.dev/v1alpha1", "meshusers", "", "k8s")?;
        let ready = mu["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then(|| mu["status"]["id"].as_u64()).flatten()
    })
    .await;
    let user = admin
        .find_user("k8s")
        .await
        .expect("find")
        .expect("user k8s");
    assert_eq!(user.id, id);
    // Policy as Kubernetes objects, merged by the operator into the server's
    // policy (database mode, as the chart runs both).
    let group = "meshscale.dev/v1alpha1";
    for ns in ["web", "db"] {
        fake.put(
            "v1",
            "namespaces",
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    fake.put(
        group,
        "clustermeshpolicies",
        "",
        json!({
            "apiVersion": group, "kind": "ClusterMeshPolicy", "metadata": {"name": "base"},
            "spec": {"groups": {"group:ops": ["ops@"]},
                     "acls": [{"action": "accept", "src": ["group:ops"], "dst": ["*:*"]}]}
        }),
    );
    fake.put(group, "meshpolicies", "db", json!({
        "apiVersion": group, "kind": "MeshPolicy", "metadata": {"name": "db", "namespace": "db"},
        "spec": {"hujson": "{\"acls\": [{\"action\": \"accept\", \"src\": [\"tag:k8s-ns-web\"], \"dst\": [\"tag:k8s-ns-db:5432\"]},],}"}
    }));
    fake.put(group, "meshpolicies", "web", json!({
        "apiVersion": group, "kind": "MeshPolicy", "metadata": {"name": "grab", "namespace": "web"},
        "spec": {"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-db:22"]}]}
    }));
    let condition = |resource: &str, ns: &str, name: &str| {
        let obj = fake.get(group, resource, ns, name)?;
        let c = obj["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Accepted")?
            .clone();
        Some((
            c["status"].as_str()?.to_string(),
            c["reason"].as_str()?.to_string(),
            c["message"].as_str()?.to_string(),
        ))
    };
    let (st, reason, msg) = wait_for("MeshPolicy web/grab refused", &[&operator, &server], || {
        condition("meshpolicies", "web", "grab")
    })
    .await;
    assert_eq!((st.as_str(), reason.as_str()), ("False", "Refused"));
    assert!(
        msg.contains("tag:k8s-ns-db:22") && msg.contains("tag:k8s-ns-web"),
        "{msg}"
    );
    let accepted = wait_for("MeshPolicy db/db accepted", &[&operator, &server], || {
        condition("meshpolicies", "db", "db").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(accepted.1, "Accepted");
    let text = admin.get_policy().await.expect("GetPolicy");
    assert!(
        text.contains("tag:k8s-ns-db:5432") && text.contains("group:ops"),
        "{text}"
    );
    assert!(!text.contains("tag:k8s-ns-db:22"), "{text}");
    let merged: serde_json::Value =
        serde_json::from_str(&meshscale_policy::hujson_to_json(&text).expect("hujson"))
            .expect("json");
    // The operator owns the injection and namespace tags.
    for tag in ["tag:k8s", "tag:k8s-ns-web", "tag:k8s-ns-db"] {
        assert_eq!(merged["tagOwners"][tag], json!(["k8s@"]), "{tag}: {text}");
    }

    // The key never shows up in a log.
    assert!(
        !operator.log().contains(&key_text),
        "key logged by the operator"
    );
    assert!(
        !server.log().contains(&key_text),
        "key logged by the server"
    );
}
