//! `meshscale serve` inside a namespace, on HTTPS with a throwaway CA, and
//! the admin CLI, which talks to the server's unix socket from the host (the
//! socket is a file in the test's directory, so the namespace is no barrier).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::cmd::{self, Output, SHORT};
use crate::lab::Lab;
use crate::netns::Ns;
use crate::poll::{Fatal, eventually};
use crate::process::Proc;
use crate::{Tools, certs};

/// Port of the main (HTTPS, node protocol, DERP) listener.
pub const HTTPS_PORT: u16 = 8443;
/// Port of the STUN listener.
pub const STUN_PORT: u16 = 3478;
/// How long a start may take before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Server {
    ns: Ns,
    ip: String,
    bin: PathBuf,
    config: PathBuf,
    ca: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

/// One entry of `meshscale nodes list -o json` (the fields the tests read).
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    pub name: String,
    pub given_name: String,
    pub ip_addresses: Vec<String>,
    pub online: bool,
    pub ephemeral: bool,
    pub user: Option<UserInfo>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UserInfo {
    pub id: u64,
    pub name: String,
}

/// `meshscale preauthkeys create -o json`: the one time the full key is shown.
#[derive(Debug, Clone, Deserialize)]
pub struct PreAuthKey {
    pub id: u64,
    pub key: String,
}

impl Server {
    /// Writes certificates and config into `<lab>/server/` and starts the
    /// server in `ns`, listening on `ip` (an address of `ns`). `extra_yaml`
    /// is appended to the config (top-level keys not set here).
    pub fn start(
        lab: &Lab,
        tools: &Tools,
        ns: &Ns,
        ip: &str,
        extra_yaml: &str,
    ) -> anyhow::Result<Server> {
        let dir = lab.subdir("server")?;
        let certs = certs::write(&dir, ip)?;
        let config = dir.join("config.yaml");
        let log = dir.join("server.log");
        std::fs::write(&config, config_yaml(&dir, ip, &certs, extra_yaml))
            .with_context(|| format!("write {}", config.display()))?;
        lab.register_log(&log);
        let mut server = Server {
            ns: ns.clone(),
            ip: ip.to_string(),
            bin: tools.meshscale.clone(),
            config,
            ca: certs.ca,
            log,
            proc: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `https://<ip>:8443`, what clients use as `--login-server`.
    pub fn url(&self) -> String {
        format!("https://{}:{HTTPS_PORT}", self.ip)
    }

    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Starts the server (again) with the same config and waits until it
    /// answers both HTTPS (from inside its namespace) and the admin socket.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("the server is already running");
        }
        let mut cmd = self.ns.command(&self.bin);
        cmd.arg("-c").arg(&self.config).arg("serve");
        // The server's log format does not depend on a terminal; keep it plain.
        cmd.env("NO_COLOR", "1");
        let proc = Proc::spawn("meshscale serve", cmd, &self.log)?;
        self.proc = Some(proc);
        eventually(
            "the server to answer /health and the CLI",
            START_TIMEOUT,
            || {
                if let Some(p) = self.proc.as_mut()
                    && let Some(status) = p.exited()?
                {
                    return Err(Fatal(format!(
                        "meshscale serve exited during start-up ({status})"
                    ))
                    .into());
                }
                let health = self.https_get("/health")?;
                anyhow::ensure!(health.contains("pass"), "/health said {health}");
                self.cli(&["users", "list"])?;
                Ok(())
            },
        )
        .map_err(|e| e.context("meshscale serve did not come up (see server.log)"))
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut proc = self.proc.take().context("the server is not running")?;
        proc.signal(libc::SIGTERM)?;
        let status = proc.wait_exit(STOP_TIMEOUT)?;
        anyhow::ensure!(
            status.success(),
            "meshscale serve exited with {status} on SIGTERM"
        );
        Ok(())
    }

    /// GET `path` over HTTPS from inside the server's namespace, verifying
    /// the certificate against our CA; returns the body.
    pub fn https_get(&self, path: &str) -> anyhow::Result<String> {
        self.https_get_from(&self.ns, path)
    }

    /// GET `path` over HTTPS from inside namespace `from`.
    pub fn https_get_from(&self, from: &Ns, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.url());
        let mut c = from.command("curl");
        c.args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .arg("--cacert")
            .arg(&self.ca)
            .arg(&url);
        cmd::run_ok(&mut c, SHORT)
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-c").arg(&self.config).args(args);
        c
    }

    /// Runs the admin CLI; whatever the exit status.
    pub fn cli_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        cmd::run(&mut self.cli_command(args), SHORT)
    }

    /// Runs the admin CLI and returns its stdout; fails on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cmd::run_ok(&mut self.cli_command(args), SHORT)
    }

    /// `cli` with `-o json`, parsed.
    pub fn cli_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all)?;
        serde_json::from_str(&out).with_context(|| {
            format!(
                "`meshscale {}` printed unexpected JSON: {out}",
                all.join(" ")
            )
        })
    }

    pub fn create_user(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&["users", "create", name])?;
        Ok(())
    }

    /// `preauthkeys create --user <user> --expiration 1h <flags>`.
    pub fn create_key(&self, user: &str, flags: &[&str]) -> anyhow::Result<PreAuthKey> {
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            user,
            "--expiration",
            "1h",
        ];
        args.extend_from_slice(flags);
        let key: PreAuthKey = self.cli_json(&args)?;
        anyhow::ensure!(
            key.key.starts_with("mskey-auth-") && !key.key.contains('*'),
            "preauthkeys create did not print a usable key: {key:?}"
        );
        Ok(key)
    }

    /// `nodes list -o json`.
    pub fn nodes(&self) -> anyhow::Result<Vec<NodeInfo>> {
        // An empty list may print as `null`.
        let nodes: Option<Vec<NodeInfo>> = self.cli_json(&["nodes", "list"])?;
        Ok(nodes.unwrap_or_default())
    }
}

fn config_yaml(dir: &Path, ip: &str, certs: &certs::CertPaths, extra: &str) -> String {
    format!(
        "# Written by the meshscale e2e harness.\n\
         server_url: https://{ip}:{HTTPS_PORT}\n\
         listen_addr: {ip}:{HTTPS_PORT}\n\
         # Inside the server's namespace, so it cannot clash with anything.\n\
         metrics_listen_addr: 127.0.0.1:9090\n\
         grpc_listen_addr: \"\"\n\
         tls_cert_path: {cert}\n\
         tls_key_path: {key}\n\
         data_dir: {data}\n\
         unix_socket: {socket}\n\
         derp:\n  server:\n    stun_listen_addr: {ip}:{STUN_PORT}\n\
         log:\n  level: debug\n\
         {extra}\n",
        cert = certs.cert.display(),
        key = certs.key.display(),
        data = dir.join("data").display(),
        socket = dir.join("run/meshscale.sock").display(),
    )
}
