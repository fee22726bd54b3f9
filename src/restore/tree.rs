//! `restore`: every object under a prefix into a directory, `jobs` files at a time.
//!
//! The listing is read page by page (memory does not grow with the bucket). For each key:
//! - it must map to a plain relative path ([`super::keys`]); otherwise it is refused and reported;
//! - directory markers (keys ending in `/`) are skipped; Archive/ColdArchive objects are reported (they need
//!   RestoreObject first);
//! - its parent directories are created one component at a time below the target, each opened with
//!   `O_NOFOLLOW | O_DIRECTORY` from the one above, so a symlink (or a file) inside the target is never
//!   followed: the key fails with a message instead;
//! - a local file already there is compared by size and CRC-64 (the object's checksum: CRC-64/XZ, on S3
//!   CRC-64/NVME or a plain MD5 ETag; with `fast`, or when the object has no checksum, by size and the mtime
//!   from the metadata). An identical file is not touched. A differing one is left alone and reported,
//!   unless `overwrite`;
//! - otherwise it is downloaded with [`Downloader`] (resumable through its checkpoint, so a restore killed
//!   mid-file resumes that file where it stopped, and finished files are then skipped as identical).
//!
//! Each key ends as one [`Event`]; the [`Summary`] counts them. Anything but downloaded, identical, markers
//! and (in a dry run) "would download" makes the restore unsuccessful (exit 1).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;

use super::download::{self, DownloadError, Downloader, Target, Verified, needs_restore, openat};
use super::keys::{self, KeyPath};
use super::meta::FileMeta;
use crate::remote::{ListObjectsRequest, ListedObject, ObjectInfo, RemoteError};
use crate::watch::escape_path;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub bucket: String,
    /// Normalized: empty or ending in `/`.
    pub prefix: String,
    pub jobs: usize,
    pub overwrite: bool,
    pub dry_run: bool,
    pub fast: bool,
}

/// What happened to one key.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `downloaded`, `unverified`, `identical`, `would_download`, `differs`, `refused`, `needs_restore`,
    /// `failed`, `marker`.
    pub kind: &'static str,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges_reused: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    fn new(kind: &'static str, key: &str, path: Option<&Path>) -> Event {
        Event {
            kind,
            key: key.to_string(),
            path: path.map(escape_path),
            size: None,
            verified: None,
            ranges_reused: None,
            detail: None,
        }
    }
    fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = Some(d.into());
        self
    }
    fn size(mut self, s: u64) -> Event {
        self.size = Some(s);
        self
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub objects: u64,
    pub downloaded: u64,
    pub downloaded_bytes: u64,
    pub identical: u64,
    pub would_download: u64,
    pub differs: u64,
    pub refused: u64,
    pub needs_restore: u64,
    pub failed: u64,
    pub unverified: u64,
    pub markers: u64,
    pub dry_run: bool,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.differs == 0 && self.refused == 0 && self.needs_restore == 0 && self.failed == 0 && self.unverified == 0
    }

    fn count(&mut self, e: &Event) {
        self.objects += 1;
        match e.kind {
            "downloaded" => {
                self.downloaded += 1;
                self.downloaded_bytes += e.size.unwrap_or(0);
            }
            "unverified" => {
                self.unverified += 1;
                self.downloaded_bytes += e.size.unwrap_or(0);
            }
            "identical" => self.identical += 1,
            "would_download" => self.would_download += 1,
            "differs" => self.differs += 1,
            "refused" => self.refused += 1,
            "needs_restore" => self.needs_restore += 1,
            "marker" => self.markers += 1,
            _ => self.failed += 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("listing {object}: {source}")]
    List { object: String, source: RemoteError },
    #[error("the target directory {path}: {source}")]
    Target { path: String, source: io::Error },
}

/// Keys per listing page.
const LIST_PAGE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Restorer {
    downloader: Downloader,
    /// `None` only in a dry run into a directory that does not exist.
    root: Option<Arc<OwnedFd>>,
    root_path: PathBuf,
    options: Arc<RestoreOptions>,
}

impl Restorer {
    /// `to` is created if missing; it must be a directory.
    pub fn new(downloader: Downloader, to: &Path, options: RestoreOptions) -> Result<Restorer, RestoreError> {
        let target_err = |source| RestoreError::Target { path: escape_path(to), source };
        match std::fs::metadata(to) {
            Ok(m) if !m.is_dir() => {
                return Err(target_err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !options.dry_run => {
                std::fs::create_dir_all(to).map_err(target_err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(target_err(e)),
        }
        // A dry run into a directory that does not exist yet: everything would be downloaded.
        let (root, root_path) = if to.exists() {
            let root_path = std::fs::canonicalize(to).map_err(target_err)?;
            (Some(Arc::new(download::open_dir(&root_path).map_err(target_err)?)), root_path)
        } else {
            (None, to.to_path_buf())
        };
        let mut options = options;
        options.jobs = options.jobs.max(1);
        Ok(Restorer { downloader, root, root_path, options: Arc::new(options) })
    }

    /// Restore everything under the prefix; `on_event` sees each key's outcome as it happens.
    pub async fn run(&self, on_event: &(dyn Fn(&Event) + Send + Sync)) -> Result<Summary, RestoreError> {
        let mut summary = Summary { kind: "summary", dry_run: self.options.dry_run, ..Default::default() };
        let mut jobs: JoinSet<Event> = JoinSet::new();
        let mut request = ListObjectsRequest {
            prefix: (!self.options.prefix.is_empty()).then(|| self.options.prefix.clone()),
            max_keys: Some(LIST_PAGE),
            ..Default::default()
        };
        loop {
            let page =
                self.downloader.remote().list_objects(&self.options.bucket, &request).await.map_err(|source| {
                    RestoreError::List {
                        object: self.downloader.object_name(&self.options.bucket, &self.options.prefix),
                        source,
                    }
                })?;
            for object in page.objects {
                while jobs.len() >= self.options.jobs {
                    if let Some(done) = jobs.join_next().await {
                        let e = done.unwrap_or_else(|e| Event::new("failed", "?", None).detail(e.to_string()));
                        summary.count(&e);
                        on_event(&e);
                    }
                }
                let me = self.clone();
                jobs.spawn(async move { me.restore_one(object).await });
            }
            match page.next_continuation_token {
                Some(token) if request.continuation_token.as_deref() != Some(token.as_str()) => {
                    request.continuation_token = Some(token)
                }
                Some(_) => {
                    return Err(RestoreError::List {
                        object: self.downloader.object_name(&self.options.bucket, &self.options.prefix),
                        source: RemoteError::BadResponse {
                            op: "ListObjectsV2",
                            detail: "the continuation token did not advance".into(),
                            request_id: None,
                        },
                    });
                }
                None => break,
            }
        }
        while let Some(done) = jobs.join_next().await {
            let e = done.unwrap_or_else(|e| Event::new("failed", "?", None).detail(e.to_string()));
            summary.count(&e);
            on_event(&e);
        }
        Ok(summary)
    }

    async fn restore_one(&self, object: ListedObject) -> Event {
        let o = &self.options;
        let key = object.key.as_str();
        let rel = match keys::local_path(&o.prefix, key) {
            Ok(KeyPath::File(rel)) => rel,
            Ok(KeyPath::Marker) => return Event::new("marker", key, None),
            Err(why) => return Event::new("refused", key, None).detail(format!("not restored: {why}")),
        };
        let path = self.root_path.join(&rel);
        if needs_restore(object.storage_class.as_deref()) {
            return Event::new("needs_restore", key, Some(&path)).size(object.size).detail(format!(
                "in the {} storage class: run RestoreObject on it first (e.g. `ossutil restore`), then restore again",
                object.storage_class.as_deref().unwrap_or("?")
            ));
        }
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            return Event::new("refused", key, None).detail("not restored: no file name");
        };
        let (root, create) = (self.root.clone(), !o.dry_run);
        let parent_for_open = parent.clone();
        let opened = tokio::task::spawn_blocking(move || match root {
            Some(root) => open_parent(&root, &parent_for_open, create),
            None => Ok(None),
        });
        let dir = match opened.await {
            Ok(Ok(dir)) => dir,
            Ok(Err(e)) => return Event::new("failed", key, Some(&path)).detail(parent_error(&parent, &e)),
            Err(e) => return Event::new("failed", key, Some(&path)).detail(e.to_string()),
        };
        // Nothing there (the usual case of a restore): no HEAD, one GET for a small object.
        let present = match &dir {
            None => false,
            Some(dir) => {
                let (dir, name) = (dir.clone(), name.clone());
                match tokio::task::spawn_blocking(move || exists(&dir, &name)).await {
                    Ok(Ok(present)) => present,
                    Ok(Err(e)) => {
                        return Event::new("failed", key, Some(&path))
                            .detail(format!("looking at the local file: {e}"));
                    }
                    Err(e) => return Event::new("failed", key, Some(&path)).detail(e.to_string()),
                }
            }
        };
        if !present {
            if o.dry_run {
                return Event::new("would_download", key, Some(&path)).size(object.size);
            }
            if let Some(dir) = dir.clone() {
                let target = Target { dir, dir_path: self.root_path.join(&parent), name: name.clone() };
                let result = self.downloader.download_small(&o.bucket, key, &target, object.size).await;
                return self.downloaded(key, &path, result);
            }
        }
        let head = match self.downloader.remote().head_object(&o.bucket, key).await {
            Ok(Some(h)) => h,
            Ok(None) => return Event::new("failed", key, Some(&path)).detail("deleted before it could be restored"),
            Err(e) => return Event::new("failed", key, Some(&path)).detail(e.to_string()),
        };
        let local = match &dir {
            None => Local::Missing,
            Some(dir) => {
                let (dir, name, head, fast) = (dir.clone(), name.clone(), head.clone(), o.fast);
                match tokio::task::spawn_blocking(move || compare_local(&dir, &name, &head, fast)).await {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => {
                        return Event::new("failed", key, Some(&path)).detail(format!("reading the local file: {e}"));
                    }
                    Err(e) => return Event::new("failed", key, Some(&path)).detail(e.to_string()),
                }
            }
        };
        match local {
            Local::Identical => return Event::new("identical", key, Some(&path)).size(head.size),
            Local::Directory => {
                return Event::new("failed", key, Some(&path)).detail("a directory is in the way; not touched");
            }
            Local::Differs(why) if !o.overwrite => {
                return Event::new("differs", key, Some(&path))
                    .size(head.size)
                    .detail(format!("{why}; left alone (--overwrite replaces it)"));
            }
            Local::Differs(_) | Local::Missing => {}
        }
        if o.dry_run {
            return Event::new("would_download", key, Some(&path)).size(head.size);
        }
        let Some(dir) = dir else {
            return Event::new("failed", key, Some(&path)).detail("its directory could not be created");
        };
        let target = Target { dir, dir_path: self.root_path.join(&parent), name };
        let result = self.downloader.download(&o.bucket, key, &target, Some(head), None).await;
        self.downloaded(key, &path, result)
    }

    fn downloaded(&self, key: &str, path: &Path, result: Result<download::Outcome, DownloadError>) -> Event {
        let path = Some(path);
        match result {
            Ok(out) => {
                let mut e = Event::new(if out.verified.is_verified() { "downloaded" } else { "unverified" }, key, path)
                    .size(out.size);
                e.verified = Some(out.verified);
                e.ranges_reused = (out.ranges_reused > 0).then_some(out.ranges_reused);
                if out.restarted {
                    e.detail = Some("the object was replaced mid-download; the new one was downloaded".into());
                }
                e
            }
            Err(DownloadError::NeedsRestore { class, .. }) => Event::new("needs_restore", key, path)
                .detail(format!("in the {class} storage class: run RestoreObject on it first, then restore again")),
            Err(e) => Event::new("failed", key, path).detail(e.to_string()),
        }
    }
}

/// Whether anything (a file, a directory, a symlink: not followed) is at `name` in `dir`.
fn exists(dir: &OwnedFd, name: &OsStr) -> io::Result<bool> {
    match openat(dir, name, libc::O_PATH, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn parent_error(parent: &Path, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => format!(
            "a symlink or a file is in the way in {} inside the target directory; not followed, nothing written",
            escape_path(parent)
        ),
        _ => format!("creating its directory {}: {e}", escape_path(parent)),
    }
}

/// The directory `rel` below `root`, each component opened without following symlinks; created when
/// `create` (else `None` when a component is missing).
pub fn open_parent(root: &OwnedFd, rel: &Path, create: bool) -> io::Result<Option<Arc<OwnedFd>>> {
    let mut dir = root.try_clone()?;
    for component in rel.components() {
        let std::path::Component::Normal(name) = component else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path"));
        };
        if create {
            mkdirat(&dir, name)?;
        }
        match openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(next) => dir = next,
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Arc::new(dir)))
}

fn mkdirat(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a live directory descriptor and a NUL-terminated name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Ok(())
}

/// What is at the target path now.
#[derive(Debug, PartialEq, Eq)]
enum Local {
    Missing,
    Identical,
    Directory,
    Differs(String),
}

/// Compare the local file `name` in `dir` with the object, without following a symlink there.
fn compare_local(dir: &OwnedFd, name: &OsStr, head: &ObjectInfo, fast: bool) -> io::Result<Local> {
    let file = match openat(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
        Ok(fd) => File::from(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Local::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Local::Differs("a symlink is there (not followed)".into()));
        }
        Err(e) => return Err(e),
    };
    let m = file.metadata()?;
    if m.is_dir() {
        return Ok(Local::Directory);
    }
    if !m.is_file() {
        return Ok(Local::Differs("not a regular file".into()));
    }
    if m.len() != head.size {
        return Ok(Local::Differs(format!("the local file has {} bytes, the object {}", m.len(), head.size)));
    }
    let meta = FileMeta::from_metadata(&head.metadata);
    let by_mtime = || {
        let same = match meta.mtime {
            Some((s, ns)) => m.mtime() == s && m.mtime_nsec() == i64::from(ns),
            // Last-Modified has whole seconds.
            None => head.last_modified.is_some_and(|t| crate::timefmt::unix_secs(t) == m.mtime()),
        };
        if same { Local::Identical } else { Local::Differs("same size, different mtime".into()) }
    };
    let has_checksum = head.crc64.is_some() || head.crc64nvme.is_some() || is_plain_md5(&head.etag);
    if fast || !has_checksum {
        return Ok(by_mtime());
    }
    let mut crc = crate::checksum::Crc64::new();
    let mut nvme = crate::checksum::Crc64Nvme::new();
    let mut md5 = <md5::Md5 as md5::Digest>::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut offset = 0;
    while offset < m.len() {
        let n = (m.len() - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        if head.crc64.is_some() {
            crc.update(&buf[..n]);
        } else if head.crc64nvme.is_some() {
            nvme.update(&buf[..n]);
        } else {
            md5::Digest::update(&mut md5, &buf[..n]);
        }
        offset += n as u64;
    }
    let same = if let Some(server) = head.crc64 {
        crc.finish() == server
    } else if let Some(server) = head.crc64nvme {
        nvme.finish() == server
    } else {
        hex::encode(md5::Digest::finalize(md5)).eq_ignore_ascii_case(head.etag.trim_matches('"'))
    };
    Ok(if same { Local::Identical } else { Local::Differs("same size, different content".into()) })
}

fn is_plain_md5(etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    bare.len() == 32 && bare.bytes().all(|b| b.is_ascii_hexdigit())
}
