//! The three timestamp forms the OSS protocol uses, all UTC:
//! - RFC 1123 for `Date` / `Last-Modified` headers (`Tue, 20 Dec 2022 08:48:18 GMT`);
//! - ISO 8601 basic for V4 signing (`20221220T084818Z`, and `20221220` for the credential scope);
//! - ISO 8601 with a literal `.000Z` inside XML bodies (`2022-12-20T08:48:18.000Z`; py-oss2's parser
//!   requires exactly that shape).
//!
//! Small civil-date arithmetic (Howard Hinnant's `days_from_civil`) keeps us off a date-time dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RFC 1123 / IMF-fixdate, with a two-digit day.
pub fn rfc1123(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Parse an RFC 1123 date (also accepts the obsolete RFC 850 and asctime forms, as HTTP requires).
pub fn parse_rfc1123(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// `yyyymmddThhmmssZ`.
pub fn iso8601_basic(t: SystemTime) -> String {
    let c = Civil::from_system_time(t);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// `yyyymmdd`, the day part of the V4 credential scope.
pub fn iso8601_day(t: SystemTime) -> String {
    let c = Civil::from_system_time(t);
    format!("{:04}{:02}{:02}", c.year, c.month, c.day)
}

/// `yyyy-mm-ddThh:mm:ss.000Z`, the form OSS uses in XML bodies.
pub fn xml_date(t: SystemTime) -> String {
    let c = Civil::from_system_time(t);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// Parse `yyyymmddThhmmssZ`.
pub fn parse_iso8601_basic(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    Civil {
        year: num(0..4)?,
        month: num(4..6)? as u32,
        day: num(6..8)? as u32,
        hour: num(9..11)? as u32,
        minute: num(11..13)? as u32,
        second: num(13..15)? as u32,
    }
    .to_system_time()
}

/// Parse an XML timestamp (`2022-12-20T08:48:18.000Z`, fractional seconds optional).
pub fn parse_xml_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (main, _frac) = match s.strip_suffix('Z')?.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (s.strip_suffix('Z')?, None),
    };
    let b = main.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { main.get(r)?.parse().ok() };
    Civil {
        year: num(0..4)?,
        month: num(5..7)? as u32,
        day: num(8..10)? as u32,
        hour: num(11..13)? as u32,
        minute: num(14..16)? as u32,
        second: num(17..19)? as u32,
    }
    .to_system_time()
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The time `secs` after the Unix epoch.
pub fn from_unix_secs(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn from_system_time(t: SystemTime) -> Self {
        let secs = unix_secs(t);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // civil_from_days (H. Hinnant), valid for the whole proleptic Gregorian range we care about.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60 }
    }

    fn to_system_time(self) -> Option<SystemTime> {
        if !(1..=12).contains(&self.month)
            || !(1..=31).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
        {
            return None;
        }
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second);
        let t = from_unix_secs(secs);
        // Reject impossible dates such as Feb 30 by round-tripping.
        (Civil::from_system_time(t).day == self.day || self.second == 60).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        // 2023-12-16T16:20:57Z, the go-v2 V4 signer vector's time.
        let t = from_unix_secs(1_702_743_657);
        assert_eq!(iso8601_basic(t), "20231216T162057Z");
        assert_eq!(iso8601_day(t), "20231216");
        assert_eq!(xml_date(t), "2023-12-16T16:20:57.000Z");
        assert_eq!(rfc1123(t), "Sat, 16 Dec 2023 16:20:57 GMT");
        let t2 = from_unix_secs(1_671_526_098);
        assert_eq!(rfc1123(t2), "Tue, 20 Dec 2022 08:48:18 GMT");
    }

    #[test]
    fn round_trips() {
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..2000 {
            let t = from_unix_secs(rng.i64(0..4_102_444_800));
            assert_eq!(parse_iso8601_basic(&iso8601_basic(t)), Some(t));
            assert_eq!(parse_xml_date(&xml_date(t)), Some(t));
            assert_eq!(parse_rfc1123(&rfc1123(t)), Some(t));
        }
        assert_eq!(parse_xml_date("2012-02-24T08:42:32Z"), Some(from_unix_secs(1_330_072_952)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "20231216T162057", "2023121XT162057Z", "20231316T162057Z", "20230230T000000Z"] {
            assert_eq!(parse_iso8601_basic(bad), None, "{bad}");
        }
        for bad in ["2012-02-24 08:42:32.000Z", "2012-02-24T08:42:32.000", "yesterday"] {
            assert_eq!(parse_xml_date(bad), None, "{bad}");
        }
    }
}
