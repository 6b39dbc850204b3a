//! Disco pings in flight and the `ping` requests waiting for a pong
//! (magicsock's `sentPing` map, reduced). A pong counts only for the ping
//! it answers: same transaction, same peer, same path. Pure: time is passed
//! in; `W` is whatever a waiting request is answered through.

use std::collections::HashMap;
use std::time::Duration;

use meshscale_wire::NodePublic;
use tokio::time::Instant;

use crate::paths::Via;

/// Pings in flight, at most (each costs a little memory until it expires).
const MAX_PENDING: usize = 4096;
/// A ping or a waiting request unanswered for this long is forgotten.
pub const TTL: Duration = Duration::from_secs(10);

pub type TxId = [u8; 12];

#[derive(Debug)]
struct Sent {
    peer: NodePublic,
    via: Via,
    at: Instant,
    waiter: Option<u64>,
}

/// What a pong was.
#[derive(Debug, PartialEq, Eq)]
pub enum Pong<W> {
    /// Not for a ping of ours (or it expired): ignored.
    Unknown,
    /// Our transaction, but from another peer or over another path than
    /// the ping went: ignored (and the ping is spent).
    Mismatch,
    /// The answer: the round trip, and the request waiting for it (if one
    /// is, and is still waiting).
    Answer {
        latency: Duration,
        waiter: Option<W>,
    },
}

#[derive(Debug)]
pub struct Pings<W> {
    sent: HashMap<TxId, Sent>,
    waiters: HashMap<u64, (W, Instant)>,
    next_waiter: u64,
}

impl<W> Default for Pings<W> {
    fn default() -> Self {
        Self {
            sent: HashMap::new(),
            waiters: HashMap::new(),
            next_waiter: 0,
        }
    }
}

impl<W> Pings<W> {
    /// A request that wants the first pong of the pings sent for it.
    pub fn add_waiter(&mut self, w: W, now: Instant) -> u64 {
        let id = self.next_waiter;
        self.next_waiter = self.next_waiter.wrapping_add(1);
        self.waiters.insert(id, (w, now));
        id
    }

    /// Whether another ping may be sent (the table is bounded).
    pub fn has_room(&self) -> bool {
        self.sent.len() < MAX_PENDING
    }

    /// Records a ping that left.
    pub fn sent(
        &mut self,
        txid: TxId,
        peer: NodePublic,
        via: Via,
        now: Instant,
        waiter: Option<u64>,
    ) {
        if self.has_room() {
            self.sent.insert(
                txid,
                Sent {
                    peer,
                    via,
                    at: now,
                    waiter,
                },
            );
        }
    }

    /// A pong for `txid` from `peer`, received over `via`.
    pub fn on_pong(&mut self, txid: &TxId, peer: NodePublic, via: Via, now: Instant) -> Pong<W> {
        let Some(s) = self.sent.remove(txid) else {
            return Pong::Unknown;
        };
        if s.peer != peer || s.via != via {
            return Pong::Mismatch;
        }
        Pong::Answer {
            latency: now.duration_since(s.at),
            waiter: s
                .waiter
                .and_then(|id| self.waiters.remove(&id))
                .map(|(w, _)| w),
        }
    }

    /// Forgets what is older than [`TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.sent.retain(|_, s| now.duration_since(s.at) < TTL);
        self.waiters
            .retain(|_, (_, t)| now.duration_since(*t) < TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodePublic {
        NodePublic::from_bytes([b; 32])
    }

    #[test]
    fn a_pong_answers_its_own_ping_once() {
        let now = Instant::now();
        let mut p: Pings<&str> = Pings::default();
        let via = Via::Udp("10.0.0.5:41641".parse().unwrap());
        let w = p.add_waiter("cli", now);
        p.sent([1; 12], key(1), via, now, Some(w));
        p.sent([2; 12], key(1), Via::Derp(key(1)), now, Some(w));
        let later = now + Duration::from_millis(3);
        assert_eq!(
            p.on_pong(&[1; 12], key(1), via, later),
            Pong::Answer {
                latency: Duration::from_millis(3),
                waiter: Some("cli")
            }
        );
        // The same pong again, or the waiter's other ping: no second answer
        // to the request.
        assert_eq!(p.on_pong(&[1; 12], key(1), via, later), Pong::Unknown);
        assert_eq!(
            p.on_pong(&[2; 12], key(1), Via::Derp(key(1)), later),
            Pong::Answer {
                latency: Duration::from_millis(3),
                waiter: None
            }
        );
    }

    #[test]
    fn pongs_from_elsewhere_do_not_count() {
        let now = Instant::now();
        let mut p: Pings<()> = Pings::default();
        let via = Via::Udp("10.0.0.5:41641".parse().unwrap());
        p.sent([1; 12], key(1), via, now, None);
        assert_eq!(p.on_pong(&[1; 12], key(2), via, now), Pong::Mismatch);
        p.sent([2; 12], key(1), via, now, None);
        let other = Via::Udp("10.0.0.6:41641".parse().unwrap());
        assert_eq!(p.on_pong(&[2; 12], key(1), other, now), Pong::Mismatch);
        assert_eq!(p.on_pong(&[3; 12], key(1), via, now), Pong::Unknown);
    }

    #[test]
    fn bounded_and_expiring() {
        let now = Instant::now();
        let mut p: Pings<u8> = Pings::default();
        let via = Via::Derp(key(1));
        for i in 0..MAX_PENDING + 5 {
            let mut tx = [0u8; 12];
            tx[..8].copy_from_slice(&(i as u64).to_be_bytes());
            p.sent(tx, key(1), via, now, None);
        }
        assert!(!p.has_room());
        assert_eq!(p.sent.len(), MAX_PENDING);
        let w = p.add_waiter(7, now);
        p.expire(now + TTL - Duration::from_millis(1));
        assert!(!p.has_room());
        p.expire(now + TTL);
        assert!(p.has_room() && p.sent.is_empty());
        // An expired waiter is not answered.
        p.sent([9; 12], key(1), via, now + TTL, Some(w));
        assert_eq!(
            p.on_pong(&[9; 12], key(1), via, now + TTL),
            Pong::Answer {
                latency: Duration::ZERO,
                waiter: None
            }
        );
    }
}
