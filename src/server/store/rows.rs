//! The SQL side of the store: the schema and its migrations, and every row <-> record conversion. The
//! other store modules say what to change; this one knows which columns hold it.

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::{
    BucketRecord, NULL_VERSION, ObjectMeta, ObjectRecord, PartRecord, StoreError, UploadRecord, VersionEntry,
    Versioning,
};
use crate::server::error::ServerError;

pub(super) const SCHEMA_VERSION: i64 = 2;

/// Schema version 1, exactly as the first release created it. A new store is created by running it and then
/// every migration, so the migration path is the one every test exercises.
pub(super) const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS buckets(
    name TEXT PRIMARY KEY, created INTEGER NOT NULL, acl TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects(
    bucket TEXT NOT NULL, key BLOB NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, crc64 INTEGER,
    mtime INTEGER NOT NULL, otype TEXT NOT NULL, meta TEXT NOT NULL, manifest TEXT NOT NULL,
    PRIMARY KEY(bucket, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads(
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key BLOB NOT NULL, initiated INTEGER NOT NULL,
    meta TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads(bucket, key, upload_id);
CREATE TABLE IF NOT EXISTS parts(
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    crc64 INTEGER NOT NULL, mtime INTEGER NOT NULL, manifest TEXT NOT NULL,
    PRIMARY KEY(upload_id, part_number)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs(name TEXT PRIMARY KEY, refs INTEGER NOT NULL) WITHOUT ROWID;
";

/// 1 -> 2: versioning and lifecycle. Existing objects become the `null` version with sequence number 0
/// (older than anything written later).
const MIGRATE_TO_V2: &str = "
ALTER TABLE buckets ADD COLUMN versioning TEXT;
ALTER TABLE buckets ADD COLUMN lifecycle TEXT;
ALTER TABLE objects ADD COLUMN version_id TEXT NOT NULL DEFAULT 'null';
ALTER TABLE objects ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE TABLE versions(
    bucket TEXT NOT NULL, key BLOB NOT NULL, seq INTEGER NOT NULL, version_id TEXT NOT NULL,
    marker INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, crc64 INTEGER, mtime INTEGER NOT NULL,
    otype TEXT NOT NULL, meta TEXT NOT NULL, manifest TEXT NOT NULL, noncurrent_since INTEGER NOT NULL,
    PRIMARY KEY(bucket, key, seq)) WITHOUT ROWID;
CREATE UNIQUE INDEX versions_by_id ON versions(bucket, key, version_id);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters(name, value) VALUES('seq', 0);
";

/// Bring the index to [`SCHEMA_VERSION`], in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), ServerError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(ServerError::Corrupt(format!(
            "index schema version {version} is newer than this ossmirror ({SCHEMA_VERSION})"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        tx.execute_batch(MIGRATE_TO_V2)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    if version > 0 {
        tracing::info!(from = version, to = SCHEMA_VERSION, "index schema migrated");
    }
    Ok(())
}

pub(super) fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty document rather than panic.
    serde_json::to_string(v).unwrap_or_default()
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(s: &str, what: &str) -> Result<T, ServerError> {
    serde_json::from_str(s).map_err(|e| ServerError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn key_text(bytes: Vec<u8>) -> Result<String, ServerError> {
    String::from_utf8(bytes).map_err(|_| ServerError::Corrupt("a key is not UTF-8".into()))
}

/// The smallest byte string greater than every string starting with `prefix` (None: no such bound).
pub(super) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xFF {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// The smallest byte string greater than `key`.
pub(super) fn key_successor(key: &[u8]) -> Vec<u8> {
    let mut s = key.to_vec();
    s.push(0);
    s
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------------------
// Sequence numbers and version ids

/// The next store-wide sequence number (inside the caller's transaction).
pub(super) fn next_seq(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("UPDATE counters SET value=value+1 WHERE name='seq' RETURNING value", [], |r| r.get(0))
}

/// A new version id: the sequence number, then random bits, as 32 upper-case hex digits (letters and digits
/// only, as OSS version ids are).
pub(super) fn new_version_id(seq: i64) -> String {
    format!("{:016X}{:016X}", seq as u64, fastrand::u64(..))
}

/// The sequence number inside a version id this store issued.
pub(super) fn seq_of_version_id(version_id: &str) -> Option<i64> {
    if version_id.len() != 32 || !version_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&version_id[..16], 16).ok().map(|s| s as i64)
}

// ---------------------------------------------------------------------------------------------------------
// Buckets

const BUCKET_COLUMNS: &str = "name, created, acl, versioning, lifecycle";

fn bucket_from_row(r: &Row<'_>) -> Result<BucketRecord, rusqlite::Error> {
    let versioning = match r.get::<_, Option<String>>(3)?.as_deref() {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        _ => Versioning::Unversioned,
    };
    Ok(BucketRecord { name: r.get(0)?, created: r.get(1)?, acl: r.get(2)?, versioning, lifecycle: r.get(4)? })
}

pub(super) fn bucket_row(conn: &Connection, name: &str) -> Result<Option<BucketRecord>, rusqlite::Error> {
    conn.query_row(&format!("SELECT {BUCKET_COLUMNS} FROM buckets WHERE name=?1"), [name], bucket_from_row).optional()
}

pub(super) fn all_buckets(conn: &Connection) -> Result<Vec<BucketRecord>, rusqlite::Error> {
    let mut stmt = conn.prepare(&format!("SELECT {BUCKET_COLUMNS} FROM buckets ORDER BY name"))?;
    let rows = stmt.query_map([], bucket_from_row)?;
    rows.collect()
}

/// The bucket, or `NoSuchBucket`.
pub(super) fn require_bucket(conn: &Connection, name: &str) -> Result<BucketRecord, StoreError> {
    bucket_row(conn, name)?.ok_or(StoreError::NoSuchBucket)
}

// ---------------------------------------------------------------------------------------------------------
// Objects: `objects` holds the current version of each key, `versions` the rest (see the module docs)

pub(super) const OBJECT_COLUMNS: &str = "key, size, etag, crc64, mtime, otype, meta, manifest, version_id, seq";
const VERSION_COLUMNS: &str =
    "key, size, etag, crc64, mtime, otype, meta, manifest, version_id, seq, marker, noncurrent_since";

/// A record from a row whose first columns are [`OBJECT_COLUMNS`].
pub(super) fn record_from_row(b: &BucketRecord, row: &Row<'_>) -> Result<ObjectRecord, StoreError> {
    let meta: String = row.get(6)?;
    let manifest: String = row.get(7)?;
    let version_id: String = row.get(8)?;
    Ok(ObjectRecord {
        bucket: b.name.clone(),
        key: key_text(row.get(0)?)?,
        size: row.get::<_, i64>(1)? as u64,
        etag: row.get(2)?,
        crc64: row.get::<_, Option<i64>>(3)?.map(|c| c as u64),
        mtime: row.get(4)?,
        object_type: row.get(5)?,
        meta: from_json(&meta, "object meta")?,
        manifest: from_json(&manifest, "object manifest")?,
        version_id: (b.versioning != Versioning::Unversioned).then_some(version_id),
        seq: row.get(9)?,
    })
}

fn version_from_row(b: &BucketRecord, row: &Row<'_>) -> Result<VersionEntry, StoreError> {
    let mut record = record_from_row(b, row)?;
    // History only exists in buckets that had versioning, but say so even if the caller's view differs.
    if record.version_id.is_none() {
        record.version_id = Some(row.get(8)?);
    }
    Ok(VersionEntry {
        record,
        delete_marker: row.get::<_, i64>(10)? != 0,
        latest: false,
        noncurrent_since: row.get(11)?,
    })
}

pub(super) fn current_row(conn: &Connection, b: &BucketRecord, key: &str) -> Result<Option<ObjectRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket=?1 AND key=?2"))?;
    let mut rows = stmt.query(params![b.name, key.as_bytes()])?;
    match rows.next()? {
        Some(row) => Ok(Some(record_from_row(b, row)?)),
        None => Ok(None),
    }
}

pub(super) fn write_current(conn: &Connection, r: &ObjectRecord) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT OR REPLACE INTO objects(bucket, key, size, etag, crc64, mtime, otype, meta, manifest, version_id, seq)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            r.bucket,
            r.key.as_bytes(),
            r.size as i64,
            r.etag,
            r.crc64.map(|c| c as i64),
            r.mtime,
            r.object_type,
            to_json(&r.meta),
            to_json(&r.manifest),
            r.version_or_null(),
            r.seq,
        ],
    )?;
    Ok(())
}

pub(super) fn remove_current(conn: &Connection, bucket: &str, key: &str) -> Result<(), rusqlite::Error> {
    conn.execute("DELETE FROM objects WHERE bucket=?1 AND key=?2", params![bucket, key.as_bytes()])?;
    Ok(())
}

pub(super) fn set_current_meta(conn: &Connection, r: &ObjectRecord) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE objects SET meta=?3 WHERE bucket=?1 AND key=?2",
        params![r.bucket, r.key.as_bytes(), to_json(&r.meta)],
    )?;
    Ok(())
}

/// Every history row of `key`, newest first. `latest` is set on the first one when the key has no current
/// version (it is then a delete marker, by the store's invariant).
pub(super) fn history(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
    has_current: bool,
) -> Result<Vec<VersionEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions WHERE bucket=?1 AND key=?2 ORDER BY seq DESC"
    ))?;
    let mut rows = stmt.query(params![b.name, key.as_bytes()])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut v = version_from_row(b, row)?;
        v.latest = !has_current && out.is_empty();
        out.push(v);
    }
    Ok(out)
}

/// The newest history row of `key` (its `latest` flag is not set: the caller knows whether a current
/// version exists).
pub(super) fn newest_history(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
) -> Result<Option<VersionEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions WHERE bucket=?1 AND key=?2 ORDER BY seq DESC LIMIT 1"
    ))?;
    let mut rows = stmt.query(params![b.name, key.as_bytes()])?;
    match rows.next()? {
        Some(row) => Ok(Some(version_from_row(b, row)?)),
        None => Ok(None),
    }
}

pub(super) fn history_row(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
    version_id: &str,
) -> Result<Option<VersionEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions WHERE bucket=?1 AND key=?2 AND version_id=?3"
    ))?;
    let mut rows = stmt.query(params![b.name, key.as_bytes(), version_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(version_from_row(b, row)?)),
        None => Ok(None),
    }
}

/// History rows of a bucket in (key, seq descending) order, from `(key, seq)` on (exclusive), at most
/// `limit`: the lifecycle pass walks them in batches.
pub(super) fn history_batch(
    conn: &Connection,
    b: &BucketRecord,
    after: Option<(&[u8], i64)>,
    limit: usize,
) -> Result<Vec<VersionEntry>, StoreError> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM versions WHERE bucket=?1 AND (key>?2 OR (key=?2 AND seq<?3))
         ORDER BY key, seq DESC LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    // Without a cursor, ("", MAX) lets every row through.
    let (key, seq) = after.unwrap_or((b"", i64::MAX));
    let mut rows = stmt.query(params![b.name, key, seq, limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(version_from_row(b, row)?);
    }
    Ok(out)
}

pub(super) fn insert_history(
    conn: &Connection,
    r: &ObjectRecord,
    marker: bool,
    noncurrent_since: i64,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO versions(bucket, key, seq, version_id, marker, size, etag, crc64, mtime, otype, meta, manifest,
                              noncurrent_since)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            r.bucket,
            r.key.as_bytes(),
            r.seq,
            r.version_or_null(),
            marker as i64,
            r.size as i64,
            r.etag,
            r.crc64.map(|c| c as i64),
            r.mtime,
            r.object_type,
            to_json(&r.meta),
            to_json(&r.manifest),
            noncurrent_since,
        ],
    )?;
    Ok(())
}

pub(super) fn remove_history(conn: &Connection, r: &ObjectRecord) -> Result<(), rusqlite::Error> {
    conn.execute(
        "DELETE FROM versions WHERE bucket=?1 AND key=?2 AND seq=?3",
        params![r.bucket, r.key.as_bytes(), r.seq],
    )?;
    Ok(())
}

pub(super) fn set_history_meta(conn: &Connection, r: &ObjectRecord) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE versions SET meta=?4 WHERE bucket=?1 AND key=?2 AND seq=?3",
        params![r.bucket, r.key.as_bytes(), r.seq, to_json(&r.meta)],
    )?;
    Ok(())
}

/// The newest history row of `key` stops being the latest (something newer arrived): it is noncurrent from
/// `now` on.
pub(super) fn newest_history_becomes_noncurrent(
    conn: &Connection,
    bucket: &str,
    key: &str,
    now: i64,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE versions SET noncurrent_since=?3 WHERE bucket=?1 AND key=?2
           AND seq=(SELECT MAX(seq) FROM versions WHERE bucket=?1 AND key=?2)",
        params![bucket, key.as_bytes(), now],
    )?;
    Ok(())
}

/// A delete marker's record: a key, a version id and a time, nothing else.
pub(super) fn marker_record(bucket: &str, key: &str, version_id: String, seq: i64, mtime: i64) -> ObjectRecord {
    ObjectRecord {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size: 0,
        etag: String::new(),
        crc64: None,
        mtime,
        object_type: String::new(),
        meta: ObjectMeta::default(),
        manifest: Vec::new(),
        version_id: Some(version_id),
        seq,
    }
}

/// Whether `version_id` names the `null` version.
pub(super) fn is_null_version(version_id: &str) -> bool {
    version_id == NULL_VERSION
}

// ---------------------------------------------------------------------------------------------------------
// Uploads and parts

pub(super) fn upload_row(
    conn: &Connection,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<Option<UploadRecord>, StoreError> {
    let row = conn
        .query_row("SELECT bucket, key, initiated, meta FROM uploads WHERE upload_id=?1", [upload_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
        })
        .optional()?;
    match row {
        // An upload id used with another bucket or key is, for that request, no upload at all.
        Some((b, k, initiated, meta)) if b == bucket && k == key.as_bytes() => Ok(Some(UploadRecord {
            upload_id: upload_id.to_string(),
            bucket: b,
            key: key.to_string(),
            initiated,
            meta: from_json(&meta, "upload meta")?,
        })),
        _ => Ok(None),
    }
}

pub(super) fn part_from_row(row: &Row<'_>) -> Result<PartRecord, StoreError> {
    let manifest: String = row.get(5)?;
    Ok(PartRecord {
        part_number: row.get(0)?,
        size: row.get::<_, i64>(1)? as u64,
        etag: row.get(2)?,
        crc64: row.get::<_, i64>(3)? as u64,
        mtime: row.get(4)?,
        manifest: from_json(&manifest, "part manifest")?,
    })
}

pub(super) fn part_row(conn: &Connection, upload_id: &str, part_number: u32) -> Result<Option<PartRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT part_number, size, etag, crc64, mtime, manifest FROM parts WHERE upload_id=?1 AND part_number=?2",
    )?;
    let mut rows = stmt.query(params![upload_id, part_number])?;
    match rows.next()? {
        Some(row) => Ok(Some(part_from_row(row)?)),
        None => Ok(None),
    }
}
