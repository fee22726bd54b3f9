//! Tests of the state database against real SQLite files in temporary directories.
//!
//! `api`: every method round-trips. `damage`: records edited behind our back (with a raw connection) are
//! reported damaged, never returned wrong. `files`: damaged, foreign, newer and missing database files,
//! file modes, locking between handles, and concurrent readers.

mod api;
mod damage;
mod files;
mod migration;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

pub(super) fn snap(n: u64) -> FileSnapshot {
    FileSnapshot {
        size: 100 + n,
        mtime_ns: 1_700_000_000_000_000_000 + n as i64,
        ctime_ns: 1_700_000_000_500_000_000 + n as i64,
        inode: u64::MAX - n,
        dev: 0x8000_0000_0000_0042,
    }
}

pub(super) fn part(n: u32) -> PartRecord {
    PartRecord {
        part_number: n,
        size: 5 << 20,
        etag: format!("\"{:032X}\"", u128::from(n) * 0x1234_5678_9abc),
        // All 64 bits in use: CRC-64s are stored as i64 bit patterns.
        crc64: u64::MAX - u64::from(n),
        blake3: crate::checksum::blake3(&n.to_le_bytes()),
    }
}

pub(super) fn new_upload<'a>(path: &'a Path, bucket: &'a str, key: &'a str, upload_id: &'a str) -> NewUpload<'a> {
    NewUpload {
        local_path: path,
        bucket,
        key,
        upload_id,
        part_size: 5 << 20,
        snapshot: snap(1),
        options_fingerprint: "ct=application/octet-stream",
    }
}

pub(super) fn synced_file(bucket: &str, key: &str, parts: u32) -> SyncedFile {
    SyncedFile {
        bucket: bucket.to_string(),
        key: key.to_string(),
        local_path: PathBuf::from(format!("/data/{key}")),
        snapshot: snap(u64::from(parts)),
        size: u64::from(parts) * (5 << 20),
        crc64: 0xdead_beef_0000_0000 | u64::from(parts),
        etag: format!("\"{key}-{parts}\""),
        part_size: 5 << 20,
        part_blake3: (0..parts).map(|i| crate::checksum::blake3(&[i as u8, parts as u8])).collect(),
        synced_at: UNIX_EPOCH + Duration::new(1_700_000_123, 456_789_012),
        object_meta: Some("mtime=1700000000.000000001;mode=100644".into()),
    }
}

pub(super) fn non_utf8_path() -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b"/data/caf\xe9/\xff\xfe name.bin"))
}

/// A fresh database file in a new temporary directory.
pub(super) fn temp_db() -> (tempfile::TempDir, PathBuf, StateDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (db, report) = StateDb::open(&path).unwrap();
    assert!(report.quarantined.is_none());
    (dir, path, db)
}

/// A raw connection, for editing rows behind the MACs' back, like the `sqlite3` shell would (which does
/// not enforce foreign keys; the bundled SQLite does by default).
pub(super) fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.pragma_update(None, "foreign_keys", false).unwrap();
    conn
}

pub(super) fn valid(cp: Checkpoint) -> (UploadRecord, Vec<PartRecord>) {
    match cp {
        Checkpoint::Valid { upload, parts } => (upload, parts),
        Checkpoint::Damaged { reason, .. } => panic!("expected a valid checkpoint, got damaged: {reason}"),
    }
}

/// The fields of a damaged checkpoint: id, bucket, key, upload id, reason.
pub(super) type DamagedFields = (UploadRowId, Option<String>, Option<String>, Option<String>, String);

pub(super) fn damaged(cp: Checkpoint) -> DamagedFields {
    match cp {
        Checkpoint::Damaged { id, bucket, key, upload_id, reason } => (id, bucket, key, upload_id, reason),
        Checkpoint::Valid { upload, .. } => panic!("expected a damaged checkpoint, got valid: {upload:?}"),
    }
}

pub(super) fn now() -> SystemTime {
    SystemTime::now()
}
