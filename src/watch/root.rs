//! The identity of the watched root, so that losing it is never mistaken for "every file was deleted".
//!
//! A scan of a directory that was unmounted finds the empty mount point below it; a scan of a directory
//! that was deleted finds nothing at all. Both would look like mass deletions to a mirror, which is how
//! `mc mirror --watch` ends up deleting remote data. So the root's `(dev, inode)` is recorded when watching
//! starts, and every scan and every released removal first checks that the root is still that directory.
//!
//! Whether the root is a mount point (its device differs from its parent's) is recorded too: after an
//! unmount, the path shows the directory underneath, which is *not* an acceptable replacement, whereas a
//! root that was deleted and created again by the user (same path, new inode, still not a mount point) is.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::key::escape_path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootId {
    pub dev: u64,
    pub ino: u64,
    /// The root is a mount point (its device differs from its parent's).
    pub mount_point: bool,
}

impl RootId {
    /// Identify the directory at `root` now (following a symlink at `root`, as the watcher does).
    pub fn probe(root: &Path) -> Result<RootId, RootError> {
        let md = std::fs::metadata(root).map_err(|source| RootError::Gone { root: escape_path(root), source })?;
        if !md.is_dir() {
            return Err(RootError::NotADirectory { root: escape_path(root) });
        }
        // `root/..` is resolved by the kernel after following `root`, so it is the physical parent.
        let mount_point = match std::fs::metadata(root.join("..")) {
            Ok(parent) => parent.dev() != md.dev(),
            Err(_) => false,
        };
        Ok(RootId { dev: md.dev(), ino: md.ino(), mount_point })
    }

    pub fn same_dir(&self, other: &RootId) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// May `now` take the place of `self` after the root was lost? Not if `self` was a mount point and
    /// `now` is not: that is the directory under an unmounted file system, and mirroring it would delete
    /// everything.
    pub fn accepts_replacement(&self, now: &RootId) -> bool {
        !self.mount_point || now.mount_point
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("watched directory {root} is gone: {source}")]
    Gone {
        root: String,
        #[source]
        source: io::Error,
    },
    #[error("watched path {root} is not a directory")]
    NotADirectory { root: String },
    #[error("watched directory {root} was replaced by another directory (deleted and re-created, or moved)")]
    Replaced { root: String },
    #[error(
        "watched directory {root} was a mount point and no longer is: the file system was probably \
         unmounted, and what is visible there now is the directory underneath"
    )]
    Unmounted { root: String },
}

/// The root path and the identity it is expected to have; shared by the scanner and the watcher.
#[derive(Debug)]
pub struct RootGuard {
    root: PathBuf,
    expected: Mutex<RootId>,
}

impl RootGuard {
    /// Record the identity of `root` now; fails if it is missing or not a directory.
    pub fn new(root: &Path) -> Result<Self, RootError> {
        let root = std::path::absolute(root).map_err(|source| RootError::Gone { root: escape_path(root), source })?;
        let id = RootId::probe(&root)?;
        Ok(RootGuard { root, expected: Mutex::new(id) })
    }

    /// The absolute root path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn expected(&self) -> RootId {
        *self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accept a new identity (the root came back).
    pub fn set_expected(&self, id: RootId) {
        *self.expected.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// Ok when the root is still the directory it is expected to be.
    pub fn check(&self) -> Result<RootId, RootError> {
        let now = RootId::probe(&self.root)?;
        let expected = self.expected();
        if now.same_dir(&expected) {
            Ok(now)
        } else if expected.mount_point && !now.mount_point {
            Err(RootError::Unmounted { root: escape_path(&self.root) })
        } else {
            Err(RootError::Replaced { root: escape_path(&self.root) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_the_directory_not_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r");
        std::fs::create_dir(&root).unwrap();
        let guard = RootGuard::new(&root).unwrap();
        assert!(guard.check().is_ok());
        assert!(!guard.expected().mount_point, "a temp dir is not a mount point");

        std::fs::remove_dir(&root).unwrap();
        assert!(matches!(guard.check(), Err(RootError::Gone { .. })));
        // Keep the old inode alive so the new directory cannot reuse its number.
        let keep = tmp.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::create_dir(&root).unwrap();
        let now = RootId::probe(&root).unwrap();
        if now.same_dir(&guard.expected()) {
            // The file system reused the inode number: nothing to assert about replacement detection.
            return;
        }
        assert!(matches!(guard.check(), Err(RootError::Replaced { .. })));
        assert!(guard.expected().accepts_replacement(&now));
        guard.set_expected(now);
        assert!(guard.check().is_ok());

        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, b"x").unwrap();
        assert!(matches!(guard.check(), Err(RootError::NotADirectory { .. })));
    }

    #[test]
    fn an_unmounted_mount_point_is_not_an_acceptable_replacement() {
        let mounted = RootId { dev: 10, ino: 2, mount_point: true };
        let underneath = RootId { dev: 1, ino: 12345, mount_point: false };
        let remounted = RootId { dev: 11, ino: 2, mount_point: true };
        assert!(!mounted.accepts_replacement(&underneath));
        assert!(mounted.accepts_replacement(&remounted));
        let plain = RootId { dev: 1, ino: 7, mount_point: false };
        assert!(plain.accepts_replacement(&underneath));
    }
}
