//! The main HTTP(S) listener. One accept loop for plain HTTP and TLS, with
//! connection upgrades (the node protocol's `/ts2021` and DERP's `/derp`
//! both take over the connection after a 101).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tower::ServiceExt;

/// Bytes hyper may buffer while reading a request head (and body chunks
/// it has not handed on). A Tailscale `/ts2021` request is ~400 bytes;
/// a larger head is refused with 431 instead of growing the buffer
/// (hyper's default is ~400 KiB per connection).
pub(crate) const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// Header lines per request; more is refused with 431 (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;

/// Deadlines of the main listener, from `timeouts.*` in the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerTimeouts {
    /// TCP accept to a finished TLS handshake.
    pub tls_handshake: Duration,
    /// TCP accept to the first byte, then again from there (or from the
    /// end of the previous request on a kept-alive connection) to the end of
    /// the request head. It is not reset by each byte, so dribbling headers
    /// (slowloris) does not extend it.
    pub header_read: Duration,
}

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub(crate) fn tls_acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("cannot read tls_cert_path {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "tls_cert_path {} is not a PEM certificate chain",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("tls_cert_path {} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "tls_key_path {} is not a PEM private key",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    // Upgrades (/ts2021, /derp) are HTTP/1.1 mechanisms; clients that negotiate h2 could not use
    // them, and the listener speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` resolves, over TLS when an acceptor is given.
///
/// HTTP/1.1 only: everything served here (`/key`, `/ts2021`, `/derp`,
/// `/health`, `/register/<id>`) is HTTP/1.1, and HTTP/2 would bring its own
/// attack surface (stream and header-list limits, and a version sniff that
/// waits for 24 bytes with no deadline).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    timeouts: ListenerTimeouts,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // Handlers see the client's address (per-address limits, logs).
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let builder = builder.clone();
        let tls = tls.clone();
        // Detached: long-lived map streams and DERP sessions end when their peers go.
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    // Boxed, here and below: a spawned future is allocated at
                    // its largest state's size from the start, and hyper's and
                    // rustls' states are several KiB that a stalled connection
                    // would otherwise pay for while it does nothing.
                    let accept = Box::pin(acceptor.accept(tcp));
                    match tokio::time::timeout(timeouts.tls_handshake, accept).await {
                        Ok(Ok(stream)) => {
                            Box::pin(
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .with_upgrades(),
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    // hyper reserves an 8 KiB read buffer as soon as it is
                    // polled; a connection that never sends a byte waits here
                    // with only its task and socket instead. The header clock
                    // then starts anew, so a client has at most twice
                    // `header_read` to finish its head.
                    match tokio::time::timeout(timeouts.header_read, tcp.readable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "connection failed before its first byte");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no request within the header read timeout");
                            return;
                        }
                    }
                    Box::pin(
                        builder
                            .serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades(),
                    )
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    Ok(())
}
