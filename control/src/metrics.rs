//! Prometheus metrics of the control server, served on `metrics_listen_addr`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    path: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    op: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Cheap to clone: every clone updates the same counters.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    grpc_requests: Family<GrpcLabels, Counter>,
    nodes: Family<StateLabels, Gauge>,
    store_latency: HistogramFamily<StoreLabels>,
    derp_refused_frames: Family<ReasonLabels, Counter>,
    derp_refused_connections: Family<ReasonLabels, Counter>,
    noise_refused: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

fn store_histogram() -> Histogram {
    // 100 µs to ~3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meshscale");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        let nodes = Family::<StateLabels, Gauge>::default();
        let store_latency: HistogramFamily<StoreLabels> =
            Family::new_with_constructor(store_histogram);
        registry.register(
            "http_requests",
            "HTTP requests by route and status code",
            http_requests.clone(),
        );
        registry.register(
            "grpc_requests",
            "Admin API calls by method and gRPC status",
            grpc_requests.clone(),
        );
        registry.register(
            "nodes",
            "Registered nodes by state (online, offline, expired)",
            nodes.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Latency of store operations by operation and result",
            store_latency.clone(),
        );
        let derp_refused_frames = Family::<ReasonLabels, Counter>::default();
        let derp_refused_connections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "derp_refused_frames",
            "DERP packets not relayed, by reason (no_such_peer: the destination is not a \
             connected, registered node)",
            derp_refused_frames.clone(),
        );
        registry.register(
            "derp_refused_connections",
            "DERP connections refused or cut, by reason (not_a_node: refused at the handshake; \
             revoked: the node was deleted or expired while connected)",
            derp_refused_connections.clone(),
        );
        let noise_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "noise_upgrades_refused",
            "/ts2021 upgrades answered 503 before the handshake, by reason (pending: too many \
             pending noise connections; pending_per_address: too many from one address)",
            noise_refused.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                http_requests,
                grpc_requests,
                nodes,
                store_latency,
                derp_refused_frames,
                derp_refused_connections,
                noise_refused,
            }),
        }
    }

    pub fn http_request(&self, path: &str, code: u16) {
        self.inner
            .http_requests
            .get_or_create(&HttpLabels {
                path: path.into(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn grpc_request(&self, method: &str, code: tonic::Code) {
        let code = format!("{code:?}");
        self.inner
            .grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.into(),
                code,
            })
            .inc();
    }

    pub fn observe_store(&self, op: &str, elapsed: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .store_latency
            .get_or_create(&StoreLabels {
                op: op.into(),
                result: result.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_node_states(&self, online: i64, offline: i64, expired: i64) {
        for (state, v) in [
            ("online", online),
            ("offline", offline),
            ("expired", expired),
        ] {
            self.inner
                .nodes
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(v);
        }
    }

    pub fn derp_refused_frame(&self, reason: &str) {
        self.inner
            .derp_refused_frames
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn derp_refused_connection(&self, reason: &str) {
        self.inner
            .derp_refused_connections
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn noise_upgrade_refused(&self, reason: &str) {
        self.inner
            .noise_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_recorded_values() {
        let m = Metrics::new();
        m.http_request("/health", 200);
        m.grpc_request("CreateUser", tonic::Code::AlreadyExists);
        m.observe_store("create_user", Duration::from_millis(2), true);
        m.set_node_states(2, 1, 0);
        m.derp_refused_frame("no_such_peer");
        m.derp_refused_connection("revoked");
        m.noise_upgrade_refused("pending");
        let text = m.encode();
        assert!(text.contains(r#"meshscale_noise_upgrades_refused_total{reason="pending"} 1"#));
        assert!(text.contains(r#"meshscale_derp_refused_frames_total{reason="no_such_peer"} 1"#));
        assert!(text.contains(r#"meshscale_derp_refused_connections_total{reason="revoked"} 1"#));
        assert!(
            text.contains(r#"meshscale_http_requests_total{path="/health",code="200"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"meshscale_grpc_requests_total{method="CreateUser",code="AlreadyExists"} 1"#
        ));
        assert!(text.contains(r#"meshscale_nodes{state="online"} 2"#));
        assert!(text.contains(
            r#"meshscale_store_operation_duration_seconds_count{op="create_user",result="ok"} 1"#
        ));
    }
}
