//! `meshscale-operator`: `crds` prints the CRDs, `webhook-cert` makes a
//! serving certificate, `run` runs the operator and the injection webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meshscale_operator::admin::GrpcAdmin;
use meshscale_operator::kubeops::KubeClient;
use meshscale_operator::lease::Elector;
use meshscale_operator::reconcile::Ctx;
use meshscale_operator::webhook::{patch::InjectConfig, server, tls};
use meshscale_operator::{controller, crdgen};
use tracing::{error, info};

/// Manages Meshscale users, nodes and pre-auth keys as Kubernetes resources.
#[derive(Parser)]
#[command(name = "meshscale-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints the CRDs as YAML, or writes one file per CRD into --out.
    Crds {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Writes ca.crt, tls.crt and tls.key for the webhook Service into --out.
    WebhookCert {
        /// DNS names, e.g. meshscale-webhook.meshscale.svc
        #[arg(long = "dns", required = true)]
        dns: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Runs the controllers (on the lease holder) and the webhook (on every replica).
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The control server's admin gRPC address, https://HOST:PORT.
    #[arg(long, env = "MESHSCALE_CONTROL_SERVER")]
    control_server: String,
    /// CA (PEM) that signed the control server's gRPC certificate.
    #[arg(long, env = "MESHSCALE_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[arg(long, env = "MESHSCALE_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// File holding the admin API key (a mounted Secret). Never logged.
    #[arg(long, env = "MESHSCALE_API_KEY_FILE")]
    api_key_file: PathBuf,
    /// The operator's namespace: never injected, home of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshscale")]
    namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "meshscale-operator")]
    identity: String,
    #[arg(long, default_value = "meshscale-operator")]
    lease_name: String,
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    #[arg(long, default_value = "/etc/meshscale/webhook/tls.crt")]
    webhook_cert: PathBuf,
    #[arg(long, default_value = "/etc/meshscale/webhook/tls.key")]
    webhook_key: PathBuf,
    /// The sidecar image injected into pods.
    #[arg(long, env = "MESHSCALE_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// The login server URL injected pods use (the control server's public URL).
    #[arg(long, env = "MESHSCALE_LOGIN_SERVER")]
    login_server: String,
    /// Per-namespace Secret with the injected pods' auth key.
    #[arg(long, default_value = "meshscale-authkey")]
    inject_secret: String,
    /// Further namespaces never injected (kube-system and --namespace always are).
    #[arg(long = "exclude-namespace")]
    exclude_namespaces: Vec<String>,
    /// How often MeshNodes are re-synced from the control server.
    #[arg(long, default_value = "15")]
    node_sync_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crds { out } => crds(out),
        Cmd::WebhookCert { dns, out, days } => {
            let g = tls::generate(&dns, days)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("ca.crt"), g.ca_pem)?;
            std::fs::write(out.join("tls.crt"), g.cert_pem)?;
            write_private(&out.join("tls.key"), g.key_pem.as_bytes())?;
            Ok(())
        }
        Cmd::Run(args) => {
            init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(*args))
        }
    }
}

fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    Ok(())
}

fn crds(out: Option<PathBuf>) -> anyhow::Result<()> {
    let rendered = crdgen::render()?;
    match out {
        None => {
            for (_, yaml) in rendered {
                print!("---\n{yaml}");
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in rendered {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .json()
        .init();
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let api_key = std::fs::read_to_string(&args.api_key_file)
        .with_context(|| format!("reading the API key file {}", args.api_key_file.display()))?;
    let admin = GrpcAdmin::connect(
        &args.control_server,
        args.ca_file.as_deref(),
        args.tls_server_name.as_deref(),
        &api_key,
        Duration::from_secs(15),
    )?;
    drop(api_key);
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;

    let mut excluded = vec!["kube-system".to_string(), args.namespace.clone()];
    excluded.extend(args.exclude_namespaces.iter().cloned());
    let inject = Arc::new(InjectConfig {
        image: args.sidecar_image.clone(),
        login_server: args.login_server.clone(),
        secret_name: args.inject_secret.clone(),
        excluded_namespaces: excluded,
        healthz_port: 9099,
        cpu_request: "10m".into(),
        memory_request: "32Mi".into(),
    });
    let cert = Arc::new(
        tls::ReloadingCert::new(args.webhook_cert.clone(), args.webhook_key.clone())
            .context("loading the webhook certificate")?,
    );
    let listener = server::bind(args.webhook_addr).await?;
    info!(addr = %args.webhook_addr, "webhook listening");
    let webhook = tokio::spawn(server::serve(listener, tls::server_config(cert), inject));

    let elector = Elector::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
        Duration::from_secs(15),
    );
    let ctx = Arc::new(Ctx::new(admin, KubeClient(client.clone())));
    elector.acquire().await;
    tokio::select! {
        _ = controller::run(client, ctx, Duration::from_secs(args.node_sync_seconds.max(1))) => {
            info!("controllers stopped");
            Ok(())
        }
        _ = elector.hold() => {
            // Another replica may lead now: exit so Kubernetes restarts us as a follower.
            error!("leadership lost; exiting");
            bail!("leadership lost")
        }
        r = webhook => {
            bail!("webhook server stopped: {r:?}")
        }
    }
}
