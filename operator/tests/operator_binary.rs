//! The REAL `meshscale-operator run` binary against the fake API server over
//! TLS, reached through a kubeconfig as in a cluster: its startup (rustls
//! provider, kube client, lease), and its shutdown on SIGTERM.

#[allow(dead_code)]
#[path = "../src/fake_apiserver.rs"]
mod fake_apiserver;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, TlsServer};
use meshscale_operator::webhook::tls::generate;

const BIN: &str = env!("CARGO_BIN_EXE_meshscale-operator");

/// The running binary; killed when the test ends, pass or fail.
struct Operator {
    child: Child,
    log: std::path::PathBuf,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited, and how.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<F: FnMut() -> bool>(what: &str, op: &mut Operator, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        if let Some(st) = op.exited() {
            panic!(
                "operator exited ({st}) while waiting for {what}:\n{}",
                op.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start(dir: &Path, tls: &TlsServer, extra: &[&str]) -> Operator {
    let kubeconfig = dir.join("kubeconfig");
    tls.write_kubeconfig(&kubeconfig, "mesh")
        .expect("kubeconfig");
    let g = generate(&["op-webhook.mesh.svc".to_string()], 30).expect("cert");
    std::fs::write(dir.join("tls.crt"), &g.cert_pem).expect("write");
    std::fs::write(dir.join("tls.key"), &g.key_pem).expect("write");
    if !dir.join("apikey").exists() {
        std::fs::write(dir.join("apikey"), "msapi-unused").expect("write");
    }
    let log = dir.join("operator.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(BIN)
        .arg("run")
        .args([
            // Nothing listens here: the admin channel connects lazily and the
            // reconcilers back off; startup must not depend on it.
            "--control-server=https://127.0.0.1:9",
            "--sidecar-image=registry.example/meshscale-sidecar:1",
            "--login-server=https://mesh.example",
            "--metrics-addr=127.0.0.1:0",
            "--node-sync-seconds=1",
        ])
        .arg("--api-key-file")
        .arg(dir.join("apikey"))
        .arg("--webhook-cert")
        .arg(dir.join("tls.crt"))
        .arg("--webhook-key")
        .arg(dir.join("tls.key"))
        .args(extra)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "mesh")
        .env("POD_NAME", "op-0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn meshscale-operator");
    Operator { child, log }
}

fn holder(fake: &FakeApiServer) -> Option<String> {
    fake.get(
        "coordination.k8s.io/v1",
        "leases",
        "mesh",
        "meshscale-operator",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_over_tls_leads_and_releases_its_lease_on_sigterm() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let fake = FakeApiServer::default();
    let tls = fake.serve_tls().await.expect("serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut op = start(dir.path(), &tls, &["--webhook-addr=127.0.0.1:0"]);
    // It reached the API server over TLS with the kubeconfig's CA and token
    // (no CryptoProvider panic) and took the lease.
    eventually("the lease", &mut op, || {
        holder(&fake).as_deref() == Some("op-0")
    })
    .await;
    // ...and runs the controllers: their watches are open.
    eventually("the controllers' watches", &mut op, || {
        fake.requests().iter().any(|r| {
            r.starts_with("GET /apis/meshscale.dev/v1alpha1/meshusers?") && r.contains("watch=true")
        })
    })
    .await;
    let pid = op.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(st) = op.exited() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "no exit on SIGTERM:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}:\n{}", op.log());
    // Released: a follower takes over at once instead of after 15 s.
    assert_eq!(holder(&fake), None, "{}", op.log());
    let lease = fake
        .get(
            "coordination.k8s.io/v1",
            "leases",
            "mesh",
            "meshscale-operator",
        )
        .expect("lease");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The MutatingWebhookConfiguration as the chart renders it before the
/// operator has set a caBundle.
fn put_webhook_config(fake: &FakeApiServer) {
    let hook = |name: &str| {
        serde_json::json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "op-webhook", "namespace": "mesh", "path": "/inject", "port": 443}},
        })
    };
    fake.put(
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        "",
        serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "op-inject"},
            "webhooks": [hook("pods.inject.meshscale.dev"), hook("namespaces.inject.meshscale.dev")],
        }),
    );
}

fn ca_bundle(fake: &FakeApiServer) -> Option<Vec<u8>> {
    use base64::Engine;
    let mwc = fake.get(
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        "",
        "op-inject",
    )?;
    let b = mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

/// Whether the webhook at `port` presents a certificate that `bundle` (the
/// caBundle the API server uses) verifies for `localhost`, and answers.
async fn webhook_trusted(port: u16, bundle: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, RootCertStore};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle).flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return false;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
    else {
        return false;
    };
    if tls
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    out.starts_with(b"HTTP/1.1 200")
}

/// The webhook certificate is the operator's alone: it issues it, every
/// replica serves it from the Secret, and the caBundle trusts it. After an
/// "upgrade" that replaced the Secret's files with another CA's and reset the
/// caBundle (what the old chart did), a restarted operator reissues and the
/// caBundle again verifies what is served: injection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_owns_the_webhook_certificate_across_an_upgrade_and_a_restart() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let fake = FakeApiServer::default();
    put_webhook_config(&fake);
    let tls = fake.serve_tls().await.expect("serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr = format!("--webhook-addr=127.0.0.1:{port}");
    let args = [
        addr.as_str(),
        "--webhook-secret=op-webhook-tls",
        "--webhook-config=op-inject",
        "--webhook-dns=localhost",
    ];
    let mut op = start(dir.path(), &tls, &args);
    eventually("the webhook Secret", &mut op, || {
        fake.get("v1", "secrets", "mesh", "op-webhook-tls")
            .is_some()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(b) = ca_bundle(&fake)
            && webhook_trusted(port, &b).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caBundle never trusted the served certificate:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(op);

    // The "upgrade": other files in the Secret, our annotation left behind,
    // and the caBundle re-rendered from the new CA that is not served yet.
    let other = generate(&["localhost".to_string()], 3650).expect("cert");
    let client = tls.client().await.expect("client");
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, "mesh");
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    secrets
        .patch(
            "op-webhook-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"data": {
                "tls.crt": b64(&other.cert_pem), "tls.key": b64(&other.key_pem), "ca.crt": b64(&other.ca_pem),
            }})),
        )
        .await
        .expect("patch");
    let mut op = start(dir.path(), &tls, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served_from_secret = fake
            .get("v1", "secrets", "mesh", "op-webhook-tls")
            .and_then(|s| s["data"]["tls.crt"].as_str().map(str::to_string))
            != Some(b64(&other.cert_pem));
        if served_from_secret
            && let Some(b) = ca_bundle(&fake)
            && webhook_trusted(port, &b).await
        {
            break;
        }
        if let Some(st) = op.exited() {
            panic!("operator exited ({st}):\n{}", op.log());
        }
        assert!(
            Instant::now() < deadline,
            "not reissued after the upgrade:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
