//! The reconcilers' admin calls through the real gRPC client (`GrpcAdmin`,
//! TLS + API key) against a REAL `meshscale serve` on loopback. The Kubernetes
//! side here is the in-memory trait fake; `real_kube.rs` drives the real kube
//! client against the in-process fake API server instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::{Ctx, pak, pods, user};
use crate::admin::{Admin, AdminError, GrpcAdmin};
use crate::crd::{MeshUser, MeshUserSpec, PreAuthKey, PreAuthKeySpec, Tag};
use crate::fake::FakeKube;
use crate::kubeops::FINALIZER;

/// `meshscale` next to this test binary (`target/debug/deps/..` → `target/debug/meshscale`),
/// built on demand.
fn meshscale_bin() -> PathBuf {
    // The test command builds every binary first and names it; prefer that,
    // so a stale binary from an older build is never the one tested.
    if let Some(bin) = std::env::var_os("MESHSCALE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    {
        return bin;
    }
    let exe = std::env::current_exe().expect("current exe");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf();
    let bin = debug.join("meshscale");
    if !bin.exists() {
        let target = debug.parent().expect("target dir");
        let status = std::process::Command::new(env!("CARGO"))
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

pub(super) struct RealServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    config: PathBuf,
    grpc: String,
    ca: PathBuf,
    child: Option<Child>,
}

impl RealServer {
    pub(super) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).expect("write");
        std::fs::write(dir.path().join("tls.crt"), leaf.pem()).expect("write");
        std::fs::write(dir.path().join("tls.key"), leaf_key.serialize_pem()).expect("write");
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yaml");
        let yaml = format!(
            "server_url: https://{http}\nlisten_addr: {http}\nmetrics_listen_addr: 127.0.0.1:{metrics}\n\
             grpc_listen_addr: {grpc}\ntls_cert_path: {d}/tls.crt\ntls_key_path: {d}/tls.key\n\
             data_dir: {d}/data\nunix_socket: {d}/run/meshscale.sock\n\
             derp:\n  server:\n    enabled: false\ndatabase:\n  type: sqlite\n\
             policy:\n  mode: database\n",
            metrics = free_port(),
            d = dir.path().display(),
        );
        std::fs::write(&config, yaml).expect("write config");
        let mut s = Self {
            dir,
            bin: meshscale_bin(),
            config,
            grpc,
            ca,
            child: None,
        };
        s.spawn().await;
        s
    }

    pub(super) async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log");
        let child = Command::new(&self.bin)
            .args(["serve", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshscale serve");
        self.child = Some(child);
        // Ready once the local admin socket answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .cli(&["users", "list", "-o", "json"])
                .await
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub(super) async fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("MESHSCALE_CLI_ADDRESS")
            .output()
            .await
            .expect("run meshscale")
    }

    pub(super) async fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(
            out.status.success(),
            "meshscale {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub(super) async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).expect("json output")
    }

    /// A registered node of `user` named `hostname`, as a sidecar would leave.
    pub(super) async fn add_node(&self, user: &str, hostname: &str) {
        let id = self
            .ok(&["debug", "create-node", "--name", hostname, "--user", user])
            .await;
        self.ok(&["nodes", "register", "--key", id.trim(), "--user", user])
            .await;
    }

    pub(super) async fn admin_with(&self, api_key: &str) -> GrpcAdmin {
        GrpcAdmin::connect(
            &format!("https://{}", self.grpc),
            Some(&self.ca),
            None,
            api_key,
            Duration::from_secs(5),
        )
        .expect("connect")
    }

    pub(super) async fn admin(&self) -> GrpcAdmin {
        let key = self.ok(&["apikeys", "create", "--expiration", "1d"]).await;
        self.admin_with(key.trim()).await
    }
}

type RealCtx = Ctx<GrpcAdmin, FakeKube>;

fn meshuser(name: &str) -> MeshUser {
    let mut mu = MeshUser::new(
        name,
        MeshUserSpec {
            name: None,
            display_name: Some("Team A".into()),
            email: Some("a@example.com".into()),
        },
    );
    mu.metadata.generation = Some(1);
    mu
}

fn refreshed_user(mu: &MeshUser, c: &RealCtx) -> MeshUser {
    let s = c.kube.state.lock().expect("lock");
    let name = mu.metadata.name.clone().unwrap_or_default();
    let mut mu = mu.clone();
    mu.metadata.finalizers = s.user_finalizers.get(&name).cloned();
    mu.status = s.user_status.get(&name).cloned();
    mu
}

pub(super) fn users_named(list: &Value, name: &str) -> usize {
    list.as_array()
        .map(|a| a.iter().filter(|u| u["name"] == name).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_meshuser_created_once_adopted_and_destroyed_with_its_nodes() {
    let s = RealServer::start().await;
    let c = Ctx::new(s.admin().await, FakeKube::default());
    let mu = meshuser("team-a");

    // Two reconciles at once and one after: one user.
    let (a, b) = tokio::join!(user::reconcile(&mu, &c), user::reconcile(&mu, &c));
    a.expect("first reconcile");
    b.expect("second reconcile");
    let mu = refreshed_user(&mu, &c);
    user::reconcile(&mu, &c).await.expect("third reconcile");
    let list = s.json(&["users", "list"]).await;
    assert_eq!(users_named(&list, "team-a"), 1, "{list}");
    let mu = refreshed_user(&mu, &c);
    let status = mu.status.clone().expect("status");
    let server_id = list
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "team-a"))
        .and_then(|u| u["id"].as_u64().or_else(|| u["id"].as_str()?.parse().ok()));
    assert_eq!(status.id, server_id);
    assert!(
        status
            .conditions
            .iter()
            .any(|k| k.type_ == "Ready" && k.status == "True" && k.reason == "Exists")
    );

    // The server's duplicate-name answer maps to AlreadyExists, which `ensure` adopts.
    let dup = c.admin.create_user("team-a", "", "").await;
    assert!(
        matches!(dup, Err(AdminError::AlreadyExists(_))),
        "duplicate user: {dup:?}"
    );
    assert_eq!(c.admin.find_user("nobody").await, Ok(None));

    // A user with nodes: deleting the MeshUser expels them, then the user goes.
    s.add_node("team-a", "web-1").await;
    s.add_node("team-a", "web-2").await;
    user::reconcile(&mu, &c).await.expect("reconcile");
    let mu = refreshed_user(&mu, &c);
    assert_eq!(mu.status.as_ref().map(|st| st.node_count), Some(2));
    let mut deleting = mu.clone();
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    user::reconcile(&deleting, &c).await.expect("delete");
    let list = s.json(&["users", "list"]).await;
    assert_eq!(users_named(&list, "team-a"), 0, "{list}");
    let nodes = s.json(&["nodes", "list"]).await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(0), "{nodes}");
    let finalizers = c.kube.state.lock().expect("lock").user_finalizers["team-a"].clone();
    assert!(!finalizers.iter().any(|f| f == FINALIZER));
    // Deleting again (a repeated event) is a no-op, not an error.
    user::reconcile(&deleting, &c).await.expect("repeat delete");
    // One creation despite three reconciles, then the deletion.
    assert_eq!(c.kube.reasons(), vec!["UserCreated", "UserDeleted"]);
}

fn preauthkey(name: &str, user: &str) -> PreAuthKey {
    let mut p = PreAuthKey::new(
        name,
        PreAuthKeySpec {
            user: user.into(),
            reusable: true,
            ephemeral: true,
            expiration: "24h".into(),
            rotate_before: Some("1h".into()),
            tags: vec![Tag("tag:k8s".into())],
            secret_name: "meshscale-authkey".into(),
        },
    );
    p.metadata.namespace = Some("apps".into());
    p.metadata.uid = Some("uid-1".into());
    p.metadata.generation = Some(1);
    p
}

fn secret_key(c: &RealCtx) -> Option<String> {
    let s = c.kube.state.lock().expect("lock");
    let secret = s.secrets.get("apps/meshscale-authkey")?;
    let data = secret.data.as_ref()?.get(pak::SECRET_KEY)?;
    String::from_utf8(data.0.clone()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_preauthkey_issued_once_into_the_secret_and_expired_on_delete() {
    let s = RealServer::start().await;
    let c = Ctx::new(s.admin().await, FakeKube::default());
    s.ok(&["users", "create", "apps"]).await;
    let p = preauthkey("inject", "apps");

    pak::reconcile(&p, &c).await.expect("reconcile");
    let key = secret_key(&c).expect("key in the Secret");
    assert!(key.starts_with("mskey-auth-"), "not a pre-auth key");
    let p = {
        let st = c.kube.state.lock().expect("lock");
        let mut p = p.clone();
        p.status = st.pak_status.get("apps/inject").cloned();
        p.metadata.finalizers = st.pak_finalizers.get("apps/inject").cloned();
        p
    };
    pak::reconcile(&p, &c).await.expect("second reconcile");
    assert_eq!(
        secret_key(&c).as_deref(),
        Some(key.as_str()),
        "not re-issued"
    );

    let keys = s.json(&["preauthkeys", "list", "--user", "apps"]).await;
    let keys = keys.as_array().cloned().unwrap_or_default();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["reusable"], true);
    assert_eq!(keys[0]["ephemeral"], true);
    assert!(keys[0].to_string().contains("tag:k8s"), "tags: {}", keys[0]);
    // The server never shows the secret part again, and neither does the CR status.
    assert!(!keys[0].to_string().contains(&key[key.len() - 16..]));
    let status = serde_json::to_string(&p.status).unwrap_or_default();
    assert!(!status.contains(&key));
    assert_eq!(c.kube.reasons(), vec!["KeyIssued"]);
    let events = format!("{:?}", c.kube.state.lock().expect("lock").events);
    assert!(!events.contains(&key[key.len() - 16..]), "key in an event");

    // Deleting the CR expires the key in the server.
    let mut deleting = p.clone();
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    pak::reconcile(&deleting, &c).await.expect("delete");
    let id = p.status.as_ref().and_then(|st| st.id).expect("id");
    let user_id = c
        .admin
        .find_user("apps")
        .await
        .expect("find")
        .expect("user")
        .id;
    let after = c.admin.list_pre_auth_keys(user_id).await.expect("list");
    let k = after.iter().find(|k| k.id == id).expect("key still listed");
    let exp = k
        .expiration
        .as_ref()
        .and_then(crate::admin::from_timestamp)
        .expect("expiration");
    assert!(exp <= chrono::Utc::now(), "key not expired: {exp}");
}

fn injected_pod(name: &str, ns: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"initContainers": [{"name": crate::webhook::patch::SIDECAR_NAME}],
                 "containers": [{"name": "app"}]}
    }))
    .expect("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_gone_pod_deletes_only_its_node_and_outages_are_unavailable() {
    let mut s = RealServer::start().await;
    let c = Ctx::new(s.admin().await, FakeKube::default());
    s.ok(&["users", "create", "apps"]).await;
    let gone = injected_pod("web-1", "apps");
    s.add_node("apps", &pods::hostname_of(&gone)).await;
    s.add_node("apps", "web-2-apps").await;
    let n = pods::pod_gone(&gone, None, &c).await.expect("pod gone");
    assert_eq!(n, 1);
    let nodes = s.json(&["nodes", "list"]).await;
    let names: Vec<&str> = nodes
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["web-2-apps"], "{nodes}");

    // A wrong API key is a refusal, not an outage to retry forever.
    let wrong = s
        .admin_with("mskey-api-000000000000-0000000000000000000000000000000000000000000000000000000000000000")
        .await;
    let r = wrong.list_nodes("").await;
    assert!(matches!(r, Err(AdminError::Rejected(_))), "{r:?}");

    // The server down: Unavailable (back-off); up again: the same client works.
    s.stop().await;
    let r = c.admin.list_nodes("").await;
    assert!(matches!(r, Err(AdminError::Unavailable(_))), "{r:?}");
    s.spawn().await;
    let mut last = Err(AdminError::Unavailable(String::new()));
    for _ in 0..50 {
        last = c.admin.list_nodes("").await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.map(|n| n.len()).ok(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_injection_key_is_reusable_ephemeral_tagged_and_rotated_before_expiry() {
    let s = RealServer::start().await;
    let c = Ctx::new(s.admin().await, FakeKube::default());
    s.ok(&["users", "create", "k8s"]).await;
    // Rotation due one second after issue, so the test sees a rotation.
    let d = crate::injectkey::KeyDefaults {
        secret_prefix: "meshscale-authkey".into(),
        user: "k8s".into(),
        tags: vec!["tag:k8s".into()],
        namespace_tag_prefix: "tag:k8s-ns-".into(),
        expiration: "1h".into(),
        rotate_before: "59m59s".into(),
    };
    let pod = injected_pod("web-1", "apps");
    let name = pods::ensure_injection_key(&pod, &d, &c)
        .await
        .expect("ensure")
        .expect("a key name");
    let spec = c.kube.state.lock().expect("lock").paks[&format!("apps/{name}")].clone();
    let mut p = PreAuthKey::new(&name, spec);
    p.metadata.namespace = Some("apps".into());
    p.metadata.uid = Some("uid-inject".into());
    p.metadata.generation = Some(1);
    pak::reconcile(&p, &c).await.expect("issue");
    let first = secret_key(&c).expect("key in the Secret");
    let user_id = c
        .admin
        .find_user("k8s")
        .await
        .ok()
        .flatten()
        .expect("user")
        .id;
    let keys = c.admin.list_pre_auth_keys(user_id).await.expect("list");
    assert_eq!(keys.len(), 1);
    assert!(keys[0].reusable && keys[0].ephemeral);
    assert_eq!(
        keys[0].acl_tags,
        vec!["tag:k8s".to_string(), "tag:k8s-ns-apps".to_string()]
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    pak::reconcile(&p, &c).await.expect("rotate");
    let second = secret_key(&c).expect("key in the Secret");
    assert_ne!(first, second, "rotated before expiry");
    assert_eq!(c.kube.reasons(), vec!["KeyIssued", "KeyRotated"]);
    let keys = c.admin.list_pre_auth_keys(user_id).await.expect("list");
    assert_eq!(keys.len(), 2);
}

/// The operator's policy pass against a real server in database mode: the
/// merge is what GetPolicy returns, the tags it declares owners for pass the
/// server's own ownership check, and refusals leave the policy in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_policy_merges_meshpolicies_and_owns_the_namespace_tags() {
    use crate::crd::{ClusterMeshPolicy, MeshPolicy};
    use crate::reconcile::policy::{self, ACCEPTED};

    let s = RealServer::start().await;
    let c = Ctx::new(s.admin().await, FakeKube::default());
    let d = crate::injectkey::KeyDefaults {
        secret_prefix: "meshscale-authkey".into(),
        user: "k8s".into(),
        tags: vec!["tag:k8s".into()],
        namespace_tag_prefix: "tag:k8s-ns-".into(),
        expiration: "1h".into(),
        rotate_before: "30m".into(),
    };
    let obj = |v: Value| v;
    {
        let mut st = c.kube.state.lock().unwrap();
        st.namespaces = vec!["web".into(), "db".into()];
        let cmp: ClusterMeshPolicy = serde_json::from_value(obj(json!({
            "apiVersion": "meshscale.dev/v1alpha1", "kind": "ClusterMeshPolicy",
            "metadata": {"name": "base", "generation": 1},
            "spec": {"groups": {"group:ops": ["ops@"]},
                     "acls": [{"action": "accept", "src": ["group:ops"], "dst": ["*:*"]}]}
        })))
        .unwrap();
        st.cluster_policies.insert("base".into(), cmp);
        for (ns, name, dst) in [
            ("db", "db", "tag:k8s-ns-db:5432"),
            ("web", "web", "tag:k8s-ns-web:80"),
            ("web", "grab", "tag:k8s-ns-db:22"),
        ] {
            let mp: MeshPolicy = serde_json::from_value(json!({
                "apiVersion": "meshscale.dev/v1alpha1", "kind": "MeshPolicy",
                "metadata": {"name": name, "namespace": ns, "generation": 2},
                "spec": {"acls": [{"action": "accept", "src": ["tag:k8s-ns-web"], "dst": [dst]}]}
            }))
            .unwrap();
            st.mesh_policies.insert(format!("{ns}/{name}"), mp);
        }
    }
    let r = policy::sync(&c, &d).await.expect("sync");
    assert!(
        r.set,
        "{:?}\n{}",
        c.kube.state.lock().unwrap().cluster_policies["base"].status,
        s.log()
    );
    assert_eq!((r.accepted, r.refused), (3, 1));

    // What the server holds is the merge.
    let text = c.admin.get_policy().await.expect("get");
    let got: Value =
        serde_json::from_str(&meshscale_policy::hujson_to_json(&text).unwrap()).unwrap();
    let dsts: Vec<&str> = got["acls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["dst"][0].as_str().unwrap())
        .collect();
    assert_eq!(dsts, ["*:*", "tag:k8s-ns-db:5432", "tag:k8s-ns-web:80"]);
    assert_eq!(got["tagOwners"]["tag:k8s-ns-db"], json!(["k8s@"]));
    {
        let st = c.kube.state.lock().unwrap();
        let cond = |p: &Option<crate::crd::MeshPolicyStatus>| {
            let c = p
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .find(|c| c.type_ == ACCEPTED)
                .unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        assert_eq!(cond(&st.mesh_policies["db/db"].status).0, "True");
        let (status, reason, msg) = cond(&st.mesh_policies["web/grab"].status);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Refused"));
        assert!(
            msg.contains("tag:k8s-ns-db:22") && msg.contains("outside"),
            "{msg}"
        );
    }

    // The server's tag check passes for the injection user and no one else.
    s.ok(&["users", "create", "k8s"]).await;
    s.ok(&["users", "create", "eve"]).await;
    s.add_node("k8s", "pod-a-web").await;
    s.add_node("eve", "laptop").await;
    let nodes = s.json(&["nodes", "list"]).await;
    let id_of = |host: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == host || n["given_name"] == host || n["givenName"] == host)
            .and_then(|n| n["id"].as_u64().or_else(|| n["id"].as_str()?.parse().ok()))
            .unwrap_or_else(|| panic!("{host} in {nodes}"))
            .to_string()
    };
    s.ok(&[
        "nodes",
        "tag",
        "-i",
        &id_of("pod-a-web"),
        "-t",
        "tag:k8s,tag:k8s-ns-web",
    ])
    .await;
    let out = s
        .cli(&[
            "nodes",
            "tag",
            "-i",
            &id_of("laptop"),
            "-t",
            "tag:k8s-ns-web",
        ])
        .await;
    assert!(!out.status.success(), "eve may not take a namespace tag");

    // A policy the server refuses (its own test fails): nothing changes.
    {
        let mut st = c.kube.state.lock().unwrap();
        let mp: MeshPolicy = serde_json::from_value(json!({
            "apiVersion": "meshscale.dev/v1alpha1", "kind": "MeshPolicy",
            "metadata": {"name": "web", "namespace": "web", "generation": 3},
            "spec": {"acls": [{"action": "accept", "src": ["tag:k8s-ns-web"], "dst": ["tag:k8s-ns-web:80"]}],
                     "tests": [{"src": "tag:k8s-ns-db", "accept": ["tag:k8s-ns-web:80"]}]}
        }))
        .unwrap();
        st.mesh_policies.insert("web/web".into(), mp);
    }
    policy::sync(&c, &d).await.expect("sync");
    assert_eq!(c.admin.get_policy().await.expect("get"), text);
    let st = c.kube.state.lock().unwrap();
    let status = st.mesh_policies["web/web"].status.as_ref().unwrap();
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == ACCEPTED)
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "ServerRefused")
    );
    assert_eq!(status.observed_generation, Some(3));
    assert!(cond.message.contains("test"), "{}", cond.message);
}
