//! What every session watches for during a propagation round, and the
//! counters the sessions share.
//!
//! "Received" means: the session's reader took a complete frame off its
//! HTTP/2 stream, decompressed it, decoded it as a `MapResponse`, and found
//! the change in it. Outside rounds frames are only counted, not decoded.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use meshscale_wire::NodePublic;
use meshscale_wire::tailcfg::MapResponse;

/// Largest decompressed delta the generator decodes.
const MAX_DELTA_JSON: usize = 64 << 20;

#[derive(Debug, Clone)]
pub enum Target {
    /// A peer patch (or full peer) carrying this endpoint.
    Endpoint(String),
    /// A new peer with this node key.
    Join(NodePublic),
    /// This node going offline or being removed.
    Leave(i64),
    /// A new packet filter with a rule for this destination port (a policy change).
    FilterPort(u16),
}

impl Target {
    fn matches(&self, m: &MapResponse) -> bool {
        match self {
            Target::Endpoint(ep) => {
                m.peers_changed_patch
                    .iter()
                    .any(|p| p.endpoints.contains(ep))
                    || m.peers_changed.iter().any(|n| n.endpoints.contains(ep))
            }
            Target::Join(key) => m.peers_changed.iter().any(|n| n.key == *key),
            Target::Leave(id) => {
                m.peers_removed.contains(id)
                    || m.peers_changed_patch
                        .iter()
                        .any(|p| p.node_id == *id && p.online == Some(false))
            }
            Target::FilterPort(port) => m
                .packet_filters
                .get("base")
                .and_then(Option::as_ref)
                .is_some_and(|rules| {
                    rules
                        .iter()
                        .any(|r| r.dst_ports.iter().any(|d| d.ports.first == *port))
                }),
        }
    }
}

pub struct Probe {
    pub id: u64,
    target: Target,
    pub start: Instant,
    pub seen: AtomicUsize,
    /// Per-session delay from `start` to receipt, in ms.
    pub delays: Mutex<Vec<f64>>,
    /// Frame bytes all sessions received while the round was open.
    pub bytes: AtomicU64,
}

/// State shared by the generator and every session reader.
#[derive(Default)]
pub struct Shared {
    active: AtomicBool,
    probe: Mutex<Option<Arc<Probe>>>,
    pub mapped: AtomicUsize,
    pub alive: AtomicUsize,
    pub frame_bytes: AtomicU64,
    pub frames: AtomicU64,
    pub decode_errors: AtomicU64,
    pub stream_errors: AtomicU64,
}

impl Shared {
    pub fn probing(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn start_probe(&self, id: u64, target: Target) -> Arc<Probe> {
        let probe = Arc::new(Probe {
            id,
            target,
            start: Instant::now(),
            seen: AtomicUsize::new(0),
            delays: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
        });
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(probe.clone());
        self.active.store(true, Ordering::Release);
        probe
    }

    pub fn stop_probe(&self) {
        self.active.store(false, Ordering::Release);
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn current(&self) -> Option<Arc<Probe>> {
        self.probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A delta frame a session received during a round. `last` is the id of
    /// the last probe this session already counted, so each counts once.
    pub fn check(&self, body: &[u8], last: &mut u64) {
        let Some(probe) = self.current() else {
            return;
        };
        probe
            .bytes
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        if *last == probe.id {
            return;
        }
        let msg = match decode(body) {
            Some(m) => m,
            None => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if probe.target.matches(&msg) {
            *last = probe.id;
            let ms = probe.start.elapsed().as_secs_f64() * 1e3;
            probe
                .delays
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(ms);
            probe.seen.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// zstd, bounded, then JSON (the client crate's own decoder).
pub fn decode(body: &[u8]) -> Option<MapResponse> {
    meshscale_controlclient::map::decode_message(body, true, MAX_DELTA_JSON)
        .ok()
        .map(|m| m.response)
}
