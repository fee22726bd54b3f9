//! The file metadata every uploaded object carries, in the keys rclone uses.
//!
//! User metadata (the clients add `x-oss-meta-` / `x-amz-meta-`):
//! - `mtime`: Unix seconds with a 9-digit nanosecond fraction, `1700000000.123456789` (rclone's S3 and
//!   Swift backends read `X-Amz-Meta-Mtime` with the same fixed-point format; a negative time is
//!   `-1.500000000`, the digits of the nanosecond count with the point nine places from the end).
//! - `mode`: the octal `st_mode`, file type bits included, as rclone's local backend writes it (`100644`).
//! - `uid`, `gid`: decimal, only when the agent runs as root (euid 0): a restore by anyone else could not
//!   apply them, and a non-root agent's own ids say nothing worth keeping.
//!
//! A [`FileMeta`] is always built from one `fstat` whose snapshot the caller checks (the engine's, or the
//! hash's): `chmod`/`chown` move ctime, so an unchanged snapshot proves the mode and owner unchanged too.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::snapshot::FileSnapshot;

pub const MTIME: &str = "mtime";
pub const MODE: &str = "mode";
pub const UID: &str = "uid";
pub const GID: &str = "gid";

/// What the object says about the file it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMeta {
    pub mtime_ns: i64,
    /// `st_mode` with the file type bits (`0o100644`).
    pub mode: u32,
    /// `(uid, gid)`, only recorded when running as root.
    pub owner: Option<(u32, u32)>,
}

/// True when this process runs as root, so uid/gid are recorded.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl FileMeta {
    /// From one `stat`/`fstat`; uid/gid when `with_owner`.
    pub fn from_metadata(m: &Metadata, with_owner: bool) -> Self {
        let snapshot = FileSnapshot::from_metadata(m);
        FileMeta { mtime_ns: snapshot.mtime_ns, mode: m.mode(), owner: with_owner.then(|| (m.uid(), m.gid())) }
    }

    /// [`FileMeta::from_metadata`] with uid/gid exactly when running as root.
    pub fn of(m: &Metadata) -> Self {
        Self::from_metadata(m, running_as_root())
    }

    /// `mtime` as rclone writes and reads it: fixed point, nine fraction digits.
    pub fn mtime_string(&self) -> String {
        format_mtime(self.mtime_ns)
    }

    /// The user metadata pairs, names without prefix, in a fixed order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![(MTIME.to_string(), self.mtime_string()), (MODE.to_string(), format!("{:o}", self.mode))];
        if let Some((uid, gid)) = self.owner {
            v.push((UID.to_string(), uid.to_string()));
            v.push((GID.to_string(), gid.to_string()));
        }
        v
    }

    /// The canonical text the index records (`mtime=…;mode=…[;uid=…;gid=…]`).
    pub fn encode(&self) -> String {
        self.pairs().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }

    /// Parse [`FileMeta::encode`]'s text; `None` when it is not exactly that.
    pub fn decode(s: &str) -> Option<Self> {
        let pairs: Vec<(String, String)> = s
            .split(';')
            .map(|p| p.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<Option<_>>()?;
        let meta = Self::from_pairs(&pairs)?;
        (meta.encode() == s).then_some(meta)
    }

    /// Read the metadata an object carries (HEAD's user metadata, names case-insensitive); `None` when the
    /// object does not carry a well-formed `mtime` and `mode` (an object from before, or from another tool).
    pub fn from_pairs(pairs: &[(String, String)]) -> Option<Self> {
        let get = |name: &str| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
        let mtime_ns = parse_mtime(get(MTIME)?)?;
        let mode = u32::from_str_radix(get(MODE)?, 8).ok()?;
        let owner = match (get(UID), get(GID)) {
            (Some(u), Some(g)) => Some((u.parse().ok()?, g.parse().ok()?)),
            (None, None) => None,
            _ => return None,
        };
        Some(FileMeta { mtime_ns, mode, owner })
    }
}

/// `1700000000.123456789`; negative times as `-1.500000000` (the sign applies to the whole number).
pub fn format_mtime(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// Parse a fixed-point seconds string (up to nine fraction digits, more are cut as rclone does).
pub fn parse_mtime(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = &frac[..frac.len().min(9)];
    let frac_ns: i64 = format!("{frac:0<9}").parse().ok()?;
    let secs: i64 = secs.parse().ok()?;
    let ns = secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)?;
    Some(if neg { -ns } else { ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtime_format_matches_rclone() {
        assert_eq!(format_mtime(1_700_000_000_123_456_789), "1700000000.123456789");
        assert_eq!(format_mtime(1_354_040_105_000_000_000), "1354040105.000000000");
        assert_eq!(format_mtime(0), "0.000000000");
        assert_eq!(format_mtime(-1_500_000_000), "-1.500000000");
        assert_eq!(format_mtime(-5), "-0.000000005");
        for ns in [0, 1, -1, 1_700_000_000_123_456_789, -86_400_000_000_001, i64::MAX, i64::MIN + 1] {
            assert_eq!(parse_mtime(&format_mtime(ns)), Some(ns), "{ns}");
        }
        // What rclone itself writes (trailing zeros dropped, or none at all) reads back too.
        assert_eq!(parse_mtime("1354040105.5"), Some(1_354_040_105_500_000_000));
        assert_eq!(parse_mtime("1354040105"), Some(1_354_040_105_000_000_000));
        assert_eq!(parse_mtime("1.1234567899"), Some(1_123_456_789));
        for bad in ["", ".5", "1e9", "abc", "1.2.3", "- 1"] {
            assert_eq!(parse_mtime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pairs_encode_and_parse_back() {
        let m = FileMeta { mtime_ns: 1_600_000_000_000_000_001, mode: 0o100640, owner: None };
        assert_eq!(m.pairs(), vec![("mtime".into(), "1600000000.000000001".into()), ("mode".into(), "100640".into())]);
        assert_eq!(m.encode(), "mtime=1600000000.000000001;mode=100640");
        assert_eq!(FileMeta::decode(&m.encode()), Some(m));
        let root = FileMeta { owner: Some((0, 42)), ..m };
        assert_eq!(root.encode(), "mtime=1600000000.000000001;mode=100640;uid=0;gid=42");
        assert_eq!(FileMeta::decode(&root.encode()), Some(root));
        assert_eq!(FileMeta::decode("mode=100640"), None);
        assert_eq!(FileMeta::decode("mtime=1;mode=9"), None);
        // HEAD answers with any case of the names.
        let head = vec![("Mtime".to_string(), "1600000000.000000001".to_string()), ("MODE".into(), "100640".into())];
        assert_eq!(FileMeta::from_pairs(&head), Some(m));
        assert_eq!(FileMeta::from_pairs(&[]), None);
    }

    #[test]
    fn from_a_real_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let meta = FileMeta::from_metadata(&m, false);
        assert_eq!(meta.mode, 0o100640);
        assert_eq!(meta.mtime_ns, FileSnapshot::from_metadata(&m).mtime_ns);
        assert_eq!(meta.owner, None);
        assert_eq!(FileMeta::from_metadata(&m, true).owner, Some((m.uid(), m.gid())));
    }
}
