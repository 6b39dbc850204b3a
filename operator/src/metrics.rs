//! The operator's own Prometheus metrics and probe endpoints, served over
//! plain HTTP on `--metrics-addr` (the kubelet's liveness probe and a
//! Prometheus scrape; nothing secret is ever exposed here).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::debug;

/// Counters by (family, label set); families and labels are our own constants,
/// never user input, so the series count is bounded.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    leader: AtomicBool,
}

const HELP: &[(&str, &str)] = &[
    (
        "meshscale_operator_reconciles_total",
        "Reconciles by kind and result.",
    ),
    (
        "meshscale_operator_pod_nodes_deleted_total",
        "Nodes deleted because their pod was gone.",
    ),
];

impl Metrics {
    pub fn reconciled(&self, kind: &'static str, ok: bool) {
        let labels = format!(
            "kind=\"{kind}\",result=\"{}\"",
            if ok { "success" } else { "error" }
        );
        self.add("meshscale_operator_reconciles_total", labels, 1);
    }

    pub fn pod_nodes_deleted(&self, n: usize) {
        self.add(
            "meshscale_operator_pod_nodes_deleted_total",
            String::new(),
            u64::try_from(n).unwrap_or(u64::MAX),
        );
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    fn add(&self, family: &'static str, labels: String, n: u64) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((family, labels)).or_default() += n;
        }
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        for (family, help) in HELP {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for ((f, labels), v) in counters.iter().filter(|((f, _), _)| f == family) {
                if labels.is_empty() {
                    let _ = writeln!(out, "{f} {v}");
                } else {
                    let _ = writeln!(out, "{f}{{{labels}}} {v}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP meshscale_operator_leader 1 on the replica holding the lease.\n\
             # TYPE meshscale_operator_leader gauge\nmeshscale_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

fn route(req: &Request<Incoming>, m: &Metrics) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        // Liveness: answering at all means the runtime is not wedged. Not tied
        // to the control server: its outage must not restart every operator.
        (&Method::GET, "/healthz" | "/readyz") => reply(
            StatusCode::OK,
            "application/json",
            "{\"status\":\"pass\"}".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the listener fails; one task per connection, bodies ignored.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = route(&req, &metrics);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            // Idle scrapers are cut off rather than holding a task forever.
            match tokio::time::timeout(Duration::from_secs(60), conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection ended"),
                Ok(Ok(())) => {}
                Err(_) => debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_and_probes_are_served() {
        let m = Arc::new(Metrics::default());
        m.reconciled("MeshUser", true);
        m.reconciled("MeshUser", true);
        m.reconciled("PreAuthKey", false);
        m.pod_nodes_deleted(3);
        m.set_leader(true);
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, Arc::clone(&m)));
        let body = get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains(
            "meshscale_operator_reconciles_total{kind=\"MeshUser\",result=\"success\"} 2"
        ));
        assert!(body.contains(
            "meshscale_operator_reconciles_total{kind=\"PreAuthKey\",result=\"error\"} 1"
        ));
        assert!(body.contains("meshscale_operator_pod_nodes_deleted_total 3"));
        assert!(body.contains("meshscale_operator_leader 1"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
