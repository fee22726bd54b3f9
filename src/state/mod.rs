//! The state database (SQLite, WAL): resumable-upload checkpoints and the record of synced versions.
//!
//! This is the only module that writes SQL. Every record carries a MAC (keyed BLAKE3 over a canonical
//! encoding of its fields, with a random per-database key), so a damaged or hand-edited row is detected and
//! reported as [`Checkpoint::Damaged`] / ignored, never trusted. A database file that SQLite cannot open or
//! that fails `PRAGMA quick_check` is moved aside and replaced by a fresh one; the upload ids that can still
//! be read from it are returned so the caller can abort them on the server.
//!
//! Durability: WAL with `synchronous=NORMAL` survives a killed process. On power loss the newest
//! transactions may roll back, and every such loss is safe by design (a lost part row re-sends that part; a
//! lost synced row re-verifies the file), except a lost upload row, which would orphan a server upload; so
//! the upload row is committed with `synchronous=FULL`.
//!
//! What the MAC is for: it catches damage and edits made without the key (a bad disk, a bad restore, a
//! person with the `sqlite3` shell). The key lives in the same file, so it is no defence against someone
//! who reads the file first, and it need not be: the database holds no secrets (keep it that way), and
//! anyone who can write it can also delete it, which is equally safe.
//!
//! # Layout
//!
//! - `schema`: tables, migrations (`PRAGMA user_version`), and the check that every column is MAC'd.
//! - `mac`: the canonical encoding and keyed BLAKE3. A row's MAC covers the table name, the row's identity
//!   (upload row id; bucket + key; upload + part number + the parent's server upload id) and every column,
//!   as stored. Reads verify before decoding; writes MAC exactly the values they bind.
//! - `open`: private file modes, atomic creation, damage detection, quarantine and salvage, and the lock
//!   file that keeps one process from recovering a database another has open.
//! - `remote`: which remote the database describes; opened against another, it forgets what it cannot prove.
//! - `index`, `status`, `claim`: the synced-file index (paged listing, lookups by content and by inode,
//!   counts), per-file pending/failed status, and claims (who is uploading what, with progress).
//!
//! # Opening
//!
//! [`StateDb::open`] runs `PRAGMA quick_check`, which reads the whole file, once per process start (measured:
//! 0.8 s for an index of a million files, 345 MB; a full paged walk of it with MAC checks took 6.6 s, a
//! lookup 9 µs, with the process staying near 10 MB resident). [`StateDb::open_read_only`] (for `status`) skips it and never
//! creates, migrates or recovers anything, so it is safe beside a running agent.
//!
//! # Concurrency
//!
//! A [`StateDb`] is one SQLite connection behind a mutex: clones share it; calls are short but blocking, so
//! async code should make `begin_upload` (which waits for fsync), `open` and bulk calls from
//! `spawn_blocking`. Several processes may open the same file: WAL lets readers run beside the writer, and
//! writes take the write lock up front (`BEGIN IMMEDIATE`), waiting up to [`BUSY_TIMEOUT`] for it. Which
//! process uploads which object is coordinated by [`StateDb::claim`], see [`Claim`].
//!
//! # Memory
//!
//! Nothing that grows with the number of files is loaded whole: the synced index is read by key, by lookup,
//! or in pages ([`StateDb::list_synced`], [`StateDb::iter_synced`], [`StateDb::list_status`]);
//! `list_checkpoints` returns every checkpoint, which is bounded by the uploads that were in flight.

mod claim;
mod index;
mod mac;
mod open;
mod remote;
mod rows;
mod schema;
mod status;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use crate::checksum::Blake3;
use crate::snapshot::FileSnapshot;
use mac::{Field, MacKey};
use rows::{Decode, PART_N, UPLOAD_N, UploadRow};
use schema::{part_cols, synced_cols, upload_cols};

pub use claim::{CLAIM_STALE_AFTER, Claim, InFlight};
pub use index::{StateCounts, SyncedEntry, SyncedIter};
pub use open::BUSY_TIMEOUT;
pub use remote::{AbandonedUpload, Binding};
pub use status::{FileState, FileStatus, MAX_ERROR_LEN};

/// Row id of an upload checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadRowId(pub i64);

impl std::fmt::Display for UploadRowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What opening the database found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Set when the file was damaged: it was moved aside and a fresh database created in its place.
    pub quarantined: Option<Quarantine>,
}

#[derive(Debug, Clone)]
pub struct Quarantine {
    pub moved_to: PathBuf,
    pub reason: String,
    /// Uploads still readable from the damaged file: the caller aborts them on the server.
    pub salvaged_uploads: Vec<SalvagedUpload>,
}

/// Read from a damaged file without checking MACs (the key may be unreadable): abort such an upload only
/// within the bucket and prefix this process owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvagedUpload {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// A new checkpoint, written before the first UploadPart.
#[derive(Debug, Clone)]
pub struct NewUpload<'a> {
    pub local_path: &'a Path,
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
    pub part_size: u64,
    pub snapshot: FileSnapshot,
    /// Digest of the object options (content type, metadata, ACL, storage class): an upload initiated
    /// with other options must not be resumed.
    pub options_fingerprint: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: UploadRowId,
    pub local_path: PathBuf,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub part_size: u64,
    pub snapshot: FileSnapshot,
    pub options_fingerprint: String,
    pub created_at: SystemTime,
}

/// A part the server acknowledged with a matching CRC-64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub part_number: u32,
    pub size: u64,
    /// ETag as the server returned it (quotes included).
    pub etag: String,
    pub crc64: u64,
    pub blake3: Blake3,
}

/// A checkpoint as read back.
#[derive(Debug, Clone)]
pub enum Checkpoint {
    Valid {
        upload: UploadRecord,
        parts: Vec<PartRecord>,
    },
    /// The upload row or one of its part rows failed its MAC or could not be decoded. Whatever fields
    /// could be read are given so the caller can abort the server-side upload.
    Damaged {
        id: UploadRowId,
        bucket: Option<String>,
        key: Option<String>,
        upload_id: Option<String>,
        reason: String,
    },
}

impl Checkpoint {
    /// The row id, valid or damaged (what [`StateDb::delete_upload`] takes).
    pub fn id(&self) -> UploadRowId {
        match self {
            Checkpoint::Valid { upload, .. } => upload.id,
            Checkpoint::Damaged { id, .. } => *id,
        }
    }
}

/// The version of a file that was last verified on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedFile {
    pub bucket: String,
    pub key: String,
    pub local_path: PathBuf,
    pub snapshot: FileSnapshot,
    pub size: u64,
    pub crc64: u64,
    pub etag: String,
    /// Part size the per-part hashes were computed with (the whole size for a single PutObject).
    pub part_size: u64,
    pub part_blake3: Vec<Blake3>,
    pub synced_at: SystemTime,
    /// The file metadata the object carries ([`crate::filemeta::FileMeta::encode`]); `None` when not known
    /// (rows from before it was recorded, objects adopted without it).
    pub object_meta: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}{}", full_disk_hint(path, source))]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("state database {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state database {path} is damaged ({detail}); it will be rebuilt on the next start")]
    Corrupt { path: PathBuf, detail: String },
    #[error("state database {path} was written by a newer ossmirror (schema {found}, this build knows {known})")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    /// Only from [`StateDb::open_read_only`], which does not migrate.
    #[error(
        "state database {path} has schema {found}, older than this build's {known}; run the agent once to upgrade it"
    )]
    TooOld { path: PathBuf, found: i64, known: i64 },
    #[error("{path} is a SQLite database but not an ossmirror state database ({detail}); refusing to touch it")]
    Foreign { path: PathBuf, detail: String },
    #[error("state database {path} is being created or recovered by another process; try again")]
    Locked { path: PathBuf },
    #[error("state database {path}: a checkpoint for {} to {bucket}/{key} already exists (row {existing})", local_path.display())]
    CheckpointExists { path: PathBuf, local_path: PathBuf, bucket: String, key: String, existing: UploadRowId },
    /// The checkpoint is gone (deleted by this or another process): stop using its id.
    #[error("state database {path}: there is no checkpoint with row id {id}")]
    NoSuchUpload { path: PathBuf, id: UploadRowId },
    /// An update was refused because the record it would re-sign failed its MAC.
    #[error("state database {path}: checkpoint row {id} is damaged ({detail}); delete it and start over")]
    DamagedRecord { path: PathBuf, id: UploadRowId, detail: String },
    #[error("state database {path}: {bucket}/{key} is being uploaded by process {owner_pid}")]
    Claimed { path: PathBuf, bucket: String, key: String, owner_pid: u32 },
    #[error("state database {path}: the claim on {bucket}/{key} went stale and was taken over by another process")]
    ClaimLost { path: PathBuf, bucket: String, key: String },
}

/// Handle to the state database; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct StateDb {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order is drop order: the connection closes before the lock is released.
    conn: Mutex<Connection>,
    key: MacKey,
    path: Option<PathBuf>,
    _lock: Option<open::LockFile>,
    /// `PRAGMA synchronous` seen inside the last `begin_upload` transaction (tests check it is FULL).
    #[cfg(test)]
    begin_sync_level: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// Failure inside a database call: SQLite's (classified with the path once, in [`StateDb::run`]) or ours.
enum Op {
    Sql(rusqlite::Error),
    State(StateError),
}

impl From<rusqlite::Error> for Op {
    fn from(e: rusqlite::Error) -> Self {
        Op::Sql(e)
    }
}

type OpResult<T> = Result<T, Op>;

/// An upload row as read: verified and decoded, or what could be made of it.
enum UploadRead {
    Valid(UploadRecord),
    Damaged { id: UploadRowId, bucket: Option<String>, key: Option<String>, upload_id: Option<String>, reason: String },
}

const SELECT_UPLOAD: &str = concat!("SELECT ", upload_cols!(), ", mac FROM uploads");
const SELECT_PARTS: &str = concat!("SELECT ", part_cols!(), ", mac FROM parts WHERE upload = ?1 ORDER BY part_number");
const SELECT_SYNCED: &str = concat!("SELECT ", synced_cols!(), ", mac FROM synced");

/// `INSERT OR REPLACE INTO table (cols, mac) VALUES (?, …)`.
fn replace_sql(table: &str, cols: &str) -> String {
    let n = schema::count(cols) + 1;
    format!("INSERT OR REPLACE INTO {table} ({cols}, mac) VALUES ({})", vec!["?"; n].join(", "))
}

static REPLACE_PART: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| replace_sql("parts", schema::PART_COLS));
static REPLACE_SYNCED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| replace_sql("synced", schema::SYNCED_COLS));

/// Every upload column except `id`, for the INSERT that lets SQLite choose the id.
fn upload_cols_without_id() -> &'static str {
    schema::UPLOAD_COLS.strip_prefix("id, ").unwrap_or(schema::UPLOAD_COLS)
}

static INSERT_UPLOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let cols = upload_cols_without_id();
    // The MAC covers the id, which is known only after the insert: insert with an empty MAC and set it in
    // the same transaction.
    format!("INSERT INTO uploads ({cols}, mac) VALUES ({}, X'')", vec!["?"; schema::count(cols)].join(", "))
});

static REWRITE_UPLOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let cols = upload_cols_without_id();
    format!("UPDATE uploads SET ({cols}, mac) = ({}) WHERE id = ?", vec!["?"; schema::count(cols) + 1].join(", "))
});

impl StateDb {
    fn from_opened(o: open::Opened, path: Option<PathBuf>) -> StateDb {
        StateDb {
            inner: Arc::new(Inner {
                conn: Mutex::new(o.conn),
                key: o.key,
                path,
                _lock: o.lock,
                #[cfg(test)]
                begin_sync_level: std::sync::atomic::AtomicI64::new(-1),
            }),
        }
    }

    /// Open (creating parent directories 0700 and the file 0600) or recover a damaged file.
    pub fn open(path: &Path) -> Result<(StateDb, OpenReport), StateError> {
        let opened = open::open(path)?;
        let report = opened.report.clone();
        Ok((StateDb::from_opened(opened, Some(path.to_path_buf())), report))
    }

    /// Create the missing directories above `path` 0700 whatever the umask (existing ones are left alone).
    pub fn create_private_parents(path: &Path) -> Result<(), StateError> {
        open::ensure_parent(path)
    }

    /// Open an existing database for reading (the `status` command): never creates, migrates or
    /// recovers, so it is safe beside a running agent. Writes through this handle fail.
    pub fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        Ok(StateDb::from_opened(open::open_read_only(path)?, Some(path.to_path_buf())))
    }

    /// A private in-memory database (tests, `cp --no-checkpoint`).
    pub fn open_in_memory() -> Result<StateDb, StateError> {
        Ok(StateDb::from_opened(open::open_in_memory()?, None))
    }

    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The path for error messages.
    fn err_path(&self) -> PathBuf {
        self.inner.path.clone().unwrap_or_else(|| PathBuf::from(":memory:"))
    }

    /// Run `f` on the connection and give SQLite errors their path. Corruption reported by SQLite becomes
    /// [`StateError::Corrupt`] and leaves a marker so that the next `open` recovers the file.
    fn run<T>(&self, f: impl FnOnce(&mut Connection, &MacKey) -> OpResult<T>) -> Result<T, StateError> {
        let mut conn = self.inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn, &self.inner.key).map_err(|e| match e {
            Op::State(e) => e,
            Op::Sql(e) if open::is_corruption(&e) => {
                let detail = e.to_string();
                if let Some(path) = &self.inner.path {
                    open::mark_damaged(path, &detail);
                }
                tracing::error!(path = %self.err_path().display(), error = %detail, "state database is damaged");
                StateError::Corrupt { path: self.err_path(), detail }
            }
            Op::Sql(source) => StateError::Sqlite { path: self.err_path(), source },
        })
    }

    fn no_such_upload(&self, id: UploadRowId) -> Op {
        Op::State(StateError::NoSuchUpload { path: self.err_path(), id })
    }

    /// The checkpoint for uploading `local_path` to `bucket/key`, if any.
    pub fn find_checkpoint(
        &self,
        local_path: &Path,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Checkpoint>, StateError> {
        self.run(|conn, mac| {
            // One read transaction: the upload row and its parts come from the same snapshot.
            let tx = conn.transaction()?;
            let sql = format!("{SELECT_UPLOAD} WHERE local_path = ?1 AND bucket = ?2 AND key = ?3");
            let read = tx
                .prepare_cached(&sql)?
                .query_row(params![rows::path_bytes(local_path), bucket, key], |r| read_upload(r, mac))
                .optional()?;
            let checkpoint = match read {
                Some(read) => Some(finish_checkpoint(&tx, mac, read)?),
                None => None,
            };
            Ok(checkpoint)
        })
    }

    /// Every checkpoint (the agent resumes or aborts them at start-up).
    pub fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StateError> {
        self.run(|conn, mac| {
            let tx = conn.transaction()?;
            let reads: Vec<UploadRead> = {
                let mut stmt = tx.prepare_cached(&format!("{SELECT_UPLOAD} ORDER BY id"))?;
                stmt.query_map([], |r| read_upload(r, mac))?.collect::<Result<_, _>>()?
            };
            let mut out = Vec::with_capacity(reads.len());
            for read in reads {
                out.push(finish_checkpoint(&tx, mac, read)?);
            }
            Ok(out)
        })
    }

    /// Write the upload row (synchronous=FULL). Fails if a checkpoint for the same path/bucket/key exists.
    pub fn begin_upload(&self, upload: &NewUpload<'_>) -> Result<UploadRowId, StateError> {
        self.run(|conn, mac| {
            // A lost upload row would orphan a server-side upload, so this commit alone waits for the disk.
            // PRAGMA synchronous applies to the connection, so it is set around the transaction.
            conn.pragma_update(None, "synchronous", "FULL")?;
            let result = self.insert_upload(conn, mac, upload);
            if let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL") {
                // The row is committed: report success; the connection just stays slower and safer.
                tracing::warn!(path = %self.err_path().display(), error = %e, "cannot restore synchronous=NORMAL");
            }
            result
        })
    }

    fn insert_upload(&self, conn: &mut Connection, mac: &MacKey, upload: &NewUpload<'_>) -> OpResult<UploadRowId> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        #[cfg(test)]
        self.inner
            .begin_sync_level
            .store(tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?, std::sync::atomic::Ordering::Relaxed);
        let existing: Option<i64> = tx
            .prepare_cached("SELECT id FROM uploads WHERE local_path = ?1 AND bucket = ?2 AND key = ?3")?
            .query_row(params![rows::path_bytes(upload.local_path), upload.bucket, upload.key], |r| r.get(0))
            .optional()?;
        if let Some(existing) = existing {
            return Err(Op::State(StateError::CheckpointExists {
                path: self.err_path(),
                local_path: upload.local_path.to_path_buf(),
                bucket: upload.bucket.to_string(),
                key: upload.key.to_string(),
                existing: UploadRowId(existing),
            }));
        }
        let mut row = UploadRow {
            id: 0,
            local_path: upload.local_path,
            bucket: upload.bucket,
            key: upload.key,
            upload_id: upload.upload_id,
            part_size: upload.part_size,
            snapshot: upload.snapshot,
            options_fingerprint: upload.options_fingerprint,
            created_at_ns: rows::time_to_ns(SystemTime::now()),
        };
        tx.prepare_cached(&INSERT_UPLOAD)?.execute(params_from_iter(&row.fields()[1..]))?;
        row.id = tx.last_insert_rowid();
        let tag = mac.mac("uploads", &row.fields());
        tx.prepare_cached("UPDATE uploads SET mac = ?1 WHERE id = ?2")?.execute(params![&tag[..], row.id])?;
        tx.commit()?;
        Ok(UploadRowId(row.id))
    }

    /// Record the snapshot a new pass started from (after the file changed mid-upload).
    pub fn update_snapshot(&self, id: UploadRowId, snapshot: FileSnapshot) -> Result<(), StateError> {
        self.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let read = tx
                .prepare_cached(&format!("{SELECT_UPLOAD} WHERE id = ?1"))?
                .query_row([id.0], |r| read_upload(r, mac))
                .optional()?;
            let mut record = match read {
                None => return Err(self.no_such_upload(id)),
                Some(UploadRead::Valid(record)) => record,
                // Re-signing a damaged row would launder the damage.
                Some(UploadRead::Damaged { reason, .. }) => {
                    return Err(Op::State(StateError::DamagedRecord { path: self.err_path(), id, detail: reason }));
                }
            };
            record.snapshot = snapshot;
            let row = UploadRow::of(&record);
            let fields = row.fields();
            let tag = mac.mac("uploads", &fields);
            let tail = [Field::Blob(&tag), Field::Int(id.0)];
            tx.prepare_cached(&REWRITE_UPLOAD)?.execute(params_from_iter(fields[1..].iter().chain(&tail)))?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Insert or replace the row for `part.part_number`.
    pub fn record_part(&self, id: UploadRowId, part: &PartRecord) -> Result<(), StateError> {
        self.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let parent = parent_upload_id(&tx, id)?.ok_or_else(|| self.no_such_upload(id))?;
            let fields = rows::part_fields(id, &parent, part);
            let tag = mac.mac("parts", &fields);
            tx.prepare_cached(&REPLACE_PART)?
                .execute(params_from_iter(fields[1..].iter().chain([&Field::Blob(&tag)])))?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Forget the given parts (they will be re-sent or left out).
    pub fn remove_parts(&self, id: UploadRowId, part_numbers: &[u32]) -> Result<(), StateError> {
        self.run(|conn, _| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if parent_upload_id(&tx, id)?.is_none() {
                return Err(self.no_such_upload(id));
            }
            {
                let mut stmt = tx.prepare_cached("DELETE FROM parts WHERE upload = ?1 AND part_number = ?2")?;
                for n in part_numbers {
                    stmt.execute(params![id.0, n])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Whether checkpoint row `id` was written for the server-side upload `upload_id`: its upload row, or
    /// one of its part rows (whose MACs bind the parent's upload id), verifies with `upload_id` in place of
    /// the stored one. This finds the real upload of a checkpoint whose upload id column was damaged, so
    /// that it can be aborted, and never confirms an upload the checkpoint did not record.
    pub fn checkpoint_confirms_upload_id(&self, id: UploadRowId, upload_id: &str) -> Result<bool, StateError> {
        self.run(|conn, mac| {
            let tx = conn.transaction()?;
            let row_confirms = tx
                .prepare_cached(&format!("{SELECT_UPLOAD} WHERE id = ?1"))?
                .query_row([id.0], |r| {
                    let (mut fields, stored) = rows::raw(r, UPLOAD_N)?;
                    fields[rows::UPLOAD_ID_FIELD] = Field::text(upload_id);
                    Ok(mac.verify("uploads", &fields, stored).is_ok())
                })
                .optional()?;
            match row_confirms {
                None => return Ok(false),
                Some(true) => return Ok(true),
                Some(false) => {}
            }
            let mut stmt = tx.prepare_cached(SELECT_PARTS)?;
            let mut rs = stmt.query([id.0])?;
            while let Some(row) = rs.next()? {
                let (stored, tag) = rows::raw(row, PART_N)?;
                let fields: Vec<Field<'_>> = std::iter::once(Field::text(upload_id)).chain(stored).collect();
                if mac.verify("parts", &fields, tag).is_ok() {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// Delete a checkpoint (valid or damaged) and its parts.
    pub fn delete_upload(&self, id: UploadRowId) -> Result<(), StateError> {
        self.run(|conn, _| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            delete_upload_rows(&tx, id)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// In one transaction: delete the checkpoint `id` (if given) and record the synced version. Also clears
    /// the file's pending/failed status, since it is now synced.
    pub fn complete(&self, id: Option<UploadRowId>, synced: &SyncedFile) -> Result<(), StateError> {
        self.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(id) = id {
                delete_upload_rows(&tx, id)?;
            }
            let hashes = rows::concat_hashes(&synced.part_blake3);
            let fields = rows::synced_fields(synced, &hashes);
            let tag = mac.mac("synced", &fields);
            tx.prepare_cached(&REPLACE_SYNCED)?.execute(params_from_iter(fields.iter().chain([&Field::Blob(&tag)])))?;
            tx.prepare_cached("DELETE FROM file_status WHERE bucket = ?1 AND key = ?2")?
                .execute(params![synced.bucket, synced.key])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The last verified version of `bucket/key`; `None` also when its row fails the MAC.
    pub fn synced(&self, bucket: &str, key: &str) -> Result<Option<SyncedFile>, StateError> {
        let read = self.run(|conn, mac| {
            let sql = format!("{SELECT_SYNCED} WHERE bucket = ?1 AND key = ?2");
            Ok(conn.prepare_cached(&sql)?.query_row(params![bucket, key], |r| read_synced(r, mac)).optional()?)
        })?;
        Ok(match read {
            None => None,
            Some(Ok(file)) => Some(file),
            Some(Err(reason)) => {
                tracing::warn!(
                    bucket,
                    key,
                    reason,
                    "state database: ignoring a damaged synced record; the file will be re-verified"
                );
                None
            }
        })
    }

    pub fn forget_synced(&self, bucket: &str, key: &str) -> Result<(), StateError> {
        self.run(|conn, _| {
            conn.prepare_cached("DELETE FROM synced WHERE bucket = ?1 AND key = ?2")?.execute(params![bucket, key])?;
            Ok(())
        })
    }
}

/// Read and verify an upload row selected with [`SELECT_UPLOAD`].
fn read_upload(row: &Row<'_>, mac: &MacKey) -> rusqlite::Result<UploadRead> {
    // `id` is the rowid: SQLite guarantees an integer, so a damaged row still has an identity to delete by.
    let id = UploadRowId(row.get(0)?);
    let (fields, stored) = rows::raw(row, UPLOAD_N)?;
    Ok(match mac.verify("uploads", &fields, stored).and_then(|()| rows::decode_upload(&fields)) {
        Ok(record) => UploadRead::Valid(record),
        Err(reason) => {
            let d = Decode::new(&fields, schema::UPLOAD_COLS, 0);
            UploadRead::Damaged {
                id,
                bucket: d.best_effort_string(2),
                key: d.best_effort_string(3),
                upload_id: d.best_effort_string(rows::UPLOAD_ID_FIELD),
                reason: format!("upload row {id}: {reason}"),
            }
        }
    })
}

/// Attach and verify the parts of a valid upload row; any bad part makes the whole checkpoint damaged.
fn finish_checkpoint(conn: &Connection, mac: &MacKey, read: UploadRead) -> rusqlite::Result<Checkpoint> {
    let upload = match read {
        UploadRead::Valid(upload) => upload,
        UploadRead::Damaged { id, bucket, key, upload_id, reason } => {
            return Ok(Checkpoint::Damaged { id, bucket, key, upload_id, reason });
        }
    };
    let mut parts = Vec::new();
    let mut damage = None;
    {
        let mut stmt = conn.prepare_cached(SELECT_PARTS)?;
        let mut rs = stmt.query([upload.id.0])?;
        while let Some(row) = rs.next()? {
            let (stored, tag) = rows::raw(row, PART_N)?;
            let mut fields = Vec::with_capacity(PART_N + 1);
            fields.push(Field::text(&upload.upload_id));
            fields.extend(stored);
            match mac.verify("parts", &fields, tag).and_then(|()| rows::decode_part(&fields)) {
                Ok(part) => parts.push(part),
                Err(reason) => {
                    let number = match fields[2] {
                        Field::Int(n) => n.to_string(),
                        other => format!("({})", other.kind()),
                    };
                    damage = Some(format!("part row {number} of upload row {}: {reason}", upload.id));
                    break;
                }
            }
        }
    }
    Ok(match damage {
        None => Checkpoint::Valid { upload, parts },
        Some(reason) => Checkpoint::Damaged {
            id: upload.id,
            bucket: Some(upload.bucket),
            key: Some(upload.key),
            upload_id: Some(upload.upload_id),
            reason,
        },
    })
}

/// The parent's server upload id (the bytes its parts are MAC'd with); `None` if there is no such row.
fn parent_upload_id(conn: &Connection, id: UploadRowId) -> rusqlite::Result<Option<Vec<u8>>> {
    // Taken as stored, even from a damaged row: part rows bound to a damaged value cannot make the
    // checkpoint valid, because the upload row itself still fails its MAC.
    conn.prepare_cached("SELECT upload_id FROM uploads WHERE id = ?1")?
        .query_row([id.0], |r| {
            Ok(match r.get_ref(0)? {
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.to_vec(),
                _ => Vec::new(),
            })
        })
        .optional()
}

fn delete_upload_rows(conn: &Connection, id: UploadRowId) -> rusqlite::Result<()> {
    // Explicit rather than relying on ON DELETE CASCADE, which needs foreign_keys=ON on every connection.
    conn.prepare_cached("DELETE FROM parts WHERE upload = ?1")?.execute([id.0])?;
    conn.prepare_cached("DELETE FROM uploads WHERE id = ?1")?.execute([id.0])?;
    Ok(())
}

/// Read and verify a synced row selected with [`SELECT_SYNCED`]: the record, or why it is not trusted.
fn read_synced(row: &Row<'_>, mac: &MacKey) -> rusqlite::Result<Result<SyncedFile, String>> {
    let (fields, stored) = rows::raw(row, rows::SYNCED_N)?;
    let verified = mac.verify("synced", &fields, stored).or_else(|e| match fields.last() {
        // A row from before object_meta (schema 1) was MAC'd over the columns it had; NULL there means
        // "not known", which is what such a row says. A newer row always MACs the column, so setting it to
        // NULL by an edit matches neither MAC.
        Some(Field::Null) => mac.verify("synced", &fields[..rows::SYNCED_N - 1], stored).map_err(|_| e),
        _ => Err(e),
    });
    Ok(verified.and_then(|()| rows::decode_synced(&fields)))
}

/// SQLite reports a full file system as "database or disk is full", but as a bare "disk I/O error" when it
/// cannot grow its shared-memory file: say what the real problem is when the state directory has no room.
fn full_disk_hint(path: &Path, source: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
    let io = matches!(source.sqlite_error_code(), Some(DiskFull | SystemIoFailure));
    let Some(dir) = path.parent().filter(|_| io) else { return String::new() };
    let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return String::new() };
    // SAFETY: a valid NUL-terminated path and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_dir.as_ptr(), &mut st) } != 0 {
        return String::new();
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free >= 1 << 20 {
        return String::new();
    }
    format!(
        " (the file system holding {} is full: {free} bytes free; free some space — nothing recorded so far is \
         trusted blindly, files are re-verified)",
        dir.display()
    )
}
