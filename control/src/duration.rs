//! Durations as admins type them: `30m`, `24h`, `90d`, `1h30m`, `1w`, `1y`.
//! The units of Headscale's CLI (Prometheus-style), no sign allowed.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("duration {0:?} is negative")]
    Negative(String),
    #[error(
        "duration {0:?} is not a number followed by a unit (ms, s, m, h, d, w, y), like 90d or 1h30m"
    )]
    Invalid(String),
    #[error("duration {0:?} is too long")]
    Overflow(String),
}

/// Longest accepted text; anything longer is not a duration a person typed.
const MAX_LEN: usize = 64;

pub(crate) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    if t.starts_with('-') {
        return Err(DurationError::Negative(t.to_string()));
    }
    if t.len() > MAX_LEN {
        return Err(DurationError::Invalid(t.to_string()));
    }
    let invalid = || DurationError::Invalid(t.to_string());
    let overflow = || DurationError::Overflow(t.to_string());
    let bytes = t.as_bytes();
    let mut total_ms: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(invalid());
        }
        let number: u64 = t[start..i].parse().map_err(|_| overflow())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match &t[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(invalid()),
        };
        let part = number.checked_mul(unit_ms).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
    }
    // Keep every duration representable as a timestamp offset.
    if total_ms > 1000 * 365 * 86_400_000 {
        return Err(overflow());
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_admin_units() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn refuses_bad_text() {
        assert_eq!(
            parse_duration("-1h"),
            Err(DurationError::Negative("-1h".into()))
        );
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in [
            "h",
            "10",
            "10x",
            "1.5h",
            "1h-",
            "abc",
            "99999999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
        assert!(matches!(
            parse_duration("9999999y"),
            Err(DurationError::Overflow(_))
        ));
    }
}
