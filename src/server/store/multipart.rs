//! Multipart uploads: initiate, parts (received or copied), list, complete (which installs the assembled
//! object as a new current version, see [`super::objects`]), abort, and ListMultipartUploads.

use std::collections::HashSet;

use md5::{Digest as _, Md5};
use rusqlite::{Connection, TransactionBehavior, params};

use super::blob::{decref_manifest, incref_manifest};
use super::objects::install_current;
use super::rows::{
    self, current_row, from_json, key_text, part_from_row, part_row, require_bucket, to_json, upload_row,
};
use super::{
    MIN_PART_SIZE, Manifest, NewBlob, ObjectMeta, ObjectRecord, PartRecord, PartSelection, Store, StoreError,
    UploadEntry, UploadRecord, UploadsPage, Versioning, crash_point,
};
use crate::checksum::crc64_fold;
use crate::server::error::{OssError, ServerError};

/// Upload ids sort by initiation time (the first 16 hex digits are nanoseconds), which gives
/// ListMultipartUploads its per-key order for free.
fn new_upload_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!("{nanos:016X}{:016X}", fastrand::u64(..))
}

/// What an UploadPart commits.
pub enum PartContent {
    Blob(NewBlob),
    /// UploadPartCopy: pieces of existing blobs (pinned by the caller until the commit returns).
    Copy {
        manifest: Manifest,
        size: u64,
        md5: [u8; 16],
        crc64: u64,
    },
}

impl Store {
    pub fn create_upload(&self, bucket: &str, key: &str, meta: &ObjectMeta, now: i64) -> Result<String, StoreError> {
        let state = self.state();
        if rows::bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let upload_id = new_upload_id();
        state.conn.execute(
            "INSERT INTO uploads(upload_id, bucket, key, initiated, meta) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![upload_id, bucket, key.as_bytes(), now, to_json(meta)],
        )?;
        Ok(upload_id)
    }

    /// The upload, if it exists for this bucket and key.
    pub fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<UploadRecord, StoreError> {
        let state = self.state();
        if rows::bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        upload_row(&state.conn, bucket, key, upload_id)?.ok_or(StoreError::NoSuchUpload)
    }

    /// Commit a part: either a received blob or (UploadPartCopy) pieces of existing blobs, whose MD5 and
    /// CRC the caller computed while holding a `Pin` on them. Uploading the same number again replaces it.
    #[allow(clippy::too_many_arguments)]
    pub fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        content: PartContent,
        now: i64,
    ) -> Result<PartRecord, StoreError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if rows::bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let mut resurrected = Vec::new();
        if upload_row(&tx, bucket, key, upload_id)?.is_none() {
            return Err(StoreError::NoSuchUpload);
        }
        let (record, mut blob) = match content {
            PartContent::Blob(blob) => {
                if let Some(name) = &blob.name {
                    tx.execute("INSERT INTO blobs(name, refs) VALUES(?1, 1)", [name])?;
                }
                let record = PartRecord {
                    part_number,
                    size: blob.size,
                    etag: hex::encode_upper(blob.md5),
                    crc64: blob.crc64,
                    mtime: now,
                    manifest: blob.manifest(),
                };
                (record, Some(blob))
            }
            PartContent::Copy { manifest, size, md5, crc64 } => {
                incref_manifest(&tx, &state.doomed, &manifest, &mut resurrected)?;
                (PartRecord { part_number, size, etag: hex::encode_upper(md5), crc64, mtime: now, manifest }, None)
            }
        };
        let mut garbage = Vec::new();
        if let Some(old) = part_row(&tx, upload_id, part_number)? {
            decref_manifest(&tx, &old.manifest, &mut garbage)?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO parts(upload_id, part_number, size, etag, crc64, mtime, manifest)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                upload_id,
                part_number,
                record.size as i64,
                record.etag,
                record.crc64 as i64,
                record.mtime,
                to_json(&record.manifest)
            ],
        )?;
        tx.commit()?;
        if let Some(b) = blob.as_mut() {
            b.committed = true;
        }
        for name in resurrected {
            state.doomed.remove(&name);
        }
        self.release(state, garbage);
        Ok(record)
    }

    /// Parts numbered above `marker`, at most `max`, and whether more follow.
    pub fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        marker: u32,
        max: usize,
    ) -> Result<(UploadRecord, Vec<PartRecord>, bool), StoreError> {
        let state = self.state();
        if rows::bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let upload = upload_row(&state.conn, bucket, key, upload_id)?.ok_or(StoreError::NoSuchUpload)?;
        let mut stmt = state.conn.prepare(
            "SELECT part_number, size, etag, crc64, mtime, manifest FROM parts
             WHERE upload_id=?1 AND part_number>?2 ORDER BY part_number LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![upload_id, marker, max as i64 + 1])?;
        let mut parts = Vec::new();
        while let Some(row) = rows.next()? {
            parts.push(part_from_row(row)?);
        }
        let truncated = parts.len() > max;
        parts.truncate(max);
        Ok((upload, parts, truncated))
    }

    /// CompleteMultipartUpload: validate the part list, assemble the object from the parts' manifests
    /// (no data is copied), drop the upload, all in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        selection: &PartSelection,
        acl: Option<&str>,
        forbid_overwrite: bool,
        now: i64,
    ) -> Result<ObjectRecord, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let b = require_bucket(&tx, bucket)?;
        let upload = upload_row(&tx, bucket, key, upload_id)?.ok_or(StoreError::NoSuchUpload)?;
        let mut all: Vec<PartRecord> = Vec::new();
        {
            let mut stmt = tx.prepare(
                "SELECT part_number, size, etag, crc64, mtime, manifest FROM parts
                 WHERE upload_id=?1 ORDER BY part_number",
            )?;
            let mut rows = stmt.query([upload_id])?;
            while let Some(row) = rows.next()? {
                all.push(part_from_row(row)?);
            }
        }
        let chosen: Vec<usize> = match selection {
            PartSelection::All => (0..all.len()).collect(),
            PartSelection::Listed(list) => {
                let mut chosen = Vec::with_capacity(list.len());
                let mut previous = 0u32;
                for (number, etag) in list {
                    if *number <= previous {
                        return Err(StoreError::InvalidPartOrder);
                    }
                    previous = *number;
                    let idx = all.binary_search_by_key(number, |p| p.part_number).ok();
                    match idx {
                        Some(i) if all[i].etag.eq_ignore_ascii_case(etag) => chosen.push(i),
                        _ => return Err(StoreError::InvalidPart { part_number: *number, etag: etag.clone() }),
                    }
                }
                chosen
            }
        };
        if chosen.is_empty() {
            return Err(StoreError::Rejected(OssError::malformed_xml()));
        }
        for &i in &chosen[..chosen.len() - 1] {
            if all[i].size < MIN_PART_SIZE {
                return Err(StoreError::EntityTooSmall { part_number: all[i].part_number, size: all[i].size });
            }
        }
        if forbid_overwrite && b.versioning == Versioning::Unversioned && current_row(&tx, &b, key)?.is_some() {
            return Err(StoreError::AlreadyExists);
        }

        let mut md5s = Md5::new();
        let mut manifest = Manifest::new();
        let mut size = 0u64;
        for &i in &chosen {
            let part = &all[i];
            let digest = hex::decode(&part.etag).map_err(|_| ServerError::Corrupt("a part ETag is not hex".into()))?;
            md5s.update(&digest);
            manifest.extend(part.manifest.iter().cloned());
            size += part.size;
        }
        let crc64 = crc64_fold(chosen.iter().map(|&i| (all[i].crc64, all[i].size)));
        let etag = format!("{}-{}", hex::encode_upper(md5s.finalize()), chosen.len());
        let mut meta = upload.meta.clone();
        if let Some(acl) = acl {
            meta.acl = acl.to_string();
        }
        let record = ObjectRecord {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size,
            etag,
            crc64: Some(crc64),
            mtime: now,
            object_type: "Multipart".into(),
            meta,
            manifest,
            version_id: None,
            seq: 0,
        };
        // The chosen parts' references move to the object unchanged; parts left out lose theirs.
        let mut garbage = Vec::new();
        let chosen_set: HashSet<usize> = chosen.iter().copied().collect();
        for (i, part) in all.iter().enumerate() {
            if !chosen_set.contains(&i) {
                decref_manifest(&tx, &part.manifest, &mut garbage)?;
            }
        }
        let record = install_current(&tx, &b, record, now, &mut garbage)?;
        tx.execute("DELETE FROM parts WHERE upload_id=?1", [upload_id])?;
        tx.execute("DELETE FROM uploads WHERE upload_id=?1", [upload_id])?;
        crash_point("complete_before_commit");
        tx.commit()?;
        crash_point("complete_after_commit");
        self.release(&mut state, garbage);
        Ok(record)
    }

    pub fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if rows::bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        upload_row(&tx, bucket, key, upload_id)?.ok_or(StoreError::NoSuchUpload)?;
        let mut garbage = Vec::new();
        drop_upload(&tx, upload_id, &mut garbage)?;
        tx.commit()?;
        self.release(&mut state, garbage);
        Ok(())
    }

    /// ListMultipartUploads: uploads ordered by (key, upload id), i.e. by key then initiation time.
    /// Without `upload_id_marker`, listing starts after every upload of `key_marker`; with it, after that
    /// upload of `key_marker`.
    pub fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        upload_id_marker: Option<&str>,
        max: usize,
    ) -> Result<UploadsPage, StoreError> {
        let state = self.state();
        if rows::bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let mut stmt = state.conn.prepare(
            "SELECT upload_id, key, initiated, meta FROM uploads WHERE bucket=?1 AND key>=?2
             ORDER BY key, upload_id",
        )?;
        let mut rows = stmt.query(params![bucket, prefix.as_bytes()])?;
        let mut page = UploadsPage::default();
        let mut last_prefix: Option<String> = None;
        while let Some(row) = rows.next()? {
            let upload_id: String = row.get(0)?;
            let key = key_text(row.get(1)?)?;
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(km) = key_marker {
                let after = match upload_id_marker {
                    Some(um) => key.as_str() > km || (key == km && upload_id.as_str() > um),
                    None => key.as_str() > km,
                };
                if !after {
                    continue;
                }
            }
            if let Some(d) = delimiter.filter(|d| !d.is_empty()) {
                if let Some(pos) = key[prefix.len()..].find(d) {
                    let cp = key[..prefix.len() + pos + d.len()].to_string();
                    if last_prefix.as_deref() == Some(cp.as_str()) || key_marker.is_some_and(|km| cp.as_str() <= km) {
                        continue;
                    }
                    if page.entries.len() >= max {
                        page.truncated = true;
                        break;
                    }
                    last_prefix = Some(cp.clone());
                    page.entries.push(UploadEntry::Prefix(cp));
                    continue;
                }
            }
            if page.entries.len() >= max {
                page.truncated = true;
                break;
            }
            let initiated: i64 = row.get(2)?;
            let meta: String = row.get(3)?;
            page.entries.push(UploadEntry::Upload(UploadRecord {
                upload_id,
                bucket: bucket.to_string(),
                key,
                initiated,
                meta: from_json(&meta, "upload meta")?,
            }));
        }
        Ok(page)
    }
}

/// Remove an upload and its parts, dropping the parts' blob references.
pub(super) fn drop_upload(conn: &Connection, upload_id: &str, garbage: &mut Vec<String>) -> Result<(), StoreError> {
    {
        let mut stmt = conn.prepare_cached("SELECT manifest FROM parts WHERE upload_id=?1")?;
        let manifests: Vec<String> = stmt.query_map([upload_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
        for m in manifests {
            decref_manifest(conn, &from_json::<Manifest>(&m, "part manifest")?, garbage)?;
        }
    }
    conn.execute("DELETE FROM parts WHERE upload_id=?1", [upload_id])?;
    conn.execute("DELETE FROM uploads WHERE upload_id=?1", [upload_id])?;
    Ok(())
}
