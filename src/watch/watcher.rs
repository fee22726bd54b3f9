//! The running watcher: notify events → settle gate → [`WatchEvent`]s for the agent.
//!
//! One driver task owns everything mutable (the notify backend, the gate, the rename pairing, the root
//! state), so there are no locks on the hot path. It reacts to: agent commands, raw notify events, the
//! gate's next deadline, the root-check tick and the periodic-rescan tick.
//!
//! # Raw events and backpressure
//! notify calls our handler on its own thread. The handler never blocks (a blocked notify thread would also
//! block `watch`/`unwatch` calls, a deadlock waiting to happen): it drops read-only events (every upload
//! opens and reads files, which must not look like changes), collapses bursts of writes to one file, and
//! `try_send`s into a bounded channel. When that channel is full the event is dropped and an overflow flag
//! is raised, which the driver answers with a rescan of the root — exactly what it does for the kernel's
//! own queue overflow (`IN_Q_OVERFLOW`, notify's `Flag::Rescan`). Memory stays bounded whatever the churn.
//!
//! # inotify limits
//! Adding a watch beyond `fs.inotify.max_user_watches` fails with ENOSPC (notify's `MaxFilesWatch`), at
//! start or later when new directories appear. The driver then logs what to raise and how, drops the
//! inotify watcher (giving its watches back to the other programs of the user), switches to notify's
//! `PollWatcher` for the whole tree and asks for a rescan. Polling is slower and keeps one entry per path in
//! memory (that is how `PollWatcher` works); it is a degraded mode, announced as
//! [`WatchEvent::PollingFallback`].
//!
//! # Losing the root
//! The root is checked every `root_check_interval` and at once when inotify reports it deleted or moved.
//! When it is gone or is no longer the same directory (see [`super::root`]), the driver says so
//! ([`WatchEvent::RootMissing`]), drops the watcher, discards everything pending in the gate (the gate also
//! refuses to release removals while the root is wrong) and keeps checking. When an acceptable directory is
//! back it re-establishes the watcher and sends [`WatchEvent::RootBack`] followed by a full rescan. Losing
//! the root never produces a `Removed`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::filter::{Filter, FilterConfig, FilterError};
use super::key::Escaped;
use super::root::{RootError, RootGuard, RootId};
use super::scan::Scanner;
use super::settle::{DEFAULT_SETTLE, FsProbe, Release, SettleGate, Touch};
use crate::snapshot::FileSnapshot;

/// Default full-rescan interval (`--rescan-interval`).
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(3600);
/// Default interval between checks that the root is still there.
pub const DEFAULT_ROOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Default polling interval once fallen back to `PollWatcher`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Default capacity of the raw-event and output channels.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 8192;

/// While the root is missing, remind the log this often.
const MISSING_ROOT_REMINDER: Duration = Duration::from_secs(60);

/// Which notify backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// inotify, falling back to polling when it cannot watch the whole tree.
    #[default]
    Auto,
    /// Polling only (file systems without inotify support, such as some network mounts).
    Poll,
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub root: PathBuf,
    pub filter: FilterConfig,
    pub follow_symlinks: bool,
    /// How long a file must stay unchanged (`--settle`).
    pub settle: Duration,
    /// Full rescan interval, the safety net behind events (`--rescan-interval`).
    pub rescan_interval: Duration,
    pub root_check_interval: Duration,
    pub poll_interval: Duration,
    pub backend: Backend,
    pub channel_capacity: usize,
    /// Test seam: faults to inject into backend setup.
    pub(crate) faults: Faults,
}

impl WatchConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        WatchConfig {
            root: root.into(),
            filter: FilterConfig::default(),
            follow_symlinks: false,
            settle: DEFAULT_SETTLE,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            root_check_interval: DEFAULT_ROOT_CHECK_INTERVAL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            backend: Backend::Auto,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            faults: Faults::default(),
        }
    }
}

/// Fault injection for tests: the inotify limit cannot be lowered for one test without affecting the whole
/// machine, so the error is injected where notify would return it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    /// Make setting up the inotify watcher fail with notify's `MaxFilesWatch` (ENOSPC).
    pub(crate) native_watch_limit: bool,
}

/// What the agent receives. See the module docs of [`crate::watch`] for how to act on each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A regular file that held still for the settle window; `renamed_from` is a server-side-copy hint.
    Stable { rel: PathBuf, snapshot: FileSnapshot, renamed_from: Option<PathBuf> },
    /// Nothing uploadable at `rel` any more (verified): remove `rel` and everything under `rel/`.
    Removed { rel: PathBuf },
    /// A directory was renamed inside the tree; a `Rescan` of `to` follows, a `Removed` of `from` later.
    DirRenamed { from: PathBuf, to: PathBuf },
    /// Scan `rel` ("" = the whole root) and reconcile everything at and under it with the index.
    Rescan { rel: PathBuf, reason: RescanReason },
    /// `stat` failed for a reason other than absence: report, retry at the next rescan.
    Unreadable { rel: PathBuf, error: String },
    /// The root is gone, unmounted or replaced. Nothing is deleted; the watcher waits for it.
    RootMissing { error: String },
    /// The root is back (a full `Rescan` follows).
    RootBack,
    /// inotify could not watch the tree; polling instead (degraded: slower, memory per path).
    PollingFallback { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescanReason {
    /// First scan after start.
    Initial,
    /// The `--rescan-interval` timer.
    Periodic,
    /// Events were lost (kernel queue or our channel overflowed).
    Overflow,
    /// A directory was created or moved in.
    NewDirectory,
    /// A directory was renamed inside the tree.
    DirRenamed,
    /// The root came back after being lost.
    RootBack,
    /// The watcher was replaced (inotify limit → polling): events may have been lost meanwhile.
    WatcherChanged,
    /// The watcher reported an error it could not attribute to a path.
    WatcherError,
    /// [`Watch::request_rescan`].
    Requested,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Root(#[from] RootError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("cannot watch {root}: {source}")]
    Backend {
        root: String,
        #[source]
        source: notify::Error,
    },
}

enum Command {
    Touch(PathBuf),
    Rescan(PathBuf),
    #[cfg(test)]
    InjectRaw(notify::Result<notify::Event>),
}

/// Handle to a running watcher. Dropping it stops the watcher too; [`Watch::shutdown`] waits for it.
#[derive(Debug)]
pub struct Watch {
    cmds: mpsc::UnboundedSender<Command>,
    /// Stops the driver even while it waits to hand an event to an agent that stopped reading.
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    scanner: Scanner,
    pending: Arc<Pending>,
    settle: Duration,
}

/// What [`Watch::pending`] counts, shared with the driver.
#[derive(Debug, Default)]
struct Pending {
    /// Paths in the gate, as of the driver's last update.
    gate: AtomicUsize,
    /// [`Watch::settle`] calls the driver has not put into the gate yet.
    touches: AtomicUsize,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Watch {
    /// Start watching: checks the root, installs the watcher (inotify, or polling when the limit is hit),
    /// then spawns the driver, whose first event is `Rescan { rel: "", reason: Initial }`. Watching starts
    /// before that scan, so nothing that changes during it is missed.
    pub async fn start(cfg: WatchConfig) -> Result<(Watch, mpsc::Receiver<WatchEvent>), WatchError> {
        let guard = Arc::new(RootGuard::new(&cfg.root)?);
        let filter = Arc::new(Filter::new(guard.path(), &cfg.filter)?);
        let scanner = Scanner::new(guard.clone(), filter.clone(), cfg.follow_symlinks);
        let (out_tx, out_rx) = mpsc::channel(cfg.channel_capacity.max(1));
        let (raw_tx, raw_rx) = mpsc::channel(cfg.channel_capacity.max(1));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let pending = Arc::new(Pending::default());
        let settle = cfg.settle;
        let mut driver = Driver {
            probe: FsProbe::new(guard.clone(), cfg.follow_symlinks),
            gate: SettleGate::new(cfg.settle),
            guard,
            filter,
            out: out_tx,
            cmds: cmd_rx,
            cancel: cancel.clone(),
            raw_tx,
            raw_rx,
            overflow: Arc::new(Overflow::default()),
            backend: BackendState::None,
            generation: 0,
            root_missing: None,
            pending_from: None,
            pending: pending.clone(),
            cfg,
        };
        if let Some(pre) = driver
            .establish()
            .await
            .map_err(|source| WatchError::Backend { root: driver.guard.path().display().to_string(), source })?
        {
            // Tell the agent about a degraded start before anything else.
            let _ = driver.out.try_send(pre);
        }
        let task = tokio::spawn(driver.run());
        Ok((Watch { cmds: cmd_tx, cancel, task: Some(task), scanner, pending, settle }, out_rx))
    }

    /// A scanner over the same root, with the same filter and symlink policy.
    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Put `rel` through the settle gate (for files a scan found different from the index). A `Stable`,
    /// `Removed` or `Unreadable` for it follows.
    pub fn settle(&self, rel: impl Into<PathBuf>) {
        // Counted before it is sent, so `pending` never misses a path on its way into the gate.
        self.pending.touches.fetch_add(1, Ordering::SeqCst);
        if self.cmds.send(Command::Touch(rel.into())).is_err() {
            self.pending.touches.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Ask for a `Rescan` of `rel` ("" = everything) through the event stream.
    pub fn request_rescan(&self, rel: impl Into<PathBuf>) {
        let _ = self.cmds.send(Command::Rescan(rel.into()));
    }

    /// Whether a scanned file is already settled by its own timestamps (see [`super::settle::is_settled`]):
    /// then it can be acted on without going through the gate.
    pub fn is_settled(&self, snapshot: &FileSnapshot) -> bool {
        super::settle::is_settled(snapshot, self.settle, std::time::SystemTime::now())
    }

    /// Paths waiting in the settle gate, including those handed to [`Watch::settle`] that the driver has
    /// not taken yet. A path leaves the count only after its event (if any) was sent: so once this is 0 and
    /// the event receiver is empty, nothing is on its way (what `--once` needs to call a run converged).
    pub fn pending(&self) -> usize {
        // Touches first: the driver adds a touched path to the gate count before it uncounts the touch.
        let touches = self.pending.touches.load(Ordering::SeqCst);
        touches + self.pending.gate.load(Ordering::SeqCst)
    }

    /// Stop watching and wait for the driver to finish (it does not wait for the agent to read pending
    /// events). Pending paths are dropped: the next start scans.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_raw(&self, event: notify::Result<notify::Event>) {
        let _ = self.cmds.send(Command::InjectRaw(event));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Set by the notify thread when an event had to be dropped.
#[derive(Debug, Default)]
struct Overflow {
    flag: AtomicBool,
    notify: Notify,
}

struct RawEvent {
    generation: u64,
    event: notify::Result<notify::Event>,
}

/// The notify event handler (runs on notify's thread; never blocks).
struct Sink {
    generation: u64,
    tx: mpsc::Sender<RawEvent>,
    overflow: Arc<Overflow>,
    /// Last data-modification event forwarded, to collapse a burst of writes to one file.
    last_write: Option<(PathBuf, std::time::Instant)>,
    /// Writes to the same file within this long of a forwarded one are not forwarded. Safe because the
    /// gate re-stats pending paths on its own: it only needs to know a path is pending, and a path stays
    /// pending for at least the settle window after its last forwarded event (so this must stay below it).
    collapse: Duration,
}

impl notify::EventHandler for Sink {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if let Ok(ev) = &event {
            match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                // Opens and reads, including the agent's own uploads reading files.
                EventKind::Access(_) => return,
                EventKind::Modify(ModifyKind::Data(_)) => {
                    let now = std::time::Instant::now();
                    let collapsed = match (&self.last_write, ev.paths.first()) {
                        (Some((path, at)), Some(p)) => path == p && now.duration_since(*at) < self.collapse,
                        _ => false,
                    };
                    if collapsed {
                        return;
                    }
                    self.last_write = ev.paths.first().map(|p| (p.clone(), now));
                }
                _ => {}
            }
        }
        match self.tx.try_send(RawEvent { generation: self.generation, event }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflow.flag.swap(true, Ordering::AcqRel) {
                    self.overflow.notify.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

enum BackendState {
    None,
    Native(#[allow(dead_code)] notify::RecommendedWatcher),
    Poll(#[allow(dead_code)] notify::PollWatcher),
}

struct Driver {
    cfg: WatchConfig,
    guard: Arc<RootGuard>,
    filter: Arc<Filter>,
    probe: FsProbe,
    gate: SettleGate,
    out: mpsc::Sender<WatchEvent>,
    cmds: mpsc::UnboundedReceiver<Command>,
    cancel: CancellationToken,
    raw_tx: mpsc::Sender<RawEvent>,
    raw_rx: mpsc::Receiver<RawEvent>,
    overflow: Arc<Overflow>,
    backend: BackendState,
    /// Incremented whenever the backend is replaced; raw events of older backends are ignored.
    generation: u64,
    /// `Some(last reminder)` while the root is lost.
    root_missing: Option<Instant>,
    /// The last unpaired rename source: (tracker, its relative path unless excluded).
    pending_from: Option<(usize, Option<PathBuf>)>,
    pending: Arc<Pending>,
}

/// The driver could not send (the agent dropped the receiver): stop.
struct Closed;

impl Driver {
    async fn run(mut self) {
        if self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::Initial }).await.is_err() {
            return;
        }
        let mut root_tick = tokio::time::interval(self.cfg.root_check_interval);
        root_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut rescan_tick = tokio::time::interval_at(start + self.cfg.rescan_interval, self.cfg.rescan_interval);
        rescan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let overflow = self.overflow.clone();
        let cancel = self.cancel.clone();
        loop {
            self.pending.gate.store(self.gate.len(), Ordering::SeqCst);
            let due = self.gate.next_due();
            // Not `biased`: a flood of commands must not starve raw events or the gate's deadlines.
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = self.cmds.recv() => match cmd {
                    None => break,
                    Some(cmd) => self.on_command(cmd).await,
                },
                Some(raw) = self.raw_rx.recv() => {
                    if raw.generation == self.generation { self.on_raw(raw.event).await } else { Ok(()) }
                }
                _ = overflow.notify.notified() => self.on_overflow().await,
                _ = sleep_until(due) => self.poll_gate().await,
                _ = root_tick.tick() => self.check_root().await,
                _ = rescan_tick.tick() => {
                    if self.root_missing.is_none() {
                        info!("periodic full rescan");
                        self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::Periodic }).await
                    } else {
                        Ok(())
                    }
                }
            };
            if result.is_err() {
                debug!("watcher stops (shut down, or the event receiver was dropped)");
                break;
            }
        }
        self.backend = BackendState::None;
    }

    async fn emit(&self, ev: WatchEvent) -> Result<(), Closed> {
        tokio::select! {
            sent = self.out.send(ev) => sent.map_err(|_| Closed),
            _ = self.cancel.cancelled() => Err(Closed),
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), Closed> {
        match cmd {
            Command::Touch(rel) => {
                if !self.filter.excludes_path(&rel, false) {
                    self.gate.touch(&rel, Touch::Changed, Instant::now());
                }
                self.pending.gate.store(self.gate.len(), Ordering::SeqCst);
                self.pending.touches.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
            Command::Rescan(rel) => self.emit(WatchEvent::Rescan { rel, reason: RescanReason::Requested }).await,
            #[cfg(test)]
            Command::InjectRaw(event) => self.on_raw(event).await,
        }
    }

    async fn on_overflow(&mut self) -> Result<(), Closed> {
        if self.overflow.flag.swap(false, Ordering::AcqRel) {
            warn!("file-system events arrived faster than they could be handled and some were dropped; rescanning");
            self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::Overflow }).await?;
        }
        Ok(())
    }

    async fn poll_gate(&mut self) -> Result<(), Closed> {
        let mut released = Vec::new();
        self.gate.poll(Instant::now(), &self.probe, &mut released);
        let mut renamed_dir: Option<PathBuf> = None;
        for r in released {
            let ev = match r {
                Release::Stable { rel, snapshot, renamed_from } => WatchEvent::Stable { rel, snapshot, renamed_from },
                Release::Removed { rel } => WatchEvent::Removed { rel },
                Release::DirRenamed { from, to } => {
                    renamed_dir = Some(to.clone());
                    WatchEvent::DirRenamed { from, to }
                }
                Release::Rescan { rel } => {
                    // The gate releases a renamed directory as DirRenamed immediately followed by its Rescan.
                    let reason = if renamed_dir.take().as_ref() == Some(&rel) {
                        RescanReason::DirRenamed
                    } else {
                        RescanReason::NewDirectory
                    };
                    WatchEvent::Rescan { rel, reason }
                }
                Release::Unreadable { rel, error } => {
                    warn!(path = %Escaped::path(&rel), %error, "cannot stat; will retry at the next rescan");
                    WatchEvent::Unreadable { rel, error }
                }
            };
            self.emit(ev).await?;
        }
        Ok(())
    }

    fn rel(&self, path: &Path) -> Option<PathBuf> {
        match path.strip_prefix(self.guard.path()) {
            Ok(rel) => Some(rel.to_path_buf()),
            Err(_) => {
                debug!(path = %Escaped::path(path), "event outside the watched root; ignored");
                None
            }
        }
    }

    async fn on_raw(&mut self, event: notify::Result<notify::Event>) -> Result<(), Closed> {
        let ev = match event {
            Ok(ev) => ev,
            Err(err) => return self.on_backend_error(err).await,
        };
        if ev.need_rescan() {
            warn!("the kernel's event queue overflowed (fs.inotify.max_queued_events); rescanning");
            return self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::Overflow }).await;
        }
        let now = Instant::now();
        for path in &ev.paths {
            let Some(rel) = self.rel(path) else { continue };
            if rel.as_os_str().is_empty() {
                // The root itself was deleted or moved: find out now rather than at the next tick.
                if matches!(ev.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) {
                    self.check_root().await?;
                }
                continue;
            }
            match ev.kind {
                EventKind::Create(kind) => self.touch(&rel, Touch::Created, kind == CreateKind::Folder, now),
                EventKind::Remove(_) => self.touch(&rel, Touch::Removed, false, now),
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) => self.rename_from(rel, ev.tracker(), now),
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => self.rename_to(rel, ev.tracker(), now),
                // notify pairs From/To into Both as well; we pair them ourselves (same cookie logic), so that
                // excluded sides are handled in one place.
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {}
                // An unpaired or unspecified rename: whatever is there now may be new.
                EventKind::Modify(ModifyKind::Name(_)) => self.touch(&rel, Touch::Created, false, now),
                EventKind::Modify(_) | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    self.touch(&rel, Touch::Changed, false, now)
                }
                EventKind::Access(_) => {}
                EventKind::Any | EventKind::Other => self.touch(&rel, Touch::Changed, false, now),
            }
        }
        Ok(())
    }

    fn touch(&mut self, rel: &Path, touch: Touch, is_dir: bool, now: Instant) {
        if self.filter.excludes_path(rel, is_dir) {
            return;
        }
        self.gate.touch(rel, touch, now);
    }

    fn rename_from(&mut self, rel: PathBuf, tracker: Option<usize>, now: Instant) {
        let Some(tracker) = tracker else {
            // No cookie: notify's translation of IN_MOVE_SELF on a watched subdirectory. Its parent's watch
            // already reported the same move as a paired MOVED_FROM, under the right name.
            return;
        };
        let included = !self.filter.excludes_path(&rel, false);
        if included {
            // Treated as a removal until (unless) its other half arrives.
            self.gate.touch(&rel, Touch::Removed, now);
        }
        self.pending_from = Some((tracker, included.then_some(rel)));
    }

    fn rename_to(&mut self, rel: PathBuf, tracker: Option<usize>, now: Instant) {
        let from = match (self.pending_from.take(), tracker) {
            (Some((t, from)), Some(tracker)) if t == tracker => from,
            (other, _) => {
                self.pending_from = other;
                None
            }
        };
        if self.filter.excludes_path(&rel, false) {
            return; // moved out of view: the source (if included) is already pending as a removal
        }
        match from {
            Some(from) => self.gate.renamed(&from, &rel, now),
            // Moved in from outside the tree or from an excluded name (`file.tmp` → `file`).
            None => self.gate.touch(&rel, Touch::Created, now),
        }
    }

    async fn on_backend_error(&mut self, err: notify::Error) -> Result<(), Closed> {
        if is_watch_limit(&err) {
            let reason = limit_message(&err);
            return self.fall_back_to_polling(reason).await;
        }
        match &err.kind {
            notify::ErrorKind::Io(_) | notify::ErrorKind::Generic(_) if err.paths.is_empty() => {
                warn!(error = %err, "file-system watcher error; rescanning to be safe");
                self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::WatcherError }).await
            }
            _ => {
                for path in &err.paths {
                    debug!(path = %Escaped::path(path), error = %err, "watcher error for a path");
                }
                Ok(())
            }
        }
    }

    /// Install a fresh backend for the current root. Returns an event to announce (a degraded mode), if any.
    async fn establish(&mut self) -> Result<Option<WatchEvent>, notify::Error> {
        // Drop the old watcher first: its inotify watches count against the same per-user limit.
        self.backend = BackendState::None;
        self.generation += 1;
        self.pending_from = None;
        if self.cfg.backend == Backend::Poll {
            self.backend = self.start_poll().await?;
            return Ok(None);
        }
        let sink = self.sink();
        let root = self.guard.path().to_path_buf();
        let follow = self.cfg.follow_symlinks;
        let inject_limit = self.cfg.faults.native_watch_limit;
        let native = tokio::task::spawn_blocking(move || -> notify::Result<notify::RecommendedWatcher> {
            if inject_limit {
                return Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(root));
            }
            let config = notify::Config::default().with_follow_symlinks(follow);
            let mut w = notify::RecommendedWatcher::new(sink, config)?;
            // Walks the whole tree adding one watch per directory: blocking, hence spawn_blocking.
            w.watch(&root, RecursiveMode::Recursive)?;
            Ok(w)
        })
        .await
        .map_err(|e| notify::Error::generic(&format!("watcher setup panicked: {e}")))?;
        match native {
            Ok(w) => {
                info!(root = %self.guard.path().display(), "watching with inotify");
                self.backend = BackendState::Native(w);
                Ok(None)
            }
            Err(err) => {
                let reason = if is_watch_limit(&err) {
                    limit_message(&err)
                } else {
                    // A directory inotify refuses (permissions, an exotic file system) makes notify's
                    // recursive watch fail as a whole; polling still works there.
                    format!("inotify cannot watch the tree ({err})")
                };
                error!("{reason}; falling back to polling every {:?}", self.cfg.poll_interval);
                self.backend = self.start_poll().await?;
                Ok(Some(WatchEvent::PollingFallback { reason }))
            }
        }
    }

    fn sink(&self) -> Sink {
        Sink {
            generation: self.generation,
            tx: self.raw_tx.clone(),
            overflow: self.overflow.clone(),
            last_write: None,
            collapse: (self.cfg.settle / 4).min(Duration::from_millis(100)),
        }
    }

    async fn start_poll(&mut self) -> Result<BackendState, notify::Error> {
        let sink = self.sink();
        let root = self.guard.path().to_path_buf();
        let config = notify::Config::default()
            .with_poll_interval(self.cfg.poll_interval)
            .with_follow_symlinks(self.cfg.follow_symlinks);
        let poll = tokio::task::spawn_blocking(move || -> notify::Result<notify::PollWatcher> {
            let mut w = notify::PollWatcher::new(sink, config)?;
            w.watch(&root, RecursiveMode::Recursive)?; // an initial walk of the whole tree
            Ok(w)
        })
        .await
        .map_err(|e| notify::Error::generic(&format!("poll watcher setup panicked: {e}")))??;
        info!(root = %self.guard.path().display(), interval = ?self.cfg.poll_interval, "watching by polling");
        Ok(BackendState::Poll(poll))
    }

    async fn fall_back_to_polling(&mut self, reason: String) -> Result<(), Closed> {
        if matches!(self.backend, BackendState::Poll(_)) {
            return Ok(());
        }
        error!("{reason}; falling back to polling every {:?}", self.cfg.poll_interval);
        self.backend = BackendState::None; // release the inotify watches now
        self.generation += 1;
        match self.start_poll().await {
            Ok(poll) => self.backend = poll,
            Err(err) => {
                error!(error = %err, "cannot poll the tree either; relying on periodic rescans until the root is re-established");
            }
        }
        self.emit(WatchEvent::PollingFallback { reason }).await?;
        self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::WatcherChanged }).await
    }

    async fn check_root(&mut self) -> Result<(), Closed> {
        if self.root_missing.is_none() {
            let Err(err) = self.guard.check() else { return Ok(()) };
            error!(
                root = %self.guard.path().display(),
                error = %err,
                "watched directory lost; this is NOT treated as deletions: nothing is removed remotely; \
                 waiting for it to come back"
            );
            self.backend = BackendState::None;
            self.generation += 1;
            self.gate.clear();
            self.pending_from = None;
            self.root_missing = Some(Instant::now());
            self.emit(WatchEvent::RootMissing { error: err.to_string() }).await?;
        }
        self.try_root_back().await
    }

    async fn try_root_back(&mut self) -> Result<(), Closed> {
        let expected = self.guard.expected();
        let root = self.guard.path().display().to_string();
        let remind = self.root_missing.is_some_and(|at| at.elapsed() >= MISSING_ROOT_REMINDER);
        match RootId::probe(self.guard.path()) {
            Ok(now) if expected.accepts_replacement(&now) => {
                self.guard.set_expected(now);
                match self.establish().await {
                    Ok(notice) => {
                        info!(%root, "watched directory is back; rescanning it");
                        self.root_missing = None;
                        self.emit(WatchEvent::RootBack).await?;
                        if let Some(notice) = notice {
                            self.emit(notice).await?;
                        }
                        self.emit(WatchEvent::Rescan { rel: PathBuf::new(), reason: RescanReason::RootBack }).await?;
                    }
                    Err(err) => {
                        self.guard.set_expected(expected);
                        warn!(%root, error = %err, "watched directory reappeared but cannot be watched yet; retrying");
                    }
                }
            }
            Ok(_) if remind => {
                warn!(%root, "still waiting: the path shows a directory that is not a mount point, but it was one (not mounted?)");
                self.root_missing = Some(Instant::now());
            }
            Err(err) if remind => {
                warn!(%root, error = %err, "still waiting for the watched directory");
                self.root_missing = Some(Instant::now());
            }
            _ => {}
        }
        Ok(())
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// notify reports the inotify watch limit as `MaxFilesWatch`; creating an instance beyond
/// `max_user_instances` comes back as EMFILE.
fn is_watch_limit(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(e) => matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EMFILE)),
        _ => false,
    }
}

fn sysctl_value(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn limit_message(err: &notify::Error) -> String {
    let instances = matches!(&err.kind, notify::ErrorKind::Io(e) if e.raw_os_error() == Some(libc::EMFILE));
    let (name, value) = if instances { ("max_user_instances", "1024") } else { ("max_user_watches", "1048576") };
    format!(
        "inotify limit reached: fs.inotify.{name} = {current} is too low to watch every directory of this tree. \
         Raise it with `sudo sysctl fs.inotify.{name}={value}` (persist it with \
         `echo fs.inotify.{name}={value} | sudo tee /etc/sysctl.d/90-ossmirror.conf`) and restart ossmirror. \
         Until then changes are found by polling, which is slower and uses memory for every path",
        current = sysctl_value(name),
    )
}

#[cfg(test)]
mod tests {
    //! Real files, real inotify, real time. Every wait is for an expected event with a generous timeout;
    //! absence is asserted either after a later marker event (when order makes it conclusive) or over a
    //! window several times the settle time.
    use super::*;
    use crate::watch::scan::ScanItem;
    use crate::watch::testutil::*;
    use std::io::Write;

    const SETTLE: Duration = Duration::from_millis(500);

    struct Rig {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        watch: Option<Watch>,
        rx: mpsc::Receiver<WatchEvent>,
        seen: Vec<WatchEvent>,
    }

    impl Rig {
        async fn start(prepare: impl FnOnce(&Path), configure: impl FnOnce(&mut WatchConfig)) -> Rig {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("root")).unwrap();
            prepare(&tmp.path().join("root"));
            Rig::start_in(tmp, configure).await
        }

        /// Watch `tmp/root` (which must exist) with `tmp/outside` as a place to move things from and to.
        async fn start_in(tmp: tempfile::TempDir, configure: impl FnOnce(&mut WatchConfig)) -> Rig {
            init_tracing();
            let root = tmp.path().join("root");
            let outside = tmp.path().join("outside");
            std::fs::create_dir(&outside).unwrap();
            let mut cfg = WatchConfig::new(&root);
            cfg.settle = SETTLE;
            cfg.root_check_interval = Duration::from_millis(100);
            configure(&mut cfg);
            let (watch, rx) = Watch::start(cfg).await.unwrap();
            let mut rig = Rig { _tmp: tmp, root, outside, watch: Some(watch), rx, seen: vec![] };
            rig.expect("initial rescan", |e| is_rescan(e, "", RescanReason::Initial)).await;
            rig
        }

        fn watch(&self) -> &Watch {
            self.watch.as_ref().unwrap()
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        async fn expect(&mut self, what: &str, pred: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(ev)) => {
                        self.seen.push(ev.clone());
                        if pred(&ev) {
                            return ev;
                        }
                    }
                    Ok(None) => panic!("event stream closed while waiting for {what}; seen: {:#?}", self.seen),
                    Err(_) => panic!("no {what} within {PATIENCE:?}; seen: {:#?}", self.seen),
                }
            }
        }

        async fn expect_stable(&mut self, rel: &str) -> (FileSnapshot, Option<PathBuf>) {
            match self.expect(&format!("Stable({rel})"), |e| is_stable(e, rel)).await {
                WatchEvent::Stable { snapshot, renamed_from, .. } => (snapshot, renamed_from),
                _ => unreachable!(),
            }
        }

        /// Collect what arrives during `d` (to show that something does not happen).
        async fn drain_for(&mut self, d: Duration) {
            let end = Instant::now() + d;
            while let Ok(Some(ev)) = tokio::time::timeout_at(end, self.rx.recv()).await {
                self.seen.push(ev);
            }
        }

        fn count(&self, pred: impl Fn(&WatchEvent) -> bool) -> usize {
            self.seen.iter().filter(|e| pred(e)).count()
        }

        async fn scan_files(&self, rel: &str) -> Vec<PathBuf> {
            let mut stream = self.watch().scanner().stream(Path::new(rel));
            let mut files = vec![];
            while let Some(item) = stream.next().await {
                match item {
                    ScanItem::File { rel, .. } => files.push(rel),
                    ScanItem::Done(report) => assert!(report.complete, "{report:?}"),
                    _ => {}
                }
            }
            files.sort();
            files
        }
    }

    fn is_stable(e: &WatchEvent, rel: &str) -> bool {
        matches!(e, WatchEvent::Stable { rel: r, .. } if r == Path::new(rel))
    }
    fn is_removed(e: &WatchEvent, rel: &str) -> bool {
        matches!(e, WatchEvent::Removed { rel: r } if r == Path::new(rel))
    }
    fn is_rescan(e: &WatchEvent, rel: &str, reason: RescanReason) -> bool {
        matches!(e, WatchEvent::Rescan { rel: r, reason: why } if r == Path::new(rel) && *why == reason)
    }
    fn strictly_under(rel: &Path, dir: &str) -> bool {
        rel.starts_with(dir) && rel != Path::new(dir)
    }
    fn mentions(e: &WatchEvent, needle: &str) -> bool {
        format!("{e:?}").contains(needle)
    }

    #[tokio::test]
    async fn create_write_rename_delete() {
        let mut rig = Rig::start(|_| {}, |_| {}).await;
        std::fs::write(rig.p("a.txt"), b"hello").unwrap();
        let (snap, from) = rig.expect_stable("a.txt").await;
        assert_eq!((snap.size, from), (5, None));

        let mut f = std::fs::OpenOptions::new().append(true).open(rig.p("a.txt")).unwrap();
        f.write_all(b" world").unwrap();
        drop(f);
        let (snap, _) = rig.expect_stable("a.txt").await;
        assert_eq!(snap.size, 11);

        std::fs::rename(rig.p("a.txt"), rig.p("b.txt")).unwrap();
        let (moved, from) = rig.expect_stable("b.txt").await;
        assert_eq!(from.as_deref(), Some(Path::new("a.txt")), "rename carries its source");
        assert!(moved.same_file(&snap) && moved.size == snap.size && moved.mtime_ns == snap.mtime_ns);
        rig.expect("Removed(a.txt) after the rename's target", |e| is_removed(e, "a.txt")).await;

        std::fs::remove_file(rig.p("b.txt")).unwrap();
        rig.expect("Removed(b.txt)", |e| is_removed(e, "b.txt")).await;
        assert_eq!(rig.count(|e| is_stable(e, "a.txt")), 2);
        assert_eq!(rig.count(|e| is_stable(e, "b.txt")), 1);
        rig.watch.take().unwrap().shutdown().await;
    }

    #[tokio::test]
    async fn moves_into_and_out_of_the_tree() {
        let mut rig = Rig::start(|_| {}, |_| {}).await;
        std::fs::write(rig.outside.join("in.txt"), b"from outside").unwrap();
        std::fs::rename(rig.outside.join("in.txt"), rig.p("in.txt")).unwrap();
        let (snap, from) = rig.expect_stable("in.txt").await;
        assert_eq!((snap.size, from), (12, None));

        std::fs::rename(rig.p("in.txt"), rig.outside.join("back.txt")).unwrap();
        rig.expect("Removed(in.txt)", |e| is_removed(e, "in.txt")).await;

        // A whole directory moved in: its contents arrive by a rescan of it.
        let src = rig.outside.join("dir");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        for f in ["a", "b", "sub/c"] {
            std::fs::write(src.join(f), f).unwrap();
        }
        std::fs::rename(&src, rig.p("movedin")).unwrap();
        rig.expect("Rescan(movedin)", |e| is_rescan(e, "movedin", RescanReason::NewDirectory)).await;
        let want: Vec<PathBuf> = ["movedin/a", "movedin/b", "movedin/sub/c"].iter().map(PathBuf::from).collect();
        assert_eq!(rig.scan_files("movedin").await, want);

        // And moved out again: one removal for the directory.
        std::fs::rename(rig.p("movedin"), rig.outside.join("gone")).unwrap();
        rig.expect("Removed(movedin)", |e| is_removed(e, "movedin")).await;
        assert_eq!(
            rig.count(|e| matches!(e, WatchEvent::Removed { rel } if strictly_under(rel, "movedin"))),
            0,
            "{:#?}",
            rig.seen
        );
    }

    #[tokio::test]
    async fn mkdir_with_files_moved_in_then_rmdir() {
        let mut rig = Rig::start(|_| {}, |_| {}).await;
        for i in 0..5 {
            std::fs::write(rig.outside.join(format!("f{i}")), b"x").unwrap();
        }
        std::fs::create_dir(rig.p("d")).unwrap();
        // Moved in right away, possibly before notify has added a watch on `d`.
        for i in 0..5 {
            std::fs::rename(rig.outside.join(format!("f{i}")), rig.p(&format!("d/f{i}"))).unwrap();
        }
        rig.expect("Rescan(d)", |e| is_rescan(e, "d", RescanReason::NewDirectory)).await;
        // The rescan is released only after the directory existed for the settle window, so a scan now sees
        // every file, whether or not inotify reported them.
        let want: Vec<PathBuf> = (0..5).map(|i| PathBuf::from(format!("d/f{i}"))).collect();
        assert_eq!(rig.scan_files("d").await, want);

        // Let any Stable events for the files arrive, then remove the whole directory.
        rig.drain_for(SETTLE * 6).await;
        std::fs::remove_dir_all(rig.p("d")).unwrap();
        rig.expect("Removed(d)", |e| is_removed(e, "d")).await;
        rig.drain_for(SETTLE * 4).await;
        let per_file = rig.count(|e| matches!(e, WatchEvent::Removed { rel } if strictly_under(rel, "d")));
        assert_eq!(per_file, 0, "file removals are folded into the directory's: {:#?}", rig.seen);
    }

    #[tokio::test]
    async fn directory_rename_inside_the_tree() {
        let mut rig = Rig::start(
            |root| {
                std::fs::create_dir(root.join("d1")).unwrap();
                std::fs::write(root.join("d1/x"), b"x").unwrap();
            },
            |_| {},
        )
        .await;
        std::fs::rename(rig.p("d1"), rig.p("d2")).unwrap();
        rig.expect(
            "DirRenamed",
            |e| matches!(e, WatchEvent::DirRenamed { from, to } if from == Path::new("d1") && to == Path::new("d2")),
        )
        .await;
        let after = rig.seen.len();
        rig.expect("Rescan(d2)", |e| is_rescan(e, "d2", RescanReason::DirRenamed)).await;
        rig.expect("Removed(d1)", |e| is_removed(e, "d1")).await;
        assert!(rig.seen.len() > after);
        assert_eq!(rig.scan_files("d2").await, vec![PathBuf::from("d2/x")]);
    }

    #[tokio::test]
    async fn editor_saves_are_released_once_with_the_final_content() {
        let mut rig = Rig::start(|root| std::fs::write(root.join("doc.txt"), b"version 1").unwrap(), |_| {}).await;

        // vim: probe file, backup by rename, write the new file, delete the backup.
        std::fs::write(rig.p("4913"), b"").unwrap();
        std::fs::remove_file(rig.p("4913")).unwrap();
        std::fs::rename(rig.p("doc.txt"), rig.p("doc.txt~")).unwrap();
        let mut f = std::fs::File::create(rig.p("doc.txt")).unwrap();
        f.write_all(b"version 2, longer").unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::remove_file(rig.p("doc.txt~")).unwrap();
        let (snap, _) = rig.expect_stable("doc.txt").await;
        assert_eq!(snap.size, 17);

        // gedit/GIO: write a temporary, rename it over the target.
        std::fs::write(rig.p(".goutputstream-Q1W2E3"), b"version 3").unwrap();
        std::fs::rename(rig.p(".goutputstream-Q1W2E3"), rig.p("doc.txt")).unwrap();
        let (snap, from) = rig.expect_stable("doc.txt").await;
        assert_eq!((snap.size, from), (9, None), "the source was an ignored temporary");

        // A marker written after both saves: once it is released, anything the saves would have produced
        // has been released too.
        rig.drain_for(SETTLE * 2).await;
        std::fs::write(rig.p("marker"), b"m").unwrap();
        rig.expect_stable("marker").await;
        assert_eq!(rig.count(|e| is_stable(e, "doc.txt")), 2, "one release per save: {:#?}", rig.seen);
        assert_eq!(rig.count(|e| is_removed(e, "doc.txt")), 0, "{:#?}", rig.seen);
        for temp in ["4913", "doc.txt~", "goutputstream"] {
            assert_eq!(rig.count(|e| mentions(e, temp)), 0, "{temp}: {:#?}", rig.seen);
        }
    }

    #[tokio::test]
    async fn a_slow_writer_is_released_once_after_it_stops_with_the_final_size() {
        let mut rig = Rig::start(|_| {}, |cfg| cfg.settle = DEFAULT_SETTLE).await;
        let path = rig.p("slow.log");
        let writer = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            for _ in 0..10 {
                f.write_all(&[b'x'; 1000]).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
            std::time::Instant::now()
        });
        let (snap, _) = rig.expect_stable("slow.log").await;
        let released_at = std::time::Instant::now();
        let finished_at = writer.await.unwrap();
        assert_eq!(snap.size, 10_000, "released with the final size");
        assert!(released_at > finished_at, "released only after the writer stopped");
        std::fs::write(rig.p("marker"), b"m").unwrap();
        rig.expect_stable("marker").await;
        assert_eq!(rig.count(|e| is_stable(e, "slow.log")), 1, "{:#?}", rig.seen);
    }

    #[tokio::test]
    async fn root_removed_and_recreated_is_never_a_mass_deletion() {
        let mut rig = Rig::start(
            |root| {
                std::fs::create_dir(root.join("dir")).unwrap();
                for f in ["a", "b", "dir/c"] {
                    std::fs::write(root.join(f), f).unwrap();
                }
            },
            |_| {},
        )
        .await;
        std::fs::remove_dir_all(&rig.root).unwrap();
        rig.expect("RootMissing", |e| matches!(e, WatchEvent::RootMissing { .. })).await;
        // Give any removal ample time to be (wrongly) released.
        rig.drain_for(SETTLE * 6).await;
        // A scan now is incomplete, never an empty complete one.
        let mut scan = rig.watch().scanner().stream(Path::new(""));
        while let Some(item) = scan.next().await {
            if let ScanItem::Done(report) = item {
                assert!(!report.complete);
            }
        }

        std::fs::create_dir(&rig.root).unwrap();
        rig.expect("RootBack", |e| *e == WatchEvent::RootBack).await;
        rig.expect("full rescan", |e| is_rescan(e, "", RescanReason::RootBack)).await;
        std::fs::write(rig.p("new.txt"), b"after").unwrap();
        rig.expect_stable("new.txt").await;
        assert_eq!(rig.count(|e| matches!(e, WatchEvent::Removed { .. })), 0, "{:#?}", rig.seen);
        let missing = rig.seen.iter().position(|e| matches!(e, WatchEvent::RootMissing { .. }));
        let back = rig.seen.iter().position(|e| *e == WatchEvent::RootBack);
        assert!(missing < back);
    }

    #[tokio::test]
    async fn an_unmounted_root_is_not_a_deletion_and_is_picked_up_when_mounted_again() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // A real mount and unmount: the tests run as root (CI does), which may mount a tmpfs.
        mount_tmpfs(&root).unwrap_or_else(|e| {
            panic!(
                "mounting a tmpfs on {} failed ({e}): this test needs root (CAP_SYS_ADMIN), as CI has",
                root.display()
            )
        });
        let _mounts = MountGuard(root.clone());
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("a"), b"a").unwrap();
        std::fs::write(root.join("dir/b"), b"b").unwrap();
        let mut rig = Rig::start_in(tmp, |_| {}).await;

        unmount(&rig.root).unwrap();
        let ev = rig.expect("RootMissing", |e| matches!(e, WatchEvent::RootMissing { .. })).await;
        assert!(mentions(&ev, "mount point"), "{ev:?}");
        // The path now shows the empty directory underneath: not the tree, not "everything deleted".
        rig.drain_for(SETTLE * 6).await;
        assert_eq!(rig.count(|e| matches!(e, WatchEvent::Removed { .. } | WatchEvent::RootBack)), 0, "{:#?}", rig.seen);
        let mut scan = rig.watch().scanner().stream(Path::new(""));
        while let Some(item) = scan.next().await {
            if let ScanItem::Done(report) = item {
                assert!(!report.complete, "a scan of the bare mount point is incomplete");
            }
        }

        mount_tmpfs(&rig.root).unwrap();
        rig.expect("RootBack", |e| *e == WatchEvent::RootBack).await;
        rig.expect("full rescan", |e| is_rescan(e, "", RescanReason::RootBack)).await;
        std::fs::write(rig.p("c"), b"c").unwrap();
        rig.expect_stable("c").await;
        assert_eq!(rig.count(|e| matches!(e, WatchEvent::Removed { .. })), 0, "{:#?}", rig.seen);
    }

    #[tokio::test]
    async fn inotify_limit_at_start_falls_back_to_polling() {
        let mut rig = Rig::start(
            |_| {},
            |cfg| {
                cfg.faults.native_watch_limit = true;
                cfg.poll_interval = Duration::from_millis(200);
            },
        )
        .await;
        let notice = rig.seen.iter().find(|e| matches!(e, WatchEvent::PollingFallback { .. })).cloned();
        let Some(WatchEvent::PollingFallback { reason }) = notice else { panic!("no fallback notice: {:?}", rig.seen) };
        assert!(reason.contains("fs.inotify.max_user_watches") && reason.contains("sysctl"), "{reason}");
        std::fs::write(rig.p("polled.txt"), b"p").unwrap();
        rig.expect_stable("polled.txt").await;
        std::fs::remove_file(rig.p("polled.txt")).unwrap();
        rig.expect("Removed(polled.txt)", |e| is_removed(e, "polled.txt")).await;
    }

    #[tokio::test]
    async fn inotify_limit_reached_later_switches_to_polling_and_rescans() {
        let mut rig = Rig::start(|_| {}, |cfg| cfg.poll_interval = Duration::from_millis(200)).await;
        rig.watch().inject_raw(Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)));
        rig.expect(
            "fallback notice",
            |e| matches!(e, WatchEvent::PollingFallback { reason } if reason.contains("max_user_watches")),
        )
        .await;
        rig.expect("rescan", |e| is_rescan(e, "", RescanReason::WatcherChanged)).await;
        std::fs::write(rig.p("later.txt"), b"l").unwrap();
        rig.expect_stable("later.txt").await;
    }

    #[tokio::test]
    async fn overflow_and_watcher_errors_request_a_full_rescan() {
        let mut rig = Rig::start(|_| {}, |_| {}).await;
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        rig.watch().inject_raw(Ok(overflow));
        rig.expect("overflow rescan", |e| is_rescan(e, "", RescanReason::Overflow)).await;
        rig.watch().inject_raw(Err(notify::Error::io(std::io::Error::other("read failed"))));
        rig.expect("error rescan", |e| is_rescan(e, "", RescanReason::WatcherError)).await;
    }

    #[test]
    fn the_notify_handler_never_blocks_and_flags_dropped_events() {
        use notify::EventHandler;
        let (tx, mut rx) = mpsc::channel(1);
        let overflow = Arc::new(Overflow::default());
        let mut sink = Sink {
            generation: 1,
            tx,
            overflow: overflow.clone(),
            last_write: None,
            collapse: Duration::from_secs(3600),
        };
        let p = PathBuf::from("/r/f");
        let ev = |kind| Ok(notify::Event::new(kind).add_path(p.clone()));
        // Reads are not changes.
        sink.handle_event(ev(EventKind::Access(AccessKind::Open(AccessMode::Any))));
        sink.handle_event(ev(EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(rx.try_recv().is_err());
        // A burst of writes to one file is one event.
        sink.handle_event(ev(EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any))));
        sink.handle_event(ev(EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any))));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        // A full channel drops the event, does not block, and raises the flag.
        sink.handle_event(ev(EventKind::Create(CreateKind::File)));
        sink.handle_event(ev(EventKind::Remove(notify::event::RemoveKind::File)));
        assert!(overflow.flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn excluded_ignored_and_special_paths() {
        let mut rig = Rig::start(
            |root| std::fs::create_dir(root.join("node_modules")).unwrap(),
            |cfg| cfg.filter.excludes = vec!["*.log".into(), "node_modules".into()],
        )
        .await;
        std::fs::write(rig.p("debug.log"), b"x").unwrap();
        std::fs::write(rig.p("node_modules/pkg.js"), b"x").unwrap();
        std::fs::write(rig.p(".notes.txt.swp"), b"x").unwrap();
        std::fs::write(rig.p("download.iso.part"), b"x").unwrap();
        mkfifo(&rig.p("pipe"));
        // The FIFO is not uploadable: released as "nothing here" (and never opened, or this would hang).
        rig.expect("Removed(pipe)", |e| is_removed(e, "pipe")).await;
        std::fs::write(rig.p("marker"), b"m").unwrap();
        rig.expect_stable("marker").await;
        for name in ["debug.log", "node_modules", "swp", ".part"] {
            assert_eq!(rig.count(|e| mentions(e, name)), 0, "{name}: {:#?}", rig.seen);
        }
    }

    #[tokio::test]
    async fn periodic_and_requested_rescans_and_submitted_paths() {
        let mut rig = Rig::start(
            |root| std::fs::write(root.join("found-by-scan"), b"s").unwrap(),
            |cfg| cfg.rescan_interval = Duration::from_millis(300),
        )
        .await;
        rig.expect("periodic rescan", |e| is_rescan(e, "", RescanReason::Periodic)).await;
        rig.watch().request_rescan("sub");
        rig.expect("requested rescan", |e| is_rescan(e, "sub", RescanReason::Requested)).await;
        // What the agent does with a scanned file that differs from its index.
        rig.watch().settle("found-by-scan");
        rig.expect_stable("found-by-scan").await;
        assert_eq!(rig.watch().pending(), 0);
    }

    /// Paused time: the default one-hour safety-net rescan fires (and only after an hour), without the test
    /// taking an hour. Time only advances when the runtime is idle, so the clock readings are exact.
    #[tokio::test(start_paused = true)]
    async fn the_default_periodic_rescan_fires_every_hour() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = WatchConfig::new(tmp.path());
        assert_eq!(cfg.rescan_interval, Duration::from_secs(3600));
        let (watch, mut rx) = Watch::start(cfg).await.unwrap();
        let t0 = Instant::now();
        assert!(matches!(rx.recv().await, Some(WatchEvent::Rescan { reason: RescanReason::Initial, .. })));
        for n in 1..=2u32 {
            match rx.recv().await {
                Some(WatchEvent::Rescan { rel, reason: RescanReason::Periodic }) => {
                    assert!(rel.as_os_str().is_empty());
                    assert!(t0.elapsed() >= DEFAULT_RESCAN_INTERVAL * n, "{:?}", t0.elapsed());
                }
                other => panic!("expected a periodic rescan, got {other:?}"),
            }
        }
        watch.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_an_agent_that_stopped_reading() {
        let rig = Rig::start(|_| {}, |cfg| cfg.channel_capacity = 1).await;
        for _ in 0..10 {
            rig.watch().request_rescan("x"); // fills the output channel; nobody reads
        }
        let Rig { watch, rx: _rx, _tmp, .. } = rig;
        tokio::time::timeout(PATIENCE, watch.unwrap().shutdown()).await.expect("shutdown finished");
    }

    #[tokio::test]
    async fn shutdown_stops_the_driver() {
        let mut rig = Rig::start(|_| {}, |_| {}).await;
        let watch = rig.watch.take().unwrap();
        tokio::time::timeout(PATIENCE, watch.shutdown()).await.expect("shutdown finished");
        let end = tokio::time::timeout(PATIENCE, async { while rig.rx.recv().await.is_some() {} });
        end.await.expect("the event stream ends after shutdown");
    }
}
