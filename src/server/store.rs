//! Crash-safe object storage under `--root`: a SQLite index plus immutable data files ("blobs").
//!
//! Layout:
//! ```text
//! <root>/LOCK                 flock'd while a server owns the directory
//! <root>/index.sqlite         buckets, objects, uploads, parts, blobs (WAL, synchronous=FULL)
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
//! (one per piece), updated in the same transaction as the rows; a blob whose count reaches zero is
//! unlinked after the commit.
//!
//! **Readers never lose a file.** A GET pins the blobs of the manifest it read, under the same mutex as the
//! index, so a concurrent overwrite that drops the last reference only marks the blob doomed; the last
//! reader to unpin unlinks it. One connection behind a mutex keeps this simple; every method here is
//! blocking and runs on tokio's blocking pool.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use md5::{Digest as _, Md5};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::error::{OssError, ServerError};
use crate::checksum::{Crc64, crc64_fold};

/// OSS's minimum size of every part but the last, checked at Complete.
pub const MIN_PART_SIZE: u64 = 102_400;

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
    pub tagging: Option<String>,
}

impl ObjectMeta {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRecord {
    pub name: String,
    pub created: i64,
    pub acl: String,
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

/// Why a storage operation was refused (mapped to OSS errors by the handlers).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("no such key")]
    NoSuchKey,
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

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
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

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty document rather than panic.
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str, what: &str) -> Result<T, ServerError> {
    serde_json::from_str(s).map_err(|e| ServerError::Corrupt(format!("{what}: {e}")))
}

fn key_text(bytes: Vec<u8>) -> Result<String, ServerError> {
    String::from_utf8(bytes).map_err(|_| ServerError::Corrupt("a key is not UTF-8".into()))
}

/// The smallest byte string greater than every string starting with `prefix` (None: no such bound).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xFF {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

fn new_blob_name() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Upload ids sort by initiation time (the first 16 hex digits are nanoseconds), which gives
/// ListMultipartUploads its per-key order for free.
fn new_upload_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!("{nanos:016X}{:016X}", fastrand::u64(..))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Create `dir` and its missing parents 0700, whatever the umask: the store holds other people's files (the
/// embedded store mirrors files that may be 0600), so no other local user may list or read it.
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

/// A new file, 0600 whatever the umask.
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
    /// Open (or create) the store under `root`, then sweep what a crash may have left: temp files and blob
    /// files no committed row references.
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
        // SQLite creates the index with 0644 and gives its -wal and -shm the main file's mode: create it 0600
        // first (an existing one is tightened), so all three are private.
        let index = root.join("index.sqlite");
        private_file(&index, fs::OpenOptions::new().create(true).truncate(false).write(true))
            .map_err(|e| ServerError::io(format!("create {}", index.display()), e))?;
        for side in ["index.sqlite-wal", "index.sqlite-shm"] {
            let _ = fs::set_permissions(root.join(side), std::os::unix::fs::PermissionsExt::from_mode(0o600));
        }
        let conn = Connection::open(&index)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "OFF" })?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(ServerError::Corrupt(format!(
                "index schema version {version} is newer than this ossmirror ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;

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

    /// Start receiving a blob into `tmp/`.
    pub fn begin_blob(&self) -> Result<BlobWriter, ServerError> {
        let name = new_blob_name();
        let tmp_path = self.inner.tmp_dir.join(&name);
        let file = private_file(&tmp_path, fs::OpenOptions::new().write(true).create(true).truncate(true))
            .map_err(|e| ServerError::io(format!("create {}", tmp_path.display()), e))?;
        Ok(BlobWriter { store: self.clone(), file: Some(file), tmp_path, name, written: 0, flushed: 0 })
    }

    // -----------------------------------------------------------------------------------------------------
    // Buckets

    /// Create a bucket; `Ok(false)` if it already existed (it is left unchanged).
    pub fn create_bucket(&self, name: &str, acl: &str, now: i64) -> Result<bool, StoreError> {
        let state = self.state();
        let n = state
            .conn
            .execute("INSERT OR IGNORE INTO buckets(name, created, acl) VALUES(?1, ?2, ?3)", params![name, now, acl])?;
        Ok(n == 1)
    }

    pub fn bucket(&self, name: &str) -> Result<Option<BucketRecord>, StoreError> {
        let state = self.state();
        Ok(bucket_row(&state.conn, name)?)
    }

    pub fn list_buckets(&self) -> Result<Vec<BucketRecord>, StoreError> {
        let state = self.state();
        let mut stmt = state.conn.prepare("SELECT name, created, acl FROM buckets ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok(BucketRecord { name: r.get(0)?, created: r.get(1)?, acl: r.get(2)? }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn set_bucket_acl(&self, name: &str, acl: &str) -> Result<(), StoreError> {
        let state = self.state();
        let n = state.conn.execute("UPDATE buckets SET acl=?2 WHERE name=?1", params![name, acl])?;
        if n == 0 { Err(StoreError::NoSuchBucket) } else { Ok(()) }
    }

    pub fn delete_bucket(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if bucket_row(&tx, name)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let objects: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM objects WHERE bucket=?1)", [name], |r| r.get(0))?;
        let uploads: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM uploads WHERE bucket=?1)", [name], |r| r.get(0))?;
        if objects || uploads {
            return Err(StoreError::BucketNotEmpty);
        }
        tx.execute("DELETE FROM buckets WHERE name=?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------------------
    // Objects

    pub fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectRecord, StoreError> {
        let state = self.state();
        if bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        object_row(&state.conn, bucket, key)?.ok_or(StoreError::NoSuchKey)
    }

    /// Read an object's record and pin its blobs so they outlive a concurrent overwrite while being read.
    pub fn open_object(&self, bucket: &str, key: &str) -> Result<(ObjectRecord, Pin), StoreError> {
        let mut state = self.state();
        if bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let record = object_row(&state.conn, bucket, key)?.ok_or(StoreError::NoSuchKey)?;
        let pin = self.pin_locked(&mut state, &record.manifest);
        Ok((record, pin))
    }

    fn pin_locked(&self, state: &mut State, manifest: &Manifest) -> Pin {
        let mut blobs: Vec<String> = manifest.iter().map(|p| p.blob.clone()).collect();
        blobs.sort();
        blobs.dedup();
        for b in &blobs {
            *state.pins.entry(b.clone()).or_insert(0) += 1;
        }
        Pin { store: self.clone(), blobs }
    }

    /// Commit a received blob as an object (PutObject).
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
        if bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let old = object_row(&tx, bucket, key)?;
        if forbid_overwrite && old.is_some() {
            return Err(StoreError::AlreadyExists);
        }
        let manifest = blob.manifest();
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
            manifest,
        };
        write_object(&tx, &record)?;
        let mut garbage = Vec::new();
        if let Some(old) = &old {
            decref_manifest(&tx, &old.manifest, &mut garbage)?;
        }
        tx.commit()?;
        blob.committed = true;
        self.release(&mut state, garbage);
        Ok(record)
    }

    /// CopyObject: the destination references the source's blobs. `make_meta` sees the source (for
    /// conditions and the metadata directive) and may refuse.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        forbid_overwrite: bool,
        now: i64,
        make_meta: impl FnOnce(&ObjectRecord) -> Result<ObjectMeta, OssError>,
    ) -> Result<ObjectRecord, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if bucket_row(&tx, src_bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let src = object_row(&tx, src_bucket, src_key)?.ok_or(StoreError::NoSuchKey)?;
        if bucket_row(&tx, dst_bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let meta = make_meta(&src).map_err(StoreError::Rejected)?;
        let old = object_row(&tx, dst_bucket, dst_key)?;
        if forbid_overwrite && old.is_some() {
            return Err(StoreError::AlreadyExists);
        }
        // Take the new references before dropping the old ones: copying an object onto itself must not
        // free its blobs in between. The source row holds references, so no blob needs resurrecting.
        incref_manifest(&tx, &HashSet::new(), &src.manifest, &mut Vec::new())?;
        let record = ObjectRecord { bucket: dst_bucket.to_string(), key: dst_key.to_string(), mtime: now, meta, ..src };
        write_object(&tx, &record)?;
        let mut garbage = Vec::new();
        if let Some(old) = &old {
            decref_manifest(&tx, &old.manifest, &mut garbage)?;
        }
        tx.commit()?;
        self.release(&mut state, garbage);
        Ok(record)
    }

    /// DeleteObject; `Ok(false)` when there was nothing to delete.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<bool, StoreError> {
        let deleted = self.delete_objects(bucket, &[key.to_string()])?;
        Ok(deleted.first().copied().unwrap_or(false))
    }

    /// Delete several keys in one transaction; returns, per key, whether it existed.
    pub fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let mut garbage = Vec::new();
        let mut existed = Vec::with_capacity(keys.len());
        for key in keys {
            match object_row(&tx, bucket, key)? {
                Some(old) => {
                    tx.execute("DELETE FROM objects WHERE bucket=?1 AND key=?2", params![bucket, key.as_bytes()])?;
                    decref_manifest(&tx, &old.manifest, &mut garbage)?;
                    existed.push(true);
                }
                None => existed.push(false),
            }
        }
        tx.commit()?;
        self.release(&mut state, garbage);
        Ok(existed)
    }

    pub fn set_object_acl(&self, bucket: &str, key: &str, acl: &str) -> Result<(), StoreError> {
        let mut state = self.state();
        let tx = state.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let mut record = object_row(&tx, bucket, key)?.ok_or(StoreError::NoSuchKey)?;
        record.meta.acl = acl.to_string();
        tx.execute(
            "UPDATE objects SET meta=?3 WHERE bucket=?1 AND key=?2",
            params![bucket, key.as_bytes(), to_json(&record.meta)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// One page of a listing (ListObjects / ListObjectsV2): keys starting with `prefix`, strictly after
    /// `after`, rolled up at `delimiter`, at most `max` entries (objects and prefixes together).
    ///
    /// A common prefix is emitted only if it sorts after `after`, which makes a prefix itself a valid
    /// resume point (S3's and OSS's `NextMarker` can be one).
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let state = self.state();
        if bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        let prefix_b = prefix.as_bytes();
        let after_b = after.map(str::as_bytes);
        let mut lower: Vec<u8> = match after_b {
            Some(a) if a >= prefix_b => a.to_vec(),
            _ => prefix_b.to_vec(),
        };
        let mut page = ListPage::default();
        const BATCH: i64 = 256;
        let mut stmt = state.conn.prepare(
            "SELECT key, size, etag, crc64, mtime, otype, meta, manifest FROM objects
             WHERE bucket=?1 AND key>=?2 ORDER BY key LIMIT ?3",
        )?;
        'outer: loop {
            let mut rows = stmt.query(params![bucket, lower, BATCH])?;
            let mut seen = 0i64;
            let mut jumped = false;
            while let Some(row) = rows.next()? {
                seen += 1;
                let key: Vec<u8> = row.get(0)?;
                if !key.starts_with(prefix_b) {
                    break 'outer;
                }
                if after_b.is_some_and(|a| key.as_slice() <= a) {
                    lower = key;
                    lower.push(0);
                    continue;
                }
                if let Some(d) = delimiter.filter(|d| !d.is_empty())
                    && let Some(pos) = find(&key[prefix_b.len()..], d.as_bytes())
                {
                    let cp = key[..prefix_b.len() + pos + d.len()].to_vec();
                    if after_b.is_none_or(|a| cp.as_slice() > a) {
                        if page.entries.len() >= max {
                            page.truncated = true;
                            break 'outer;
                        }
                        page.entries.push(ListEntry::Prefix(key_text(cp.clone())?));
                    }
                    // Skip every other key under this prefix in one step.
                    match prefix_successor(&cp) {
                        Some(next) => lower = next,
                        None => break 'outer,
                    }
                    jumped = true;
                    break;
                }
                if page.entries.len() >= max {
                    page.truncated = true;
                    break 'outer;
                }
                page.entries.push(ListEntry::Object(Box::new(object_from_row(bucket, key.clone(), row)?)));
                // The smallest key after this one.
                lower = key;
                lower.push(0);
            }
            if !jumped && seen < BATCH {
                break;
            }
        }
        Ok(page)
    }

    // -----------------------------------------------------------------------------------------------------
    // Multipart uploads

    pub fn create_upload(&self, bucket: &str, key: &str, meta: &ObjectMeta, now: i64) -> Result<String, StoreError> {
        let state = self.state();
        if bucket_row(&state.conn, bucket)?.is_none() {
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
        if bucket_row(&state.conn, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        upload_row(&state.conn, bucket, key, upload_id)?.ok_or(StoreError::NoSuchUpload)
    }

    /// Commit a part: either a received blob or (UploadPartCopy) pieces of existing blobs, whose MD5 and
    /// CRC the caller computed while holding a [`Pin`] on them. Uploading the same number again replaces it.
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
        if bucket_row(&tx, bucket)?.is_none() {
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
        if bucket_row(&state.conn, bucket)?.is_none() {
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
        if bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
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
        let old = object_row(&tx, bucket, key)?;
        if forbid_overwrite && old.is_some() {
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
        };
        // The chosen parts' references move to the object unchanged; parts left out lose theirs.
        let mut garbage = Vec::new();
        let chosen_set: HashSet<usize> = chosen.iter().copied().collect();
        for (i, part) in all.iter().enumerate() {
            if !chosen_set.contains(&i) {
                decref_manifest(&tx, &part.manifest, &mut garbage)?;
            }
        }
        if let Some(old) = &old {
            decref_manifest(&tx, &old.manifest, &mut garbage)?;
        }
        write_object(&tx, &record)?;
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
        if bucket_row(&tx, bucket)?.is_none() {
            return Err(StoreError::NoSuchBucket);
        }
        upload_row(&tx, bucket, key, upload_id)?.ok_or(StoreError::NoSuchUpload)?;
        let mut garbage = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT manifest FROM parts WHERE upload_id=?1")?;
            let manifests: Vec<String> = stmt.query_map([upload_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
            for m in manifests {
                decref_manifest(&tx, &from_json::<Manifest>(&m, "part manifest")?, &mut garbage)?;
            }
        }
        tx.execute("DELETE FROM parts WHERE upload_id=?1", [upload_id])?;
        tx.execute("DELETE FROM uploads WHERE upload_id=?1", [upload_id])?;
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
        if bucket_row(&state.conn, bucket)?.is_none() {
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

    // -----------------------------------------------------------------------------------------------------
    // Blob reference bookkeeping

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

    /// Whether blob files on disk match the index exactly: returns (files on disk, rows in the index).
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
/// committed), `complete_before_commit` and `complete_after_commit`.
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

fn blob_path(data_dir: &Path, name: &str) -> PathBuf {
    let fan = name.get(..2).unwrap_or("00");
    data_dir.join(fan).join(name)
}

fn remove_blob_file(data_dir: &Path, name: &str) {
    let path = blob_path(data_dir, name);
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        // The start-up sweep will retry; a leftover file wastes space but is never served.
        tracing::warn!(path = %path.display(), error = %e, "cannot remove an unreferenced blob");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bucket_row(conn: &Connection, name: &str) -> Result<Option<BucketRecord>, rusqlite::Error> {
    conn.query_row("SELECT name, created, acl FROM buckets WHERE name=?1", [name], |r| {
        Ok(BucketRecord { name: r.get(0)?, created: r.get(1)?, acl: r.get(2)? })
    })
    .optional()
}

fn object_from_row(bucket: &str, key: Vec<u8>, row: &rusqlite::Row<'_>) -> Result<ObjectRecord, StoreError> {
    let meta: String = row.get(6)?;
    let manifest: String = row.get(7)?;
    Ok(ObjectRecord {
        bucket: bucket.to_string(),
        key: key_text(key)?,
        size: row.get::<_, i64>(1)? as u64,
        etag: row.get(2)?,
        crc64: row.get::<_, Option<i64>>(3)?.map(|c| c as u64),
        mtime: row.get(4)?,
        object_type: row.get(5)?,
        meta: from_json(&meta, "object meta")?,
        manifest: from_json(&manifest, "object manifest")?,
    })
}

fn object_row(conn: &Connection, bucket: &str, key: &str) -> Result<Option<ObjectRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, size, etag, crc64, mtime, otype, meta, manifest FROM objects WHERE bucket=?1 AND key=?2",
    )?;
    let mut rows = stmt.query(params![bucket, key.as_bytes()])?;
    match rows.next()? {
        Some(row) => Ok(Some(object_from_row(bucket, row.get(0)?, row)?)),
        None => Ok(None),
    }
}

fn write_object(conn: &Connection, r: &ObjectRecord) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT OR REPLACE INTO objects(bucket, key, size, etag, crc64, mtime, otype, meta, manifest)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            r.bucket,
            r.key.as_bytes(),
            r.size as i64,
            r.etag,
            r.crc64.map(|c| c as i64),
            r.mtime,
            r.object_type,
            to_json(&r.meta),
            to_json(&r.manifest)
        ],
    )?;
    Ok(())
}

fn upload_row(conn: &Connection, bucket: &str, key: &str, upload_id: &str) -> Result<Option<UploadRecord>, StoreError> {
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

fn part_from_row(row: &rusqlite::Row<'_>) -> Result<PartRecord, StoreError> {
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

fn part_row(conn: &Connection, upload_id: &str, part_number: u32) -> Result<Option<PartRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT part_number, size, etag, crc64, mtime, manifest FROM parts WHERE upload_id=?1 AND part_number=?2",
    )?;
    let mut rows = stmt.query(params![upload_id, part_number])?;
    match rows.next()? {
        Some(row) => Ok(Some(part_from_row(row)?)),
        None => Ok(None),
    }
}

/// Take one reference per piece. UploadPartCopy reads its source under a [`Pin`] before committing, so a
/// source blob may have lost its last reference meanwhile: it is then doomed but its file still exists, and
/// it gets a row again (`resurrected`; the caller takes it off the doomed list once the commit succeeded).
fn incref_manifest(
    conn: &Connection,
    doomed: &HashSet<String>,
    manifest: &Manifest,
    resurrected: &mut Vec<String>,
) -> Result<(), StoreError> {
    for piece in manifest {
        let n = conn.execute("UPDATE blobs SET refs=refs+1 WHERE name=?1", [&piece.blob])?;
        if n == 0 {
            if !doomed.contains(&piece.blob) {
                return Err(StoreError::Server(ServerError::Corrupt(format!("blob {} vanished", piece.blob))));
            }
            conn.execute("INSERT INTO blobs(name, refs) VALUES(?1, 1)", [&piece.blob])?;
            resurrected.push(piece.blob.clone());
        }
    }
    Ok(())
}

fn decref_manifest(conn: &Connection, manifest: &Manifest, garbage: &mut Vec<String>) -> Result<(), StoreError> {
    for piece in manifest {
        conn.execute("UPDATE blobs SET refs=refs-1 WHERE name=?1", [&piece.blob])?;
        let refs: Option<i64> =
            conn.query_row("SELECT refs FROM blobs WHERE name=?1", [&piece.blob], |r| r.get(0)).optional()?;
        if refs.is_some_and(|r| r <= 0) {
            conn.execute("DELETE FROM blobs WHERE name=?1", [&piece.blob])?;
            garbage.push(piece.blob.clone());
        }
    }
    Ok(())
}

/// Blobs pinned for reading; unpinned on drop.
pub struct Pin {
    store: Store,
    blobs: Vec<String>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.store.unpin(&self.blobs);
    }
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

/// MD5 and CRC-64 of a stream. Kept apart from [`BlobWriter`] so hashing (MD5 is the expensive part) and
/// writing run on two threads.
#[derive(Clone)]
pub struct Hasher {
    md5: Md5,
    crc: Crc64,
}

/// What [`Hasher`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub md5: [u8; 16],
    pub crc64: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Hasher { md5: Md5::new(), crc: Crc64::new() }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.crc.update(data);
    }

    pub fn finish(self) -> Digests {
        Digests { md5: self.md5.finalize().into(), crc64: self.crc.finish() }
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Receives one blob into `tmp/`, then makes it durable in `data/`.
pub struct BlobWriter {
    store: Store,
    file: Option<File>,
    tmp_path: PathBuf,
    name: String,
    written: u64,
    flushed: u64,
}

/// Start writeback every this many bytes so the final fsync has little left to wait for.
const WRITEBACK_WINDOW: u64 = 8 << 20;

impl BlobWriter {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("blob already finished"))?;
        file.write_all(data)?;
        self.written += data.len() as u64;
        if self.store.inner.fsync && self.written - self.flushed >= WRITEBACK_WINDOW {
            // SAFETY: sync_file_range only starts writeback of a range of our own open file.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.flushed = self.written;
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Make the blob durable under `data/` (not yet referenced: the commit does that). `digests` are those
    /// of the bytes written, computed alongside by a [`Hasher`].
    pub fn finish(mut self, digests: Digests) -> Result<NewBlob, ServerError> {
        let file = self.file.take().ok_or_else(|| ServerError::Corrupt("blob finished twice".into()))?;
        let Digests { md5, crc64 } = digests;
        if self.written == 0 {
            drop(file);
            let _ = fs::remove_file(&self.tmp_path);
            return Ok(NewBlob { data_dir: None, name: None, size: 0, md5, crc64, committed: false });
        }
        let inner = &self.store.inner;
        if inner.fsync {
            file.sync_data().map_err(|e| ServerError::io("fsync a received blob", e))?;
        }
        drop(file);
        let dest = blob_path(&inner.data_dir, &self.name);
        let fan_dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| inner.data_dir.clone());
        let new_fan_dir = !fan_dir.exists();
        private_dirs(&fan_dir, false)?;
        fs::rename(&self.tmp_path, &dest).map_err(|e| ServerError::io(format!("rename into {}", dest.display()), e))?;
        if inner.fsync {
            sync_dir(&fan_dir).map_err(|e| ServerError::io(format!("fsync {}", fan_dir.display()), e))?;
            // A new fan directory is itself an entry of data/: without this, a power loss could lose the
            // directory (and the blob in it) whose index row commits next.
            if new_fan_dir {
                sync_dir(&inner.data_dir)
                    .map_err(|e| ServerError::io(format!("fsync {}", inner.data_dir.display()), e))?;
            }
        }
        crash_point("blob_durable");
        Ok(NewBlob {
            data_dir: Some(inner.data_dir.clone()),
            name: Some(std::mem::take(&mut self.name)),
            size: self.written,
            md5,
            crc64,
            committed: false,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// A durable blob not yet referenced by the index. Dropped uncommitted (a refused request), it deletes
/// its file; an empty body has no file at all.
#[derive(Debug)]
pub struct NewBlob {
    data_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub size: u64,
    pub md5: [u8; 16],
    pub crc64: u64,
    committed: bool,
}

impl NewBlob {
    fn manifest(&self) -> Manifest {
        match &self.name {
            Some(name) => vec![Piece { blob: name.clone(), offset: 0, len: self.size }],
            None => Vec::new(),
        }
    }
}

impl Drop for NewBlob {
    fn drop(&mut self) {
        if !self.committed
            && let (Some(dir), Some(name)) = (&self.data_dir, &self.name)
        {
            remove_blob_file(dir, name);
        }
    }
}

/// The pieces covering bytes `[start, start+len)` of a manifest.
pub fn slice_manifest(manifest: &Manifest, start: u64, len: u64) -> Manifest {
    let mut out = Vec::new();
    let end = start + len;
    let mut pos = 0u64;
    for p in manifest {
        let (p_start, p_end) = (pos, pos + p.len);
        pos = p_end;
        if p_end <= start || p_start >= end {
            continue;
        }
        let from = start.max(p_start);
        let to = end.min(p_end);
        out.push(Piece { blob: p.blob.clone(), offset: p.offset + (from - p_start), len: to - from });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(store: &Store, data: &[u8]) -> NewBlob {
        let mut w = store.begin_blob().unwrap();
        let mut h = Hasher::new();
        w.write(data).unwrap();
        h.update(data);
        w.finish(h.finish()).unwrap()
    }

    fn read_all(store: &Store, r: &ObjectRecord) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &r.manifest {
            let data = fs::read(store.blob_path(&p.blob)).unwrap();
            out.extend_from_slice(&data[p.offset as usize..(p.offset + p.len) as usize]);
        }
        out
    }

    fn keys(page: &ListPage) -> Vec<String> {
        page.entries
            .iter()
            .map(|e| match e {
                ListEntry::Object(o) => o.key.clone(),
                ListEntry::Prefix(p) => format!("P:{p}"),
            })
            .collect()
    }

    #[test]
    fn put_overwrite_delete_and_refcounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        assert!(store.create_bucket("b", "private", 1).unwrap());
        assert!(!store.create_bucket("b", "private", 1).unwrap());
        let r = store.put_object("b", "k", blob(&store, b"hello"), ObjectMeta::default(), false, 1).unwrap();
        assert_eq!(r.etag, "5D41402ABC4B2A76B9719D911017C592");
        assert_eq!(read_all(&store, &r), b"hello");
        assert!(matches!(
            store.put_object("b", "k", blob(&store, b"x"), ObjectMeta::default(), true, 1),
            Err(StoreError::AlreadyExists)
        ));
        // The refused blob was removed with its NewBlob.
        assert_eq!(store.blob_files_on_disk(), 1);
        store.put_object("b", "k", blob(&store, b"world"), ObjectMeta::default(), false, 2).unwrap();
        assert_eq!(store.blob_count().unwrap(), 1);
        assert_eq!(store.blob_files_on_disk(), 1);
        assert!(store.delete_object("b", "k").unwrap());
        assert!(!store.delete_object("b", "k").unwrap());
        assert_eq!(store.blob_files_on_disk(), 0);
        assert!(matches!(store.delete_object("nope", "k"), Err(StoreError::NoSuchBucket)));
    }

    #[test]
    fn pinned_blob_survives_overwrite_until_unpinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        store.create_bucket("b", "private", 1).unwrap();
        store.put_object("b", "k", blob(&store, b"one"), ObjectMeta::default(), false, 1).unwrap();
        let (old, pin) = store.open_object("b", "k").unwrap();
        store.put_object("b", "k", blob(&store, b"two"), ObjectMeta::default(), false, 2).unwrap();
        assert_eq!(read_all(&store, &old), b"one");
        drop(pin);
        assert!(!store.blob_path(&old.manifest[0].blob).exists());
    }

    #[test]
    fn copy_shares_blobs_and_self_copy_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        store.create_bucket("b", "private", 1).unwrap();
        store.put_object("b", "a", blob(&store, b"data"), ObjectMeta::default(), false, 1).unwrap();
        let c = store.copy_object("b", "a", "b", "c", false, 2, |s| Ok(s.meta.clone())).unwrap();
        assert_eq!(c.etag, "8D777F385D3DFEC8815D20F7496026DC");
        store.copy_object("b", "a", "b", "a", false, 3, |s| Ok(s.meta.clone())).unwrap();
        store.delete_object("b", "a").unwrap();
        assert_eq!(read_all(&store, &store.head_object("b", "c").unwrap()), b"data");
        store.delete_object("b", "c").unwrap();
        assert_eq!(store.blob_files_on_disk(), 0);
    }

    #[test]
    fn multipart_complete_validates_and_assembles_without_copying() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        store.create_bucket("b", "private", 1).unwrap();
        let id = store.create_upload("b", "k", &ObjectMeta::default(), 1).unwrap();
        let p1 = vec![1u8; MIN_PART_SIZE as usize];
        let r1 = store.put_part("b", "k", &id, 1, PartContent::Blob(blob(&store, &p1)), 1).unwrap();
        let r2 = store.put_part("b", "k", &id, 2, PartContent::Blob(blob(&store, b"tail")), 1).unwrap();
        let r3 = store.put_part("b", "k", &id, 3, PartContent::Blob(blob(&store, b"extra")), 1).unwrap();
        assert!(matches!(store.upload("b", "other", &id), Err(StoreError::NoSuchUpload)));
        let listed = |v: &[(u32, &str)]| PartSelection::Listed(v.iter().map(|(n, e)| (*n, e.to_string())).collect());
        assert!(matches!(
            store.complete_upload("b", "k", &id, &listed(&[(2, &r2.etag), (1, &r1.etag)]), None, false, 2),
            Err(StoreError::InvalidPartOrder)
        ));
        assert!(matches!(
            store.complete_upload("b", "k", &id, &listed(&[(1, &r2.etag)]), None, false, 2),
            Err(StoreError::InvalidPart { part_number: 1, .. })
        ));
        assert!(matches!(
            store.complete_upload("b", "k", &id, &listed(&[(2, &r2.etag), (3, &r3.etag)]), None, false, 2),
            Err(StoreError::EntityTooSmall { part_number: 2, size: 4 })
        ));
        let lower = r2.etag.to_ascii_lowercase();
        let obj = store.complete_upload("b", "k", &id, &listed(&[(1, &r1.etag), (2, &lower)]), None, false, 2).unwrap();
        let mut expect = p1.clone();
        expect.extend_from_slice(b"tail");
        assert_eq!(read_all(&store, &obj), expect);
        assert_eq!(obj.crc64, Some(crate::checksum::crc64(&expect)));
        assert!(obj.etag.ends_with("-2"));
        // Part 3 was left out: its blob is gone; parts 1 and 2 now belong to the object.
        assert_eq!(store.blob_files_on_disk(), 2);
        assert!(matches!(store.abort_upload("b", "k", &id), Err(StoreError::NoSuchUpload)));
    }

    #[test]
    fn listing_with_delimiter_markers_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        store.create_bucket("b", "private", 1).unwrap();
        for k in ["a", "b/1", "b/2", "b/3/x", "c", "d/1", "e"] {
            store.put_object("b", k, blob(&store, b"x"), ObjectMeta::default(), false, 1).unwrap();
        }
        let p = store.list_objects("b", "", Some("/"), None, 1000).unwrap();
        assert_eq!(keys(&p), ["a", "P:b/", "c", "P:d/", "e"]);
        assert!(!p.truncated);
        let p = store.list_objects("b", "", Some("/"), None, 2).unwrap();
        assert_eq!(keys(&p), ["a", "P:b/"]);
        assert!(p.truncated);
        let p = store.list_objects("b", "", Some("/"), Some("b/"), 2).unwrap();
        assert_eq!(keys(&p), ["c", "P:d/"]);
        assert!(p.truncated);
        let p = store.list_objects("b", "b/", Some("/"), None, 10).unwrap();
        assert_eq!(keys(&p), ["b/1", "b/2", "P:b/3/"]);
        let p = store.list_objects("b", "", None, Some("b/2"), 10).unwrap();
        assert_eq!(keys(&p), ["b/3/x", "c", "d/1", "e"]);
        let p = store.list_objects("b", "", None, None, 7).unwrap();
        assert_eq!(p.entries.len(), 7);
        assert!(!p.truncated);
        let p = store.list_objects("b", "zzz", None, None, 7).unwrap();
        assert!(p.entries.is_empty() && !p.truncated);
    }

    #[test]
    fn listing_many_keys_crosses_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        store.create_bucket("b", "private", 1).unwrap();
        for i in 0..700 {
            store.put_object("b", &format!("k{i:04}"), blob(&store, b""), ObjectMeta::default(), false, 1).unwrap();
        }
        let mut after: Option<String> = None;
        let mut all = Vec::new();
        loop {
            let p = store.list_objects("b", "", None, after.as_deref(), 300).unwrap();
            all.extend(keys(&p));
            if !p.truncated {
                break;
            }
            after = all.last().cloned();
        }
        assert_eq!(all.len(), 700);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn sweep_removes_orphans_and_lock_excludes_a_second_server() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), false).unwrap();
            assert!(matches!(Store::open(dir.path(), false), Err(ServerError::RootLocked(_))));
            store.create_bucket("b", "private", 1).unwrap();
            let b = blob(&store, b"orphan");
            // Simulate a crash between making the blob durable and committing it.
            std::mem::forget(b);
            // And a blob still being received.
            fs::write(dir.path().join("tmp").join("0123"), b"partial").unwrap();
            assert_eq!(store.blob_files_on_disk(), 1);
        }
        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(store.blob_files_on_disk(), 0);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn slicing() {
        let m = vec![Piece { blob: "a".into(), offset: 0, len: 10 }, Piece { blob: "b".into(), offset: 5, len: 10 }];
        assert_eq!(
            slice_manifest(&m, 8, 4),
            vec![Piece { blob: "a".into(), offset: 8, len: 2 }, Piece { blob: "b".into(), offset: 5, len: 2 }]
        );
        assert_eq!(slice_manifest(&m, 10, 10), vec![Piece { blob: "b".into(), offset: 5, len: 10 }]);
        assert!(slice_manifest(&m, 20, 5).is_empty());
    }
}
