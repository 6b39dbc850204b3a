//! `meshscale-operator`: `crds` prints the CRDs, `webhook-cert` makes a
//! serving certificate, `run` runs the operator and the injection webhook.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meshscale_operator::admin::Admin;
use meshscale_operator::admin::GrpcAdmin;
use meshscale_operator::injectkey::KeyDefaults;
use meshscale_operator::kubeops::Kube;
use meshscale_operator::kubeops::KubeClient;
use meshscale_operator::lease::Elector;
use meshscale_operator::reconcile::Ctx;
use meshscale_operator::webhook::patch::{CaSource, InjectConfig, is_quantity};
use meshscale_operator::webhook::{certs, server, tls};
use meshscale_operator::{controller, crdgen, duration, metrics};
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
    /// Serves only the injection webhook over HTTPS, with no Kubernetes client.
    Webhook(Box<WebhookArgs>),
}

/// What the webhook injects: shared by `run` and `webhook`, so the
/// standalone server behaves exactly like the operator's.
#[derive(clap::Args)]
struct InjectArgs {
    /// The sidecar image injected into pods.
    #[arg(long, env = "MESHSCALE_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// The login server URL injected pods use (the control server's public URL).
    #[arg(long, env = "MESHSCALE_LOGIN_SERVER")]
    login_server: String,
    /// Per-namespace Secret with the injected pods' auth key (the default
    /// user's); pods with `meshscale.dev/user`/`tags` get `<this>-<user>-<hash>`.
    #[arg(long, default_value = "meshscale-authkey")]
    inject_secret: String,
    /// The control-server user injected pods join as without `meshscale.dev/user`.
    #[arg(long, env = "MESHSCALE_INJECT_USER", default_value = "k8s")]
    inject_user: String,
    /// Tags of injected pods without `meshscale.dev/tags` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tag:k8s")]
    inject_tags: Vec<String>,
    /// Lifetime of an injection key.
    #[arg(long, default_value = "30d")]
    inject_key_expiration: String,
    /// A new injection key is issued this long before the current one expires.
    #[arg(long, default_value = "7d")]
    inject_key_rotate_before: String,
    /// Secret (in each injected pod's namespace) with the CA bundle of the
    /// login server, mounted into the sidecar as --ca-file.
    #[arg(long, conflicts_with = "sidecar_ca_configmap")]
    sidecar_ca_secret: Option<String>,
    /// ConfigMap (in each injected pod's namespace) with that CA bundle.
    #[arg(long)]
    sidecar_ca_configmap: Option<String>,
    /// The data key of the CA bundle in that Secret or ConfigMap.
    #[arg(long, default_value = "ca.crt")]
    sidecar_ca_key: String,
    /// Further namespaces never injected (kube-system and --namespace always are).
    #[arg(long = "exclude-namespace")]
    exclude_namespaces: Vec<String>,
    /// The sidecar's CPU request (annotation `meshscale.dev/cpu` overrides it).
    #[arg(long, default_value = "10m")]
    sidecar_cpu_request: String,
    /// The sidecar's memory request (annotation `meshscale.dev/memory`).
    #[arg(long, default_value = "32Mi")]
    sidecar_memory_request: String,
    /// The sidecar's CPU limit, none by default (annotation `meshscale.dev/cpu-limit`).
    #[arg(long)]
    sidecar_cpu_limit: Option<String>,
    /// The sidecar's memory limit, none by default (annotation `meshscale.dev/memory-limit`).
    #[arg(long)]
    sidecar_memory_limit: Option<String>,
}

/// The webhook alone, without a cluster or control server: for tests, and for
/// running the injector apart from the operator. It serves the certificate as
/// it is (reloaded when the files change) and never talks to Kubernetes.
#[derive(clap::Args)]
struct WebhookArgs {
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The namespace the operator runs in: never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshscale")]
    namespace: String,
    #[command(flatten)]
    inject: InjectArgs,
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
    /// Plain HTTP: /metrics (Prometheus), /healthz and /readyz (probes).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    #[arg(long, default_value = "/etc/meshscale/webhook/tls.crt")]
    webhook_cert: PathBuf,
    #[arg(long, default_value = "/etc/meshscale/webhook/tls.key")]
    webhook_key: PathBuf,
    /// The Secret (in --namespace) the webhook certificate is mounted from. When
    /// set, the leader issues the certificate, renews it before expiry and keeps
    /// --webhook-config's caBundle in step; unset, the files are used as they are.
    #[arg(long)]
    webhook_secret: Option<String>,
    /// The MutatingWebhookConfiguration whose caBundle the operator maintains.
    #[arg(long, requires = "webhook_secret")]
    webhook_config: Option<String>,
    /// DNS names of the webhook Service, e.g. meshscale-webhook.meshscale.svc.
    #[arg(long = "webhook-dns", requires = "webhook_secret")]
    webhook_dns: Vec<String>,
    #[command(flatten)]
    inject: InjectArgs,
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
        Cmd::Webhook(args) => {
            init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(webhook_only(*args))
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

fn cert_target(args: &RunArgs) -> anyhow::Result<Option<certs::CertTarget>> {
    let Some(secret) = args.webhook_secret.clone() else {
        return Ok(None);
    };
    let Some(webhook_config) = args.webhook_config.clone() else {
        bail!("--webhook-secret needs --webhook-config");
    };
    if args.webhook_dns.is_empty() {
        bail!("--webhook-secret needs at least one --webhook-dns");
    }
    Ok(Some(certs::CertTarget {
        namespace: args.namespace.clone(),
        secret,
        webhook_config,
        dns_names: args.webhook_dns.clone(),
        days: 365,
        renew_before: chrono::Duration::days(30),
    }))
}

/// The leader's certificate loop: at start (so the caBundle is right before
/// the first pod arrives), then twice a day; a failure retries within minutes.
async fn renew_webhook_cert<A: Admin, K: Kube>(t: certs::CertTarget, ctx: Arc<Ctx<A, K>>) {
    loop {
        let wait = match certs::ensure(&t, &ctx, chrono::Utc::now()).await {
            Ok(_) => Duration::from_secs(12 * 3600),
            Err(e) => {
                error!(error = %e, "webhook certificate check failed");
                Duration::from_secs(120)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The injection key settings, checked at start: a bad duration would
/// otherwise only show up as a failing PreAuthKey in every namespace.
fn key_defaults(args: &InjectArgs) -> anyhow::Result<KeyDefaults> {
    let lifetime = duration::parse(&args.inject_key_expiration)
        .map_err(|e| anyhow::anyhow!("--inject-key-expiration: {e}"))?;
    let rotate = duration::parse(&args.inject_key_rotate_before)
        .map_err(|e| anyhow::anyhow!("--inject-key-rotate-before: {e}"))?;
    if rotate >= lifetime {
        bail!("--inject-key-rotate-before must be shorter than --inject-key-expiration");
    }
    Ok(KeyDefaults {
        secret_prefix: args.inject_secret.clone(),
        user: args.inject_user.clone(),
        tags: args
            .inject_tags
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        expiration: args.inject_key_expiration.clone(),
        rotate_before: args.inject_key_rotate_before.clone(),
    })
}

fn check_quantity(flag: &str, v: &str) -> anyhow::Result<()> {
    if !is_quantity(v) {
        bail!("{flag}: {v:?} is not a resource quantity (e.g. 100m, 64Mi)");
    }
    Ok(())
}

/// The injection settings, checked at start so a typo fails the rollout
/// instead of every admission.
fn inject_config(args: &InjectArgs, own_namespace: &str) -> anyhow::Result<InjectConfig> {
    let mut excluded = vec!["kube-system".to_string(), own_namespace.to_string()];
    excluded.extend(args.exclude_namespaces.iter().cloned());
    check_quantity("--sidecar-cpu-request", &args.sidecar_cpu_request)?;
    check_quantity("--sidecar-memory-request", &args.sidecar_memory_request)?;
    for (flag, v) in [
        ("--sidecar-cpu-limit", &args.sidecar_cpu_limit),
        ("--sidecar-memory-limit", &args.sidecar_memory_limit),
    ] {
        if let Some(v) = v {
            check_quantity(flag, v)?;
        }
    }
    let ca = match (&args.sidecar_ca_secret, &args.sidecar_ca_configmap) {
        (Some(name), _) => Some(CaSource::Secret {
            name: name.clone(),
            key: args.sidecar_ca_key.clone(),
        }),
        (None, Some(name)) => Some(CaSource::ConfigMap {
            name: name.clone(),
            key: args.sidecar_ca_key.clone(),
        }),
        (None, None) => None,
    };
    Ok(InjectConfig {
        image: args.sidecar_image.clone(),
        login_server: args.login_server.clone(),
        keys: key_defaults(args)?,
        ca,
        excluded_namespaces: excluded,
        healthz_port: 9099,
        cpu_request: args.sidecar_cpu_request.clone(),
        memory_request: args.sidecar_memory_request.clone(),
        cpu_limit: args.sidecar_cpu_limit.clone(),
        memory_limit: args.sidecar_memory_limit.clone(),
    })
}

async fn webhook_only(args: WebhookArgs) -> anyhow::Result<()> {
    let inject = Arc::new(inject_config(&args.inject, &args.namespace)?);
    let cert = Arc::new(
        tls::ReloadingCert::new(args.cert.clone(), args.key.clone())
            .context("loading the webhook certificate")?,
    );
    let listener = server::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    // The bound address, so a caller that asked for port 0 learns the port.
    let addr = listener.local_addr()?;
    info!(addr = %addr, "webhook listening");
    println!("listening on {addr}");
    server::serve(listener, tls::server_config(cert), inject).await?;
    bail!("webhook server stopped")
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

    let keys = key_defaults(&args.inject)?;
    let inject = Arc::new(inject_config(&args.inject, &args.namespace)?);
    let cert = Arc::new(
        tls::ReloadingCert::new(args.webhook_cert.clone(), args.webhook_key.clone())
            .context("loading the webhook certificate")?,
    );
    let listener = server::bind(args.webhook_addr).await?;
    info!(addr = %args.webhook_addr, "webhook listening");
    let mut webhook = tokio::spawn(server::serve(listener, tls::server_config(cert), inject));

    let elector = Elector::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
        Duration::from_secs(15),
    );
    let ctx = Arc::new(Ctx::new(
        admin,
        KubeClient::new(client.clone(), &args.identity),
    ));
    let metrics_listener = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "metrics and probes listening");
    let mut metrics_server =
        tokio::spawn(metrics::serve(metrics_listener, Arc::clone(&ctx.metrics)));
    // Followers serve the webhook and probes while they wait for the lease.
    tokio::select! {
        _ = elector.acquire() => {}
        r = &mut metrics_server => bail!("metrics server stopped: {r:?}"),
        r = &mut webhook => bail!("webhook server stopped: {r:?}"),
    }
    ctx.metrics.set_leader(true);
    if let Some(target) = cert_target(&args)? {
        tokio::spawn(renew_webhook_cert(target, Arc::clone(&ctx)));
    }
    tokio::select! {
        _ = controller::run(client, ctx, Duration::from_secs(args.node_sync_seconds.max(1)), Arc::new(keys)) => {
            info!("controllers stopped");
            Ok(())
        }
        _ = elector.hold() => {
            // Another replica may lead now: exit so Kubernetes restarts us as a follower.
            error!("leadership lost; exiting");
            bail!("leadership lost")
        }
        r = &mut webhook => {
            bail!("webhook server stopped: {r:?}")
        }
        r = &mut metrics_server => {
            bail!("metrics server stopped: {r:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_takes_the_charts_flags() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "meshscale-operator",
            "run",
            "--control-server=https://c:50443",
            "--api-key-file=/k",
            "--sidecar-image=s",
            "--login-server=https://m",
            "--metrics-addr=0.0.0.0:9090",
            "--inject-user=k8s",
            "--inject-tags=tag:k8s,tag:web",
            "--inject-key-expiration=30d",
            "--inject-key-rotate-before=7d",
            "--sidecar-ca-configmap=mesh-ca",
        ])
        .map_err(|e| e.to_string());
        let Ok(Cli {
            cmd: Cmd::Run(args),
        }) = cli
        else {
            panic!("not parsed: {:?}", cli.err());
        };
        let keys = key_defaults(&args.inject).map_err(|e| e.to_string());
        assert_eq!(
            keys.map(|k| k.tags),
            Ok(vec!["tag:k8s".to_string(), "tag:web".to_string()])
        );
    }

    #[test]
    fn rotation_not_shorter_than_the_lifetime_is_refused_at_start() {
        let cli = Cli::try_parse_from([
            "meshscale-operator",
            "run",
            "--control-server=c",
            "--api-key-file=/k",
            "--sidecar-image=s",
            "--login-server=m",
            "--inject-key-expiration=7d",
            "--inject-key-rotate-before=7d",
        ]);
        let Ok(Cli {
            cmd: Cmd::Run(args),
        }) = cli
        else {
            panic!("not parsed");
        };
        assert!(key_defaults(&args.inject).is_err());
    }
}
