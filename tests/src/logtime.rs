//! When things happened, read from the logs of cfi's daemons: the
//! zero-config benchmarks split a latency into its steps (a watch firing, a
//! key installed, a client enrolled) by the timestamps of the log lines
//! that mark them.
//!
//! cfi's binaries log through tracing-subscriber's default format, each
//! line opening with an RFC 3339 UTC time (`2025-12-01T22:03:01.123456Z`).
//! The host and the lab's containers share one kernel clock, so times from
//! the server's log, an announcer's log and the benchmark's own clock
//! ([`now_unix`]) compare directly.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock now, as Unix seconds.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The time of every line of `log` that contains `needle`, as Unix seconds,
/// in log order; lines without a leading timestamp are skipped.
pub fn times_of(log: &str, needle: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(line_time)
        .collect()
}

/// The first time of a line of `log` containing every one of `needles` at
/// or after `after` (Unix seconds).
pub fn first_after(log: &str, needles: &[&str], after: f64) -> Option<f64> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(line_time)
        .find(|&t| t >= after)
}

/// The timestamp a log line opens with, as Unix seconds.
pub fn line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    parse_rfc3339_utc(stamp)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as Unix seconds; `None` for anything
/// else (other offsets included: tracing writes UTC).
pub fn parse_rfc3339_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut date = date.splitn(3, '-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: u32 = date.next()?.parse().ok()?;
    let day: u32 = date.next()?.parse().ok()?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (time, ""),
    };
    let mut hms = hms.splitn(3, ':');
    let hour: u32 = hms.next()?.parse().ok()?;
    let minute: u32 = hms.next()?.parse().ok()?;
    let second: u32 = hms.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let fraction = if fraction.is_empty() {
        0.0
    } else if fraction.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.{fraction}").parse::<f64>().ok()?
    } else {
        return None;
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(secs as f64 + fraction)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:01Z"),
            Some(11_017.0 * 86_400.0 + 1.0)
        );
        let t = parse_rfc3339_utc("2023-11-14T22:13:20.250000Z").unwrap();
        assert!((t - 1_700_000_000.25).abs() < 1e-6, "{t}");
        assert_eq!(parse_rfc3339_utc("2023-11-14T22:13:20+01:00"), None);
        assert_eq!(parse_rfc3339_utc("INFO"), None);
    }

    #[test]
    fn lines_by_needle_and_time() {
        let log = "2023-11-14T22:13:20.000000Z  INFO a: group changed; syncing\n\
                   not a log line group changed\n\
                   2023-11-14T22:13:21.500000Z  INFO a: group changed; syncing\n\
                   2023-11-14T22:13:22.000000Z  INFO a: propagation done ok=3\n";
        assert_eq!(times_of(log, "group changed").len(), 2);
        let t = first_after(log, &["group changed"], 1_700_000_000.1).unwrap();
        assert!((t - 1_700_000_001.5).abs() < 1e-6);
        assert_eq!(first_after(log, &["propagation", "ok=4"], 0.0), None);
    }
}
