//! Listings: ListObjects / ListObjectsV2 over the current versions, and ListObjectVersions over current
//! versions and history together. Both walk keys in UTF-8 byte order in batches, roll keys up into common
//! prefixes at the delimiter (jumping past every other key under a prefix in one step), and stop at `max`
//! entries, prefixes counting as one each.

use rusqlite::params;

use super::rows::{
    OBJECT_COLUMNS, current_row, find, history, key_successor, key_text, prefix_successor, record_from_row,
    require_bucket, seq_of_version_id,
};
use super::{ListEntry, ListPage, Store, StoreError, VersionEntry, VersionListEntry, VersionsPage};

const BATCH: i64 = 256;

/// Where a listing walk starts: after `after` (exclusive) within `prefix`.
fn start_key(prefix: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    match after {
        Some(a) if a >= prefix => a.to_vec(),
        _ => prefix.to_vec(),
    }
}

/// The common prefix `key` rolls up into, if any.
fn common_prefix<'k>(key: &'k [u8], prefix: &[u8], delimiter: Option<&str>) -> Option<&'k [u8]> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let pos = find(&key[prefix.len()..], d.as_bytes())?;
    Some(&key[..prefix.len() + pos + d.len()])
}

impl Store {
    /// One page of a listing (ListObjects / ListObjectsV2): keys starting with `prefix`, strictly after
    /// `after`, rolled up at `delimiter`, at most `max` entries (objects and prefixes together).
    ///
    /// A common prefix is emitted only if it sorts after `after`, which makes a prefix itself a valid
    /// resume point (S3's and OSS's `NextMarker` can be one).
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let state = self.state();
        let b = require_bucket(&state.conn, bucket)?;
        let prefix_b = prefix.as_bytes();
        let after_b = after.map(str::as_bytes);
        let mut lower = start_key(prefix_b, after_b);
        let mut page = ListPage::default();
        let mut stmt = state.conn.prepare(&format!(
            "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket=?1 AND key>=?2 ORDER BY key LIMIT ?3"
        ))?;
        'outer: loop {
            let mut rows = stmt.query(params![bucket, lower, BATCH])?;
            let mut seen = 0i64;
            let mut jumped = false;
            while let Some(row) = rows.next()? {
                seen += 1;
                let key: Vec<u8> = row.get(0)?;
                if !key.starts_with(prefix_b) {
                    break 'outer;
                }
                if after_b.is_some_and(|a| key.as_slice() <= a) {
                    lower = key_successor(&key);
                    continue;
                }
                if let Some(cp) = common_prefix(&key, prefix_b, delimiter) {
                    if after_b.is_none_or(|a| cp > a) {
                        if page.entries.len() >= max {
                            page.truncated = true;
                            break 'outer;
                        }
                        page.entries.push(ListEntry::Prefix(key_text(cp.to_vec())?));
                    }
                    // Skip every other key under this prefix in one step.
                    match prefix_successor(cp) {
                        Some(next) => lower = next,
                        None => break 'outer,
                    }
                    jumped = true;
                    break;
                }
                if page.entries.len() >= max {
                    page.truncated = true;
                    break 'outer;
                }
                page.entries.push(ListEntry::Object(Box::new(record_from_row(&b, row)?)));
                lower = key_successor(&key);
            }
            if !jumped && seen < BATCH {
                break;
            }
        }
        Ok(page)
    }

    /// One page of ListObjectVersions: for each key starting with `prefix`, its current version, then its
    /// history newest first. With `key_marker` alone the page starts after every version of that key; with
    /// `version_id_marker` too, after that version of it.
    pub fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        version_id_marker: Option<&str>,
        max: usize,
    ) -> Result<VersionsPage, StoreError> {
        let state = self.state();
        let conn = &state.conn;
        let b = require_bucket(conn, bucket)?;
        let prefix_b = prefix.as_bytes();
        let after_b = key_marker.map(str::as_bytes);
        let resume_key = key_marker.zip(version_id_marker);
        let mut lower = start_key(prefix_b, after_b);
        let mut page = VersionsPage::default();
        let mut stmt = conn.prepare(
            "SELECT key FROM objects WHERE bucket=?1 AND key>=?2
             UNION SELECT key FROM versions WHERE bucket=?1 AND key>=?2 ORDER BY key LIMIT ?3",
        )?;
        'outer: loop {
            let keys: Vec<Vec<u8>> =
                stmt.query_map(params![bucket, lower, BATCH], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut jumped = false;
            for key in &keys {
                if !key.starts_with(prefix_b) {
                    break 'outer;
                }
                lower = key_successor(key);
                let resume_here = resume_key.filter(|(k, _)| k.as_bytes() == key.as_slice());
                if resume_here.is_none() && after_b.is_some_and(|a| key.as_slice() <= a) {
                    continue;
                }
                if let Some(cp) = common_prefix(key, prefix_b, delimiter) {
                    if after_b.is_none_or(|a| cp > a) {
                        if page.entries.len() >= max {
                            page.truncated = true;
                            break 'outer;
                        }
                        page.entries.push(VersionListEntry::Prefix(key_text(cp.to_vec())?));
                    }
                    match prefix_successor(cp) {
                        Some(next) => lower = next,
                        None => break 'outer,
                    }
                    jumped = true;
                    break;
                }
                let key = key_text(key.clone())?;
                let entries = key_versions(conn, &b, &key)?;
                let skip = resume_here.map_or(0, |(_, marker)| resume_position(&entries, marker));
                for entry in entries.into_iter().skip(skip) {
                    if page.entries.len() >= max {
                        page.truncated = true;
                        break 'outer;
                    }
                    page.entries.push(VersionListEntry::Version(Box::new(entry)));
                }
            }
            if !jumped && (keys.len() as i64) < BATCH {
                break;
            }
        }
        Ok(page)
    }
}

/// All versions of a key, newest first: the current one (if any), then the history.
pub(super) fn key_versions(
    conn: &rusqlite::Connection,
    b: &super::BucketRecord,
    key: &str,
) -> Result<Vec<VersionEntry>, StoreError> {
    let current = current_row(conn, b, key)?;
    let mut entries = Vec::new();
    let has_current = current.is_some();
    if let Some(c) = current {
        entries.push(VersionEntry { record: c, delete_marker: false, latest: true, noncurrent_since: 0 });
    }
    entries.extend(history(conn, b, key, has_current)?);
    Ok(entries)
}

/// Where to resume in a key's versions (newest first) after `marker`: just past it, or, when it is gone,
/// past every version at least as new (version ids carry their sequence number, see `rows`).
fn resume_position(entries: &[VersionEntry], marker: &str) -> usize {
    if let Some(i) = entries.iter().position(|e| e.version_id() == marker) {
        return i + 1;
    }
    match seq_of_version_id(marker) {
        Some(seq) => entries.iter().take_while(|e| e.record.seq >= seq).count(),
        // A vanished `null` version: start the key again (a repeat is better than a loss).
        None => 0,
    }
}
