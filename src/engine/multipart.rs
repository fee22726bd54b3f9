//! One multipart upload session: start or resume, passes over the file, verified Complete.
//!
//! A *pass* takes a snapshot, then works through every part of the plan with `threads` parts in flight:
//! a part the server already holds (recorded, listed with the same ETag and size) is re-hashed and kept if
//! its BLAKE3 still matches; any other part is sent. Each part checks the snapshot before reading. When the
//! pass ends, the file (by descriptor and by path) must still match the snapshot; otherwise another pass
//! follows over the same upload id, which re-sends exactly the parts whose bytes changed. Complete happens
//! only after a clean pass, and its CRC-64 must equal the parts' CRCs combined.
//!
//! Shrinking files: parts past a new end are left out of Complete. Whether real OSS accepts a Complete that
//! omits uploaded parts is unconfirmed (OSS-PROTOCOL.md §9.4), so if the server refuses it the session
//! aborts that upload and starts a fresh one: correct either way, and cheap where the server allows it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::io::{self, Opened};
use super::plan::PartPlan;
use super::{
    EngineError, EngineStats, Inner, Phase, Progress, Reporter, UploadOutcome, UploadSpec, options_fingerprint,
    synced_record, with_file_meta,
};
use crate::checksum::{crc64_fold, crc64nvme_fold};
use crate::filemeta::FileMeta;
use crate::remote::{
    Body, CallbackOutcome, CompleteOptions, CompletedPart, ErrorKind, FileRange, RemoteError, list_all_parts,
    list_all_uploads, set_metadata,
};
use crate::snapshot::FileSnapshot;
use crate::state::{Checkpoint, NewUpload, PartRecord, UploadRowId};

/// Abort a checkpoint's server-side upload (best effort) and delete the checkpoint.
pub(super) async fn discard_checkpoint(inner: &Inner, checkpoint: &Checkpoint, why: &str) {
    match checkpoint {
        Checkpoint::Valid { upload, .. } => {
            abort_upload(inner, &upload.bucket, &upload.key, &upload.upload_id, why).await;
        }
        Checkpoint::Damaged { id, bucket, key, upload_id, reason } => {
            tracing::warn!(checkpoint = id.0, %reason, "checkpoint is damaged; it is not trusted");
            if let (Some(bucket), Some(key)) = (bucket, key) {
                abort_damaged_upload(inner, *id, bucket, key, upload_id.as_deref(), why).await;
            }
        }
    }
    if let Err(e) = inner.state.delete_upload(checkpoint.id()) {
        tracing::warn!(checkpoint = checkpoint.id().0, error = %e, "could not delete a discarded checkpoint");
    }
}

/// The upload id read from a damaged checkpoint may be the damage itself (and aborting a made-up id
/// "succeeds", since the goal, no such upload, holds). So abort the stored id only if the checkpoint's MACs
/// confirm it; otherwise abort the uploads of this exact key that they confirm; and only when nothing can
/// be confirmed fall back to the stored id, best effort.
async fn abort_damaged_upload(
    inner: &Inner,
    row: UploadRowId,
    bucket: &str,
    key: &str,
    stored: Option<&str>,
    why: &str,
) {
    let confirms = |upload_id: &str| inner.state.checkpoint_confirms_upload_id(row, upload_id).unwrap_or(false);
    let mut targets: Vec<String> = stored.filter(|u| confirms(u)).map(str::to_string).into_iter().collect();
    if targets.is_empty() {
        match list_all_uploads(inner.remote.as_ref(), bucket, Some(key)).await {
            Ok(listed) => {
                targets = listed
                    .into_iter()
                    .filter(|u| u.key == key && confirms(&u.upload_id))
                    .map(|u| u.upload_id)
                    .collect();
                if !targets.is_empty() {
                    tracing::warn!(checkpoint = row.0, %key, upload_ids = ?targets, "found the damaged checkpoint's server-side upload by its MACs");
                }
            }
            Err(e) => {
                tracing::warn!(%bucket, %key, error = %e, "could not list uploads to find a damaged checkpoint's upload")
            }
        }
    }
    if targets.is_empty() {
        targets.extend(stored.map(str::to_string));
    }
    for upload_id in targets {
        abort_upload(inner, bucket, key, &upload_id, why).await;
    }
}

async fn abort_upload(inner: &Inner, bucket: &str, key: &str, upload_id: &str, why: &str) {
    match inner.remote.abort_multipart(bucket, key, upload_id).await {
        Ok(()) => {
            EngineStats::add(&inner.stats.uploads_aborted, 1);
            tracing::info!(%bucket, %key, %upload_id, reason = why, "aborted server-side upload");
        }
        // Not fatal: the agent's orphan sweep (ListMultipartUploads) aborts it later.
        Err(e) => tracing::warn!(%bucket, %key, %upload_id, error = %e, "could not abort server-side upload"),
    }
}

/// A recorded part as Complete lists it, with its CRC-64/NVME (checkpoints record only CRC-64/XZ).
pub(super) fn completed_part(p: &PartRecord, crc64nvme: u64) -> CompletedPart {
    CompletedPart { part_number: p.part_number, etag: p.etag.clone(), size: p.size, crc64: p.crc64, crc64nvme }
}

fn etag_eq(a: &str, b: &str) -> bool {
    a.trim_matches('"').eq_ignore_ascii_case(b.trim_matches('"'))
}

/// How a pass ended.
enum PassEnd {
    Clean,
    Changed,
}

/// What became of a recorded upload on resume.
enum Resumed {
    Continue(Box<Session>),
    /// A run that died after its Complete had already published the file.
    AlreadyComplete(UploadOutcome),
    /// Nothing usable (checkpoint discarded): start a new upload.
    Restart,
}

/// What `drive` concluded.
enum Driven {
    Done(UploadOutcome),
    /// The file shrank to nothing: the caller should abandon this upload and use a PutObject.
    Emptied,
}

pub(super) struct Session {
    inner: Arc<Inner>,
    spec: UploadSpec,
    opened: Opened,
    upload_id: String,
    row: UploadRowId,
    part_size: u64,
    fingerprint: String,
    /// Parts the server acknowledged for this upload id and that we still trust.
    parts: BTreeMap<u32, PartRecord>,
    /// Part numbers the server holds (or held) for this upload id, trusted or not.
    on_server: BTreeSet<u32>,
    /// CRC-64/NVME of each trusted part, from the bytes sent or re-hashed in the current pass (checkpoints
    /// record only CRC-64/XZ; a part kept on resume is re-hashed anyway).
    part_nvme: BTreeMap<u32, u64>,
    resumed: bool,
    parts_sent: u64,
    parts_reused: u64,
    bytes_sent: u64,
    /// The file metadata InitiateMultipartUpload carried; `None` when not known (an upload resumed from a
    /// checkpoint of an earlier run) or not sent.
    meta_sent: Option<FileMeta>,
}

impl Session {
    pub(super) async fn run(
        inner: Arc<Inner>,
        spec: &UploadSpec,
        mut opened: Opened,
        checkpoint: Option<Checkpoint>,
        reporter: &Reporter<'_>,
        cancel: &CancellationToken,
    ) -> Result<UploadOutcome, EngineError> {
        let fingerprint = options_fingerprint(&spec.options);
        let snapshot = io::wait_not_racy(&spec.path, &mut opened, inner.config.racy_window).await?;
        let resumed = match checkpoint {
            Some(Checkpoint::Valid { upload, parts }) => {
                match Self::resume(&inner, spec, &mut opened, snapshot, &fingerprint, upload, parts).await? {
                    Resumed::Continue(session) => Some(*session),
                    Resumed::AlreadyComplete(outcome) => return Ok(outcome),
                    Resumed::Restart => None,
                }
            }
            Some(damaged @ Checkpoint::Damaged { .. }) => {
                discard_checkpoint(&inner, &damaged, "its checkpoint was damaged").await;
                None
            }
            None => None,
        };
        let mut session = match resumed {
            Some(s) => s,
            None => Self::start(inner.clone(), spec, opened, snapshot.size, fingerprint).await?,
        };
        reporter.attach(session.row, snapshot.size)?;
        match session.drive(snapshot, reporter, cancel).await {
            Ok(Driven::Done(outcome)) => Ok(outcome),
            Ok(Driven::Emptied) => {
                session.abandon("the file became empty").await;
                // Hand back to the small-file path through a fresh engine call.
                let engine = super::Engine { inner: session.inner.clone() };
                let reopened = io::open_regular(&spec.path, &session.inner.access).await?;
                engine.single_put(spec, reopened, reporter, cancel).await
            }
            Err(e) => {
                if !session.inner.config.keep_checkpoint {
                    session.abandon("checkpointing is off and the upload did not finish").await;
                    if let EngineError::Cancelled { path, .. } = e {
                        return Err(EngineError::Cancelled { path, kept: false });
                    }
                }
                Err(e)
            }
        }
    }

    /// Continue a recorded upload if it still can be: same options, part size still fits, the upload
    /// still exists. Recorded parts are trusted only as far as ListParts confirms them.
    async fn resume(
        inner: &Arc<Inner>,
        spec: &UploadSpec,
        opened: &mut Opened,
        snapshot: FileSnapshot,
        fingerprint: &str,
        upload: crate::state::UploadRecord,
        recorded: Vec<PartRecord>,
    ) -> Result<Resumed, EngineError> {
        let checkpoint = Checkpoint::Valid { upload: upload.clone(), parts: recorded.clone() };
        if upload.options_fingerprint != fingerprint {
            discard_checkpoint(inner, &checkpoint, "the object options changed since it was started").await;
            return Ok(Resumed::Restart);
        }
        if PartPlan::with_exact_part_size(snapshot.size, upload.part_size).is_none() {
            discard_checkpoint(inner, &checkpoint, "the file outgrew 10,000 parts of the recorded size").await;
            return Ok(Resumed::Restart);
        }
        let listed = match list_all_parts(inner.remote.as_ref(), &upload.bucket, &upload.key, &upload.upload_id).await {
            Ok(listed) => listed,
            Err(e) if e.is_no_such_upload() => {
                if let Some(outcome) =
                    Self::completed_by_a_dead_run(inner, spec, opened, snapshot, &upload, &recorded).await?
                {
                    return Ok(Resumed::AlreadyComplete(outcome));
                }
                tracing::info!(key = %upload.key, upload_id = %upload.upload_id, "recorded upload no longer exists on the server; starting a new one");
                inner.state.delete_upload(upload.id)?;
                return Ok(Resumed::Restart);
            }
            Err(source) => return Err(EngineError::Remote { key: spec.key.clone(), source }),
        };
        let listed: BTreeMap<u32, _> = listed.into_iter().map(|p| (p.part_number, p)).collect();
        let mut parts = BTreeMap::new();
        let mut distrusted = Vec::new();
        for rec in recorded {
            let confirmed = listed.get(&rec.part_number).is_some_and(|l| {
                etag_eq(&l.etag, &rec.etag) && l.size == rec.size && l.crc64.is_none_or(|c| c == rec.crc64)
            });
            if confirmed {
                parts.insert(rec.part_number, rec);
            } else {
                distrusted.push(rec.part_number);
            }
        }
        if !distrusted.is_empty() {
            tracing::info!(key = %upload.key, parts = ?distrusted, "recorded parts the server does not confirm will be sent again");
            inner.state.remove_parts(upload.id, &distrusted)?;
        }
        tracing::info!(path = %spec.path.display(), key = %upload.key, upload_id = %upload.upload_id, trusted_parts = parts.len(), "resuming upload");
        Ok(Resumed::Continue(Box::new(Session {
            inner: inner.clone(),
            spec: spec.clone(),
            opened: opened.clone(),
            upload_id: upload.upload_id,
            row: upload.id,
            part_size: upload.part_size,
            fingerprint: fingerprint.to_string(),
            parts,
            on_server: listed.keys().copied().collect(),
            part_nvme: BTreeMap::new(),
            resumed: true,
            parts_sent: 0,
            parts_reused: 0,
            bytes_sent: 0,
            meta_sent: None,
        })))
    }

    /// The recorded upload is gone from the server. If every part was recorded, a run may have sent the
    /// Complete and died before it read the answer (and deleted the checkpoint): then the object already
    /// holds this file, and sending it again would waste a whole upload. That is trusted only as a normal
    /// Complete is: the object's size and CRC-64 (whichever the server confirms) equal the recorded parts
    /// combined, and the file, unchanged since `snapshot`, still hashes to every recorded part.
    async fn completed_by_a_dead_run(
        inner: &Arc<Inner>,
        spec: &UploadSpec,
        opened: &mut Opened,
        snapshot: FileSnapshot,
        upload: &crate::state::UploadRecord,
        recorded: &[PartRecord],
    ) -> Result<Option<UploadOutcome>, EngineError> {
        let Some(plan) = PartPlan::with_exact_part_size(snapshot.size, upload.part_size) else { return Ok(None) };
        let by_number: BTreeMap<u32, &PartRecord> = recorded.iter().map(|p| (p.part_number, p)).collect();
        let Some(parts) = (1..=plan.count)
            .map(|n| by_number.get(&n).copied().filter(|p| p.size == plan.range(n).1))
            .collect::<Option<Vec<&PartRecord>>>()
        else {
            return Ok(None);
        };
        let remote_err = |source| EngineError::Remote { key: spec.key.clone(), source };
        let info = inner.remote.head_object(&spec.bucket, &spec.key).await.map_err(remote_err)?;
        let crc = crc64_fold(parts.iter().map(|p| (p.crc64, p.size)));
        let caps = inner.remote.capabilities();
        let Some(info) = info.filter(|i| i.size == plan.size && (!caps.object_crc64 || i.crc64 == Some(crc))) else {
            return Ok(None);
        };
        let mut nvme = Vec::with_capacity(parts.len());
        for p in &parts {
            EngineStats::add(&inner.stats.bytes_hashed, p.size);
            match io::hash_range(&spec.path, &opened.file, plan.range(p.part_number).0, p.size).await? {
                Some(h) if h.blake3 == p.blake3 && h.crc64 == p.crc64 => nvme.push((h.crc64nvme, p.size)),
                _ => return Ok(None),
            }
        }
        let verified = caps.object_crc64 || (caps.object_crc64nvme && info.crc64nvme == Some(crc64nvme_fold(nvme)));
        if !verified || !io::unchanged_since(&spec.path, opened, snapshot).await? {
            return Ok(None);
        }
        EngineStats::add(&inner.stats.parts_reused, u64::from(plan.count));
        let object_meta = inner.config.file_metadata.then(|| FileMeta::from_pairs(&info.metadata)).flatten();
        let outcome = UploadOutcome {
            object_meta,
            size: plan.size,
            crc64: crc,
            etag: info.etag,
            snapshot,
            part_size: plan.part_size,
            part_blake3: parts.iter().map(|p| p.blake3).collect(),
            resumed: true,
            parts_sent: 0,
            parts_reused: u64::from(plan.count),
            bytes_sent: 0,
            passes: 1,
            // Completed by an earlier run: whatever its callback answered is not known here.
            callback: spec.options.callback.as_ref().map(|_| CallbackOutcome::Unknown),
        };
        inner.state.complete(Some(upload.id), &synced_record(spec, &outcome))?;
        tracing::info!(path = %spec.path.display(), key = %spec.key, upload_id = %upload.upload_id, size = outcome.size,
            crc64 = outcome.crc64, "the recorded upload had already been completed with these bytes; nothing to send");
        Ok(Some(outcome))
    }

    /// Initiate a new upload and write its checkpoint before any part is sent.
    async fn start(
        inner: Arc<Inner>,
        spec: &UploadSpec,
        opened: Opened,
        size: u64,
        fingerprint: String,
    ) -> Result<Session, EngineError> {
        let plan = PartPlan::new(size, inner.config.part_size)?;
        // The file may still change before Complete (another pass): `finish_metadata` puts it right then.
        let meta_sent = if inner.config.file_metadata {
            io::file_meta(&spec.path, &opened.file, opened.snapshot).await?
        } else {
            None
        };
        let upload_id = inner
            .remote
            .initiate_multipart(&spec.bucket, &spec.key, &with_file_meta(&spec.options, meta_sent))
            .await
            .map_err(|source| EngineError::Remote { key: spec.key.clone(), source })?;
        EngineStats::add(&inner.stats.uploads_initiated, 1);
        let new = NewUpload {
            local_path: &spec.path,
            bucket: &spec.bucket,
            key: &spec.key,
            upload_id: &upload_id,
            part_size: plan.part_size,
            snapshot: opened.snapshot,
            options_fingerprint: &fingerprint,
        };
        let row = match inner.state.begin_upload(&new) {
            Ok(row) => row,
            Err(e) => {
                // Without a checkpoint nobody would ever resume or abort it.
                abort_upload(&inner, &spec.bucket, &spec.key, &upload_id, "its checkpoint could not be written").await;
                return Err(e.into());
            }
        };
        tracing::info!(path = %spec.path.display(), key = %spec.key, %upload_id, part_size = plan.part_size, parts = plan.count, "started multipart upload");
        Ok(Session {
            inner,
            spec: spec.clone(),
            opened,
            upload_id,
            row,
            part_size: plan.part_size,
            fingerprint,
            parts: BTreeMap::new(),
            on_server: BTreeSet::new(),
            part_nvme: BTreeMap::new(),
            resumed: false,
            parts_sent: 0,
            parts_reused: 0,
            bytes_sent: 0,
            meta_sent,
        })
    }

    /// Abort this upload on the server and forget its checkpoint.
    async fn abandon(&mut self, why: &str) {
        abort_upload(&self.inner, &self.spec.bucket, &self.spec.key, &self.upload_id, why).await;
        if let Err(e) = self.inner.state.delete_upload(self.row) {
            tracing::warn!(checkpoint = self.row.0, error = %e, "could not delete checkpoint");
        }
    }

    /// Replace this upload with a fresh one (part size re-planned for `size`).
    async fn restart(&mut self, size: u64, why: &str) -> Result<(), EngineError> {
        tracing::info!(key = %self.spec.key, upload_id = %self.upload_id, reason = why, "restarting with a new upload");
        self.abandon(why).await;
        let opened = self.opened.clone();
        let fresh = Self::start(self.inner.clone(), &self.spec, opened, size, self.fingerprint.clone()).await?;
        let (sent, reused, bytes) = (self.parts_sent, self.parts_reused, self.bytes_sent);
        *self = Session { parts_sent: sent, parts_reused: reused, bytes_sent: bytes, ..fresh };
        Ok(())
    }

    async fn drive(
        &mut self,
        first_snapshot: FileSnapshot,
        reporter: &Reporter<'_>,
        cancel: &CancellationToken,
    ) -> Result<Driven, EngineError> {
        let max_passes = self.inner.config.max_passes;
        let mut snapshot = first_snapshot;
        let mut pass = 0u32;
        loop {
            pass += 1;
            if pass > max_passes {
                return Err(EngineError::KeepsChanging { path: self.spec.path.clone(), passes: max_passes });
            }
            if pass > 1 {
                EngineStats::add(&self.inner.stats.change_passes, 1);
                snapshot = io::wait_not_racy(&self.spec.path, &mut self.opened, self.inner.config.racy_window).await?;
                self.inner.state.update_snapshot(self.row, snapshot)?;
            }
            if snapshot.size == 0 {
                return Ok(Driven::Emptied);
            }
            let plan = match PartPlan::with_exact_part_size(snapshot.size, self.part_size) {
                Some(plan) => plan,
                None => {
                    self.restart(snapshot.size, "the file outgrew 10,000 parts").await?;
                    PartPlan::with_exact_part_size(snapshot.size, self.part_size)
                        .ok_or(EngineError::TooLarge { size: snapshot.size })?
                }
            };
            self.forget_parts_past(plan.count)?;
            match self.pass(plan, snapshot, pass, reporter, cancel).await? {
                PassEnd::Changed => continue,
                PassEnd::Clean => {}
            }
            if !io::unchanged_since(&self.spec.path, &mut self.opened, snapshot).await? {
                tracing::info!(path = %self.spec.path.display(), key = %self.spec.key, pass, "file changed during the pass; re-checking every part");
                continue;
            }
            reporter.report(Progress {
                phase: Phase::Completing,
                total_bytes: plan.size,
                done_bytes: plan.size,
                parts_total: plan.count,
                parts_done: plan.count,
                pass,
            })?;
            match self.complete(plan, snapshot, pass).await? {
                Some(outcome) => return Ok(Driven::Done(outcome)),
                None => continue,
            }
        }
    }

    /// Drop trusted parts numbered past `count` (the file shrank): they stay on the server but are left
    /// out of Complete.
    fn forget_parts_past(&mut self, count: u32) -> Result<(), EngineError> {
        let beyond: Vec<u32> = self.parts.range(count + 1..).map(|(n, _)| *n).collect();
        if !beyond.is_empty() {
            for n in &beyond {
                self.parts.remove(n);
            }
            self.inner.state.remove_parts(self.row, &beyond)?;
        }
        Ok(())
    }

    async fn pass(
        &mut self,
        plan: PartPlan,
        snapshot: FileSnapshot,
        pass: u32,
        reporter: &Reporter<'_>,
        cancel: &CancellationToken,
    ) -> Result<PassEnd, EngineError> {
        let ctx = Arc::new(PassCtx {
            inner: self.inner.clone(),
            spec: self.spec.clone(),
            file: self.opened.file.clone(),
            upload_id: self.upload_id.clone(),
            row: self.row,
            snapshot,
            changed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut progress = Progress {
            phase: Phase::Uploading,
            total_bytes: plan.size,
            done_bytes: 0,
            parts_total: plan.count,
            parts_done: 0,
            pass,
        };
        reporter.report(progress)?;

        let mut pending = (1..=plan.count).rev().collect::<Vec<u32>>();
        let mut running = JoinSet::new();
        let mut first_error: Option<EngineError> = None;
        let threads = self.inner.config.threads;
        loop {
            while running.len() < threads && first_error.is_none() && !ctx.stopped() && !cancel.is_cancelled() {
                let Some(number) = pending.pop() else { break };
                let (offset, len) = plan.range(number);
                let known = self.parts.get(&number).filter(|p| p.size == len).cloned();
                let resend = self.on_server.contains(&number);
                running.spawn(ctx.clone().run_part(number, offset, len, known, resend));
            }
            let Some(joined) = running.join_next().await else { break };
            let result = joined.unwrap_or_else(|e| {
                Err(EngineError::Open {
                    path: self.spec.path.clone(),
                    source: std::io::Error::other(format!("part task failed: {e}")),
                })
            });
            match result {
                Ok(PartOutcome::Kept(rec, nvme)) => {
                    self.part_nvme.insert(rec.part_number, nvme);
                    self.parts_reused += 1;
                    EngineStats::add(&self.inner.stats.parts_reused, 1);
                    progress.done_bytes += rec.size;
                    progress.parts_done += 1;
                }
                Ok(PartOutcome::Sent(rec, nvme)) => {
                    self.part_nvme.insert(rec.part_number, nvme);
                    self.parts_sent += 1;
                    self.bytes_sent += rec.size;
                    self.on_server.insert(rec.part_number);
                    progress.done_bytes += rec.size;
                    progress.parts_done += 1;
                    self.parts.insert(rec.part_number, rec);
                }
                Ok(PartOutcome::Skipped) => {}
                Err(e) => {
                    ctx.stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
            if let Err(e) = reporter.report(progress) {
                ctx.stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if cancel.is_cancelled() && (!pending.is_empty() || ctx.changed.load(Ordering::Relaxed)) {
            return Err(EngineError::Cancelled { path: self.spec.path.clone(), kept: true });
        }
        if ctx.changed.load(Ordering::Relaxed) {
            return Ok(PassEnd::Changed);
        }
        Ok(PassEnd::Clean)
    }

    /// Complete after a clean pass. `Ok(None)` means "go round again" (a fresh upload was started).
    async fn complete(
        &mut self,
        plan: PartPlan,
        snapshot: FileSnapshot,
        pass: u32,
    ) -> Result<Option<UploadOutcome>, EngineError> {
        let parts = complete_set(&plan, &self.parts)
            .map_err(|detail| EngineError::IncompletePlan { key: self.spec.key.clone(), detail })?;
        let expected_crc = crc64_fold(parts.iter().map(|p| (p.crc64, p.size)));
        let nvme = |n: u32| self.part_nvme.get(&n).copied().unwrap_or_default();
        let expected_nvme = crc64nvme_fold(parts.iter().map(|p| (nvme(p.part_number), p.size)));
        let list: Vec<CompletedPart> = parts.iter().map(|p| completed_part(p, nvme(p.part_number))).collect();
        let options = CompleteOptions {
            acl: self.spec.options.acl.clone(),
            forbid_overwrite: self.spec.options.forbid_overwrite,
            callback: self.spec.options.callback.clone(),
        };
        let leaves_parts_out = self.on_server.range(plan.count + 1..).next().is_some();
        let remote = self.inner.remote.clone();
        let (bucket, key) = (self.spec.bucket.clone(), self.spec.key.clone());
        let remote_err = |source| EngineError::Remote { key: key.clone(), source };

        let completed = remote.complete_multipart(&bucket, &key, &self.upload_id, &list, &options).await;
        let asked_callback = options.callback.is_some();
        let (etag, server_crc, server_nvme, callback) = match completed {
            Ok(done) => (done.etag, done.crc64, done.crc64nvme, done.callback),
            Err(e) if e.is_no_such_upload() => {
                // A Complete whose answer was lost may have succeeded: the object tells.
                match remote.head_object(&bucket, &key).await.map_err(remote_err)? {
                    Some(info)
                        if info.size == plan.size
                            && (info.crc64 == Some(expected_crc) || info.crc64nvme == Some(expected_nvme)) =>
                    {
                        tracing::info!(%key, upload_id = %self.upload_id, "upload had already been completed");
                        (info.etag, info.crc64, info.crc64nvme, asked_callback.then_some(CallbackOutcome::Unknown))
                    }
                    _ => {
                        tracing::warn!(%key, upload_id = %self.upload_id, "upload vanished before Complete; starting a new one");
                        self.inner.state.delete_upload(self.row)?;
                        let opened = self.opened.clone();
                        let fresh =
                            Self::start(self.inner.clone(), &self.spec, opened, plan.size, self.fingerprint.clone())
                                .await?;
                        let (s, r, b) = (self.parts_sent, self.parts_reused, self.bytes_sent);
                        *self = Session { parts_sent: s, parts_reused: r, bytes_sent: b, ..fresh };
                        return Ok(None);
                    }
                }
            }
            Err(e) if leaves_parts_out && e.kind() == ErrorKind::Rejected => {
                tracing::warn!(%key, error = %e, "the server refused a Complete that leaves out parts past the new end of the file");
                self.restart(plan.size, "the server requires every uploaded part in Complete").await?;
                return Ok(None);
            }
            Err(e) => return Err(remote_err(e)),
        };

        // The object's checksum, in whichever CRC this server confirms, must equal the parts combined.
        let caps = self.inner.remote.capabilities();
        let mismatch = if caps.object_crc64 {
            let server = match server_crc {
                Some(crc) => Some(crc),
                None => remote.head_object(&bucket, &key).await.map_err(remote_err)?.and_then(|i| i.crc64),
            };
            (server != Some(expected_crc)).then_some((expected_crc, server))
        } else if caps.object_crc64nvme {
            let server = match server_nvme {
                Some(crc) => Some(crc),
                None => remote.head_object(&bucket, &key).await.map_err(remote_err)?.and_then(|i| i.crc64nvme),
            };
            (server != Some(expected_nvme)).then_some((expected_nvme, server))
        } else {
            // A remote with neither verified the completed object itself before answering Ok.
            None
        };
        if let Some((local, server)) = mismatch {
            // The upload id is consumed either way; the object is wrong and must not be called synced.
            self.inner.state.delete_upload(self.row)?;
            self.inner.state.forget_synced(&bucket, &key)?;
            return Err(EngineError::Integrity { key, local, server });
        }
        EngineStats::add(&self.inner.stats.uploads_completed, 1);
        let (object_meta, etag) = self.finish_metadata(snapshot, etag, plan.size).await?;
        let outcome = UploadOutcome {
            size: plan.size,
            crc64: expected_crc,
            etag,
            snapshot,
            part_size: plan.part_size,
            part_blake3: parts.iter().map(|p| p.blake3).collect(),
            resumed: self.resumed,
            parts_sent: self.parts_sent,
            parts_reused: self.parts_reused,
            bytes_sent: self.bytes_sent,
            passes: pass,
            callback,
            object_meta,
        };
        self.inner.state.complete(Some(self.row), &synced_record(&self.spec, &outcome))?;
        tracing::info!(path = %self.spec.path.display(), key = %self.spec.key, upload_id = %self.upload_id, size = outcome.size,
            crc64 = outcome.crc64, parts_sent = outcome.parts_sent, parts_reused = outcome.parts_reused, passes = pass, "uploaded and verified");
        Ok(Some(outcome))
    }
}

impl Session {
    /// The completed object must carry the metadata of the snapshot it was verified under, which differs
    /// from what Initiate sent when the file changed between passes (or is unknown after a resume: HEAD
    /// tells). Then it is set server-side ([`set_metadata`]). Returns what the object carries (`None`: not
    /// known) and its ETag. A failure here is only logged: the bytes are verified and the object is valid.
    async fn finish_metadata(
        &self,
        snapshot: FileSnapshot,
        etag: String,
        size: u64,
    ) -> Result<(Option<FileMeta>, String), EngineError> {
        if !self.inner.config.file_metadata {
            return Ok((None, etag));
        }
        let Some(wanted) = io::file_meta(&self.spec.path, &self.opened.file, snapshot).await? else {
            return Ok((self.meta_sent, etag));
        };
        let (remote, bucket, key) = (&self.inner.remote, &self.spec.bucket, &self.spec.key);
        let carried = match self.meta_sent {
            Some(m) => Some(m),
            None => match remote.head_object(bucket, key).await {
                Ok(info) => info.and_then(|i| FileMeta::from_pairs(&i.metadata)),
                Err(_) => None,
            },
        };
        if carried == Some(wanted) {
            return Ok((carried, etag));
        }
        let options = with_file_meta(&self.spec.options, Some(wanted));
        match set_metadata(&**remote, bucket, key, size, &etag, &options).await {
            Ok(copy) => {
                tracing::info!(%key, "the file's metadata changed during the upload: set on the object server-side");
                Ok((Some(wanted), copy.etag))
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not set the file's metadata on the uploaded object");
                Ok((carried, etag))
            }
        }
    }
}

/// The parts Complete lists: exactly one trusted part per planned number, each of its planned size, adding up
/// to the file's size. Anything else is refused rather than completed: an object assembled from a part
/// set with a hole (or a part of the wrong size) would hold other bytes than the file, and its expected
/// CRC-64, folded from the same set, would agree with it.
fn complete_set(plan: &PartPlan, trusted: &BTreeMap<u32, PartRecord>) -> Result<Vec<PartRecord>, String> {
    let mut parts = Vec::with_capacity(plan.count as usize);
    let mut total = 0u64;
    for n in 1..=plan.count {
        let (_, len) = plan.range(n);
        match trusted.get(&n) {
            None => return Err(format!("part {n} of {} is not among the parts the server confirmed", plan.count)),
            Some(p) if p.size != len => {
                return Err(format!("part {n} holds {} bytes where the plan has {len}", p.size));
            }
            Some(p) => {
                total += p.size;
                parts.push(p.clone());
            }
        }
    }
    if total != plan.size {
        return Err(format!("the parts add up to {total} bytes, the file has {}", plan.size));
    }
    Ok(parts)
}

/// Shared by the part tasks of one pass.
struct PassCtx {
    inner: Arc<Inner>,
    spec: UploadSpec,
    file: Arc<std::fs::File>,
    upload_id: String,
    row: UploadRowId,
    snapshot: FileSnapshot,
    /// Set when any part saw the file differ from the pass snapshot.
    changed: AtomicBool,
    /// Set on the first hard error: start no more parts.
    stop: AtomicBool,
}

/// A finished part, with its CRC-64/NVME.
enum PartOutcome {
    /// The server already holds these exact bytes.
    Kept(PartRecord, u64),
    Sent(PartRecord, u64),
    /// Not attempted (the pass is already known to be dirty or stopping).
    Skipped,
}

impl PassCtx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.changed.load(Ordering::Relaxed)
    }

    fn mark_changed(&self, number: u32) -> PartOutcome {
        if !self.changed.swap(true, Ordering::Relaxed) {
            tracing::info!(path = %self.spec.path.display(), part = number, "file changed while uploading");
        }
        PartOutcome::Skipped
    }

    async fn run_part(
        self: Arc<Self>,
        number: u32,
        offset: u64,
        len: u64,
        known: Option<PartRecord>,
        resend: bool,
    ) -> Result<PartOutcome, EngineError> {
        if self.stopped() {
            return Ok(PartOutcome::Skipped);
        }
        let _global = match &self.inner.config.global_parts_in_flight {
            Some(sem) => Some(sem.clone().acquire_owned().await.ok()),
            None => None,
        };
        if io::fstat(&self.spec.path, &self.file).await? != self.snapshot {
            return Ok(self.mark_changed(number));
        }
        if let Some(rec) = known {
            EngineStats::add(&self.inner.stats.bytes_hashed, len);
            match io::hash_range(&self.spec.path, &self.file, offset, len).await? {
                None => return Ok(self.mark_changed(number)),
                // Same bytes (BLAKE3), and the recorded CRC agrees with them: a record that disagrees with
                // itself is not trusted, the part is simply sent again.
                Some(h) if h.blake3 == rec.blake3 && h.crc64 == rec.crc64 => {
                    return Ok(PartOutcome::Kept(rec, h.crc64nvme));
                }
                Some(_) => {}
            }
        }
        let body = Body::File(FileRange { file: self.file.clone(), offset, len });
        let sent =
            self.inner.remote.upload_part(&self.spec.bucket, &self.spec.key, &self.upload_id, number, body).await;
        let part = match sent {
            Ok(part) => part,
            Err(RemoteError::LocalRead { .. }) => return Ok(self.mark_changed(number)),
            Err(source) => return Err(EngineError::Remote { key: self.spec.key.clone(), source }),
        };
        if part.digest.len != len {
            return Ok(self.mark_changed(number));
        }
        let stats = &self.inner.stats;
        EngineStats::add(&stats.parts_sent, 1);
        EngineStats::add(&stats.bytes_sent, len);
        if resend {
            EngineStats::add(&stats.parts_resent, 1);
        }
        let rec = PartRecord {
            part_number: number,
            size: len,
            etag: part.etag,
            crc64: part.digest.crc64,
            blake3: part.digest.blake3,
        };
        self.inner.state.record_part(self.row, &rec)?;
        tracing::debug!(key = %self.spec.key, upload_id = %self.upload_id, part = number, size = len, "part uploaded");
        Ok(PartOutcome::Sent(rec, part.digest.crc64nvme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig, io::Access};
    use crate::remote::memory::MemoryRemote;
    use crate::remote::{ObjectOptions, Remote};
    use crate::state::StateDb;

    /// Complete must never list a part set with a hole: the expected CRC-64 is folded from the same set, so
    /// nothing downstream would notice. (This was a `debug_assert!`, i.e. no check at all in a release build.)
    #[tokio::test]
    async fn complete_refuses_a_part_set_with_a_hole_or_a_wrong_size() {
        const PART: u64 = 100 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(3 * PART - 7)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let remote = Arc::new(MemoryRemote::new());
        remote.create_bucket("b").await.unwrap();
        let config = EngineConfig { part_size: PART, multipart_threshold: PART, ..EngineConfig::default() };
        let engine = Engine::new(remote.clone(), StateDb::open_in_memory().unwrap(), config).unwrap();
        let spec =
            UploadSpec { path: path.clone(), bucket: "b".into(), key: "obj".into(), options: ObjectOptions::default() };
        let opened = io::open_regular(&path, &Access::Follow).await.unwrap();
        let snapshot = opened.snapshot;
        let fingerprint = options_fingerprint(&spec.options);
        let mut session =
            Session::start(engine.inner.clone(), &spec, opened, snapshot.size, fingerprint).await.unwrap();
        let plan = PartPlan::with_exact_part_size(snapshot.size, PART).unwrap();
        assert_eq!(plan.count, 3);
        let file = session.opened.file.clone();
        let mut send = async |n: u32, len: u64| {
            let (offset, _) = plan.range(n);
            let body = Body::File(FileRange { file: file.clone(), offset, len });
            let sent = remote.upload_part("b", "obj", &session.upload_id, n, body).await.unwrap();
            let rec = PartRecord {
                part_number: n,
                size: len,
                etag: sent.etag,
                crc64: sent.digest.crc64,
                blake3: sent.digest.blake3,
            };
            session.parts.insert(n, rec);
        };
        send(1, plan.range(1).1).await;
        send(3, plan.range(3).1).await;

        let err = session.complete(plan, snapshot, 1).await.unwrap_err();
        assert!(matches!(err, EngineError::IncompletePlan { .. }), "{err}");
        assert!(err.to_string().contains("part 2 of 3"), "{err}");
        // A part of the wrong size is refused too.
        let mut short = session.parts.get(&1).cloned().unwrap();
        short.size -= 1;
        let mut parts = session.parts.clone();
        parts.insert(1, short);
        parts.insert(2, parts[&3].clone());
        assert!(complete_set(&plan, &parts).unwrap_err().contains("part 1 holds"));
        assert!(remote.object("b", "obj").is_none(), "nothing was published");
    }
}
