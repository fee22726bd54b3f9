//! What one job does. A sync job brings one object in line with one local file by the cheapest means that
//! can be *verified*, in this order:
//!
//! 1. **Up to date**: the index records this exact snapshot.
//! 2. **Revalidate**: same size, other timestamps (touch, chmod, a restore that kept content): the file's
//!    per-part BLAKE3 equals the recorded ones, so the bytes are not sent again. When the file metadata the
//!    object carries (mtime, mode, uid/gid as root: [`crate::filemeta`]) no longer matches, it is set
//!    server-side (CopyObject onto itself, REPLACE, only while the object keeps its recorded ETag); else
//!    only the index row changes. A row from before the index recorded object metadata ("not known") is
//!    left as it is while the file is unchanged, and gets its metadata at the first such change.
//! 3. **Copy**: the index knows an object with this file's inode, size and mtime under another key (a
//!    rename, a moved directory, a hard link): the local CRC-64 must equal that object's, then a
//!    server-side copy (REPLACE: with this file's metadata and the content type of its new name) whose
//!    CRC-64 is checked again.
//! 4. **Adopt** (a fresh index over a bucket that may already hold the files): the remote object has this
//!    size and the local CRC-64 equals its CRC-64.
//! 5. **Upload** through the engine.
//!
//! A remove job forgets the index rows of a path that is gone (and everything under it), and with
//! `--delete` deletes the objects — after checking, file by file, that no regular file is at the local path
//! any more (absent, or replaced by a directory, a FIFO, a symlink) and the watched root is still the one we
//! started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::local::{LocalHashes, hash_file, open_in_tree};
use super::metrics::{self, Metrics};
use super::remote_check::{FindingKind, RemoteFinding, etag_eq};
use crate::engine::{Engine, EngineError, PartPlan, UploadSpec, with_file_meta};
use crate::filemeta::FileMeta;
use crate::remote::{
    CopyOptions, ErrorKind, MAX_COPY_OBJECT, ObjectOptions, Remote, RemoteError, copy_in_parts, set_metadata,
};
use crate::snapshot::FileSnapshot;
use crate::state::{Checkpoint, StateDb, StateError, SyncedEntry, SyncedFile};
use crate::watch::{escape_path, object_key, rel_path_of_key};

/// Everything a job needs; shared by all jobs.
pub struct Ctx {
    pub root: PathBuf,
    /// (dev, inode) of the watched root when the agent started: deletions require it unchanged.
    pub root_id: (u64, u64),
    pub bucket: String,
    pub prefix: String,
    pub delete: bool,
    /// Apply deletions even when most tracked files vanish at once (see `reconcile`).
    pub allow_mass_delete: bool,
    pub follow_symlinks: bool,
    pub remote: Arc<dyn Remote>,
    pub state: StateDb,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown: uploads finish their parts in flight and stop.
    pub graceful: CancellationToken,
    /// Look for existing objects before uploading files the index does not know (fresh index).
    pub adopt: AtomicBool,
    /// Set by a job that found the remote not holding an object the index promised (a copy source gone):
    /// the agent then checks the whole prefix.
    pub remote_surprise: AtomicBool,
    pub part_size: u64,
    pub multipart_threshold: u64,
    /// Encryption, tags and upload callback of every object written (`--sse`, `--tag`, `--callback-url`).
    pub object: ObjectOptions,
}

/// The object is synced whatever its upload callback did; the callback's fate is logged.
fn log_callback(key: &str, callback: Option<&crate::remote::CallbackOutcome>) {
    use crate::remote::CallbackOutcome;
    match callback {
        None => {}
        Some(CallbackOutcome::Answered(answer)) => {
            let answer: String = answer.chars().take(512).collect();
            tracing::info!(%key, %answer, "upload callback answered");
        }
        Some(CallbackOutcome::Failed { message, request_id }) => {
            tracing::warn!(%key, %message, request_id = request_id.as_deref().unwrap_or("-"),
                "upload callback failed (CallbackFailed); the object is stored and counts as synced");
        }
        Some(CallbackOutcome::Unknown) => {
            tracing::info!(%key, "upload callback: answer unknown (the upload was completed by an earlier attempt)")
        }
    }
}

/// How a job ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    UpToDate,
    Uploaded,
    Revalidated,
    /// Same bytes, other file metadata: set on the object server-side, nothing uploaded.
    MetadataUpdated,
    Copied,
    Adopted,
    /// The file is gone (a `Removed` event follows from the watcher or the next scan).
    Vanished,
    /// Not a regular file any more (became a FIFO, a directory, …).
    NotAFile,
    Removed {
        forgotten: usize,
        deleted: usize,
    },
    /// Deletions were not applied (the root changed); retried later.
    Held,
}

/// Why a job failed; every failure is retried after a backoff (never dropped).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    /// The remote refused our credentials or the bucket: worth saying loudly, all files are affected.
    pub remote_kind: Option<ErrorKind>,
    /// The service's error code (`NoSuchBucket`, ...), when the remote answered with one.
    pub remote_code: Option<String>,
}

impl JobError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        JobError { message: message.into(), remote_kind: None, remote_code: None }
    }
}

impl From<StateError> for JobError {
    fn from(e: StateError) -> Self {
        JobError::new(e.to_string())
    }
}

impl From<RemoteError> for JobError {
    fn from(e: RemoteError) -> Self {
        JobError { remote_kind: Some(e.kind()), remote_code: e.code().map(str::to_string), message: e.to_string() }
    }
}

impl From<EngineError> for JobError {
    fn from(e: EngineError) -> Self {
        let remote_kind = e.remote().map(RemoteError::kind);
        let remote_code = e.remote().and_then(RemoteError::code).map(str::to_string);
        JobError { message: e.to_string(), remote_kind, remote_code }
    }
}

/// `lstat` of `rel` as the tree sees it: resolved beneath the root with no symbolic link in any component
/// (a directory replaced by a link puts everything below it outside the tree), or, with `--follow-symlinks`,
/// a plain `stat` that follows links.
pub(crate) fn tree_stat(root: &Path, rel: &Path, follow_symlinks: bool) -> std::io::Result<std::fs::Metadata> {
    if follow_symlinks {
        std::fs::metadata(if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(rel) })
    } else {
        crate::beneath::symlink_metadata(root, rel)
    }
}

/// Nothing of the tree is at the path: absent, below something that is not a directory (ENOTDIR), or below
/// a directory that became a symbolic link (ELOOP, when links are not followed). A path that cannot be read
/// proves nothing and is not gone.
pub(crate) fn is_gone(e: &std::io::Error) -> bool {
    crate::beneath::is_gone(e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| JobError::new(format!("blocking task failed: {e}")))
}

impl Ctx {
    pub fn path_of(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() { self.root.clone() } else { self.root.join(rel) }
    }

    fn object_options(&self, path: &Path) -> ObjectOptions {
        ObjectOptions {
            content_type: mime_guess::from_path(path).first_raw().map(str::to_string),
            ..self.object.clone()
        }
    }

    /// What a REPLACE copy for `rel` sends: the content type of its name and the file metadata.
    fn meta_options(&self, rel: &Path, meta: FileMeta) -> ObjectOptions {
        with_file_meta(&self.object_options(&self.path_of(rel)), Some(meta))
    }

    /// The part size the engine records for a file of `size` bytes (so local hashes line up with it).
    fn part_size_for(&self, size: u64) -> u64 {
        if size <= self.multipart_threshold {
            size.max(1)
        } else {
            PartPlan::new(size, self.part_size).map(|p| p.part_size).unwrap_or(self.part_size)
        }
    }

    /// Nothing uploadable is at `rel` any more: absent, or no longer a regular file (a directory, a FIFO, a
    /// symbolic link when links are not followed), so its object is stale. A path that cannot be read is not
    /// proof of anything and counts as present.
    pub fn file_is_gone(&self, rel: &Path) -> bool {
        match tree_stat(&self.root, rel, self.follow_symlinks) {
            Ok(m) => !m.is_file(),
            Err(e) => is_gone(&e),
        }
    }

    /// What is at `rel` as the tree sees it; `None` when nothing of the tree is there any more (see
    /// [`tree_stat`]).
    async fn stat(&self, rel: &Path) -> Result<Option<std::fs::Metadata>, JobError> {
        let (root, owned, follow) = (self.root.clone(), rel.to_path_buf(), self.follow_symlinks);
        blocking(move || tree_stat(&root, &owned, follow))
            .await?
            .map(Some)
            .or_else(|e| if is_gone(&e) { Ok(None) } else { Err(JobError::new(format!("{}: {e}", escape_path(rel)))) })
    }

    /// Hash the file if it still has the snapshot `expected`. The hashes are recorded against that snapshot
    /// (revalidate, copy, adopt), so first let its racy window pass: a write landing in the same timestamp
    /// tick after our read would otherwise leave the snapshot unchanged and the record wrong forever.
    async fn hash(&self, rel: &Path, part_size: u64, expected: FileSnapshot) -> Result<Option<LocalHashes>, JobError> {
        let racy = expected.racy_wait(SystemTime::now());
        if !racy.is_zero() {
            tokio::time::sleep(racy).await;
        }
        let (root, owned, follow) = (self.root.clone(), rel.to_path_buf(), self.follow_symlinks);
        let escaped = escape_path(rel);
        let hashed = blocking(move || match open_in_tree(&root, &owned, follow) {
            Ok(file) => hash_file(&file, part_size, &expected),
            // Gone, or moved out of the tree: not the file we were told about.
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(e),
        });
        hashed.await?.map_err(|e| JobError::new(format!("reading {escaped}: {e}")))
    }

    fn record(
        &self,
        rel: &Path,
        key: &str,
        hashes: &LocalHashes,
        etag: String,
        part_size: u64,
        object_meta: Option<FileMeta>,
    ) -> Result<(), JobError> {
        let synced = SyncedFile {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            local_path: self.path_of(rel),
            snapshot: hashes.snapshot,
            size: hashes.snapshot.size,
            crc64: hashes.crc64,
            etag,
            part_size,
            part_blake3: hashes.part_blake3.clone(),
            synced_at: SystemTime::now(),
            object_meta: object_meta.map(|m| m.encode()),
        };
        self.state.complete(None, &synced)?;
        Ok(())
    }

    fn count_synced(&self, size: u64) {
        metrics::inc(&self.metrics.files_synced);
        metrics::add(&self.metrics.bytes_synced, size);
    }

    /// Bring `key` in line with the local file `rel`. With a `finding` of the remote check, the index row is
    /// first made to agree with the remote: forgotten if the object is really missing or different.
    pub async fn sync(
        &self,
        rel: &Path,
        key: &str,
        renamed_from: Option<&Path>,
        finding: Option<RemoteFinding>,
    ) -> Result<Outcome, JobError> {
        if let Some(finding) = finding {
            self.settle_finding(key, finding).await?;
        }
        let Some(meta) = self.stat(rel).await? else { return Ok(Outcome::Vanished) };
        if !meta.is_file() {
            tracing::info!(path = %escape_path(rel), "not a regular file any more; skipped");
            return Ok(Outcome::NotAFile);
        }
        let snapshot = FileSnapshot::from_metadata(&meta);
        let mut synced = self.state.synced(&self.bucket, key)?;
        if let Some(s) = synced.as_ref().filter(|s| s.snapshot == snapshot) {
            // The object may carry other metadata than this snapshot's (the engine could not set it after
            // a change mid-upload); "not known" (an older row) is left alone.
            let stale = s.object_meta.as_deref().is_some_and(|m| m != FileMeta::of(&meta).encode());
            if !stale {
                self.state.clear_status(&self.bucket, key)?;
                return Ok(Outcome::UpToDate);
            }
        }
        if let Some(s) = synced.clone().filter(|s| s.size == snapshot.size) {
            if let Some(h) = self.hash(rel, s.part_size, snapshot).await? {
                if h.part_blake3 == s.part_blake3 && h.crc64 == s.crc64 {
                    if s.object_meta.as_deref() != Some(h.meta.encode().as_str()) {
                        if self.update_metadata(rel, key, &s, &h).await? {
                            return Ok(Outcome::MetadataUpdated);
                        }
                        // The object is not the one the index recorded: upload.
                        synced = None;
                    } else {
                        self.record(rel, key, &h, s.etag.clone(), s.part_size, Some(h.meta))?;
                        metrics::inc(&self.metrics.files_revalidated);
                        self.count_synced(snapshot.size);
                        tracing::info!(path = %escape_path(rel), %key, "timestamps changed, content and file metadata did not: index updated, nothing uploaded");
                        return Ok(Outcome::Revalidated);
                    }
                }
            }
        }
        if let Some(source) = self.copy_source(&snapshot, key, renamed_from)? {
            match self.copy_from(rel, key, snapshot, &source).await {
                Ok(true) => return Ok(Outcome::Copied),
                Ok(false) => {}
                Err(e) => {
                    if e.remote_code.as_deref() == Some("NoSuchKey") {
                        // The index promised that object: others it promised may be gone too.
                        self.remote_surprise.store(true, Ordering::Relaxed);
                    }
                    tracing::info!(path = %escape_path(rel), %key, source = %source.key, error = %e, "server-side copy did not work out; uploading instead")
                }
            }
        }
        if synced.is_none() && self.adopt.load(Ordering::Relaxed) && self.adopt(rel, key, snapshot).await? {
            return Ok(Outcome::Adopted);
        }
        let path = self.path_of(rel);
        let spec = UploadSpec {
            path: path.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            options: self.object_options(&path),
        };
        match self.engine.upload(&spec, None, &self.graceful).await {
            Ok(outcome) => {
                metrics::inc(&self.metrics.files_uploaded);
                self.count_synced(outcome.size);
                log_callback(key, outcome.callback.as_ref());
                Ok(Outcome::Uploaded)
            }
            Err(EngineError::Vanished { .. }) => Ok(Outcome::Vanished),
            Err(EngineError::NotRegular { .. }) => Ok(Outcome::NotAFile),
            Err(e) => Err(e.into()),
        }
    }

    /// Same bytes as the recorded object, other file metadata (touch, chmod, chown as root): set it on the
    /// object server-side, only while the object still has the recorded ETag. `false` when the object is
    /// gone or was replaced (its row is forgotten, so the file is uploaded).
    async fn update_metadata(
        &self,
        rel: &Path,
        key: &str,
        row: &SyncedFile,
        local: &super::local::LocalHashes,
    ) -> Result<bool, JobError> {
        let options = self.meta_options(rel, local.meta);
        let copy = match set_metadata(&*self.remote, &self.bucket, key, row.size, &row.etag, &options).await {
            Ok(copy) => copy,
            Err(e) if matches!(e.code(), Some("PreconditionFailed" | "NoSuchKey")) || e.status() == Some(412) => {
                tracing::warn!(%key, error = %e, "the object is not the one the index recorded: uploading the file again");
                self.state.forget_synced(&self.bucket, key)?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        if copy.crc64.is_some_and(|crc| crc != row.crc64) {
            self.state.forget_synced(&self.bucket, key)?;
            return Err(JobError::new(format!(
                "{key}: after the metadata update the object reports CRC-64 {:?}, not {}; it will be uploaded",
                copy.crc64, row.crc64
            )));
        }
        self.record(rel, key, local, copy.etag, row.part_size, Some(local.meta))?;
        metrics::inc(&self.metrics.files_revalidated);
        self.count_synced(row.size);
        tracing::info!(path = %escape_path(rel), %key, mtime = %local.meta.mtime_string(), mode = %format!("{:o}", local.meta.mode),
            "file metadata changed, content did not: object metadata replaced server-side, nothing uploaded");
        Ok(true)
    }

    /// Make the index agree with what the remote check found for `key`. A row synced before the listing
    /// began and unchanged since is wrong for sure when the object was missing or of another size; anything
    /// else (a newer row, another ETag only) is looked at again, and the object's size and CRC-64 decide.
    async fn settle_finding(&self, key: &str, finding: RemoteFinding) -> Result<(), JobError> {
        let Some(row) = self.state.synced(&self.bucket, key)? else { return Ok(()) };
        let certain = finding.kind != FindingKind::OtherEtag && row.synced_at < finding.listed_after;
        if !certain {
            match self.remote.head_object(&self.bucket, key).await? {
                Some(info)
                    if info.size == row.size && (info.crc64 == Some(row.crc64) || etag_eq(&info.etag, &row.etag)) =>
                {
                    tracing::debug!(%key, "remote check: the object is fine after all");
                    return Ok(());
                }
                _ => {}
            }
        }
        tracing::warn!(%key, finding = ?finding.kind, "the object the index recorded is missing or was changed on the remote: uploading the file again");
        self.state.forget_synced(&self.bucket, key)?;
        Ok(())
    }

    /// `--delete`: delete an object the index does not know, found by the remote check with no file at its
    /// local path, if that is still so (the path is looked at again, the index too: a file may have been
    /// created and uploaded since).
    pub async fn delete_stray(&self, rel: &Path, key: &str) -> Result<Outcome, JobError> {
        if self.state.synced(&self.bucket, key)?.is_some() || self.stat(rel).await?.is_some_and(|m| m.is_file()) {
            return Ok(Outcome::Removed { forgotten: 0, deleted: 0 });
        }
        if !self.root_is_ours() {
            tracing::warn!(path = %escape_path(rel), "the watched directory is missing or was replaced; not deleting");
            return Ok(Outcome::Held);
        }
        self.remote.delete_object(&self.bucket, key).await?;
        metrics::inc(&self.metrics.objects_deleted);
        tracing::info!(%key, "deleted an object the index did not know and no local file stands for (--delete)");
        Ok(Outcome::Removed { forgotten: 0, deleted: 1 })
    }

    /// Other indexed names of the file at `rel` (hard links: same device and inode) whose record no longer
    /// matches the file: a write through one name changes the content of all of them, but the kernel reports
    /// it only for the name that was written, so these are synced again (as server-side copies of this one).
    pub async fn stale_hard_links(&self, rel: &Path, key: &str) -> Result<Vec<(PathBuf, String)>, JobError> {
        use std::os::unix::fs::MetadataExt;
        let Some(meta) = self.stat(rel).await? else { return Ok(Vec::new()) };
        if !meta.is_file() || meta.nlink() < 2 {
            return Ok(Vec::new());
        }
        let now = FileSnapshot::from_metadata(&meta);
        let (state, bucket, key, prefix) =
            (self.state.clone(), self.bucket.clone(), key.to_string(), self.prefix.clone());
        let rows = blocking(move || state.synced_by_inode(now.dev, now.inode, 64)).await??;
        Ok(rows
            .into_iter()
            .filter(|s| s.bucket == bucket && s.key != key && s.snapshot != now)
            .filter_map(|s| rel_path_of_key(&prefix, &s.key).map(|rel| (rel, s.key)))
            .collect())
    }

    /// An index row for the same bytes under another key: same inode, size and mtime (a rename keeps them;
    /// it changes only ctime). The copy is still verified by CRC-64 before it counts.
    fn copy_source(
        &self,
        snapshot: &FileSnapshot,
        key: &str,
        renamed_from: Option<&Path>,
    ) -> Result<Option<SyncedFile>, JobError> {
        let mut candidates = Vec::new();
        if let Some(from) = renamed_from.and_then(|f| object_key(&self.prefix, f).ok()) {
            candidates.extend(self.state.synced(&self.bucket, &from)?);
        }
        candidates.extend(self.state.synced_by_inode(snapshot.dev, snapshot.inode, 8)?);
        Ok(candidates.into_iter().find(|s| {
            s.bucket == self.bucket
                && s.key != key
                && s.size == snapshot.size
                && s.snapshot.mtime_ns == snapshot.mtime_ns
                && s.snapshot.same_file(snapshot)
        }))
    }

    /// Copy `source` to `key` server-side if the local file provably holds the same bytes.
    async fn copy_from(
        &self,
        rel: &Path,
        key: &str,
        snapshot: FileSnapshot,
        source: &SyncedFile,
    ) -> Result<bool, JobError> {
        let Some(local) = self.hash(rel, source.part_size, snapshot).await? else { return Ok(false) };
        if local.crc64 != source.crc64 || local.part_blake3 != source.part_blake3 {
            return Ok(false);
        }
        // REPLACE: the copy carries this file's metadata and the content type of its own name.
        let options = self.meta_options(rel, local.meta);
        if source.size <= MAX_COPY_OBJECT {
            let copy = CopyOptions { replace: Some(options), source_if_match: None };
            self.remote.copy_object_with(&self.bucket, &source.key, key, &copy).await?;
        } else {
            copy_in_parts(&*self.remote, &self.bucket, &source.key, key, source.size, &options).await?;
        }
        let Some(info) = self.remote.head_object(&self.bucket, key).await? else {
            return Err(JobError::new(format!("{key}: the copy is not there after CopyObject")));
        };
        let verified = info.size == local.snapshot.size
            && (info.crc64 == Some(local.crc64) || info.crc64nvme == Some(local.crc64nvme));
        if !verified {
            return Err(JobError::new(format!(
                "{key}: the copied object does not carry the expected CRC-64 (size {}, CRC-64 {:?}); it will be uploaded",
                info.size, info.crc64
            )));
        }
        self.record(rel, key, &local, info.etag, source.part_size, Some(local.meta))?;
        metrics::inc(&self.metrics.files_copied);
        self.count_synced(snapshot.size);
        // The source's own path still holding this very file means another name of it, not a rename.
        let (root, from_rel, follow) =
            (self.root.clone(), rel_path_of_key(&self.prefix, &source.key), self.follow_symlinks);
        let linked = match from_rel {
            Some(from) => blocking(move || tree_stat(&root, &from, follow))
                .await?
                .is_ok_and(|m| FileSnapshot::from_metadata(&m).same_file(&snapshot)),
            None => false,
        };
        if linked {
            tracing::info!(path = %escape_path(rel), %key, from = %source.key, "hard link of an uploaded file: copied server-side instead of uploading");
        } else {
            tracing::info!(path = %escape_path(rel), %key, from = %source.key, "renamed: copied server-side instead of uploading");
        }
        Ok(true)
    }

    /// An object already at `key` with this file's size and CRC-64 is adopted instead of uploaded.
    async fn adopt(&self, rel: &Path, key: &str, snapshot: FileSnapshot) -> Result<bool, JobError> {
        let Some(info) = self.remote.head_object(&self.bucket, key).await? else { return Ok(false) };
        if info.size != snapshot.size || (info.crc64.is_none() && info.crc64nvme.is_none()) {
            return Ok(false);
        }
        let part_size = self.part_size_for(snapshot.size);
        let Some(local) = self.hash(rel, part_size, snapshot).await? else { return Ok(false) };
        if info.crc64 != Some(local.crc64) && info.crc64nvme != Some(local.crc64nvme) {
            return Ok(false);
        }
        let carried = FileMeta::from_pairs(&info.metadata);
        self.record(rel, key, &local, info.etag.clone(), part_size, carried)?;
        metrics::inc(&self.metrics.files_adopted);
        self.count_synced(snapshot.size);
        tracing::info!(path = %escape_path(rel), %key, "already on the remote with the same CRC-64: adopted, nothing uploaded");
        if carried != Some(local.meta) {
            // Every object we keep carries the file's metadata: set it now, server-side.
            let row = self.state.synced(&self.bucket, key)?;
            if let Some(row) = row {
                if !self.update_metadata(rel, key, &row, &local).await? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The watched root is still the directory we started with (not deleted, unmounted or replaced).
    fn root_is_ours(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.root).is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == self.root_id)
    }

    /// `rel` and everything under it are gone: forget them, and delete the objects with `--delete`.
    pub async fn remove(&self, rel: &Path) -> Result<Outcome, JobError> {
        let Ok(key) = object_key(&self.prefix, rel) else { return Ok(Outcome::Removed { forgotten: 0, deleted: 0 }) };
        let subtree = format!("{key}/");
        let mut gone = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.state.list_synced(&self.bucket, &key, after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.key().to_string());
            for entry in page {
                let entry_key = entry.key().to_string();
                if entry_key != key && !entry_key.starts_with(&subtree) {
                    continue;
                }
                let Some(entry_rel) = rel_path_of_key(&self.prefix, &entry_key) else { continue };
                if self.stat(&entry_rel).await?.is_none_or(|m| !m.is_file()) {
                    gone.push((entry_key, matches!(entry, SyncedEntry::Valid(_))));
                }
            }
        }
        // Unfinished uploads of files that are gone will never complete: abort them.
        for checkpoint in self.state.list_checkpoints()? {
            if let Checkpoint::Valid { upload, .. } = &checkpoint {
                if upload.bucket == self.bucket
                    && (upload.key == key || upload.key.starts_with(&subtree))
                    && !upload.local_path.exists()
                {
                    let spec = UploadSpec {
                        path: upload.local_path.clone(),
                        bucket: upload.bucket.clone(),
                        key: upload.key.clone(),
                        options: ObjectOptions::default(),
                    };
                    self.engine.abort(&spec).await?;
                }
            }
        }
        if gone.is_empty() {
            return Ok(Outcome::Removed { forgotten: 0, deleted: 0 });
        }
        if !self.root_is_ours() {
            tracing::warn!(path = %escape_path(rel), "the watched directory is missing or was replaced; not applying deletions");
            return Ok(Outcome::Held);
        }
        let mut deleted = 0;
        if self.delete {
            // Only a row whose MAC holds proves that we uploaded that key: a damaged (or edited) row may
            // name any object, and is only forgotten.
            let (valid, damaged): (Vec<_>, Vec<_>) = gone.iter().partition(|(_, valid)| *valid);
            for (k, _) in &damaged {
                tracing::warn!(key = %k, "index row is damaged: its object is not deleted, only forgotten");
            }
            for batch in valid.chunks(1000) {
                let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
                let failures = self.remote.delete_objects(&self.bucket, &keys).await?;
                if let Some(f) = failures.first() {
                    return Err(JobError::new(format!("deleting {}: {} {}", f.key, f.code, f.message)));
                }
                deleted += keys.len();
                metrics::add(&self.metrics.objects_deleted, keys.len() as u64);
            }
        }
        for (k, _) in &gone {
            self.state.forget_synced(&self.bucket, k)?;
            self.state.clear_status(&self.bucket, k)?;
        }
        if self.delete {
            tracing::info!(path = %escape_path(rel), objects = deleted, "deleted locally: remote objects deleted (--delete)");
        } else {
            tracing::info!(path = %escape_path(rel), files = gone.len(), "deleted locally: remote objects kept (no --delete)");
        }
        Ok(Outcome::Removed { forgotten: gone.len(), deleted })
    }
}

/// Where a path that cannot become an object key is reported in the status table: under the bucket name
/// "" (no real bucket has it), keyed by the escaped path, so it shows in `status` instead of being lost.
pub const INVALID_NAME_BUCKET: &str = "";
