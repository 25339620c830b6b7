//! Timestamps: UTC, RFC 3339, `Z` suffix, whole seconds, as docs/formats.md
//! fixes them. [`Timestamp`] is the model's time: parsed once where a time
//! enters (a file read back, a collector), compared and subtracted as a
//! number from then on, and written as [`rfc3339`] writes it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// A moment in whole seconds, UTC: what every timestamp this program writes
/// holds (`2026-11-26T06:11:49Z`).
///
/// - Written (`Display`, `Serialize`) as RFC 3339 in UTC with `Z` and no
///   fraction, exactly as [`rfc3339`] writes the same second: the files do
///   not change for holding a number rather than the text.
/// - Read ([`Timestamp::parse`], `FromStr`, `Deserialize`) from any RFC 3339
///   text: any offset (turned to UTC), with or without a fraction (cut to
///   the whole second before it), as an older scanner or a person editing a
///   file may have written it. Text that is not RFC 3339 is an error here;
///   what the inventory does with such a value is the model's choice (see
///   `crate::model`: an optional time is then absent, a required one the
///   moment it was read).
/// - Kept within what RFC 3339 can write: `0000-01-01T00:00:00Z` to
///   `9999-12-31T23:59:59Z` (a time outside is the nearest end). A
///   [`SystemTime`] before the epoch is the epoch, as [`rfc3339`] has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a text is not a [`Timestamp`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp: {text:?}")]
pub struct TimestampError {
    /// The text (at most its first 64 characters).
    pub text: String,
}

impl Timestamp {
    /// `1970-01-01T00:00:00Z`.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);
    /// `0000-01-01T00:00:00Z`, the earliest time RFC 3339 can write.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200);
    /// `9999-12-31T23:59:59Z`, the latest time RFC 3339 can write.
    pub const MAX: Timestamp = Timestamp(253_402_300_799);

    /// This second, by the system clock.
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// The whole second `t` is in (the epoch for a time before it).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        Timestamp::from_unix_seconds(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// `secs` seconds after the Unix epoch (before it when negative),
    /// within [`Timestamp::MIN`] and [`Timestamp::MAX`].
    pub const fn from_unix_seconds(secs: i64) -> Timestamp {
        if secs < Timestamp::MIN.0 {
            Timestamp::MIN
        } else if secs > Timestamp::MAX.0 {
            Timestamp::MAX
        } else {
            Timestamp(secs)
        }
    }

    /// Seconds since the Unix epoch (negative before it).
    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    /// The same moment as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        match u64::try_from(self.0) {
            Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
            Err(_) => UNIX_EPOCH - Duration::from_secs(self.0.unsigned_abs()),
        }
    }

    /// Reads RFC 3339 text, any offset, with or without a fraction (see
    /// [`Timestamp`]).
    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Timestamp::from_unix_seconds(t.unix_timestamp()))
            .map_err(|_| TimestampError {
                text: text.chars().take(64).collect(),
            })
    }

    /// Seconds from `earlier` to this one (negative when `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> i64 {
        self.0 - earlier.0
    }

    /// The time from `earlier` to this one (zero when `earlier` is later).
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_secs(u64::try_from(self.seconds_since(earlier)).unwrap_or(0))
    }

    /// `secs` seconds later (earlier when negative), within the range.
    pub fn plus_seconds(self, secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(self.0.saturating_add(secs))
    }
}

/// The epoch: what `..Default::default()` leaves in a model value's time
/// (every value the engine writes sets its times).
impl Default for Timestamp {
    fn default() -> Timestamp {
        Timestamp::UNIX_EPOCH
    }
}

impl Timestamp {
    /// The RFC 3339 text, on the stack. A scan writes thousands of times,
    /// most of them the same few seconds (when each workload was first
    /// seen, the start of this scan): the text of the last ones written on
    /// this thread is kept, a slot per second modulo [`RECENT`].
    fn text(self) -> Text {
        RECENT_TEXTS.with(|recent| {
            let mut recent = recent.borrow_mut();
            let slot = &mut recent[self.0.rem_euclid(RECENT as i64) as usize];
            match slot {
                Some((secs, text)) if *secs == self.0 => *text,
                _ => {
                    let text = self.format();
                    *slot = Some((self.0, text));
                    text
                }
            }
        })
    }

    /// The RFC 3339 text, as `time` writes it.
    fn format(self) -> Text {
        let mut text = Text {
            bytes: [0; Text::CAPACITY],
            len: 0,
        };
        // Within MIN..=MAX every second formats, in 20 bytes; the fallback
        // is for the impossible, as in `rfc3339`.
        let written = OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|dt| dt.format_into(&mut &mut text.bytes[..], &Rfc3339).ok());
        match written {
            Some(len) if std::str::from_utf8(&text.bytes[..len]).is_ok() => text.len = len,
            _ => {
                text.bytes[..LATEST.len()].copy_from_slice(LATEST.as_bytes());
                text.len = LATEST.len();
            }
        }
        text
    }
}

/// How many texts of recent times each thread keeps.
const RECENT: usize = 64;

thread_local! {
    static RECENT_TEXTS: std::cell::RefCell<[Option<(i64, Text)>; RECENT]> =
        const { std::cell::RefCell::new([None; RECENT]) };
}

/// A [`Timestamp`]'s text, on the stack.
#[derive(Clone, Copy)]
struct Text {
    bytes: [u8; Text::CAPACITY],
    len: usize,
}

impl Text {
    /// Room for `YYYY-MM-DDTHH:MM:SSZ` and more.
    const CAPACITY: usize = 32;

    fn as_str(&self) -> &str {
        // Checked when written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or(LATEST)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Timestamp, TimestampError> {
        Timestamp::parse(s)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        Timestamp::from_system_time(t)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

/// Formats a time as `2026-11-26T06:11:49Z` (RFC 3339, whole seconds, UTC).
/// A time before the epoch is the epoch; one past year 9999 (which RFC 3339
/// cannot write) is `9999-12-31T23:59:59Z`. The same as
/// `Timestamp::from_system_time(t).to_string()`.
pub fn rfc3339(t: SystemTime) -> String {
    Timestamp::from_system_time(t).to_string()
}

/// What [`rfc3339`] writes for a time it cannot represent.
const LATEST: &str = "9999-12-31T23:59:59Z";

/// Whether a label value reads as an ISO 8601 timestamp (`2026-11-26T05:40:02Z`,
/// with or without fraction or offset, or with a space for `T`, or a bare date).
pub fn looks_like_timestamp(s: &str) -> bool {
    let s = s.trim();
    if Timestamp::parse(s).is_ok() {
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
    fn the_recent_texts_kept_are_those_of_the_same_second() {
        let t = Timestamp::from_unix_seconds(1_795_673_509);
        // Same slot, other seconds: each its own text, again and again.
        let other = t.plus_seconds(RECENT as i64);
        let before = t.plus_seconds(-(RECENT as i64));
        for _ in 0..3 {
            assert_eq!(t.to_string(), "2026-11-26T06:11:49Z");
            assert_eq!(other.to_string(), "2026-11-26T06:12:53Z");
            assert_eq!(before.to_string(), "2026-11-26T06:10:45Z");
        }
        assert_eq!(
            serde_json::to_string(&[t, t, other]).ok().as_deref(),
            Some(r#"["2026-11-26T06:11:49Z","2026-11-26T06:11:49Z","2026-11-26T06:12:53Z"]"#)
        );
        // Before the epoch the slot is still one of the RECENT.
        let early = Timestamp::from_unix_seconds(-1);
        assert_eq!(early.to_string(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn formats_whole_seconds_with_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_673_509_750);
        assert_eq!(rfc3339(t), "2026-11-26T06:11:49Z");
        assert_eq!(
            Timestamp::parse("2026-11-26T06:11:49Z").map(Timestamp::unix_seconds),
            Ok(1_795_673_509)
        );
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

    #[test]
    fn a_timestamp_is_written_as_rfc3339_writes_it() {
        for secs in [0, 1, 946_684_799, 1_795_673_509, Timestamp::MAX.0] {
            let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
            let ts = Timestamp::from_system_time(t);
            assert_eq!(ts.to_string(), rfc3339(t));
            assert_eq!(ts.unix_seconds(), secs);
            assert_eq!(ts.to_system_time(), t);
            let json = serde_json::to_string(&ts).expect("encode");
            assert_eq!(json, format!("\"{}\"", rfc3339(t)));
            assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(ts));
            assert_eq!(ts.to_string().parse::<Timestamp>(), Ok(ts));
        }
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(Timestamp::from_system_time(far), Timestamp::MAX);
        assert_eq!(Timestamp::MAX.to_string(), LATEST);
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00Z");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Timestamp::from_system_time(before), Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn any_rfc3339_text_is_read_and_written_back_in_utc_whole_seconds() {
        for (text, written) in [
            ("2026-11-26T06:11:49Z", "2026-11-26T06:11:49Z"),
            ("2026-11-26T06:11:49.999999Z", "2026-11-26T06:11:49Z"),
            ("2026-11-26T07:11:49+01:00", "2026-11-26T06:11:49Z"),
            ("2026-11-26T06:11:49.5-00:30", "2026-11-26T06:41:49Z"),
            ("2026-11-26t06:11:49z", "2026-11-26T06:11:49Z"),
            ("1969-12-31T23:59:59Z", "1969-12-31T23:59:59Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
            ("0000-01-01T00:00:00+01:00", "0000-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59Z"),
        ] {
            let ts = Timestamp::parse(text).expect(text);
            assert_eq!(ts.to_string(), written, "{text}");
            let json = serde_json::to_string(&text).expect("encode");
            let read: Timestamp = serde_json::from_str(&json).expect(text);
            assert_eq!(read, ts);
        }
        for bad in ["", "yesterday", "2026-11-26", "2026-11-26 06:11:49", "d"] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
            let json = serde_json::to_string(&bad).expect("encode");
            assert!(serde_json::from_str::<Timestamp>(&json).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Timestamp>("1795673509").is_err());
        assert!(serde_json::from_str::<Timestamp>("null").is_err());
    }

    #[test]
    fn timestamps_order_and_subtract_as_seconds() {
        let a = Timestamp::from_unix_seconds(100);
        let b = a.plus_seconds(30);
        assert!(a < b);
        assert_eq!(b.seconds_since(a), 30);
        assert_eq!(a.seconds_since(b), -30);
        assert_eq!(b.duration_since(a), Duration::from_secs(30));
        assert_eq!(a.duration_since(b), Duration::ZERO);
        assert_eq!(Timestamp::MAX.plus_seconds(i64::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::MIN.plus_seconds(i64::MIN), Timestamp::MIN);
        let now = Timestamp::now();
        assert!(now > Timestamp::parse("2026-01-01T00:00:00Z").expect("parse"));
    }
}
