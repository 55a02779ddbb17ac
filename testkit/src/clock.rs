//! Civil dates, for the timestamps in baton's log.
//!
//! baton logs through env_logger with RFC 3339 UTC timestamps to the
//! microsecond (`2025-11-24T21:15:10.123456Z baton[PID] LEVEL message`).
//! Tests and the bench time what happened between two log lines from those
//! stamps: when baton acted, not when the reader got round to reading. A
//! dozen lines of date arithmetic do not justify a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-24T21:10:01.058836Z` -> µs since the epoch (the fraction is
/// optional; digits past the sixth are ignored).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let mut us = 0i64;
    for (i, c) in frac.chars().take(6).enumerate() {
        us += c.to_digit(10)? as i64 * 10i64.pow(5 - i as u32);
    }
    let days = days_from_civil(y, mo, da);
    Some((((days * 24 + h) * 60 + mi) * 60 + se) * 1_000_000 + us)
}

/// The length of env_logger's micro timestamp without its `Z`.
const STAMP: usize = 26;

/// baton's timestamp in a log line: (µs since the epoch, the rest of the
/// line from `baton[`). The apps share baton's log file and their
/// unbuffered writes may cut one of baton's lines in two, so the stamp is
/// found by what follows it, not at the start of the line.
pub fn log_stamp(line: &str) -> Option<(i64, &str)> {
    let at = line.find("Z baton[").filter(|&i| i >= STAMP)?;
    let us = parse_rfc3339(line.get(at - STAMP..=at)?)?;
    Some((us, &line[at + 2..]))
}

/// Seconds since the epoch of baton's timestamp in a log line; panics if
/// it has none.
pub fn log_time(line: &str) -> f64 {
    let (us, _) = log_stamp(line).unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    us as f64 / 1e6
}

/// Now, µs since the epoch (the clock baton's timestamps use).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        // Leap days: 2024 has one, 2100 will not.
        assert_eq!(
            days_from_civil(2024, 3, 1) - days_from_civil(2024, 2, 28),
            2
        );
        assert_eq!(
            days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 28),
            1
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            parse_rfc3339("2026-11-24T21:10:01.058836Z"),
            Some(1_795_554_601_058_836)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:01:00Z"), Some(60_000_000));
        assert_eq!(parse_rfc3339("2026-11-24 21:10:01Z"), None);
        assert_eq!(parse_rfc3339("2026-11-24T21:10:01.05x836Z"), None);
    }

    #[test]
    fn log_lines() {
        let l = "2026-11-24T21:10:01.059324Z baton[6892] INFO  generation 2 is live";
        assert_eq!(
            log_stamp(l),
            Some((
                1_795_554_601_059_324,
                "baton[6892] INFO  generation 2 is live"
            ))
        );
        // Cut in two by an app's unbuffered write.
        let cut = "example-app[2026-11-24T21:10:01.059324Z baton[6892] DEBUG x";
        assert_eq!(log_stamp(cut).map(|s| s.0), Some(1_795_554_601_059_324));
        assert!((log_time(cut) - 1_795_554_601.059_324).abs() < 1e-6);
        assert_eq!(log_stamp("example-app[1] hi"), None);
        assert_eq!(log_stamp("Z baton[1] early"), None);
    }

    #[test]
    #[should_panic(expected = "no timestamp")]
    fn log_time_of_a_line_without_one_panics() {
        log_time("example-app[1] hi");
    }
}
