//! The resumable upload engine: one local file to one object, verified.
//!
//! What it promises (DESIGN.md invariants 1-5):
//! - **Never lie about sync.** An upload succeeds only when the server confirmed, part by part, the CRC-64
//!   of the exact bytes read, the whole object's CRC-64 equals those parts combined, and the file's snapshot
//!   (size, mtime, ctime, inode, dev) did not change from the first read of a pass to the last verified
//!   part and the check before Complete.
//! - **Write-ahead upload ids.** The checkpoint row is committed before the first UploadPart.
//! - **A part counts once the server said so**, and on resume ListParts is the truth: a recorded part is
//!   reused only if the server lists it with the recorded ETag and size *and* the local bytes still hash
//!   to the recorded BLAKE3.
//! - **A file modified mid-upload re-sends only what changed.** A pass that saw the snapshot move is
//!   followed by another pass over the same upload id: every part is re-hashed, parts whose bytes changed
//!   are re-sent at their numbers, parts past a new end are dropped, an appended tail gets new parts. Only
//!   a file that outgrows 10,000 parts restarts with a larger part size. A file that never holds still is
//!   reported ([`EngineError::KeepsChanging`]) and never completed torn.
//! - **No orphans.** An upload id the engine abandons is aborted on the server.
//!
//! Small files (at most `multipart_threshold` bytes) are read into memory, checked unchanged, and sent in
//! one PutObject, so a file changing during the upload can never produce a torn object either.
//!
//! Memory is bounded by `threads` × the body channel (about 1 MiB per part in flight) for multipart, and by
//! the threshold for a small file; nothing scales with the file size.

mod io;
mod multipart;
pub mod plan;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::checksum::Blake3;
use crate::filemeta::FileMeta;
use crate::remote::{Body, ObjectOptions, Remote, RemoteError};
use crate::snapshot::{FileSnapshot, RACY_WINDOW};
use crate::state::{Claim, StateDb, StateError, SyncedFile, UploadRowId};
pub use plan::{DEFAULT_PART_SIZE, PartPlan};

/// What to upload where.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    pub path: PathBuf,
    pub bucket: String,
    pub key: String,
    pub options: ObjectOptions,
}

/// Knobs, with the defaults of `ossmirror cp`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requested part size; raised automatically for files that would need more than 10,000 parts.
    pub part_size: u64,
    /// Parts in flight per file.
    pub threads: usize,
    /// Files at or below this size go in one PutObject.
    pub multipart_threshold: u64,
    /// Passes over a changing file before giving up on it for now.
    pub max_passes: u32,
    /// Upper bound on how long after its last modification a file's snapshot is distrusted; the snapshot's
    /// own window (100 ms on file systems with sub-second timestamps, 2 s otherwise) applies below it.
    pub racy_window: Duration,
    /// Keep the checkpoint on failure or cancel so the next run resumes (false: abort the upload instead).
    pub keep_checkpoint: bool,
    /// A cap on parts in flight shared by every upload of this engine (the agent's global limit).
    pub global_parts_in_flight: Option<Arc<Semaphore>>,
    /// Upload what a symbolic link at the path points to (`cp`: yes, the user named it; the agent: only
    /// with `--follow-symlinks`). Without it a link is refused, even one that appears mid-upload.
    pub follow_symlinks: bool,
    /// Without `follow_symlinks`: every path is below this directory and is resolved beneath it with no
    /// symbolic link in *any* component (the agent's watched root), so a directory replaced by a link can
    /// never make the engine read a file from outside the tree.
    pub confine_to: Option<PathBuf>,
    /// Give every object the file's mtime and mode (and uid/gid as root) as user metadata, from the same
    /// `fstat` as the snapshot its bytes were read under (see [`crate::filemeta`]).
    pub file_metadata: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            part_size: DEFAULT_PART_SIZE,
            threads: 4,
            multipart_threshold: DEFAULT_PART_SIZE,
            max_passes: 5,
            racy_window: RACY_WINDOW,
            keep_checkpoint: true,
            global_parts_in_flight: None,
            follow_symlinks: true,
            confine_to: None,
            file_metadata: true,
        }
    }
}

/// The result of a verified upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    pub size: u64,
    pub crc64: u64,
    pub etag: String,
    /// The snapshot the verified bytes were read under.
    pub snapshot: FileSnapshot,
    pub part_size: u64,
    pub part_blake3: Vec<Blake3>,
    /// True when this call continued an upload found in the checkpoint store.
    pub resumed: bool,
    pub parts_sent: u64,
    pub parts_reused: u64,
    pub bytes_sent: u64,
    pub passes: u32,
    /// The upload callback's outcome, when the upload asked for one (OSS).
    pub callback: Option<crate::remote::CallbackOutcome>,
    /// The file metadata the object carries, when known (see [`EngineConfig::file_metadata`]).
    pub object_meta: Option<FileMeta>,
}

/// Where an upload stands, for progress bars and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub total_bytes: u64,
    /// Bytes confirmed in the current pass (sent, or verified unchanged from an earlier attempt).
    pub done_bytes: u64,
    pub parts_total: u32,
    pub parts_done: u32,
    pub pass: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Starting,
    /// Comparing recorded parts with the local file and the server (resume, or after a change).
    Uploading,
    Completing,
    Done,
}

/// Counters over the engine's lifetime; tests assert on waste with them.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub bytes_sent: AtomicU64,
    pub parts_sent: AtomicU64,
    /// Parts sent for a part number that had already been sent in the same upload (changed content, or
    /// a part the server no longer had).
    pub parts_resent: AtomicU64,
    pub parts_reused: AtomicU64,
    pub bytes_hashed: AtomicU64,
    pub puts: AtomicU64,
    pub uploads_initiated: AtomicU64,
    pub uploads_completed: AtomicU64,
    pub uploads_aborted: AtomicU64,
    /// Passes started because the file changed while being uploaded.
    pub change_passes: AtomicU64,
}

impl EngineStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },

    #[error("{path} is not a regular file ({kind}); only regular files are uploaded")]
    NotRegular { path: PathBuf, kind: &'static str },

    #[error("{path} disappeared while it was being uploaded")]
    Vanished { path: PathBuf },

    #[error(
        "{path} kept changing during {passes} upload passes; nothing was published, and the parts sent so far \
         are kept for the next attempt once it settles"
    )]
    KeepsChanging { path: PathBuf, passes: u32 },

    #[error("invalid part size {part_size} bytes: it must be between 100K and 5G")]
    InvalidPartSize { part_size: u64 },

    #[error("a file of {size} bytes is too large: OSS objects hold at most 10,000 parts of 5 GiB")]
    TooLarge { size: u64 },

    #[error(
        "{key}: the object's CRC-64 on the server ({server:?}) differs from the bytes read ({local}); \
         it was not marked synced"
    )]
    Integrity { key: String, local: u64, server: Option<u64> },

    #[error("{key}: {source}")]
    Remote { key: String, source: RemoteError },

    /// A bug guard: Complete would have listed a part set that does not cover the file. Nothing was
    /// completed; the checkpoint is kept and the next attempt sends what is missing.
    #[error("{key}: refusing to complete the upload: {detail} (nothing was published; it is retried)")]
    IncompletePlan { key: String, detail: String },

    #[error(transparent)]
    State(#[from] StateError),

    #[error("upload of {path} cancelled; {}", if *.kept { "its checkpoint is kept for a later resume" } else { "its server-side upload was aborted" })]
    Cancelled { path: PathBuf, kept: bool },
}

impl EngineError {
    /// The remote error underneath, if any.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            EngineError::Remote { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Uploads files through one remote, with one checkpoint store. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    remote: Arc<dyn Remote>,
    state: StateDb,
    config: EngineConfig,
    /// How file paths are resolved, from `follow_symlinks` and `confine_to`.
    access: io::Access,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("remote", &self.inner.remote).field("config", &self.inner.config).finish()
    }
}

impl Engine {
    /// `state` holds the checkpoints; with `config.keep_checkpoint == false` an in-memory database is fine.
    pub fn new(remote: Arc<dyn Remote>, state: StateDb, config: EngineConfig) -> Result<Engine, EngineError> {
        PartPlan::validate_part_size(config.part_size)?;
        let config = EngineConfig { threads: config.threads.max(1), max_passes: config.max_passes.max(1), ..config };
        let access = match (&config.confine_to, config.follow_symlinks) {
            (_, true) => io::Access::Follow,
            (Some(root), false) => io::Access::Beneath(Arc::from(root.as_path())),
            (None, false) => io::Access::NoFollow,
        };
        Ok(Engine { inner: Arc::new(Inner { remote, state, config, access, stats: EngineStats::default() }) })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn remote(&self) -> &Arc<dyn Remote> {
        &self.inner.remote
    }

    pub fn state(&self) -> &StateDb {
        &self.inner.state
    }

    /// Upload one file, resuming from its checkpoint if there is one. `cancel` stops the upload gracefully:
    /// parts in flight finish and are recorded, then [`EngineError::Cancelled`] is returned. Dropping the
    /// future instead stops at once; nothing unacknowledged is ever recorded, so both are safe.
    pub async fn upload(
        &self,
        spec: &UploadSpec,
        progress: Option<&watch::Sender<Progress>>,
        cancel: &CancellationToken,
    ) -> Result<UploadOutcome, EngineError> {
        let remote_err = |source| EngineError::Remote { key: spec.key.clone(), source };
        crate::remote::names::validate_bucket(&spec.bucket).map_err(remote_err)?;
        crate::remote::names::validate_key(&spec.key).map_err(remote_err)?;
        let claim = Arc::new(self.inner.state.claim(&spec.path, &spec.bucket, &spec.key, 0)?);
        let done_bytes = Arc::new(AtomicU64::new(0));
        // Heartbeat the claim while the upload runs, also through a long part, a retry loop or a slow
        // Complete: another process must never take over a live upload as stale.
        // The task holds the claim weakly: if this future is dropped (a hard stop), the claim is released at
        // once instead of living on in the timer task.
        let heartbeat = {
            let (claim, done_bytes) = (Arc::downgrade(&claim), done_bytes.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(HEARTBEAT);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(claim) = claim.upgrade() else { return };
                    if claim.progress(done_bytes.load(Ordering::Relaxed)).is_err() {
                        return;
                    }
                }
            })
        };
        let reporter = Reporter { tx: progress, claim, done_bytes, last_beat: Mutex::new(Instant::now()) };
        let result = self.upload_claimed(spec, &reporter, cancel).await;
        heartbeat.abort();
        // Wait for the aborted task to drop its handle, so the claim is released before we return.
        let _ = heartbeat.await;
        if let Ok(claim) = Arc::try_unwrap(reporter.claim) {
            if let Err(e) = claim.release() {
                tracing::warn!(key = %spec.key, error = %e, "could not release the upload claim");
            }
        }
        result
    }

    async fn upload_claimed(
        &self,
        spec: &UploadSpec,
        reporter: &Reporter<'_>,
        cancel: &CancellationToken,
    ) -> Result<UploadOutcome, EngineError> {
        reporter.report(Progress::default())?;
        let opened = io::open_regular(&spec.path, &self.inner.access).await?;
        reporter.claim.set_total_bytes(opened.snapshot.size)?;
        let checkpoint = self.inner.state.find_checkpoint(&spec.path, &spec.bucket, &spec.key)?;
        let small = opened.snapshot.size <= self.inner.config.multipart_threshold;
        let outcome = if small {
            if let Some(cp) = checkpoint {
                // The file shrank to a small one since an earlier multipart attempt: that upload is useless.
                multipart::discard_checkpoint(&self.inner, &cp, "the file is now small enough for one PutObject").await;
            }
            self.single_put(spec, opened, reporter, cancel).await?
        } else {
            multipart::Session::run(self.inner.clone(), spec, opened, checkpoint, reporter, cancel).await?
        };
        reporter.report(Progress {
            phase: Phase::Done,
            total_bytes: outcome.size,
            done_bytes: outcome.size,
            parts_total: outcome.part_blake3.len() as u32,
            parts_done: outcome.part_blake3.len() as u32,
            pass: outcome.passes,
        })?;
        Ok(outcome)
    }

    /// Abort the server-side upload recorded for `spec` and delete its checkpoint (`cp --abort-on-cancel`).
    /// Returns whether there was one.
    pub async fn abort(&self, spec: &UploadSpec) -> Result<bool, EngineError> {
        match self.inner.state.find_checkpoint(&spec.path, &spec.bucket, &spec.key)? {
            Some(checkpoint) => {
                multipart::discard_checkpoint(&self.inner, &checkpoint, "cancelled by the user").await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Read the whole (small) file into memory under an unchanged snapshot, then PutObject it. The bytes
    /// sent are always one consistent version of the file; if the file changed meanwhile, go again.
    async fn single_put(
        &self,
        spec: &UploadSpec,
        mut opened: io::Opened,
        reporter: &Reporter<'_>,
        cancel: &CancellationToken,
    ) -> Result<UploadOutcome, EngineError> {
        let inner = &self.inner;
        let max_passes = inner.config.max_passes;
        // Every pass's PUT counts: a file that changed after it was sent cost its bytes all the same.
        let (mut puts, mut sent_total) = (0u64, 0u64);
        for pass in 1..=max_passes {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled { path: spec.path.clone(), kept: true });
            }
            if pass > 1 {
                EngineStats::add(&inner.stats.change_passes, 1);
            }
            let snapshot = io::wait_not_racy(&spec.path, &mut opened, inner.config.racy_window).await?;
            if snapshot.size > inner.config.multipart_threshold {
                // It grew (or was replaced by a larger file) since it was opened: never read a large file
                // into memory, hand it to the multipart path.
                // Boxed: the multipart path can hand an emptied file back here, a (bounded) recursion.
                return Box::pin(multipart::Session::run(inner.clone(), spec, opened, None, reporter, cancel)).await;
            }
            reporter.report(Progress {
                phase: Phase::Uploading,
                total_bytes: snapshot.size,
                pass,
                parts_total: 1,
                ..Default::default()
            })?;
            let Some(data) = io::read_consistent(&spec.path, &opened, snapshot).await? else {
                continue;
            };
            EngineStats::add(&inner.stats.bytes_hashed, data.len() as u64);
            // The metadata of the snapshot the bytes were read under (unchanged: else read again).
            let meta = if inner.config.file_metadata {
                match io::file_meta(&spec.path, &opened.file, snapshot).await? {
                    Some(meta) => Some(meta),
                    None => continue,
                }
            } else {
                None
            };
            let options = with_file_meta(&spec.options, meta);
            let sent = data.len() as u64;
            let put = inner.remote.put_object(&spec.bucket, &spec.key, Body::Bytes(data), &options).await;
            let put = put.map_err(|source| EngineError::Remote { key: spec.key.clone(), source })?;
            EngineStats::add(&inner.stats.puts, 1);
            EngineStats::add(&inner.stats.bytes_sent, sent);
            puts += 1;
            sent_total += sent;
            // The object now holds exactly the version read under `snapshot`. It is the current version
            // only if the file has not moved on since.
            let current = io::unchanged_since(&spec.path, &mut opened, snapshot).await;
            let outcome = UploadOutcome {
                size: snapshot.size,
                crc64: put.digest.crc64,
                etag: put.etag.clone(),
                snapshot,
                part_size: snapshot.size.max(1),
                part_blake3: vec![put.digest.blake3],
                resumed: false,
                parts_sent: puts,
                parts_reused: 0,
                bytes_sent: sent_total,
                passes: pass,
                callback: put.callback.clone(),
                object_meta: meta,
            };
            // Recorded whatever became of the file since: the index must know every object it wrote. The row
            // binds the object to `snapshot`, which a file changed since no longer has (so it is uploaded
            // again); a file deleted or renamed meanwhile is then removed (`--delete`) or copied from it like
            // any synced file, instead of leaving an object nobody knows.
            inner.state.complete(None, &synced_record(spec, &outcome))?;
            match current {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(path = %spec.path.display(), key = %spec.key, pass, "file changed after it was read; uploading again");
                    continue;
                }
                Err(e) => return Err(e),
            }
            tracing::info!(path = %spec.path.display(), key = %spec.key, size = outcome.size, crc64 = outcome.crc64, "uploaded (single PutObject)");
            return Ok(outcome);
        }
        Err(EngineError::KeepsChanging { path: spec.path.clone(), passes: max_passes })
    }
}

/// Publishes progress to the caller's channel and heartbeats the upload claim (at most once a second: each
/// heartbeat is a database write). A claim taken over by another process stops the upload.
pub(crate) struct Reporter<'a> {
    tx: Option<&'a watch::Sender<Progress>>,
    claim: Arc<Claim>,
    /// The latest progress, for the heartbeat timer.
    done_bytes: Arc<AtomicU64>,
    last_beat: Mutex<Instant>,
}

/// How often a running upload's claim is refreshed, whatever the upload is doing (well below
/// `state::CLAIM_STALE_AFTER`).
const HEARTBEAT: Duration = Duration::from_secs(30);

impl Reporter<'_> {
    fn report(&self, progress: Progress) -> Result<(), EngineError> {
        if let Some(tx) = self.tx {
            tx.send_replace(progress);
        }
        self.done_bytes.store(progress.done_bytes, Ordering::Relaxed);
        let due = {
            let mut last = self.last_beat.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= Duration::from_secs(1) || progress.phase == Phase::Done;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            self.claim.progress(progress.done_bytes)?;
        }
        Ok(())
    }

    fn attach(&self, row: UploadRowId, total_bytes: u64) -> Result<(), EngineError> {
        self.claim.attach_upload(row)?;
        self.claim.set_total_bytes(total_bytes)?;
        Ok(())
    }
}

fn synced_record(spec: &UploadSpec, outcome: &UploadOutcome) -> SyncedFile {
    SyncedFile {
        bucket: spec.bucket.clone(),
        key: spec.key.clone(),
        local_path: spec.path.clone(),
        snapshot: outcome.snapshot,
        size: outcome.size,
        crc64: outcome.crc64,
        etag: outcome.etag.clone(),
        part_size: outcome.part_size,
        part_blake3: outcome.part_blake3.clone(),
        synced_at: SystemTime::now(),
        object_meta: outcome.object_meta.map(|m| m.encode()),
    }
}

/// `options` plus the file metadata pairs; a name the caller set itself (`cp --meta mtime=…`) is kept.
pub fn with_file_meta(options: &ObjectOptions, meta: Option<FileMeta>) -> ObjectOptions {
    let mut options = options.clone();
    for (k, v) in meta.map(|m| m.pairs()).unwrap_or_default() {
        if !options.metadata.iter().any(|(name, _)| name.eq_ignore_ascii_case(&k)) {
            options.metadata.push((k, v));
        }
    }
    options
}

/// A stable fingerprint of the options an upload was initiated with (ACL is applied at Complete and
/// does not count).
pub fn options_fingerprint(options: &ObjectOptions) -> String {
    let mut meta = options.metadata.clone();
    meta.sort();
    let mut h = blake3::Hasher::new();
    let fields = [
        options.content_type.as_deref(),
        options.storage_class.as_deref(),
        options.cache_control.as_deref(),
        options.content_disposition.as_deref(),
        options.content_encoding.as_deref(),
    ];
    for f in fields {
        match f {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
    }
    for (k, v) in meta {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.update(&[options.forbid_overwrite as u8]);
    // Encryption and tags are given at Initiate too. Hashed only when set, so the checkpoints of uploads
    // without them keep their fingerprint. (The callback is sent with Complete and does not count.)
    if let Some(sse) = &options.encryption {
        h.update(format!("sse:{sse:?}").as_bytes());
    }
    for (k, v) in &options.tags {
        h.update(format!("tag:{}:{k}={v}", k.len()).as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}
