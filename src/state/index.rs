//! The synced-file index beyond single lookups: paged listing, lookups for rename detection, counts.
//!
//! The index may hold a million rows, so nothing here reads a table whole. Listing is keyset-paged on
//! `(bucket, key)` (the UNIQUE index): each page is one short read, so a long walk neither holds the
//! connection nor pins a WAL snapshot. Pages are not one snapshot: rows written during a walk may or may not
//! be seen, as with any paged listing.

use rusqlite::params;

use super::{SELECT_SYNCED, StateDb, StateError, SyncedFile, read_synced};

/// A synced row as listed: trusted, or damaged (its MAC failed; the file should be re-verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncedEntry {
    Valid(SyncedFile),
    Damaged { bucket: String, key: String, reason: String },
}

impl SyncedEntry {
    /// The object key (the paging cursor).
    pub fn key(&self) -> &str {
        match self {
            SyncedEntry::Valid(f) => &f.key,
            SyncedEntry::Damaged { key, .. } => key,
        }
    }
}

/// Counts for the `status` command. Counting does not verify MACs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    /// Upload checkpoints (interrupted or in-progress multipart uploads).
    pub checkpoints: u64,
    pub parts: u64,
    pub synced_files: u64,
    pub synced_bytes: u64,
    pub pending: u64,
    pub failed: u64,
    /// Claims whose owner is alive (see [`super::Claim`]).
    pub in_flight: u64,
}

/// Rows per page for [`SyncedIter`]. A row is a few hundred bytes plus 32 per part.
const PAGE: usize = 256;

impl StateDb {
    /// Up to `limit` synced rows of `bucket` whose key starts with `prefix`, in key order, after the key
    /// `after` (exclusive; `None` starts at the beginning). Pass the last returned key as the next `after`.
    pub fn list_synced(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SyncedEntry>, StateError> {
        // Keys compare as bytes (SQLite's BINARY collation is memcmp, as is Rust's str order), so the keys
        // with a prefix are contiguous from the prefix itself onwards: scan from there and stop at the first
        // key without it.
        let (op, start) = match after {
            Some(a) if a >= prefix => (">", a),
            _ => (">=", prefix),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // typeof(key) = 'text': a key edited into a blob cannot be compared with the prefix; such a row is
        // still found (and distrusted) by a lookup of its bucket/key.
        let sql =
            format!("{SELECT_SYNCED} WHERE bucket = ?1 AND key {op} ?2 AND typeof(key) = 'text' ORDER BY key LIMIT ?3");
        self.run(|conn, mac| {
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![bucket, start, limit])?;
            while let Some(row) = rows.next()? {
                let raw_key = match row.get_ref(1)? {
                    rusqlite::types::ValueRef::Text(t) => t,
                    _ => continue,
                };
                if !raw_key.starts_with(prefix.as_bytes()) {
                    break;
                }
                let key = String::from_utf8_lossy(raw_key).into_owned();
                out.push(match read_synced(row, mac)? {
                    Ok(file) => SyncedEntry::Valid(file),
                    Err(reason) => {
                        tracing::warn!(bucket, key, reason, "state database: damaged synced record");
                        SyncedEntry::Damaged { bucket: bucket.to_string(), key, reason }
                    }
                });
            }
            Ok(out)
        })
    }

    /// Every synced row of `bucket` under `prefix`, read page by page (memory is one page).
    pub fn iter_synced(&self, bucket: &str, prefix: &str) -> SyncedIter {
        SyncedIter {
            db: self.clone(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Valid synced rows with this size and whole-file CRC-64 (candidates for a rename or copy: the caller
    /// confirms with the part hashes before trusting one), at most `limit`.
    pub fn synced_by_content(&self, size: u64, crc64: u64, limit: usize) -> Result<Vec<SyncedFile>, StateError> {
        self.lookup("size = ?1 AND crc64 = ?2", size as i64, crc64 as i64, limit)
    }

    /// Valid synced rows recorded with this device and inode (a renamed file keeps its inode), at most
    /// `limit`.
    pub fn synced_by_inode(&self, dev: u64, inode: u64, limit: usize) -> Result<Vec<SyncedFile>, StateError> {
        self.lookup("snap_dev = ?1 AND snap_inode = ?2", dev as i64, inode as i64, limit)
    }

    fn lookup(&self, condition: &str, a: i64, b: i64, limit: usize) -> Result<Vec<SyncedFile>, StateError> {
        let sql = format!("{SELECT_SYNCED} WHERE {condition} LIMIT ?3");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(|conn, mac| {
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![a, b, limit])?;
            while let Some(row) = rows.next()? {
                match read_synced(row, mac)? {
                    Ok(file) => out.push(file),
                    Err(reason) => tracing::warn!(reason, "state database: skipping a damaged synced record"),
                }
            }
            Ok(out)
        })
    }

    /// Row counts for `status`.
    pub fn counts(&self) -> Result<StateCounts, StateError> {
        let mut counts = self.run(|conn, _| {
            // One statement, so one consistent snapshot. total() is a float sum that cannot overflow.
            Ok(conn.query_row(
                "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM parts), (SELECT count(*) FROM synced),
                        (SELECT total(size) FROM synced),
                        (SELECT count(*) FROM file_status WHERE state = 'pending'),
                        (SELECT count(*) FROM file_status WHERE state = 'failed')",
                [],
                |r| {
                    let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                    Ok(StateCounts {
                        checkpoints: n(0)?,
                        parts: n(1)?,
                        synced_files: n(2)?,
                        synced_bytes: r.get::<_, f64>(3)? as u64,
                        pending: n(4)?,
                        failed: n(5)?,
                        in_flight: 0,
                    })
                },
            )?)
        })?;
        counts.in_flight = self.list_in_flight()?.iter().filter(|c| c.live).count() as u64;
        Ok(counts)
    }
}

/// Iterator over [`StateDb::iter_synced`]; an error ends the iteration after it is yielded.
#[derive(Debug)]
pub struct SyncedIter {
    db: StateDb,
    bucket: String,
    prefix: String,
    after: Option<String>,
    page: std::vec::IntoIter<SyncedEntry>,
    done: bool,
}

impl Iterator for SyncedIter {
    type Item = Result<SyncedEntry, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.page.next() {
            return Some(Ok(entry));
        }
        if self.done {
            return None;
        }
        match self.db.list_synced(&self.bucket, &self.prefix, self.after.as_deref(), PAGE) {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(page) => {
                // A short page is the last one (the prefix ended or the table did). A cursor that does not
                // advance (a damaged key that is not valid UTF-8 reads back lossily) also ends the walk,
                // rather than looping.
                let next = page.last().map(|e| e.key().to_string());
                self.done = page.len() < PAGE || next.is_none() || next <= self.after;
                self.after = next;
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
        }
    }
}
