//! File snapshots: the identity and version of a local file as the kernel reports it.
//!
//! A file is "unchanged" only if size, mtime, ctime, inode and device are all the same. ctime matters: it
//! moves on every write and metadata change and cannot be set back by `touch -d`, so a tool that restores
//! mtime cannot hide a change. Snapshots are taken from an open descriptor (`fstat`) while uploading, so a
//! rename over the path is seen as a different inode rather than silently followed.
//!
//! Timestamps have coarse granularity (the kernel stamps writes with a clock that ticks every few
//! milliseconds, some file systems with whole seconds). A write in the same tick as the snapshot would leave
//! every field equal, so a snapshot whose mtime is too close to the moment it was taken is "racy" (git's
//! term) and must not be trusted until it has aged: see [`FileSnapshot::is_racy`].
//!
//! How long is "too close" depends on the file system, and a snapshot tells: timestamps with a non-zero
//! sub-second part come from a file system that keeps nanoseconds, where the kernel's tick (at most 10 ms at
//! HZ=100) bounds the granularity, so [`FINE_RACY_WINDOW`] is ten times that. Whole-second timestamps may
//! come from a file system that keeps only seconds (or two, for FAT), so those get [`RACY_WINDOW`].

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How old a snapshot's timestamps must be, relative to when it was taken, to be trusted, on a file
/// system that may keep only whole seconds (or two, for FAT).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The same on a file system that keeps sub-second timestamps (ext4, XFS, btrfs, tmpfs, …): ten times the
/// coarsest kernel timestamp tick.
pub const FINE_RACY_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileSnapshot {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub dev: u64,
}

impl FileSnapshot {
    pub fn from_metadata(m: &Metadata) -> Self {
        FileSnapshot {
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
            inode: m.ino(),
            dev: m.dev(),
        }
    }

    /// `fstat` of an open file.
    pub fn of_file(file: &File) -> io::Result<Self> {
        file.metadata().map(|m| Self::from_metadata(&m))
    }

    /// `stat` of a path (follows symlinks).
    pub fn of_path(path: &Path) -> io::Result<Self> {
        std::fs::metadata(path).map(|m| Self::from_metadata(&m))
    }

    /// Same file (inode and device), whatever its content.
    pub fn same_file(&self, other: &FileSnapshot) -> bool {
        self.inode == other.inode && self.dev == other.dev
    }

    /// The racy window that fits this file's file system (see the module docs).
    pub fn racy_window(&self) -> Duration {
        const SECOND: i64 = 1_000_000_000;
        if self.mtime_ns.rem_euclid(SECOND) != 0 || self.ctime_ns.rem_euclid(SECOND) != 0 {
            FINE_RACY_WINDOW
        } else {
            RACY_WINDOW
        }
    }

    /// True when the file was modified so shortly before `taken_at` that a later write could still carry
    /// the same timestamps. Such a snapshot only proves stability once the window has passed.
    pub fn is_racy(&self, taken_at: SystemTime) -> bool {
        !self.racy_wait(taken_at).is_zero()
    }

    /// Time left until a snapshot taken at `now` would no longer be racy.
    pub fn racy_wait(&self, now: SystemTime) -> Duration {
        self.racy_wait_within(now, self.racy_window())
    }

    /// [`FileSnapshot::racy_wait`] with an explicit window; never longer than the window.
    ///
    /// Timestamps further in the future than the window (`touch -d 2030`, a FAT disk in another time
    /// zone, a clock stepped back) are not "the tick we are in": any later write stamps the present, which
    /// differs from them, so such a snapshot is not racy. Waiting for that future would stall for years.
    pub fn racy_wait_within(&self, now: SystemTime, window: Duration) -> Duration {
        let now_ns = now.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        let newest = self.mtime_ns.max(self.ctime_ns);
        let window_ns = window.as_nanos() as i64;
        if newest > now_ns.saturating_add(window_ns) {
            return Duration::ZERO;
        }
        let remaining = window_ns - now_ns.saturating_sub(newest);
        Duration::from_nanos(remaining.clamp(0, window_ns) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let a = FileSnapshot::of_path(&path).unwrap();
        assert_eq!(a.size, 5);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"!").unwrap();
        let b = FileSnapshot::of_file(&f).unwrap();
        assert_ne!(a, b);
        assert!(a.same_file(&b));
        // A fresh file is racy right now, and not racy once the window has passed.
        assert!(b.is_racy(SystemTime::now()));
        assert!(!b.is_racy(SystemTime::now() + b.racy_window() + Duration::from_millis(10)));
        assert!(b.racy_wait(SystemTime::now()) <= b.racy_window());
    }

    #[test]
    fn window_follows_timestamp_granularity() {
        let fine = FileSnapshot {
            size: 1,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_000_123_456_789,
            inode: 1,
            dev: 1,
        };
        assert_eq!(fine.racy_window(), FINE_RACY_WINDOW);
        let whole = FileSnapshot { mtime_ns: 1_700_000_000_000_000_000, ctime_ns: 1_700_000_002_000_000_000, ..fine };
        assert_eq!(whole.racy_window(), RACY_WINDOW);
        let t = |ns: i64| UNIX_EPOCH + Duration::from_nanos(ns as u64);
        assert!(whole.is_racy(t(1_700_000_003_000_000_000)));
        assert!(!whole.is_racy(t(1_700_000_004_000_000_001)));
        assert!(fine.is_racy(t(1_700_000_000_200_000_000)));
        assert!(!fine.is_racy(t(1_700_000_000_300_000_000)));
    }

    #[test]
    fn future_timestamps_never_make_anyone_wait_for_the_future() {
        let now = SystemTime::now();
        let ns = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        let in_years = FileSnapshot {
            size: 1,
            mtime_ns: ns(now) + 3 * 365 * 86_400_000_000_000 + 7,
            ctime_ns: ns(now) - 10_000_000_000,
            inode: 1,
            dev: 1,
        };
        assert_eq!(in_years.racy_wait(now), Duration::ZERO);
        assert!(!in_years.is_racy(now));
        // Slightly ahead (within the window): still racy, and the wait is capped by the window.
        let slightly = FileSnapshot { mtime_ns: ns(now) + 50_000_000, ..in_years };
        assert!(slightly.racy_wait(now) <= slightly.racy_window());
        assert!(slightly.is_racy(now));
    }
}
