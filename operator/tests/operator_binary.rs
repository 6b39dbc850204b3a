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
            panic!("operator exited ({st}) while waiting for {what}:\n{}", op.log());
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
    tls.write_kubeconfig(&kubeconfig, "mesh").expect("kubeconfig");
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
            "--webhook-addr=127.0.0.1:0",
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
    fake.get("coordination.k8s.io/v1", "leases", "mesh", "meshscale-operator")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_over_tls_leads_and_releases_its_lease_on_sigterm() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let fake = FakeApiServer::default();
    let tls = fake.serve_tls().await.expect("serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut op = start(dir.path(), &tls, &[]);
    // It reached the API server over TLS with the kubeconfig's CA and token
    // (no CryptoProvider panic) and took the lease.
    eventually("the lease", &mut op, || {
        holder(&fake).as_deref() == Some("op-0")
    })
    .await;
    // ...and runs the controllers: their watches are open.
    eventually("the controllers' watches", &mut op, || {
        fake.requests()
            .iter()
            .any(|r| r.starts_with("GET /apis/meshscale.dev/v1alpha1/meshusers?") && r.contains("watch=true"))
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
        assert!(Instant::now() < deadline, "no exit on SIGTERM:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}:\n{}", op.log());
    // Released: a follower takes over at once instead of after 15 s.
    assert_eq!(holder(&fake), None, "{}", op.log());
    let lease = fake
        .get("coordination.k8s.io/v1", "leases", "mesh", "meshscale-operator")
        .expect("lease");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
}
