//! Walking the tree: the initial scan, the periodic safety-net rescan, and subtree scans.
//!
//! # Bounded memory
//! A scan is a stream: [`Scanner::walk`] is a lazy iterator and [`Scanner::stream`] runs it on a blocking
//! thread feeding a bounded channel, so a slow consumer stalls the walk instead of buffering it. Nothing
//! collects the tree; the walker holds one open directory per level of depth (up to [`MAX_OPEN_DIRS`]
//! levels; beyond that walkdir buffers the rest of the shallowest open directory, which is the only place
//! memory grows with directory size).
//!
//! # What is yielded
//! - regular files, with their [`FileSnapshot`] (taken with `lstat`, or `stat` in follow mode);
//! - [`ScanItem::Skipped`] for what is never uploaded: FIFOs, sockets, block and character devices (their
//!   type comes from the directory entry or `stat`; **they are never opened**, so a FIFO cannot hang the
//!   scan), symlinks unless following them, symlink loops and dangling symlinks in follow mode;
//! - [`ScanItem::Problem`] for each path that could not be read (a directory that cannot be listed, a file
//!   that cannot be `stat`ed, a path too long for the kernel, the root itself gone). Any problem makes the
//!   scan **incomplete**, and [`ScanReport::complete`] says so: the agent must never infer that a file was
//!   deleted from an incomplete scan, because "not seen" then does not mean "not there".
//! - a final [`ScanItem::Done`] with the counts. A stream that ends without `Done` is incomplete too
//!   ([`ScanStream::next`] synthesizes an incomplete report in that case).
//!
//! A file that disappears between being listed and being `stat`ed is counted as vanished, not as a problem:
//! the scan's statement "it is not there" is then true. A *directory* that disappears mid-scan is a
//! problem, because it may have been renamed to a place the walk had already passed.
//!
//! The root's identity ([`RootGuard`]) is checked before and after the walk, so a root unmounted or
//! replaced during a scan makes it incomplete rather than empty.
//!
//! # Symlinks
//! Without `--follow-symlinks`, symlinks are reported as skipped and never traversed. With it, targets are
//! scanned under the link's path; a directory whose (dev, inode) is already on the current path (walkdir
//! checks the walk's own ancestors; for subtree scans the ancestors above the subtree are checked here) is
//! a loop, reported and not entered.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::filter::Filter;
use super::key::{Escaped, escape_path};
#[cfg(test)]
use super::root::RootId;
use super::root::{RootError, RootGuard};
use crate::snapshot::FileSnapshot;

/// Directory handles kept open at once by one walk.
pub const MAX_OPEN_DIRS: usize = 64;

/// Items buffered between a [`Scanner::stream`] walker and its consumer.
const STREAM_CAPACITY: usize = 1024;

#[derive(Debug)]
pub enum ScanItem {
    /// A regular file.
    File { rel: PathBuf, snapshot: FileSnapshot },
    /// Something that is never uploaded (not an error; the scan stays complete).
    Skipped { rel: PathBuf, reason: SkipReason },
    /// A path that could not be read: the scan is incomplete.
    Problem { rel: PathBuf, error: ScanError },
    /// A path that can never be read (longer than the kernel's PATH_MAX): reported as such, not retried, and
    /// it does not make the scan incomplete (no index row can exist below a path the agent never could
    /// open, so nothing is wrongly deleted for it).
    Impossible { rel: PathBuf, error: String },
    /// Always the last item.
    Done(ScanReport),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
    /// A file type the platform did not name.
    OtherType,
    /// Follow mode: this directory is already on the current path (its path relative to the root, when
    /// it is inside the tree).
    SymlinkLoop {
        ancestor: PathBuf,
    },
    /// Follow mode: the link points nowhere (or to itself).
    DanglingSymlink,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Walk { path: String, message: String },
    #[error(transparent)]
    Root(#[from] RootError),
}

/// The summary of one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The subtree that was scanned ("" = the whole root).
    pub subtree: PathBuf,
    /// Every directory under `subtree` was listed and every listed entry classified. Only a complete scan
    /// may be used to conclude that something is gone.
    pub complete: bool,
    pub files: u64,
    pub dirs: u64,
    pub skipped: u64,
    pub excluded: u64,
    /// Files listed by their directory but gone before they could be `stat`ed.
    pub vanished: u64,
    pub problems: u64,
    /// Paths that can never be read (see [`ScanItem::Impossible`]).
    pub impossible: u64,
}

/// Walks the watched tree. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scanner {
    guard: Arc<RootGuard>,
    filter: Arc<Filter>,
    follow_symlinks: bool,
}

impl Scanner {
    pub fn new(guard: Arc<RootGuard>, filter: Arc<Filter>, follow_symlinks: bool) -> Self {
        Scanner { guard, filter, follow_symlinks }
    }

    pub fn root(&self) -> &Path {
        self.guard.path()
    }

    pub fn filter(&self) -> &Arc<Filter> {
        &self.filter
    }

    pub fn follows_symlinks(&self) -> bool {
        self.follow_symlinks
    }

    /// Walk `subtree` (relative to the root; "" for everything) lazily, on the calling thread (it blocks on
    /// file-system calls: use [`Scanner::stream`] from async code).
    pub fn walk(&self, subtree: &Path) -> Walk {
        Walk {
            scanner: self.clone(),
            subtree: subtree.to_path_buf(),
            state: WalkState::Start,
            outer_ancestors: Vec::new(),
            report: ScanReport { subtree: subtree.to_path_buf(), complete: true, ..Default::default() },
        }
    }

    /// Walk `subtree` on a blocking thread, streaming items through a bounded channel.
    pub fn stream(&self, subtree: &Path) -> ScanStream {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let walk = self.walk(subtree);
        let subtree = subtree.to_path_buf();
        tokio::task::spawn_blocking(move || {
            for item in walk {
                if tx.blocking_send(item).is_err() {
                    break; // the consumer went away: stop walking
                }
            }
        });
        ScanStream { rx, subtree, finished: false }
    }
}

/// The receiving end of [`Scanner::stream`].
#[derive(Debug)]
pub struct ScanStream {
    rx: mpsc::Receiver<ScanItem>,
    subtree: PathBuf,
    finished: bool,
}

impl ScanStream {
    /// The next item; after [`ScanItem::Done`], `None`. If the walker died without reporting (a panic),
    /// an incomplete `Done` is returned so the caller cannot mistake a truncated scan for a full one.
    pub async fn next(&mut self) -> Option<ScanItem> {
        if self.finished {
            return None;
        }
        match self.rx.recv().await {
            Some(item) => {
                self.finished = matches!(item, ScanItem::Done(_));
                Some(item)
            }
            None => {
                self.finished = true;
                warn!(path = %Escaped::path(&self.subtree), "scan ended without a report; treating it as incomplete");
                Some(ScanItem::Done(ScanReport { subtree: self.subtree.clone(), ..Default::default() }))
            }
        }
    }
}

enum WalkState {
    Start,
    Walking(walkdir::IntoIter),
    /// The walk is over; the root is checked once more before reporting.
    Finish,
    Report,
    Ended,
}

/// A lazy scan; see [`Scanner::walk`].
pub struct Walk {
    scanner: Scanner,
    subtree: PathBuf,
    state: WalkState,
    /// Follow mode, subtree scans: (dev, inode) of the directories from the root down to the subtree's
    /// parent, which walkdir cannot know about.
    outer_ancestors: Vec<(u64, u64)>,
    report: ScanReport,
}

impl Iterator for Walk {
    type Item = ScanItem;

    fn next(&mut self) -> Option<ScanItem> {
        loop {
            match std::mem::replace(&mut self.state, WalkState::Ended) {
                WalkState::Start => {
                    if let Err(e) = self.scanner.guard.check() {
                        self.state = WalkState::Report;
                        return Some(self.problem(PathBuf::new(), ScanError::Root(e)));
                    }
                    match self.begin() {
                        Ok(Some(it)) => self.state = WalkState::Walking(it),
                        Ok(None) => self.state = WalkState::Finish,
                        Err(item) => {
                            self.state = WalkState::Finish;
                            return Some(item);
                        }
                    }
                }
                WalkState::Walking(mut it) => match it.next() {
                    None => self.state = WalkState::Finish,
                    Some(result) => {
                        let item = self.classify(&mut it, result);
                        self.state = WalkState::Walking(it);
                        if item.is_some() {
                            return item;
                        }
                    }
                },
                WalkState::Finish => {
                    self.state = WalkState::Report;
                    // The root may have been unmounted or replaced while we walked: then what we saw is not
                    // the tree we are mirroring.
                    if let Err(e) = self.scanner.guard.check() {
                        return Some(self.problem(PathBuf::new(), ScanError::Root(e)));
                    }
                }
                WalkState::Report => {
                    let report = std::mem::take(&mut self.report);
                    debug!(path = %Escaped::path(&report.subtree), ?report, "scan finished");
                    return Some(ScanItem::Done(report));
                }
                WalkState::Ended => return None,
            }
        }
    }
}

impl Walk {
    fn root(&self) -> &Path {
        self.scanner.guard.path()
    }

    fn problem(&mut self, rel: PathBuf, error: ScanError) -> ScanItem {
        warn!(path = %Escaped::path(&rel), error = %error, "scan incomplete: cannot read");
        self.report.complete = false;
        self.report.problems += 1;
        ScanItem::Problem { rel, error }
    }

    fn io_problem(&mut self, rel: PathBuf, source: io::Error) -> ScanItem {
        let error = ScanError::Io { path: escape_path(&rel), source };
        self.problem(rel, error)
    }

    fn skipped(&mut self, rel: PathBuf, reason: SkipReason) -> ScanItem {
        match &reason {
            SkipReason::SymlinkLoop { ancestor } => {
                warn!(path = %Escaped::path(&rel), ancestor = %Escaped::path(ancestor), "symlink loop; not followed")
            }
            _ => info!(path = %Escaped::path(&rel), ?reason, "skipped: not a regular file"),
        }
        self.report.skipped += 1;
        ScanItem::Skipped { rel, reason }
    }

    /// Prepare the walk of the subtree: `Ok(None)` when there is nothing to walk (the subtree is excluded,
    /// gone, or reached through a symlink we do not follow).
    fn begin(&mut self) -> Result<Option<walkdir::IntoIter>, ScanItem> {
        let subtree = self.subtree.clone();
        if !subtree.as_os_str().is_empty() {
            if self.scanner.filter.excludes_path(&subtree, true) {
                return Ok(None);
            }
            // Walk the ancestors between the root and the subtree: none may be a symlink we do not follow,
            // and in follow mode their identities seed the loop check.
            let mut dir = self.root().to_path_buf();
            if let Ok(md) = std::fs::metadata(&dir) {
                self.outer_ancestors.push((md.dev(), md.ino()));
            }
            let parent_components: Vec<_> = subtree.parent().map(|p| p.components().collect()).unwrap_or_default();
            for comp in parent_components {
                dir.push(comp);
                match std::fs::symlink_metadata(&dir) {
                    Ok(md) if md.file_type().is_symlink() && !self.scanner.follow_symlinks => return Ok(None),
                    Ok(_) => {}
                    Err(e) if is_absent(&e) => return Ok(None),
                    Err(e) => return Err(self.io_problem(subtree, e)),
                }
                if self.scanner.follow_symlinks {
                    match std::fs::metadata(&dir) {
                        Ok(md) => self.outer_ancestors.push((md.dev(), md.ino())),
                        Err(e) if is_absent(&e) => return Ok(None),
                        Err(e) => return Err(self.io_problem(subtree, e)),
                    }
                }
            }
            // A subtree that is gone is complete and empty: whatever was there is gone.
            if let Err(e) = std::fs::symlink_metadata(self.root().join(&subtree)) {
                return if is_absent(&e) { Ok(None) } else { Err(self.io_problem(subtree, e)) };
            }
        }
        let walker = walkdir::WalkDir::new(self.root().join(&subtree))
            .follow_links(self.scanner.follow_symlinks)
            // The root itself may be a symlink (`--watch /data` → elsewhere): always followed. A subtree that
            // is a symlink is followed only in follow mode (it is then reported as skipped).
            .follow_root_links(subtree.as_os_str().is_empty() || self.scanner.follow_symlinks)
            .max_open(MAX_OPEN_DIRS);
        Ok(Some(walker.into_iter()))
    }

    fn rel_of(&self, path: &Path) -> PathBuf {
        path.strip_prefix(self.root()).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
    }

    fn classify(&mut self, it: &mut walkdir::IntoIter, result: walkdir::Result<walkdir::DirEntry>) -> Option<ScanItem> {
        let entry = match result {
            Ok(entry) => entry,
            Err(err) => return Some(self.walk_error(err)),
        };
        let rel = self.rel_of(entry.path());
        let ft = entry.file_type();
        let is_dir = ft.is_dir();
        if entry.depth() > 0 && self.scanner.filter.excludes(&rel, is_dir) {
            self.report.excluded += 1;
            if is_dir {
                it.skip_current_dir();
            }
            return None;
        }
        if ft.is_symlink() {
            // Only reached when not following links.
            return Some(self.skipped(rel, SkipReason::Symlink));
        }
        if is_dir {
            self.report.dirs += 1;
            if self.scanner.follow_symlinks && entry.path_is_symlink() && !self.outer_ancestors.is_empty() {
                match entry.metadata() {
                    Ok(md) if self.outer_ancestors.contains(&(md.dev(), md.ino())) => {
                        it.skip_current_dir();
                        let ancestor = self.outer_ancestor_path(md.dev(), md.ino());
                        return Some(self.skipped(rel, SkipReason::SymlinkLoop { ancestor }));
                    }
                    Ok(_) => {}
                    Err(err) => return Some(self.walk_error(err)),
                }
            }
            return None;
        }
        if ft.is_file() {
            return match entry.metadata() {
                Ok(md) => {
                    self.report.files += 1;
                    Some(ScanItem::File { rel, snapshot: FileSnapshot::from_metadata(&md) })
                }
                Err(err) if err.io_error().is_some_and(is_absent) => {
                    debug!(path = %Escaped::path(&rel), "vanished during the scan");
                    self.report.vanished += 1;
                    None
                }
                Err(err) => Some(self.walk_error(err)),
            };
        }
        let reason = if ft.is_fifo() {
            SkipReason::Fifo
        } else if ft.is_socket() {
            SkipReason::Socket
        } else if ft.is_block_device() {
            SkipReason::BlockDevice
        } else if ft.is_char_device() {
            SkipReason::CharDevice
        } else {
            SkipReason::OtherType
        };
        Some(self.skipped(rel, reason))
    }

    /// The relative path of an ancestor above the subtree with this identity (for the loop report).
    fn outer_ancestor_path(&self, dev: u64, ino: u64) -> PathBuf {
        let mut dir = PathBuf::new();
        let mut candidates = vec![PathBuf::new()];
        for comp in self.subtree.parent().into_iter().flat_map(|p| p.components()) {
            dir.push(comp);
            candidates.push(dir.clone());
        }
        candidates
            .into_iter()
            .find(|rel| std::fs::metadata(self.root().join(rel)).is_ok_and(|md| md.dev() == dev && md.ino() == ino))
            .unwrap_or_default()
    }

    fn walk_error(&mut self, err: walkdir::Error) -> ScanItem {
        let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| self.root().join(&self.subtree));
        let rel = self.rel_of(&path);
        if err.io_error().and_then(io::Error::raw_os_error) == Some(libc::ENAMETOOLONG) {
            self.report.impossible += 1;
            let error = format!(
                "the path is longer than this system allows ({} bytes with the watched directory; the limit is \
                 {}): it cannot be read, so it is not mirrored; shorten its directory names",
                path.as_os_str().len(),
                libc::PATH_MAX
            );
            return ScanItem::Impossible { rel, error };
        }
        if let Some(ancestor) = err.loop_ancestor() {
            let ancestor = self.rel_of(ancestor);
            return self.skipped(rel, SkipReason::SymlinkLoop { ancestor });
        }
        if self.scanner.follow_symlinks
            && err.io_error().is_some_and(|e| is_absent(e) || e.raw_os_error() == Some(libc::ELOOP))
            && std::fs::symlink_metadata(&path).is_ok_and(|md| md.file_type().is_symlink())
        {
            return self.skipped(rel, SkipReason::DanglingSymlink);
        }
        let message = err.to_string();
        match err.into_io_error() {
            Some(source) => self.io_problem(rel, source),
            None => self.problem(rel.clone(), ScanError::Walk { path: escape_path(&rel), message }),
        }
    }
}

/// "There is nothing at this path" (as opposed to "cannot look").
pub(crate) fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::filter::{FilterConfig, path_from_bytes};
    use crate::watch::testutil::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::symlink;

    struct Outcome {
        files: BTreeMap<PathBuf, FileSnapshot>,
        skipped: BTreeMap<PathBuf, SkipReason>,
        problems: Vec<(PathBuf, String)>,
        impossible: Vec<(PathBuf, String)>,
        report: ScanReport,
    }

    fn scanner(root: &Path, excludes: &[&str], follow: bool) -> Scanner {
        let cfg = FilterConfig {
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            default_ignores: true,
            own_paths: vec![],
        };
        let filter = Arc::new(Filter::new(root, &cfg).unwrap());
        Scanner::new(Arc::new(RootGuard::new(root).unwrap()), filter, follow)
    }

    /// Walk on another thread with a deadline: a scanner that opened a FIFO would hang here.
    fn scan(scanner: &Scanner, subtree: &str) -> Outcome {
        let scanner = scanner.clone();
        let subtree = PathBuf::from(subtree);
        within("scan", move || {
            let mut out = Outcome {
                files: BTreeMap::new(),
                skipped: BTreeMap::new(),
                problems: vec![],
                impossible: vec![],
                report: ScanReport::default(),
            };
            let mut done = 0;
            for item in scanner.walk(&subtree) {
                assert_eq!(done, 0, "nothing may follow Done");
                match item {
                    ScanItem::File { rel, snapshot } => assert!(out.files.insert(rel, snapshot).is_none()),
                    ScanItem::Skipped { rel, reason } => assert!(out.skipped.insert(rel, reason).is_none()),
                    ScanItem::Problem { rel, error } => out.problems.push((rel, error.to_string())),
                    ScanItem::Impossible { rel, error } => out.impossible.push((rel, error)),
                    ScanItem::Done(report) => {
                        out.report = report;
                        done += 1;
                    }
                }
            }
            assert_eq!(done, 1, "exactly one Done");
            out
        })
    }

    fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    /// The common tree: nested dirs, odd names, special files, symlinks, excluded and ignored files.
    fn build_tree(root: &Path) -> std::os::unix::net::UnixListener {
        std::fs::create_dir_all(root.join("dir/sub")).unwrap();
        std::fs::create_dir_all(root.join("node_modules/pkg")).unwrap();
        std::fs::write(root.join("a.txt"), b"a").unwrap();
        std::fs::write(root.join("sp ace+&%.txt"), b"s").unwrap();
        std::fs::write(root.join("dir/b.txt"), b"bb").unwrap();
        std::fs::write(root.join("dir/sub/c.txt"), b"ccc").unwrap();
        std::fs::write(root.join(path_from_bytes(b"dir/\xff\xfe.bin")), b"raw").unwrap();
        std::fs::write(root.join("日本.txt"), b"u").unwrap();
        std::fs::write(root.join("x.log"), b"excluded").unwrap();
        std::fs::write(root.join("node_modules/pkg/i.js"), b"excluded").unwrap();
        std::fs::write(root.join("dir/.b.txt.swp"), b"ignored").unwrap();
        std::fs::write(root.join("4913"), b"ignored").unwrap();
        std::fs::write(root.join("#a.txt#"), b"ignored").unwrap();
        mkfifo(&root.join("dir/pipe"));
        let sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        symlink("a.txt", root.join("link-to-a")).unwrap();
        symlink("dir", root.join("link-to-dir")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        sock
    }

    #[test]
    fn scan_yields_regular_files_and_reports_everything_else() {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let _sock = build_tree(root);
        // The tests run as root (CI does), which may make a device node.
        mknod_char(&root.join("chardev")).unwrap_or_else(|e| panic!("mknod needs root (CAP_MKNOD): {e}"));

        let out = scan(&scanner(root, &["*.log", "node_modules"], false), "");
        let mut want = set(&["a.txt", "sp ace+&%.txt", "dir/b.txt", "dir/sub/c.txt", "日本.txt"]);
        want.insert(path_from_bytes(b"dir/\xff\xfe.bin"));
        assert_eq!(out.files.keys().cloned().collect::<BTreeSet<_>>(), want);
        assert_eq!(out.files[Path::new("dir/sub/c.txt")].size, 3);

        assert_eq!(out.skipped[Path::new("dir/pipe")], SkipReason::Fifo);
        assert_eq!(out.skipped[Path::new("sock")], SkipReason::Socket);
        for link in ["link-to-a", "link-to-dir", "dangling"] {
            assert_eq!(out.skipped[Path::new(link)], SkipReason::Symlink, "{link}");
        }
        assert_eq!(out.skipped[Path::new("chardev")], SkipReason::CharDevice);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert!(out.report.complete);
        assert_eq!(out.report.files, 6);
        // x.log, node_modules (pruned, its file never seen), .b.txt.swp, 4913, #a.txt#
        assert_eq!(out.report.excluded, 5);
        // The FIFO was never opened: a reader would still be blocked on it, and the scan came back.
    }

    #[test]
    fn follow_mode_follows_links_and_reports_loops_devices_and_dangling_links() {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let _sock = build_tree(root);
        symlink("../..", root.join("dir/sub/loop")).unwrap();
        symlink("/dev/null", root.join("null")).unwrap();
        symlink("self", root.join("self")).unwrap();
        symlink("dir/pipe", root.join("pipe-link")).unwrap();

        let out = scan(&scanner(root, &["*.log", "node_modules"], true), "");
        for f in ["a.txt", "link-to-a", "dir/b.txt", "link-to-dir/b.txt", "link-to-dir/sub/c.txt"] {
            assert!(out.files.contains_key(Path::new(f)), "{f} missing: {:?}", out.files.keys());
        }
        // Through a link, the snapshot is the target's.
        assert_eq!(out.files[Path::new("link-to-a")], out.files[Path::new("a.txt")]);
        assert!(
            matches!(&out.skipped[Path::new("dir/sub/loop")], SkipReason::SymlinkLoop { ancestor } if ancestor.as_os_str().is_empty()),
            "{:?}",
            out.skipped
        );
        assert_eq!(out.skipped[Path::new("null")], SkipReason::CharDevice);
        assert_eq!(out.skipped[Path::new("dangling")], SkipReason::DanglingSymlink);
        assert_eq!(out.skipped[Path::new("self")], SkipReason::DanglingSymlink);
        assert_eq!(out.skipped[Path::new("pipe-link")], SkipReason::Fifo);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert!(out.report.complete, "loops and dangling links do not make a scan incomplete");
    }

    #[test]
    fn subtree_scans() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let _sock = build_tree(root);
        symlink("../..", root.join("dir/sub/loop")).unwrap();

        let out = scan(&scanner(root, &["node_modules"], false), "dir");
        let mut want = set(&["dir/b.txt", "dir/sub/c.txt"]);
        want.insert(path_from_bytes(b"dir/\xff\xfe.bin"));
        assert_eq!(out.files.keys().cloned().collect::<BTreeSet<_>>(), want);
        assert!(out.report.complete);

        // Gone, excluded, or behind a symlink we do not follow: complete and empty.
        for subtree in ["missing", "missing/deeper", "node_modules", "node_modules/pkg", "link-to-dir/sub"] {
            let out = scan(&scanner(root, &["node_modules"], false), subtree);
            assert!(out.files.is_empty() && out.problems.is_empty(), "{subtree}");
            assert!(out.report.complete, "{subtree}");
        }
        // A subtree that is a file yields that file.
        let out = scan(&scanner(root, &[], false), "a.txt");
        assert_eq!(out.files.keys().cloned().collect::<BTreeSet<_>>(), set(&["a.txt"]));

        // Follow mode: a link under the subtree back to the root is a loop even though the walk started
        // below the root.
        let out = scan(&scanner(root, &["node_modules"], true), "dir/sub");
        assert!(matches!(out.skipped[Path::new("dir/sub/loop")], SkipReason::SymlinkLoop { .. }), "{:?}", out.skipped);
        assert_eq!(out.files.keys().cloned().collect::<BTreeSet<_>>(), set(&["dir/sub/c.txt"]));
    }

    #[test]
    fn a_path_over_path_max_is_reported_as_impossible_and_the_scan_stays_complete() {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("ok.txt"), b"ok").unwrap();
        // A directory whose full path exceeds PATH_MAX cannot be opened by path (ENAMETOOLONG), for anyone,
        // ever: it is not a reason to distrust the rest of the scan (no index row can exist below it).
        let (top, leaf) = make_too_deep(root, 24);
        let out = scan(&scanner(root, &[], false), "");
        assert!(out.files.contains_key(Path::new("ok.txt")), "one bad path does not stop the scan");
        assert!(!out.files.contains_key(&leaf));
        assert!(out.report.complete, "{:?}", out.report);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.report.impossible, out.impossible.len() as u64);
        assert!(!out.impossible.is_empty());
        assert!(out.impossible.iter().all(|(rel, _)| rel.starts_with(&top)), "{:?}", out.impossible);
        assert!(
            out.impossible.iter().all(|(_, e)| e.contains("longer than this system allows")),
            "{:?}",
            out.impossible
        );
    }

    #[test]
    fn an_unreadable_directory_makes_the_scan_incomplete_and_is_reported() {
        // Permission bits do not stop root: as root, the test runs itself again as `nobody` (and checks that
        // run passed); as `nobody`, it does the real work.
        if !run_unprivileged("watch::scan::tests::an_unreadable_directory_makes_the_scan_incomplete_and_is_reported") {
            return;
        }
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("ok.txt"), b"ok").unwrap();
        let locked = root.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::write(locked.join("secret"), b"s").unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let out = scan(&scanner(root, &[], false), "");
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(out.files.contains_key(Path::new("ok.txt")), "one unreadable directory does not stop the scan");
        assert!(!out.report.complete);
        assert!(out.problems.iter().any(|(rel, _)| rel == Path::new("locked")), "{:?}", out.problems);
    }

    #[test]
    fn a_missing_or_replaced_root_is_never_an_empty_complete_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), b"f").unwrap();
        let s = scanner(&root, &[], false);
        // Moved away rather than deleted: the old directory keeps its inode, so the one made next at the
        // same path is certain to have another.
        std::fs::rename(&root, tmp.path().join("moved-away")).unwrap();
        let out = scan(&s, "");
        assert!(!out.report.complete);
        assert!(out.files.is_empty());
        assert!(out.problems[0].1.contains("gone"), "{:?}", out.problems);

        // Re-created empty: a different directory, so still not a basis for deletions.
        std::fs::create_dir(&root).unwrap();
        assert!(!RootId::probe(&root).unwrap().same_dir(&s.guard.expected()));
        let out = scan(&s, "");
        assert!(!out.report.complete);
        assert!(out.problems[0].1.contains("replaced"), "{:?}", out.problems);
    }

    #[test]
    fn the_walk_is_lazy_and_a_directory_removed_mid_scan_makes_it_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["x", "y"] {
            std::fs::create_dir(root.join(d)).unwrap();
            for i in 0..2000 {
                std::fs::write(root.join(d).join(format!("f{i}")), b"z").unwrap();
            }
        }
        let s = scanner(root, &[], false);
        let mut walk = s.walk(Path::new(""));
        let Some(ScanItem::File { rel: first, .. }) = walk.next() else { panic!("expected a file first") };
        // Depth first: the first file is in one directory and the other one has not been opened yet.
        let (this, other) = if first.starts_with("x") { ("x", "y") } else { ("y", "x") };
        // Nothing was collected ahead: files of this directory deleted now are not reported as present.
        for i in 0..2000 {
            let _ = std::fs::remove_file(root.join(this).join(format!("f{i}")));
        }
        std::fs::remove_dir_all(root.join(other)).unwrap();
        let rest: Vec<ScanItem> = walk.collect();
        let files = rest.iter().filter(|i| matches!(i, ScanItem::File { .. })).count();
        assert_eq!(files, 0, "the walk had not stat'ed ahead");
        let Some(ScanItem::Done(report)) = rest.last() else { panic!("no report") };
        assert!(report.vanished > 0);
        assert!(!report.complete, "a directory that vanished before it was listed may have moved: {report:?}");
        assert!(rest.iter().any(|i| matches!(i, ScanItem::Problem { rel, .. } if rel == Path::new(other))), "{rest:?}");
    }

    #[tokio::test]
    async fn stream_delivers_everything_then_done() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::write(tmp.path().join(format!("f{i}")), b"x").unwrap();
        }
        let s = scanner(tmp.path(), &[], false);
        let mut stream = s.stream(Path::new(""));
        let mut files = 0;
        let report = loop {
            match tokio::time::timeout(PATIENCE, stream.next()).await.unwrap() {
                Some(ScanItem::File { .. }) => files += 1,
                Some(ScanItem::Done(r)) => break r,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(files, 3000);
        assert!(report.complete);
        assert!(stream.next().await.is_none());
    }
}
