//! The real `meshscale` binary end to end: `serve` on a real SQLite file or
//! PostgreSQL database, and the Headscale-style CLI against it.

mod support;

use serde_json::Value;
use support::server::{Server, eventually, http_get, start};
use support::{Db, backends};

fn column_names(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split(" | ")
        .map(|c| c.trim().to_string())
        .collect()
}

fn row_with<'a>(table: &'a str, needle: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in\n{table}"))
}

async fn register(s: &Server, host: &str, user: &str) -> Value {
    let id = s
        .ok(&["debug", "create-node", "--name", host, "--user", user])
        .await;
    let id = id.trim();
    assert_eq!(id.len(), 24, "registration id {id:?}");
    assert_eq!(
        s.ok(&["nodes", "register", "--key", id, "--user", user])
            .await
            .trim(),
        "Node registered"
    );
    let nodes = s.json(&["nodes", "list"]).await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == host)
        .cloned()
        .expect("registered node listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headscale_admin_flow() {
    for db in backends() {
        let s = start(&db, "").await;
        let ctx = db.name();

        // Users.
        assert_eq!(
            s.ok(&["users", "create", "vpn1"]).await.trim(),
            "User created"
        );
        assert_eq!(
            s.ok(&["users", "create", "vpn2", "--email", "two@example.com"])
                .await
                .trim(),
            "User created"
        );
        let table = s.ok(&["users", "list"]).await;
        assert_eq!(
            column_names(&table),
            ["ID", "Name", "Username", "Email", "Created"],
            "{ctx}: {table}"
        );
        assert!(row_with(&table, "vpn2").contains("two@example.com"));
        let users = s.json(&["users", "list"]).await;
        assert_eq!(users.as_array().unwrap().len(), 2);
        assert_eq!(users[0]["name"], "vpn1");
        let yaml = s.ok(&["users", "list", "-o", "yaml"]).await;
        assert!(yaml.contains("name: vpn1"), "{yaml}");
        let lines = s.ok(&["users", "list", "-o", "json-line"]).await;
        assert_eq!(lines.trim().lines().count(), 1, "{lines}");
        let filtered = s.json(&["users", "list", "--name", "vpn2"]).await;
        assert_eq!(filtered.as_array().unwrap().len(), 1);
        assert_eq!(
            s.ok(&["users", "rename", "--name", "vpn2", "--new-name", "vpn3"])
                .await
                .trim(),
            "User renamed"
        );
        assert_eq!(
            s.json(&["users", "list", "-i", "2"]).await[0]["name"],
            "vpn3"
        );

        // Pre-auth keys: by user id and by name; shown once, then only a prefix.
        let key = s
            .ok(&[
                "preauthkeys",
                "create",
                "--user",
                "1",
                "--reusable",
                "--expiration",
                "24h",
                "--ephemeral",
            ])
            .await;
        let key = key.trim().to_string();
        let (prefix, secret) = key
            .strip_prefix("mskey-auth-")
            .and_then(|r| r.split_once('-'))
            .expect("key shape");
        assert_eq!((prefix.len(), secret.len()), (12, 64), "{key}");
        s.ok(&["preauthkeys", "create", "--user", "vpn1"]).await;
        let table = s.ok(&["preauthkeys", "list", "--user", "1"]).await;
        assert_eq!(
            column_names(&table),
            [
                "ID",
                "Key/Prefix",
                "Reusable",
                "Ephemeral",
                "Used",
                "Expiration",
                "Created",
                "Owner"
            ],
            "{table}"
        );
        assert!(
            table.contains(prefix) && !table.contains(secret),
            "{ctx}: listing must not show the secret"
        );
        let keys = s.json(&["preauthkeys", "list", "--user", "1"]).await;
        let keys = keys.as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (
                keys[0]["reusable"].as_bool(),
                keys[0]["ephemeral"].as_bool()
            ),
            (Some(true), Some(true))
        );
        assert_eq!(
            (keys[1]["reusable"].as_bool(), keys[1]["used"].as_bool()),
            (Some(false), Some(false))
        );
        assert!(!serde_json::to_string(&keys).unwrap().contains(secret));
        assert_eq!(
            s.ok(&["preauthkeys", "expire", "--id", "1"]).await.trim(),
            "Key expired"
        );
        let expired = &s.json(&["preauthkeys", "list"]).await[0];
        let at =
            chrono::DateTime::parse_from_rfc3339(expired["expiration"].as_str().unwrap()).unwrap();
        assert!(
            at <= chrono::Utc::now(),
            "{ctx}: expired key must have an expiration in the past"
        );

        // Nodes.
        let n1 = register(&s, "nodo1", "vpn1").await;
        let n2 = register(&s, "nodo2", "vpn1").await;
        assert_eq!(
            n1["ip_addresses"],
            serde_json::json!(["100.64.0.1", "fd7a:115c:a1e0::1"]),
            "{ctx}"
        );
        assert_eq!(
            n2["ip_addresses"],
            serde_json::json!(["100.64.0.2", "fd7a:115c:a1e0::2"]),
            "{ctx}"
        );
        let table = s.ok(&["nodes", "list"]).await;
        assert_eq!(
            column_names(&table),
            [
                "ID",
                "Hostname",
                "Name",
                "MachineKey",
                "NodeKey",
                "User",
                "Tags",
                "IP addresses",
                "Ephemeral",
                "Last seen",
                "Expiration",
                "Connected",
                "Expired"
            ],
            "{table}"
        );
        let row = row_with(&table, "nodo1");
        assert!(
            row.contains("100.64.0.1, fd7a:115c:a1e0::1") && row.contains("offline"),
            "{row}"
        );
        let mkey = n1["machine_key"].as_str().unwrap();
        assert!(
            row.contains(&format!("[{}]", &mkey[5..11])) && !row.contains(mkey),
            "keys are shortened: {row}"
        );

        assert_eq!(
            s.ok(&["nodes", "rename", "-i", "1", "web"]).await.trim(),
            "Node renamed"
        );
        assert_eq!(s.json(&["nodes", "list"]).await[0]["given_name"], "web");
        assert_eq!(
            s.ok(&["nodes", "expire", "-i", "2"]).await.trim(),
            "Node expired"
        );
        assert_eq!(s.json(&["nodes", "list"]).await[1]["expired"], true);
        assert!(
            row_with(&s.ok(&["nodes", "list"]).await, "nodo2")
                .trim_end()
                .ends_with("yes")
        );
        assert_eq!(
            s.ok(&["nodes", "move", "-i", "1", "-u", "vpn3"])
                .await
                .trim(),
            "Node moved to another user"
        );
        let mine = s.json(&["nodes", "list", "--user", "vpn3"]).await;
        assert_eq!(mine.as_array().unwrap().len(), 1);
        assert_eq!(mine[0]["id"], 1);
        s.ok(&["nodes", "tag", "-i", "1", "-t", "tag:web,tag:prod"])
            .await;
        assert_eq!(
            s.json(&["nodes", "list", "-u", "vpn3"]).await[0]["tags"],
            serde_json::json!(["tag:prod", "tag:web"])
        );
        assert_eq!(
            s.ok(&["nodes", "delete", "-i", "2", "--force"])
                .await
                .trim(),
            "Node deleted"
        );
        assert_eq!(
            s.json(&["nodes", "list"]).await.as_array().unwrap().len(),
            1
        );

        // API keys.
        let api = s.ok(&["apikeys", "create", "--expiration", "90d"]).await;
        let api = api.trim();
        assert!(api.starts_with("mskey-api-"), "{api}");
        let table = s.ok(&["apikeys", "list"]).await;
        assert_eq!(
            column_names(&table),
            ["ID", "Prefix", "Expiration", "Created"]
        );
        let api_prefix = &api["mskey-api-".len()..][..12];
        assert!(
            table.contains(api_prefix) && !table.contains(api),
            "{table}"
        );
        assert_eq!(
            s.ok(&["apikeys", "expire", "--prefix", api_prefix])
                .await
                .trim(),
            "Key expired"
        );
        assert_eq!(
            s.ok(&["apikeys", "delete", "--id", "1"]).await.trim(),
            "Key deleted"
        );
        assert!(
            s.json(&["apikeys", "list"])
                .await
                .as_array()
                .unwrap()
                .is_empty()
        );

        // Destroying a user needs --force without a terminal, then expels its nodes and keys.
        let line = s.fails(&["users", "destroy", "vpn3"]).await;
        assert!(line.contains("--force"), "{line}");
        assert_eq!(
            s.json(&["nodes", "list"]).await.as_array().unwrap().len(),
            1,
            "{ctx}: refused destroy changes nothing"
        );
        assert_eq!(
            s.ok(&["users", "destroy", "vpn3", "--force"]).await.trim(),
            "User destroyed"
        );
        assert!(
            s.json(&["nodes", "list"])
                .await
                .as_array()
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s.json(&["users", "list"]).await.as_array().unwrap().len(),
            1
        );
        assert_eq!(
            s.ok(&["users", "destroy", "--identifier", "1", "--force"])
                .await
                .trim(),
            "User destroyed"
        );
        assert!(
            s.json(&["preauthkeys", "list"])
                .await
                .as_array()
                .unwrap()
                .is_empty(),
            "{ctx}: keys revoked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_and_changes_nothing() {
    for db in backends() {
        let s = start(&db, "").await;
        s.ok(&["users", "create", "vpn1"]).await;
        register(&s, "nodo1", "vpn1").await;
        let snapshot = || async {
            (
                s.json(&["users", "list"]).await,
                s.json(&["nodes", "list"]).await,
                s.json(&["preauthkeys", "list"]).await,
                s.json(&["apikeys", "list"]).await,
            )
        };
        let before = snapshot().await;
        let cases: &[(&[&str], &str)] = &[
            (&["users", "create", "vpn1"], "already exists"),
            (&["users", "create", "Bad_Name"], "not a valid DNS label"),
            (&["users", "create", "-bad"], "not a valid DNS label"),
            (
                &["users", "rename", "--name", "nobody", "--new-name", "x"],
                "nobody",
            ),
            (&["users", "destroy", "nobody", "--force"], "nobody"),
            (&["preauthkeys", "create", "--user", "nobody"], "nobody"),
            (&["preauthkeys", "create", "--user", "99"], "99"),
            (
                &[
                    "preauthkeys",
                    "create",
                    "--user",
                    "1",
                    "--expiration",
                    "-1h",
                ],
                "negative",
            ),
            (
                &[
                    "preauthkeys",
                    "create",
                    "--user",
                    "1",
                    "--expiration",
                    "soon",
                ],
                "soon",
            ),
            (&["preauthkeys", "expire", "--id", "42"], "not found"),
            (&["nodes", "delete", "-i", "999", "--force"], "not found"),
            (&["nodes", "rename", "-i", "999", "x"], "not found"),
            (&["nodes", "rename", "-i", "1", "Not Valid"], "DNS label"),
            (&["nodes", "expire", "-i", "999"], "not found"),
            (&["nodes", "move", "-i", "1", "-u", "nobody"], "nobody"),
            (
                &[
                    "nodes",
                    "register",
                    "--key",
                    "000000000000000000000000",
                    "--user",
                    "vpn1",
                ],
                "registration id",
            ),
            (&["nodes", "tag", "-i", "1", "-t", "prod"], "tag:"),
            (
                &["apikeys", "expire", "--prefix", "000000000000"],
                "not found",
            ),
            (&["apikeys", "create", "--expiration", "1x"], "1x"),
            (&["users", "destroy", "vpn1"], "--force"),
        ];
        for (args, want) in cases {
            let line = s.fails(args).await;
            assert!(line.starts_with("Error: "), "{args:?}: {line}");
            assert!(
                line.contains(want),
                "{}: {args:?}: {line:?} should mention {want:?}",
                db.name()
            );
        }
        assert_eq!(
            snapshot().await,
            before,
            "{}: failed commands must not change the store",
            db.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_registrations_get_distinct_addresses() {
    for db in backends() {
        let s = start(&db, "").await;
        s.ok(&["users", "create", "vpn1"]).await;
        let mut ids = Vec::new();
        for i in 0..200 {
            ids.push(
                s.ok(&[
                    "debug",
                    "create-node",
                    "--name",
                    &format!("n{i}"),
                    "--user",
                    "vpn1",
                ])
                .await
                .trim()
                .to_string(),
            );
        }
        // Every CLI process registers at once; the server sees 200 concurrent registrations.
        let mut running = Vec::new();
        for id in &ids {
            let mut cmd = tokio::process::Command::new(support::server::BIN);
            cmd.arg("-c")
                .arg(&s.config)
                .args(["nodes", "register", "--key", id, "--user", "vpn1"]);
            cmd.stdin(std::process::Stdio::null());
            running.push(tokio::spawn(cmd.output()));
        }
        for r in running {
            let out = r.await.unwrap().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                db.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let nodes = s.json(&["nodes", "list"]).await;
        let nodes = nodes.as_array().unwrap();
        assert_eq!(nodes.len(), 200);
        let mut all: Vec<String> = nodes
            .iter()
            .flat_map(|n| {
                n["ip_addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
            })
            .collect();
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            total,
            "{}: an address was handed out twice",
            db.name()
        );
        assert_eq!(total, 400);
        assert!(
            all.contains(&"100.64.0.200".to_string()) && !all.contains(&"100.64.0.201".to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    for db in backends() {
        let mut s = start(&db, "").await;
        s.ok(&["users", "create", "vpn1"]).await;
        s.ok(&["preauthkeys", "create", "--user", "vpn1", "--reusable"])
            .await;
        s.ok(&["apikeys", "create"]).await;
        register(&s, "nodo1", "vpn1").await;
        let before = (
            s.json(&["users", "list"]).await,
            s.json(&["nodes", "list"]).await,
            s.json(&["preauthkeys", "list"]).await,
        );
        s.stop().await;
        assert!(!s.socket.exists(), "the socket is removed on shutdown");
        s.spawn().await;
        let after = (
            s.json(&["users", "list"]).await,
            s.json(&["nodes", "list"]).await,
            s.json(&["preauthkeys", "list"]).await,
        );
        assert_eq!(before, after, "{}", db.name());
        // The allocator continues after a restart rather than starting over.
        let n2 = register(&s, "nodo2", "vpn1").await;
        assert_eq!(n2["ip_addresses"][0], "100.64.0.2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_store_and_metrics_are_exposed() {
    for db in backends() {
        let s = start(&db, "").await;
        let (code, body) = http_get(s.http, "/health").await.unwrap();
        assert_eq!(
            (code, body.contains(r#""status":"pass""#)),
            (200, true),
            "{body}"
        );

        s.ok(&["users", "create", "vpn1"]).await;
        register(&s, "nodo1", "vpn1").await;
        let (code, metrics) = http_get(s.metrics, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        for want in [
            r#"meshscale_http_requests_total{path="/health",code="200"}"#,
            r#"meshscale_grpc_requests_total{method="RegisterNode",code="Ok"} 1"#,
            r#"meshscale_nodes{state="offline"} 1"#,
            r#"meshscale_store_operation_duration_seconds_count{op="register_node",result="ok"} 1"#,
        ] {
            assert!(
                metrics.contains(want),
                "{}: /metrics lacks {want}:\n{metrics}",
                db.name()
            );
        }

        // Take the store away, see /health fail, give it back, see it pass.
        match &s.pg {
            None => {
                let file = s.data_dir().join("db.sqlite");
                let moved = s.data_dir().join("db.sqlite.away");
                std::fs::rename(&file, &moved).unwrap();
                let (code, body) = http_get(s.http, "/health").await.unwrap();
                assert_eq!(
                    (code, body.contains(r#""status":"fail""#)),
                    (503, true),
                    "{body}"
                );
                std::fs::rename(&moved, &file).unwrap();
            }
            Some(pg) => {
                let admin = admin_pool().await;
                sqlx::query(&format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
                    pg.name
                ))
                .execute(&admin)
                .await
                .unwrap();
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(&pg.name)
                .execute(&admin)
                .await
                .unwrap();
                eventually("health to fail with the database refusing connections", || async {
                    matches!(http_get(s.http, "/health").await, Ok((503, b)) if b.contains(r#""status":"fail""#))
                })
                .await;
                sqlx::query(&format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    pg.name
                ))
                .execute(&admin)
                .await
                .unwrap();
            }
        }
        eventually("health to pass again", || async {
            matches!(http_get(s.http, "/health").await, Ok((200, _)))
        })
        .await;
        assert_eq!(
            s.json(&["users", "list"]).await[0]["name"],
            "vpn1",
            "{}: data intact",
            db.name()
        );
    }
}

async fn admin_pool() -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&support::postgres_url().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn unix_socket_is_owner_only_and_config_errors_name_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let s = start(&Db::Sqlite, "").await;
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    for (text, key) in [
        ("prefixes:\n  v4: 10.0.0.0/8\n", "prefixes.v4"),
        ("database:\n  type: oracle\n", "database.type"),
        ("listen_addr: [1, 2]\n", "listen_addr"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = tokio::process::Command::new(support::server::BIN)
            .args(["serve", "-c"])
            .arg(&bad)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(
            stderr.contains(key),
            "{text}: error should name {key}: {stderr}"
        );
    }
    let out = tokio::process::Command::new(support::server::BIN)
        .args(["configtest", "-c"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn runs_with_no_config_file_on_defaults() {
    // No config file at all: only the environment moves the ports and data
    // directory away from the machine-wide defaults so tests can run in parallel.
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", support::server::free_port());
    let metrics = format!("127.0.0.1:{}", support::server::free_port());
    let sock = dir.path().join("s.sock");
    let mut child = tokio::process::Command::new(support::server::BIN)
        .arg("serve")
        .env("MESHSCALE_DATA_DIR", dir.path().join("data"))
        .env("MESHSCALE_LISTEN_ADDR", &http)
        .env("MESHSCALE_SERVER_URL", format!("http://{http}"))
        .env("MESHSCALE_METRICS_LISTEN_ADDR", &metrics)
        .env("MESHSCALE_UNIX_SOCKET", &sock)
        .env("MESHSCALE_DERP_SERVER_ENABLED", "false")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = http.parse().unwrap();
    eventually("server on defaults to be healthy", || async {
        matches!(http_get(addr, "/health").await, Ok((200, _)))
    })
    .await;
    assert!(
        dir.path().join("data/db.sqlite").exists(),
        "SQLite in the data dir"
    );
    let out = tokio::process::Command::new(support::server::BIN)
        .args(["users", "create", "vpn1"])
        .env("MESHSCALE_UNIX_SOCKET", &sock)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.kill().await.unwrap();
}
