//! Local file access for the engine, all on the blocking pool.
//!
//! Files are opened with `O_NONBLOCK` so a FIFO that slipped past the scanner can never block us, and
//! anything but a regular file is refused before a byte is read. Snapshots come from the open descriptor;
//! the path is checked separately to notice a file replaced by a rename (an editor save).
//!
//! How a path is reached is the caller's [`Access`]: `cp` follows symlinks (the user named the file); the
//! agent without `--follow-symlinks` resolves every path *beneath* its root with no symlink in any
//! component (`crate::beneath`), for the first open, for every later look at the path, and for a reopen
//! after a replace, so nothing outside the watched tree is ever read.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::EngineError;
use crate::checksum::Blake3;
use crate::filemeta::FileMeta;
use crate::snapshot::FileSnapshot;

/// How paths are resolved to files (see the module docs).
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// Follow symbolic links anywhere (`cp`, and the agent with `--follow-symlinks`).
    Follow,
    /// Refuse a symbolic link at the path itself (`O_NOFOLLOW`); the directories above are trusted.
    NoFollow,
    /// Resolve below this root with no symbolic link in any component.
    Beneath(Arc<Path>),
}

impl Access {
    fn open(&self, path: &Path) -> std::io::Result<File> {
        let flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
        match self {
            Access::Follow => std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path),
            Access::NoFollow => {
                std::fs::OpenOptions::new().read(true).custom_flags(flags | libc::O_NOFOLLOW).open(path)
            }
            Access::Beneath(root) => crate::beneath::open(root, rel_below(root, path)?, libc::O_NONBLOCK),
        }
    }

    /// What is at the path now, by the same rules as [`Access::open`] (a final symlink is not followed
    /// unless `Follow`).
    fn stat(&self, path: &Path) -> std::io::Result<std::fs::Metadata> {
        match self {
            Access::Follow => std::fs::metadata(path),
            Access::NoFollow => std::fs::symlink_metadata(path),
            Access::Beneath(root) => crate::beneath::symlink_metadata(root, rel_below(root, path)?),
        }
    }

    fn follows(&self) -> bool {
        matches!(self, Access::Follow)
    }
}

fn rel_below<'a>(root: &Path, path: &'a Path) -> std::io::Result<&'a Path> {
    path.strip_prefix(root).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not under the watched directory {}", path.display(), root.display()),
        )
    })
}

/// An open regular file and the snapshot taken when it was opened (cheap to clone: the file is shared).
#[derive(Clone)]
pub(super) struct Opened {
    pub file: Arc<File>,
    pub snapshot: FileSnapshot,
    /// How the path is resolved (reopening after a replace obeys the same rule).
    pub access: Access,
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Open {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("file task failed: {e}")),
    })?
}

fn open_err(path: &Path, source: std::io::Error) -> EngineError {
    // ENOTDIR: a directory above the file is no longer one; gone as much as a missing name.
    if source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ENOTDIR) {
        EngineError::Vanished { path: path.to_path_buf() }
    } else {
        EngineError::Open { path: path.to_path_buf(), source }
    }
}

pub(super) fn file_kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading, refusing anything that is not a regular file. Unless `access` follows links, a
/// symbolic link is refused too: an agent told not to follow links must not upload what one points to, even
/// if the link appears at the path (or, with [`Access::Beneath`], anywhere above it) mid-upload.
pub(super) async fn open_regular(path: &Path, access: &Access) -> Result<Opened, EngineError> {
    let owned = path.to_path_buf();
    let access = access.clone();
    blocking(path, move || open_blocking(&owned, access)).await
}

fn open_blocking(path: &Path, access: Access) -> Result<Opened, EngineError> {
    let file = access.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) if !access.follows() => {
            EngineError::NotRegular { path: path.to_path_buf(), kind: "a symbolic link" }
        }
        _ => open_err(path, e),
    })?;
    let meta = file.metadata().map_err(|e| open_err(path, e))?;
    if !meta.file_type().is_file() {
        return Err(EngineError::NotRegular { path: path.to_path_buf(), kind: file_kind(&meta.file_type()) });
    }
    Ok(Opened { file: Arc::new(file), snapshot: FileSnapshot::from_metadata(&meta), access })
}

/// The file's current snapshot, from the descriptor.
pub(super) async fn fstat(path: &Path, file: &Arc<File>) -> Result<FileSnapshot, EngineError> {
    let file = file.clone();
    let owned = path.to_path_buf();
    blocking(path, move || FileSnapshot::of_file(&file).map_err(|e| open_err(&owned, e))).await
}

/// The metadata objects carry ([`FileMeta`]), from one `fstat` of the descriptor, if the file still has
/// `snapshot`: chmod and chown move ctime, so an equal snapshot proves the mode and owner are the ones the
/// snapshot's bytes were read under. `None` when the file changed.
pub(super) async fn file_meta(
    path: &Path,
    file: &Arc<File>,
    snapshot: FileSnapshot,
) -> Result<Option<FileMeta>, EngineError> {
    let file = file.clone();
    let owned = path.to_path_buf();
    blocking(path, move || {
        let m = file.metadata().map_err(|e| open_err(&owned, e))?;
        Ok((FileSnapshot::from_metadata(&m) == snapshot).then(|| FileMeta::of(&m)))
    })
    .await
}

/// Wait until the file's snapshot is no longer racy (see `FileSnapshot::is_racy`), so that equality of
/// later snapshots proves no write happened. Gives up with `KeepsChanging` if it keeps being modified.
pub(super) async fn wait_not_racy(
    path: &Path,
    opened: &mut Opened,
    window: Duration,
) -> Result<FileSnapshot, EngineError> {
    const MAX_WAITS: u32 = 8;
    for _ in 0..MAX_WAITS {
        refresh_if_replaced(path, opened).await?;
        let snapshot = fstat(path, &opened.file).await?;
        let now = SystemTime::now();
        let wait = snapshot.racy_wait_within(now, snapshot.racy_window().min(window));
        if wait.is_zero() {
            opened.snapshot = snapshot;
            return Ok(snapshot);
        }
        tracing::debug!(path = %path.display(), wait_ms = wait.as_millis() as u64, "file modified moments ago; waiting until its timestamps can be trusted");
        tokio::time::sleep(wait).await;
    }
    Err(EngineError::KeepsChanging { path: path.to_path_buf(), passes: 0 })
}

/// If the path now names a different file (replaced by a rename), reopen it. Errors if it vanished (or,
/// without `follow`, became a symbolic link).
pub(super) async fn refresh_if_replaced(path: &Path, opened: &mut Opened) -> Result<bool, EngineError> {
    let owned = path.to_path_buf();
    let access = opened.access.clone();
    let at_path = blocking(path, move || {
        let meta = access.stat(&owned).map_err(|e| match e.raw_os_error() {
            // A directory above it became a symlink: the file left the tree.
            Some(libc::ELOOP) => EngineError::Vanished { path: owned.clone() },
            _ => open_err(&owned, e),
        })?;
        if meta.file_type().is_symlink() {
            return Err(EngineError::NotRegular { path: owned.clone(), kind: "a symbolic link" });
        }
        Ok(FileSnapshot::from_metadata(&meta))
    })
    .await?;
    if at_path.same_file(&opened.snapshot) {
        return Ok(false);
    }
    tracing::info!(path = %path.display(), "file was replaced (renamed over); reading the new one");
    *opened = open_regular(path, &opened.access.clone()).await?;
    Ok(true)
}

/// True if the file is still exactly the version of `snapshot`, under the same path. A replaced file is
/// reopened (and reported as changed); a vanished one is an error.
pub(super) async fn unchanged_since(
    path: &Path,
    opened: &mut Opened,
    snapshot: FileSnapshot,
) -> Result<bool, EngineError> {
    if refresh_if_replaced(path, opened).await? {
        return Ok(false);
    }
    Ok(fstat(path, &opened.file).await? == snapshot)
}

/// Read the whole file into memory; `None` if it changed while being read (short read or new snapshot).
pub(super) async fn read_consistent(
    path: &Path,
    opened: &Opened,
    snapshot: FileSnapshot,
) -> Result<Option<Bytes>, EngineError> {
    let file = opened.file.clone();
    let owned = path.to_path_buf();
    blocking(path, move || {
        let mut buf = vec![0u8; snapshot.size as usize];
        let complete = read_exact_at(&file, &mut buf, 0).map_err(|e| open_err(&owned, e))?;
        let after = FileSnapshot::of_file(&file).map_err(|e| open_err(&owned, e))?;
        Ok((complete && after == snapshot).then(|| Bytes::from(buf)))
    })
    .await
}

/// Fill `buf` from `offset`; `Ok(false)` if the file ended first.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The checksums of one part's bytes as they are on disk now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartHashes {
    pub blake3: Blake3,
    pub crc64: u64,
    pub crc64nvme: u64,
}

/// BLAKE3 and both CRC-64s of `len` bytes at `offset`; `None` if the file is shorter than that now.
pub(super) async fn hash_range(
    path: &Path,
    file: &Arc<File>,
    offset: u64,
    len: u64,
) -> Result<Option<PartHashes>, EngineError> {
    let file = file.clone();
    let owned = path.to_path_buf();
    blocking(path, move || {
        const CHUNK: usize = 1 << 20;
        let mut hasher = blake3::Hasher::new();
        let mut crc = crate::checksum::Crc64::new();
        let mut nvme = crate::checksum::Crc64Nvme::new();
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = CHUNK.min((end - pos) as usize);
            if !read_exact_at(&file, &mut buf[..n], pos).map_err(|e| open_err(&owned, e))? {
                return Ok(None);
            }
            hasher.update(&buf[..n]);
            crc.update(&buf[..n]);
            nvme.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(Some(PartHashes { blake3: *hasher.finalize().as_bytes(), crc64: crc.finish(), crc64nvme: nvme.finish() }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        match open_regular(&fifo, &Access::Follow).await {
            Err(EngineError::NotRegular { kind, .. }) => assert_eq!(kind, "a FIFO"),
            Err(e) => panic!("expected NotRegular, got {e}"),
            Ok(_) => panic!("expected NotRegular, got a file"),
        }
        assert!(matches!(open_regular(dir.path(), &Access::Follow).await, Err(EngineError::NotRegular { .. })));
        assert!(matches!(
            open_regular(&dir.path().join("missing"), &Access::Follow).await,
            Err(EngineError::Vanished { .. })
        ));
    }

    #[tokio::test]
    async fn hashes_ranges_and_sees_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let opened = open_regular(&path, &Access::Follow).await.unwrap();
        let h = hash_range(&path, &opened.file, 1000, 2_500_000).await.unwrap();
        let part = &data[1000..2_501_000];
        let expected = PartHashes {
            blake3: crate::checksum::blake3(part),
            crc64: crate::checksum::crc64(part),
            crc64nvme: crate::checksum::crc64nvme(part),
        };
        assert_eq!(h, Some(expected));
        assert_eq!(hash_range(&path, &opened.file, 2_999_000, 5000).await.unwrap(), None);
        let read = read_consistent(&path, &opened, opened.snapshot).await.unwrap().unwrap();
        assert_eq!(read.len(), data.len());
    }

    #[tokio::test]
    async fn replaced_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        let mut opened = open_regular(&path, &Access::Follow).await.unwrap();
        let before = opened.snapshot;
        let tmp = dir.path().join("f.tmp");
        std::fs::write(&tmp, b"new content").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(!unchanged_since(&path, &mut opened, before).await.unwrap());
        assert_eq!(opened.snapshot.size, 11);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(unchanged_since(&path, &mut opened, before).await, Err(EngineError::Vanished { .. })));
    }
}

#[cfg(test)]
mod symlink_tests {
    use super::*;

    #[tokio::test]
    async fn links_are_refused_unless_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        std::fs::write(&target, b"private").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        match open_regular(&link, &Access::NoFollow).await {
            Err(EngineError::NotRegular { kind, .. }) => assert_eq!(kind, "a symbolic link"),
            Err(e) => panic!("expected NotRegular, got {e}"),
            Ok(_) => panic!("a link was opened without --follow-symlinks"),
        }
        assert_eq!(open_regular(&link, &Access::Follow).await.unwrap().snapshot.size, 7);
        // A regular file replaced by a link mid-upload is not followed either.
        let file = dir.path().join("f");
        std::fs::write(&file, b"data").unwrap();
        let mut opened = open_regular(&file, &Access::NoFollow).await.unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        assert!(matches!(refresh_if_replaced(&file, &mut opened).await, Err(EngineError::NotRegular { .. })));
    }

    #[tokio::test]
    async fn a_future_timestamp_does_not_stall_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let future = std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(future).unwrap();
        let mut opened = open_regular(&path, &Access::Follow).await.unwrap();
        let waited =
            tokio::time::timeout(Duration::from_secs(30), wait_not_racy(&path, &mut opened, Duration::from_secs(2)))
                .await
                .expect("wait_not_racy returned");
        assert_eq!(waited.unwrap().size, 1);
    }
}
