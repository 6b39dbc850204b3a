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
use meshscale_operator::injectkey::{self, KeyDefaults};
use meshscale_operator::kubeops::Kube;
use meshscale_operator::kubeops::KubeClient;
use meshscale_operator::lease::Elector;
use meshscale_operator::reconcile::Ctx;
use meshscale_operator::webhook::patch::{CaSource, InjectConfig, is_quantity};
use meshscale_operator::webhook::{certs, podsecurity, server, tls};
use meshscale_operator::{bootstrap, controller, crdgen, duration, metrics};
use tracing::{error, info, warn};

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
    /// Injected pods also get `<prefix><namespace>`, a tag the policy can
    /// name (the operator declares its tagOwners); empty: none.
    #[arg(long, default_value = "tag:k8s-ns-")]
    namespace_tag_prefix: String,
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
    #[arg(
        long,
        env = "MESHSCALE_API_KEY_FILE",
        required_unless_present = "api_key_secret"
    )]
    api_key_file: Option<PathBuf>,
    /// Secret (in --namespace) holding the admin API key under `apikey`,
    /// generated when missing; the control server accepts it as its
    /// bootstrap key. Replaces --api-key-file.
    #[arg(long, conflicts_with = "api_key_file")]
    api_key_secret: Option<String>,
    /// Secret (in --namespace) with the control server's TLS certificate,
    /// generated when missing for the --control-dns names; its ca.crt is the
    /// CA the operator trusts. Replaces --ca-file.
    #[arg(long, conflicts_with = "ca_file", requires = "control_dns")]
    control_tls_secret: Option<String>,
    /// DNS names of the control server's certificate (with --control-tls-secret).
    #[arg(long = "control-dns")]
    control_dns: Vec<String>,
    /// Creates the MeshUser --inject-user when it does not exist.
    #[arg(long)]
    create_inject_user: bool,
    /// Sets the control server's policy (it must run `policy.mode: database`)
    /// from the ClusterMeshPolicy and MeshPolicy objects, with tagOwners for
    /// the injection and namespace tags.
    #[arg(long)]
    manage_policy: bool,
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
    /// The Secret (in --namespace) holding the webhook certificate. When set,
    /// the operator alone owns it: the leader issues it, renews it before
    /// expiry (or when it no longer verifies against the bundle) and keeps
    /// --webhook-config's caBundle in step, and every replica serves it as
    /// read through the API; unset, --webhook-cert/--webhook-key are served.
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
    // Before any TLS client exists: with both ring and aws-lc-rs compiled in
    // (feature unification across the workspace), rustls cannot pick a
    // process-wide provider and kube's client would panic on first use.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
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
/// the first pod arrives), then every minute: a check is two GETs, and a
/// `helm upgrade` or a hand edit of the Secret or the webhook configuration
/// is corrected within that minute instead of at the next renewal.
async fn renew_webhook_cert<A: Admin, K: Kube>(t: certs::CertTarget, ctx: Arc<Ctx<A, K>>) {
    loop {
        let wait = match certs::ensure(&t, &ctx, chrono::Utc::now()).await {
            Ok(_) => Duration::from_secs(60),
            Err(e) => {
                error!(error = %e, "webhook certificate check failed");
                Duration::from_secs(20)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Every replica serves the certificate the leader keeps in the webhook
/// Secret, read through the API (not a volume mount, which the kubelet
/// refreshes only every minute or two, and which would keep a first
/// install's pods from starting until the Secret exists).
async fn follow_webhook_secret(
    client: kube::Client,
    namespace: String,
    secret: String,
    cert: Arc<tls::MemoryCert>,
) {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    loop {
        match api.get_opt(&secret).await {
            Ok(Some(s)) => {
                let data = s.data.unwrap_or_default();
                if let (Some(c), Some(k)) = (data.get("tls.crt"), data.get("tls.key")) {
                    match cert.set_pem(&c.0, &k.0) {
                        Ok(true) => info!(secret = %secret, "webhook certificate loaded"),
                        Ok(false) => {}
                        Err(e) => {
                            warn!(secret = %secret, error = %e, "keeping the previous webhook certificate")
                        }
                    }
                }
            }
            Ok(None) => {
                if !cert.is_set() {
                    info!(secret = %secret, "waiting for the leader to issue the webhook certificate");
                }
            }
            Err(e) => warn!(secret = %secret, error = %e, "cannot read the webhook Secret"),
        }
        let wait = if cert.is_set() { 10 } else { 1 };
        tokio::time::sleep(Duration::from_secs(wait)).await;
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
    let prefix = args.namespace_tag_prefix.trim();
    if !prefix.is_empty() && !injectkey::is_namespace_tag_prefix(prefix) {
        bail!(
            "--namespace-tag-prefix {prefix:?}: must be \"tag:\", a letter, then lowercase letters, digits or '-' (at most 40 characters)"
        );
    }
    Ok(KeyDefaults {
        namespace_tag_prefix: prefix.to_string(),
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
        pod_security: Default::default(),
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
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let api_key = match (&args.api_key_secret, &args.api_key_file) {
        (Some(name), _) => bootstrap::ensure_api_key(&client, &args.namespace, name)
            .await
            .with_context(|| format!("the admin API key Secret {name}"))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the API key file {}", path.display()))?,
        (None, None) => bail!("--api-key-file or --api-key-secret is required"),
    };
    let ca_pem = match (&args.control_tls_secret, &args.ca_file) {
        (Some(name), _) => Some(
            bootstrap::ensure_control_tls(&client, &args.namespace, name, &args.control_dns)
                .await
                .with_context(|| format!("the control server TLS Secret {name}"))?,
        ),
        (None, Some(path)) => Some(
            std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display()))?,
        ),
        (None, None) => None,
    };
    let admin = GrpcAdmin::connect_pem(
        &args.control_server,
        ca_pem.as_deref(),
        args.tls_server_name.as_deref(),
        &api_key,
        Duration::from_secs(15),
    )?;
    drop(api_key);

    let keys = key_defaults(&args.inject)?;
    let mut inject = inject_config(&args.inject, &args.namespace)?;
    // Every replica answers admissions, so every replica follows the
    // namespaces' Pod Security levels and reports the pods it leaves alone.
    let (skips, skipped) = tokio::sync::mpsc::channel(256);
    inject.pod_security = podsecurity::PodSecurity::with_reports(skips);
    tokio::spawn(podsecurity::watch_namespaces(
        client.clone(),
        inject.pod_security.clone(),
    ));
    tokio::spawn(podsecurity::publish_skips(
        Arc::new(KubeClient::new(client.clone(), &args.identity)),
        skipped,
    ));
    let inject = Arc::new(inject);
    let resolver: Arc<dyn tokio_rustls::rustls::server::ResolvesServerCert> =
        match &args.webhook_secret {
            Some(secret) => {
                let cert = Arc::new(tls::MemoryCert::default());
                tokio::spawn(follow_webhook_secret(
                    client.clone(),
                    args.namespace.clone(),
                    secret.clone(),
                    Arc::clone(&cert),
                ));
                cert
            }
            None => Arc::new(
                tls::ReloadingCert::new(args.webhook_cert.clone(), args.webhook_key.clone())
                    .context("loading the webhook certificate")?,
            ),
        };
    let listener = server::bind(args.webhook_addr).await?;
    info!(addr = %args.webhook_addr, "webhook listening");
    let mut webhook = tokio::spawn(server::serve(
        listener,
        tls::server_config(resolver),
        inject,
    ));

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
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Followers serve the webhook and probes while they wait for the lease.
    tokio::select! {
        _ = elector.acquire() => {}
        _ = &mut shutdown => {
            info!("shutting down");
            return Ok(());
        }
        r = &mut metrics_server => bail!("metrics server stopped: {r:?}"),
        r = &mut webhook => bail!("webhook server stopped: {r:?}"),
    }
    ctx.metrics.set_leader(true);
    if args.create_inject_user {
        tokio::spawn(ensure_inject_user(
            client.clone(),
            args.inject.inject_user.clone(),
        ));
    }
    if let Some(target) = cert_target(&args)? {
        tokio::spawn(renew_webhook_cert(target, Arc::clone(&ctx)));
    }
    let result = tokio::select! {
        _ = controller::run(client, ctx, Duration::from_secs(args.node_sync_seconds.max(1)), Arc::new(keys), args.manage_policy) => {
            info!("controllers stopped");
            Ok(())
        }
        _ = &mut shutdown => {
            info!("shutting down");
            Ok(())
        }
        _ = elector.hold() => {
            // Another replica may lead now: exit so Kubernetes restarts us as a follower.
            error!("leadership lost; exiting");
            return Err(anyhow::anyhow!("leadership lost"));
        }
        r = &mut webhook => Err(anyhow::anyhow!("webhook server stopped: {r:?}")),
        r = &mut metrics_server => Err(anyhow::anyhow!("metrics server stopped: {r:?}")),
    };
    // Hand the lease over now rather than let a follower wait out its duration.
    match elector.release().await {
        Ok(()) => info!("lease released"),
        Err(e) => error!(error = %e, "could not release the lease"),
    }
    result
}

/// Creates the injection MeshUser if missing, retrying until it exists.
async fn ensure_inject_user(client: kube::Client, name: String) {
    loop {
        match bootstrap::ensure_mesh_user(&client, &name).await {
            Ok(_) => return,
            Err(e) => {
                warn!(meshuser = %name, error = %e, "cannot create the injection user; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
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
