//! The download checkpoint: a small SQLite database of its own (not the agent's state database) that lets
//! an interrupted download fetch only the ranges it is missing.
//!
//! One row per download in progress, unique by (endpoint, bucket, key, target path), recording what the
//! ranges are pinned to (ETag, size, part size) and the name of the temporary file beside the target. A
//! range is recorded (with the CRC-64 of its bytes) only after its bytes were written to the temporary
//! file. Nothing here is trusted blindly: on resume every recorded range is read back from the temporary
//! file and its CRC-64 recomputed before it counts (a damaged or edited record, or a temporary file changed
//! behind our back, only costs a re-fetch), and the whole file is checked against the object's CRC-64
//! before it is renamed onto the target. A database that cannot be opened is moved aside and a fresh one
//! started, which again only costs re-fetching.
//!
//! Every method blocks (SQLite): call them through `spawn_blocking`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS downloads (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    target BLOB NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    temp_name BLOB NOT NULL,
    started INTEGER NOT NULL,
    UNIQUE (endpoint, bucket, key, target)
);
CREATE TABLE IF NOT EXISTS download_ranges (
    download INTEGER NOT NULL REFERENCES downloads(id) ON DELETE CASCADE,
    part INTEGER NOT NULL,
    crc64 INTEGER NOT NULL,
    PRIMARY KEY (download, part)
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("the download checkpoint database {path}: {source}")]
    Sql { path: String, source: rusqlite::Error },
    #[error("the download checkpoint database {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Which download a row is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadKey {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub target: PathBuf,
}

/// A download in progress as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    pub etag: String,
    pub size: u64,
    pub part_size: u64,
    pub temp_name: Vec<u8>,
    /// Part index → CRC-64 of its bytes.
    pub ranges: BTreeMap<u64, u64>,
}

#[derive(Debug)]
pub struct Checkpoint {
    conn: Mutex<Connection>,
    path: String,
}

fn bytes_of(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

impl Checkpoint {
    /// Open (or create, 0600 in a 0700 directory) the database at `path`. A damaged one is moved aside to
    /// `PATH.damaged` and a fresh one started.
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let display = path.display().to_string();
        let io = |source| CheckpointError::Io { path: display.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        }
        match Self::open_once(path) {
            Ok(c) => Ok(c),
            Err(CheckpointError::Sql { source, .. }) => {
                let aside = path.with_extension("damaged");
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %source,
                    "the download checkpoint database could not be used; starting a fresh one (interrupted downloads start over)");
                std::fs::rename(path, &aside).map_err(io)?;
                Self::open_once(path)
            }
            Err(e) => Err(e),
        }
    }

    fn open_once(path: &Path) -> Result<Checkpoint, CheckpointError> {
        use std::os::unix::fs::OpenOptionsExt;
        let display = path.display().to_string();
        // Create it 0600 whatever the umask, before SQLite opens it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| CheckpointError::Io { path: display.clone(), source })?;
        let sql = |source| CheckpointError::Sql { path: display.clone(), source };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(sql)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Checkpoint { conn: Mutex::new(conn), path: display })
    }

    /// A checkpoint that lives only as long as the process (`--no-checkpoint`).
    pub fn in_memory() -> Result<Checkpoint, CheckpointError> {
        let sql = |source| CheckpointError::Sql { path: ":memory:".into(), source };
        let conn = Connection::open_in_memory().map_err(sql)?;
        conn.execute_batch("PRAGMA foreign_keys = ON;").map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Checkpoint { conn: Mutex::new(conn), path: ":memory:".into() })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, CheckpointError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|source| CheckpointError::Sql { path: self.path.clone(), source })
    }

    pub fn find(&self, key: &DownloadKey) -> Result<Option<Record>, CheckpointError> {
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT id, etag, size, part_size, temp_name FROM downloads
                     WHERE endpoint = ?1 AND bucket = ?2 AND key = ?3 AND target = ?4",
                    params![key.endpoint, key.bucket, key.key, bytes_of(&key.target)],
                    |r| {
                        Ok(Record {
                            id: r.get(0)?,
                            etag: r.get(1)?,
                            size: r.get::<_, i64>(2)? as u64,
                            part_size: r.get::<_, i64>(3)? as u64,
                            temp_name: r.get(4)?,
                            ranges: BTreeMap::new(),
                        })
                    },
                )
                .optional()?;
            let Some(mut record) = row else { return Ok(None) };
            let mut stmt = c.prepare("SELECT part, crc64 FROM download_ranges WHERE download = ?1")?;
            let rows = stmt.query_map([record.id], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))?;
            for row in rows {
                let (part, crc) = row?;
                record.ranges.insert(part, crc);
            }
            Ok(Some(record))
        })
    }

    /// Record a new download (replacing any earlier one of the same key and target); returns its id.
    pub fn start(
        &self,
        key: &DownloadKey,
        etag: &str,
        size: u64,
        part_size: u64,
        temp_name: &[u8],
    ) -> Result<i64, CheckpointError> {
        let now = crate::timefmt::unix_secs(std::time::SystemTime::now());
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM downloads WHERE endpoint = ?1 AND bucket = ?2 AND key = ?3 AND target = ?4",
                params![key.endpoint, key.bucket, key.key, bytes_of(&key.target)],
            )?;
            tx.execute(
                "INSERT INTO downloads (endpoint, bucket, key, target, etag, size, part_size, temp_name, started)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key.endpoint,
                    key.bucket,
                    key.key,
                    bytes_of(&key.target),
                    etag,
                    size as i64,
                    part_size as i64,
                    temp_name,
                    now
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        })
    }

    /// A range whose bytes are in the temporary file.
    pub fn finish_range(&self, id: i64, part: u64, crc64: u64) -> Result<(), CheckpointError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO download_ranges (download, part, crc64) VALUES (?1, ?2, ?3)",
                params![id, part as i64, crc64 as i64],
            )
            .map(|_| ())
        })
    }

    /// Drop a range that did not verify on resume.
    pub fn drop_range(&self, id: i64, part: u64) -> Result<(), CheckpointError> {
        self.with(|c| {
            c.execute("DELETE FROM download_ranges WHERE download = ?1 AND part = ?2", params![id, part as i64])
                .map(|_| ())
        })
    }

    /// The download is done (or abandoned).
    pub fn forget(&self, id: i64) -> Result<(), CheckpointError> {
        self.with(|c| c.execute("DELETE FROM downloads WHERE id = ?1", [id]).map(|_| ()))
    }

    /// Downloads in progress (for tests and messages).
    pub fn pending(&self) -> Result<u64, CheckpointError> {
        self.with(|c| c.query_row("SELECT count(*) FROM downloads", [], |r| r.get::<_, i64>(0)).map(|n| n as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_ranges_and_replaces_a_stale_download() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/download.db");
        let key = DownloadKey {
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "b".into(),
            key: "k".into(),
            target: dir.path().join("t"),
        };
        let c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.find(&key).unwrap(), None);
        let id = c.start(&key, "\"e1\"", 100, 10, b".t.ossmirror-part-1").unwrap();
        c.finish_range(id, 3, 42).unwrap();
        c.finish_range(id, 0, u64::MAX).unwrap();
        drop(c);
        let c = Checkpoint::open(&path).unwrap();
        let r = c.find(&key).unwrap().unwrap();
        assert_eq!((r.etag.as_str(), r.size, r.part_size), ("\"e1\"", 100, 10));
        assert_eq!(r.ranges, BTreeMap::from([(0, u64::MAX), (3, 42)]));
        c.drop_range(id, 3).unwrap();
        let id2 = c.start(&key, "\"e2\"", 5, 10, b".t.ossmirror-part-2").unwrap();
        let r = c.find(&key).unwrap().unwrap();
        assert_eq!((r.id, r.etag.as_str(), r.ranges.len()), (id2, "\"e2\"", 0));
        c.forget(id2).unwrap();
        assert_eq!(c.pending().unwrap(), 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("download.db");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.pending().unwrap(), 0);
        assert!(path.with_extension("damaged").exists());
    }
}
