//! The settle gate: decides when a path is stable enough to act on.
//!
//! notify's debouncers wait for a path to go quiet *in inotify*; that is not a stability check (a writer
//! over NFS, through `mmap`, or one that pauses between writes is quiet in inotify while the file still
//! grows). The gate therefore re-`stat`s every pending path on a timer and releases it only when the file
//! itself says it has not changed for the settle window.
//!
//! # State
//! One entry per path, whatever happened to it (latest state wins): memory is O(paths pending), and an
//! editor's burst of create/write/rename/chmod on one path is one entry and one release. Each entry has
//! exactly one live slot in a deadline heap (stale slots are recognised by their deadline and skipped).
//!
//! # When a path is released
//! At each check the path is observed (`lstat`, or `stat` in follow mode) and compared with the previous
//! observation. A regular file is released as [`Release::Stable`] when either
//! - its ctime is at least `max(settle, racy window)` old by the wall clock. ctime moves on every change of
//!   content or metadata and cannot be set back (unlike mtime), so the kernel itself vouches that nothing
//!   happened during the window. This releases old files found by a scan at once, without holding them in
//!   memory for a window; or
//! - we observed the same [`FileSnapshot`] (size, mtime, ctime, inode, dev) across the whole window, no
//!   event arrived during it, and the snapshot is not racy ([`FileSnapshot::is_racy`]). This is the path
//!   for clocks that disagree with file timestamps (NFS servers, a clock set back): timestamps from the
//!   future do not make a snapshot racy forever, our own observation window proves stability.
//!
//! A path observed missing for the whole window is released as [`Release::Removed`], but only if the
//! watched root is still the expected directory (so a deleted or unmounted root is never reported as a
//! mass deletion), and only for the topmost missing path: when a directory above it is gone too, the
//! removal is folded into one removal of that directory (which the agent applies to the whole subtree).
//!
//! A rename (`from` → `to`, paired by the kernel) makes `to` pending with a `renamed_from` hint, released as
//! `Stable { renamed_from: Some(from) }` so the agent can copy the object server-side instead of
//! uploading; `from` is released as `Removed` only after `to` has been released, so the copy source still
//! exists when the agent needs it. A renamed directory is released as [`Release::DirRenamed`] followed by
//! [`Release::Rescan`] of its new path.
//!
//! A directory that was created or moved in is released as [`Release::Rescan`] once it has existed for the
//! window: notify adds watches to a new directory a moment after it appears, and files created in that
//! moment produce no events; a scan that starts after the window sees them.
//!
//! Everything else (a FIFO, a socket, a symlink when not following) is "nothing uploadable here": released
//! as `Removed`, which is also what a complete scan would conclude. A path that cannot be `stat`ed is
//! released as [`Release::Unreadable`] for the agent to report and retry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::{debug, info};

use super::key::Escaped;
use super::root::RootGuard;
use super::scan::is_absent;
use crate::snapshot::{FileSnapshot, RACY_WINDOW};

/// Default settle window (`--settle`).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// Never re-check a path more often than this (a path whose timestamps are in the future, for instance).
const MIN_RECHECK: Duration = Duration::from_millis(20);

/// What is at a path right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    File(FileSnapshot),
    Missing,
    Dir,
    /// Not a regular file or directory (FIFO, socket, device, or a symlink when not following).
    Other(&'static str),
    /// `stat` failed for another reason than absence.
    Unreadable(String),
}

/// How the gate looks at the world; [`FsProbe`] in production, a fake in tests.
pub trait Probe {
    fn observe(&self, rel: &Path) -> Observation;
    fn wall_now(&self) -> SystemTime;
    /// The watched root is still the directory it is expected to be.
    fn root_ok(&self) -> bool;
}

/// The real file system.
#[derive(Debug, Clone)]
pub struct FsProbe {
    guard: Arc<RootGuard>,
    follow_symlinks: bool,
}

impl FsProbe {
    pub fn new(guard: Arc<RootGuard>, follow_symlinks: bool) -> Self {
        FsProbe { guard, follow_symlinks }
    }
}

impl Probe for FsProbe {
    fn observe(&self, rel: &Path) -> Observation {
        // Without --follow-symlinks, a path is looked at beneath the root with no symlink on the way: below a
        // directory that became a symlink, nothing of the tree is there any more (ELOOP counts as absent).
        let md = if self.follow_symlinks {
            std::fs::metadata(self.guard.path().join(rel))
        } else {
            crate::beneath::symlink_metadata(self.guard.path(), rel)
        };
        match md {
            Ok(md) => {
                let ft = md.file_type();
                if ft.is_file() {
                    Observation::File(FileSnapshot::from_metadata(&md))
                } else if ft.is_dir() {
                    Observation::Dir
                } else if ft.is_symlink() {
                    Observation::Other("symlink")
                } else if ft.is_fifo() {
                    Observation::Other("FIFO")
                } else if ft.is_socket() {
                    Observation::Other("socket")
                } else {
                    Observation::Other("device")
                }
            }
            Err(e) if is_absent(&e) || (!self.follow_symlinks && crate::beneath::is_gone(&e)) => Observation::Missing,
            Err(e) => Observation::Unreadable(e.to_string()),
        }
    }

    fn wall_now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn root_ok(&self) -> bool {
        self.guard.check().is_ok()
    }
}

/// What the gate lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// A regular file that held still for the settle window. `renamed_from`: the kernel reported that this
    /// file was renamed from that path (a hint for a server-side copy; check the snapshot against the
    /// index's record of `from` — a rename changes ctime but not inode, size or mtime). A `Removed` for
    /// `from` follows later if it is still gone.
    Stable { rel: PathBuf, snapshot: FileSnapshot, renamed_from: Option<PathBuf> },
    /// Nothing uploadable is at `rel` any more, verified over the window: remove `rel` and everything under
    /// `rel/`.
    Removed { rel: PathBuf },
    /// A directory was renamed inside the tree. Always followed by `Rescan { rel: to }`.
    DirRenamed { from: PathBuf, to: PathBuf },
    /// A directory appeared (created or moved in): scan it.
    Rescan { rel: PathBuf },
    /// `stat` failed (not because the path is gone): report it and retry later.
    Unreadable { rel: PathBuf, error: String },
}

/// What an event says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Content or metadata changed.
    Changed,
    /// Created or moved in: if it turns out to be a directory, its contents must be scanned.
    Created,
    /// Deleted or moved out.
    Removed,
}

#[derive(Debug)]
struct Entry {
    /// Deadline of this entry's live heap slot.
    due: Instant,
    /// Latest observation, and since when it has been the same.
    last: Option<Observation>,
    since: Instant,
    /// Latest event about this path.
    last_event: Instant,
    renamed_from: Option<PathBuf>,
    /// A removal created by a rename waits until the rename's target has been released.
    wait_for: Option<PathBuf>,
    rescan_if_dir: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct SettleGate {
    settle: Duration,
    entries: HashMap<PathBuf, Entry>,
    heap: BinaryHeap<Reverse<(Instant, PathBuf)>>,
}

impl SettleGate {
    pub fn new(settle: Duration) -> Self {
        SettleGate { settle, entries: HashMap::new(), heap: BinaryHeap::new() }
    }

    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// Paths pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_pending(&self, rel: &Path) -> bool {
        self.entries.contains_key(rel)
    }

    /// Forget everything pending (the root was lost: a full rescan follows when it is back).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.heap.clear();
    }

    /// Something happened at `rel`. A new entry is checked at the next [`poll`](Self::poll).
    pub fn touch(&mut self, rel: &Path, touch: Touch, now: Instant) {
        let entry = self.entry(rel, now);
        entry.last_event = entry.last_event.max(now);
        if touch == Touch::Created {
            entry.rescan_if_dir = true;
        }
    }

    /// The kernel paired a rename `from` → `to` (both inside the tree and not excluded).
    pub fn renamed(&mut self, from: &Path, to: &Path, now: Instant) {
        // Whatever was pending at `from` moved to `to` with the file; a fresh entry at `from` checks that it
        // is gone (or reports what replaced it).
        self.entries.remove(from);
        self.touch(from, Touch::Removed, now);
        if let Some(e) = self.entries.get_mut(from) {
            e.wait_for = Some(to.to_path_buf());
        }
        self.touch(to, Touch::Created, now);
        if let Some(e) = self.entries.get_mut(to) {
            e.renamed_from = Some(from.to_path_buf());
        }
    }

    /// When [`poll`](Self::poll) next has work.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// Check every path that is due, appending what is released to `out`.
    pub fn poll(&mut self, now: Instant, probe: &dyn Probe, out: &mut Vec<Release>) {
        let mut root_ok = None;
        while let Some(Reverse((due, _))) = self.heap.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, rel))) = self.heap.pop() else { break };
            if self.entries.get(&rel).is_some_and(|e| e.due == due) {
                self.check(rel, now, probe, &mut root_ok, out);
            }
        }
    }

    fn entry(&mut self, rel: &Path, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(rel) {
            self.heap.push(Reverse((now, rel.to_path_buf())));
        }
        self.entries.entry(rel.to_path_buf()).or_insert_with(|| Entry {
            due: now,
            last: None,
            since: now,
            last_event: now,
            renamed_from: None,
            wait_for: None,
            rescan_if_dir: false,
        })
    }

    fn reschedule(&mut self, rel: PathBuf, at: Instant, now: Instant) {
        let at = at.max(now + MIN_RECHECK);
        if let Some(e) = self.entries.get_mut(&rel) {
            e.due = at;
            self.heap.push(Reverse((at, rel)));
        }
    }

    fn check(
        &mut self,
        rel: PathBuf,
        now: Instant,
        probe: &dyn Probe,
        root_ok: &mut Option<bool>,
        out: &mut Vec<Release>,
    ) {
        let obs = probe.observe(&rel);
        let wall = probe.wall_now();
        let settle = self.settle;
        let Some(e) = self.entries.get_mut(&rel) else { return };
        if e.last.as_ref() != Some(&obs) {
            e.last = Some(obs.clone());
            e.since = now;
        }
        let quiet_at = e.since.max(e.last_event) + settle;
        let quiet = now >= quiet_at;
        match obs {
            Observation::File(snapshot) => {
                let window = settle.max(snapshot.racy_window());
                let age = ctime_age(&snapshot, wall);
                let kernel_quiet = is_settled(&snapshot, settle, wall);
                if kernel_quiet || (quiet && !racy(&snapshot, wall)) {
                    let renamed_from = e.renamed_from.take();
                    self.entries.remove(&rel);
                    debug!(path = %Escaped::path(&rel), size = snapshot.size, "stable");
                    out.push(Release::Stable { rel, snapshot, renamed_from });
                } else {
                    // The earliest moment either rule could hold.
                    let by_kernel = age.map(|a| now + (window - a.min(window)));
                    let mut at = quiet_at;
                    if racy(&snapshot, wall) {
                        at = at.max(now + snapshot.racy_wait(wall));
                    }
                    let at = by_kernel.map_or(at, |k| k.min(at));
                    self.reschedule(rel, at, now);
                }
            }
            _ if !quiet => self.reschedule(rel, quiet_at, now),
            Observation::Missing => self.release_missing(rel, now, probe, root_ok, out),
            Observation::Dir => {
                let Some(e) = self.entries.remove(&rel) else { return };
                if let Some(from) = e.renamed_from {
                    out.push(Release::DirRenamed { from, to: rel.clone() });
                    out.push(Release::Rescan { rel });
                } else if e.rescan_if_dir {
                    out.push(Release::Rescan { rel });
                }
                // Otherwise: a change of a directory's own metadata, nothing to do.
            }
            Observation::Other(what) => {
                info!(path = %Escaped::path(&rel), what, "not a regular file: skipped (any object at this path is stale)");
                self.entries.remove(&rel);
                out.push(Release::Removed { rel });
            }
            Observation::Unreadable(error) => {
                self.entries.remove(&rel);
                out.push(Release::Unreadable { rel, error });
            }
        }
    }

    fn release_missing(
        &mut self,
        rel: PathBuf,
        now: Instant,
        probe: &dyn Probe,
        root_ok: &mut Option<bool>,
        out: &mut Vec<Release>,
    ) {
        let Some(e) = self.entries.get(&rel) else { return };
        // A rename's source waits for the rename's target, so the agent sees the copy hint first.
        let target_due = e
            .wait_for
            .as_ref()
            .and_then(|target| self.entries.get(target))
            .filter(|t| t.renamed_from.as_deref() == Some(rel.as_path()))
            .map(|t| t.due);
        if let Some(due) = target_due {
            self.reschedule(rel, due + Duration::from_millis(1), now);
            return;
        }
        if !*root_ok.get_or_insert_with(|| probe.root_ok()) {
            // The root is gone or replaced: not a deletion. The watcher notices, clears the gate and asks
            // for a full rescan once the root is back; until then, hold.
            self.reschedule(rel, now + self.settle, now);
            return;
        }
        // Fold into the topmost missing directory above (checked top-down, so `rm -rf big/` becomes one
        // removal of `big`, whatever order the kernel reported its contents in).
        let top = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .find(|a| probe.observe(a) == Observation::Missing)
            .map(Path::to_path_buf);
        self.entries.remove(&rel);
        match top {
            Some(top) => {
                if !self.entries.contains_key(&top) {
                    self.touch(&top, Touch::Removed, now);
                }
            }
            None => {
                debug!(path = %Escaped::path(&rel), "removed");
                out.push(Release::Removed { rel });
            }
        }
    }
}

/// Whether a file with this snapshot is settled already, judged by the kernel's ctime alone: unchanged for
/// at least `max(settle, the snapshot's racy window)` by the wall clock `now`. For files found by a scan: those can be
/// acted on at once instead of being held in the gate, which keeps the gate's memory proportional to the
/// files that are actually changing (a first scan of a million old files must not fill it).
pub fn is_settled(snapshot: &FileSnapshot, settle: Duration, now: SystemTime) -> bool {
    ctime_age(snapshot, now).is_some_and(|age| age >= settle.max(snapshot.racy_window()))
}

fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

/// How long ago the file's ctime was, by the wall clock; `None` if it is in the future.
fn ctime_age(s: &FileSnapshot, wall: SystemTime) -> Option<Duration> {
    let age = ns(wall).checked_sub(s.ctime_ns)?;
    (age >= 0).then(|| Duration::from_nanos(age as u64))
}

/// [`FileSnapshot::is_racy`], except that timestamps well in the future (a clock set back, an NFS server
/// ahead of us, `touch -d tomorrow`) are not "the tick we are in": treating them as racy would hold the file
/// until that future arrives. Stability of such a file rests on our own observation window.
fn racy(s: &FileSnapshot, wall: SystemTime) -> bool {
    let newest = s.mtime_ns.max(s.ctime_ns);
    if newest > ns(wall).saturating_add(RACY_WINDOW.as_nanos() as i64) {
        return false;
    }
    s.is_racy(wall)
}

#[cfg(test)]
mod tests {
    //! The gate's logic on a fake file system and a manual clock: every timing is exact and repeatable.
    use super::*;
    use std::cell::{Cell, RefCell};

    struct FakeFs {
        start: Instant,
        wall_start: SystemTime,
        now: Cell<Instant>,
        files: RefCell<HashMap<PathBuf, Observation>>,
        root_ok: Cell<bool>,
        next_inode: Cell<u64>,
    }

    impl FakeFs {
        fn new() -> Self {
            let start = Instant::now();
            FakeFs {
                start,
                wall_start: SystemTime::now(),
                now: Cell::new(start),
                files: RefCell::new(HashMap::new()),
                root_ok: Cell::new(true),
                next_inode: Cell::new(100),
            }
        }
        fn wall_ns(&self) -> i64 {
            ns(self.wall_now())
        }
        /// Create or rewrite a file now (new size, timestamps now; inode kept when it exists).
        fn write(&self, rel: &str, size: u64) {
            let mut files = self.files.borrow_mut();
            let inode = match files.get(Path::new(rel)) {
                Some(Observation::File(s)) => s.inode,
                _ => {
                    self.next_inode.set(self.next_inode.get() + 1);
                    self.next_inode.get()
                }
            };
            let t = self.wall_ns();
            let snap = FileSnapshot { size, mtime_ns: t, ctime_ns: t, inode, dev: 1 };
            files.insert(PathBuf::from(rel), Observation::File(snap));
        }
        fn old_file(&self, rel: &str, size: u64, age: Duration) {
            let t = self.wall_ns() - age.as_nanos() as i64;
            let snap = FileSnapshot { size, mtime_ns: t, ctime_ns: t, inode: 7, dev: 1 };
            self.files.borrow_mut().insert(PathBuf::from(rel), Observation::File(snap));
        }
        fn mkdir(&self, rel: &str) {
            self.files.borrow_mut().insert(PathBuf::from(rel), Observation::Dir);
        }
        fn remove(&self, rel: &str) {
            self.files.borrow_mut().remove(Path::new(rel));
        }
        fn rename(&self, from: &str, to: &str) {
            let mut files = self.files.borrow_mut();
            let mut obs = files.remove(Path::new(from)).expect("rename source exists");
            if let Observation::File(s) = &mut obs {
                s.ctime_ns = self.wall_ns(); // rename touches ctime, not mtime
            }
            files.insert(PathBuf::from(to), obs);
        }
        fn snapshot(&self, rel: &str) -> FileSnapshot {
            match self.files.borrow().get(Path::new(rel)) {
                Some(Observation::File(s)) => *s,
                other => panic!("{rel} is {other:?}"),
            }
        }
    }

    impl Probe for FakeFs {
        fn observe(&self, rel: &Path) -> Observation {
            if rel.as_os_str().is_empty() {
                return Observation::Dir;
            }
            self.files.borrow().get(rel).cloned().unwrap_or(Observation::Missing)
        }
        fn wall_now(&self) -> SystemTime {
            self.wall_start + (self.now.get() - self.start)
        }
        fn root_ok(&self) -> bool {
            self.root_ok.get()
        }
    }

    /// The gate plus a clock; `run(d)` lets time pass, polling at every deadline, like the watcher does.
    struct Harness {
        gate: SettleGate,
        fs: FakeFs,
        log: Vec<(Duration, Release)>,
    }

    impl Harness {
        fn new() -> Self {
            Harness { gate: SettleGate::new(DEFAULT_SETTLE), fs: FakeFs::new(), log: vec![] }
        }
        fn now(&self) -> Instant {
            self.fs.now.get()
        }
        fn elapsed(&self) -> Duration {
            self.now() - self.fs.start
        }
        fn touch(&mut self, rel: &str, t: Touch) {
            let now = self.now();
            self.gate.touch(Path::new(rel), t, now);
        }
        fn renamed(&mut self, from: &str, to: &str) {
            let now = self.now();
            self.gate.renamed(Path::new(from), Path::new(to), now);
        }
        fn run(&mut self, d: Duration) {
            let end = self.now() + d;
            loop {
                let mut out = vec![];
                let now = self.now();
                self.gate.poll(now, &self.fs, &mut out);
                let at = self.elapsed();
                self.log.extend(out.into_iter().map(|r| (at, r)));
                match self.gate.next_due() {
                    Some(due) if due <= end => self.fs.now.set(due.max(self.now())),
                    _ => {
                        self.fs.now.set(end);
                        break;
                    }
                }
            }
            let mut out = vec![];
            self.gate.poll(self.now(), &self.fs, &mut out);
            let at = self.elapsed();
            self.log.extend(out.into_iter().map(|r| (at, r)));
        }
        fn releases(&self) -> Vec<Release> {
            self.log.iter().map(|(_, r)| r.clone()).collect()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn stable(rel: &str, snapshot: FileSnapshot) -> Release {
        Release::Stable { rel: rel.into(), snapshot, renamed_from: None }
    }

    #[test]
    fn a_new_file_is_released_once_after_the_window() {
        let mut h = Harness::new();
        h.fs.write("a", 10);
        h.touch("a", Touch::Created);
        h.run(ms(1900));
        assert!(h.log.is_empty(), "too early: {:?}", h.log);
        h.run(ms(5000));
        assert_eq!(h.releases(), vec![stable("a", h.fs.snapshot("a"))]);
        assert!(h.log[0].0 >= DEFAULT_SETTLE);
        assert!(h.gate.is_empty());
    }

    #[test]
    fn an_old_file_is_released_at_once() {
        let mut h = Harness::new();
        h.fs.old_file("old", 5, Duration::from_secs(3600));
        h.touch("old", Touch::Changed);
        h.run(Duration::ZERO);
        assert_eq!(h.releases(), vec![stable("old", h.fs.snapshot("old"))]);
    }

    #[test]
    fn a_slow_writer_is_released_once_after_it_stops_with_the_final_size() {
        let mut h = Harness::new();
        // Writes every 300 ms for 3 s; only every other write produces an event (inotify-quiet writer).
        for i in 0..10u64 {
            h.fs.write("log", 100 * (i + 1));
            if i % 2 == 0 {
                h.touch("log", Touch::Changed);
            }
            h.run(ms(300));
        }
        let stopped = h.elapsed();
        assert!(h.log.is_empty(), "released while still being written: {:?}", h.log);
        h.run(Duration::from_secs(10));
        assert_eq!(h.releases(), vec![stable("log", h.fs.snapshot("log"))]);
        assert_eq!(h.fs.snapshot("log").size, 1000);
        assert!(h.log[0].0 >= stopped);
    }

    #[test]
    fn a_writer_invisible_to_inotify_is_caught_by_the_timer() {
        let mut h = Harness::new();
        h.fs.write("mm", 1);
        h.touch("mm", Touch::Created);
        // No more events, but the file keeps changing (mmap, NFS): every check sees a new snapshot.
        for i in 2..20 {
            h.run(ms(500));
            h.fs.write("mm", i);
        }
        assert!(h.log.is_empty(), "{:?}", h.log);
        h.run(Duration::from_secs(10));
        assert_eq!(h.releases(), vec![stable("mm", h.fs.snapshot("mm"))]);
        assert_eq!(h.fs.snapshot("mm").size, 19);
    }

    #[test]
    fn a_file_deleted_before_settling_is_released_as_removed_not_stable() {
        let mut h = Harness::new();
        h.fs.write("t", 1);
        h.touch("t", Touch::Created);
        h.run(ms(500));
        h.fs.remove("t");
        h.touch("t", Touch::Removed);
        h.run(Duration::from_secs(10));
        assert_eq!(h.releases(), vec![Release::Removed { rel: "t".into() }]);
    }

    #[test]
    fn delete_and_recreate_within_the_window_is_one_change() {
        let mut h = Harness::new();
        h.fs.old_file("f", 1, Duration::from_secs(60));
        h.fs.remove("f");
        h.touch("f", Touch::Removed);
        h.run(ms(700));
        h.fs.write("f", 2);
        h.touch("f", Touch::Created);
        h.run(Duration::from_secs(10));
        assert_eq!(h.releases(), vec![stable("f", h.fs.snapshot("f"))]);
    }

    #[test]
    fn editor_save_via_temp_file_and_rename_is_one_release_of_the_final_content() {
        let mut h = Harness::new();
        h.fs.old_file("doc.txt", 5, Duration::from_secs(60));
        // Write a temporary (not excluded), then rename it over the target.
        h.fs.write("doc.txt.new", 6);
        h.touch("doc.txt.new", Touch::Created);
        h.run(ms(50));
        h.fs.rename("doc.txt.new", "doc.txt");
        h.renamed("doc.txt.new", "doc.txt");
        h.run(Duration::from_secs(10));
        let snap = h.fs.snapshot("doc.txt");
        assert_eq!(snap.size, 6);
        assert_eq!(
            h.releases(),
            vec![
                Release::Stable { rel: "doc.txt".into(), snapshot: snap, renamed_from: Some("doc.txt.new".into()) },
                Release::Removed { rel: "doc.txt.new".into() },
            ]
        );
    }

    #[test]
    fn a_rename_releases_the_target_before_the_source_removal() {
        let mut h = Harness::new();
        h.fs.old_file("a", 9, Duration::from_secs(60));
        h.fs.rename("a", "b");
        h.renamed("a", "b");
        // Keep writing the target for a while: the source's removal must still wait for it.
        for i in 0..8 {
            h.run(ms(400));
            h.fs.write("b", 10 + i);
            h.touch("b", Touch::Changed);
        }
        assert!(h.log.is_empty(), "{:?}", h.log);
        h.run(Duration::from_secs(10));
        assert_eq!(
            h.releases(),
            vec![
                Release::Stable { rel: "b".into(), snapshot: h.fs.snapshot("b"), renamed_from: Some("a".into()) },
                Release::Removed { rel: "a".into() },
            ]
        );
    }

    #[test]
    fn renamed_then_deleted_releases_both_removals() {
        let mut h = Harness::new();
        h.fs.old_file("a", 1, Duration::from_secs(60));
        h.fs.rename("a", "b");
        h.renamed("a", "b");
        h.run(ms(100));
        h.fs.remove("b");
        h.touch("b", Touch::Removed);
        h.run(Duration::from_secs(10));
        assert_eq!(h.releases(), vec![Release::Removed { rel: "b".into() }, Release::Removed { rel: "a".into() }]);
    }

    #[test]
    fn removals_fold_into_the_topmost_missing_directory() {
        let mut h = Harness::new();
        for f in ["top/d1/a", "top/d1/b", "top/d2/c"] {
            h.touch(f, Touch::Removed);
        }
        h.touch("top/d1", Touch::Removed);
        h.fs.mkdir("keep");
        h.fs.old_file("keep/x", 1, Duration::from_secs(60));
        h.fs.remove("keep/x");
        h.touch("keep/x", Touch::Removed);
        h.run(Duration::from_secs(10));
        let mut got = h.releases();
        got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(got, vec![Release::Removed { rel: "keep/x".into() }, Release::Removed { rel: "top".into() }]);
    }

    #[test]
    fn no_removal_is_released_while_the_root_is_not_the_expected_directory() {
        let mut h = Harness::new();
        for i in 0..100 {
            h.touch(&format!("f{i}"), Touch::Removed);
        }
        h.fs.root_ok.set(false);
        h.run(Duration::from_secs(60));
        assert!(h.log.is_empty(), "{:?}", h.log);
        assert_eq!(h.gate.len(), 100, "held, not dropped: the watcher decides (it clears the gate)");
        h.gate.clear();
        assert!(h.gate.next_due().is_none());
    }

    #[test]
    fn new_and_renamed_directories_are_rescanned_after_the_window() {
        let mut h = Harness::new();
        h.fs.mkdir("new");
        h.touch("new", Touch::Created);
        h.fs.mkdir("olddir");
        h.fs.rename("olddir", "moved");
        h.renamed("olddir", "moved");
        // A metadata change on an existing directory is nothing to act on.
        h.fs.mkdir("plain");
        h.touch("plain", Touch::Changed);
        h.run(ms(1000));
        assert!(h.log.is_empty());
        h.run(Duration::from_secs(10));
        let got = h.releases();
        assert!(got.contains(&Release::Rescan { rel: "new".into() }), "{got:?}");
        let dr = got.iter().position(|r| *r == Release::DirRenamed { from: "olddir".into(), to: "moved".into() });
        let rs = got.iter().position(|r| *r == Release::Rescan { rel: "moved".into() });
        let rm = got.iter().position(|r| *r == Release::Removed { rel: "olddir".into() });
        assert!(dr.is_some() && dr < rs && rs < rm, "{got:?}");
        assert_eq!(got.len(), 4, "{got:?}");
    }

    #[test]
    fn specials_are_not_uploadable_and_errors_are_reported() {
        let mut h = Harness::new();
        h.fs.files.borrow_mut().insert("fifo".into(), Observation::Other("FIFO"));
        h.fs.files.borrow_mut().insert("locked".into(), Observation::Unreadable("Permission denied".into()));
        h.touch("fifo", Touch::Created);
        h.touch("locked", Touch::Changed);
        h.run(Duration::from_secs(10));
        let got = h.releases();
        assert!(got.contains(&Release::Removed { rel: "fifo".into() }));
        assert!(got.contains(&Release::Unreadable { rel: "locked".into(), error: "Permission denied".into() }));
    }

    #[test]
    fn a_file_stamped_in_the_future_is_not_held_until_then() {
        let mut h = Harness::new();
        let future = h.fs.wall_ns() + 86_400_000_000_000;
        let snap = FileSnapshot { size: 1, mtime_ns: future, ctime_ns: future, inode: 5, dev: 1 };
        h.fs.files.borrow_mut().insert("f".into(), Observation::File(snap));
        h.touch("f", Touch::Changed);
        h.run(Duration::from_secs(30));
        assert_eq!(h.releases(), vec![stable("f", snap)]);
    }

    #[test]
    fn a_recent_file_waits_out_the_racy_window_even_with_a_short_settle() {
        // Whole-second timestamps (a file system that may keep only seconds): the 2 s window.
        let mut h = Harness::new();
        h.gate = SettleGate::new(ms(10));
        let t = h.fs.wall_ns() - h.fs.wall_ns().rem_euclid(1_000_000_000);
        let snap = FileSnapshot { size: 1, mtime_ns: t, ctime_ns: t, inode: 9, dev: 1 };
        h.fs.files.borrow_mut().insert("f".into(), Observation::File(snap));
        h.touch("f", Touch::Created);
        h.run(ms(900));
        assert!(h.log.is_empty(), "racy snapshot released: {:?}", h.log);
        h.run(Duration::from_secs(5));
        assert_eq!(h.releases().len(), 1);
        assert!(h.log[0].0 + Duration::from_secs(1) >= RACY_WINDOW);

        // Sub-second timestamps: the kernel tick bounds the granularity, the window is 100 ms.
        let mut h = Harness::new();
        h.gate = SettleGate::new(ms(10));
        let t = h.fs.wall_ns() - h.fs.wall_ns().rem_euclid(1_000_000_000) + 123_456_789;
        let snap = FileSnapshot { size: 1, mtime_ns: t, ctime_ns: t, inode: 9, dev: 1 };
        h.fs.files.borrow_mut().insert("f".into(), Observation::File(snap));
        h.touch("f", Touch::Created);
        h.run(Duration::from_secs(5));
        assert_eq!(h.releases().len(), 1);
        assert!(h.log[0].0 < RACY_WINDOW, "released after {:?}", h.log[0].0);
    }

    #[test]
    fn settledness_of_scanned_files() {
        let now = SystemTime::now();
        // Timestamps with a sub-second part, as ext4/XFS/tmpfs give.
        let at = |age: Duration| {
            let t = ns(now) - age.as_nanos() as i64;
            let t = if t.rem_euclid(1_000_000_000) == 0 { t - 1 } else { t };
            FileSnapshot { size: 1, mtime_ns: t, ctime_ns: t, inode: 1, dev: 1 }
        };
        assert!(is_settled(&at(Duration::from_secs(3600)), DEFAULT_SETTLE, now));
        assert!(!is_settled(&at(ms(500)), DEFAULT_SETTLE, now));
        assert!(!is_settled(&at(ms(50)), ms(10), now), "never inside the racy window");
        assert!(is_settled(&at(ms(150)), ms(10), now));
        // Whole seconds: the coarse window holds even with a short settle.
        let whole = |age: Duration| {
            let t = ns(now) - age.as_nanos() as i64;
            let t = t - t.rem_euclid(1_000_000_000);
            FileSnapshot { size: 1, mtime_ns: t, ctime_ns: t, inode: 1, dev: 1 }
        };
        assert!(!is_settled(&whole(ms(500)), ms(10), now), "never inside the coarse racy window");
        assert!(!is_settled(&at(Duration::from_secs(10)), Duration::from_secs(30), now));
        let mut future = at(Duration::ZERO);
        future.ctime_ns += 10_000_000_000;
        assert!(!is_settled(&future, DEFAULT_SETTLE, now), "a ctime in the future proves nothing");
    }

    #[test]
    fn memory_is_one_entry_per_path() {
        let mut h = Harness::new();
        h.fs.write("busy", 1);
        for _ in 0..10_000 {
            h.touch("busy", Touch::Changed);
        }
        assert_eq!(h.gate.len(), 1);
        assert_eq!(h.gate.heap.len(), 1);
    }
}
