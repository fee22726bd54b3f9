//! The file metadata objects carry, in rclone's user-metadata keys, read back for a restore.
//!
//! `mtime` is Unix seconds with a fraction of up to nine digits ("1700000000.123456789"; rclone may write
//! fewer or none); `mode` is the octal `st_mode` ("100644", or just the permission bits "644") of which only
//! `& 0o7777` is applied; `uid`/`gid` are decimal and applied only when running as root. An object without
//! them is still valid: the file then gets the object's Last-Modified as its mtime (as rclone does) and mode
//! 0644.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The mode of a restored file whose object carries none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// What an object's user metadata says about the file it came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// Seconds and nanoseconds since the Unix epoch (seconds may be negative).
    pub mtime: Option<(i64, u32)>,
    /// Permission bits (`& 0o7777`).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl FileMeta {
    /// From user metadata as [`crate::remote::ObjectInfo::metadata`] gives it (names without the
    /// `x-oss-meta-` / `x-amz-meta-` prefix; compared case-insensitively). Unreadable values count as absent.
    pub fn from_metadata(metadata: &[(String, String)]) -> Self {
        let get = |name: &str| metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
        FileMeta {
            mtime: get("mtime").and_then(parse_mtime),
            mode: get("mode").and_then(parse_mode),
            uid: get("uid").and_then(|v| v.parse().ok()),
            gid: get("gid").and_then(|v| v.parse().ok()),
        }
    }

    /// The mtime to give the file: the metadata's, else `last_modified`.
    pub fn mtime_or(&self, last_modified: Option<SystemTime>) -> Option<SystemTime> {
        self.mtime.map(|(s, ns)| to_system_time(s, ns)).or(last_modified)
    }
}

/// "1700000000.123456789", "1700000000.5", "1700000000" → (seconds, nanoseconds).
pub fn parse_mtime(value: &str) -> Option<(i64, u32)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    if secs.is_empty() || !secs.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More than nine digits: the rest is below a nanosecond.
    let digits = &frac[..frac.len().min(9)];
    let mut nanos: u32 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    for _ in digits.len()..9 {
        nanos *= 10;
    }
    if secs < 0 && nanos > 0 {
        // "-1.25" is a quarter of a second before -1: (-2, 750_000_000).
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// Octal st_mode ("100644") or permission bits ("644", "0755") → the permission bits.
pub fn parse_mode(value: &str) -> Option<u32> {
    if value.is_empty() || value.len() > 11 {
        return None;
    }
    u32::from_str_radix(value, 8).ok().map(|m| m & 0o7777)
}

/// The metadata value for an mtime, as rclone writes it (nine fraction digits).
pub fn format_mtime(t: SystemTime) -> String {
    let (secs, nanos) = split_time(t);
    format!("{secs}.{nanos:09}")
}

/// (seconds, nanoseconds) of a time, seconds floored (so nanoseconds are never negative).
pub fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 { (-s, 0) } else { (-s - 1, 1_000_000_000 - n) }
        }
    }
}

pub fn to_system_time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_in_every_precision_rclone_writes() {
        assert_eq!(parse_mtime("1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_mtime("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_mtime("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_mtime("1700000000.1234567891"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_mtime("-1.25"), Some((-2, 750_000_000)));
        for bad in ["", ".5", "abc", "17e9", "1.2.3", "1.-5", "1. 5"] {
            assert_eq!(parse_mtime(bad), None, "{bad:?}");
        }
        let t = to_system_time(1_700_000_000, 123_456_789);
        assert_eq!(format_mtime(t), "1700000000.123456789");
        assert_eq!(split_time(to_system_time(-2, 750_000_000)), (-2, 750_000_000));
    }

    #[test]
    fn modes_keep_only_permission_bits() {
        assert_eq!(parse_mode("100644"), Some(0o644));
        assert_eq!(parse_mode("100755"), Some(0o755));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("104755"), Some(0o4755));
        assert_eq!(parse_mode("9"), None);
        assert_eq!(parse_mode(""), None);
    }

    #[test]
    fn metadata_names_are_case_insensitive_and_bad_values_absent() {
        let m = FileMeta::from_metadata(&[
            ("Mtime".into(), "1700000000.000000001".into()),
            ("mode".into(), "100640".into()),
            ("uid".into(), "x".into()),
            ("gid".into(), "100".into()),
        ]);
        assert_eq!(m, FileMeta { mtime: Some((1_700_000_000, 1)), mode: Some(0o640), uid: None, gid: Some(100) });
        let none = FileMeta::from_metadata(&[]);
        let lm = to_system_time(5, 0);
        assert_eq!(none.mtime_or(Some(lm)), Some(lm));
    }
}
