//! The remote admin API: TLS plus an API key, refused without either.

mod support;

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::Db;
use support::server::{Server, free_port, start};

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost.
fn write_certs(dir: &Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    let s = |p: &Path| p.display().to_string();
    (s(&paths.0), s(&paths.1), s(&paths.2))
}

async fn remote(
    s: &Server,
    addr: &str,
    ca: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> std::process::Output {
    let mut env = vec![
        ("MESHSCALE_CLI_ADDRESS", addr),
        ("MESHSCALE_CLI_CA_CERT", ca),
    ];
    if let Some(k) = key {
        env.push(("MESHSCALE_CLI_API_KEY", k));
    }
    env.extend_from_slice(extra);
    // Point the local socket somewhere empty so a success can only come from the remote API.
    env.push(("MESHSCALE_UNIX_SOCKET", "/nonexistent/meshscale.sock"));
    s.cli_env(&["users", "list", "-o", "json"], &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_admin_needs_tls_and_a_live_api_key() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(certs_dir.path());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = start(
        &Db::Sqlite,
        &format!("grpc_listen_addr: {addr}\ntls_cert_path: {cert}\ntls_key_path: {key}\n"),
    )
    .await;
    s.ok(&["users", "create", "vpn1"]).await;
    let api_key = s
        .ok(&["apikeys", "create", "-e", "1d"])
        .await
        .trim()
        .to_string();

    let out = remote(&s, &addr, &ca, Some(&api_key), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users[0]["name"], "vpn1");
    // The hostname form verifies against the certificate too.
    let out = remote(&s, &format!("localhost:{port}"), &ca, Some(&api_key), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let refused = |out: std::process::Output, why: &str| {
        assert_eq!(out.status.code(), Some(1), "{why}: must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !stderr.contains(&api_key),
            "{why}: the key must never be echoed"
        );
        stderr
    };
    refused(remote(&s, &addr, &ca, None, &[]).await, "no API key");
    let mut wrong = api_key.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    let stderr = refused(
        remote(&s, &addr, &ca, Some(&wrong), &[]).await,
        "wrong API key",
    );
    assert!(stderr.to_lowercase().contains("api key"), "{stderr}");
    refused(
        remote(
            &s,
            &addr,
            &ca,
            Some(&api_key),
            &[("MESHSCALE_CLI_INSECURE", "1")],
        )
        .await,
        "plain text to a TLS port",
    );

    let prefix = &api_key["mskey-api-".len()..][..12];
    s.ok(&["apikeys", "expire", "--prefix", prefix]).await;
    let stderr = refused(
        remote(&s, &addr, &ca, Some(&api_key), &[]).await,
        "expired API key",
    );
    assert!(stderr.contains("expired"), "{stderr}");
    s.ok(&["apikeys", "delete", "--prefix", prefix]).await;
    refused(
        remote(&s, &addr, &ca, Some(&api_key), &[]).await,
        "deleted API key",
    );
}

/// `grpc_allow_insecure` (plain text, for a TLS-terminating proxy in front):
/// only the API key protects the admin API then, and it still must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_remote_admin_still_needs_a_live_api_key() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = start(
        &Db::Sqlite,
        &format!("grpc_listen_addr: {addr}\ngrpc_allow_insecure: true\n"),
    )
    .await;
    s.ok(&["users", "create", "vpn1"]).await;
    let api_key = s
        .ok(&["apikeys", "create", "-e", "1d"])
        .await
        .trim()
        .to_string();
    let plain = [("MESHSCALE_CLI_INSECURE", "1")];
    let call = |key: Option<&str>| {
        let mut env = vec![("MESHSCALE_CLI_ADDRESS", addr.as_str())];
        if let Some(k) = key {
            env.push(("MESHSCALE_CLI_API_KEY", k));
        }
        env.extend_from_slice(&plain);
        env.push(("MESHSCALE_UNIX_SOCKET", "/nonexistent/meshscale.sock"));
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = &s;
        async move {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            s.cli_env(&["users", "list", "-o", "json"], &env).await
        }
    };

    let out = call(Some(&api_key)).await;
    assert!(
        out.status.success(),
        "a live key over plain text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users[0]["name"], "vpn1");

    let refused = |out: std::process::Output, why: &str| {
        assert_eq!(out.status.code(), Some(1), "{why}: must be refused");
        assert!(out.stdout.is_empty(), "{why}: no data may come back");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !stderr.contains(&api_key),
            "{why}: the key must never be echoed"
        );
        stderr
    };
    let stderr = refused(call(None).await, "no API key");
    assert!(stderr.to_lowercase().contains("api key"), "{stderr}");
    let mut wrong = api_key.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    refused(call(Some(&wrong)).await, "wrong API key");

    let prefix = &api_key["mskey-api-".len()..][..12];
    s.ok(&["apikeys", "expire", "--prefix", prefix]).await;
    let stderr = refused(call(Some(&api_key)).await, "expired API key");
    assert!(stderr.contains("expired"), "{stderr}");
    s.ok(&["apikeys", "delete", "--prefix", prefix]).await;
    refused(call(Some(&api_key)).await, "deleted API key");
}
