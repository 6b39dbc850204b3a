//! Serde helpers that reproduce Go `encoding/json` conventions.
//!
//! Go peers emit `null` for nil slices and maps in fields without
//! `omitempty`, encode `time.Time` as RFC 3339 with trimmed nanoseconds, and
//! encode `[]byte` as standard base64. Rust's serde defaults differ on all
//! three, so fields opt into these helpers with `with`/`deserialize_with`.

use chrono::{DateTime, NaiveDate, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Go's zero `time.Time`, `0001-01-01T00:00:00Z`.
///
/// Go clients send it for time fields without `omitempty` (for example
/// `RegisterRequest.Expiry` when no expiry is requested).
pub fn go_zero_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether `t` is Go's zero time (Go's `time.Time.IsZero`).
pub fn is_go_zero_time(t: &DateTime<Utc>) -> bool {
    *t == go_zero_time()
}

/// Why a time could not be put on or taken off the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("time is not valid RFC 3339: {0}")]
    Parse(String),
    #[error("year {0} is outside 0..=9999, which Go cannot encode in JSON")]
    YearOutOfRange(i32),
}

/// Formats like Go's `time.Time.MarshalJSON` for a UTC time: RFC 3339 with the
/// fractional second trimmed of trailing zeros (`.5`, `.123456789`, or none).
pub fn format_go_time(t: &DateTime<Utc>) -> Result<String, TimeError> {
    use chrono::Datelike;
    // Go refuses to marshal years it cannot print in four digits; a peer would
    // refuse to parse what chrono prints for them, so fail here instead.
    if !(0..=9999).contains(&t.year()) {
        return Err(TimeError::YearOutOfRange(t.year()));
    }
    // chrono represents a leap second as nanos >= 1e9; Go has no leap seconds.
    let t = match t.with_nanosecond(t.nanosecond().min(999_999_999)) {
        Some(t) => t,
        None => *t,
    };
    let mut s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // `Nanos` always prints nine digits; Go's RFC3339Nano trims them.
    if let Some(dot) = s.rfind('.') {
        let frac_end = s.len() - 1; // the trailing 'Z'
        let trimmed = s[dot + 1..frac_end].trim_end_matches('0').len();
        let cut_from = if trimmed == 0 { dot } else { dot + 1 + trimmed };
        s.replace_range(cut_from..frac_end, "");
    }
    Ok(s)
}

/// Parses an RFC 3339 time with any UTC offset (Go clients serialise
/// `time.Unix(123, 0)` in their local zone) and normalises it to UTC.
pub fn parse_go_time(s: &str) -> Result<DateTime<Utc>, TimeError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| TimeError::Parse(e.to_string()))
}

fn de_opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_go_time(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A non-optional `time.Time`: always emitted; `null` or absent reads as the
/// zero time, as in Go.
pub mod time {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let text = format_go_time(t).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        Ok(de_opt_time(d)?.unwrap_or_else(go_zero_time))
    }
}

/// A Go `*time.Time`: `None` is nil. The zero time is a real value here (for
/// example `PeerChange.KeyExpiry` set to zero means "no longer expires").
/// Use with `skip_serializing_if = "Option::is_none"` and `default`.
pub mod opt_time {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::time::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        de_opt_time(d)
    }
}

/// A Go `time.Time` tagged `omitzero`/`omitempty`: `None` stands for the zero
/// time. Older servers and clients emitted the zero time instead of omitting
/// it, so reading it yields `None` too.
pub mod zero_time {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        opt_time::serialize(t, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(de_opt_time(d)?.filter(|t| !is_go_zero_time(t)))
    }
}

/// Reads `null` as the type's default. Go writes `null` for nil slices and
/// maps in fields without `omitempty`; serde would otherwise reject it.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads a JSON object whose values may be `null` (Go nil slices), turning
/// them into empty vectors: `{"cap": null}` is how Go encodes a capability
/// with no arguments.
pub fn nullable_map_values<'de, D, K, V>(
    d: D,
) -> Result<std::collections::BTreeMap<K, Vec<V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    let raw: Option<std::collections::BTreeMap<K, Option<Vec<V>>>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Go `[]byte`: standard (padded) base64 text. `null` reads as empty; use
/// with `skip_serializing_if = "Vec::is_empty"` and `default`.
pub mod base64_bytes {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `skip_serializing_if` helper for Go's `omitempty`/`omitzero` on numbers.
pub fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// `skip_serializing_if` helper for Go's `omitempty` on floats.
pub fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// `skip_serializing_if` helper for Go's `omitempty` on booleans.
pub fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn zero_time_round_trips() {
        let z = go_zero_time();
        assert_eq!(format_go_time(&z).unwrap(), "0001-01-01T00:00:00Z");
        assert_eq!(parse_go_time("0001-01-01T00:00:00Z").unwrap(), z);
        assert!(is_go_zero_time(&z));
    }

    #[test]
    fn fraction_is_trimmed_like_go() {
        let base = Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap();
        let cases = [
            (0, "2025-03-04T05:06:07Z"),
            (500_000_000, "2025-03-04T05:06:07.5Z"),
            (123_456_789, "2025-03-04T05:06:07.123456789Z"),
            (120_000, "2025-03-04T05:06:07.00012Z"),
        ];
        for (nanos, want) in cases {
            let t = base.with_nanosecond(nanos).unwrap();
            assert_eq!(format_go_time(&t).unwrap(), want);
            assert_eq!(parse_go_time(want).unwrap(), t);
        }
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        // What a client in UTC+1 sends on logout: time.Unix(123, 0).
        let t = parse_go_time("1970-01-01T01:02:03+01:00").unwrap();
        assert_eq!(t.timestamp(), 123);
        assert_eq!(format_go_time(&t).unwrap(), "1970-01-01T00:02:03Z");
    }

    #[test]
    fn bad_times_are_errors() {
        for s in ["", "yesterday", "2025-13-01T00:00:00Z", "2025-01-01"] {
            assert!(parse_go_time(s).is_err(), "{s:?}");
        }
        let far = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(format_go_time(&far), Err(TimeError::YearOutOfRange(10000)));
    }
}
