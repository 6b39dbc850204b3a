//! Per-peer path choice (magicsock's `endpoint`, reduced): candidate UDP
//! endpoints, and the best one proven by a disco pong. A proof is trusted
//! for a short while only; without fresh pongs the peer falls back to DERP.
//! Pure: time is passed in.

use std::net::SocketAddr;
use std::time::Duration;

use meshscale_wire::NodePublic;
use tokio::time::Instant;

/// How long a pong keeps a direct path trusted (Go: `trustUDPAddrDuration`).
pub const TRUST: Duration = Duration::from_millis(6500);
/// Candidates learned from pings and call-me-maybe, beyond the map's.
const MAX_EXTRA: usize = 16;

/// How a disco message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp(SocketAddr),
    /// Through our DERP region, from/to this node key.
    Derp(NodePublic),
}

#[derive(Debug, Clone, Default)]
pub struct PeerPath {
    map_endpoints: Vec<SocketAddr>,
    extra: Vec<SocketAddr>,
    best: Option<Best>,
}

#[derive(Debug, Clone, Copy)]
struct Best {
    addr: SocketAddr,
    latency: Duration,
    proven: Instant,
}

impl PeerPath {
    pub fn set_map_endpoints(&mut self, eps: Vec<SocketAddr>) {
        self.map_endpoints = eps;
    }

    pub fn add_candidate(&mut self, ep: SocketAddr) {
        if self.map_endpoints.contains(&ep) || self.extra.contains(&ep) {
            return;
        }
        if self.extra.len() >= MAX_EXTRA {
            self.extra.remove(0);
        }
        self.extra.push(ep);
    }

    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.map_endpoints
            .iter()
            .chain(self.extra.iter())
            .copied()
            .collect()
    }

    /// The direct address to use now, if one is proven recently.
    pub fn direct(&self, now: Instant) -> Option<SocketAddr> {
        self.best
            .filter(|b| now.duration_since(b.proven) < TRUST)
            .map(|b| b.addr)
    }

    /// Records a pong from `addr`; returns true when the path changed.
    pub fn on_pong(&mut self, addr: SocketAddr, latency: Duration, now: Instant) -> bool {
        let replace = match self.best {
            None => true,
            Some(b) if b.addr == addr => {
                self.best = Some(Best {
                    addr,
                    latency,
                    proven: now,
                });
                return false;
            }
            // A stale best, or a clearly faster one, is replaced.
            Some(b) => now.duration_since(b.proven) >= TRUST || latency * 10 < b.latency * 9,
        };
        if replace {
            self.best = Some(Best {
                addr,
                latency,
                proven: now,
            });
        }
        replace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_makes_direct_until_trust_expires() {
        let now = Instant::now();
        let a: SocketAddr = "10.0.0.5:41641".parse().unwrap();
        let b: SocketAddr = "10.0.0.6:41641".parse().unwrap();
        let mut p = PeerPath::default();
        p.set_map_endpoints(vec![a]);
        p.add_candidate(a);
        p.add_candidate(b);
        assert_eq!(p.candidates(), [a, b]);
        assert_eq!(p.direct(now), None);
        assert!(p.on_pong(a, Duration::from_millis(5), now));
        assert_eq!(p.direct(now), Some(a));
        // A slower path does not replace a fresh one; a faster one does.
        assert!(!p.on_pong(b, Duration::from_millis(6), now));
        assert!(p.on_pong(b, Duration::from_millis(1), now));
        assert_eq!(p.direct(now + TRUST), None, "falls back to DERP");
    }
}
