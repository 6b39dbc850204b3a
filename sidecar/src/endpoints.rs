//! Our own endpoint candidates (magicsock's endpoint discovery, reduced):
//! the LAN address that routes towards control, the interface addresses,
//! and the reflexive addresses STUN servers report, with the STUN
//! transactions in flight. Pure: the engine does the sending, finds the
//! addresses and passes time in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::stun::TxId;

/// How often the STUN servers are asked for our reflexive address (a NAT
/// mapping can change; Tailscale's netcheck runs every 20–26 s).
pub const STUN_ROUND: Duration = Duration::from_secs(20);
/// A STUN request unanswered for this long is forgotten.
const STUN_TTL: Duration = Duration::from_secs(10);
const MAX_STUN_PENDING: usize = 64;

/// What a STUN response did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunOutcome {
    /// Not an answer to a request of ours (anyone could send us a forged
    /// "you are at X" to steer peers' traffic): ignored.
    Unsolicited,
    /// The address we already had, confirmed.
    Confirmed,
    /// A new reflexive address (replacing the old one of its family).
    New,
}

#[derive(Debug)]
pub struct Endpoints {
    port: u16,
    ipv6: bool,
    /// The address routing towards control.
    local_ip: Option<IpAddr>,
    /// Addresses of our interfaces.
    iface_addrs: Vec<IpAddr>,
    /// Where to send STUN binding requests (the DERP map's STUN nodes).
    stun_targets: Vec<SocketAddr>,
    stun_pending: HashMap<TxId, Instant>,
    /// Reflexive addresses, with when they were last confirmed.
    reflexive: Vec<(SocketAddr, Instant)>,
}

impl Endpoints {
    /// `port`: our UDP port; `ipv6`: whether the socket can use IPv6.
    pub fn new(port: u16, ipv6: bool) -> Self {
        Self {
            port,
            ipv6,
            local_ip: None,
            iface_addrs: Vec::new(),
            stun_targets: Vec::new(),
            stun_pending: HashMap::new(),
            reflexive: Vec::new(),
        }
    }

    pub fn set_local_ip(&mut self, ip: IpAddr) {
        self.local_ip = Some(ip);
    }

    /// Returns true when the addresses changed.
    pub fn set_interfaces(&mut self, addrs: Vec<IpAddr>) -> bool {
        if addrs == self.iface_addrs {
            return false;
        }
        self.iface_addrs = addrs;
        true
    }

    pub fn set_stun_targets(&mut self, targets: Vec<SocketAddr>) {
        self.stun_targets = targets;
    }

    /// The address routing towards control first (the likeliest to work
    /// for peers on our LAN), then the other interface addresses.
    pub fn local(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for ip in self.local_ip.iter().chain(self.iface_addrs.iter()) {
            if ip.is_ipv6() && !self.ipv6 {
                continue;
            }
            let ep = SocketAddr::new(*ip, self.port);
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
        out
    }

    pub fn reflexive(&self) -> Vec<SocketAddr> {
        self.reflexive.iter().map(|(a, _)| *a).collect()
    }

    /// Every endpoint peers may reach us at: STUN-learned first.
    pub fn all(&self) -> Vec<SocketAddr> {
        let mut out = self.reflexive();
        for e in self.local() {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }

    /// Starts a STUN round: drops what went stale (returns true when a
    /// reflexive address did) and gives the requests to send, each already
    /// counted as in flight.
    pub fn stun_round(
        &mut self,
        now: Instant,
        mut new_tx: impl FnMut() -> TxId,
    ) -> (bool, Vec<(TxId, SocketAddr)>) {
        // A reflexive address not confirmed for three rounds is stale.
        let before = self.reflexive.len();
        self.reflexive
            .retain(|(_, t)| now.duration_since(*t) < STUN_ROUND * 3);
        let dropped = self.reflexive.len() != before;
        self.stun_pending
            .retain(|_, t| now.duration_since(*t) < STUN_TTL);
        let mut out = Vec::new();
        for target in &self.stun_targets {
            if self.stun_pending.len() >= MAX_STUN_PENDING {
                break;
            }
            let tx = new_tx();
            self.stun_pending.insert(tx, now);
            out.push((tx, *target));
        }
        (dropped, out)
    }

    /// A request that could not be sent: no answer to wait for.
    pub fn stun_not_sent(&mut self, tx: &TxId) {
        self.stun_pending.remove(tx);
    }

    /// A STUN response for transaction `tx` naming `addr`.
    pub fn on_stun(&mut self, tx: TxId, addr: SocketAddr, now: Instant) -> StunOutcome {
        if self.stun_pending.remove(&tx).is_none() {
            return StunOutcome::Unsolicited;
        }
        if let Some(entry) = self.reflexive.iter_mut().find(|(a, _)| *a == addr) {
            entry.1 = now;
            return StunOutcome::Confirmed;
        }
        // One per family: a new mapping replaces the old one.
        self.reflexive
            .retain(|(a, _)| a.is_ipv4() != addr.is_ipv4());
        self.reflexive.push((addr, now));
        StunOutcome::New
    }

    /// Logged out: nothing to discover any more.
    pub fn clear_stun(&mut self) {
        self.stun_targets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_endpoints_route_first_deduplicated_and_by_family() {
        let mut e = Endpoints::new(41641, false);
        assert!(e.all().is_empty());
        e.set_local_ip("10.0.0.2".parse().unwrap());
        assert!(e.set_interfaces(vec![
            "10.0.0.2".parse().unwrap(),
            "192.168.1.2".parse().unwrap(),
            "fd00::2".parse().unwrap(),
        ]));
        assert!(!e.set_interfaces(e.iface_addrs.clone()), "unchanged");
        // No IPv6 socket: no IPv6 endpoint.
        assert_eq!(e.local(), [sa("10.0.0.2:41641"), sa("192.168.1.2:41641")]);
        let mut e6 = Endpoints::new(41641, true);
        e6.set_interfaces(vec!["fd00::2".parse().unwrap()]);
        assert_eq!(e6.local(), [sa("[fd00::2]:41641")]);
    }

    #[test]
    fn stun_answers_only_count_for_our_requests() {
        let now = Instant::now();
        let mut e = Endpoints::new(41641, true);
        e.set_local_ip("10.0.0.2".parse().unwrap());
        e.set_stun_targets(vec![sa("198.51.100.1:3478")]);
        let mut n = 0u8;
        let (dropped, reqs) = e.stun_round(now, || {
            n += 1;
            [n; 12]
        });
        assert!(!dropped);
        assert_eq!(reqs, [([1; 12], sa("198.51.100.1:3478"))]);

        let forged = e.on_stun([9; 12], sa("203.0.113.66:1"), now);
        assert_eq!(forged, StunOutcome::Unsolicited);
        assert_eq!(
            e.on_stun([1; 12], sa("203.0.113.5:6000"), now),
            StunOutcome::New
        );
        // Each answer counts once.
        assert_eq!(
            e.on_stun([1; 12], sa("203.0.113.5:6000"), now),
            StunOutcome::Unsolicited
        );
        // STUN first, then the LAN.
        assert_eq!(e.all(), [sa("203.0.113.5:6000"), sa("10.0.0.2:41641")]);

        // Confirmed in the next round; a new mapping replaces the old one.
        let t = now + STUN_ROUND;
        let (_, reqs) = e.stun_round(t, || [2; 12]);
        assert_eq!(
            e.on_stun(reqs[0].0, sa("203.0.113.5:6000"), t),
            StunOutcome::Confirmed
        );
        let (_, reqs) = e.stun_round(t, || [3; 12]);
        assert_eq!(
            e.on_stun(reqs[0].0, sa("203.0.113.5:7000"), t),
            StunOutcome::New
        );
        assert_eq!(e.reflexive(), [sa("203.0.113.5:7000")]);

        // Unconfirmed for three rounds: stale, and said so.
        let (dropped, _) = e.stun_round(t + STUN_ROUND * 3, || [4; 12]);
        assert!(dropped);
        assert!(e.reflexive().is_empty());
    }

    #[test]
    fn pending_requests_are_bounded_and_expire() {
        let now = Instant::now();
        let mut e = Endpoints::new(1, true);
        e.set_stun_targets(
            (0..100)
                .map(|i| sa(&format!("198.51.100.{i}:3478")))
                .collect(),
        );
        let mut n = 0u32;
        let mut tx = || {
            n += 1;
            let mut t = [0u8; 12];
            t[..4].copy_from_slice(&n.to_be_bytes());
            t
        };
        let (_, reqs) = e.stun_round(now, &mut tx);
        assert_eq!(reqs.len(), MAX_STUN_PENDING);
        let (_, more) = e.stun_round(now, &mut tx);
        assert!(more.is_empty(), "none while the first are in flight");
        e.stun_not_sent(&reqs[0].0);
        let (_, one) = e.stun_round(now, &mut tx);
        assert_eq!(one.len(), 1);
        // Unanswered ones expire: an answer after that is not ours.
        let later = now + STUN_TTL;
        let (_, again) = e.stun_round(later, &mut tx);
        assert_eq!(again.len(), MAX_STUN_PENDING);
        assert_eq!(
            e.on_stun(reqs[1].0, sa("203.0.113.5:1"), later),
            StunOutcome::Unsolicited
        );
    }
}
