//! Percentiles over a handful of samples.

/// Nearest-rank percentile (`q` in 0..=100) of unsorted samples.
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

/// The contract's `{p50_ms, p99_ms, max_ms, samples}` plus the same
/// percentiles over every single session's delay.
pub fn summary(all_received: &[f64], per_session: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "p50_ms": percentile(all_received, 50.0),
        "p99_ms": percentile(all_received, 99.0),
        "max_ms": percentile(all_received, 100.0),
        "samples": all_received.len(),
        "session_p50_ms": percentile(per_session, 50.0),
        "session_p99_ms": percentile(per_session, 99.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&s, 50.0), Some(3.0));
        assert_eq!(percentile(&s, 99.0), Some(5.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
