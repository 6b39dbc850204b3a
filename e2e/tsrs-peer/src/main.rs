//! A tailnet peer built on the official Rust client, the `tailscale` crate
//! (tailscale-rs), for interop tests against Meshscale and the official Go
//! client.
//!
//! It joins the tailnet of `--control-url` with a pre-auth key, serves a TCP
//! echo on `<its tailnet IPv4>:<--echo-port>`, then takes commands on stdin,
//! one per line, and answers on stdout with one machine-readable line each:
//!
//! ```text
//! READY <tailnet ipv4>                 once joined and listening
//! ACCEPTED <remote>                    the echo server took a connection
//! dial <ip:port> <nbytes>          ->  ECHO OK <ip:port> <nbytes> | ECHO FAIL <ip:port> <reason>
//! peer <ip>                        ->  PEER <ip> <hostname> | NOPEER <ip>
//! quit (or end of stdin, SIGTERM)  ->  BYE
//! ```
//!
//! Logs go to stderr. tailscale-rs has no log upload at all (no logtail
//! client), so nothing leaves the machine but traffic to the control server,
//! the DERP servers of the map it sends, and tailnet peers.
//!
//! Trust: tailscale-rs only trusts the compiled-in Mozilla roots
//! (`webpki-roots`, in ts_tls_util 0.6.1 `ROOT_CERT_STORE`); it has no option,
//! environment variable or file for another CA. So for an `https://` control
//! URL with `--ca-file`, this program verifies the server itself: it opens a
//! loopback listener and forwards each connection over TLS checked against
//! that CA, and hands tailscale-rs `http://127.0.0.1:<port>` (see
//! [`control_url_for_client`]). DERP has no such seam: the DERP map decides
//! where tailscale-rs dials, and it only skips verification for DERP nodes
//! marked `InsecureForTests` (with the `insecure-derp` feature turned on in
//! Cargo.toml).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tailscale::{AuthState, Config, Device};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Registration and the first netmap; generous because a loaded CI machine
/// runs the server, tailscaled and this at once.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// One `dial` command: connect, send, and read the echo back.
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest payload a `dial` command may ask for.
const MAX_DIAL_BYTES: usize = 1 << 20;
/// How long a graceful shutdown of the device may take before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Join a tailnet with tailscale-rs and act as a test peer (see the crate docs)"
)]
struct Args {
    /// The control server, e.g. `https://10.0.0.1:8443`.
    #[arg(long)]
    control_url: url::Url,
    /// PEM CA certificate(s) that sign the control server's certificate, when
    /// it is not from a public CA.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Pre-auth key. Prefer the environment variable: arguments are visible in
    /// the process list.
    #[arg(long, env = "MESHSCALE_TSRS_AUTH_KEY", hide_env_values = true)]
    auth_key: String,
    /// Hostname to request.
    #[arg(long)]
    hostname: String,
    /// Directory for the node's keys (`tsrs_keys.json`); reused on restart.
    #[arg(long)]
    state_dir: PathBuf,
    /// Tailnet TCP port of the echo server.
    #[arg(long, default_value_t = 7000)]
    echo_port: u16,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshscale-tsrs-peer: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshscale-tsrs-peer: {e:#}");
            println!("FAILED {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // ts_tls_util builds its TLS configs with `ClientConfig::builder()`, which
    // needs a process-wide provider when rustls has both `ring` (our
    // workspace's choice) and `aws-lc-rs` (tailscale-rs's) compiled in; it
    // panics otherwise. An error here only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let control_url = control_url_for_client(&args.control_url, args.ca_file.as_deref()).await?;
    let key_file = args.state_dir.join("tsrs_keys.json");
    let key_state = tailscale::config::load_key_file(&key_file, Default::default())
        .await
        .with_context(|| format!("cannot load or create the key file {}", key_file.display()))?;
    let config = Config {
        key_state,
        client_name: Some("meshscale-tsrs-peer".into()),
        control_server_url: control_url,
        requested_hostname: Some(args.hostname.clone()),
        requested_tags: Vec::new(),
        ephemeral: false,
    };

    let dev = tokio::time::timeout(JOIN_TIMEOUT, Device::new(&config, Some(args.auth_key)))
        .await
        .context("timed out starting the tailscale-rs device")?
        .context("cannot start the tailscale-rs device")?;
    match tokio::time::timeout(JOIN_TIMEOUT, dev.is_authorized())
        .await
        .context("timed out waiting for the control server to accept the node")?
        .context("registration failed")?
    {
        AuthState::Authorized => {}
        AuthState::NotAuthorized(url) => {
            bail!("the control server wants an interactive login ({url}): is the auth key valid?")
        }
    }
    let ip = tokio::time::timeout(JOIN_TIMEOUT, dev.ipv4_addr())
        .await
        .context("timed out waiting for the first netmap (our tailnet address)")?
        .context("no tailnet IPv4 address")?;

    let listen = SocketAddr::new(IpAddr::V4(ip), args.echo_port);
    let listener = dev
        .tcp_listen(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(conn) => {
                    say(&format!("ACCEPTED {}", conn.remote_addr()));
                    tokio::spawn(echo(conn));
                }
                Err(e) => {
                    tracing::error!(error = %e, "echo listener failed");
                    return;
                }
            }
        }
    });
    say(&format!("READY {ip}"));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.context("reading stdin")?,
            _ = sigterm.recv() => None,
        };
        let Some(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["quit"] => break,
            ["dial", addr, n] => say(&dial_command(&dev, addr, n).await),
            ["peer", ip] => say(&peer_command(&dev, ip).await),
            _ => say(&format!("ERROR unknown command: {line}")),
        }
    }
    if !dev.shutdown(Some(SHUTDOWN_TIMEOUT)).await {
        tracing::warn!("the device did not shut down in time; it was killed");
    }
    say("BYE");
    Ok(())
}

/// One protocol line on stdout, flushed at once: the test reads it live.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout means the test is gone; nothing useful is left to do.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The echo server's side of one connection. tailscale-rs streams cannot
/// half-close (their `poll_shutdown` is a no-op), so clients send a known
/// length and read it back rather than wait for EOF.
async fn echo(conn: tailscale::netstack::TcpStream) {
    let remote = conn.remote_addr();
    let (mut r, mut w) = tokio::io::split(conn);
    match tokio::io::copy(&mut r, &mut w).await {
        Ok(n) => tracing::info!(%remote, bytes = n, "echo connection closed"),
        Err(e) => tracing::info!(%remote, error = %e, "echo connection ended"),
    }
}

async fn dial_command(dev: &Device, addr: &str, n: &str) -> String {
    let result = async {
        let addr: SocketAddr = addr.parse().context("not an ip:port")?;
        let n: usize = n.parse().context("not a byte count")?;
        anyhow::ensure!(
            (1..=MAX_DIAL_BYTES).contains(&n),
            "byte count must be 1..={MAX_DIAL_BYTES}"
        );
        tokio::time::timeout(DIAL_TIMEOUT, dial_echo(dev, addr, n))
            .await
            .context("timed out")?
    }
    .await;
    match result {
        Ok(n) => format!("ECHO OK {addr} {n}"),
        // One line: the reason must not break the protocol.
        Err(e) => format!("ECHO FAIL {addr} {}", format!("{e:#}").replace('\n', " ")),
    }
}

/// Sends `n` patterned bytes to a TCP echo at `addr` and checks they come back.
async fn dial_echo(dev: &Device, addr: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let conn = dev
        .tcp_connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut r, mut w) = tokio::io::split(conn);
    let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    // Write and read at once: a large payload would otherwise fill both
    // directions' buffers and stall.
    let writer = async {
        w.write_all(&payload).await.context("send")?;
        w.flush().await.context("flush")?;
        Ok::<_, anyhow::Error>(())
    };
    let reader = async {
        let mut back = vec![0u8; n];
        r.read_exact(&mut back).await.context("read the echo")?;
        Ok::<_, anyhow::Error>(back)
    };
    let ((), back) = tokio::try_join!(writer, reader)?;
    anyhow::ensure!(back == payload, "the echo differs from what was sent");
    Ok(n)
}

async fn peer_command(dev: &Device, ip: &str) -> String {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return format!("ERROR not an IP address: {ip}");
    };
    match dev.peer_by_tailnet_ip(addr).await {
        Ok(Some(node)) => format!("PEER {addr} {}", node.hostname),
        Ok(None) => format!("NOPEER {addr}"),
        Err(e) => format!("ERROR peer lookup: {e}"),
    }
}

/// The URL tailscale-rs gets for the control server.
///
/// - `https://` with `--ca-file`: a loopback bridge that verifies the server
///   against the CA (tailscale-rs cannot be given one), so tailscale-rs talks
///   plain HTTP to the bridge. The Noise handshake inside is end to end with
///   the server and unchanged. tailscale-rs refuses to fetch the control key
///   (`/key`) over plain HTTP unless ts_control's `insecure-keyfetch` feature
///   is on (ts_control 0.6.1 `fetch_control_key`); the bridge is what makes
///   that fetch authenticated again.
/// - `https://` without a CA: as is (the server has a publicly trusted cert).
/// - `http://`: as is (plain-HTTP servers, unauthenticated key fetch).
async fn control_url_for_client(
    url: &url::Url,
    ca_file: Option<&Path>,
) -> anyhow::Result<url::Url> {
    let (Some(ca_file), "https") = (ca_file, url.scheme()) else {
        return Ok(url.clone());
    };
    let host = url
        .host_str()
        .context("the control URL has no host")?
        // An IPv6 literal comes back in brackets, which ServerName rejects.
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .context("the control URL has no port")?;
    let connector = tls_connector(ca_file)?;
    let server_name = ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a valid TLS server name"))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the loopback bridge to the control server")?;
    let local = listener.local_addr().context("bridge address")?;
    tracing::info!(%local, upstream = %url, "verifying TLS bridge to the control server");
    tokio::spawn(async move {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::warn!(error = %e, "bridge accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (connector, server_name, host) =
                (connector.clone(), server_name.clone(), host.clone());
            tokio::spawn(async move {
                if let Err(e) = bridge_one(client, &connector, server_name, &host, port).await {
                    tracing::warn!(error = %format!("{e:#}"), "control bridge connection failed");
                }
            });
        }
    });
    let mut bridged = url.clone();
    bridged
        .set_scheme("http")
        .map_err(|()| anyhow::anyhow!("cannot rewrite the control URL's scheme"))?;
    bridged
        .set_host(Some("127.0.0.1"))
        .context("cannot rewrite the control URL's host")?;
    bridged
        .set_port(Some(local.port()))
        .map_err(|()| anyhow::anyhow!("cannot rewrite the control URL's port"))?;
    Ok(bridged)
}

fn tls_connector(ca_file: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("cannot read the CA file {}", ca_file.display()))?
    {
        let cert = cert.with_context(|| format!("{} is not PEM", ca_file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable certificate", ca_file.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{} holds no certificate",
        ca_file.display()
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn bridge_one(
    mut client: TcpStream,
    connector: &TlsConnector,
    server_name: ServerName<'static>,
    host: &str,
    port: u16,
) -> anyhow::Result<()> {
    let upstream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connect {host}:{port}"))?;
    let _ = upstream.set_nodelay(true);
    let mut tls = connector
        .connect(server_name, upstream)
        .await
        .context("TLS handshake with the control server (certificate checked against --ca-file)")?;
    tokio::io::copy_bidirectional(&mut client, &mut tls)
        .await
        .context("forwarding")?;
    Ok(())
}
