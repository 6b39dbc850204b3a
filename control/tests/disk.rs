//! The store's disk full or read-only, while `meshscale serve` runs:
//! `/health` fails, writes fail cleanly (the CLI prints one clear line, a
//! registering node gets an HTTP error, nothing hangs or panics), what was
//! stored stays intact (SQLite `PRAGMA integrity_check`, every earlier row),
//! reads keep working, and service resumes once the disk is back, without a
//! restart.
//!
//! SQLite: the database lives on a small ext4 image the test loop-mounts
//! under its temporary directory and always unmounts (a drop guard, lazy so
//! that it works even while the server still holds the files; the loop
//! device is released with the last user). "Full" is a filler file written
//! until ENOSPC. "Read-only" is the
//! database and WAL files made immutable (`chattr +i`), which ext4 enforces
//! on already-open descriptors: Linux refuses `mount -o remount,ro` while a
//! file is open for writing (EBUSY), and ext4's own error-triggered
//! read-only remount cannot be undone without unmounting. Needs root;
//! skipped with `MESHSCALE_E2E_SKIP=1`.
//!
//! PostgreSQL: the test's database is switched to read-only
//! (`default_transaction_read_only = on`) and its sessions are terminated,
//! as a server that restarted on a read-only disk would look; "the disk is
//! back" is the setting switched off and the sessions terminated again.

#[allow(dead_code)]
#[path = "support/crash_support.rs"]
mod crash_support;
#[allow(dead_code)]
#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crash_support::{StoredNode, stored_nodes};
use meshscale_controlclient::{ClientError, ConnectOptions, ControlClient, MachineKey, requests};
use meshscale_wire::NodePublic;
use sqlx::{AnyPool, Executor};
use support::server::{BIN, free_port, http_get};
use support::{Db, postgres_url};
use tokio::process::{Child, Command};

/// How long the server may take to notice a fault or its end.
const NOTICE: Duration = Duration::from_secs(20);
/// The ext4 image holding the SQLite database.
const IMAGE_BYTES: u64 = 32 << 20;

/// Whether this run may mount filesystems; `false` means skip (said why).
fn can_mount() -> bool {
    if std::env::var("MESHSCALE_E2E_SKIP").as_deref() == Ok("1") {
        eprintln!("MESHSCALE_E2E_SKIP=1: the SQLite disk-fault test (needs root) is skipped");
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0");
    assert!(
        root,
        "the SQLite disk-fault test mounts a filesystem and needs root; run it as root or set \
         MESHSCALE_E2E_SKIP=1 to skip it"
    );
    for tool in ["mount", "umount", "mkfs.ext4", "chattr"] {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        assert!(
            on_path
                || ["/sbin", "/usr/sbin"]
                    .iter()
                    .any(|d| Path::new(d).join(tool).exists()),
            "`{tool}` is not installed; run e2e/setup.sh"
        );
    }
    true
}

/// Unmounts (lazily) when dropped, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A `meshscale serve` whose SQLite database sits on its own small
/// filesystem. Fields drop in order: the server dies before the unmount.
struct DiskServer {
    child: Child,
    _mounted: Mounted,
    config: PathBuf,
    http: SocketAddr,
    mount: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl DiskServer {
    async fn start() -> DiskServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("store.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .expect("image file");
        run_ok(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
        );
        let mount = dir.path().join("store");
        std::fs::create_dir(&mount).expect("mount point");
        run_ok(
            std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount),
        );
        let mounted = Mounted(mount.clone());
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "server_url: http://{http}\nlisten_addr: {http}\nmetrics_listen_addr: 127.0.0.1:{metrics}\n\
                 grpc_listen_addr: \"\"\ndata_dir: {data}\nunix_socket: {socket}\nlog:\n  level: debug\n\
                 derp:\n  server:\n    enabled: false\ndatabase:\n  type: sqlite\n  sqlite:\n    path: {db}\n",
                metrics = free_port(),
                data = dir.path().join("data").display(),
                socket = dir.path().join("run/meshscale.sock").display(),
                db = mount.join("db.sqlite").display(),
            ),
        )
        .expect("write config");
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshscale serve");
        let mut s = DiskServer {
            child,
            _mounted: mounted,
            config,
            http,
            mount,
            log,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("server exited early with {status}:\n{}", s.log_text());
            }
            if s.health().await == Some(true) && s.dir.path().join("run/meshscale.sock").exists() {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not become healthy:\n{}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn on_store(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    async fn health(&self) -> Option<bool> {
        health(self.http).await
    }

    async fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config, args).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    async fn db(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::pool::PoolOptions::<sqlx::Any>::new()
            .max_connections(1)
            .connect(&crash_support::sqlite_url(&self.on_store("db.sqlite")))
            .await
            .expect("open the database read-only")
    }
}

fn warnings(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_ok(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Some(true)` pass, `Some(false)` fail (503), `None` no answer.
async fn health(addr: SocketAddr) -> Option<bool> {
    match http_get(addr, "/health").await {
        Ok((200, body)) if body.trim() == r#"{"status":"pass"}"# => Some(true),
        Ok((503, body)) if body.trim() == r#"{"status":"fail"}"# => Some(false),
        Ok((code, body)) => panic!("/health: unexpected {code} {body:?}"),
        Err(_) => None,
    }
}

async fn wait_health(addr: SocketAddr, want: bool, ctx: &str) {
    let deadline = tokio::time::Instant::now() + NOTICE;
    while health(addr).await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ctx}: /health did not turn {}",
            if want { "pass" } else { "fail" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cli(config: &Path, args: &[&str]) -> Output {
    let run = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output();
    tokio::time::timeout(NOTICE, run)
        .await
        .unwrap_or_else(|_| panic!("meshscale {args:?} hung"))
        .expect("run meshscale")
}

fn stdout(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "meshscale {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CLI write refused: exit 1, one line on stderr that says why.
fn assert_refused(out: &Output, why: &[&str], ctx: &str, log: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{ctx}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{ctx}: {stderr:?}");
    assert!(
        stderr.contains("database is unavailable") && why.iter().any(|w| stderr.contains(w)),
        "{ctx}: unclear error {stderr:?}, want {why:?}; server log:\n{log}"
    );
}

/// One registration attempt with a fresh machine: `Ok(true)` admitted.
async fn register(url: &str, key: &str) -> Result<bool, ClientError> {
    let machine = MachineKey::generate().expect("machine key");
    let node = NodePublic::from_bytes(rand::random());
    let attempt = async {
        let c = ControlClient::connect(url, &machine, ConnectOptions::default()).await?;
        c.register(requests::register_with_auth_key(
            node,
            key,
            requests::hostinfo("disk"),
        ))
        .await
    };
    let r = tokio::time::timeout(NOTICE, attempt)
        .await
        .expect("registration hung");
    r.map(|r| mesh::authorized(&r))
}

async fn assert_registration_refused(url: &str, key: &str, ctx: &str) {
    match register(url, key).await {
        Err(ClientError::Status { status: 503, .. }) => {}
        other => panic!("{ctx}: registration should get 503, got {other:?}"),
    }
}

async fn json_nodes(config: &Path) -> Vec<serde_json::Value> {
    let args = ["nodes", "list", "-o", "json"];
    let text = stdout(&cli(config, &args).await, &args);
    serde_json::from_str::<Vec<serde_json::Value>>(&text).expect("nodes JSON")
}

/// Every earlier row is there, unchanged.
fn assert_kept(before: &[StoredNode], now: &[StoredNode], ctx: &str) {
    for b in before {
        let n = now
            .iter()
            .find(|n| n.id == b.id)
            .unwrap_or_else(|| panic!("{ctx}: node {} lost", b.id));
        assert_eq!(
            (&n.machine_key, &n.node_key, &n.ipv4, &n.ipv6, &n.given_name),
            (&b.machine_key, &b.node_key, &b.ipv4, &b.ipv6, &b.given_name),
            "{ctx}: node {} changed",
            b.id
        );
    }
}

async fn integrity_ok(db: &AnyPool, ctx: &str) {
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(db)
        .await
        .expect("integrity_check");
    assert_eq!(verdict, "ok", "{ctx}");
}

/// Writes zeros until the filesystem refuses with ENOSPC.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    // Delayed allocation may defer the refusal to here.
    let _ = f.sync_all();
}

fn chattr(flag: &str, paths: &[PathBuf]) {
    for p in paths {
        run_ok(std::process::Command::new("chattr").arg(flag).arg(p));
    }
}

/// Undoes `chattr +i` if the test fails half-way (the files live on in the
/// image until the server process ends).
struct Mutable(Vec<PathBuf>);

impl Drop for Mutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .status();
        }
    }
}

/// Everything a fault must leave intact and refuse, checked while it lasts.
async fn during_fault(s: &DiskServer, key: &str, before: &[StoredNode], why: &[&str], ctx: &str) {
    wait_health(s.http, false, ctx).await;
    assert_refused(
        &s.cli(&["users", "create", "refused"]).await,
        why,
        ctx,
        &s.log_text(),
    );
    assert_registration_refused(&s.url(), key, ctx).await;
    assert_eq!(
        json_nodes(&s.config).await.len(),
        before.len(),
        "{ctx}: reads keep working"
    );
    let db = s.db().await;
    integrity_ok(&db, ctx).await;
    let now = stored_nodes(&db).await;
    assert_eq!(now.len(), before.len(), "{ctx}: nothing half-written");
    assert_kept(before, &now, ctx);
    assert!(
        !user_names(&db).await.iter().any(|u| u == "refused"),
        "{ctx}: a refused user was stored"
    );
    db.close().await;
}

async fn user_names(db: &AnyPool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM users")
        .fetch_all(db)
        .await
        .expect("read users")
}

/// Service is back: health, a CLI write and a registration succeed.
async fn after_fault(s: &DiskServer, key: &str, user: &str, ctx: &str) -> Vec<StoredNode> {
    wait_health(s.http, true, ctx).await;
    let out = s.cli(&["users", "create", user]).await;
    assert!(
        out.status.success(),
        "{ctx}: users create: {}\nserver warnings:\n{}",
        String::from_utf8_lossy(&out.stderr),
        warnings(&s.log_text())
    );
    assert!(
        register(&s.url(), key).await.expect("registration"),
        "{ctx}"
    );
    let db = s.db().await;
    integrity_ok(&db, ctx).await;
    // The CLI said yes: the user must really be stored.
    assert!(
        user_names(&db).await.iter().any(|u| u == user),
        "{ctx}: user {user} acknowledged but not stored"
    );
    let nodes = stored_nodes(&db).await;
    db.close().await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_and_read_only() {
    if !can_mount() {
        return;
    }
    let s = DiskServer::start().await;
    stdout(&s.cli(&["users", "create", "vpn1"]).await, &["users"]);
    let args = [
        "preauthkeys",
        "create",
        "--user",
        "vpn1",
        "--reusable",
        "--expiration",
        "1h",
    ];
    let key = stdout(&s.cli(&args).await, &args).trim().to_string();
    for _ in 0..5 {
        assert!(register(&s.url(), &key).await.expect("register"));
    }
    let db = s.db().await;
    let before = stored_nodes(&db).await;
    db.close().await;
    assert_eq!(before.len(), 5);

    // Full.
    let filler = s.on_store("filler");
    fill(&filler);
    during_fault(&s, &key, &before, &["disk is full"], "disk full").await;
    std::fs::remove_file(&filler).expect("remove filler");
    let before = after_fault(&s, &key, "vpn2", "disk freed").await;
    assert_eq!(before.len(), 6);

    // Read-only.
    let files = vec![s.on_store("db.sqlite"), s.on_store("db.sqlite-wal")];
    let guard = Mutable(files.clone());
    chattr("+i", &files);
    // Writes through connections opened before fail with EPERM (an I/O
    // error to SQLite); connections opened since are read-only.
    during_fault(&s, &key, &before, &["I/O error", "read-only"], "read-only").await;
    chattr("-i", &files);
    drop(guard);
    let after = after_fault(&s, &key, "vpn3", "writable again").await;
    assert_eq!(after.len(), 7);
    assert_kept(&before, &after, "at the end");
    assert!(
        !s.log_text().contains("panicked"),
        "the server panicked:\n{}",
        s.log_text()
    );
}

async fn pg_admin() -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = postgres_url().expect("postgres url");
    AnyPool::connect(&url).await.expect("connect to PostgreSQL")
}

/// Switches the database's default (for new sessions); with `terminate`,
/// ends its sessions too, as a database server restarting would.
async fn pg_read_only(admin: &AnyPool, name: &str, on: bool, terminate: bool) {
    admin
        .execute(
            format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = {}",
                if on { "on" } else { "off" }
            )
            .as_str(),
        )
        .await
        .expect("alter database");
    if !terminate {
        return;
    }
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            .as_str(),
        )
        .await
        .expect("terminate sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_only() {
    if postgres_url().is_none() {
        return;
    }
    let s = support::server::start(&Db::Postgres, "").await;
    let name = s.pg.as_ref().expect("postgres").name.clone();
    s.ok(&["users", "create", "vpn1"]).await;
    let key = mesh::preauth_key(&s, "vpn1", &["--reusable"]).await;
    let url = mesh::server_url(&s);
    for _ in 0..5 {
        assert!(register(&url, &key).await.expect("register"));
    }
    let db = crash_support::open_db(&s).await;
    let before = stored_nodes(&db).await;
    assert_eq!(before.len(), 5);
    let admin = pg_admin().await;

    pg_read_only(&admin, &name, true, true).await;
    let ctx = "read-only";
    wait_health(s.http, false, ctx).await;
    assert_refused(
        &s.cli(&["users", "create", "refused"]).await,
        &["read-only"],
        ctx,
        &s.log_text(),
    );
    assert_registration_refused(&url, &key, ctx).await;
    assert_eq!(mesh::nodes(&s).await.len(), 5, "{ctx}: reads keep working");
    let now = stored_nodes(&db).await;
    assert_eq!(now.len(), 5, "{ctx}");
    assert_kept(&before, &now, ctx);

    // Only new sessions are writable: the server must drop the old ones.
    pg_read_only(&admin, &name, false, false).await;
    let ctx = "writable again";
    wait_health(s.http, true, ctx).await;
    s.ok(&["users", "create", "vpn2"]).await;
    assert!(register(&url, &key).await.expect("registration"), "{ctx}");
    let now = stored_nodes(&db).await;
    assert_eq!(now.len(), 6, "{ctx}");
    assert_kept(&before, &now, ctx);
    db.close().await;
    admin.close().await;
}
