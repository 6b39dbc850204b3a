//! The official client in a namespace: `tailscaled` with its own state,
//! socket and TUN, and the `tailscale` CLI pointed at that socket.
//!
//! Safety settings, always on: `--no-logs-no-support` and
//! `TS_NO_LOGS_NO_SUPPORT=true` (no log uploads), `--accept-dns=false` on `up`
//! (tailscaled must never rewrite the machine's resolv.conf), and a clean
//! environment whose only trust root is the test's CA.

use std::collections::BTreeMap;
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
use crate::{Server, Tools};

/// The WireGuard/disco UDP port. Fixed rather than random so logs and NAT
/// mappings are easy to read; every node is in its own namespace.
pub const UDP_PORT: u16 = 41641;
/// The TUN device each tailscaled creates in its namespace.
pub const TUN: &str = "tailscale0";
/// How long `tailscale up` may take against a live server.
pub const UP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TsNode {
    ns: Ns,
    hostname: String,
    dir: PathBuf,
    socket: PathBuf,
    tailscale: PathBuf,
    tailscaled: PathBuf,
    ca: PathBuf,
    log: PathBuf,
    daemon: Option<Proc>,
}

/// `tailscale status --json`, the fields the tests read.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    #[serde(rename = "BackendState")]
    pub backend_state: String,
    #[serde(rename = "AuthURL", default)]
    pub auth_url: String,
    #[serde(rename = "Self")]
    pub self_: Option<PeerStatus>,
    #[serde(rename = "Peer", default)]
    pub peer: Option<BTreeMap<String, PeerStatus>>,
    #[serde(rename = "Health", default)]
    pub health: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PeerStatus {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "HostName", default)]
    pub host_name: String,
    #[serde(rename = "DNSName", default)]
    pub dns_name: String,
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "Online", default)]
    pub online: bool,
    /// The DERP region code this peer is reached through (its home relay).
    #[serde(rename = "Relay", default)]
    pub relay: String,
    /// The peer's endpoints as the control server announced them.
    #[serde(rename = "Addrs", default)]
    pub addrs: Option<Vec<String>>,
    /// The direct `ip:port` in use; empty while traffic is relayed.
    #[serde(rename = "CurAddr", default)]
    pub cur_addr: String,
}

impl Status {
    pub fn peers(&self) -> impl Iterator<Item = &PeerStatus> {
        self.peer.iter().flat_map(|m| m.values())
    }

    /// The peer whose HostName is `host`.
    pub fn peer_named(&self, host: &str) -> Option<&PeerStatus> {
        self.peers().find(|p| p.host_name == host)
    }

    pub fn self_ips(&self) -> Vec<String> {
        self.self_
            .as_ref()
            .and_then(|s| s.tailscale_ips.clone())
            .unwrap_or_default()
    }
}

impl PeerStatus {
    pub fn ips(&self) -> Vec<String> {
        self.tailscale_ips.clone().unwrap_or_default()
    }
}

/// One `pong` line of `tailscale ping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PongPath {
    /// `via DERP(<region code>)`
    Derp(String),
    /// `via <ip>:<port>`
    Direct(String),
    /// Anything else `via ...` (peer relays, future formats), verbatim.
    Other(String),
}

/// Parses the `via ...` part of every `pong from ...` line.
pub fn pong_paths(output: &str) -> Vec<PongPath> {
    output
        .lines()
        .filter(|l| l.starts_with("pong from"))
        .filter_map(|l| l.split(" via ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|via| {
            if let Some(code) = via.strip_prefix("DERP(").and_then(|r| r.strip_suffix(')')) {
                PongPath::Derp(code.to_string())
            } else if via.parse::<std::net::SocketAddr>().is_ok() {
                PongPath::Direct(via.to_string())
            } else {
                PongPath::Other(via.to_string())
            }
        })
        .collect()
}

impl TsNode {
    /// Starts tailscaled in `ns` with state in `<lab>/<hostname>/`, and waits
    /// until its socket answers. `hostname` is what `up` will announce.
    pub fn start(
        lab: &Lab,
        tools: &Tools,
        ns: &Ns,
        hostname: &str,
        server: &Server,
    ) -> anyhow::Result<TsNode> {
        let dir = lab.subdir(hostname)?;
        let log = dir.join("tailscaled.log");
        lab.register_log(&log);
        let mut node = TsNode {
            ns: ns.clone(),
            hostname: hostname.to_string(),
            socket: dir.join("tailscaled.sock"),
            dir,
            tailscale: tools.tailscale.clone(),
            tailscaled: tools.tailscaled.clone(),
            ca: server.ca().to_path_buf(),
            log,
            daemon: None,
        };
        node.spawn_daemon()?;
        Ok(node)
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn ns(&self) -> &Ns {
        &self.ns
    }

    fn spawn_daemon(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.ns.command(&self.tailscaled);
        cmd.arg("--no-logs-no-support")
            .arg(format!("--statedir={}", self.dir.display()))
            .arg(format!(
                "--state={}",
                self.dir.join("tailscaled.state").display()
            ))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--tun={TUN}"))
            .arg(format!("--port={UDP_PORT}"))
            // A TPM, if the machine has one, is not the test's to use.
            .arg("--encrypt-state=false");
        self.client_env(&mut cmd);
        self.daemon = Some(Proc::spawn(
            &format!("tailscaled {}", self.hostname),
            cmd,
            &self.log,
        )?);
        eventually("tailscaled to answer on its socket", SHORT, || {
            if let Some(d) = self.daemon.as_mut()
                && let Some(status) = d.exited()?
            {
                return Err(Fatal(format!("tailscaled exited during start-up ({status})")).into());
            }
            self.status().map(|_| ())
        })
        .map(|_| ())
    }

    /// A clean environment for tailscaled and the CLI: the test's CA as the
    /// only trust root, no log uploads, caches, logs and config inside the
    /// test dir.
    fn client_env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            // Else tailscaled keeps its log config in /var/lib/tailscale.
            .env("TS_LOGS_DIR", &self.dir)
            .env("SSL_CERT_FILE", &self.ca)
            .env("SSL_CERT_DIR", self.dir.join("no-cert-dir"));
    }

    /// `tailscale --socket=<ours> <args>`, run inside the node's namespace.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(&self.tailscale);
        self.client_env(&mut cmd);
        cmd.arg(format!("--socket={}", self.socket.display()))
            .args(args);
        cmd
    }

    pub fn cli(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        cmd::run(&mut self.cli_command(args), timeout)
    }

    /// The arguments of `tailscale up` every test uses; `extra` adds to them.
    pub fn up_args(&self, server: &Server, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "up".into(),
            format!("--login-server={}", server.url()),
            format!("--hostname={}", self.hostname),
            "--accept-dns=false".into(),
            format!("--timeout={}s", UP_TIMEOUT.as_secs()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `tailscale up` with a pre-auth key; returns the output whatever the
    /// outcome, so refusals can be checked too.
    pub fn up_with_key(&self, server: &Server, key: &str) -> anyhow::Result<Output> {
        let args = self.up_args(server, &[&format!("--auth-key={key}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args, UP_TIMEOUT + Duration::from_secs(10))
    }

    /// `up_with_key` that must succeed, then waits for `Running`.
    pub fn join(&self, server: &Server, key: &str) -> anyhow::Result<Status> {
        let out = self.up_with_key(server, key)?;
        if !out.success() {
            bail!(
                "`tailscale up` on {} failed ({}):\n{}",
                self.hostname,
                out.status,
                out.combined().trim_end()
            );
        }
        self.wait_state("Running", SHORT)
    }

    /// `tailscale up` without a key, in the background: it prints the login
    /// URL and waits. Its output goes to `<lab>/<hostname>/up.log`.
    pub fn spawn_interactive_up(&self, lab: &Lab, server: &Server) -> anyhow::Result<Proc> {
        let log = self.dir.join("up.log");
        lab.register_log(&log);
        let args = self.up_args(server, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(
            &format!("tailscale up ({})", self.hostname),
            self.cli_command(&args),
            &log,
        )
    }

    /// `tailscale status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<Status> {
        let out = self.cli(&["status", "--json"], SHORT)?;
        // `status` exits non-zero in some states (NeedsLogin) but still prints JSON.
        serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "`tailscale status --json` on {} printed no status ({}): {}",
                self.hostname,
                out.status,
                out.combined().trim_end()
            )
        })
    }

    /// Polls until BackendState is `state`.
    pub fn wait_state(&self, state: &str, timeout: Duration) -> anyhow::Result<Status> {
        eventually(
            &format!("{} to reach BackendState {state}", self.hostname),
            timeout,
            || {
                let s = self.status()?;
                anyhow::ensure!(
                    s.backend_state == state,
                    "BackendState is {} (health: {:?})",
                    s.backend_state,
                    s.health
                );
                Ok(s)
            },
        )
    }

    /// Polls until `peer` is listed and online, with addresses.
    pub fn wait_peer_online(&self, peer: &str, timeout: Duration) -> anyhow::Result<PeerStatus> {
        eventually(
            &format!("{} to see {peer} online", self.hostname),
            timeout,
            || {
                let s = self.status()?;
                let p = s
                    .peer_named(peer)
                    .with_context(|| format!("{peer} is not among the peers"))?;
                anyhow::ensure!(p.online, "{peer} is listed but offline: {p:?}");
                anyhow::ensure!(!p.ips().is_empty(), "{peer} has no addresses: {p:?}");
                Ok(p.clone())
            },
        )
    }

    /// The node's own Tailscale IPv4 and IPv6 addresses, from its status.
    pub fn addresses(&self) -> anyhow::Result<(String, String)> {
        let ips = self.status()?.self_ips();
        let v4 = ips.iter().find(|a| !a.contains(':'));
        let v6 = ips.iter().find(|a| a.contains(':'));
        match (v4, v6) {
            (Some(v4), Some(v6)) => Ok((v4.clone(), v6.clone())),
            _ => bail!("{} has no IPv4 and IPv6 address: {ips:?}", self.hostname),
        }
    }

    /// `tailscale ping <args> <target>`; the output whatever the outcome
    /// (it exits non-zero when no direct path is found in `-c` pings).
    pub fn ping(&self, target: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["ping"];
        all.extend_from_slice(args);
        all.push(target);
        self.cli(&all, Duration::from_secs(60))
    }

    /// Kills tailscaled with SIGKILL: the node vanishes without logging out.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        let mut d = self.daemon.take().context("tailscaled is not running")?;
        d.kill()?;
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}
