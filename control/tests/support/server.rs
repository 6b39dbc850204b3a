//! A real `meshscale serve` process on free loopback ports, driven through
//! the real `meshscale` CLI.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{Db, FreshDb, fresh_postgres};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshscale");
const START_DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    pub socket: PathBuf,
    pub pg: Option<FreshDb>,
    child: Option<Child>,
    pub log: PathBuf,
}

/// Extra YAML appended to the generated config.
pub async fn start(db: &Db, extra: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_postgres().await),
    };
    let mut s = Server {
        config: dir.path().join("config.yaml"),
        http: SocketAddr::from(([127, 0, 0, 1], free_port())),
        metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
        socket: dir.path().join("run/meshscale.sock"),
        log: dir.path().join("server.log"),
        dir,
        pg,
        child: None,
    };
    let database = match &s.pg {
        None => "database:\n  type: sqlite\n".to_string(),
        Some(pg) => format!(
            "database:\n  type: postgres\n  postgres:\n    host: {}\n    port: {}\n    name: {}\n    user: {}\n",
            pg.host, pg.port, pg.name, pg.user
        ),
    };
    let config = format!(
        "server_url: http://{http}\nlisten_addr: {http}\nmetrics_listen_addr: {metrics}\n{grpc}\
         data_dir: {data}\nunix_socket: {socket}\nlog:\n  level: debug\nderp:\n  server:\n    enabled: false\n{database}{extra}",
        http = s.http,
        metrics = s.metrics,
        data = s.dir.path().join("data").display(),
        socket = s.socket.display(),
        grpc = if extra.contains("grpc_listen_addr") {
            ""
        } else {
            "grpc_listen_addr: \"\"\n"
        },
    );
    std::fs::write(&s.config, config).expect("write config");
    s.spawn().await;
    s
}

impl Server {
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshscale serve");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "meshscale serve exited early with {status}:\n{}",
                    self.log_text()
                );
            }
            if self.is_ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not become healthy:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Healthy over plain HTTP; with TLS on the main listener (no HTTPS client
    /// here), accepting connections and serving the admin socket.
    async fn is_ready(&self) -> bool {
        if !self.socket.exists() {
            return false;
        }
        let tls = std::fs::read_to_string(&self.config).is_ok_and(|c| c.contains("tls_cert_path"));
        if tls {
            tokio::net::TcpStream::connect(self.http).await.is_ok()
        } else {
            matches!(http_get(self.http, "/health").await, Ok((200, _)))
        }
    }

    /// SIGTERM, then wait for the process to end (it must end by itself).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
            assert!(
                matches!(status, Ok(Ok(s)) if s.success()),
                "server did not stop cleanly: {status:?}\n{}",
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `meshscale -c <config> ARGS` with no terminal on stdin.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[]).await
    }

    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.expect("run meshscale")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(
            out.status.success(),
            "meshscale {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command that must fail with status 1 and one line on stderr; returns that line.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "meshscale {args:?} should fail with 1; stderr: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "meshscale {args:?}: one line on stderr, got {stderr:?}"
        );
        stderr.trim_end().to_string()
    }

    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let text = self.ok(&full).await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("meshscale {args:?} -o json: {e}: {text}"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// A minimal HTTP/1.1 GET, enough for /health and /metrics without an HTTP client crate.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Polls until `f` holds or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
