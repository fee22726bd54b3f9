//! Reading a local file to prove what it holds without uploading it.
//!
//! The agent avoids uploads three ways (a touched file, a renamed file, an object already on the remote),
//! and each is decided by the bytes, never by timestamps: the file is hashed (CRC-64/XZ, CRC-64/NVME, and
//! BLAKE3 per part) under a snapshot that must not move while it is read.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::checksum::{Blake3, Crc64, Crc64Nvme};
use crate::filemeta::FileMeta;
use crate::snapshot::FileSnapshot;

/// What a file held while it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHashes {
    pub snapshot: FileSnapshot,
    /// The file metadata objects carry, from the fstat that took `snapshot`.
    pub meta: FileMeta,
    pub crc64: u64,
    pub crc64nvme: u64,
    /// BLAKE3 of each `part_size` piece (one hash of the whole file when it is a single piece).
    pub part_blake3: Vec<Blake3>,
}

/// Open the file at `rel` for hashing, by the tree's rules: beneath the root with no symbolic link on the
/// way (or following links with `--follow-symlinks`). O_NONBLOCK: a FIFO put in place of the file since it
/// was scanned must not hang us.
pub fn open_in_tree(root: &Path, rel: &Path, follow_symlinks: bool) -> io::Result<File> {
    if follow_symlinks {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(root.join(rel))
    } else {
        crate::beneath::open(root, rel, libc::O_NONBLOCK)
    }
}

/// Hash the open `file` in pieces of `part_size`. `Ok(None)` when the file changed while being read, or is
/// not the file `expected` describes (another inode, size or timestamps).
pub fn hash_file(file: &File, part_size: u64, expected: &FileSnapshot) -> io::Result<Option<LocalHashes>> {
    let m = file.metadata()?;
    let before = FileSnapshot::from_metadata(&m);
    if before != *expected || !m.is_file() {
        return Ok(None);
    }
    // From the same fstat as the snapshot, which is checked unchanged after reading (chmod moves ctime).
    let meta = FileMeta::of(&m);
    let Some((crc64, crc64nvme, part_blake3)) = hash_pieces(file, before.size, part_size.max(1))? else {
        return Ok(None);
    };
    let after = FileSnapshot::of_file(file)?;
    Ok((after == before).then_some(LocalHashes { snapshot: before, meta, crc64, crc64nvme, part_blake3 }))
}

fn hash_pieces(file: &File, size: u64, part_size: u64) -> io::Result<Option<(u64, u64, Vec<Blake3>)>> {
    const CHUNK: usize = 1 << 20;
    let mut crc = Crc64::new();
    let mut nvme = Crc64Nvme::new();
    let mut parts = Vec::with_capacity(size.div_ceil(part_size).max(1) as usize);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let part_end = (offset + part_size).min(size);
        let mut part = blake3::Hasher::new();
        while offset < part_end {
            let want = CHUNK.min((part_end - offset) as usize);
            let n = match file.read_at(&mut buf[..want], offset) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            crc.update(&buf[..n]);
            nvme.update(&buf[..n]);
            part.update(&buf[..n]);
            offset += n as u64;
        }
        parts.push(*part.finalize().as_bytes());
        if offset >= size {
            return Ok(Some((crc.finish(), nvme.finish(), parts)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_engine_conventions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let snap = FileSnapshot::of_path(&path).unwrap();
        let open = || open_in_tree(dir.path(), Path::new("f"), false).unwrap();
        let h = hash_file(&open(), 1 << 20, &snap).unwrap().unwrap();
        assert_eq!(h.crc64, crate::checksum::crc64(&data));
        assert_eq!(h.crc64nvme, crate::checksum::crc64nvme(&data));
        let expected: Vec<Blake3> = data.chunks(1 << 20).map(crate::checksum::blake3).collect();
        assert_eq!(h.part_blake3, expected);
        // A single piece: one hash of everything; an empty file: the hash of nothing.
        assert_eq!(
            hash_file(&open(), u64::MAX, &snap).unwrap().unwrap().part_blake3,
            vec![crate::checksum::blake3(&data)]
        );
        std::fs::write(&path, b"").unwrap();
        let empty = FileSnapshot::of_path(&path).unwrap();
        assert_eq!(
            hash_file(&open(), 1 << 20, &empty).unwrap().unwrap().part_blake3,
            vec![crate::checksum::blake3(b"")]
        );
        // Not the file we were told about: no answer rather than a wrong one.
        assert_eq!(hash_file(&open(), 1 << 20, &snap).unwrap(), None);
    }
}
