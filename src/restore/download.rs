//! One object to one local file, resumably and verified: the mirror image of the upload engine.
//!
//! 1. HEAD gives the size, the ETag and the whole object's checksum.
//! 2. The bytes are fetched as ranges of `part_size`, `threads` at a time, each GET pinned to the ETag with
//!    `If-Match`: an object replaced mid-download answers 412, and the download starts over from scratch once
//!    (a second change fails). Memory is at most `threads × part_size` of bodies in flight.
//! 3. Each range is written with `pwrite` into a temporary file beside the target
//!    (`.NAME.ossmirror-part-XXXXXXXX`, created 0600 with `O_EXCL | O_NOFOLLOW`) and recorded in the
//!    [`Checkpoint`] with its CRC-64. After a kill only the missing ranges are fetched; recorded ranges are
//!    re-read from the temporary file and their CRC-64 checked before they count.
//! 4. The whole file's CRC-64/XZ is combined from the ranges' and compared with the object's
//!    (`x-oss-hash-crc64ecma`); on S3 with the full-object CRC-64/NVME when the server reports one, else with
//!    the ETag when it is a plain MD5 (single-part upload). Otherwise only the size could be checked: the file
//!    is written, but the outcome says [`Verified::Unverified`] (commands exit 1 for it).
//! 5. The temporary file gets the mode, owner (as root) and mtime from the object's metadata, is fsynced and
//!    renamed onto the target, and the directory is fsynced: the target is either the old file or the whole
//!    new one, never torn.
//!
//! Files are named by a directory descriptor and a name, so a restore can hand in a directory it opened
//! without following symlinks; nothing here resolves a path. All file I/O and SQLite run in
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;

use super::checkpoint::{Checkpoint, CheckpointError, DownloadKey};
use super::meta::{DEFAULT_FILE_MODE, FileMeta};
use crate::checksum::{crc64, crc64_combine, crc64nvme, crc64nvme_combine};
use crate::remote::{ByteRange, ErrorKind, ObjectInfo, Remote, RemoteError};
use crate::watch::escape_path;

pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_THREADS: usize = 4;
/// Ranges are at least this large (smaller only for the last one).
pub const MIN_PART_SIZE: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct DownloadConfig {
    pub part_size: u64,
    pub threads: usize,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig { part_size: DEFAULT_PART_SIZE, threads: DEFAULT_THREADS }
    }
}

/// How the downloaded bytes were checked against the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verified {
    /// CRC-64/XZ (OSS `x-oss-hash-crc64ecma`).
    Crc64,
    /// CRC-64/NVME (S3 full-object checksum).
    Crc64Nvme,
    /// The ETag of a single-part object is the MD5 of its bytes.
    Md5,
    /// The server reports no checksum: only the size was checked.
    Unverified,
}

impl Verified {
    pub fn is_verified(self) -> bool {
        self != Verified::Unverified
    }
    pub fn describe(self) -> &'static str {
        match self {
            Verified::Crc64 => "CRC-64 verified",
            Verified::Crc64Nvme => "CRC-64/NVME verified",
            Verified::Md5 => "MD5 verified",
            Verified::Unverified => "UNVERIFIED: the server reports no checksum, only the size was checked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub size: u64,
    pub crc64: u64,
    pub etag: String,
    pub verified: Verified,
    pub ranges_fetched: u64,
    pub ranges_reused: u64,
    /// The object was replaced mid-download and the download started over.
    pub restarted: bool,
}

/// Bytes done and to do, shared with a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
}

/// Where a download lands: `name` inside the directory `dir` (`dir_path` is for messages and the checkpoint).
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: Arc<OwnedFd>,
    pub dir_path: PathBuf,
    pub name: OsString,
}

impl Target {
    /// A target given as a path by the user (`cp`): its directory is opened as named.
    pub fn from_path(path: &Path) -> io::Result<Target> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the target has no file name"))?;
        let dir_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = open_dir(&dir_path)?;
        let dir_path = std::fs::canonicalize(&dir_path).unwrap_or(dir_path);
        Ok(Target { dir: Arc::new(dir), dir_path, name: name.to_os_string() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{object} does not exist")]
    NotFound { object: String },
    #[error("{object} was deleted while it was being downloaded; nothing was written to {path}")]
    Deleted { object: String, path: String },
    #[error(
        "{object} was replaced twice while it was being downloaded; nothing was written to {path} (run again once \
         it is no longer being rewritten)"
    )]
    Changed { object: String, path: String },
    #[error(
        "{object} is in the {class} storage class and cannot be read until it is restored: run RestoreObject on it \
         (e.g. `ossutil restore`), wait until it is readable, then download it again"
    )]
    NeedsRestore { object: String, class: String },
    #[error(
        "{object}: the downloaded bytes do not match the object ({what}: local {local}, server {server}); nothing \
         was written to {path}"
    )]
    Mismatch { object: String, path: String, what: &'static str, local: String, server: String },
    #[error(
        "no space left on the device for {path} ({size} bytes needed): the partial download was removed; free some \
         space and run again"
    )]
    NoSpace { path: String, size: u64 },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: io::Error },
    #[error("downloading {object}: {source}")]
    Remote { object: String, source: RemoteError },
    #[error("downloading {object}: the server answered {detail}")]
    BadAnswer { object: String, detail: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl DownloadError {
    /// Errors that end an attempt for good: the temporary file and its checkpoint are removed.
    fn discards_temp(&self) -> bool {
        matches!(
            self,
            DownloadError::Deleted { .. }
                | DownloadError::Changed { .. }
                | DownloadError::Mismatch { .. }
                | DownloadError::NoSpace { .. }
                | DownloadError::NotFound { .. }
        )
    }
}

/// Downloads objects of one remote; shared by `cp` and `restore`.
#[derive(Debug, Clone)]
pub struct Downloader {
    remote: Arc<dyn Remote>,
    checkpoint: Option<Arc<Checkpoint>>,
    config: DownloadConfig,
    scheme: &'static str,
}

/// What the attempt's loop needs to know about one range.
#[derive(Debug, Clone, Copy)]
struct Piece {
    crc64: u64,
    nvme: Option<u64>,
}

/// Storage classes whose objects must be restored (RestoreObject) before a GET works.
pub fn needs_restore(storage_class: Option<&str>) -> bool {
    storage_class.is_some_and(|c| {
        ["Archive", "ColdArchive", "DeepColdArchive", "GLACIER", "DEEP_ARCHIVE"]
            .iter()
            .any(|a| a.eq_ignore_ascii_case(c))
    })
}

impl Downloader {
    pub fn new(remote: Arc<dyn Remote>, checkpoint: Option<Arc<Checkpoint>>, config: DownloadConfig) -> Self {
        let scheme = match remote.dialect() {
            crate::remote::Dialect::Oss => "oss",
            crate::remote::Dialect::S3 => "s3",
        };
        let config = DownloadConfig { part_size: config.part_size.max(MIN_PART_SIZE), threads: config.threads.max(1) };
        Downloader { remote, checkpoint, config, scheme }
    }

    pub fn remote(&self) -> &Arc<dyn Remote> {
        &self.remote
    }

    pub fn object_name(&self, bucket: &str, key: &str) -> String {
        format!("{}://{bucket}/{key}", self.scheme)
    }

    /// Download an object a listing said is at most one range long with a single GET and no HEAD (a restore
    /// of many small files would otherwise pay two requests per file). The GET's own headers give the
    /// checksum and metadata; a single request needs no If-Match. Larger objects take [`Self::download`].
    pub async fn download_small(
        &self,
        bucket: &str,
        key: &str,
        target: &Target,
        listed_size: u64,
    ) -> Result<Outcome, DownloadError> {
        if listed_size > self.config.part_size {
            return self.download(bucket, key, target, None, None).await;
        }
        let object = self.object_name(bucket, key);
        let path = escape_path(&target.path());
        let got = self.remote.get_object(bucket, key, None).await.map_err(|e| match classify(e, &object, &path) {
            DownloadError::Deleted { object, .. } => DownloadError::NotFound { object },
            other => other,
        })?;
        let mut info = got.info;
        info.size = got.body.len() as u64;
        if needs_restore(info.storage_class.as_deref()) {
            return Err(DownloadError::NeedsRestore { object, class: info.storage_class.clone().unwrap_or_default() });
        }
        let size = info.size;
        let want_nvme = info.crc64.is_none() && info.crc64nvme.is_some();
        let body = got.body;
        let (dir, name, p) = (target.dir.clone(), target.name.clone(), path.clone());
        let (temp, temp_name, piece) = blocking(move || -> Result<(File, OsString, Piece), DownloadError> {
            let (fd, temp_name) =
                create_temp(&dir, &name).map_err(|e| io_error("creating a file beside", &p, e, size))?;
            let file = File::from(fd);
            if let Err(e) = file.write_all_at(&body, 0) {
                let _ = unlinkat(&dir, &temp_name);
                return Err(io_error("writing", &p, e, size));
            }
            Ok((file, temp_name, Piece { crc64: crc64(&body), nvme: want_nvme.then(|| crc64nvme(&body)) }))
        })
        .await??;
        let temp = Arc::new(temp);
        let pieces: BTreeMap<u64, Piece> = if size == 0 { BTreeMap::new() } else { BTreeMap::from([(0, piece)]) };
        let part_size = self.config.part_size.max(size);
        match self.finish(&object, target, &info, &temp, &temp_name, &pieces, part_size).await {
            Ok((crc64, verified)) => Ok(Outcome {
                size,
                crc64,
                etag: info.etag.clone(),
                verified,
                ranges_fetched: pieces.len() as u64,
                ranges_reused: 0,
                restarted: false,
            }),
            Err(e) => {
                let (dir, name) = (target.dir.clone(), temp_name.clone());
                let _ = blocking(move || unlinkat(&dir, &name)).await;
                Err(e)
            }
        }
    }

    /// Download `bucket/key` onto `target`. `head` may carry a HEAD answer the caller already has.
    pub async fn download(
        &self,
        bucket: &str,
        key: &str,
        target: &Target,
        mut head: Option<ObjectInfo>,
        progress: Option<&Progress>,
    ) -> Result<Outcome, DownloadError> {
        let object = self.object_name(bucket, key);
        let mut restarted = false;
        for attempt in 0..2 {
            let info = match head.take() {
                Some(info) => info,
                None => self
                    .remote
                    .head_object(bucket, key)
                    .await
                    .map_err(|source| DownloadError::Remote { object: object.clone(), source })?
                    .ok_or_else(|| DownloadError::NotFound { object: object.clone() })?,
            };
            if needs_restore(info.storage_class.as_deref()) {
                return Err(DownloadError::NeedsRestore {
                    object,
                    class: info.storage_class.clone().unwrap_or_default(),
                });
            }
            if let Some(p) = progress {
                p.total.store(info.size, Ordering::Relaxed);
                p.done.store(0, Ordering::Relaxed);
            }
            match self.attempt(bucket, key, &object, target, &info, progress).await {
                Err(DownloadError::Changed { .. }) if attempt == 0 => {
                    tracing::info!(object = %object, "the object was replaced mid-download; starting over");
                    restarted = true;
                }
                Err(e) => return Err(e),
                Ok(mut outcome) => {
                    outcome.restarted = restarted;
                    return Ok(outcome);
                }
            }
        }
        Err(DownloadError::Changed { object, path: escape_path(&target.path()) })
    }

    async fn attempt(
        &self,
        bucket: &str,
        key: &str,
        object: &str,
        target: &Target,
        info: &ObjectInfo,
        progress: Option<&Progress>,
    ) -> Result<Outcome, DownloadError> {
        let part_size = self.config.part_size;
        let size = info.size;
        let parts = size.div_ceil(part_size);
        let want_nvme = info.crc64.is_none() && info.crc64nvme.is_some();
        let ck_key = DownloadKey {
            endpoint: self.remote.endpoint_display(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            target: target.path(),
        };
        // One range has nothing to resume: no checkpoint rows for it (a restore of many small files would
        // otherwise pay three SQLite commits per file).
        let checkpoint = self.checkpoint.clone().filter(|_| parts > 1);
        let prepared = {
            let (ck, ck_key, target, etag) = (checkpoint.clone(), ck_key.clone(), target.clone(), info.etag.clone());
            blocking(move || prepare(ck.as_deref(), &ck_key, &target, &etag, size, part_size, want_nvme)).await??
        };
        let Prepared { temp, temp_name, id, mut pieces } = prepared;
        let temp = Arc::new(temp);
        let reused = pieces.len() as u64;
        if let Some(p) = progress {
            let done: u64 = pieces.keys().map(|&i| range_of(i, part_size, size).map_or(0, |r| r.len())).sum();
            p.done.store(done, Ordering::Relaxed);
        }

        let result = self
            .fetch_missing(bucket, key, object, target, info, &temp, id, &mut pieces, parts, want_nvme, progress)
            .await;
        let result = match result {
            Ok(()) => self.finish(object, target, info, &temp, &temp_name, &pieces, part_size).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(verified_crc) => {
                if let (Some(ck), Some(id)) = (&checkpoint, id) {
                    let ck = ck.clone();
                    blocking(move || ck.forget(id)).await??;
                }
                let (crc, verified) = verified_crc;
                Ok(Outcome {
                    size,
                    crc64: crc,
                    etag: info.etag.clone(),
                    verified,
                    ranges_fetched: parts - reused,
                    ranges_reused: reused,
                    restarted: false,
                })
            }
            Err(e) => {
                if e.discards_temp() || checkpoint.is_none() {
                    let (dir, name, ck) = (target.dir.clone(), temp_name.clone(), checkpoint.clone());
                    let _ = blocking(move || {
                        let _ = unlinkat(&dir, &name);
                        if let (Some(ck), Some(id)) = (ck, id) {
                            let _ = ck.forget(id);
                        }
                    })
                    .await;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_missing(
        &self,
        bucket: &str,
        key: &str,
        object: &str,
        target: &Target,
        info: &ObjectInfo,
        temp: &Arc<File>,
        id: Option<i64>,
        pieces: &mut BTreeMap<u64, Piece>,
        parts: u64,
        want_nvme: bool,
        progress: Option<&Progress>,
    ) -> Result<(), DownloadError> {
        let part_size = self.config.part_size;
        let size = info.size;
        let missing: Vec<u64> = (0..parts).filter(|i| !pieces.contains_key(i)).collect();
        let path = escape_path(&target.path());
        let fetches = futures_util::stream::iter(missing).map(|index| {
            let (temp, path) = (temp.clone(), path.clone());
            async move {
                let range =
                    range_of(index, part_size, size).ok_or_else(|| DownloadError::Task("empty range".into()))?;
                let got = self
                    .remote
                    .get_object_if_match(bucket, key, Some(range), Some(&info.etag))
                    .await
                    .map_err(|e| classify(e, object, &path))?;
                if got.content_range.is_some_and(|(_, total)| total != size)
                    || (!got.info.etag.is_empty() && got.info.etag.trim_matches('"') != info.etag.trim_matches('"'))
                {
                    return Err(DownloadError::Changed { object: object.to_string(), path });
                }
                if got.body.len() as u64 != range.len() {
                    return Err(DownloadError::BadAnswer {
                        object: object.to_string(),
                        detail: format!("{} bytes for the {} bytes at {}", got.body.len(), range.len(), range.first),
                    });
                }
                let body = got.body;
                let piece = blocking(move || -> Result<Piece, DownloadError> {
                    temp.write_all_at(&body, range.first).map_err(|e| io_error("writing", &path, e, size))?;
                    Ok(Piece { crc64: crc64(&body), nvme: want_nvme.then(|| crc64nvme(&body)) })
                })
                .await??;
                if let (Some(ck), Some(id)) = (&self.checkpoint, id) {
                    let ck = ck.clone();
                    blocking(move || ck.finish_range(id, index, piece.crc64)).await??;
                }
                if let Some(p) = progress {
                    p.done.fetch_add(range.len(), Ordering::Relaxed);
                }
                Ok::<_, DownloadError>((index, piece))
            }
        });
        let mut fetches = fetches.buffer_unordered(self.config.threads);
        while let Some(done) = fetches.next().await {
            let (index, piece) = done?;
            pieces.insert(index, piece);
        }
        Ok(())
    }

    /// Verify the whole file, give it its metadata, and rename it onto the target.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        object: &str,
        target: &Target,
        info: &ObjectInfo,
        temp: &Arc<File>,
        temp_name: &OsStr,
        pieces: &BTreeMap<u64, Piece>,
        part_size: u64,
    ) -> Result<(u64, Verified), DownloadError> {
        let size = info.size;
        let len_of = |i: u64| range_of(i, part_size, size).map_or(0, |r| r.len());
        let crc = pieces.iter().fold(0, |acc, (&i, p)| crc64_combine(acc, p.crc64, len_of(i)));
        let path = escape_path(&target.path());
        let mismatch = |what, local: String, server: String| DownloadError::Mismatch {
            object: object.to_string(),
            path: path.clone(),
            what,
            local,
            server,
        };
        let verified = if let Some(server) = info.crc64 {
            if server != crc {
                return Err(mismatch("CRC-64", crc.to_string(), server.to_string()));
            }
            Verified::Crc64
        } else if let Some(server) = info.crc64nvme {
            let nvme = pieces.iter().fold(0, |acc, (&i, p)| crc64nvme_combine(acc, p.nvme.unwrap_or(0), len_of(i)));
            if server != nvme {
                return Err(mismatch("CRC-64/NVME", nvme.to_string(), server.to_string()));
            }
            Verified::Crc64Nvme
        } else if let Some(md5) = plain_md5_etag(&info.etag) {
            let (file, p) = (temp.clone(), path.clone());
            let local =
                blocking(move || md5_of(&file, size).map_err(|e| io_error("reading back", &p, e, size))).await??;
            if local != md5 {
                return Err(mismatch("MD5 ETag", local, md5));
            }
            Verified::Md5
        } else {
            Verified::Unverified
        };

        let meta = FileMeta::from_metadata(&info.metadata);
        let mtime = meta.mtime_or(info.last_modified);
        let mode = meta.mode.unwrap_or(DEFAULT_FILE_MODE);
        let (file, dir, temp_name, name, p) =
            (temp.clone(), target.dir.clone(), temp_name.to_os_string(), target.name.clone(), path.clone());
        blocking(move || -> Result<(), DownloadError> {
            use std::os::unix::fs::PermissionsExt;
            let err = |what, e| io_error(what, &p, e, size);
            if rustix_is_root() && (meta.uid.is_some() || meta.gid.is_some()) {
                std::os::unix::fs::fchown(&*file, meta.uid, meta.gid).map_err(|e| err("setting the owner of", e))?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| err("setting the mode of", e))?;
            if let Some(t) = mtime {
                file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
                    .map_err(|e| err("setting the mtime of", e))?;
            }
            file.sync_all().map_err(|e| err("syncing", e))?;
            renameat(&dir, &temp_name, &name).map_err(|e| err("renaming the download onto", e))?;
            fsync_dir(&dir).map_err(|e| err("syncing the directory of", e))?;
            Ok(())
        })
        .await??;
        Ok((crc, verified))
    }
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The ETag of a single-part upload: 32 hex digits, the MD5 of the bytes.
fn plain_md5_etag(etag: &str) -> Option<String> {
    let bare = etag.trim_matches('"');
    (bare.len() == 32 && bare.bytes().all(|b| b.is_ascii_hexdigit())).then(|| bare.to_ascii_lowercase())
}

fn md5_of(file: &File, size: u64) -> io::Result<String> {
    use md5::{Digest as _, Md5};
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

fn range_of(index: u64, part_size: u64, size: u64) -> Option<ByteRange> {
    let first = index * part_size;
    ByteRange::from_offset_len(first, part_size.min(size.saturating_sub(first)))
}

fn classify(e: RemoteError, object: &str, path: &str) -> DownloadError {
    let root = e.root();
    if root.status() == Some(412) || root.code() == Some("PreconditionFailed") {
        return DownloadError::Changed { object: object.to_string(), path: path.to_string() };
    }
    if root.kind() == ErrorKind::NotFound && root.code() != Some("NoSuchBucket") {
        return DownloadError::Deleted { object: object.to_string(), path: path.to_string() };
    }
    DownloadError::Remote { object: object.to_string(), source: e }
}

fn io_error(what: &'static str, path: &str, e: io::Error, size: u64) -> DownloadError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        return DownloadError::NoSpace { path: path.to_string(), size };
    }
    DownloadError::Io { what, path: path.to_string(), source: e }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DownloadError::Task(e.to_string()))
}

struct Prepared {
    temp: File,
    temp_name: OsString,
    id: Option<i64>,
    pieces: BTreeMap<u64, Piece>,
}

/// Reuse the recorded temporary file (keeping only ranges whose bytes still hash to their recorded CRC-64),
/// or start a new one.
fn prepare(
    ck: Option<&Checkpoint>,
    key: &DownloadKey,
    target: &Target,
    etag: &str,
    size: u64,
    part_size: u64,
    want_nvme: bool,
) -> Result<Prepared, DownloadError> {
    let path = escape_path(&target.path());
    if let Some(ck) = ck
        && let Some(record) = ck.find(key)?
    {
        let name = OsStr::from_bytes(&record.temp_name).to_os_string();
        let same = record.etag == etag && record.size == size && record.part_size == part_size;
        if same && let Ok(file) = openat(&target.dir, &name, libc::O_RDWR, 0) {
            let file = File::from(file);
            if file.metadata().is_ok_and(|m| m.is_file() && m.len() == size) {
                let mut pieces = BTreeMap::new();
                let mut buf = vec![0u8; part_size as usize];
                for (&index, &recorded) in &record.ranges {
                    let Some(range) = range_of(index, part_size, size) else { continue };
                    let bytes = &mut buf[..range.len() as usize];
                    let ok = file.read_exact_at(bytes, range.first).is_ok() && crc64(bytes) == recorded;
                    if ok {
                        pieces.insert(index, Piece { crc64: recorded, nvme: want_nvme.then(|| crc64nvme(bytes)) });
                    } else {
                        tracing::warn!(path = %path, part = index, "a recorded range did not verify; fetching it again");
                        ck.drop_range(record.id, index)?;
                    }
                }
                tracing::info!(path = %path, reused = pieces.len(), "resuming the download");
                return Ok(Prepared { temp: file, temp_name: name, id: Some(record.id), pieces });
            }
        }
        let _ = unlinkat(&target.dir, &name);
        ck.forget(record.id)?;
    }
    let (file, name) =
        create_temp(&target.dir, &target.name).map_err(|e| io_error("creating a file beside", &path, e, size))?;
    let file = File::from(file);
    if let Err(e) = allocate(&file, size) {
        let _ = unlinkat(&target.dir, &name);
        return Err(io_error("allocating", &path, e, size));
    }
    let id = match ck {
        Some(ck) => match ck.start(key, etag, size, part_size, name.as_bytes()) {
            Ok(id) => Some(id),
            Err(e) => {
                let _ = unlinkat(&target.dir, &name);
                return Err(e.into());
            }
        },
        None => None,
    };
    Ok(Prepared { temp: file, temp_name: name, id, pieces: BTreeMap::new() })
}

/// Reserve the space up front, so a full disk is found before any byte is fetched (falls back to setting
/// the length where the file system cannot allocate).
fn allocate(file: &File, size: u64) -> io::Result<()> {
    if size > 0 {
        // SAFETY: a live descriptor; posix_fallocate returns an error number instead of setting errno.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
        match rc {
            0 => {}
            libc::EOPNOTSUPP | libc::EINVAL => {}
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
    file.set_len(size)
}

/// `.NAME.ossmirror-part-XXXXXXXX`, created exclusively, 0600, never through a symlink.
fn create_temp(dir: &OwnedFd, name: &OsStr) -> io::Result<(OwnedFd, OsString)> {
    // Keep the temporary name within NAME_MAX (255 bytes) for long target names.
    let bytes = name.as_bytes();
    let stem = &bytes[..bytes.len().min(200)];
    for _ in 0..16 {
        let mut temp = b".".to_vec();
        temp.extend_from_slice(stem);
        temp.extend_from_slice(format!(".ossmirror-part-{:08x}", fastrand::u32(..)).as_bytes());
        let temp = OsString::from_vec_(temp);
        match openat(dir, &temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600) {
            Ok(fd) => return Ok((fd, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name"))
}

trait FromVec {
    fn from_vec_(v: Vec<u8>) -> Self;
}
impl FromVec for OsString {
    fn from_vec_(v: Vec<u8>) -> Self {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(v)
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name contains NUL"))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`: a symlink at `name` fails with ELOOP.
pub fn openat(dir: &OwnedFd, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    loop {
        // SAFETY: a live directory descriptor and a NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode as libc::c_uint)
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor and nobody else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A directory by path (following symlinks: the user named it), for the targets of `cp`.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains NUL"))?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn unlinkat(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: a live directory descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Rename within one directory. A symlink at `to` is replaced, never followed.
fn renameat(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (f, t) = (c_name(from)?, c_name(to)?);
    // SAFETY: a live directory descriptor and NUL-terminated names.
    if unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fsync_dir(dir: &OwnedFd) -> io::Result<()> {
    // SAFETY: a live descriptor.
    if unsafe { libc::fsync(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::ObjectOptions;
    use crate::remote::memory::MemoryRemote;

    async fn setup(data: &[u8], metadata: Vec<(String, String)>) -> (Arc<dyn Remote>, tempfile::TempDir) {
        let remote = MemoryRemote::new();
        remote.create_bucket("b").await.unwrap();
        let options = ObjectOptions { metadata, ..Default::default() };
        remote
            .put_object("b", "k", crate::remote::Body::Bytes(bytes::Bytes::copy_from_slice(data)), &options)
            .await
            .unwrap();
        (Arc::new(remote), tempfile::tempdir().unwrap())
    }

    #[tokio::test]
    async fn ranges_in_parallel_give_the_exact_bytes_mode_and_mtime() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let meta = vec![("mtime".into(), "1600000000.123456789".into()), ("mode".into(), "100640".into())];
        let (remote, dir) = setup(&data, meta).await;
        let ck = Arc::new(Checkpoint::in_memory().unwrap());
        let d = Downloader::new(remote, Some(ck.clone()), DownloadConfig { part_size: MIN_PART_SIZE, threads: 3 });
        let target = Target::from_path(&dir.path().join("out")).unwrap();
        let out = d.download("b", "k", &target, None, None).await.unwrap();
        assert_eq!(out.verified, Verified::Crc64);
        assert_eq!(out.ranges_fetched, 1_000_003u64.div_ceil(MIN_PART_SIZE));
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.path().join("out")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_600_000_000, 123_456_789));
        assert_eq!(ck.pending().unwrap(), 0);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("out")], "no temporary file left");
    }

    #[tokio::test]
    async fn an_empty_object_becomes_an_empty_file() {
        let (remote, dir) = setup(b"", vec![]).await;
        let d = Downloader::new(remote, None, DownloadConfig::default());
        let target = Target::from_path(&dir.path().join("empty")).unwrap();
        let out = d.download("b", "k", &target, None, None).await.unwrap();
        assert_eq!((out.size, out.verified, out.ranges_fetched), (0, Verified::Crc64, 0));
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dir.path().join("empty")).unwrap();
        assert_eq!((m.len(), m.permissions().mode() & 0o7777), (0, DEFAULT_FILE_MODE));
    }

    #[tokio::test]
    async fn a_missing_object_is_reported_and_leaves_nothing() {
        let (remote, dir) = setup(b"x", vec![]).await;
        let d = Downloader::new(remote, None, DownloadConfig::default());
        let target = Target::from_path(&dir.path().join("none")).unwrap();
        let e = d.download("b", "nope", &target, None, None).await.unwrap_err();
        assert!(matches!(e, DownloadError::NotFound { .. }), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn md5_etags_are_recognised_only_when_plain() {
        assert_eq!(
            plain_md5_etag("\"D41D8CD98F00B204E9800998ECF8427E\"").as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(plain_md5_etag("\"d41d8cd98f00b204e9800998ecf8427e-2\""), None);
        assert!(needs_restore(Some("ColdArchive")) && needs_restore(Some("archive")) && !needs_restore(Some("IA")));
    }
}
