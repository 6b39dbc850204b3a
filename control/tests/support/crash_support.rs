//! Helpers for the fault tests (`crash.rs`, `disk.rs`): killing a server
//! hard, and reading its database directly, behind the server's back, to
//! check what a crash or a failing disk left there.
//!
//! Included as `#[path = "support/crash_support.rs"] mod crash_support;`
//! next to `mod support;`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use meshscale_control::config::DatabaseTarget;
use sqlx::{AnyPool, Row};

use crate::support::server::Server;

/// Sends SIGKILL to `pid` and waits until the process is dead (gone or a
/// zombie), so its listening ports are free for a restart.
pub async fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed: {status}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Field 3, after the parenthesised command name.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return,
            Some(_) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still alive after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A direct connection to `s`'s database (SQLite: read-only).
pub async fn open_db(s: &Server) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = match &s.pg {
        None => sqlite_url(&s.data_dir().join("db.sqlite")),
        Some(pg) => match crate::support::postgres_target(pg) {
            DatabaseTarget::Postgres { url, .. } => url,
            other => panic!("not a PostgreSQL target: {other:?}"),
        },
    };
    sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=ro", path.display())
}

/// One `nodes` row as stored.
#[derive(Debug, Clone)]
pub struct StoredNode {
    pub id: i64,
    pub machine_key: String,
    pub node_key: String,
    pub given_name: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub auth_key_id: Option<i64>,
}

pub async fn stored_nodes(db: &AnyPool) -> Vec<StoredNode> {
    let rows = sqlx::query(
        "SELECT id, machine_key, node_key, given_name, ipv4, ipv6, auth_key_id FROM nodes ORDER BY id",
    )
    .fetch_all(db)
    .await
    .expect("read nodes");
    rows.iter()
        .map(|r| StoredNode {
            id: r.get("id"),
            machine_key: r.get("machine_key"),
            node_key: r.get("node_key"),
            given_name: r.get("given_name"),
            ipv4: r.get("ipv4"),
            ipv6: r.get("ipv6"),
            auth_key_id: r.get("auth_key_id"),
        })
        .collect()
}

/// One `pre_auth_keys` row as stored.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: i64,
    pub prefix: String,
    pub reusable: bool,
    pub used: bool,
}

pub async fn stored_keys(db: &AnyPool) -> Vec<StoredKey> {
    let rows = sqlx::query("SELECT id, prefix, reusable, used FROM pre_auth_keys ORDER BY id")
        .fetch_all(db)
        .await
        .expect("read pre-auth keys");
    rows.iter()
        .map(|r| StoredKey {
            id: r.get("id"),
            prefix: r.get("prefix"),
            reusable: r.get::<i64, _>("reusable") != 0,
            used: r.get::<i64, _>("used") != 0,
        })
        .collect()
}

/// The key's stored prefix: `mskey-auth-<prefix>-<secret>`.
pub fn key_prefix(full: &str) -> &str {
    full.strip_prefix("mskey-auth-")
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_else(|| panic!("not a pre-auth key: {}", full.len()))
}

/// Every node has both addresses, and no address or name is held twice.
pub fn assert_unique(nodes: &[StoredNode], ctx: &str) {
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    let mut names = HashSet::new();
    for n in nodes {
        let a4 = n
            .ipv4
            .clone()
            .unwrap_or_else(|| panic!("{ctx}: no IPv4: {n:?}"));
        let a6 = n
            .ipv6
            .clone()
            .unwrap_or_else(|| panic!("{ctx}: no IPv6: {n:?}"));
        assert!(v4.insert(a4.clone()), "{ctx}: IPv4 {a4} held twice");
        assert!(v6.insert(a6.clone()), "{ctx}: IPv6 {a6} held twice");
        assert!(
            names.insert(n.given_name.clone()),
            "{ctx}: name {} held twice",
            n.given_name
        );
    }
}

/// Single-use keys admitted at most one machine, and a key is marked used
/// exactly when a node registered with it (the mark and the node commit
/// together or not at all).
pub fn assert_single_use(keys: &[StoredKey], nodes: &[StoredNode], ctx: &str) {
    let mut per_key: HashMap<i64, usize> = HashMap::new();
    for n in nodes {
        if let Some(k) = n.auth_key_id {
            *per_key.entry(k).or_default() += 1;
        }
    }
    for k in keys.iter().filter(|k| !k.reusable) {
        let count = per_key.get(&k.id).copied().unwrap_or(0);
        assert!(
            count <= 1,
            "{ctx}: single-use key {} admitted {count} nodes",
            k.id
        );
        assert_eq!(
            k.used,
            count == 1,
            "{ctx}: key {} used={} with {count} nodes",
            k.id,
            k.used
        );
    }
}
