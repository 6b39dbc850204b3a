//! `POST /machine/map`: a node's netmap stream (`Stream: true`), or a
//! one-off update of its endpoints and Hostinfo (`Stream: false`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use meshscale_wire::tailcfg::MapRequest;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::{schedule_ephemeral_deletion, unsupported_version};
use crate::mapper::{KEEP_ALIVE, Subscription};
use crate::noise::NoisePeer;
use crate::state::SharedState;
use crate::store::Node;

/// Idle streams get a keep-alive after this plus up to 9 s of jitter, as
/// Headscale does; clients give up on a silent stream after 120 s.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(50);
/// Most endpoints a node may report; real ones have a handful.
const MAX_ENDPOINTS: usize = 64;

pub(super) async fn map(
    State(state): State<SharedState>,
    axum::Extension(peer): axum::Extension<NoisePeer>,
    body: Bytes,
) -> Response {
    let req: MapRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("invalid map request: {e}")).into_response();
        }
    };
    if req.version < super::MIN_CAPABILITY_VERSION {
        return unsupported_version(req.version).into_response();
    }
    let machine_key = peer.machine_key_text();
    let node = match state.store.node_by_machine_key(&machine_key).await {
        Ok(Some(n)) if n.node_key == req.node_key.to_string() => n,
        Ok(_) => {
            tracing::info!(machine = %&machine_key[..17], "map request from a machine with no such node; it must log in again");
            return (StatusCode::NOT_FOUND, "node not found").into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "map: store lookup failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response();
        }
    };
    let span = tracing::info_span!("map", node.id = node.id, node.name = %node.given_name, user.name = %node.user.name, stream = req.stream);
    serve_map(state, node, req).instrument(span).await
}

async fn serve_map(state: SharedState, node: Node, mut req: MapRequest) -> Response {
    req.endpoints.truncate(MAX_ENDPOINTS);
    let changed = state.hub.update_live(node.id, |live| {
        if !req.disco_key.is_zero() {
            live.disco_key = req.disco_key;
        }
        live.endpoints = req.endpoints.clone();
        if let Some(h) = &req.hostinfo {
            live.hostinfo = Some(h.clone());
        }
        live.capver = req.version;
    });
    // `update_node_live` also stamps `last_seen`: a stream that wrote it needs
    // no second write (each is a serialized transaction in a join storm).
    let mut seen_recorded = false;
    if let Some(live) = changed {
        let hostname = live
            .hostinfo
            .as_ref()
            .map(|h| h.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| node.hostname.clone());
        if let Err(e) = state
            .store
            .update_node_live(node.id, &live.to_store(&hostname))
            .await
        {
            tracing::warn!(error = %e, "cannot persist the node's endpoints");
        } else {
            seen_recorded = true;
        }
    }
    let compress = req.compress == "zstd";
    if !req.stream {
        if req.omit_peers {
            return StatusCode::OK.into_response();
        }
        return match state.hub.snapshot(node.id) {
            Some(frame) => frame_response(Body::from(frame.wire(compress))),
            None => (StatusCode::NOT_FOUND, "node not found").into_response(),
        };
    }
    let Some(subscription) = state.hub.subscribe(node.id) else {
        return (StatusCode::NOT_FOUND, "node not found").into_response();
    };
    if !seen_recorded && let Err(e) = state.store.touch_last_seen(node.id, Utc::now()).await {
        tracing::warn!(error = %e, "cannot record last seen");
    }
    tracing::info!("map session started");
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(8);
    tokio::spawn(run_session(state, node, subscription, tx, compress).in_current_span());
    frame_response(Body::from_stream(ReceiverStream::new(rx)))
}

fn frame_response(body: Body) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Forwards the session's messages to the HTTP body until the client goes.
async fn run_session(
    state: SharedState,
    node: Node,
    mut sub: Subscription,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    compress: bool,
) {
    // The full map is the largest thing a session ever holds: keep only its
    // wire form, and only until it is written.
    let first = std::mem::replace(&mut sub.first, KEEP_ALIVE.clone()).wire(compress);
    if tx.send(Ok(first)).await.is_ok() {
        loop {
            let jitter = Duration::from_millis(rand::rng().random_range(0..9_000));
            let idle = tokio::time::sleep(KEEP_ALIVE_EVERY + jitter);
            let next = tokio::select! {
                frame = sub.frames.recv() => match frame {
                    Some(f) => f.wire(compress),
                    None => break,
                },
                _ = idle => KEEP_ALIVE.wire(compress),
                _ = tx.closed() => break,
            };
            if tx.send(Ok(next)).await.is_err() {
                break;
            }
        }
    }
    drop(sub);
    tracing::info!("map session ended");
    if let Err(e) = state.store.touch_last_seen(node.id, Utc::now()).await {
        tracing::warn!(error = %e, "cannot record last seen");
    }
    if node.ephemeral && !state.hub.is_online(node.id) {
        schedule_ephemeral_deletion(state, node.id);
    }
}
