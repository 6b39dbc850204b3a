//! HTTPS server for the webhook (`POST /inject`, `POST /inject-namespace`)
//! and the operator's own probes (`GET /healthz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tracing::debug;

use super::patch::InjectConfig;
use super::review::{MAX_BODY, answer};

/// Slow clients are cut off: the API server's own webhook timeout is at most 30 s.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the listener fails; one task per connection.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    cfg: Arc<InjectConfig>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let cfg = Arc::clone(&cfg);
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| handle(req, Arc::clone(&cfg)));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    cfg: Arc<InjectConfig>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let namespace_mode = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Ok(reply(StatusCode::OK, b"{}".to_vec())),
        (&Method::POST, "/inject") => false,
        (&Method::POST, "/inject-namespace") => true,
        _ => return Ok(reply(StatusCode::NOT_FOUND, b"{}".to_vec())),
    };
    // Bounded read: a huge body is answered with an error review, not buffered.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::from_static(b"\0too large"),
    };
    Ok(reply(StatusCode::OK, answer(&body, namespace_mode, &cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::patch::tests::cfg;
    use crate::webhook::tls::{ReloadingCert, generate, server_config};
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{
        self, RootCertStore, pki_types::CertificateDer, pki_types::ServerName,
    };

    /// Marks a file as changed `ahead` seconds from now, so the reloader sees a
    /// new mtime however coarse the filesystem's clock is, without waiting.
    fn touch_ahead(path: &Path, ahead: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(ahead))
            .unwrap();
    }

    fn write_pair(dir: &Path, g: &crate::webhook::tls::Generated) {
        // Written aside and renamed, as a Secret volume update swaps files atomically.
        std::fs::write(dir.join("tls.crt.new"), &g.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key.new"), &g.key_pem).unwrap();
        touch_ahead(&dir.join("tls.crt.new"), 10);
        touch_ahead(&dir.join("tls.key.new"), 10);
        std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
        std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    }

    async fn post(
        addr: SocketAddr,
        ca_pem: &str,
        path: &str,
        body: &[u8],
    ) -> Result<String, String> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("meshscale-webhook.meshscale.svc").unwrap();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn review() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "apps", "operation": "CREATE", "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "w-"},
                           "spec": {"containers": [{"name": "a", "image": "b"}]}}
            }
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn serves_reviews_over_https_and_reloads_a_renewed_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let dns = vec!["meshscale-webhook.meshscale.svc".to_string()];
        let first = generate(&dns, 30).unwrap();
        write_pair(dir.path(), &first);
        let cert = Arc::new(
            ReloadingCert::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap(),
        );
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, server_config(cert), Arc::new(cfg())));

        // Namespace-labelled path: the unannotated pod is injected.
        let out = post(addr, &first.ca_pem, "/inject-namespace", &review())
            .await
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("\"patchType\":\"JSONPatch\""), "{out}");
        // Annotation path: the same pod is left alone.
        let out = post(addr, &first.ca_pem, "/inject", &review())
            .await
            .unwrap();
        assert!(
            out.contains("\"allowed\":true") && !out.contains("patchType"),
            "{out}"
        );
        let out = post(addr, &first.ca_pem, "/inject", b"{garbage")
            .await
            .unwrap();
        assert!(out.contains("\"allowed\":false"), "{out}");

        // Renewal under a new CA: the running server picks it up, no restart.
        let second = generate(&dns, 30).unwrap();
        write_pair(dir.path(), &second);
        let out = post(addr, &second.ca_pem, "/inject", &review())
            .await
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            post(addr, &first.ca_pem, "/inject", &review())
                .await
                .is_err()
        );

        // A broken renewal keeps the last good certificate serving.
        std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
        touch_ahead(&dir.path().join("tls.crt"), 20);
        let out = post(addr, &second.ca_pem, "/inject", &review())
            .await
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        server.abort();
    }
}
