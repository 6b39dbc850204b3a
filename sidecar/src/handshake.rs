//! When to resend a WireGuard handshake initiation that got no answer.
//!
//! WireGuard (boringtun, wireguard-go) retransmits an unanswered initiation
//! after `REKEY_TIMEOUT`, 5 s. At pod start the first initiation is often
//! lost — typically the peer has not yet heard of the new node from control
//! and drops it — and then the first packet waits those 5 s. While a peer
//! has no session, this schedule resends sooner: every 50 ms for the first
//! 200 ms (the peer usually hears of us within a few hundred, and until it
//! does it drops them unanswered: cheaply, with one key agreement at most),
//! then
//! backing off to a 1 s cap, for one `REKEY_TIMEOUT`; after that
//! boringtun's own timer carries on (its next retry comes 5 s after our
//! last one). At most eight in the first second stays under boringtun's
//! per-peer handshake rate limit (ten a second), and 50 ms gaps are well
//! above wireguard-go's flood guard (an initiation within 20 ms of the last
//! one is dropped).
//!
//! Pure: time is passed in; the engine sends what is due.

use std::collections::HashMap;
use std::time::Duration;

use meshscale_wire::NodePublic;
use tokio::time::Instant;

/// Gaps before the 1st, 2nd, ... resend (counted from the previous one);
/// the last gap repeats.
const GAPS_MS: [u64; 9] = [50, 50, 50, 50, 100, 200, 400, 800, 1000];
/// Fast resends stop this long after the first initiation of an attempt:
/// WireGuard's `REKEY_TIMEOUT`, when boringtun would have sent its first.
pub const FAST_WINDOW: Duration = Duration::from_secs(5);
/// The least time between two initiations: the answer to the last one may
/// still be on its way, and wireguard-go drops an initiation that comes
/// within 20 ms of the previous one.
const MIN_GAP: Duration = Duration::from_millis(25);

/// The gap before resend number `n` (0-based).
pub fn gap(n: u32) -> Duration {
    let i = usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(GAPS_MS.len() - 1);
    Duration::from_millis(GAPS_MS[i])
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    started: Instant,
    /// When the last initiation left.
    last: Instant,
    /// Resends made so far (the first initiation not counted).
    resends: u32,
    /// `None`: the fast window is over; boringtun's timer is in charge.
    next: Option<Instant>,
}

/// The peers with a handshake under way and no session yet.
#[derive(Debug, Default)]
pub struct Handshakes {
    attempts: HashMap<NodePublic, Attempt>,
}

impl Handshakes {
    /// An initiation to `key` left, for whatever reason (first packet,
    /// boringtun's timer, one of ours). Starts an attempt if none is under
    /// way; a resend moves the schedule on.
    pub fn on_initiation(&mut self, key: NodePublic, now: Instant) {
        match self.attempts.get_mut(&key) {
            None => {
                self.attempts.insert(
                    key,
                    Attempt {
                        started: now,
                        last: now,
                        resends: 0,
                        next: Some(now + gap(0)),
                    },
                );
            }
            // Past the window: boringtun's own retries, left alone.
            Some(a) if a.next.is_none() => {}
            Some(a) => {
                a.last = now;
                a.resends = a.resends.saturating_add(1);
                let next = now + gap(a.resends);
                a.next = (next.duration_since(a.started) < FAST_WINDOW).then_some(next);
            }
        }
    }

    /// The handshake with `key` completed, or boringtun gave it up, or the
    /// peer is gone: the next initiation starts a new attempt.
    pub fn done(&mut self, key: &NodePublic) {
        self.attempts.remove(key);
    }

    /// A path to `key` was just proven: a resend is worth trying now, or
    /// as soon as [`MIN_GAP`] has passed since the last initiation.
    pub fn hurry(&mut self, key: &NodePublic, now: Instant) {
        if let Some(a) = self.attempts.get_mut(key)
            && let Some(next) = a.next
        {
            a.next = Some(next.min((a.last + MIN_GAP).max(now)));
        }
    }

    pub fn is_pending(&self, key: &NodePublic) -> bool {
        self.attempts.contains_key(key)
    }

    /// When the engine must next look at [`Handshakes::due`].
    pub fn next_due(&self) -> Option<Instant> {
        self.attempts.values().filter_map(|a| a.next).min()
    }

    /// The peers whose resend is due at `now`. The caller resends (then
    /// reports it with [`Handshakes::on_initiation`]) or calls
    /// [`Handshakes::done`] when the peer turns out to have a session.
    pub fn due(&self, now: Instant) -> Vec<NodePublic> {
        self.attempts
            .iter()
            .filter(|(_, a)| a.next.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodePublic {
        NodePublic::from_bytes([b; 32])
    }

    /// Drives one unanswered attempt: the times at which resends go out.
    fn resend_times(h: &mut Handshakes, k: NodePublic, start: Instant) -> Vec<Duration> {
        h.on_initiation(k, start);
        let mut out = Vec::new();
        while let Some(t) = h.next_due() {
            assert_eq!(h.due(t), [k]);
            assert!(h.due(t - Duration::from_millis(1)).is_empty(), "not early");
            out.push(t - start);
            h.on_initiation(k, t);
            assert!(out.len() < 100, "never stops");
        }
        out
    }

    #[test]
    fn unanswered_initiation_is_resent_fast_then_left_to_boringtun() {
        let start = Instant::now();
        let mut h = Handshakes::default();
        let k = key(1);
        let times = resend_times(&mut h, k, start);
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [50, 100, 150, 200, 300, 500, 900, 1700, 2700, 3700, 4700]
        );
        // Far more than boringtun's single resend at 5 s, and all of them
        // before it.
        assert!(times.iter().all(|t| *t < FAST_WINDOW));
        // The first initiation and its resends: no more than ten in any
        // second (boringtun's rate limit), never closer than wireguard-go's
        // 20 ms flood guard.
        let all: Vec<Duration> = std::iter::once(Duration::ZERO)
            .chain(times.iter().copied())
            .collect();
        for w in all.windows(10) {
            assert!(w[9] - w[0] >= Duration::from_secs(1), "{ms:?}");
        }
        for w in all.windows(2) {
            assert!(w[1] - w[0] > Duration::from_millis(20), "{ms:?}");
        }
        // boringtun's own retry after the window does not restart the
        // fast schedule...
        h.on_initiation(k, start + Duration::from_secs(10));
        assert_eq!(h.next_due(), None);
        assert!(h.is_pending(&k));
        // ...but a new attempt after `done` does.
        h.done(&k);
        assert!(!h.is_pending(&k));
        let later = start + Duration::from_secs(100);
        h.on_initiation(k, later);
        assert_eq!(h.next_due(), Some(later + gap(0)));
    }

    #[test]
    fn answered_handshake_stops_resends() {
        let now = Instant::now();
        let mut h = Handshakes::default();
        h.on_initiation(key(1), now);
        h.on_initiation(key(2), now + Duration::from_millis(30));
        assert_eq!(h.next_due(), Some(now + gap(0)));
        h.done(&key(1));
        assert_eq!(h.next_due(), Some(now + Duration::from_millis(80)));
        assert!(h.due(now + Duration::from_millis(79)).is_empty());
        assert_eq!(h.due(now + Duration::from_millis(80)), [key(2)]);
        h.done(&key(2));
        assert_eq!(h.next_due(), None);
        assert!(h.due(now + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_new_path_makes_the_resend_due_now() {
        let now = Instant::now();
        let mut h = Handshakes::default();
        let k = key(3);
        h.hurry(&k, now);
        assert_eq!(h.next_due(), None, "no attempt, nothing to hurry");
        h.on_initiation(k, now);
        // Right after the initiation: its answer may be on the way.
        h.hurry(&k, now + Duration::from_millis(1));
        assert_eq!(h.next_due(), Some(now + MIN_GAP));
        let t = now + Duration::from_millis(40);
        h.hurry(&k, t);
        assert_eq!(h.due(t), [k]);
        // Past the window, boringtun is in charge: no hurry.
        let mut h = Handshakes::default();
        resend_times(&mut h, k, now);
        h.hurry(&k, now + Duration::from_secs(6));
        assert_eq!(h.next_due(), None);
    }
}
