//! Crash-safe object storage under `--root`: a SQLite index plus immutable data files ("blobs").
//!
//! Layout:
//! ```text
//! <root>/LOCK                 flock'd while a server owns the directory
//! <root>/index.sqlite         buckets, objects, versions, uploads, parts, blobs (WAL, synchronous=FULL)
//! <root>/data/<ab>/<name>     blob files, named by a random id (never by key: no path traversal possible)
//! <root>/tmp/<name>           blobs being received
//! ```
//!
//! **The commit protocol.** A request body is streamed into `tmp/`, hashed on the way (MD5 + CRC-64),
//! fsync'd, renamed into `data/` and the directory fsync'd. Only then does one SQLite transaction make it
//! visible (insert the object or part row, adjust blob reference counts, drop what it replaced). A process
//! killed at any instant therefore leaves either the old state or the new one, never a torn object: before
//! the commit the blob is an unreferenced file, which the start-up sweep deletes; after it, everything the
//! row points at is durable.
//!
//! **Objects are manifests.** An object or a part is a list of pieces `(blob, offset, len)`. A PutObject has
//! one piece; CompleteMultipartUpload concatenates its parts' manifests, so completing a 1 GiB upload moves
//! no data; CopyObject and UploadPartCopy reference the source's blobs. Blobs carry a reference count
//! (one per piece of every row that lists it), updated in the same transaction as the rows; a blob whose
//! count reaches zero is unlinked after the commit.
//!
//! **Versions** (`objects`). `objects` holds the *current* version of each key, exactly what GET and
//! ListObjects serve, so an unversioned bucket costs nothing extra. `versions` holds the history: noncurrent
//! versions and every delete marker, ordered per key by a store-wide sequence number. The invariant that
//! keeps reads simple: a key with no `objects` row has either no history or a delete marker as its newest
//! `versions` row (deleting a version re-promotes the next one when needed). A version moves between the two
//! tables with its blob references unchanged. Version ids are 32 upper-case hex digits, the sequence number
//! then random bits, so they sort and resume listings without a lookup; `null` is the version of objects
//! written while versioning was off or suspended.
//!
//! **Readers never lose a file.** A GET pins the blobs of the manifest it read, under the same mutex as the
//! index, so a concurrent overwrite that drops the last reference only marks the blob doomed; the last
//! reader to unpin unlinks it. One connection behind a mutex keeps this simple; every method here is
//! blocking and runs on tokio's blocking pool.
//!
//! **Schema versions.** 1 (the first release): buckets, objects, uploads, parts, blobs. 2: bucket
//! versioning and lifecycle, object version ids, the `versions` table and the sequence counter. A store
//! of an older version is migrated in one transaction when it is opened (a crash mid-way leaves it at the
//! old version, to be migrated again).

mod blob;
mod lifecycle;
mod listing;
mod multipart;
mod objects;
mod rows;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

pub use blob::{BlobWriter, Digests, Hasher, NewBlob, Pin, slice_manifest};
pub use lifecycle::LifecycleReport;
pub use multipart::PartContent;
pub use objects::{CopyOutcome, VersionRef};

use super::error::{OssError, ServerError};
use blob::{blob_path, remove_blob_file};

/// OSS's minimum size of every part but the last, checked at Complete.
pub const MIN_PART_SIZE: u64 = 102_400;

/// The version id of objects written while versioning was off or suspended.
pub const NULL_VERSION: &str = "null";

/// A slice of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    #[serde(rename = "b")]
    pub blob: String,
    #[serde(rename = "o")]
    pub offset: u64,
    #[serde(rename = "l")]
    pub len: u64,
}

/// The pieces of an object or part, in order.
pub type Manifest = Vec<Piece>;

/// What an object carries besides its bytes; stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Returned verbatim on GET/HEAD: content-type, cache-control, content-disposition, content-encoding,
    /// content-language, expires, x-oss-meta-*, x-oss-server-side-encryption*. Names are lower case.
    pub headers: Vec<(String, String)>,
    pub acl: String,
    pub storage_class: String,
    /// Object tags in their canonical `x-oss-tagging` form (`k1=v1&k2=v2`, URL-encoded); see `tags`.
    pub tagging: Option<String>,
}

impl ObjectMeta {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One version of an object (the current one, or any noncurrent one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Without quotes: 32 upper-case hex digits, or `HEX-N` for a multipart object.
    pub etag: String,
    pub crc64: Option<u64>,
    /// Unix seconds.
    pub mtime: i64,
    /// `Normal` or `Multipart`.
    pub object_type: String,
    pub meta: ObjectMeta,
    pub manifest: Manifest,
    /// `None` in a bucket that never had versioning (no version id is reported at all); otherwise the
    /// version id, [`NULL_VERSION`] included.
    pub version_id: Option<String>,
    /// Store-wide write order (0 for objects written by schema version 1).
    seq: i64,
}

impl ObjectRecord {
    /// The version id as stored: [`NULL_VERSION`] when the bucket reports none.
    pub fn version_or_null(&self) -> &str {
        self.version_id.as_deref().unwrap_or(NULL_VERSION)
    }
}

/// A bucket's versioning state. A bucket starts unversioned; once enabled it can only be suspended, never
/// return to unversioned (as on OSS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    Unversioned,
    Enabled,
    Suspended,
}

impl Versioning {
    /// The `<Status>` of GetBucketVersioning (`None`: no status element).
    pub fn status(self) -> Option<&'static str> {
        match self {
            Versioning::Unversioned => None,
            Versioning::Enabled => Some("Enabled"),
            Versioning::Suspended => Some("Suspended"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRecord {
    pub name: String,
    pub created: i64,
    pub acl: String,
    pub versioning: Versioning,
    /// The lifecycle configuration, as stored by `lifecycle` (JSON), if any.
    pub lifecycle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub initiated: i64,
    pub meta: ObjectMeta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub part_number: u32,
    pub size: u64,
    /// Upper-case hex MD5, without quotes.
    pub etag: String,
    pub crc64: u64,
    pub mtime: i64,
    pub manifest: Manifest,
}

/// A listing entry: an object or a rolled-up common prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEntry {
    Object(Box<ObjectRecord>),
    Prefix(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<ListEntry>,
    pub truncated: bool,
}

/// One entry of ListObjectVersions: an object version or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    /// For a delete marker: key, version id and mtime are set, the rest is empty.
    pub record: ObjectRecord,
    pub delete_marker: bool,
    /// The newest entry of its key.
    pub latest: bool,
    /// When it became noncurrent (Unix seconds; meaningless for the latest entry).
    pub noncurrent_since: i64,
}

impl VersionEntry {
    pub fn version_id(&self) -> &str {
        self.record.version_or_null()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionListEntry {
    Version(Box<VersionEntry>),
    Prefix(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionsPage {
    pub entries: Vec<VersionListEntry>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEntry {
    Upload(UploadRecord),
    Prefix(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadsPage {
    pub entries: Vec<UploadEntry>,
    pub truncated: bool,
}

/// Which parts CompleteMultipartUpload assembles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSelection {
    /// `x-oss-complete-all: yes`: every uploaded part, in number order.
    All,
    /// The request body's `(PartNumber, ETag)` list; ETags without quotes.
    Listed(Vec<(u32, String)>),
}

/// What a DeleteObject did, for its `x-oss-version-id` and `x-oss-delete-marker` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The version removed or the delete marker written; `None` in an unversioned bucket.
    pub version_id: Option<String>,
    /// A delete marker was written (no version given) or removed (its version given).
    pub delete_marker: bool,
}

/// Why a storage operation was refused (mapped to OSS errors by the handlers).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("no such key")]
    NoSuchKey,
    #[error("no such version")]
    NoSuchVersion,
    /// The key's current version is a delete marker (`addressed: false`), or the version asked for is one
    /// (`addressed: true`).
    #[error("delete marker {version_id}")]
    DeleteMarker { version_id: String, addressed: bool },
    #[error("no such upload")]
    NoSuchUpload,
    #[error("object exists and overwrite is forbidden")]
    AlreadyExists,
    #[error("bucket not empty")]
    BucketNotEmpty,
    #[error("part {part_number} missing or its ETag differs")]
    InvalidPart { part_number: u32, etag: String },
    #[error("parts not in ascending order")]
    InvalidPartOrder,
    #[error("part {part_number} is {size} bytes, below the minimum")]
    EntityTooSmall { part_number: u32, size: u64 },
    #[error("{0}")]
    Rejected(OssError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Server(ServerError::Db(e))
    }
}

/// The storage engine. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    fsync: bool,
    state: Mutex<State>,
    _lock: File,
}

struct State {
    conn: Connection,
    /// Blobs being read, with reader counts.
    pins: HashMap<String, u32>,
    /// Pinned blobs that lost their last reference: unlinked by the last reader.
    doomed: HashSet<String>,
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Create `dir` and its missing parents 0700, whatever the umask: the store holds other people's files (the
/// embedded store mirrors files that may be 0600), so no other local user may list or read it. With
/// `tighten_existing`, an existing directory is made 0700 too (the store's own, made 0755 by older builds).
fn private_dirs(dir: &Path, tighten_existing: bool) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let existed = dir.is_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ServerError::io(format!("create {}", dir.display()), e))?;
    if !existed || tighten_existing {
        // DirBuilder's mode is filtered by the umask, which may also clear our own bits.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| ServerError::io(format!("chmod {}", dir.display()), e))?;
    }
    Ok(())
}

/// A file, 0600 whatever the umask (an existing one is tightened).
fn private_file(path: &Path, options: &mut fs::OpenOptions) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = options.mode(0o600).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn lock_root(root: &Path) -> Result<File, ServerError> {
    let path = root.join("LOCK");
    let file = private_file(&path, fs::OpenOptions::new().create(true).truncate(false).write(true))
        .map_err(|e| ServerError::io(format!("open {}", path.display()), e))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Err(ServerError::RootLocked(root.to_path_buf()))
        } else {
            Err(ServerError::io(format!("lock {}", path.display()), err))
        };
    }
    Ok(file)
}

impl Store {
    /// Open (or create, or migrate) the store under `root`, then sweep what a crash may have left: temp
    /// files and blob files no committed row references.
    pub fn open(root: &Path, fsync: bool) -> Result<Store, ServerError> {
        // A --root the user made is left as it is; what the store makes inside it is private (also in a
        // store written by an older build, whose files were 0644).
        private_dirs(root, false)?;
        let lock = lock_root(root)?;
        let data_dir = root.join("data");
        let tmp_dir = root.join("tmp");
        for dir in [&data_dir, &tmp_dir] {
            private_dirs(dir, true)?;
        }
        // SQLite creates the index 0644 and gives its -wal and -shm the main file's mode: create it 0600 first
        // (an existing one is tightened), so all three are private.
        let index = root.join("index.sqlite");
        private_file(&index, fs::OpenOptions::new().create(true).truncate(false).write(true))
            .map_err(|e| ServerError::io(format!("create {}", index.display()), e))?;
        for side in ["index.sqlite-wal", "index.sqlite-shm"] {
            let _ = fs::set_permissions(root.join(side), std::os::unix::fs::PermissionsExt::from_mode(0o600));
        }
        let mut conn = Connection::open(&index)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "OFF" })?;
        rows::migrate(&mut conn)?;

        let store = Store {
            inner: Arc::new(Inner {
                data_dir,
                tmp_dir,
                fsync,
                state: Mutex::new(State { conn, pins: HashMap::new(), doomed: HashSet::new() }),
                _lock: lock,
            }),
        };
        store.sweep()?;
        Ok(store)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-written (SQLite rolls the transaction
        // back), so a poisoned mutex is still safe to use.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweep(&self) -> Result<(), ServerError> {
        let tmp = &self.inner.tmp_dir;
        let entries = fs::read_dir(tmp).map_err(|e| ServerError::io(format!("read {}", tmp.display()), e))?;
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let state = self.state();
        let mut known: HashSet<String> = HashSet::new();
        {
            let mut stmt = state.conn.prepare("SELECT name FROM blobs")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            for name in rows {
                known.insert(name?);
            }
        }
        let mut removed = 0usize;
        let mut seen = HashSet::new();
        let data = &self.inner.data_dir;
        let dirs = fs::read_dir(data).map_err(|e| ServerError::io(format!("read {}", data.display()), e))?;
        for dir in dirs.flatten() {
            let Ok(files) = fs::read_dir(dir.path()) else { continue };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if known.contains(&name) {
                    seen.insert(name);
                } else if fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        let missing = known.difference(&seen).count();
        if removed > 0 {
            tracing::info!(removed, "removed blob files left by an interrupted request");
        }
        if missing > 0 {
            tracing::error!(missing, "blob files referenced by the index are missing; affected objects cannot be read");
        }
        Ok(())
    }

    pub fn blob_path(&self, name: &str) -> PathBuf {
        blob_path(&self.inner.data_dir, name)
    }

    // -----------------------------------------------------------------------------------------------------
    // Buckets

    /// Create a bucket; `Ok(false)` if it already existed (it is left unchanged).
    pub fn create_bucket(&self, name: &str, acl: &str, now: i64) -> Result<bool, StoreError> {
        let state = self.state();
        let n = state.conn.execute(
            "INSERT OR IGNORE INTO buckets(name, created, acl) VALUES(?1, ?2, ?3)",
            rusqlite::params![name, now, acl],
        )?;
        Ok(n == 1)
    }

    pub fn bucket(&self, name: &str) -> Result<Option<BucketRecord>, StoreError> {
        let state = self.state();
        Ok(rows::bucket_row(&state.conn, name)?)
    }

    pub fn list_buckets(&self) -> Result<Vec<BucketRecord>, StoreError> {
        let state = self.state();
        Ok(rows::all_buckets(&state.conn)?)
    }

    pub fn set_bucket_acl(&self, name: &str, acl: &str) -> Result<(), StoreError> {
        let state = self.state();
        let n = state.conn.execute("UPDATE buckets SET acl=?2 WHERE name=?1", rusqlite::params![name, acl])?;
        if n == 0 { Err(StoreError::NoSuchBucket) } else { Ok(()) }
    }

    /// PutBucketVersioning: `Enabled` or `Suspended` (a bucket never returns to unversioned).
    pub fn set_versioning(&self, name: &str, versioning: Versioning) -> Result<(), StoreError> {
        let status = versioning.status().ok_or_else(|| {
            StoreError::Server(ServerError::Config("versioning can only be enabled or suspended".into()))
        })?;
        let state = self.state();
        let n =
            state.conn.execute("UPDATE buckets SET versioning=?2 WHERE name=?1", rusqlite::params![name, status])?;
        if n == 0 { Err(StoreError::NoSuchBucket) } else { Ok(()) }
    }

    /// Put (`Some`) or delete (`None`) the bucket's lifecycle configuration (the JSON `lifecycle` stores).
    pub fn set_lifecycle(&self, name: &str, config: Option<&str>) -> Result<(), StoreError> {
        let state = self.state();
        let n = state.conn.execute("UPDATE buckets SET lifecycle=?2 WHERE name=?1", rusqlite::params![name, config])?;
        if n == 0 { Err(StoreError::NoSuchBucket) } else { Ok(()) }
    }

    pub fn delete_bucket(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if rows::bucket_row(&tx, name)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        // Noncurrent versions and delete markers count: OSS refuses to delete a bucket that still has any.
        let mut used = false;
        for table in ["objects", "versions", "uploads"] {
            let sql = format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE bucket=?1)");
            used |= tx.query_row(&sql, [name], |r| r.get::<_, bool>(0))?;
        }
        if used {
            return Err(StoreError::BucketNotEmpty);
        }
        tx.execute("DELETE FROM buckets WHERE name=?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------------------
    // Blob reference bookkeeping

    /// Start receiving a blob into `tmp/`.
    pub fn begin_blob(&self) -> Result<BlobWriter, ServerError> {
        BlobWriter::create(self.clone())
    }

    fn pin_locked(&self, state: &mut State, manifest: &Manifest) -> Pin {
        let mut blobs: Vec<String> = manifest.iter().map(|p| p.blob.clone()).collect();
        blobs.sort();
        blobs.dedup();
        for b in &blobs {
            *state.pins.entry(b.clone()).or_insert(0) += 1;
        }
        Pin::new(self.clone(), blobs)
    }

    /// Unlink blobs that lost their last reference, or leave them to their last reader.
    fn release(&self, state: &mut State, garbage: Vec<String>) {
        for name in garbage {
            if state.pins.contains_key(&name) {
                state.doomed.insert(name);
            } else {
                remove_blob_file(&self.inner.data_dir, &name);
            }
        }
    }

    fn unpin(&self, blobs: &[String]) {
        let mut state = self.state();
        for b in blobs {
            let gone = match state.pins.get_mut(b) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    state.pins.remove(b);
                    true
                }
                None => false,
            };
            if gone && state.doomed.remove(b) {
                remove_blob_file(&self.inner.data_dir, b);
            }
        }
    }

    /// Number of blob files referenced by the index (for tests and diagnostics).
    pub fn blob_count(&self) -> Result<u64, StoreError> {
        let state = self.state();
        Ok(state.conn.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Number of blob files on disk (for tests: it must match [`Store::blob_count`] when nothing is pinned).
    pub fn blob_files_on_disk(&self) -> u64 {
        let mut n = 0;
        if let Ok(dirs) = fs::read_dir(&self.inner.data_dir) {
            for dir in dirs.flatten() {
                if let Ok(files) = fs::read_dir(dir.path()) {
                    n += files.flatten().count() as u64;
                }
            }
        }
        n
    }
}

/// A test-only way to die at an exact point of a commit: the process SIGKILLs itself, exactly what a crash
/// or `kill -9` at that instant does. Enabled by the environment variable `OSSMIRROR_SERVE_CRASH_AT=<point>`
/// (read once per process); the points are `blob_durable` (a received blob is in `data/`, not yet
/// committed), `complete_before_commit`, `complete_after_commit`, and `version_before_commit` (a versioned
/// PUT, Copy or DELETE has moved the old current version into the history, not yet committed).
fn crash_point(point: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("OSSMIRROR_SERVE_CRASH_AT").ok());
    if wanted.as_deref() == Some(point) {
        tracing::warn!(point, "crash point reached: killing the process");
        // SAFETY: signalling our own process; SIGKILL cannot be caught, so nothing runs after it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
