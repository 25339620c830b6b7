//! Timestamps: UTC, RFC 3339, `Z` suffix, whole seconds, as docs/formats.md fixes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Formats a time as `2026-11-26T06:11:49Z` (RFC 3339, whole seconds, UTC).
/// A time before the epoch is the epoch; one past year 9999 (which RFC 3339
/// cannot write) is `9999-12-31T23:59:59Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let latest = PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
    let secs = i64::try_from(secs).unwrap_or(i64::MAX).min(latest);
    // Whole seconds: `time` writes a fraction only when there is one.
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_else(|| LATEST.to_string())
}

/// What [`rfc3339`] writes for a time it cannot represent.
const LATEST: &str = "9999-12-31T23:59:59Z";

/// Parses an RFC 3339 timestamp into seconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Whether a label value reads as an ISO 8601 timestamp (`2026-11-26T05:40:02Z`,
/// with or without fraction or offset, or with a space for `T`, or a bare date).
pub fn looks_like_timestamp(s: &str) -> bool {
    let s = s.trim();
    if parse_rfc3339(s).is_some() {
        return true;
    }
    let naive = s.replace(' ', "T");
    let naive = naive.trim_end_matches('Z');
    let formats = [
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
        ),
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ];
    if formats
        .iter()
        .any(|f| PrimitiveDateTime::parse(naive, f).is_ok())
    {
        return true;
    }
    // An offset without a colon (`+0000`) or a bare date.
    let date = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, date).is_ok()
        || OffsetDateTime::parse(
            s,
            time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour][offset_minute]"
            ),
        )
        .map(|t| t.to_offset(UtcOffset::UTC))
        .is_ok()
}

/// Milliseconds rounded to 0.1 ms, for log fields (`2.6`, not `2.6181360000000002`).
pub fn round_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_seconds_with_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_673_509_750);
        assert_eq!(rfc3339(t), "2026-11-26T06:11:49Z");
        assert_eq!(parse_rfc3339("2026-11-26T06:11:49Z"), Some(1_795_673_509));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
        let y2k = UNIX_EPOCH + Duration::from_secs(946_684_799);
        assert_eq!(rfc3339(y2k), "1999-12-31T23:59:59Z");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), LATEST);
    }

    #[test]
    fn recognises_timestamps_but_not_slots() {
        for ts in [
            "2026-11-26T05:40:02Z",
            "2026-11-26T05:40:02.123456+00:00",
            "2026-11-26 05:40:02",
            "2026-11-26T05:40:02+0100",
            "2026-11-26",
        ] {
            assert!(looks_like_timestamp(ts), "{ts}");
        }
        for slot in ["0", "0:1", "0:0,0:1", "1,2", "", "GPU-56c0b0b8", "2026"] {
            assert!(!looks_like_timestamp(slot), "{slot}");
        }
    }
}
