//! The access policy end to end on the real server (SQLite and PostgreSQL):
//! `policy.mode: database` and `file`, the `policy` CLI (get, set, check,
//! compile) with its refusals and exit codes, tag ownership at registration
//! and in `nodes tag`, and per-node maps that follow policy changes as
//! deltas on live map sessions.

#[allow(dead_code)]
#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::path::Path;
use std::time::Duration;

use mesh::{
    TestNode, authorized, node_by_key, poll_until, preauth_key, start_mesh, wait_for_delta,
};
use meshscale_controlclient::requests;
use meshscale_wire::tailcfg::{FilterRule, MapResponse};
use support::backends;
use support::server::{BIN, Server, start};

/// alice may reach tag:web on tcp/80; nothing else is allowed. Comments and
/// a trailing comma: HuJSON, stored and returned as written.
const WEB_ONLY: &str = r#"// Only alice reaches the web servers, on port 80.
{
  "tagOwners": {"tag:web": ["alice@"]},
  "acls": [
    {"action": "accept", "src": ["alice@"], "proto": "tcp", "dst": ["tag:web:80"]},
  ],
}
"#;

const EVERYONE: &str = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;

/// Refused: the group is not defined.
const BAD_GROUP: &str =
    r#"{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

fn filter(r: &MapResponse) -> Option<&Vec<FilterRule>> {
    r.packet_filters.get("base").and_then(Option::as_ref)
}

fn allows_port(rules: &[FilterRule], port: u16) -> bool {
    rules.iter().any(|r| {
        r.dst_ports
            .iter()
            .any(|d| d.ports.first <= port && port <= d.ports.last)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_mode_get_set_check_and_refusals() {
    for db in backends() {
        let ctx = db.name();
        let mut s = start(&db, "policy:\n  mode: database\n").await;
        let dir = s.dir.path().to_path_buf();
        let good = write(&dir, "good.hujson", WEB_ONLY);
        let bad = write(&dir, "bad.hujson", BAD_GROUP);

        let none = s.fails(&["policy", "get"]).await;
        assert!(none.contains("no policy"), "{ctx}: {none}");

        assert!(
            s.ok(&["policy", "check", "--file", &good])
                .await
                .contains("valid"),
            "{ctx}"
        );
        let why = s.fails(&["policy", "check", "--file", &bad]).await;
        assert!(why.contains("group:nope"), "{ctx}: {why}");
        let why = s.fails(&["policy", "set", "--file", &bad]).await;
        assert!(why.contains("group:nope"), "{ctx}: {why}");
        assert!(
            s.fails(&["policy", "get"]).await.contains("no policy"),
            "{ctx}: a refused policy is not stored"
        );

        s.ok(&["policy", "set", "--file", &good]).await;
        assert_eq!(
            s.ok(&["policy", "get"]).await,
            WEB_ONLY,
            "{ctx}: text as given"
        );
        let json = s.json(&["policy", "get"]).await;
        assert_eq!(json["policy"], WEB_ONLY, "{ctx}");
        assert!(
            json["updated_at"].as_str().is_some_and(|t| !t.is_empty()),
            "{ctx}: {json}"
        );

        // A refused policy leaves the one in force as it was.
        let why = s.fails(&["policy", "set", "--file", &bad]).await;
        assert!(why.contains("group:nope"), "{ctx}: {why}");
        assert_eq!(s.ok(&["policy", "get"]).await, WEB_ONLY, "{ctx}");

        // A missing file is the CLI's own error.
        let missing = dir.join("missing.hujson").display().to_string();
        let why = s.fails(&["policy", "set", "--file", &missing]).await;
        assert!(why.contains("missing.hujson"), "{ctx}: {why}");

        // It survives a restart.
        s.stop().await;
        s.spawn().await;
        assert_eq!(
            s.ok(&["policy", "get"]).await,
            WEB_ONLY,
            "{ctx}: after restart"
        );
    }
}

/// Runs `meshscale serve` to its end: with a bad policy it must refuse to start.
async fn serve_must_fail(s: &Server) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&s.config)
            .output(),
    )
    .await
    .expect("serve with a bad policy must exit")
    .expect("run meshscale serve");
    assert!(!out.status.success(), "serve started with a bad policy");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_reloads_changes_and_keeps_the_old_policy_on_a_bad_edit() {
    let db = support::Db::Sqlite;
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = write(tmp.path(), "acl.hujson", WEB_ONLY);
    let mut s = start(&db, &format!("policy:\n  mode: file\n  path: {path}\n")).await;
    assert_eq!(s.ok(&["policy", "get"]).await, WEB_ONLY);

    let set = s.fails(&["policy", "set", "--file", &path]).await;
    assert!(set.contains("database"), "{set}");
    // `check` works in any mode.
    s.ok(&["policy", "check", "--file", &path]).await;

    // An edit is picked up without a restart.
    std::fs::write(&path, EVERYONE).expect("edit policy");
    poll_until("the edited policy in force", || async {
        (s.ok(&["policy", "get"]).await.trim_end() == EVERYONE).then_some(())
    })
    .await;

    // A bad edit is logged and ignored; the old policy stays.
    std::fs::write(&path, BAD_GROUP).expect("bad edit");
    poll_until("the bad edit logged", || async {
        s.log_text().contains("policy not reloaded").then_some(())
    })
    .await;
    assert!(s.log_text().contains("group:nope"));
    assert_eq!(s.ok(&["policy", "get"]).await.trim_end(), EVERYONE);

    // SIGHUP reloads (the good file again) and does not stop the server.
    std::fs::write(&path, WEB_ONLY).expect("fix policy");
    let pid = mesh::server_pid(&s);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    poll_until("the fixed policy in force", || async {
        (s.ok(&["policy", "get"]).await == WEB_ONLY).then_some(())
    })
    .await;

    // A bad file at start stops the start, with the reason.
    s.stop().await;
    std::fs::write(&path, BAD_GROUP).expect("bad policy");
    let err = serve_must_fail(&s).await;
    assert!(
        err.contains("group:nope") && err.contains("policy"),
        "{err}"
    );
    std::fs::remove_file(&path).expect("remove policy");
    let err = serve_must_fail(&s).await;
    assert!(err.contains("acl.hujson"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_previews_a_policy_without_a_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = write(tmp.path(), "acl.hujson", WEB_ONLY);
    let bad = write(tmp.path(), "bad.hujson", BAD_GROUP);
    let topology = write(
        tmp.path(),
        "topology.json",
        r#"{
  "users": [{"id": 1, "name": "alice", "email": "alice@example.com"},
            {"id": 2, "name": "bob", "email": "bob@example.com"}],
  "nodes": {
    "laptop": {"hostname": "laptop", "user": "alice", "ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1"},
    "web":    {"hostname": "web", "user": "alice", "tags": ["tag:web"], "ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2"},
    "other":  {"hostname": "other", "user": "bob", "ipv4": "100.64.0.3", "ipv6": "fd7a:115c:a1e0::3"}
  }
}"#,
    );
    // No config, no server: `-c` names nothing that exists.
    let run = |args: Vec<String>| {
        std::process::Command::new(BIN)
            .args(["-c", "/nonexistent/meshscale.yaml"])
            .args(args)
            .output()
            .expect("run meshscale")
    };
    let out = run(vec![
        "policy".into(),
        "compile".into(),
        "--policy".into(),
        policy.clone(),
        "--topology".into(),
        topology.clone(),
        "-o".into(),
        "json".into(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    for node in ["laptop", "web", "other"] {
        assert!(report.get(node).is_some(), "{node} missing in {report}");
    }
    let peers = |n: &str| report[n]["peers"].as_array().cloned().unwrap_or_default();
    assert!(peers("other").is_empty(), "{report}");
    assert_eq!(peers("web"), [serde_json::json!("laptop")], "{report}");
    assert!(
        !report["web"]["packet_filter_rules"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{report}"
    );

    let out = run(vec![
        "policy".into(),
        "compile".into(),
        "--policy".into(),
        bad,
        "--topology".into(),
        topology,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("group:nope"), "{stderr}");
}

async fn node_id(s: &Server, n: &TestNode) -> i64 {
    node_by_key(s, &n.node).await.expect("listed")["id"]
        .as_i64()
        .expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_checked_against_tag_owners() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, "policy:\n  mode: database\n").await;
        let dir = s.dir.path().to_path_buf();
        s.ok(&["users", "create", "alice"]).await;
        s.ok(&["users", "create", "bob"]).await;

        // No policy: nobody owns a tag, so requested tags are refused (not dropped).
        let alice_key = preauth_key(&s, "alice", &["--reusable"]).await;
        let n = TestNode::new(&s, "asks-web").await;
        let mut hi = n.hostinfo();
        hi.request_tags = vec!["tag:web".into()];
        let req = requests::register_with_auth_key(n.node.public(), &alice_key, hi.clone());
        let r = n.client.register(req).await.expect("register");
        assert!(
            !authorized(&r) && r.error.contains("tag:web"),
            "{ctx}: {r:?}"
        );

        s.ok(&[
            "policy",
            "set",
            "--file",
            &write(&dir, "p.hujson", WEB_ONLY),
        ])
        .await;
        // alice owns tag:web: the same request now succeeds, tagged.
        let req = requests::register_with_auth_key(n.node.public(), &alice_key, hi);
        let r = n.client.register(req).await.expect("register");
        assert!(authorized(&r), "{ctx}: {r:?}");
        let listed = node_by_key(&s, &n.node).await.expect("listed");
        assert_eq!(listed["tags"], serde_json::json!(["tag:web"]), "{ctx}");

        // A tag nobody owns is refused with the reason.
        let m = TestNode::new(&s, "asks-db").await;
        let mut hi = m.hostinfo();
        hi.request_tags = vec!["tag:db".into()];
        let r = m
            .client
            .register(requests::register_with_auth_key(
                m.node.public(),
                &alice_key,
                hi,
            ))
            .await
            .expect("register");
        assert!(
            !authorized(&r) && r.error.contains("tag:db"),
            "{ctx}: {r:?}"
        );
        assert!(node_by_key(&s, &m.node).await.is_none(), "{ctx}");

        // A key whose user does not own its tags admits nobody.
        let bob_tagged = preauth_key(&s, "bob", &["--tags", "tag:web"]).await;
        let b = TestNode::new(&s, "bob-web").await;
        let r = b.register_with_key(&bob_tagged).await;
        assert!(
            !authorized(&r) && r.error.contains("tag:web") && r.error.contains("bob"),
            "{ctx}: {r:?}"
        );
        // alice's tagged key does.
        let alice_tagged = preauth_key(&s, "alice", &["--tags", "tag:web"]).await;
        let w = TestNode::join(&s, "alice-web", &alice_tagged).await;
        let listed = node_by_key(&s, &w.node).await.expect("listed");
        assert_eq!(listed["tags"], serde_json::json!(["tag:web"]), "{ctx}");

        // `nodes tag` is checked the same way.
        let bob_key = preauth_key(&s, "bob", &[]).await;
        let bn = TestNode::join(&s, "bob-laptop", &bob_key).await;
        let bid = node_id(&s, &bn).await.to_string();
        let why = s
            .fails(&["nodes", "tag", "-i", &bid, "-t", "tag:web"])
            .await;
        assert!(
            why.contains("tag:web") && why.contains("bob"),
            "{ctx}: {why}"
        );
        let an = TestNode::join(&s, "alice-laptop", &alice_key).await;
        let aid = node_id(&s, &an).await.to_string();
        s.ok(&["nodes", "tag", "-i", &aid, "-t", "tag:web"]).await;

        // An interactive login asking for tags: checked against the user the
        // admin registers it to.
        for (user, admitted) in [("bob", false), ("alice", true)] {
            let n = TestNode::new(&s, &format!("login-{user}")).await;
            let mut hi = n.hostinfo();
            hi.request_tags = vec!["tag:web".into()];
            let r = n
                .client
                .register(requests::register_plain(n.node.public(), hi))
                .await
                .expect("register");
            let id = r
                .auth_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            assert!(!id.is_empty(), "{ctx}: {r:?}");
            let args = ["nodes", "register", "--key", id.as_str(), "--user", user];
            if admitted {
                s.ok(&args).await;
                let listed = node_by_key(&s, &n.node).await.expect("listed");
                assert_eq!(listed["tags"], serde_json::json!(["tag:web"]), "{ctx}");
            } else {
                let why = s.fails(&args).await;
                assert!(
                    why.contains("tag:web") && why.contains("bob"),
                    "{ctx}: {why}"
                );
                assert!(node_by_key(&s, &n.node).await.is_none(), "{ctx}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_maps_follow_policy_changes() {
    for db in backends() {
        let ctx = db.name();
        let s = start_mesh(&db, "policy:\n  mode: database\n").await;
        let dir = s.dir.path().to_path_buf();
        s.ok(&["users", "create", "alice"]).await;
        s.ok(&["users", "create", "bob"]).await;
        let alice = preauth_key(&s, "alice", &[]).await;
        let web_key = preauth_key(&s, "alice", &["--tags", "tag:web"]).await;
        let bob = preauth_key(&s, "bob", &[]).await;
        // No policy yet: a tagged key made by the admin is taken as is.
        let a = TestNode::join(&s, "laptop", &alice).await;
        let w = TestNode::join(&s, "web", &web_key).await;
        let b = TestNode::join(&s, "other", &bob).await;
        let (aid, wid, bid) = (
            node_id(&s, &a).await,
            node_id(&s, &w).await,
            node_id(&s, &b).await,
        );
        let (mut sa, fa) = a.stream().await;
        let (mut sw, _) = w.stream().await;
        let (mut sb, fb) = b.stream().await;
        assert_eq!(fa.peers.len(), 2, "{ctx}: allow-all sees everyone");
        assert_eq!(fb.peers.len(), 2, "{ctx}");

        // alice → tag:web:80 only.
        s.ok(&[
            "policy",
            "set",
            "--file",
            &write(&dir, "p.hujson", WEB_ONLY),
        ])
        .await;
        let to_b = wait_for_delta(&mut sb, "other loses every peer", |r| {
            r.peers_removed.contains(&aid) && r.peers_removed.contains(&wid)
        })
        .await;
        assert_eq!(
            filter(&to_b).map(Vec::len),
            Some(0),
            "{ctx}: nothing may reach other: {to_b:?}"
        );
        let to_w = wait_for_delta(&mut sw, "web's filter", |r| filter(r).is_some()).await;
        let rules = filter(&to_w).cloned().unwrap_or_default();
        assert!(allows_port(&rules, 80), "{ctx}: {rules:?}");
        assert!(!allows_port(&rules, 22), "{ctx}: {rules:?}");
        assert!(to_w.peers_removed.contains(&bid), "{ctx}: {to_w:?}");
        let to_a = wait_for_delta(&mut sa, "laptop drops other", |r| {
            r.peers_removed.contains(&bid)
        })
        .await;
        assert!(!to_a.peers_removed.contains(&wid), "{ctx}: {to_a:?}");

        // A fresh map under the policy: other is alone.
        let (_sb2, fb2) = b.stream().await;
        assert!(fb2.peers.is_empty(), "{ctx}: {:?}", fb2.peers);

        // Back to everyone: other sees both again, as a delta.
        s.ok(&[
            "policy",
            "set",
            "--file",
            &write(&dir, "all.hujson", EVERYONE),
        ])
        .await;
        let back = wait_for_delta(&mut sb, "other sees the others again", |r| {
            let ids: Vec<i64> = r.peers_changed.iter().map(|p| p.id).collect();
            ids.contains(&aid) && ids.contains(&wid)
        })
        .await;
        assert!(
            filter(&back).is_some_and(|f| !f.is_empty()),
            "{ctx}: {back:?}"
        );
        drop((sa, sw));
    }
}

/// The policy calls sit behind the same API-key check as every other call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_policy_calls_need_an_api_key() {
    let addr = format!("127.0.0.1:{}", support::server::free_port());
    let s = start(
        &support::Db::Sqlite,
        &format!(
            "grpc_listen_addr: {addr}\ngrpc_allow_insecure: true\npolicy:\n  mode: database\n"
        ),
    )
    .await;
    let good = write(s.dir.path(), "good.hujson", WEB_ONLY);
    let key = s
        .ok(&["apikeys", "create", "-e", "1d"])
        .await
        .trim()
        .to_string();
    let remote = |key: Option<&str>| {
        let mut env = vec![
            ("MESHSCALE_CLI_ADDRESS", addr.clone()),
            ("MESHSCALE_CLI_INSECURE", "1".to_string()),
            (
                "MESHSCALE_UNIX_SOCKET",
                "/nonexistent/meshscale.sock".to_string(),
            ),
        ];
        if let Some(k) = key {
            env.push(("MESHSCALE_CLI_API_KEY", k.to_string()));
        }
        env
    };
    for args in [
        &["policy", "set", "--file", good.as_str()][..],
        &["policy", "check", "--file", good.as_str()],
        &["policy", "get"],
    ] {
        let env = remote(None);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = s.cli_env(args, &env).await;
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} without a key: {stderr}"
        );
        assert!(stderr.contains("api key"), "{args:?}: {stderr}");

        let env = remote(Some(&key));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = s.cli_env(args, &env).await;
        assert!(
            out.status.success(),
            "{args:?} with a key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
