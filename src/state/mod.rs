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

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::checksum::Blake3;
use crate::snapshot::FileSnapshot;

/// Row id of an upload checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadRowId(pub i64);

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
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("state database {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state database {path} is damaged ({detail}); it will be rebuilt on the next start")]
    Corrupt { path: PathBuf, detail: String },
    #[error("state database {path} was written by a newer ossmirror (schema {found}, this build knows {known})")]
    TooNew { path: PathBuf, found: i64, known: i64 },
}

/// Handle to the state database; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct StateDb {
    _private: (),
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").finish_non_exhaustive()
    }
}

#[allow(unused_variables)]
impl StateDb {
    /// Open (creating parent directories 0700 and the file 0600) or recover a damaged file.
    pub fn open(path: &Path) -> Result<(StateDb, OpenReport), StateError> {
        todo!("state: open")
    }

    /// A private in-memory database (tests, `cp --no-checkpoint`).
    pub fn open_in_memory() -> Result<StateDb, StateError> {
        todo!("state: open_in_memory")
    }

    pub fn path(&self) -> Option<&Path> {
        todo!("state: path")
    }

    /// The checkpoint for uploading `local_path` to `bucket/key`, if any.
    pub fn find_checkpoint(
        &self,
        local_path: &Path,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Checkpoint>, StateError> {
        todo!("state: find_checkpoint")
    }

    /// Every checkpoint (the agent resumes or aborts them at start-up).
    pub fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StateError> {
        todo!("state: list_checkpoints")
    }

    /// Write the upload row (synchronous=FULL). Fails if a checkpoint for the same path/bucket/key exists.
    pub fn begin_upload(&self, upload: &NewUpload<'_>) -> Result<UploadRowId, StateError> {
        todo!("state: begin_upload")
    }

    /// Record the snapshot a new pass started from (after the file changed mid-upload).
    pub fn update_snapshot(&self, id: UploadRowId, snapshot: FileSnapshot) -> Result<(), StateError> {
        todo!("state: update_snapshot")
    }

    /// Insert or replace the row for `part.part_number`.
    pub fn record_part(&self, id: UploadRowId, part: &PartRecord) -> Result<(), StateError> {
        todo!("state: record_part")
    }

    /// Forget the given parts (they will be re-sent or left out).
    pub fn remove_parts(&self, id: UploadRowId, part_numbers: &[u32]) -> Result<(), StateError> {
        todo!("state: remove_parts")
    }

    /// Delete a checkpoint (valid or damaged) and its parts.
    pub fn delete_upload(&self, id: UploadRowId) -> Result<(), StateError> {
        todo!("state: delete_upload")
    }

    /// In one transaction: delete the checkpoint `id` (if given) and record the synced version.
    pub fn complete(&self, id: Option<UploadRowId>, synced: &SyncedFile) -> Result<(), StateError> {
        todo!("state: complete")
    }

    /// The last verified version of `bucket/key`; `None` also when its row fails the MAC.
    pub fn synced(&self, bucket: &str, key: &str) -> Result<Option<SyncedFile>, StateError> {
        todo!("state: synced")
    }

    pub fn forget_synced(&self, bucket: &str, key: &str) -> Result<(), StateError> {
        todo!("state: forget_synced")
    }
}
