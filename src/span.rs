//! Spans of time as operators write them and as baton prints them: plain
//! seconds (`2`, `0.5`) or systemd-style units (`500ms`, `2s`, `1min 30s`).
//! Every flag that takes a SPAN, and every log line that names one, goes
//! through here, so what baton prints can be pasted back as a flag.

use std::time::Duration;

/// Parses a span: plain seconds (`2`, `0.5`) or systemd-style units
/// (`500ms`, `2s`, `1min`, `1h`, also combined as `1min 30s`).
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty span".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err("expected a number, as in 2, 0.5, 500ms, 2s or 1min".into());
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("bad number '{}'", &rest[..num_len]))?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "us" | "usec" | "µs" => 1e-6,
            "ms" | "msec" => 1e-3,
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            other => return Err(format!("unknown unit '{other}' (use ms, s, min or h)")),
        };
        total += value * scale;
        rest = rest[unit_len..].trim_start();
    }
    seconds(total)
}

fn seconds(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err("must be a non-negative number of seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Formats a span the way `parse_span` reads it back.
pub fn format_span(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        format!("{}us", d.as_micros())
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}min", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(parse_span("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_span("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_span("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_span("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_span("1min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_span("1min 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_span("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_span("").is_err());
        assert!(parse_span("-1").is_err());
        assert!(parse_span("2 fortnights").is_err());
        assert!(parse_span("abc").is_err());
        assert!(parse_span("nan").is_err());
        assert_eq!(format_span(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_span(Duration::from_secs(120)), "2min");
        assert_eq!(format_span(Duration::from_secs(3)), "3s");
    }
}
