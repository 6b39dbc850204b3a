//! Times as the CLI reads them from flags and shows them: durations and
//! RFC 3339 instants in, protobuf timestamps over the wire, and Headscale's
//! `2006-01-02 15:04:05` (UTC) in tables.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use prost_types::Timestamp;

use crate::duration::parse_duration;

/// Headscale's table time layout, kept so that admins' eyes (and greps) carry over.
const TABLE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Clap value parser for durations that configure the CLI itself (`--timeout`).
pub(super) fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// Clap value parser for `--timeout`: zero would fail every request at once.
pub(super) fn timeout_arg(text: &str) -> Result<Duration, String> {
    match duration_arg(text)? {
        d if d.is_zero() => Err("the timeout must be longer than zero".into()),
        d => Ok(d),
    }
}

/// `--expiration DURATION` of the create commands as the instant it names.
/// A bad value is the command's error (exit 1, one line), as in Headscale,
/// not a usage error.
pub(super) fn expiration_flag(now: DateTime<Utc>, text: &str) -> anyhow::Result<Timestamp> {
    let lifetime =
        parse_duration(text).map_err(|e| anyhow::anyhow!("invalid --expiration: {e}"))?;
    expiration_after(now, lifetime).map_err(anyhow::Error::msg)
}

/// `--expiry` of `nodes expire`.
pub(super) fn rfc3339_arg(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2025-08-27T10:00:00Z: {e}"))
}

/// The instant `lifetime` after `now`, as sent in create requests; whole
/// seconds, as every place that shows it does.
pub(super) fn expiration_after(
    now: DateTime<Utc>,
    lifetime: Duration,
) -> Result<Timestamp, String> {
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(|t| to_timestamp(t.trunc_subsecs(0)))
        .ok_or_else(|| {
            format!(
                "an expiration {} seconds from now is out of range",
                lifetime.as_secs()
            )
        })
}

pub(super) fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    // Sub-second precision: nanoseconds within the second are always below 1e9.
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// `None` for an unset field or one the server filled with an impossible value.
pub(super) fn from_timestamp(ts: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// Table cell: empty when unset.
pub(super) fn table_time(ts: Option<&Timestamp>) -> String {
    from_timestamp(ts)
        .map(|t| t.format(TABLE_FORMAT).to_string())
        .unwrap_or_default()
}

/// JSON/YAML value.
pub(super) fn rfc3339(ts: Option<&Timestamp>) -> Option<String> {
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
        assert_eq!(
            ts,
            Timestamp {
                seconds: now.timestamp() + 3600,
                nanos: 0
            }
        );
        let ts = expiration_after(now, duration_arg("90d").unwrap()).unwrap();
        assert_eq!(rfc3339(Some(&ts)).unwrap(), "2025-04-01T00:00:00Z");
        let ts = expiration_after(
            at("2025-01-01T00:00:00.750Z"),
            duration_arg("1500ms").unwrap(),
        )
        .unwrap();
        assert_eq!(
            ts,
            Timestamp {
                seconds: now.timestamp() + 2,
                nanos: 0
            }
        );
    }

    #[test]
    fn expiration_flags() {
        let now = at("2025-01-01T00:00:00Z");
        assert_eq!(
            expiration_flag(now, "24h").unwrap(),
            Timestamp {
                seconds: now.timestamp() + 86_400,
                nanos: 0
            }
        );
        assert_eq!(
            expiration_flag(now, "1h30m").unwrap(),
            Timestamp {
                seconds: now.timestamp() + 5_400,
                nanos: 0
            }
        );
        for (bad, named) in [
            ("-1h", "negative"),
            ("soon", "soon"),
            ("1x", "1x"),
            ("", "empty"),
            ("1.5h", "1.5h"),
        ] {
            let err = expiration_flag(now, bad).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid --expiration: ") && err.contains(named),
                "{bad:?}: {err}"
            );
        }
        assert!(duration_arg("30s").is_ok() && duration_arg("-1s").is_err());
        assert_eq!(timeout_arg("30s"), Ok(Duration::from_secs(30)));
        assert!(timeout_arg("0s").is_err());
    }

    #[test]
    fn rfc3339_arguments_are_normalised_to_utc() {
        assert_eq!(at("2025-08-27T12:00:00+02:00"), at("2025-08-27T10:00:00Z"));
        assert!(rfc3339_arg("2025-08-27 10:00").is_err());
    }

    #[test]
    fn timestamps_format_for_tables_and_json() {
        let ts = Timestamp {
            seconds: 1_136_214_245,
            nanos: 0,
        };
        assert_eq!(table_time(Some(&ts)), "2006-01-02 15:04:05");
        assert_eq!(rfc3339(Some(&ts)).as_deref(), Some("2006-01-02T15:04:05Z"));
        assert_eq!(table_time(None), "");
        assert_eq!(rfc3339(None), None);
        assert_eq!(
            from_timestamp(Some(&Timestamp {
                seconds: 0,
                nanos: -1
            })),
            None
        );
    }
}
