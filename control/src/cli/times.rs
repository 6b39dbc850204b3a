//! Times as the CLI reads them from flags and shows them: durations and
//! RFC 3339 instants in, protobuf timestamps over the wire, and Headscale's
//! `2006-01-02 15:04:05` (UTC) in tables.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;

use crate::duration::parse_duration;

/// Headscale's table time layout, kept so that admins' eyes (and greps) carry over.
const TABLE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Clap value parser for `--expiration`: refusing a bad duration before any
/// connection is made makes it a usage error, like any other malformed flag.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// Clap value parser for `--expiry`.
pub fn rfc3339_arg(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2025-08-27T10:00:00Z: {e}"))
}

/// The instant `lifetime` after `now`, as sent in create requests.
pub fn expiration_after(now: DateTime<Utc>, lifetime: Duration) -> Result<Timestamp, String> {
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(to_timestamp)
        .ok_or_else(|| format!("an expiration {} seconds from now is out of range", lifetime.as_secs()))
}

pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    // Sub-second precision: nanoseconds within the second are always below 1e9.
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// `None` for an unset field or one the server filled with an impossible value.
pub fn from_timestamp(ts: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// Table cell: empty when unset.
pub fn table_time(ts: Option<&Timestamp>) -> String {
    from_timestamp(ts).map(|t| t.format(TABLE_FORMAT).to_string()).unwrap_or_default()
}

/// JSON/YAML value.
pub fn rfc3339(ts: Option<&Timestamp>) -> Option<String> {
    from_timestamp(ts).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        rfc3339_arg(text).unwrap()
    }

    #[test]
    fn expiration_is_now_plus_duration() {
        let now = at("2025-01-01T00:00:00Z");
        let ts = expiration_after(now, duration_arg("1h").unwrap()).unwrap();
        assert_eq!(ts, Timestamp { seconds: now.timestamp() + 3600, nanos: 0 });
        let ts = expiration_after(now, duration_arg("90d").unwrap()).unwrap();
        assert_eq!(rfc3339(Some(&ts)).unwrap(), "2025-04-01T00:00:00Z");
        let ts = expiration_after(at("2025-01-01T00:00:00.250Z"), duration_arg("1500ms").unwrap()).unwrap();
        assert_eq!(ts, Timestamp { seconds: now.timestamp() + 1, nanos: 750_000_000 });
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "-1h", "1x", "1.5h", "h"] {
            assert!(duration_arg(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rfc3339_arguments_are_normalised_to_utc() {
        assert_eq!(at("2025-08-27T12:00:00+02:00"), at("2025-08-27T10:00:00Z"));
        assert!(rfc3339_arg("2025-08-27 10:00").is_err());
    }

    #[test]
    fn timestamps_format_for_tables_and_json() {
        let ts = Timestamp { seconds: 1_136_214_245, nanos: 0 };
        assert_eq!(table_time(Some(&ts)), "2006-01-02 15:04:05");
        assert_eq!(rfc3339(Some(&ts)).as_deref(), Some("2006-01-02T15:04:05Z"));
        assert_eq!(table_time(None), "");
        assert_eq!(rfc3339(None), None);
        assert_eq!(from_timestamp(Some(&Timestamp { seconds: 0, nanos: -1 })), None);
    }
}
