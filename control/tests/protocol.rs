//! The node protocol end to end: the real `meshscale serve` on SQLite and
//! PostgreSQL, driven by `meshscale-controlclient` over Noise + HTTP/2,
//! with the admin CLI acting on the same server.

#[allow(dead_code)]
#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::time::Duration;

use mesh::{
    DEADLINE, TestNode, authorized, node_by_key, nodes, poll_until, preauth_key, server_url,
    start_mesh, wait_for_delta,
};
use meshscale_controlclient::requests;
use meshscale_controlclient::{ClientError, ConnectOptions, ControlClient, NodeKey};
use meshscale_wire::tailcfg::{EndpointType, FilterRule, MapResponse};
use support::backends;
use support::server::{Server, http_get};

/// The ephemeral timeout the tests run with (Headscale insists on > 65 s;
/// this server lets tests pick 2 s).
const EPHEMERAL_TIMEOUT: Duration = Duration::from_secs(2);

fn extra_config() -> String {
    format!(
        "ephemeral_node_inactivity_timeout: {}s\n",
        EPHEMERAL_TIMEOUT.as_secs()
    )
}

async fn node_id(s: &Server, key: &NodeKey) -> i64 {
    let n = node_by_key(s, key).await.expect("node listed");
    n["id"].as_i64().expect("numeric id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_key_registration() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &extra_config()).await;
        s.ok(&["users", "create", "vpn1"]).await;

        // A reusable key admits, with the first addresses of both prefixes.
        let reusable = preauth_key(&s, "vpn1", &["--reusable"]).await;
        let n1 = TestNode::new(&s, "node1").await;
        let early = n1
            .client
            .early_payload()
            .await
            .expect("early payload readable")
            .expect("server sends an early payload");
        assert!(!early.node_key_challenge.is_zero(), "{ctx}");
        let r = n1.register_with_key(&reusable).await;
        assert!(authorized(&r), "{ctx}: {r:?}");
        assert_eq!(r.login.login_name, "vpn1", "{ctx}");
        assert!(r.user.id > 0, "{ctx}: {r:?}");
        let listed = node_by_key(&s, &n1.node).await.expect("node listed");
        assert_eq!(
            listed["ip_addresses"],
            serde_json::json!(["100.64.0.1", "fd7a:115c:a1e0::1"]),
            "{ctx}"
        );
        assert_eq!(listed["machine_key"], n1.machine.public().to_string());
        assert_eq!(listed["given_name"], "node1");
        // And it can be reused by another machine.
        TestNode::join(&s, "node2", &reusable).await;

        // A single-use key admits once.
        let single = preauth_key(&s, "vpn1", &[]).await;
        TestNode::join(&s, "single-a", &single).await;
        let b = TestNode::new(&s, "single-b").await;
        let r = b.register_with_key(&single).await;
        assert!(!r.machine_authorized, "{ctx}: {r:?}");
        assert!(r.error.contains("already used"), "{ctx}: {r:?}");
        assert!(node_by_key(&s, &b.node).await.is_none(), "{ctx}");

        // An expired key is refused.
        let expiring = preauth_key(&s, "vpn1", &["--reusable"]).await;
        let keys = s.json(&["preauthkeys", "list"]).await;
        let newest = keys
            .as_array()
            .and_then(|k| k.iter().filter_map(|k| k["id"].as_u64()).max())
            .expect("key ids");
        s.ok(&["preauthkeys", "expire", "--id", &newest.to_string()])
            .await;
        let c = TestNode::new(&s, "late").await;
        let r = c.register_with_key(&expiring).await;
        assert!(!r.machine_authorized, "{ctx}: {r:?}");
        assert!(r.error.contains("expired"), "{ctx}: {r:?}");

        // Unknown and malformed keys are refused.
        let unknown = format!("mskey-auth-{}-{}", "0".repeat(12), "0".repeat(64));
        for key in [unknown.as_str(), "not-a-key", "mskey-auth-"] {
            let d = TestNode::new(&s, "stranger").await;
            let r = d.register_with_key(key).await;
            assert!(
                !r.machine_authorized && r.error.contains("invalid"),
                "{ctx}: {key:?}: {r:?}"
            );
        }
        assert_eq!(nodes(&s).await.len(), 3, "{ctx}: only the admitted nodes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_login() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &extra_config()).await;
        s.ok(&["users", "create", "vpn1"]).await;

        let n = TestNode::new(&s, "laptop").await;
        let r = n
            .client
            .register(requests::register_plain(n.node.public(), n.hostinfo()))
            .await
            .expect("register");
        assert!(!r.machine_authorized && r.error.is_empty(), "{ctx}: {r:?}");
        let prefix = format!("{}/register/", server_url(&s));
        let id = r
            .auth_url
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{ctx}: AuthURL {:?} not under {prefix}", r.auth_url))
            .to_string();
        let (status, page) = http_get(s.http, &format!("/register/{id}")).await.unwrap();
        assert_eq!(status, 200, "{ctx}: {page}");
        assert!(
            page.contains(&format!("meshscale nodes register --key {id}")),
            "{ctx}: {page}"
        );

        // An admin admits it; the client's follow-up with the AuthURL then
        // learns it is authorized. (Follow-ups already waiting when the admin
        // acts are covered by the racing test below.)
        assert_eq!(
            s.ok(&["nodes", "register", "--key", &id, "--user", "vpn1"])
                .await
                .trim(),
            "Node registered",
            "{ctx}"
        );
        let r = tokio::time::timeout(
            DEADLINE,
            n.client.register(requests::register_followup(
                n.node.public(),
                &r.auth_url,
                n.hostinfo(),
            )),
        )
        .await
        .expect("follow-up answered")
        .expect("register");
        assert!(authorized(&r), "{ctx}: {r:?}");
        let (status, page) = http_get(s.http, &format!("/register/{id}")).await.unwrap();
        assert_eq!(status, 200, "{ctx}");
        assert!(page.contains("No machine is waiting"), "{ctx}: {page}");
        let listed = node_by_key(&s, &n.node)
            .await
            .expect("admitted node listed");
        assert_eq!(listed["user"]["name"], "vpn1", "{ctx}");
        assert_eq!(listed["register_method"], "REGISTER_METHOD_CLI", "{ctx}");
        let (_, first) = n.stream().await;
        assert!(first.node.expect("self node").machine_authorized, "{ctx}");
    }
}

/// Follow-ups that arrive while an admin approval is in flight must get
/// the approval's outcome (or be told to keep waiting on the same URL),
/// never a new AuthURL: a client shown a new URL waits on a registration
/// nobody will approve. Several pollers keep a follow-up in flight the whole
/// time, so the window between the approval taking the pending login and
/// storing the node is hit every run, not by luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followups_racing_an_approval_never_get_a_new_url() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &extra_config()).await;
        s.ok(&["users", "create", "vpn1"]).await;
        let n = TestNode::new(&s, "racer").await;
        let r = n
            .client
            .register(requests::register_plain(n.node.public(), n.hostinfo()))
            .await
            .unwrap();
        let url = r.auth_url.clone();
        let id = url.rsplit('/').next().unwrap().to_string();
        let approved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut pollers = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (client, url, approved) = (n.client.clone(), url.clone(), approved.clone());
            let req = requests::register_followup(n.node.public(), &url, n.hostinfo());
            pollers.spawn(async move {
                let deadline = tokio::time::Instant::now() + DEADLINE;
                let mut seen = Vec::new();
                loop {
                    let r = client.register(req.clone()).await.expect("follow-up");
                    if authorized(&r) {
                        return seen;
                    }
                    if r.auth_url != url {
                        seen.push(r.auth_url.clone());
                    }
                    // Pending ids live 15 minutes: stop once the approval is
                    // long done rather than wait on a stray new id.
                    if approved.load(std::sync::atomic::Ordering::SeqCst)
                        || tokio::time::Instant::now() > deadline
                    {
                        seen.push(format!("still not authorized: {r:?}"));
                        return seen;
                    }
                }
            });
        }
        s.ok(&["nodes", "register", "--key", &id, "--user", "vpn1"])
            .await;
        approved.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut wrong = Vec::new();
        while let Some(seen) = pollers.join_next().await {
            wrong.extend(seen.unwrap());
        }
        if !wrong.is_empty() {
            let log = s.log_text();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("registration_id") || l.contains("node registered"))
                .collect();
            panic!(
                "{ctx}: follow-ups of {url} got other answers than the approval: {wrong:?}\n\
                 server log:\n{}",
                lines.join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relogin_key_rotation_and_logout() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &extra_config()).await;
        s.ok(&["users", "create", "vpn1"]).await;
        let key = preauth_key(&s, "vpn1", &["--reusable"]).await;

        let first = TestNode::join(&s, "box", &key).await;
        let before = node_by_key(&s, &first.node).await.expect("listed");
        let (machine, node_key) = (first.machine.clone(), first.node.clone());
        drop(first);

        // Same machine, new connection: same node, same addresses, whether
        // it presents the key again or just says "I'm back".
        let again = TestNode::with_keys(&s, "box", machine.clone(), node_key.clone()).await;
        let r = again.register_with_key(&key).await;
        assert!(authorized(&r), "{ctx}: {r:?}");
        let r = again
            .client
            .register(requests::register_plain(
                node_key.public(),
                again.hostinfo(),
            ))
            .await
            .unwrap();
        assert!(authorized(&r), "{ctx}: I'm back: {r:?}");
        let after = node_by_key(&s, &node_key).await.expect("listed");
        assert_eq!(
            (&after["id"], &after["ip_addresses"]),
            (&before["id"], &before["ip_addresses"]),
            "{ctx}"
        );
        assert_eq!(nodes(&s).await.len(), 1, "{ctx}: no second node");

        // Node-key rotation: OldNodeKey names the key being replaced.
        let new_key = NodeKey::generate().unwrap();
        let r = again
            .client
            .register(requests::register_rotation(
                node_key.public(),
                new_key.public(),
                again.hostinfo(),
            ))
            .await
            .unwrap();
        assert!(authorized(&r), "{ctx}: rotation: {r:?}");
        let rotated = node_by_key(&s, &new_key)
            .await
            .expect("listed under the new key");
        assert_eq!(
            (&rotated["id"], &rotated["ip_addresses"]),
            (&before["id"], &before["ip_addresses"]),
            "{ctx}"
        );
        assert!(node_by_key(&s, &node_key).await.is_none(), "{ctx}");
        // The old key no longer opens a map; the new one does.
        let old_map = again.client.map_stream(again.map_request()).await;
        assert!(
            matches!(old_map, Err(ClientError::Status { status: 404, .. })),
            "{ctx}: {old_map:?}"
        );
        let rotated_node = TestNode {
            node: new_key.clone(),
            ..again
        };
        let (_stream, first_map) = rotated_node.stream().await;
        assert_eq!(first_map.node.expect("self").key, new_key.public(), "{ctx}");

        // Logout: Expiry in the past expires the node.
        let r = rotated_node
            .client
            .register(requests::logout(new_key.public()))
            .await
            .unwrap();
        assert!(r.node_key_expired, "{ctx}: logout: {r:?}");
        let listed = node_by_key(&s, &new_key).await.expect("still listed");
        assert_eq!(listed["expired"], true, "{ctx}: {listed}");
        let r = rotated_node
            .client
            .register(requests::register_plain(
                new_key.public(),
                rotated_node.hostinfo(),
            ))
            .await
            .unwrap();
        assert!(
            r.node_key_expired && !authorized(&r),
            "{ctx}: after logout: {r:?}"
        );
    }
}

fn is_allow_all(rules: &[FilterRule]) -> bool {
    rules.len() == 1
        && rules[0].src_ips == ["*"]
        && rules[0].dst_ports.len() == 1
        && rules[0].dst_ports[0].ip == "*"
        && rules[0].dst_ports[0].ports.first == 0
        && rules[0].dst_ports[0].ports.last == 65535
}

fn assert_full_map(ctx: &str, m: &MapResponse, me: &TestNode) {
    let node = m.node.as_ref().expect("first message has Node");
    assert_eq!(node.key, me.node.public(), "{ctx}");
    assert_eq!(node.machine, me.machine.public(), "{ctx}");
    assert_eq!(node.disco_key, me.disco.public(), "{ctx}: disco key echoed");
    assert!(node.machine_authorized && !node.expired, "{ctx}: {node:?}");
    assert!(node.name.ends_with('.'), "{ctx}: FQDN {:?}", node.name);
    let regions = m
        .derp_map
        .as_ref()
        .and_then(|d| d.regions.as_ref())
        .expect("first message has DERPMap regions");
    let region = regions.get(&999).expect("embedded DERP region 999");
    assert!(!region.nodes.is_empty(), "{ctx}: {region:?}");
    assert!(m.dns_config.is_some(), "{ctx}: DNSConfig");
    let base = m
        .packet_filters
        .get("base")
        .and_then(|f| f.as_deref())
        .expect("PacketFilters base");
    assert!(is_allow_all(base), "{ctx}: {base:?}");
    assert!(
        m.user_profiles.iter().any(|p| p.login_name == "vpn1"),
        "{ctx}: {:?}",
        m.user_profiles
    );
    assert!(!m.domain.is_empty(), "{ctx}: Domain");
    assert!(m.control_time.is_some(), "{ctx}: ControlTime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_stream_full_map_then_deltas() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &extra_config()).await;
        s.ok(&["users", "create", "vpn1"]).await;
        let key = preauth_key(&s, "vpn1", &["--reusable"]).await;

        let n1 = TestNode::join(&s, "node1", &key).await;
        let (mut s1, first) = n1.stream().await;
        assert_full_map(ctx, &first, &n1);
        assert!(first.peers.is_empty(), "{ctx}: alone");
        let addrs: Vec<String> = first
            .node
            .as_ref()
            .unwrap()
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(addrs, ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"], "{ctx}");
        let n1_id = first.node.as_ref().unwrap().id;

        // A second node joining reaches node 1 as a delta.
        let n2 = TestNode::join(&s, "node2", &key).await;
        let joined = wait_for_delta(&mut s1, "node2 in PeersChanged", |r| {
            r.peers_changed.iter().any(|p| p.key == n2.node.public())
        })
        .await;
        assert!(joined.node.is_none(), "{ctx}: {joined:?}");
        let n2_id = joined
            .peers_changed
            .iter()
            .find(|p| p.key == n2.node.public())
            .unwrap()
            .id;

        let (s2, first2) = n2.stream().await;
        assert_full_map(ctx, &first2, &n2);
        assert_eq!(
            first2.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
            [n1_id],
            "{ctx}"
        );
        wait_for_delta(&mut s1, "node2 online", |r| {
            r.peers_changed_patch
                .iter()
                .any(|p| p.node_id == n2_id && p.online == Some(true))
        })
        .await;
        poll_until("node2 listed online", || async {
            (node_by_key(&s, &n2.node).await?["online"] == true).then_some(())
        })
        .await;

        // A one-shot map is a full map too.
        let once = n2
            .client
            .map_once(n2.map_request())
            .await
            .expect("one-shot map");
        assert_full_map(ctx, &once.response, &n2);

        // An endpoint update from node 2 reaches node 1 as a patch.
        let endpoint = "10.0.0.2:41641".to_string();
        n2.client
            .map_update(requests::endpoint_update(
                n2.node.public(),
                n2.disco.public(),
                &[(endpoint.clone(), EndpointType::LOCAL)],
                n2.hostinfo(),
            ))
            .await
            .expect("endpoint update");
        let patch = wait_for_delta(&mut s1, "node2's endpoints", |r| {
            r.peers_changed_patch
                .iter()
                .any(|p| p.node_id == n2_id && !p.endpoints.is_empty())
        })
        .await;
        let p = patch
            .peers_changed_patch
            .iter()
            .find(|p| p.node_id == n2_id)
            .unwrap();
        assert_eq!(p.endpoints, std::slice::from_ref(&endpoint), "{ctx}");
        assert!(patch.peers_changed.is_empty(), "{ctx}: a patch, not a node");

        // Node 2's stream ending marks it offline for node 1.
        drop(s2);
        let offline = wait_for_delta(&mut s1, "node2 offline", |r| {
            r.peers_changed_patch
                .iter()
                .any(|p| p.node_id == n2_id && p.online == Some(false))
        })
        .await;
        let p = offline
            .peers_changed_patch
            .iter()
            .find(|p| p.node_id == n2_id)
            .unwrap();
        assert!(
            p.last_seen.is_some(),
            "{ctx}: offline patch carries LastSeen"
        );

        // Deleting node 2 removes it from node 1's peers.
        s.ok(&["nodes", "delete", "-i", &n2_id.to_string(), "--force"])
            .await;
        wait_for_delta(&mut s1, "node2 in PeersRemoved", |r| {
            r.peers_removed.contains(&n2_id)
        })
        .await;

        // Expiring node 1 tells node 1 itself.
        s.ok(&["nodes", "expire", "-i", &n1_id.to_string()]).await;
        let expired = wait_for_delta(&mut s1, "node1's own Node expired", |r| {
            r.node.as_ref().is_some_and(|n| n.expired)
        })
        .await;
        let me = expired.node.unwrap();
        assert!(!me.machine_authorized, "{ctx}: {me:?}");
        assert!(
            me.key_expiry.is_some_and(|t| t <= chrono::Utc::now()),
            "{ctx}: KeyExpiry {:?}",
            me.key_expiry
        );
        drop(n1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_node_is_removed_after_its_stream_ends() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, &extra_config()).await;
        s.ok(&["users", "create", "vpn1"]).await;
        let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
        let eph_key = preauth_key(&s, "vpn1", &["--ephemeral"]).await;

        let n1 = TestNode::join(&s, "steady", &key).await;
        let (mut s1, _) = n1.stream().await;
        let eph = TestNode::join(&s, "fleeting", &eph_key).await;
        let listed = node_by_key(&s, &eph.node).await.expect("listed");
        assert_eq!(listed["ephemeral"], true, "{ctx}");
        let eph_id = node_id(&s, &eph.node).await;
        let (eph_stream, _) = eph.stream().await;

        // Online for longer than the timeout: it stays.
        let watch_until = tokio::time::Instant::now() + EPHEMERAL_TIMEOUT * 2;
        while tokio::time::Instant::now() < watch_until {
            assert!(
                node_by_key(&s, &eph.node).await.is_some(),
                "{ctx}: an online ephemeral node must not be removed"
            );
        }

        drop(eph_stream);
        drop(eph);
        wait_for_delta(&mut s1, "ephemeral node offline", |r| {
            r.peers_changed_patch
                .iter()
                .any(|p| p.node_id == eph_id && p.online == Some(false))
        })
        .await;
        let removed_at = tokio::time::Instant::now();
        wait_for_delta(&mut s1, "ephemeral node in PeersRemoved", |r| {
            r.peers_removed.contains(&eph_id)
        })
        .await;
        assert!(
            removed_at.elapsed() + Duration::from_millis(500) >= EPHEMERAL_TIMEOUT,
            "{ctx}: removed after {:?}, before the {EPHEMERAL_TIMEOUT:?} timeout",
            removed_at.elapsed()
        );
        poll_until("ephemeral node gone from the list", || async {
            nodes(&s)
                .await
                .iter()
                .all(|n| n["id"].as_i64() != Some(eph_id))
                .then_some(())
        })
        .await;
    }
}

/// Keep-alives come after 50–59 s of silence; too slow for the default
/// run. Every other test still checks the form of any keep-alive it sees.
/// Run with `cargo test --test protocol -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "waits about a minute for the server's idle keep-alive"]
async fn idle_stream_gets_exact_keep_alives() {
    let db = support::Db::Sqlite;
    let s = start_mesh(&db, &extra_config()).await;
    s.ok(&["users", "create", "vpn1"]).await;
    let key = preauth_key(&s, "vpn1", &[]).await;
    let n = TestNode::join(&s, "idle", &key).await;
    let (mut stream, _) = n.stream().await;
    let msg = tokio::time::timeout(Duration::from_secs(75), stream.next_message())
        .await
        .expect("a keep-alive within 75 s")
        .expect("stream open")
        .expect("valid message");
    assert!(
        msg.is_exact_keep_alive(),
        "{}",
        String::from_utf8_lossy(&msg.json)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_key_and_early_payload() {
    // Nothing here reaches the store: one backend is enough.
    let db = support::Db::Sqlite;
    let s = start_mesh(&db, &extra_config()).await;
    let (status, body) = http_get(s.http, "/key?v=133").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let machine = meshscale_controlclient::MachineKey::generate().unwrap();
    let client = ControlClient::connect(&server_url(&s), &machine, ConnectOptions::default())
        .await
        .expect("connect");
    assert!(body.contains(&client.server_key().to_string()), "{body}");
    assert_eq!(client.machine_key(), machine.public());
    assert!(client.early_payload().await.unwrap().is_some());

    // A client that already knows the key skips /key; a wrong key fails
    // the handshake instead of talking to an impostor.
    let known = ConnectOptions {
        server_key: Some(client.server_key()),
        ..ConnectOptions::default()
    };
    ControlClient::connect(&server_url(&s), &machine, known)
        .await
        .expect("connect with a known key");
    let wrong = ConnectOptions {
        server_key: Some(
            meshscale_controlclient::MachineKey::generate()
                .unwrap()
                .public(),
        ),
        ..ConnectOptions::default()
    };
    let err = ControlClient::connect(&server_url(&s), &machine, wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Dial(_)), "{err}");

    // Old clients are told why.
    let old = ConnectOptions {
        protocol_version: 100,
        ..ConnectOptions::default()
    };
    let err = ControlClient::connect(&server_url(&s), &machine, old)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unsupported client version"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_an_extra_ca() {
    for db in backends() {
        let ctx = db.name();
        let certs = tempfile::tempdir().unwrap();
        let (ca, cert, key_file) = mesh::write_test_certs(certs.path());
        let ca_pem = std::fs::read(&ca).unwrap();
        let mut s = support::server::start(&db, &extra_config()).await;
        let tls = mesh::TlsServer::start(&mut s, &cert, &key_file, &ca_pem).await;
        s.ok(&["users", "create", "vpn1"]).await;
        let key = preauth_key(&s, "vpn1", &[]).await;

        // /key over verified TLS, the upgrade over TLS, then the protocol.
        let machine = meshscale_controlclient::MachineKey::generate().unwrap();
        let with_ca = ConnectOptions {
            extra_ca_pem: Some(ca_pem.clone()),
            ..ConnectOptions::default()
        };
        let client = ControlClient::connect(&tls.url, &machine, with_ca)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: connect over TLS: {e}"));
        let node = NodeKey::generate().unwrap();
        let r = client
            .register(requests::register_with_auth_key(
                node.public(),
                &key,
                requests::hostinfo("tls-node"),
            ))
            .await
            .unwrap();
        assert!(authorized(&r), "{ctx}: {r:?}");
        let mut stream = client
            .map_stream(requests::map_stream(
                node.public(),
                meshscale_controlclient::DiscoKey::generate()
                    .unwrap()
                    .public(),
                requests::hostinfo("tls-node"),
            ))
            .await
            .unwrap();
        let first = mesh::next_message(&mut stream, "map over TLS").await;
        assert_eq!(
            first.response.node.expect("self").key,
            node.public(),
            "{ctx}"
        );

        // Without the CA, /key (verified like any HTTPS) fails...
        let err = ControlClient::connect(&tls.url, &machine, ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Dial(meshscale_controlclient::dial::DialError::Tls { .. })
            ),
            "{ctx}: {err}"
        );
        // ...but with the server key already known, the upgrade only logs
        // the certificate problem, as Go does: Noise authenticates.
        let known = ConnectOptions {
            server_key: Some(client.server_key()),
            ..ConnectOptions::default()
        };
        let again = ControlClient::connect(&tls.url, &machine, known)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: upgrade without the CA: {e}"));
        let r = again
            .register(requests::register_plain(
                node.public(),
                requests::hostinfo("tls-node"),
            ))
            .await
            .unwrap();
        assert!(authorized(&r), "{ctx}: {r:?}");
        drop((stream, client, again, tls));
    }
}
