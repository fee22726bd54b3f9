//! Blob files: receiving one durably ([`BlobWriter`], hashed alongside by [`Hasher`]), the uncommitted
//! result ([`NewBlob`], which deletes its file unless a commit took it), read pins ([`Pin`]), and the
//! reference counts that rows hold on blobs (taken and dropped in the same transaction as the rows).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use md5::{Digest as _, Md5};
use rusqlite::{Connection, OptionalExtension};

use super::{Manifest, Piece, Store, StoreError, crash_point, private_dirs, private_file, sync_dir};
use crate::checksum::Crc64;
use crate::server::error::ServerError;

pub(super) fn blob_path(data_dir: &Path, name: &str) -> PathBuf {
    let fan = name.get(..2).unwrap_or("00");
    data_dir.join(fan).join(name)
}

pub(super) fn remove_blob_file(data_dir: &Path, name: &str) {
    let path = blob_path(data_dir, name);
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        // The start-up sweep will retry; a leftover file wastes space but is never served.
        tracing::warn!(path = %path.display(), error = %e, "cannot remove an unreferenced blob");
    }
}

fn new_blob_name() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Take one reference per piece. UploadPartCopy reads its source under a [`Pin`] before committing, so a
/// source blob may have lost its last reference meanwhile: it is then doomed but its file still exists, and
/// it gets a row again (`resurrected`; the caller takes it off the doomed list once the commit succeeded).
pub(super) fn incref_manifest(
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

pub(super) fn decref_manifest(
    conn: &Connection,
    manifest: &Manifest,
    garbage: &mut Vec<String>,
) -> Result<(), StoreError> {
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

impl Pin {
    pub(super) fn new(store: Store, blobs: Vec<String>) -> Self {
        Pin { store, blobs }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.store.unpin(&self.blobs);
    }
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
    pub(super) fn create(store: Store) -> Result<BlobWriter, ServerError> {
        let name = new_blob_name();
        let tmp_path = store.inner.tmp_dir.join(&name);
        let file = private_file(&tmp_path, fs::OpenOptions::new().write(true).create(true).truncate(true))
            .map_err(|e| ServerError::io(format!("create {}", tmp_path.display()), e))?;
        Ok(BlobWriter { store, file: Some(file), tmp_path, name, written: 0, flushed: 0 })
    }

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
    /// Set by the commit that made a row reference the blob.
    pub(super) committed: bool,
}

impl NewBlob {
    pub(super) fn manifest(&self) -> Manifest {
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
