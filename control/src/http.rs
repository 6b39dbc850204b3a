//! Plain HTTP endpoints: `/health` on the main listener, `/metrics` on the
//! metrics listener. The node protocol joins the main router later.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::SharedState;

/// A health probe that takes longer than this reports failure rather than hanging the prober.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn main_router(state: SharedState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/robots.txt", get(robots))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

pub(crate) fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    // Label by route pattern, never by raw path: raw paths are unbounded label values.
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(req).await;
    state
        .metrics
        .http_request(&path, response.status().as_u16());
    response
}

async fn health(State(state): State<SharedState>) -> Response {
    match tokio::time::timeout(HEALTH_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "pass"}))).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "fail"})),
            )
                .into_response()
        }
        Err(_) => {
            tracing::warn!("health check: store timed out");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "fail"})),
            )
                .into_response()
        }
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn robots() -> &'static str {
    "User-agent: *\nDisallow: /\n"
}

async fn metrics(State(state): State<SharedState>) -> Response {
    // Node states are read at scrape time, so the gauge is never stale.
    match state.store.count_nodes().await {
        Ok(counts) => {
            let online = state.hub.online_count() as i64;
            let offline = (counts.total - counts.expired - online).max(0);
            state
                .metrics
                .set_node_states(online, offline, counts.expired);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count nodes"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
