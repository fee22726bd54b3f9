//! The agent: `ossmirror --watch DIR --bucket B` as a long-running service.
//!
//! ```text
//!  Watch (notify + settle gate) ──events──▶ ┐
//!  reconcile (scan task) ──────requests──▶  ├─▶ loop ──▶ Scheduler ──▶ job tasks (actions: sync / remove)
//!  signals, timers ───────────────────────▶ ┘                               │
//!                                   state (index, checkpoints, status) ◀────┘
//! ```
//!
//! One loop owns the scheduler and the watch handle; scans and jobs run as tasks and report back through
//! channels, so nothing slow (a million-file scan, a 50 GB upload, a stuck remote) ever blocks the loop.
//! Start-up (`setup`) locks and opens the state, connects to the remote (or starts the embedded server),
//! and cleans up what an earlier run left. Shutdown stops intake, lets parts in flight finish for up to
//! `--shutdown-timeout`, then stops; every upload resumes from its checkpoint on the next start.

pub mod actions;
pub mod dry_run;
pub mod local;
pub mod metrics;
pub mod reconcile;
pub mod remote_check;
pub mod scheduler;
pub mod setup;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentSettings, ConfigError, ProcessEnv};
use crate::engine::{Engine, EngineConfig, EngineStats};
use crate::remote::{ErrorKind, Remote, RemoteError};
use crate::state::{StateDb, StateError};
use crate::watch::{Filter, FilterConfig, Watch, WatchConfig, WatchError, WatchEvent, escape_path, object_key};
use actions::{Ctx, INVALID_NAME_BUCKET, JobError, Outcome};
use metrics::Metrics;
use reconcile::Request;
use remote_check::{CheckReport, CheckRequest};
use scheduler::{Finish, Job, Scheduler};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("another ossmirror agent is already running with the state database {state_db}")]
    AlreadyRunning { state_db: PathBuf },
    #[error("{0}")]
    Io(String),
    #[error("the embedded local server could not start: {0}")]
    Embedded(String),
    #[error("the remote is not usable: {0}")]
    Remote(RemoteError),
    #[error("cannot watch {path}: {error}")]
    Watch { path: PathBuf, error: String },
    #[error("{0}")]
    Invalid(String),
}

/// What the agent publishes about itself for `ossmirror status` (in the state database, every few seconds).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AgentInfo {
    pub pid: u32,
    pub started_at: u64,
    pub updated_at: u64,
    pub watch: String,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
    /// No endpoint configured: objects stay on this machine, in `embedded_root`.
    pub embedded: bool,
    pub embedded_root: Option<String>,
    pub queued: usize,
    pub running: usize,
    pub waiting_retry: usize,
    pub initial_scan_done: bool,
    pub root_missing: bool,
    pub polling_fallback: bool,
    pub remote_error: Option<String>,
    /// The bucket does not exist (an error state: nothing can be synced).
    #[serde(default)]
    pub bucket_missing: bool,
    /// The last check of the remote against the index.
    #[serde(default)]
    pub remote_check: Option<CheckReport>,
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// `--once`: keys of files that still failed after their retries, and escaped paths of files whose
    /// names cannot be object keys.
    pub failed: Vec<String>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Attempts per file under `--once` before it counts as failed.
const ONCE_ATTEMPTS: u32 = 3;
/// Longest retry delay (`--once` uses a shorter one so a run ends).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);
const ONCE_MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

/// Run the agent until `shutdown` is cancelled (or, with `--once`, until everything is synced).
pub async fn run(settings: AgentSettings, shutdown: CancellationToken) -> Result<RunReport, AgentError> {
    crate::remote::names::validate_bucket(&settings.bucket).map_err(|e| AgentError::Invalid(e.to_string()))?;
    if settings.prefix.starts_with('/') {
        return Err(AgentError::Invalid(format!("--prefix {:?} must not start with '/'", settings.prefix)));
    }
    let root = wait_for_root(&settings, &shutdown).await?;
    let Some(root) = root else { return Ok(RunReport::default()) };

    let state_path = match &settings.state_db {
        Some(p) => p.clone(),
        None => setup::default_state_db(&settings, &ProcessEnv),
    };
    let agent_lock = setup::lock(&state_path)?;
    let (state, open_report) = setup::open_state(&state_path).await?;
    tracing::info!(state_db = %state_path.display(), "state database open");
    // The index describes one remote; opened against another (or written by a build that did not say),
    // nothing in it is trusted before it is proven here again.
    let embedded_root = settings.remote.endpoint.is_none().then(|| setup::embedded_root(&state_path));
    setup::bind_remote(&state, setup::remote_identity(&settings, embedded_root.as_deref())).await?;

    // `--bwlimit`: one bucket for every upload of this agent, whatever --jobs and --threads are.
    let throttle = settings.bwlimit.map(|rate| Arc::new(crate::remote::Throttle::new(rate)));
    let (remote, embedded) = match settings.remote.connect_with(throttle.clone())? {
        Some(remote) => (remote, None),
        None => {
            let (embedded, remote) = setup::embedded(&state_path, &settings.bucket, throttle).await?;
            (remote, Some(embedded))
        }
    };
    let endpoint = remote.endpoint_display();
    if let Some(e) = &embedded {
        tracing::warn!(
            store = %e.root.display(), endpoint = %endpoint,
            "NO ENDPOINT CONFIGURED: objects are stored ON THIS MACHINE by the embedded OSS-compatible server, \
             not in the cloud. Set --endpoint (or OSS_ENDPOINT) and credentials to mirror to Alibaba Cloud OSS."
        );
    }

    let metrics = Arc::new(Metrics::default());
    let mut info = AgentInfo {
        pid: std::process::id(),
        started_at: unix_now(),
        watch: root.display().to_string(),
        bucket: settings.bucket.clone(),
        prefix: settings.prefix.clone(),
        endpoint: endpoint.clone(),
        embedded: embedded.is_some(),
        embedded_root: embedded.as_ref().map(|e| e.root.display().to_string()),
        ..AgentInfo::default()
    };
    publish(&state, &mut info);

    let has_objects = match probe_remote(&*remote, &settings, &metrics, &state, &mut info, &shutdown).await? {
        Some(has) => has,
        None => return Ok(RunReport::default()),
    };
    // Recognised by the identity of their directory, however the tree reaches them (see watch::filter).
    let mut own_paths = vec![state_path.clone(), agent_lock.path.clone()];
    own_paths.extend(embedded.as_ref().map(|e| e.root.clone()));
    let filter_config =
        FilterConfig { excludes: settings.exclude.clone(), default_ignores: settings.default_excludes, own_paths };
    // The same rules the watcher applies: a kept checkpoint of a file excluded since would never resume.
    let filter = Filter::new(&root, &filter_config).map_err(|e| watch_error(&root, WatchError::from(e)))?;
    let scope = setup::Scope { root: &root, bucket: &settings.bucket, prefix: &settings.prefix, filter: &filter };
    let recovery = setup::recover(&state, &open_report, &*remote, &scope, settings.orphan_age).await?;
    tracing::info!(
        kept = recovery.kept,
        aborted = recovery.aborted_abandoned,
        orphans = recovery.aborted_orphans,
        "recovered unfinished uploads"
    );

    // A fresh (or rebuilt) index over a remote that already holds objects: adopt matching objects instead
    // of uploading them again.
    let index_empty = state.counts()?.synced_files == 0;
    let adopt = index_empty && has_objects;
    if adopt {
        tracing::info!(
            "the index is empty but the remote prefix is not: existing objects are adopted after a CRC-64 check"
        );
    }

    let threads = settings.threads.max(1);
    let engine_config = EngineConfig {
        part_size: settings.part_size,
        threads,
        multipart_threshold: settings.part_size,
        // A global cap on parts in flight across files: bounds connections and memory whatever --jobs is.
        global_parts_in_flight: Some(Arc::new(tokio::sync::Semaphore::new(threads * 2))),
        // Nothing outside the watched tree is ever read: no symlink in any component, unless asked.
        follow_symlinks: settings.follow_symlinks,
        confine_to: Some(root.clone()),
        ..EngineConfig::default()
    };
    let engine =
        Engine::new(remote.clone(), state.clone(), engine_config).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let graceful = CancellationToken::new();
    let ctx = Arc::new(Ctx {
        root_id: root_id(&root)?,
        root: root.clone(),
        bucket: settings.bucket.clone(),
        prefix: settings.prefix.clone(),
        delete: settings.delete,
        allow_mass_delete: settings.allow_mass_delete,
        follow_symlinks: settings.follow_symlinks,
        remote: remote.clone(),
        state: state.clone(),
        engine: engine.clone(),
        metrics: metrics.clone(),
        graceful: graceful.clone(),
        adopt: AtomicBool::new(adopt),
        remote_surprise: AtomicBool::new(false),
        part_size: settings.part_size,
        multipart_threshold: settings.part_size,
        object: settings.object.clone(),
    });

    let metrics_stop = CancellationToken::new();
    if let Some(addr) = settings.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone(), metrics_stop.clone())
            .await
            .map_err(|e| AgentError::Io(format!("--metrics-listen {addr}: {e}")))?;
        tracing::info!(address = %bound, "serving Prometheus metrics on /metrics");
    }

    let watch_config = WatchConfig {
        filter: filter_config,
        follow_symlinks: settings.follow_symlinks,
        settle: settings.settle,
        rescan_interval: settings.rescan_interval,
        ..WatchConfig::new(&root)
    };
    let (watch, events) = Watch::start(watch_config).await.map_err(|e| watch_error(&root, e))?;
    let check_filter = watch.scanner().filter().clone();

    let mut agent = Loop {
        ctx,
        settings,
        watch,
        sched: Scheduler::new(1, MAX_RETRY_DELAY),
        jobs: JoinSet::new(),
        job_tasks: HashMap::new(),
        scans: JoinSet::new(),
        scan_tasks: HashMap::new(),
        scanning: HashSet::new(),
        initial_scan_done: false,
        check: RemoteCheck {
            filter: check_filter,
            running: false,
            first_done: false,
            next_at: None,
            wanted: false,
            last_started: None,
            failures: 0,
            tasks: JoinSet::new(),
        },
        failed: Vec::new(),
        unmirrorable: HashSet::new(),
        info,
        last_publish: Instant::now(),
        last_remote_alarm: None,
    };
    let max_delay = if agent.settings.once { ONCE_MAX_RETRY_DELAY } else { MAX_RETRY_DELAY };
    agent.sched = Scheduler::new(agent.settings.jobs, max_delay);
    let report = agent.run(events, &shutdown).await;

    // Stop intake, then give parts in flight their time.
    let Loop { watch, mut jobs, mut scans, ctx, settings, mut info, .. } = agent;
    watch.shutdown().await;
    scans.abort_all();
    graceful.cancel();
    let deadline = tokio::time::sleep(settings.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = jobs.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(unfinished = jobs.len(), "shutdown timeout: stopping uploads now (they resume from their checkpoints)");
                jobs.abort_all();
                break;
            }
        }
    }
    metrics_stop.cancel();
    info.running = 0;
    info.updated_at = unix_now();
    info.pid = 0;
    publish(&ctx.state, &mut info);
    drop(ctx);
    if let Some(e) = embedded {
        e.server.shutdown().await;
    }
    Ok(report)
}

fn watch_error(root: &Path, e: WatchError) -> AgentError {
    AgentError::Watch { path: root.to_path_buf(), error: e.to_string() }
}

fn root_id(root: &Path) -> Result<(u64, u64), AgentError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(root).map_err(|e| AgentError::Io(format!("{}: {e}", root.display())))?;
    Ok((m.dev(), m.ino()))
}

/// The watched directory, canonicalized, once it exists. Missing at start: say so and wait for it (a
/// service may start before its disk is mounted); with `--once`, fail. `None` on shutdown while waiting.
async fn wait_for_root(settings: &AgentSettings, shutdown: &CancellationToken) -> Result<Option<PathBuf>, AgentError> {
    let mut logged = false;
    loop {
        match std::fs::canonicalize(&settings.watch) {
            Ok(p) if p.is_dir() => return Ok(Some(p)),
            Ok(p) => return Err(AgentError::Invalid(format!("--watch {}: not a directory", p.display()))),
            Err(e) if settings.once => {
                return Err(AgentError::Invalid(format!("--watch {}: {e}", settings.watch.display())));
            }
            Err(e) => {
                if !logged {
                    tracing::error!(path = %settings.watch.display(), error = %e, "the directory to watch is missing; waiting for it to appear (nothing is deleted meanwhile)");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Probe the bucket until it answers. Transient failures (network down at boot) are retried forever; a
/// wrong credential or bucket is said loudly and retried too (it may be fixed without a restart, e.g. a
/// bucket created late), except under `--once`, which fails at once. `None` on shutdown while waiting.
async fn probe_remote(
    remote: &dyn Remote,
    settings: &AgentSettings,
    metrics: &Metrics,
    state: &StateDb,
    info: &mut AgentInfo,
    shutdown: &CancellationToken,
) -> Result<Option<bool>, AgentError> {
    let mut delay = Duration::from_secs(1);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match setup::probe(remote, &settings.bucket, &settings.prefix).await {
            Ok(has) => {
                metrics::set(&metrics.remote_reachable, 1);
                info.remote_error = None;
                publish(state, info);
                return Ok(Some(has));
            }
            Err(e) => {
                metrics::set(&metrics.remote_reachable, 0);
                let fatal = matches!(e.kind(), ErrorKind::Auth | ErrorKind::NotFound | ErrorKind::Input);
                if settings.once && (fatal || attempts >= 3) {
                    return Err(AgentError::Remote(e));
                }
                tracing::error!(bucket = %settings.bucket, endpoint = %remote.endpoint_display(), error = %e, retry_in = ?delay,
                    "the remote is not usable yet; retrying");
                info.remote_error = Some(e.to_string());
                publish(state, info);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

fn publish(state: &StateDb, info: &mut AgentInfo) {
    info.updated_at = unix_now();
    match serde_json::to_string(info) {
        Ok(json) => {
            if let Err(e) = state.set_agent_info(&json) {
                tracing::debug!(error = %e, "could not publish agent status");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not encode agent status"),
    }
}

/// What a job task hands back to the loop.
struct JobResult {
    key: String,
    rel: PathBuf,
    result: Result<Outcome, JobError>,
    /// Other keys to sync because of this one (the other names of a hard-linked file).
    also_sync: Vec<(PathBuf, String)>,
}

struct Loop {
    ctx: Arc<Ctx>,
    settings: AgentSettings,
    watch: Watch,
    sched: Scheduler,
    jobs: JoinSet<JobResult>,
    /// What each job task works on, so that a task that panicked still finishes its entry.
    job_tasks: HashMap<tokio::task::Id, (String, PathBuf)>,
    scans: JoinSet<()>,
    /// The subtree each scan task covers, for the same reason.
    scan_tasks: HashMap<tokio::task::Id, PathBuf>,
    /// Subtrees being scanned (a repeated request for one is dropped).
    scanning: HashSet<PathBuf>,
    initial_scan_done: bool,
    check: RemoteCheck,
    failed: Vec<String>,
    /// Paths that cannot be mirrored (bad names, impossible paths), reported once each.
    unmirrorable: HashSet<PathBuf>,
    info: AgentInfo,
    last_publish: Instant,
    last_remote_alarm: Option<Instant>,
}

/// The remote check's place in the loop (see `remote_check`).
struct RemoteCheck {
    filter: Arc<crate::watch::Filter>,
    running: bool,
    /// The check at start has finished (`--once` waits for it).
    first_done: bool,
    /// When the next one is due (periodic, or sooner after an error or a missing bucket).
    next_at: Option<Instant>,
    /// Asked for by a surprise (a job met a missing object or bucket).
    wanted: bool,
    last_started: Option<Instant>,
    /// Failed attempts in a row (`--once` gives up after a few).
    failures: u32,
    tasks: JoinSet<()>,
}

/// How soon a check follows another one that was asked for by a surprise, or that failed.
const CHECK_RETRY: Duration = Duration::from_secs(60);
/// `--once`: failed checks tried again this soon, this many times.
const ONCE_CHECK_RETRY: Duration = Duration::from_secs(2);
const ONCE_CHECK_ATTEMPTS: u32 = 3;

impl Loop {
    async fn run(&mut self, mut events: mpsc::Receiver<WatchEvent>, shutdown: &CancellationToken) -> RunReport {
        let (requests_tx, mut requests) = mpsc::channel::<Request>(4096);
        let (checks_tx, mut checks) = mpsc::channel::<CheckRequest>(4096);
        self.start_check(&checks_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.dispatch();
            if self.settings.once && self.converged(&events) {
                tracing::info!(failed = self.failed.len(), "converged (--once): everything found is synced");
                break;
            }
            let next_due = self.sched.next_due();
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::info!("stopping: no new work; parts in flight may finish");
                    break;
                }
                event = events.recv() => match event {
                    Some(event) => self.on_event(event, &requests_tx),
                    None => {
                        tracing::error!("the watcher stopped unexpectedly; stopping");
                        break;
                    }
                },
                Some(request) = requests.recv() => self.on_request(request),
                Some(request) = checks.recv() => self.on_check(request),
                Some(done) = self.check.tasks.join_next(), if !self.check.tasks.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "the remote check task failed; this is a bug, please report it");
                        self.on_check(CheckRequest::Finished(CheckReport {
                            error: Some(format!("internal error: {e}")),
                            ..CheckReport::default()
                        }));
                    }
                }
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => match done {
                    Ok((id, JobResult { key, rel, result, also_sync })) => {
                        self.job_tasks.remove(&id);
                        self.on_done(key, rel, result);
                        for (rel, key) in also_sync {
                            tracing::info!(path = %escape_path(&rel), %key, "another name of a changed file (hard link): syncing it too");
                            self.sched.request(key, Job::sync(rel));
                        }
                    }
                    Err(e) => self.on_job_panic(e),
                },
                Some(done) = self.scans.join_next_with_id(), if !self.scans.is_empty() => match done {
                    Ok((id, ())) => {
                        self.scan_tasks.remove(&id);
                    }
                    Err(e) => self.on_scan_panic(e),
                },
                _ = sleep_until(next_due), if next_due.is_some() => self.sched.promote_due(Instant::now()),
                _ = tick.tick() => {
                    self.on_tick();
                    self.maybe_start_check(&checks_tx);
                }
            }
        }
        RunReport { failed: std::mem::take(&mut self.failed) }
    }

    /// Nothing left to do or on its way: a path leaves `pending` only after its event is in `events`, so
    /// `pending` is read first.
    fn converged(&self, events: &mpsc::Receiver<WatchEvent>) -> bool {
        self.initial_scan_done
            && self.check.first_done
            && !self.check.running
            && !self.check.wanted
            && self.scanning.is_empty()
            && self.sched.is_empty()
            && self.jobs.is_empty()
            && self.watch.pending() == 0
            && events.is_empty()
    }

    fn dispatch(&mut self) {
        while let Some((key, job, _attempts)) = self.sched.next_ready() {
            let ctx = self.ctx.clone();
            let rel = job.rel().clone();
            let task_key = key.clone();
            let handle = self.jobs.spawn(async move {
                match job {
                    Job::Sync { rel, renamed_from, finding } => {
                        let result = ctx.sync(&rel, &key, renamed_from.as_deref(), finding).await;
                        // Hard links: the other names of this file hold what it held before.
                        let links = match &result {
                            Ok(Outcome::Vanished | Outcome::NotAFile) | Err(_) => Vec::new(),
                            Ok(_) => ctx.stale_hard_links(&rel, &key).await.unwrap_or_else(|e| {
                                tracing::warn!(path = %escape_path(&rel), error = %e, "could not look for other names of this file");
                                Vec::new()
                            }),
                        };
                        JobResult { key, rel, result, also_sync: links }
                    }
                    Job::Remove { rel } => {
                        let result = ctx.remove(&rel).await;
                        JobResult { key, rel, result, also_sync: Vec::new() }
                    }
                    Job::DeleteStray { rel } => {
                        let result = ctx.delete_stray(&rel, &key).await;
                        JobResult { key, rel, result, also_sync: Vec::new() }
                    }
                }
            });
            self.job_tasks.insert(handle.id(), (task_key, rel));
        }
    }

    /// A job task panicked (a bug): its entry fails like any failed job, so it is retried with backoff and
    /// neither blocks its key nor keeps `--once` waiting forever.
    fn on_job_panic(&mut self, e: tokio::task::JoinError) {
        match self.job_tasks.remove(&e.id()) {
            Some((key, rel)) => {
                tracing::error!(%key, error = %e, "a job task panicked; this is a bug, please report it");
                self.on_done(key, rel, Err(actions::JobError::new(format!("internal error (job task panicked): {e}"))));
            }
            None => tracing::error!(error = %e, "an unknown job task failed"),
        }
    }

    /// A scan task panicked: its subtree is no longer "being scanned" (the periodic rescan tries again).
    /// No deletion was derived from it; a failed first scan fails `--once`.
    fn on_scan_panic(&mut self, e: tokio::task::JoinError) {
        tracing::error!(error = %e, "a scan task panicked; this is a bug, please report it");
        if let Some(rel) = self.scan_tasks.remove(&e.id()) {
            self.scanning.remove(&rel);
            if rel.as_os_str().is_empty() && self.settings.once && !self.initial_scan_done {
                self.failed.push("the first scan of the watched directory failed (internal error)".to_string());
                self.initial_scan_done = true;
            }
        }
    }

    fn start_scan(&mut self, rel: PathBuf, requests: &mpsc::Sender<Request>) {
        if !self.scanning.insert(rel.clone()) {
            return;
        }
        let (ctx, scanner, settle, tx) =
            (self.ctx.clone(), self.watch.scanner().clone(), self.settings.settle, requests.clone());
        let subtree = rel.clone();
        let handle = self.scans.spawn(async move { reconcile::run(ctx, scanner, settle, rel, tx).await });
        self.scan_tasks.insert(handle.id(), subtree);
    }

    fn key_of(&mut self, rel: &Path) -> Option<String> {
        match object_key(&self.ctx.prefix, rel) {
            Ok(key) => Some(key),
            Err(e) => {
                self.report_bad_name(rel, &e.to_string());
                None
            }
        }
    }

    /// A file that cannot be uploaded under its name is not synced: reported, and under `--once` a failure
    /// of the run (a backup that silently left a file out would be worse than one that says so).
    /// Each such path is logged and recorded once per run (every periodic rescan finds it again), and
    /// counted in the `unmirrorable_paths` metric.
    fn report_bad_name(&mut self, rel: &Path, error: &str) {
        let escaped = escape_path(rel);
        if !self.unmirrorable.insert(rel.to_path_buf()) {
            return;
        }
        tracing::warn!(path = %escaped, %error, "this file cannot be uploaded under its name or path; rename it (it is skipped until then)");
        metrics::set(&self.ctx.metrics.unmirrorable_paths, self.unmirrorable.len() as u64);
        let path = self.ctx.path_of(rel);
        let _ = self.ctx.state.mark_failed(&path, INVALID_NAME_BUCKET, &escaped, error, None);
        if self.settings.once && !self.failed.contains(&escaped) {
            self.failed.push(escaped);
        }
    }

    fn on_event(&mut self, event: WatchEvent, requests: &mpsc::Sender<Request>) {
        match event {
            WatchEvent::Rescan { rel, reason } => {
                tracing::debug!(subtree = %escape_path(&rel), ?reason, "rescan");
                self.start_scan(rel, requests);
            }
            WatchEvent::Stable { rel, renamed_from, .. } => {
                if let Some(key) = self.key_of(&rel) {
                    self.sched.request(key, Job::Sync { rel, renamed_from, finding: None });
                }
            }
            WatchEvent::Removed { rel } => {
                if let Ok(key) = object_key(&self.ctx.prefix, &rel) {
                    self.sched.request(key, Job::Remove { rel });
                }
            }
            WatchEvent::DirRenamed { from, to } => {
                tracing::info!(from = %escape_path(&from), to = %escape_path(&to), "directory renamed; unchanged files are copied server-side");
            }
            WatchEvent::Unreadable { rel, error } => {
                tracing::warn!(path = %escape_path(&rel), %error, "cannot read; retried at the next rescan");
                if let Ok(key) = object_key(&self.ctx.prefix, &rel) {
                    let _ = self.ctx.state.mark_failed(&self.ctx.path_of(&rel), &self.ctx.bucket, &key, &error, None);
                }
            }
            WatchEvent::RootMissing { error } => {
                tracing::error!(path = %self.ctx.root.display(), %error,
                    "the watched directory is gone, unmounted or replaced; nothing is deleted, waiting for it to come back");
                metrics::set(&self.ctx.metrics.root_missing, 1);
                self.info.root_missing = true;
            }
            WatchEvent::RootBack => {
                tracing::info!(path = %self.ctx.root.display(), "the watched directory is back; rescanning");
                metrics::set(&self.ctx.metrics.root_missing, 0);
                self.info.root_missing = false;
            }
            WatchEvent::PollingFallback { reason } => {
                tracing::warn!(%reason, "watching by polling (slower, uses memory per file)");
                self.info.polling_fallback = true;
            }
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Sync { rel, key } => {
                self.sched.request(key, Job::sync(rel));
            }
            Request::Settle { rel } => self.watch.settle(rel),
            Request::Remove { rel, key } => {
                self.sched.request(key, Job::Remove { rel });
            }
            Request::BadName { rel, error } => self.report_bad_name(&rel, &error),
            Request::Finished(summary) => {
                self.scanning.remove(&summary.subtree);
                if summary.subtree.as_os_str().is_empty() {
                    self.initial_scan_done = true;
                }
            }
        }
    }

    fn on_done(&mut self, key: String, rel: PathBuf, result: Result<Outcome, JobError>) {
        let now = Instant::now();
        match result {
            Ok(Outcome::Held) => {
                self.sched.finish(&key, Finish::Retry, now);
            }
            Ok(outcome) => {
                tracing::debug!(%key, ?outcome, "done");
                metrics::set(&self.ctx.metrics.remote_reachable, 1);
                if !matches!(outcome, Outcome::Vanished | Outcome::NotAFile | Outcome::Removed { .. }) {
                    metrics::set(&self.ctx.metrics.last_sync_timestamp, unix_now());
                }
                self.sched.finish(&key, Finish::Done, now);
            }
            Err(e) => {
                metrics::inc(&self.ctx.metrics.errors);
                if matches!(e.remote_code.as_deref(), Some("NoSuchBucket" | "NoSuchKey")) {
                    // The remote is not what the index says: look at all of it.
                    self.check.wanted = true;
                }
                let attempts = self.sched.attempts(&key) + 1;
                if self.settings.once && attempts >= ONCE_ATTEMPTS {
                    tracing::error!(path = %escape_path(&rel), %key, error = %e, attempts, "giving up on this file for this run");
                    let _ =
                        self.ctx.state.mark_failed(&self.ctx.path_of(&rel), &self.ctx.bucket, &key, &e.message, None);
                    self.failed.push(key.clone());
                    self.sched.finish(&key, Finish::Done, now);
                    return;
                }
                let retry_at = self.sched.finish(&key, Finish::Retry, now);
                let retry_wall = retry_at.map(|at| SystemTime::now() + at.saturating_duration_since(now));
                let _ =
                    self.ctx.state.mark_failed(&self.ctx.path_of(&rel), &self.ctx.bucket, &key, &e.message, retry_wall);
                tracing::warn!(path = %escape_path(&rel), %key, error = %e, attempts, "failed; will retry");
                if matches!(e.remote_kind, Some(ErrorKind::Transport | ErrorKind::ServerBusy)) {
                    // The remote did not answer (or not usefully): not ready until a request succeeds again.
                    metrics::set(&self.ctx.metrics.remote_reachable, 0);
                }
                if matches!(e.remote_kind, Some(ErrorKind::Auth)) {
                    metrics::set(&self.ctx.metrics.remote_reachable, 0);
                    let quiet = self.last_remote_alarm.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60));
                    if !quiet {
                        self.last_remote_alarm = Some(now);
                        tracing::error!(error = %e.message, "the remote refuses our credentials: every upload will fail until this is fixed");
                    }
                    self.info.remote_error = Some(e.message.clone());
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let m = &self.ctx.metrics;
        let stats = self.ctx.engine.stats();
        metrics::set(&m.queue_depth, self.sched.len() as u64);
        metrics::set(&m.files_failing, self.sched.waiting() as u64);
        metrics::set(&m.uploads_in_flight, self.sched.running() as u64);
        metrics::set(&m.bytes_uploaded, EngineStats::get(&stats.bytes_sent));
        metrics::set(&m.parts_uploaded, EngineStats::get(&stats.parts_sent));
        metrics::set(&m.parts_resent, EngineStats::get(&stats.parts_resent));
        metrics::set(&m.parts_reused, EngineStats::get(&stats.parts_reused));
        if self.last_publish.elapsed() >= Duration::from_secs(2) {
            self.last_publish = Instant::now();
            self.info.queued = self.sched.len();
            self.info.running = self.sched.running();
            self.info.waiting_retry = self.sched.waiting();
            self.info.initial_scan_done = self.initial_scan_done;
            publish(&self.ctx.state, &mut self.info);
        }
    }
}

impl Loop {
    fn start_check(&mut self, tx: &mpsc::Sender<CheckRequest>) {
        if self.check.running {
            return;
        }
        self.check.running = true;
        self.check.wanted = false;
        self.check.next_at = None;
        self.check.last_started = Some(Instant::now());
        let (ctx, filter, tx) = (self.ctx.clone(), self.check.filter.clone(), tx.clone());
        self.check.tasks.spawn(remote_check::run(ctx, filter, tx));
    }

    /// Start a check when one is due: periodic, retried, or asked for by a surprise (at most once a minute).
    fn maybe_start_check(&mut self, tx: &mpsc::Sender<CheckRequest>) {
        if self.check.running {
            return;
        }
        if self.ctx.remote_surprise.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.check.wanted = true;
        }
        let now = Instant::now();
        let due = self.check.next_at.is_some_and(|at| at <= now);
        let surprise_ok =
            self.settings.once || self.check.last_started.is_none_or(|t| now.duration_since(t) >= self.check_retry());
        if due || (self.check.wanted && surprise_ok) {
            self.start_check(tx);
        }
    }

    /// How soon a check may follow the last one when asked for or after a failure: a minute, or the
    /// periodic interval if that is shorter.
    fn check_retry(&self) -> Duration {
        let interval = self.settings.remote_check_interval;
        if interval.is_zero() { CHECK_RETRY } else { CHECK_RETRY.min(interval) }
    }

    fn on_check(&mut self, request: CheckRequest) {
        match request {
            CheckRequest::Resync { rel, key, finding } => {
                self.sched.request(key, Job::Sync { rel, renamed_from: None, finding: Some(finding) });
            }
            CheckRequest::DeleteStray { rel, key } => {
                self.sched.request(key, Job::DeleteStray { rel });
            }
            CheckRequest::Finished(report) => self.on_check_finished(report),
        }
    }

    fn on_check_finished(&mut self, report: CheckReport) {
        let m = &self.ctx.metrics;
        self.check.running = false;
        let now = Instant::now();
        let failed = report.error.is_some() || report.bucket_missing;
        metrics::set(&m.bucket_missing, u64::from(report.bucket_missing));
        if report.bucket_missing {
            self.info.remote_error =
                Some(format!("the bucket {} does not exist (checked again every minute)", self.ctx.bucket));
        } else if self.info.bucket_missing {
            tracing::info!(bucket = %self.ctx.bucket, "the bucket is back");
            self.info.remote_error = None;
        }
        self.info.bucket_missing = report.bucket_missing;
        if failed {
            self.check.failures += 1;
            let give_up = self.settings.once && (report.bucket_missing || self.check.failures >= ONCE_CHECK_ATTEMPTS);
            if give_up {
                let why = match &report.error {
                    _ if report.bucket_missing => format!("the bucket {} does not exist", self.ctx.bucket),
                    Some(e) => format!("the remote check failed: {e}"),
                    None => "the remote check failed".to_string(),
                };
                self.failed.push(why);
                self.check.first_done = true;
            } else {
                let delay =
                    if self.settings.once { ONCE_CHECK_RETRY * self.check.failures } else { self.check_retry() };
                self.check.next_at = Some(now + delay);
            }
        } else {
            self.check.failures = 0;
            self.check.first_done = true;
            let interval = self.settings.remote_check_interval;
            self.check.next_at = (!interval.is_zero() && !self.settings.once).then(|| now + interval);
            metrics::set(&m.remote_check_timestamp, report.finished_at);
            metrics::set(&m.remote_check_objects, report.objects);
            metrics::set(&m.remote_check_differences, report.differences());
            metrics::set(&m.remote_unknown_objects, report.unknown);
        }
        // A failed check keeps the last good one on show, with the error beside it.
        if !failed || self.info.remote_check.is_none() {
            self.info.remote_check = Some(report);
        } else if let Some(last) = &mut self.info.remote_check {
            last.error = report.error.clone();
            last.bucket_missing = report.bucket_missing;
        }
        publish(&self.ctx.state, &mut self.info);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
