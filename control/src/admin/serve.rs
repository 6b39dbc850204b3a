//! Listeners for the admin API.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use meshscale_api::MeshscaleServiceServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::{AdminService, ApiKeyLayer};
use crate::state::SharedState;

/// Admin messages are small; a larger one is a mistake or an attack.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

fn service(state: &SharedState) -> MeshscaleServiceServer<AdminService> {
    MeshscaleServiceServer::new(AdminService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Binds the unix socket (replacing a stale one) with the configured mode.
pub(crate) fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (unix_socket)", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove stale socket {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind {} (unix_socket)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    Ok(listener)
}

pub(crate) async fn serve_unix(
    state: SharedState,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    Server::builder()
        .add_service(service(&state))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("admin API on the unix socket failed")
}

/// The remote admin API: TLS unless explicitly allowed without, an API key always.
pub(crate) async fn serve_tcp(
    state: SharedState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let config = &state.config;
    let mut builder = Server::builder();
    if !config.tls_cert_path.is_empty() {
        let cert = std::fs::read(&config.tls_cert_path)
            .with_context(|| format!("cannot read tls_cert_path {}", config.tls_cert_path))?;
        let key = std::fs::read(&config.tls_key_path)
            .with_context(|| format!("cannot read tls_key_path {}", config.tls_key_path))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("invalid TLS certificate or key")?;
    }
    let bootstrap = match config.admin.bootstrap_api_key_path.as_str() {
        "" => None,
        path => {
            let key = super::bootstrap::BootstrapKey::new(path);
            key.check()
                .context("admin.bootstrap_api_key_path is set but unusable")?;
            tracing::info!(path, "bootstrap admin API key accepted");
            Some(std::sync::Arc::new(key))
        }
    };
    builder
        .layer(ApiKeyLayer::new(state.clone()).with_bootstrap(bootstrap))
        .add_service(service(&state))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .context("remote admin API failed")
}
