//! Objects and their versions: reading a version, installing a new current version (PutObject, CopyObject,
//! CompleteMultipartUpload all end here), deleting (a delete marker, or one version for good), and metadata
//! changes in place (ACL, tags).
//!
//! What a new current version does to the one it replaces depends on the bucket (OSS's rules, the same as
//! S3's): unversioned, the old one is released; enabled, it becomes noncurrent history; suspended, a `null`
//! current version is replaced in place and a real one becomes history, and any `null` version in the
//! history is replaced too, since there is only ever one `null` version of a key.

use rusqlite::{Connection, TransactionBehavior};

use super::blob::{decref_manifest, incref_manifest};
use super::rows::{
    current_row, history_row, insert_history, is_null_version, marker_record, new_version_id, newest_history,
    newest_history_becomes_noncurrent, next_seq, remove_current, remove_history, require_bucket, set_current_meta,
    set_history_meta, write_current,
};
use super::{
    BucketRecord, DeleteOutcome, NULL_VERSION, NewBlob, ObjectMeta, ObjectRecord, Pin, Store, StoreError, Versioning,
    crash_point,
};
use crate::server::error::{OssError, ServerError};

/// An object version named by a request (`versionId` absent: the current one).
#[derive(Debug, Clone, Copy)]
pub struct VersionRef<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub version: Option<&'a str>,
}

/// What a CopyObject stored, and the source version it copied.
#[derive(Debug, Clone)]
pub struct CopyOutcome {
    pub record: ObjectRecord,
    pub source_version: Option<String>,
}

impl Store {
    pub fn head_object(&self, at: VersionRef<'_>) -> Result<ObjectRecord, StoreError> {
        let state = self.state();
        let b = require_bucket(&state.conn, at.bucket)?;
        find_version(&state.conn, &b, at.key, at.version)
    }

    /// Read a version's record and pin its blobs so they outlive a concurrent overwrite while being read.
    pub fn open_object(&self, at: VersionRef<'_>) -> Result<(ObjectRecord, Pin), StoreError> {
        let mut state = self.state();
        let b = require_bucket(&state.conn, at.bucket)?;
        let record = find_version(&state.conn, &b, at.key, at.version)?;
        let pin = self.pin_locked(&mut state, &record.manifest);
        Ok((record, pin))
    }

    /// Commit a received blob as the new current version (PutObject). `forbid_overwrite` applies only to
    /// unversioned buckets, as on OSS.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        mut blob: NewBlob,
        meta: ObjectMeta,
        forbid_overwrite: bool,
        now: i64,
    ) -> Result<ObjectRecord, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let b = require_bucket(&tx, bucket)?;
        check_overwrite(&tx, &b, key, forbid_overwrite)?;
        if let Some(name) = &blob.name {
            tx.execute("INSERT INTO blobs(name, refs) VALUES(?1, 1)", [name])?;
        }
        let record = ObjectRecord {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: blob.size,
            etag: hex::encode_upper(blob.md5),
            crc64: Some(blob.crc64),
            mtime: now,
            object_type: "Normal".into(),
            meta,
            manifest: blob.manifest(),
            version_id: None,
            seq: 0,
        };
        let mut garbage = Vec::new();
        let record = install_current(&tx, &b, record, now, &mut garbage)?;
        tx.commit()?;
        blob.committed = true;
        self.release(&mut state, garbage);
        Ok(record)
    }

    /// CopyObject: the destination references the source's blobs. `make_meta` sees the source (for
    /// conditions and the metadata directive) and may refuse.
    pub fn copy_object(
        &self,
        src: VersionRef<'_>,
        dst_bucket: &str,
        dst_key: &str,
        forbid_overwrite: bool,
        now: i64,
        make_meta: impl FnOnce(&ObjectRecord) -> Result<ObjectMeta, OssError>,
    ) -> Result<CopyOutcome, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sb = require_bucket(&tx, src.bucket)?;
        let source = find_version(&tx, &sb, src.key, src.version)?;
        let db = require_bucket(&tx, dst_bucket)?;
        let meta = make_meta(&source).map_err(StoreError::Rejected)?;
        check_overwrite(&tx, &db, dst_key, forbid_overwrite)?;
        // Take the new references before the old current version can drop its own: copying an object onto
        // itself must not free its blobs in between. The source row holds references, so no blob needs
        // resurrecting.
        incref_manifest(&tx, &Default::default(), &source.manifest, &mut Vec::new())?;
        let record = ObjectRecord {
            bucket: dst_bucket.to_string(),
            key: dst_key.to_string(),
            mtime: now,
            meta,
            version_id: None,
            seq: 0,
            ..source.clone()
        };
        let mut garbage = Vec::new();
        let record = install_current(&tx, &db, record, now, &mut garbage)?;
        tx.commit()?;
        self.release(&mut state, garbage);
        Ok(CopyOutcome { record, source_version: source.version_id })
    }

    /// DeleteObject: without a version, the current version is removed (unversioned) or hidden behind a
    /// delete marker; with one, that version (or delete marker) is removed for good. Deleting what does not
    /// exist succeeds, as on OSS.
    pub fn delete_object(&self, at: VersionRef<'_>, now: i64) -> Result<DeleteOutcome, StoreError> {
        let outcome = self.delete_objects(at.bucket, &[(at.key, at.version)], now)?;
        // One item in, one outcome out.
        outcome
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Server(ServerError::Corrupt("a delete had no outcome".into())))
    }

    /// Delete several keys or versions in one transaction (DeleteMultipleObjects).
    pub fn delete_objects(
        &self,
        bucket: &str,
        items: &[(&str, Option<&str>)],
        now: i64,
    ) -> Result<Vec<DeleteOutcome>, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let b = require_bucket(&tx, bucket)?;
        let mut garbage = Vec::new();
        let mut outcomes = Vec::with_capacity(items.len());
        for (key, version) in items {
            let outcome = match version {
                None => delete_current_version(&tx, &b, key, now, &mut garbage)?,
                Some(v) => delete_version(&tx, &b, key, v, &mut garbage)?,
            };
            outcomes.push(outcome);
        }
        if b.versioning != Versioning::Unversioned {
            crash_point("version_before_commit");
        }
        tx.commit()?;
        self.release(&mut state, garbage);
        Ok(outcomes)
    }

    /// Change a version's metadata in place (ACL, tags): `change` may refuse. Returns the updated record.
    pub fn update_object_meta(
        &self,
        at: VersionRef<'_>,
        change: impl FnOnce(&mut ObjectMeta) -> Result<(), OssError>,
    ) -> Result<ObjectRecord, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let b = require_bucket(&tx, at.bucket)?;
        let mut record = find_version(&tx, &b, at.key, at.version)?;
        change(&mut record.meta).map_err(StoreError::Rejected)?;
        let is_current = current_row(&tx, &b, at.key)?.is_some_and(|c| c.seq == record.seq);
        if is_current {
            set_current_meta(&tx, &record)?;
        } else {
            set_history_meta(&tx, &record)?;
        }
        tx.commit()?;
        Ok(record)
    }
}

/// `x-oss-forbid-overwrite`: refused when the key has a current version; ignored once the bucket has
/// versioning (OSS-PROTOCOL.md §5.15), since nothing is overwritten there.
fn check_overwrite(conn: &Connection, b: &BucketRecord, key: &str, forbid: bool) -> Result<(), StoreError> {
    if forbid && b.versioning == Versioning::Unversioned && current_row(conn, b, key)?.is_some() {
        return Err(StoreError::AlreadyExists);
    }
    Ok(())
}

/// The version a request names: the current one, or the one with that id.
pub(super) fn find_version(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
    version: Option<&str>,
) -> Result<ObjectRecord, StoreError> {
    let current = current_row(conn, b, key)?;
    match version {
        None => match current {
            Some(c) => Ok(c),
            // By the store's invariant, history without a current version starts with a delete marker.
            None => match newest_history(conn, b, key)? {
                Some(v) if v.delete_marker => {
                    Err(StoreError::DeleteMarker { version_id: v.version_id().to_string(), addressed: false })
                }
                _ => Err(StoreError::NoSuchKey),
            },
        },
        Some(id) => {
            if let Some(c) = current.filter(|c| c.version_or_null() == id) {
                return Ok(c);
            }
            match history_row(conn, b, key, id)? {
                Some(v) if v.delete_marker => {
                    Err(StoreError::DeleteMarker { version_id: id.to_string(), addressed: true })
                }
                Some(v) => Ok(v.record),
                None => Err(StoreError::NoSuchVersion),
            }
        }
    }
}

/// Make `record` (its blob references already taken) the current version of its key, following the
/// bucket's versioning state. Returns the record as stored, with its version id.
pub(super) fn install_current(
    conn: &Connection,
    b: &BucketRecord,
    mut record: ObjectRecord,
    now: i64,
    garbage: &mut Vec<String>,
) -> Result<ObjectRecord, StoreError> {
    record.seq = next_seq(conn)?;
    let old = current_row(conn, b, &record.key)?;
    let replaces = old.is_some();
    match b.versioning {
        Versioning::Unversioned => {
            record.version_id = None;
            if let Some(old) = &old {
                decref_manifest(conn, &old.manifest, garbage)?;
            }
        }
        Versioning::Enabled => {
            record.version_id = Some(new_version_id(record.seq));
            retire_current(conn, &b.name, &record.key, old, false, now, garbage)?;
        }
        Versioning::Suspended => {
            record.version_id = Some(NULL_VERSION.to_string());
            retire_current(conn, &b.name, &record.key, old, true, now, garbage)?;
            drop_null_history(conn, b, &record.key, garbage)?;
        }
    }
    if replaces && b.versioning != Versioning::Unversioned {
        crash_point("version_before_commit");
    }
    write_current(conn, &record)?;
    Ok(record)
}

/// The current version (if any) stops being current in a versioned bucket: it becomes history, or, when
/// `replace_null` and it is the `null` version, it is released. Without a current version, the newest
/// history row (a delete marker) becomes noncurrent.
fn retire_current(
    conn: &Connection,
    bucket: &str,
    key: &str,
    old: Option<ObjectRecord>,
    replace_null: bool,
    now: i64,
    garbage: &mut Vec<String>,
) -> Result<(), StoreError> {
    match old {
        Some(old) if replace_null && is_null_version(old.version_or_null()) => {
            remove_current(conn, bucket, key)?;
            decref_manifest(conn, &old.manifest, garbage)?;
        }
        Some(old) => {
            remove_current(conn, bucket, key)?;
            insert_history(conn, &old, false, now)?;
        }
        // Markers stack: the one that was latest is now noncurrent.
        None => newest_history_becomes_noncurrent(conn, bucket, key, now)?,
    }
    Ok(())
}

/// Remove the `null` version from a key's history (Suspended: there is only one `null` version).
fn drop_null_history(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
    garbage: &mut Vec<String>,
) -> Result<(), StoreError> {
    if let Some(v) = history_row(conn, b, key, NULL_VERSION)? {
        remove_history(conn, &v.record)?;
        decref_manifest(conn, &v.record.manifest, garbage)?;
    }
    Ok(())
}

/// DeleteObject without a version id.
pub(super) fn delete_current_version(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
    now: i64,
    garbage: &mut Vec<String>,
) -> Result<DeleteOutcome, StoreError> {
    let current = current_row(conn, b, key)?;
    if b.versioning == Versioning::Unversioned {
        if let Some(old) = current {
            remove_current(conn, &b.name, key)?;
            decref_manifest(conn, &old.manifest, garbage)?;
        }
        return Ok(DeleteOutcome { version_id: None, delete_marker: false });
    }
    let suspended = b.versioning == Versioning::Suspended;
    retire_current(conn, &b.name, key, current, suspended, now, garbage)?;
    if suspended {
        drop_null_history(conn, b, key, garbage)?;
    }
    let seq = next_seq(conn)?;
    let version_id = if suspended { NULL_VERSION.to_string() } else { new_version_id(seq) };
    let marker = marker_record(&b.name, key, version_id.clone(), seq, now);
    insert_history(conn, &marker, true, now)?;
    Ok(DeleteOutcome { version_id: Some(version_id), delete_marker: true })
}

/// DeleteObject with a version id: that version goes for good, and when it was the current one (or the
/// latest delete marker) the next newest becomes the latest. An unknown version is already gone.
fn delete_version(
    conn: &Connection,
    b: &BucketRecord,
    key: &str,
    version_id: &str,
    garbage: &mut Vec<String>,
) -> Result<DeleteOutcome, StoreError> {
    let versioned = b.versioning != Versioning::Unversioned;
    let reported = |marker: bool| DeleteOutcome {
        version_id: (versioned || !is_null_version(version_id)).then(|| version_id.to_string()),
        delete_marker: marker,
    };
    let current = current_row(conn, b, key)?;
    if let Some(c) = current.as_ref().filter(|c| c.version_or_null() == version_id) {
        remove_current(conn, &b.name, key)?;
        decref_manifest(conn, &c.manifest, garbage)?;
        promote(conn, b, key)?;
        return Ok(reported(false));
    }
    match history_row(conn, b, key, version_id)? {
        Some(v) => {
            remove_history(conn, &v.record)?;
            decref_manifest(conn, &v.record.manifest, garbage)?;
            if current.is_none() {
                promote(conn, b, key)?;
            }
            Ok(reported(v.delete_marker))
        }
        None => Ok(reported(false)),
    }
}

/// Restore the invariant after a removal: a key without a current version whose newest history row is an
/// object version gets that version back as its current one.
fn promote(conn: &Connection, b: &BucketRecord, key: &str) -> Result<(), StoreError> {
    if current_row(conn, b, key)?.is_some() {
        return Ok(());
    }
    if let Some(v) = newest_history(conn, b, key)?.filter(|v| !v.delete_marker) {
        remove_history(conn, &v.record)?;
        write_current(conn, &v.record)?;
    }
    Ok(())
}
