//! `meshscale-sidecar`: the node agent. `up` runs the node in the
//! foreground; the other commands are thin clients of its local API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meshscale_controlclient::DiscoKey;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, error, info};

use meshscale_sidecar::localapi::{Request, Response};
use meshscale_sidecar::{control, engine, localapi, netmap, state, tun};

const DEFAULT_STATE_DIR: &str = "/var/lib/meshscale-sidecar";
const SOCKET_NAME: &str = "meshscale-sidecar.sock";

/// Puts a pod or a Linux host on a Meshscale mesh.
#[derive(Parser)]
#[command(name = "meshscale-sidecar", version, about)]
struct Cli {
    /// Where keys and the local API socket live.
    #[arg(long, global = true, env = "MESHSCALE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The local API socket (default: <state-dir>/meshscale-sidecar.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Joins the mesh and runs the node in the foreground.
    Up(UpArgs),
    /// Our node and every peer, like `tailscale status`.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Disco-pings a peer by name or mesh IP.
    Ping {
        peer: String,
        /// Number of pings (0: until direct or 10 pings).
        #[arg(short = 'c', long, default_value_t = 10)]
        count: u32,
        /// Stop at the first direct pong (the official client's default;
        /// `--until-direct=false` pings `-c` times whatever the path).
        #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
              action = clap::ArgAction::Set)]
        until_direct: bool,
    },
    /// Stops the running `up`.
    Down,
    /// Our mesh addresses.
    Ip {
        #[arg(short = '4')]
        v4: bool,
        #[arg(short = '6')]
        v6: bool,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, env = "MESHSCALE_LOGIN_SERVER")]
    login_server: String,
    /// Pre-auth key, `file:/path` to read it from a file, or set
    /// MESHSCALE_AUTHKEY. Never logged.
    #[arg(long, env = "MESHSCALE_AUTHKEY", hide_env_values = true)]
    authkey: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long)]
    ephemeral: bool,
    /// Extra trusted CA (PEM) for the control server and DERP.
    #[arg(long, env = "MESHSCALE_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[arg(long, default_value = "meshscale0")]
    tun: String,
    /// UDP port for WireGuard and disco (0: any).
    #[arg(long, default_value_t = 41641)]
    port: u16,
    /// Readiness endpoint (`GET /healthz`).
    #[arg(long, default_value = "127.0.0.1:9099")]
    healthz_addr: String,
    /// Tags to request for this node, comma-separated (`tag:web,tag:db`),
    /// sent as `Hostinfo.RequestTags` like the official client does.
    #[arg(long, value_name = "TAGS")]
    advertise_tags: Option<String>,
}

fn main() -> std::process::ExitCode {
    // One process-wide rustls provider, chosen here: a workspace build may
    // compile a second backend, and then rustls cannot pick one by itself.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshscale-sidecar: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshscale-sidecar: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .unwrap_or_else(|| cli.state_dir.join(SOCKET_NAME))
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let sock = socket_path(&cli);
    match &cli.cmd {
        Cmd::Up(args) => up(&cli.state_dir, &sock, args).await,
        Cmd::Status { json } => status(&sock, *json).await,
        Cmd::Ping {
            peer,
            count,
            until_direct,
        } => ping(&sock, peer, *count, *until_direct).await,
        Cmd::Down => match localapi::call(&sock, &Request::Down).await? {
            Response::Ok => Ok(()),
            other => bail!("unexpected answer: {other:?}"),
        },
        Cmd::Ip { v4, v6 } => {
            let st = get_status(&sock).await?;
            for ip in st.ips {
                if (*v4 && !ip.is_ipv4()) || (*v6 && !ip.is_ipv6()) {
                    continue;
                }
                println!("{ip}");
            }
            Ok(())
        }
    }
}

fn read_auth_key(arg: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(v) = arg else { return Ok(None) };
    let key = match v.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the auth key from {path}"))?
            .trim()
            .to_string(),
        None => v.trim().to_string(),
    };
    if key.is_empty() {
        bail!("the auth key is empty");
    }
    Ok(Some(key))
}

/// `--advertise-tags`: comma-separated, each `tag:` and a name that is a
/// DNS label starting with a letter (the official client's `CheckTag`,
/// lower case as our control server requires).
/// Duplicates are dropped; an empty list clears the request.
fn parse_tags(arg: &str) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for tag in arg.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        check_tag(tag).with_context(|| format!("invalid tag {tag:?}"))?;
        if !out.iter().any(|t| t == tag) {
            out.push(tag.to_string());
        }
    }
    Ok(out)
}

fn check_tag(tag: &str) -> anyhow::Result<()> {
    let Some(name) = tag.strip_prefix("tag:") else {
        bail!("tags must start with 'tag:'");
    };
    let Some(first) = name.bytes().next() else {
        bail!("tag names must not be empty");
    };
    if !first.is_ascii_lowercase() {
        bail!("tag names must start with a lower-case letter, after 'tag:'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("tag names can only contain lower-case letters, digits, or dashes (a DNS label)");
    }
    if name.ends_with('-') {
        bail!("tag names must not end with a dash");
    }
    if name.len() > 63 {
        bail!("tag names must be at most 63 characters (a DNS label)");
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHSCALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn up(state_dir: &Path, sock: &Path, args: &UpArgs) -> anyhow::Result<()> {
    init_tracing();
    let tags =
        parse_tags(args.advertise_tags.as_deref().unwrap_or("")).context("--advertise-tags")?;
    tun::preflight()?;
    let auth_key = read_auth_key(args.authkey.as_deref())?;
    let id = state::load_or_create(state_dir)?;
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "meshscale-sidecar".into()),
    };
    let extra_ca_pem = match &args.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading CA {}", p.display()))?),
        None => None,
    };
    let control_url: meshscale_controlclient::ServerUrl =
        args.login_server.parse().context("--login-server")?;
    let span = tracing::info_span!("node", host = %hostname, node = %id.node.public());
    async move {
        info!(fresh = id.fresh, "starting");
        let disco = Arc::new(DiscoKey::generate()?);
        let ready = Arc::new(AtomicBool::new(false));
        let (netmap_tx, netmap_rx) = watch::channel(Arc::new(netmap::NetMap::default()));
        let (local_tx, local_rx) = watch::channel(control::LocalInfo::default());
        let cfg = control::ControlConfig {
            server_url: args.login_server.clone(),
            auth_key,
            hostname: hostname.clone(),
            ephemeral: args.ephemeral,
            extra_ca_pem: extra_ca_pem.clone(),
            tags,
        };
        let logout_cfg = control::ControlConfig {
            server_url: cfg.server_url.clone(),
            auth_key: None,
            hostname: cfg.hostname.clone(),
            ephemeral: cfg.ephemeral,
            extra_ca_pem: cfg.extra_ca_pem.clone(),
            tags: cfg.tags.clone(),
        };
        let logout_id = id.clone();
        let node_key = id.node.clone();
        // Registration starts while the data plane is being set up: a new
        // pod waits for both, not for one after the other. The first netmap
        // waits in the watch channel until the engine reads it.
        let mut control = AbortOnDrop(tokio::spawn(
            control::run(cfg, id, disco.clone(), netmap_tx.clone(), local_rx).in_current_span(),
        ));
        let engine = engine::Engine::new(
            engine::EngineConfig {
                tun_name: args.tun.clone(),
                udp_port: args.port,
                extra_ca_pem: extra_ca_pem.clone(),
                control_host: control_url.host().to_string(),
            },
            node_key,
            disco,
            netmap_rx,
            local_tx,
            ready.clone(),
        )
        .await?;
        let filter = engine.filter();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let engine_task = tokio::spawn(engine.run(cmd_rx).in_current_span());

        let healthz = tokio::net::TcpListener::bind(&args.healthz_addr)
            .await
            .with_context(|| format!("binding /healthz on {}", args.healthz_addr))?;
        tokio::spawn(localapi::serve_healthz(healthz, ready.clone(), filter));

        let (down_tx, mut down_rx) = watch::channel(false);
        let sock_path = sock.to_path_buf();
        let api = tokio::spawn(
            async move {
                if let Err(e) = localapi::serve(&sock_path, cmd_tx, down_tx).await {
                    error!(error = %e, "local API stopped");
                }
            }
            .in_current_span(),
        );

        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut down = down_rx.clone();
        let result = tokio::select! {
            r = &mut control.0 => match r.unwrap_or_else(|e| Err(control::ControlError::Task(e.to_string()))) {
                Err(e @ (control::ControlError::LoggedOut(_) | control::ControlError::Expired)) => {
                    // Stay up so `status` and /healthz say why; exiting would
                    // make a supervisor restart us into the same refusal.
                    error!(error = %e, "node logged out: needs login; tunnels torn down");
                    netmap_tx.send_replace(Arc::new(netmap::NetMap {
                        logged_out: Some(e.to_string()),
                        ..netmap::NetMap::default()
                    }));
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => info!("interrupted"),
                        _ = sigterm.recv() => info!("terminated"),
                        _ = down.wait_for(|d| *d) => info!("down requested"),
                    }
                    Ok(())
                }
                r => r.map_err(anyhow::Error::from),
            },
            _ = tokio::signal::ctrl_c() => { info!("interrupted"); Ok(()) }
            _ = sigterm.recv() => { info!("terminated"); Ok(()) }
            _ = down_rx.wait_for(|d| *d) => {
                info!("down requested: logging out");
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    control::logout(&logout_cfg, &logout_id),
                )
                .await
                {
                    Ok(Ok(())) => info!("logged out"),
                    Ok(Err(e)) => error!(error = %e, "logout failed"),
                    Err(_) => error!("logout timed out"),
                }
                Ok(())
            }
        };
        // Give the `down` reply a moment to leave before the socket goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        api.abort();
        engine_task.abort();
        let _ = std::fs::remove_file(sock);
        result
    }
    .instrument(span)
    .await
}

/// A spawned task that stops when its handle goes (an early `?` return
/// must not leave the control session running).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn get_status(sock: &Path) -> anyhow::Result<engine::StatusReport> {
    match localapi::call(sock, &Request::Status).await? {
        Response::Status(s) => Ok(s),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn status(sock: &Path, json: bool) -> anyhow::Result<()> {
    let st = get_status(sock).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    let first_ip = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .find(|i| i.is_ipv4())
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<15} {:<20} {:<12} {:<8} -",
        first_ip(&st.ips),
        st.name,
        st.user,
        std::env::consts::OS
    );
    for p in &st.peers {
        let state = if p.online == Some(false) {
            "offline".to_string()
        } else if p.active {
            format!("active; {}, tx {} rx {}", p.path, p.tx_bytes, p.rx_bytes)
        } else {
            p.path.clone()
        };
        println!(
            "{:<15} {:<20} {:<12} {:<8} {state}",
            first_ip(&p.ips),
            p.name,
            p.user,
            p.os
        );
    }
    if st.state != "Running" {
        match &st.message {
            Some(m) => println!("# state: {} ({m})", st.state),
            None => println!("# state: {}", st.state),
        }
    }
    Ok(())
}

async fn ping(sock: &Path, peer: &str, count: u32, until_direct: bool) -> anyhow::Result<()> {
    let count = if count == 0 { 10 } else { count };
    let mut last_err = None;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let req = Request::Ping {
            target: peer.to_string(),
        };
        match localapi::call(sock, &req).await? {
            Response::Pong(p) => {
                let ip = p.ip.map(|i| i.to_string()).unwrap_or_default();
                println!(
                    "pong from {} ({ip}) via {} in {:.0}ms",
                    p.name, p.via, p.latency_ms
                );
                last_err = None;
                if until_direct && p.direct {
                    return Ok(());
                }
            }
            Response::Error(e) => {
                println!("ping {peer}: {e}");
                last_err = Some(e);
            }
            other => bail!("unexpected answer: {other:?}"),
        }
    }
    if until_direct {
        bail!("direct connection not established");
    }
    match last_err {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tags;

    #[test]
    fn advertise_tags_are_validated() {
        assert_eq!(
            parse_tags("tag:web, tag:db-2,tag:web").unwrap(),
            vec!["tag:web".to_string(), "tag:db-2".to_string()]
        );
        assert!(parse_tags("").unwrap().is_empty());
        for bad in [
            "web",
            "tag:",
            "tag:1web",
            "tag:-web",
            "tag:web-",
            "tag:Web",
            "tag:we_b",
            "tag:we.b",
            "tag:a,nottag",
        ] {
            let e = parse_tags(bad).expect_err(bad);
            assert!(format!("{e:#}").contains("invalid tag"), "{bad}: {e:#}");
        }
        assert!(parse_tags(&format!("tag:{}", "a".repeat(63))).is_ok());
        assert!(parse_tags(&format!("tag:{}", "a".repeat(64))).is_err());
    }
}
