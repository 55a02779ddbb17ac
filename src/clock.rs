//! Time as baton reads it and writes it down.
//!
//! The daemon reads both clocks in one place per event ([`Now::read`]) and
//! hands the reading to the state machine, which never reads a clock of its
//! own: deadlines are monotonic ([`Instant`]), records for people are wall
//! time ([`SystemTime`]). Wall time goes into the state file as Unix seconds
//! and comes out as a UTC date; the calendar arithmetic for that is here and
//! nowhere else.

use std::time::{Instant, SystemTime};

/// One reading of both clocks, taken when an event is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For deadlines: never jumps.
    pub mono: Instant,
    /// For records people read: may jump (NTP, an operator).
    pub wall: SystemTime,
}

impl Now {
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Unix seconds (0 for times before 1970).
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Days since 1970-01-01 -> (year, month, day) (civil-from-days, H. Hinnant).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Splits Unix seconds into a civil date and the time of day.
fn split(secs: i64) -> ((i64, i64, i64), (i64, i64, i64)) {
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    (
        civil_from_days(days),
        (sod / 3600, sod % 3600 / 60, sod % 60),
    )
}

/// Unix seconds as `2025-01-02 03:04:05 UTC`.
pub fn utc(t: f64) -> String {
    let ((y, m, d), (hh, mm, ss)) = split(t.floor() as i64);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

/// `t` as RFC 3339 with microseconds (`2025-01-02T03:04:05.123456Z`), the
/// timestamp baton's log lines start with.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ((y, m, day), (hh, mm, ss)) = split(d.as_secs() as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
        d.subsec_micros()
    )
}

/// A past span in seconds, coarsely: `59s`, `5min 3s`, `1h 2min`, `3d 4h`.
pub fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}min {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}min", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `2025-01-02 03:04:05 UTC (5min 0s ago)`.
pub fn when(t: f64, now: f64) -> String {
    format!("{} ({} ago)", utc(t), ago(now - t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000.5), "2023-11-14 22:13:20 UTC");
        assert_eq!(ago(59.9), "59s");
        assert_eq!(ago(3725.0), "1h 2min");
    }

    #[test]
    fn instants_survive_the_round_trip_through_the_monotonic_clock() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_secs(30),
            now.checked_sub(Duration::from_millis(1500)).unwrap(),
        ] {
            let back = mono::from_raw(mono::to_raw(t));
            let diff = if back > t { back - t } else { t - back };
            assert!(diff < Duration::from_millis(5), "{diff:?}");
        }
    }

    #[test]
    fn log_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042);
        assert_eq!(rfc3339_micros(t), "2023-11-14T22:13:20.000042Z");
        assert_eq!(
            rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_secs(951_868_799)),
            "2000-02-29T23:59:59.000000Z"
        );
    }
}

/// [`Instant`]s in a form that survives an exec of baton into a new image
/// (`baton upgrade`): nanoseconds on CLOCK_MONOTONIC, which `Instant` reads
/// on Linux and which does not restart with the process. For
/// `#[serde(with = "crate::clock::mono")]`.
pub mod mono {
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn raw_now() -> u64 {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC is always there");
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    }

    fn nanos(d: Duration) -> u64 {
        d.as_nanos().min(u64::MAX as u128) as u64
    }

    /// `t` as nanoseconds on CLOCK_MONOTONIC.
    pub fn to_raw(t: Instant) -> u64 {
        let (now, raw) = (Instant::now(), raw_now());
        if t <= now {
            raw.saturating_sub(nanos(now.duration_since(t)))
        } else {
            raw.saturating_add(nanos(t.duration_since(now)))
        }
    }

    /// Nanoseconds on CLOCK_MONOTONIC as an `Instant` of this process.
    pub fn from_raw(ns: u64) -> Instant {
        let (now, raw) = (Instant::now(), raw_now());
        if ns <= raw {
            now.checked_sub(Duration::from_nanos(raw - ns))
                .unwrap_or(now)
        } else {
            now + Duration::from_nanos(ns - raw)
        }
    }

    pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        to_raw(*t).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        u64::deserialize(d).map(from_raw)
    }

    /// The same for `Option<Instant>`.
    pub mod option {
        use std::time::Instant;

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
            t.map(super::to_raw).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
            Option::<u64>::deserialize(d).map(|o| o.map(super::from_raw))
        }
    }
}
