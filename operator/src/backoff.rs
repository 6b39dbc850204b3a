//! Per-object exponential back-off for failed reconciles: a control server
//! that is down gets polled less and less often, and a success resets it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn fail(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        let delay = self
            .base
            .saturating_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
            .min(self.max);
        *n = n.saturating_add(1);
        delay
    }

    pub fn reset(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let d: Vec<u64> = (0..6).map(|_| b.fail("x").as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 10, 10]);
        for _ in 0..100 {
            b.fail("x");
        }
        assert_eq!(b.fail("x").as_secs(), 10);
        b.reset("x");
        assert_eq!(b.fail("x").as_secs(), 1);
        assert_eq!(b.fail("y").as_secs(), 1);
    }
}
