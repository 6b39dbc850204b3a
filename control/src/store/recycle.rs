//! Which pooled connections to close after the storage refused a write.
//!
//! SQLite opens a database file it cannot write (read-only remount,
//! immutable file) read-only without saying so, and a PostgreSQL session
//! keeps the read-only default it started with: a connection opened while
//! the storage refused writes keeps refusing after the storage is back. So
//! every connection older than the last storage fault, or than the last
//! recovery from one, is closed at its next checkout instead of reused.
//!
//! Process-wide: a server has one store. Where a process holds several
//! (tests), a fault in one only makes the others reconnect.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since [`EPOCH`] of the last mark; 0: never marked.
static RECYCLE_UP_TO_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// No connection open now is to be reused.
pub(super) fn mark() {
    RECYCLE_UP_TO_MS.fetch_max(now_ms().max(1), Ordering::AcqRel);
}

/// Whether a pooled connection of this age may be handed out.
pub(super) fn reusable(age: Duration) -> bool {
    let mark = RECYCLE_UP_TO_MS.load(Ordering::Acquire);
    if mark == 0 {
        return true;
    }
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    now_ms().saturating_sub(age_ms) > mark
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_older_than_a_mark_are_not_reused() {
        // Ages are relative to now: a connection as old as the process
        // predates any mark; a brand-new one (age 0) is only reusable once
        // a millisecond has passed since the mark.
        let _ = now_ms();
        mark();
        let old = EPOCH.get_or_init(Instant::now).elapsed() + Duration::from_secs(1);
        assert!(!reusable(old));
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_millis(3) {
            std::hint::spin_loop();
        }
        assert!(reusable(Duration::ZERO));
    }
}
