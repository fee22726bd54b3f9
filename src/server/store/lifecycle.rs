//! The lifecycle pass: apply every bucket's rules (see `server::lifecycle`) at a given instant. It aborts
//! incomplete uploads, expires current versions (removed in an unversioned bucket, hidden behind a delete
//! marker in a versioned one, exactly as a DeleteObject would), removes noncurrent versions, and removes
//! delete markers left with no version behind them.
//!
//! It walks each table in batches of [`BATCH`] rows, one transaction per batch, re-reading the bucket in
//! each, so requests keep being served during a long pass and a crash mid-pass leaves every batch either
//! done or not (the next pass finishes the job).

use rusqlite::{TransactionBehavior, params};
use serde::Serialize;

use super::blob::decref_manifest;
use super::multipart::drop_upload;
use super::objects::delete_current_version;
use super::rows::{
    OBJECT_COLUMNS, all_buckets, bucket_row, current_row, history_batch, key_text, newest_history, record_from_row,
    remove_history,
};
use super::{BucketRecord, Store, StoreError};
use crate::server::error::ServerError;
use crate::server::lifecycle::Configuration;
use crate::server::tags;

const BATCH: usize = 256;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LifecycleReport {
    /// The instant the rules were applied at (Unix seconds, on the lifecycle clock).
    pub now: i64,
    /// Buckets that have a lifecycle configuration.
    pub buckets: u64,
    pub aborted_uploads: u64,
    /// Current versions that expired (removed, or hidden behind a new delete marker).
    pub expired_objects: u64,
    /// Noncurrent versions (and noncurrent delete markers) removed.
    pub expired_versions: u64,
    /// Delete markers removed because no version was left behind them.
    pub removed_delete_markers: u64,
}

impl Store {
    /// Apply every bucket's lifecycle rules at `now`.
    pub fn lifecycle_pass(&self, now: i64) -> Result<LifecycleReport, StoreError> {
        let buckets = {
            let state = self.state();
            all_buckets(&state.conn)?
        };
        let mut report = LifecycleReport { now, ..LifecycleReport::default() };
        for b in buckets {
            let Some(stored) = &b.lifecycle else { continue };
            let config = Configuration::from_json(stored)
                .map_err(|e| ServerError::Corrupt(format!("lifecycle of bucket {}: {e}", b.name)))?;
            report.buckets += 1;
            self.abort_uploads(&b.name, &config, now, &mut report)?;
            self.expire_current(&b.name, &config, now, &mut report)?;
            self.expire_noncurrent(&b.name, &config, now, &mut report)?;
            self.remove_lone_delete_markers(&b.name, &config, &mut report)?;
        }
        if report.aborted_uploads + report.expired_objects + report.expired_versions + report.removed_delete_markers > 0
        {
            tracing::info!(?report, "lifecycle pass applied rules");
        }
        Ok(report)
    }

    /// Run `batch` in transactions until it reports that it saw fewer than [`BATCH`] rows; `None` from the
    /// bucket lookup (the bucket was deleted meanwhile) ends the walk.
    fn in_batches(
        &self,
        bucket: &str,
        mut batch: impl FnMut(&rusqlite::Connection, &BucketRecord, &mut Vec<String>) -> Result<usize, StoreError>,
    ) -> Result<(), StoreError> {
        loop {
            let mut state = self.state();
            let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(b) = bucket_row(&tx, bucket)? else { return Ok(()) };
            let mut garbage = Vec::new();
            let seen = batch(&tx, &b, &mut garbage)?;
            tx.commit()?;
            self.release(&mut state, garbage);
            if seen < BATCH {
                return Ok(());
            }
        }
    }

    fn abort_uploads(
        &self,
        bucket: &str,
        config: &Configuration,
        now: i64,
        report: &mut LifecycleReport,
    ) -> Result<(), StoreError> {
        if !config.rules.iter().any(|r| r.abort_multipart_upload.is_some()) {
            return Ok(());
        }
        let mut cursor: (Vec<u8>, String) = (Vec::new(), String::new());
        self.in_batches(bucket, |conn, b, garbage| {
            let mut stmt = conn.prepare_cached(
                "SELECT upload_id, key, initiated FROM uploads
                 WHERE bucket=?1 AND (key>?2 OR (key=?2 AND upload_id>?3)) ORDER BY key, upload_id LIMIT ?4",
            )?;
            let rows: Vec<(String, Vec<u8>, i64)> = stmt
                .query_map(params![b.name, cursor.0, cursor.1, BATCH as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            for (upload_id, key, initiated) in &rows {
                let key_s = key_text(key.clone())?;
                if config.rules.iter().any(|r| r.selects(&key_s, &[], None) && r.upload_expired(*initiated, now)) {
                    drop_upload(conn, upload_id, garbage)?;
                    report.aborted_uploads += 1;
                    tracing::info!(bucket = %b.name, key = %key_s, %upload_id, "lifecycle: incomplete upload aborted");
                }
            }
            if let Some((id, key, _)) = rows.last() {
                cursor = (key.clone(), id.clone());
            }
            Ok(rows.len())
        })
    }

    fn expire_current(
        &self,
        bucket: &str,
        config: &Configuration,
        now: i64,
        report: &mut LifecycleReport,
    ) -> Result<(), StoreError> {
        if !config.rules.iter().any(|r| r.expiration.is_some()) {
            return Ok(());
        }
        let mut cursor: Vec<u8> = Vec::new();
        self.in_batches(bucket, |conn, b, garbage| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket=?1 AND key>?2 ORDER BY key LIMIT ?3"
            ))?;
            let mut rows = stmt.query(params![b.name, cursor, BATCH as i64])?;
            let mut records = Vec::new();
            while let Some(row) = rows.next()? {
                records.push(record_from_row(b, row)?);
            }
            drop(rows);
            for r in &records {
                let tags = tags::decode(r.meta.tagging.as_deref());
                let expired = config
                    .rules
                    .iter()
                    .any(|rule| rule.selects(&r.key, &tags, Some(r.size)) && rule.current_expired(r.mtime, now));
                if expired {
                    delete_current_version(conn, b, &r.key, now, garbage)?;
                    report.expired_objects += 1;
                    tracing::info!(bucket = %b.name, key = %r.key, "lifecycle: object expired");
                }
            }
            if let Some(last) = records.last() {
                cursor = last.key.as_bytes().to_vec();
            }
            Ok(records.len())
        })
    }

    fn expire_noncurrent(
        &self,
        bucket: &str,
        config: &Configuration,
        now: i64,
        report: &mut LifecycleReport,
    ) -> Result<(), StoreError> {
        if !config.rules.iter().any(|r| r.noncurrent_days.is_some()) {
            return Ok(());
        }
        let mut cursor: Option<(Vec<u8>, i64)> = None;
        self.in_batches(bucket, |conn, b, garbage| {
            let entries = history_batch(conn, b, cursor.as_ref().map(|(k, s)| (k.as_slice(), *s)), BATCH)?;
            for v in &entries {
                let r = &v.record;
                // The newest history row of a key without a current version is its latest delete marker,
                // not a noncurrent version.
                if current_row(conn, b, &r.key)?.is_none()
                    && newest_history(conn, b, &r.key)?.is_some_and(|n| n.record.seq == r.seq)
                {
                    continue;
                }
                let tags = tags::decode(r.meta.tagging.as_deref());
                let size = (!v.delete_marker).then_some(r.size);
                let expired = config
                    .rules
                    .iter()
                    .any(|rule| rule.selects(&r.key, &tags, size) && rule.noncurrent_expired(v.noncurrent_since, now));
                if expired {
                    remove_history(conn, r)?;
                    decref_manifest(conn, &r.manifest, garbage)?;
                    report.expired_versions += 1;
                    tracing::info!(bucket = %b.name, key = %r.key, version_id = v.version_id(), "lifecycle: noncurrent version expired");
                }
            }
            if let Some(last) = entries.last() {
                cursor = Some((last.record.key.as_bytes().to_vec(), last.record.seq));
            }
            Ok(entries.len())
        })
    }

    fn remove_lone_delete_markers(
        &self,
        bucket: &str,
        config: &Configuration,
        report: &mut LifecycleReport,
    ) -> Result<(), StoreError> {
        if !config.rules.iter().any(|r| r.removes_expired_delete_markers()) {
            return Ok(());
        }
        let mut cursor: Option<(Vec<u8>, i64)> = None;
        self.in_batches(bucket, |conn, b, _garbage| {
            let entries = history_batch(conn, b, cursor.as_ref().map(|(k, s)| (k.as_slice(), *s)), BATCH)?;
            for v in entries.iter().filter(|v| v.delete_marker) {
                let key = &v.record.key;
                let alone = current_row(conn, b, key)?.is_none()
                    && conn.query_row(
                        "SELECT COUNT(*) FROM versions WHERE bucket=?1 AND key=?2",
                        params![b.name, key.as_bytes()],
                        |r| r.get::<_, i64>(0),
                    )? == 1;
                if alone && config.rules.iter().any(|r| r.removes_expired_delete_markers() && r.selects(key, &[], None))
                {
                    remove_history(conn, &v.record)?;
                    report.removed_delete_markers += 1;
                    tracing::info!(bucket = %b.name, %key, "lifecycle: expired delete marker removed");
                }
            }
            if let Some(last) = entries.last() {
                cursor = Some((last.record.key.as_bytes().to_vec(), last.record.seq));
            }
            Ok(entries.len())
        })
    }
}
