//! `meshscale serve`: opens the store, starts every listener, and stops them
//! together on SIGINT or SIGTERM.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin;
use crate::config::Config;
use crate::derp::{Relay, RelayConfig, Verdict};
use crate::http;
use crate::mapper::{Hub, Live, Tailnet};
use crate::metrics::Metrics;
use crate::noise::{NoiseServer, ServerKey};
use crate::pending::PendingRegistrations;
use crate::state::{AppState, SharedState};
use crate::store::Store;
use crate::{derpmap, listener, protocol};

pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) is harmless; ignore it.
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Connections the kernel may queue for `accept`; it caps this at
/// `net.core.somaxconn`. Tokio's default of 1024 overflows under a burst of
/// connections (after a restart, or a flood) while the accept loop is busy,
/// and the overflowing clients then hang until they retry; Go listens
/// with `somaxconn` too.
const LISTEN_BACKLOG: u32 = 65_535;

async fn bind(addr: &str, key: &str) -> anyhow::Result<TcpListener> {
    let context = || format!("cannot listen on {addr} ({key})");
    let parsed: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        // Not a literal address (validated configs always are): let tokio resolve it.
        Err(_) => return TcpListener::bind(addr).await.with_context(context),
    };
    let socket = if parsed.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(context)?;
    // As std and tokio do in `TcpListener::bind`: a restart must not wait out TIME_WAIT.
    socket.set_reuseaddr(true).with_context(context)?;
    socket.bind(parsed).with_context(context)?;
    socket.listen(LISTEN_BACKLOG).with_context(context)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    raise_fd_limit();
    let timeouts = config.timeouts()?;
    let signalled = shutdown_signal()?;
    let metrics = Metrics::new();
    let prefixes = config.ip_prefixes()?;
    let target = config.database_target()?;
    let store = Store::open(&target, prefixes, metrics.clone())
        .await
        .context("cannot open the store")?;
    tracing::info!(backend = ?store.backend(), "store ready");
    crate::capture::warn_if_enabled();

    // Bind everything before serving anything, so a taken port fails the start cleanly.
    let main_listener = bind(&config.listen_addr, "listen_addr").await?;
    let metrics_listener = bind(&config.metrics_listen_addr, "metrics_listen_addr").await?;
    let unix_path = std::path::PathBuf::from(&config.unix_socket);
    let unix_listener = admin::bind_unix(&unix_path, config.socket_mode()?)?;
    let remote_admin = !config.grpc_listen_addr.is_empty()
        && (!config.tls_cert_path.is_empty() || config.grpc_allow_insecure);
    let grpc_listener = if remote_admin {
        Some(bind(&config.grpc_listen_addr, "grpc_listen_addr").await?)
    } else {
        None
    };
    if !remote_admin {
        tracing::info!(
            "remote admin API off: set tls_cert_path/tls_key_path (or grpc_allow_insecure) to serve it"
        );
    }

    let noise_key =
        ServerKey::load_or_create(&config.noise_private_key_path()).with_context(|| {
            format!(
                "noise.private_key_path {}",
                config.noise_private_key_path().display()
            )
        })?;
    let tls = if config.tls_cert_path.is_empty() {
        None
    } else {
        Some(listener::tls_acceptor(
            config.tls_cert_path.as_ref(),
            config.tls_key_path.as_ref(),
        )?)
    };
    let hub = Arc::new(Hub::new(tailnet(&config)?));
    let nodes = store
        .list_nodes_live()
        .await
        .context("cannot load the nodes")?;
    hub.load(
        nodes
            .into_iter()
            .map(|(n, live)| {
                let last_seen = n.last_seen;
                (n, Live::from_store(&live, last_seen))
            })
            .collect(),
    );

    let acl = crate::acl::Acl::load(config.policy_source()?, &store, &hub)
        .await
        .context("cannot load the access policy (policy.mode / policy.path)")?;
    if hub.has_policy() {
        tracing::info!(source = ?acl.source(), "access policy in force");
    }

    let state = Arc::new(AppState {
        config: config.clone(),
        store,
        hub,
        pending: PendingRegistrations::default(),
        metrics,
        acl,
    });
    protocol::schedule_all_ephemeral(&state).await;
    let relay = if config.derp.server.enabled {
        Some(derp_relay(&config, &state)?)
    } else {
        None
    };
    let stun_socket =
        if config.derp.server.enabled {
            let addr = &config.derp.server.stun_listen_addr;
            Some(tokio::net::UdpSocket::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (derp.server.stun_listen_addr)")
            })?)
        } else {
            None
        };
    let noise = NoiseServer::new(noise_key, {
        let state = state.clone();
        move |conn| {
            let router = protocol::noise_router(state.clone());
            Box::pin(async move {
                let machine = conn.machine_key_text();
                if let Err(e) = crate::noise::serve_http2(conn, router).await {
                    tracing::debug!(machine = %&machine[..17.min(machine.len())], error = %e, "noise connection ended");
                }
            })
        }
    })
    .with_handshake_timeout(timeouts.noise_handshake)
    .with_metrics(state.metrics.clone());
    let noise = Arc::new(noise);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    tracing::info!(addr = %config.listen_addr, server_url = %config.server_url, "serving HTTP");
    let main_app = main_app(&state, noise, relay.clone());
    let listener_timeouts = listener::ListenerTimeouts {
        tls_handshake: timeouts.tls_handshake,
        header_read: timeouts.http_header_read,
    };
    tasks.spawn(listener::serve(
        main_listener,
        tls,
        main_app,
        listener_timeouts,
        stopped(),
    ));
    tracing::info!(addr = %config.metrics_listen_addr, "serving metrics");
    let metrics_app = http::metrics_router(state.clone());
    let shutdown = stopped();
    tasks.spawn(async move {
        axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("metrics server failed")
    });
    if let Some(socket) = stun_socket {
        tracing::info!(addr = %config.derp.server.stun_listen_addr, "serving STUN");
        let shutdown = stopped();
        tasks.spawn(async move {
            crate::stun::serve(socket, shutdown).await;
            Ok(())
        });
    }
    tracing::info!(path = %unix_path.display(), "serving admin API on unix socket");
    tasks.spawn(admin::serve_unix(state.clone(), unix_listener, stopped()));
    if let Some(l) = grpc_listener {
        tracing::info!(addr = %config.grpc_listen_addr, tls = !config.tls_cert_path.is_empty(), "serving remote admin API");
        tasks.spawn(admin::serve_tcp(state.clone(), l, stopped()));
    }

    {
        let state = state.clone();
        let shutdown = stopped();
        // Returns only once stopped.
        tasks.spawn(async move {
            crate::acl::watch(state, shutdown).await;
            Ok(())
        });
    }

    let outcome = tokio::select! {
        _ = signalled => {
            tracing::info!("shutting down");
            Ok(())
        }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a listener stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a listener task panicked: {e}")),
        },
    };
    let _ = stop_tx.send(true);
    if let Some(relay) = &relay {
        relay.shutdown();
    }
    while tasks.join_next().await.is_some() {}
    // The store is left to close with the process: connections still being
    // served would otherwise fail their last queries against a closed pool.
    let _ = std::fs::remove_file(&unix_path);
    outcome
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime
/// does at start-up: every client holds a socket, and the usual soft limit
/// of 1024 would make a few hundred stalled connections refuse everyone.
/// Failure only costs headroom, so it is logged, not fatal.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), soft = before, "cannot raise RLIMIT_NOFILE");
            return;
        }
    }
    tracing::debug!(
        soft = lim.rlim_cur,
        hard = lim.rlim_max,
        was = before,
        "open-file limit (RLIMIT_NOFILE)"
    );
}

/// Resolves on SIGINT or SIGTERM. Installed before anything is served, so a
/// signal that arrives during start-up still means a clean shutdown.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Everything on `listen_addr`: health, the Noise entry points, the login page.
fn main_app(
    state: &SharedState,
    noise: Arc<NoiseServer>,
    relay: Option<Arc<Relay>>,
) -> axum::Router {
    let app = http::main_router(state.clone())
        .merge(crate::noise::router(noise))
        .merge(protocol::public_router(state.clone()));
    match relay {
        Some(relay) => app.merge(crate::derp::router(relay)),
        None => app,
    }
}

/// The embedded DERP relay, admitting only node keys of registered, unexpired nodes
/// (Headscale's `verify_clients`): the relay is not an open proxy for strangers.
fn derp_relay(config: &Config, state: &SharedState) -> anyhow::Result<Arc<Relay>> {
    let path = config.derp_private_key_path();
    let key = crate::derp::load_or_create_server_key(&path)
        .with_context(|| format!("derp.server.private_key_path {}", path.display()))?;
    let store_state = state.clone();
    let verifier = crate::derp::Verifier::new_async(move |node_key: [u8; 32]| {
        let state = store_state.clone();
        async move {
            let text = meshscale_wire::key::NodePublic::from_bytes(node_key).to_string();
            match state.store.node_by_node_key(&text).await {
                Ok(Some(node)) => Verdict::from(!node.is_expired(chrono::Utc::now())),
                Ok(None) => Verdict::Deny,
                Err(e) => {
                    tracing::warn!(error = %e, "DERP admission: store lookup failed");
                    Verdict::Unknown
                }
            }
        }
    });
    let timeouts = config.timeouts()?;
    Ok(Relay::new(
        key,
        RelayConfig {
            verifier: Some(verifier),
            handshake_timeout: timeouts.derp_handshake,
            verify_interval: timeouts.derp_verify_interval,
            metrics: Some(state.metrics.clone()),
            ..RelayConfig::default()
        },
    ))
}

/// Tailnet-wide settings for map responses, from the config.
fn tailnet(config: &Config) -> anyhow::Result<Tailnet> {
    let (host, _, _) = derpmap::server_host_port(&config.server_url);
    let base_domain = config.dns.magic_dns.then(|| config.dns.base_domain.clone());
    Ok(Tailnet {
        domain: base_domain.clone().unwrap_or(host),
        base_domain,
        derp_map: derpmap::build(config)?,
        dns: crate::mapper::view::dns_config(
            config.dns.magic_dns,
            &config.dns.base_domain,
            &config.dns.nameservers.global,
        ),
    })
}
