//! The text of a flat repository's index: `Packages` stanzas and the
//! `Release` file that carries `Packages`' hash, written here so the host
//! needs no dpkg-dev (`dpkg-scanpackages`) or apt-utils (`apt-ftparchive`).

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// `Field: value` lines, ending in a newline: a control file, or one
/// stanza of `Packages`.
pub(super) fn stanza(fields: &[(&str, String)]) -> String {
    let mut text = String::new();
    for (field, value) in fields {
        let _ = writeln!(text, "{field}: {value}");
    }
    text
}

/// The Release file of a flat repository whose `Packages` is `packages`.
///
/// apt takes a `[trusted=yes]` source without one, but then checks no hash
/// of `Packages`. Date: apt warns of a Release file without one. No Suite
/// or Codename: apt refuses an update whose Release changes those from what
/// it saw before (`changed its 'Codename' value`), so the fields that stay
/// are fixed.
pub(super) fn release(packages: &str, now: SystemTime) -> String {
    format!(
        "Origin: cfi-lab\n\
         Label: cfi-test-repo\n\
         Date: {}\n\
         SHA256:\n {} {} Packages\n",
        Rfc2822(now),
        sha256_hex(packages.as_bytes()),
        packages.len()
    )
}

/// SHA-256 in lower-case hex, as `Packages` and `Release` write it.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// A time as Release's Date field wants it: `Tue, 29 Feb 2000 00:00:00
/// UTC` (RFC 2822, in UTC).
struct Rfc2822(SystemTime);

impl fmt::Display for Rfc2822 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = secs / 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{}, {day:02} {} {year} {:02}:{:02}:{:02} UTC",
            // 1970-01-01 was a Thursday.
            WEEKDAYS[(days % 7) as usize],
            MONTHS[month as usize - 1],
            secs % 86_400 / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }
}

/// (year, month 1–12, day 1–31) of the day `days` after 1970-01-01: Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates_are_rfc_2822_in_utc() {
        let at = |secs| Rfc2822(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 UTC");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 UTC");
        assert_eq!(at(1_735_689_599), "Tue, 31 Dec 2024 23:59:59 UTC");
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn release_names_packages_by_hash_and_size() {
        let text = release("Package: a\n", UNIX_EPOCH);
        assert_eq!(
            text,
            format!(
                "Origin: cfi-lab\nLabel: cfi-test-repo\nDate: Thu, 01 Jan 1970 00:00:00 UTC\n\
                 SHA256:\n {} 11 Packages\n",
                sha256_hex(b"Package: a\n")
            )
        );
    }
}
