//! `ossmirror status`: what the agent is doing, read from its state database in another process.
//!
//! The database is opened read-only ([`StateDb::open_read_only`]: no recovery, no migration, no writes),
//! so `status` never blocks or disturbs a running agent and works the same after it stopped. What it shows
//! comes from two places: the rows the agent commits as it works (synced index, per-file status, claims with
//! upload progress) and the self-description the agent publishes every ~2 s ([`AgentInfo`]: pid, endpoint,
//! queue, flags). The agent counts as running when that pid is alive *and* the description is fresh; a pid
//! alone could have been reused by an unrelated process after a crash.
//!
//! Which database: `--state-db PATH`; or the one the agent derives from `--watch/--bucket/--prefix`
//! ([`state_db_for`]); or, with neither, the only agent database in the state directory (several: they are
//! listed and the user picks one). The service's state directory `/var/lib/ossmirror` is searched too, so
//! `status` finds a systemd agent from a login shell. Not finding one is a usage error (exit 2) that names
//! the paths looked at and what to pass.
//!
//! # `--json`
//! One document, printed once, stable field names (new fields may be added; none are renamed or removed
//! within `"format": 1`). Paths are shown with non-UTF-8 bytes escaped as `\xNN`. Times are Unix seconds.
//! ```text
//! {
//!   "format": 1,
//!   "state_db": "/home/u/.local/state/ossmirror/b-data-0123456789.db",
//!   "agent": {
//!     "state": "running" | "stopped" | "exited" | "unresponsive" | "never_started",
//!     "running": bool,              // state == "running"
//!     "pid": int | null,            // the agent's pid while running (or when it died without cleanup)
//!     "started_at": int | null, "updated_at": int | null,
//!     "seconds_since_update": int | null,
//!     "watch": str | null, "bucket": str | null, "prefix": str | null, "endpoint": str | null,
//!     "embedded": bool,             // no endpoint: objects stay on this machine ...
//!     "embedded_root": str | null,  // ... in this directory
//!     "initial_scan_done": bool
//!   },
//!   "counts": {
//!     "synced_files": int, "synced_bytes": int,  // the index: files verified on the remote
//!     "pending": int,           // files recorded as seen and not yet synced
//!     "failed": int,            // files whose last attempt failed
//!     "checkpoints": int,       // resumable multipart uploads kept in the database
//!     "in_flight": int,         // uploads whose owner process is alive
//!     "queued": int | null,     // the running agent's queue: waiting to start ...
//!     "running": int | null,    // ... being handled now ...
//!     "waiting_retry": int | null // ... waiting for a retry (null when the agent is not running)
//!   },
//!   "in_flight": [ { "path": str, "bucket": str, "key": str, "pid": int, "done_bytes": int,
//!                    "total_bytes": int, "percent": float, "started_at": int, "heartbeat_at": int } ],
//!   "errors": [ { "path": str, "bucket": str, "key": str, "attempts": int, "last_error": str | null,
//!                 "failed_at": int, "retry_at": int | null } ],   // the 10 most recent
//!   "flags": { "root_missing": bool, "polling_fallback": bool, "remote_error": str | null,
//!              "bucket_missing": bool },
//!   "remote_check": null | {        // the last listing of the prefix compared with the index
//!     "started_at": int, "finished_at": int, "millis": int, "requests": int,
//!     "objects": int,               // objects listed
//!     "indexed": int,               // index rows compared
//!     "missing": int, "changed": int, // queued again
//!     "unknown": int, "unknown_sample": [str],  // objects the index does not know (first 20 named)
//!     "stray": int, "held": bool,   // unknown with no local file (deleted with --delete unless held)
//!     "bucket_missing": bool, "error": str | null
//!   }
//! }
//! ```
//! Exit codes: 0 when the database was read (whatever the agent's state), 1 when it could not be read,
//! 2 when no database could be chosen.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use ossmirror::agent::AgentInfo;
use ossmirror::agent::remote_check::CheckReport;
use ossmirror::agent::setup::{state_db_for, state_db_stem};
use ossmirror::cli::StatusArgs;
use ossmirror::config::{Env, ProcessEnv, state_dir};
use ossmirror::state::{FileState, FileStatus, StateCounts, StateDb};
use ossmirror::units::{format_duration, format_size};
use ossmirror::watch::escape_path;
use serde::Serialize;

use super::UsageError;

/// Where the packaged systemd unit keeps its state (`XDG_STATE_HOME=/var/lib`).
pub const SERVICE_STATE_DIR: &str = "/var/lib/ossmirror";
/// The agent publishes its description every ~2 s; older than this, it is not working.
const FRESH_FOR: Duration = Duration::from_secs(15);
/// Recent errors shown.
const MAX_ERRORS: usize = 10;
/// The file `ossmirror cp` keeps its checkpoints in: not an agent's database.
const CP_DB: &str = "cp.db";

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let args = with_config_file(args)?;
    let path = locate(&args, &ProcessEnv)?;
    let report = tokio::task::spawn_blocking(move || gather(&path)).await.context("reading the state database")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

// -- which database ------------------------------------------------------------------------------------------

/// The directories an agent's database may be in, the user's own first.
pub fn state_dirs(env: &dyn Env) -> Vec<PathBuf> {
    let mut dirs = vec![state_dir(env)];
    let service = PathBuf::from(SERVICE_STATE_DIR);
    if !dirs.contains(&service) {
        dirs.push(service);
    }
    dirs
}

/// Which databases `--watch/--bucket/--prefix` map to, as the agent derives them (one per remote it mirrored
/// to), in the user's state directory or the service's.
#[derive(Debug)]
pub enum Derived {
    Found(PathBuf),
    /// Nothing there; what was looked for.
    NotFound(Vec<PathBuf>),
    /// One per remote: the caller must say which.
    Several(Vec<PathBuf>),
}

/// The agent's database for `watch`/`bucket`/`prefix`. `remote`: `Some(tag)` for exactly that remote (the
/// agent's `setup::endpoint_tag`, `None` inside for the embedded store); `None` for whichever remote the
/// agent used, if there is only one.
pub fn derived_state_db(
    watch: &Path,
    bucket: &str,
    prefix: &str,
    remote: Option<Option<&str>>,
    env: &dyn Env,
) -> Derived {
    let dirs = state_dirs(env);
    if let Some(tag) = remote {
        let own = state_db_for(watch, bucket, prefix, tag, env);
        let name = own.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let tried: Vec<PathBuf> = dirs.iter().map(|d| d.join(&name)).collect();
        return match tried.iter().find(|p| p.is_file()) {
            Some(found) => Derived::Found(found.clone()),
            None => Derived::NotFound(tried),
        };
    }
    let stem = state_db_stem(watch, bucket, prefix);
    let is_ours = |name: &str| {
        let Some(rest) = name.strip_prefix(&stem).and_then(|r| r.strip_suffix(".db")) else { return false };
        // `STEM.db` (the embedded store) or `STEM-TAG.db` (a remote).
        rest.is_empty()
            || rest.strip_prefix('-').is_some_and(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let mut found = Vec::new();
    for dir in &dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_str().is_some_and(is_ours) && entry.file_type().is_ok_and(|t| t.is_file()) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    match found.len() {
        0 => Derived::NotFound(dirs.iter().map(|d| d.join(format!("{stem}[-TAG].db"))).collect()),
        1 => Derived::Found(found.remove(0)),
        _ => Derived::Several(found),
    }
}

/// `--config FILE`: the agent's `state_db`, `watch`, `bucket` and `prefix` from its config file, where no
/// flag gives them.
fn with_config_file(mut args: StatusArgs) -> anyhow::Result<StatusArgs> {
    let Some(path) = &args.config else { return Ok(args) };
    let (file, _) = ossmirror::config::FileConfig::load(Some(path))?;
    if args.state_db.is_none() && args.watch.is_none() {
        args.state_db = file.state_db;
        if args.state_db.is_none() {
            args.watch = file.watch;
            args.bucket = args.bucket.or(file.bucket);
            args.prefix = args.prefix.or(file.prefix);
        }
    }
    if args.state_db.is_none() && (args.watch.is_none() || args.bucket.is_none()) {
        return Err(UsageError(format!(
            "config file {} names no `state_db`, nor both `watch` and `bucket`: it cannot be the agent's",
            path.display()
        ))
        .into());
    }
    Ok(args)
}

fn locate(args: &StatusArgs, env: &dyn Env) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.state_db {
        if path.is_file() {
            return Ok(path.clone());
        }
        return Err(UsageError(format!(
            "no state database at {}: check the path the agent runs with (its --state-db or `state_db` in its config file)",
            path.display()
        ))
        .into());
    }
    let prefix = ossmirror::config::normalize_prefix(args.prefix.as_deref().unwrap_or(""));
    match (&args.watch, &args.bucket) {
        (Some(watch), Some(bucket)) => {
            let shown = format!(
                "--watch {} --bucket {bucket}{}",
                watch.display(),
                if prefix.is_empty() { String::new() } else { format!(" --prefix {prefix}") }
            );
            match derived_state_db(watch, bucket, &prefix, None, env) {
                Derived::Found(path) => Ok(path),
                Derived::NotFound(tried) => {
                    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                    Err(UsageError(format!(
                        "no state database for {shown}: looked for {}. Has the agent run with exactly these values? \
                         If it runs with --state-db, pass that path as --state-db",
                        list.join(" and "),
                    ))
                    .into())
                }
                Derived::Several(paths) => {
                    let mut msg =
                        format!("the agent mirrored {shown} to several remotes; choose one with --state-db PATH:");
                    for path in &paths {
                        msg.push_str(&format!("\n  {}{}", path.display(), describe(path)));
                    }
                    Err(UsageError(msg).into())
                }
            }
        }
        (None, None) if args.prefix.is_none() => pick_single(env),
        _ => Err(UsageError(
            "give --watch and --bucket together (with --prefix if the agent uses one), or --state-db PATH".into(),
        )
        .into()),
    }
}

/// With nothing given: the only agent database there is.
fn pick_single(env: &dyn Env) -> anyhow::Result<PathBuf> {
    let dirs = state_dirs(env);
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for dir in &dirs {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let is_db = path.extension().is_some_and(|e| e == "db")
                        && path.file_name().is_some_and(|n| n != CP_DB)
                        && entry.file_type().is_ok_and(|t| t.is_file());
                    if is_db {
                        found.push(path);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => unreadable.push(dir.clone()),
            Err(_) => {}
        }
    }
    found.sort();
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            let mut msg = format!(
                "no agent state database found in {}. Give the agent's --watch DIR --bucket NAME [--prefix P], or \
                 --state-db PATH",
                looked.join(" or ")
            );
            for dir in unreadable {
                msg.push_str(&format!(
                    "; {} is not readable by this user (a service's state: run status as its user, e.g. \
                     `sudo -u ossmirror ossmirror status`)",
                    dir.display()
                ));
            }
            Err(UsageError(msg).into())
        }
        _ => {
            let mut msg =
                String::from("several agent state databases; choose one with --state-db PATH (or --watch/--bucket):");
            for path in &found {
                msg.push_str(&format!("\n  {}{}", path.display(), describe(path)));
            }
            Err(UsageError(msg).into())
        }
    }
}

/// "  (watch /data → bucket b, prefix p/)" from the database's agent description, when it can be read.
fn describe(path: &Path) -> String {
    let info = StateDb::open_read_only(path)
        .ok()
        .and_then(|db| db.agent_info().ok().flatten())
        .and_then(|json| serde_json::from_str::<AgentInfo>(&json).ok());
    match info {
        Some(i) if i.prefix.is_empty() => format!("  (watch {} → bucket {} at {})", i.watch, i.bucket, i.endpoint),
        Some(i) => format!("  (watch {} → bucket {}, prefix {}, at {})", i.watch, i.bucket, i.prefix, i.endpoint),
        None => String::new(),
    }
}

// -- the report ----------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Report {
    format: u32,
    state_db: String,
    agent: AgentView,
    counts: Counts,
    in_flight: Vec<Upload>,
    errors: Vec<ErrorView>,
    flags: Flags,
    /// The agent's last check of the remote against the index (kept after it stopped).
    remote_check: Option<CheckReport>,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum AgentState {
    Running,
    /// Stopped cleanly (it cleared its pid on the way out).
    Stopped,
    /// Its pid is gone but it did not say goodbye: killed or crashed.
    Exited,
    /// Its pid is alive but it has not published for a while (hung, or the pid was reused).
    Unresponsive,
    /// No agent ever wrote here (a database of `cp`, or an agent that did not get that far).
    NeverStarted,
}

#[derive(Debug, Serialize)]
struct AgentView {
    state: AgentState,
    running: bool,
    pid: Option<u32>,
    started_at: Option<u64>,
    updated_at: Option<u64>,
    seconds_since_update: Option<u64>,
    watch: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    embedded: bool,
    embedded_root: Option<String>,
    initial_scan_done: bool,
}

#[derive(Debug, Serialize)]
struct Counts {
    synced_files: u64,
    synced_bytes: u64,
    pending: u64,
    failed: u64,
    checkpoints: u64,
    in_flight: u64,
    queued: Option<usize>,
    running: Option<usize>,
    waiting_retry: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Upload {
    path: String,
    bucket: String,
    key: String,
    pid: u32,
    done_bytes: u64,
    total_bytes: u64,
    percent: f64,
    started_at: u64,
    heartbeat_at: u64,
}

#[derive(Debug, Serialize)]
struct ErrorView {
    path: String,
    bucket: String,
    key: String,
    attempts: u32,
    last_error: Option<String>,
    failed_at: u64,
    retry_at: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Flags {
    root_missing: bool,
    polling_fallback: bool,
    remote_error: Option<String>,
    bucket_missing: bool,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether `pid` names a running process (signal 0 checks and delivers nothing).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn agent_state(info: Option<&AgentInfo>, now: u64) -> AgentState {
    match info {
        None => AgentState::NeverStarted,
        Some(i) if i.pid == 0 => AgentState::Stopped,
        Some(i) if !pid_alive(i.pid) => AgentState::Exited,
        Some(i) if now.saturating_sub(i.updated_at) > FRESH_FOR.as_secs() => AgentState::Unresponsive,
        Some(_) => AgentState::Running,
    }
}

/// The pid of the agent running with `state_db`, if one is (alive and publishing).
pub fn running_agent(state_db: &Path) -> Option<u32> {
    let db = StateDb::open_read_only(state_db).ok()?;
    let info: AgentInfo = serde_json::from_str(&db.agent_info().ok()??).ok()?;
    (agent_state(Some(&info), unix(SystemTime::now())) == AgentState::Running).then_some(info.pid)
}

fn gather(path: &Path) -> anyhow::Result<Report> {
    let db = StateDb::open_read_only(path)?;
    let info: Option<AgentInfo> = match db.agent_info()? {
        Some(json) => Some(serde_json::from_str(&json).with_context(|| {
            format!("the agent's description in {} is not readable by this version", path.display())
        })?),
        None => None,
    };
    let now = unix(SystemTime::now());
    let state = agent_state(info.as_ref(), now);
    let running = state == AgentState::Running;
    let counts: StateCounts = db.counts()?;
    let in_flight = db
        .list_in_flight()?
        .into_iter()
        .filter(|c| c.live)
        .map(|c| Upload {
            path: escape_path(&c.local_path),
            percent: percent(c.done_bytes, c.total_bytes),
            bucket: c.bucket,
            key: c.key,
            pid: c.owner_pid,
            done_bytes: c.done_bytes,
            total_bytes: c.total_bytes,
            started_at: unix(c.started_at),
            heartbeat_at: unix(c.heartbeat_at),
        })
        .collect();
    let errors = recent_errors(&db, MAX_ERRORS)?
        .into_iter()
        .map(|s| ErrorView {
            path: escape_path(&s.local_path),
            bucket: s.bucket,
            key: s.key,
            attempts: s.attempts,
            last_error: s.last_error,
            failed_at: unix(s.updated_at),
            retry_at: s.retry_at.map(unix),
        })
        .collect();
    let live = |v: usize| running.then_some(v);
    let i = info.clone().unwrap_or_default();
    let queued = i.queued.saturating_sub(i.running).saturating_sub(i.waiting_retry);
    Ok(Report {
        format: 1,
        state_db: path.display().to_string(),
        agent: AgentView {
            state,
            running,
            pid: info.as_ref().map(|i| i.pid).filter(|p| *p != 0),
            started_at: info.as_ref().map(|i| i.started_at),
            updated_at: info.as_ref().map(|i| i.updated_at),
            seconds_since_update: info.as_ref().map(|i| now.saturating_sub(i.updated_at)),
            watch: info.as_ref().map(|i| i.watch.clone()),
            bucket: info.as_ref().map(|i| i.bucket.clone()),
            prefix: info.as_ref().map(|i| i.prefix.clone()),
            endpoint: info.as_ref().map(|i| i.endpoint.clone()),
            embedded: i.embedded,
            embedded_root: i.embedded_root.clone(),
            initial_scan_done: i.initial_scan_done,
        },
        counts: Counts {
            synced_files: counts.synced_files,
            synced_bytes: counts.synced_bytes,
            pending: counts.pending,
            failed: counts.failed,
            checkpoints: counts.checkpoints,
            in_flight: counts.in_flight,
            queued: live(queued),
            running: live(i.running),
            waiting_retry: live(i.waiting_retry),
        },
        in_flight,
        errors,
        flags: Flags {
            // A stopped agent's last word on these is history, not the present: only a running one's count.
            root_missing: running && i.root_missing,
            polling_fallback: running && i.polling_fallback,
            remote_error: i.remote_error.clone().filter(|_| running),
            bucket_missing: running && i.bucket_missing,
        },
        remote_check: i.remote_check.clone(),
    })
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { (done as f64 * 1000.0 / total as f64).round() / 10.0 }
}

/// The `limit` most recently failed files, in one pass over the failed rows (memory: `limit` rows).
fn recent_errors(db: &StateDb, limit: usize) -> anyhow::Result<Vec<FileStatus>> {
    const PAGE: usize = 256;
    let mut heap: BinaryHeap<Reverse<(SystemTime, String, String)>> = BinaryHeap::new();
    let mut keep: Vec<FileStatus> = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = db.list_status(FileState::Failed, after.as_ref().map(|(b, k)| (b.as_str(), k.as_str())), PAGE)?;
        for s in &page {
            heap.push(Reverse((s.updated_at, s.bucket.clone(), s.key.clone())));
            keep.push(s.clone());
            if heap.len() > limit {
                if let Some(Reverse((_, b, k))) = heap.pop() {
                    keep.retain(|x| !(x.bucket == b && x.key == k));
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some((last.bucket.clone(), last.key.clone())),
            _ => break,
        }
    }
    keep.sort_by_key(|s| Reverse(s.updated_at));
    Ok(keep)
}

// -- text ----------------------------------------------------------------------------------------------------

fn ago(now: u64, then: u64) -> String {
    format_duration(Duration::from_secs(now.saturating_sub(then)))
}

fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let now = unix(SystemTime::now());
    let a = &r.agent;
    let mut out = String::new();
    let _ = writeln!(out, "state database  {}", r.state_db);
    let agent_line = match a.state {
        AgentState::Running => format!(
            "running (pid {}, up {}, last update {} ago)",
            a.pid.unwrap_or(0),
            ago(now, a.started_at.unwrap_or(now)),
            ago(now, a.updated_at.unwrap_or(now))
        ),
        AgentState::Stopped => format!("not running (stopped {} ago)", ago(now, a.updated_at.unwrap_or(now))),
        AgentState::Exited => format!(
            "not running (pid {} ended without stopping cleanly, {} ago: killed or crashed; uploads resume from \
             their checkpoints at the next start)",
            a.pid.unwrap_or(0),
            ago(now, a.updated_at.unwrap_or(now))
        ),
        AgentState::Unresponsive => format!(
            "NOT RESPONDING (pid {} is alive but has not reported for {}: hung, or the pid now belongs to \
             another process)",
            a.pid.unwrap_or(0),
            ago(now, a.updated_at.unwrap_or(now))
        ),
        AgentState::NeverStarted => "no agent has run with this database".to_string(),
    };
    let _ = writeln!(out, "agent           {agent_line}");
    if let (Some(watch), Some(bucket)) = (&a.watch, &a.bucket) {
        let prefix = a.prefix.as_deref().unwrap_or("");
        // The embedded server's port changes at every start: it is no address to use.
        let place = if a.embedded {
            "the embedded local store".to_string()
        } else {
            a.endpoint.clone().unwrap_or_else(|| "?".into())
        };
        let _ = writeln!(out, "mirroring       {watch} → oss://{bucket}/{prefix} at {place}");
        if a.state == AgentState::Running && !a.initial_scan_done {
            let _ = writeln!(out, "                initial scan in progress");
        }
    }
    if a.embedded {
        let root = a.embedded_root.as_deref().unwrap_or("the state directory");
        let _ = writeln!(out);
        let _ = writeln!(out, "!! EMBEDDED LOCAL STORE: no endpoint is configured, so the agent runs its own server.");
        let _ = writeln!(out, "!! Objects are stored ON THIS MACHINE, in {root} — not in the cloud.");
        let _ = writeln!(out, "!! Set --endpoint (or OSS_ENDPOINT) and credentials to mirror to Alibaba Cloud OSS.");
    }
    let f = &r.flags;
    if f.root_missing {
        let _ = writeln!(
            out,
            "\n!! THE WATCHED DIRECTORY IS MISSING or unmounted: nothing is deleted; waiting for it to come back."
        );
    }
    if f.bucket_missing {
        let _ = writeln!(out, "\n!! THE BUCKET DOES NOT EXIST: nothing can be synced until it is created again.");
    }
    if let Some(e) = &f.remote_error {
        let _ = writeln!(out, "\n!! REMOTE ERROR: {e}");
    }
    if f.polling_fallback {
        let _ = writeln!(
            out,
            "\nnote: watching by polling (the inotify watch limit was reached; raise fs.inotify.max_user_watches)"
        );
    }
    let c = &r.counts;
    let _ = writeln!(out);
    let _ = writeln!(out, "synced          {} files, {}B", c.synced_files, format_size(c.synced_bytes));
    match (c.queued, c.running, c.waiting_retry) {
        (Some(q), Some(run), Some(w)) => {
            let _ = writeln!(
                out,
                "queue           {q} queued, {run} running, {w} waiting for retry; {} pending, {} failed",
                c.pending, c.failed
            );
        }
        _ => {
            let _ = writeln!(out, "queue           {} pending, {} failed (agent not running)", c.pending, c.failed);
        }
    }
    if c.checkpoints > 0 {
        let _ = writeln!(out, "checkpoints     {} resumable multipart uploads", c.checkpoints);
    }
    match &r.remote_check {
        Some(check) => {
            let _ = writeln!(
                out,
                "remote check    {} ago: {} objects listed in {} requests, {} missing or changed (queued again), {} \
                 unknown to the index{}",
                ago(now, check.finished_at.max(check.started_at)),
                check.objects,
                check.requests,
                check.differences(),
                check.unknown,
                if check.held { " (deletions held: too many at once)" } else { "" },
            );
            if !check.unknown_sample.is_empty() {
                let more = check.unknown.saturating_sub(check.unknown_sample.len() as u64);
                let _ = writeln!(
                    out,
                    "                unknown: {}{}",
                    check.unknown_sample.join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                );
            }
            if let Some(e) = &check.error {
                let _ = writeln!(out, "                the last check failed: {e}");
            }
        }
        None => {
            let _ = writeln!(out, "remote check    not yet");
        }
    }
    if !r.in_flight.is_empty() {
        let _ = writeln!(out, "\nuploads in flight ({}):", r.in_flight.len());
        for u in &r.in_flight {
            let _ = writeln!(
                out,
                "  {}  →  {}   {}B / {}B  {:.1}%",
                u.path,
                u.key,
                format_size(u.done_bytes),
                format_size(u.total_bytes),
                u.percent
            );
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(out, "\nrecent errors ({} of {} failed files):", r.errors.len(), c.failed);
        for e in &r.errors {
            let retry = match e.retry_at {
                Some(t) if t > now && a.state == AgentState::Running => {
                    format!("next retry in {}", format_duration(Duration::from_secs(t - now)))
                }
                _ if a.state == AgentState::Running => "retry pending".to_string(),
                _ => "retried when the agent runs".to_string(),
            };
            let _ = writeln!(
                out,
                "  {}  ({} attempt{}, {} ago, {retry}): {}",
                e.path,
                e.attempts,
                if e.attempts == 1 { "" } else { "s" },
                ago(now, e.failed_at),
                e.last_error.as_deref().unwrap_or("(no message)")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_to_a_tenth() {
        assert_eq!(percent(0, 0), 0.0);
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(5, 5), 100.0);
    }

    #[test]
    fn a_clean_stop_a_crash_and_a_live_agent_are_told_apart() {
        let now = unix(SystemTime::now());
        let live = AgentInfo { pid: std::process::id(), updated_at: now, ..AgentInfo::default() };
        assert_eq!(agent_state(Some(&live), now), AgentState::Running);
        assert_eq!(agent_state(Some(&live), now + 60), AgentState::Unresponsive);
        assert_eq!(agent_state(Some(&AgentInfo { pid: 0, ..live.clone() }), now), AgentState::Stopped);
        // A pid that cannot exist on Linux (above pid_max's ceiling).
        assert_eq!(agent_state(Some(&AgentInfo { pid: 4_194_305, ..live }), now), AgentState::Exited);
        assert_eq!(agent_state(None, now), AgentState::NeverStarted);
    }

    #[test]
    fn with_nothing_given_a_lone_database_is_chosen_and_several_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("XDG_STATE_HOME", dir.path().to_str().unwrap())];
        let states = dir.path().join("ossmirror");
        std::fs::create_dir_all(&states).unwrap();
        std::fs::write(states.join(CP_DB), b"").unwrap();
        std::fs::write(states.join("b-data-0123456789.db.corrupt-1"), b"").unwrap();
        let args = StatusArgs { state_db: None, watch: None, bucket: None, prefix: None, config: None, json: false };
        let one = states.join("b-data-0123456789.db");
        std::fs::write(&one, b"").unwrap();
        // The service's directory is searched too; on a machine that has one, it may add candidates.
        if !Path::new(SERVICE_STATE_DIR).exists() {
            assert_eq!(locate(&args, &env).unwrap(), one);
        }
        std::fs::write(states.join("c-data-0123456789.db"), b"").unwrap();
        let e = locate(&args, &env).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        assert!(e.to_string().contains("several") && e.to_string().contains("c-data-0123456789.db"), "{e}");
    }

    #[test]
    fn missing_databases_are_usage_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("XDG_STATE_HOME", dir.path().to_str().unwrap())];
        let args = StatusArgs {
            state_db: None,
            watch: Some(dir.path().join("data")),
            bucket: Some("b".into()),
            prefix: None,
            config: None,
            json: false,
        };
        let e = locate(&args, &env).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        let stem = state_db_stem(&dir.path().join("data"), "b", "");
        assert!(e.to_string().contains(&stem), "{e}");
        // One database per remote: found when there is one, listed when there are several.
        let states = dir.path().join("ossmirror");
        std::fs::create_dir_all(&states).unwrap();
        let embedded = state_db_for(&dir.path().join("data"), "b", "", None, &env);
        std::fs::write(&embedded, b"").unwrap();
        assert_eq!(locate(&args, &env).unwrap(), embedded);
        let remote = state_db_for(&dir.path().join("data"), "b", "", Some("0123abcd"), &env);
        std::fs::write(&remote, b"").unwrap();
        let e = locate(&args, &env).unwrap_err().to_string();
        assert!(e.contains("several remotes") && e.contains("0123abcd"), "{e}");
        let half = StatusArgs { bucket: None, ..args };
        assert!(locate(&half, &env).unwrap_err().to_string().contains("--watch and --bucket"));
    }

    /// `status --config FILE` finds the database the agent of that config file uses.
    #[test]
    fn the_agents_config_file_names_its_database() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("XDG_STATE_HOME", dir.path().to_str().unwrap())];
        let config = dir.path().join("config.toml");
        let data = dir.path().join("data");
        std::fs::write(&config, format!("watch = {:?}\nbucket = \"b\"\nprefix = \"host1\"\n", data)).unwrap();
        let args = StatusArgs {
            state_db: None,
            watch: None,
            bucket: None,
            prefix: None,
            config: Some(config.clone()),
            json: false,
        };
        let filled = with_config_file(args.clone()).unwrap();
        assert_eq!((filled.watch.as_deref(), filled.bucket.as_deref()), (Some(data.as_path()), Some("b")));
        let e = locate(&filled, &env).unwrap_err().to_string();
        let expected = state_db_stem(&data, "b", "host1/");
        assert!(e.contains(&expected), "the agent's own derivation, prefix included: {e}");

        std::fs::write(&config, "state_db = \"/srv/agent.db\"\nwatch = \"/x\"\nbucket = \"b\"\n").unwrap();
        assert_eq!(with_config_file(args.clone()).unwrap().state_db.as_deref(), Some(Path::new("/srv/agent.db")));
        std::fs::write(&config, "prefix = \"p\"\n").unwrap();
        let e = with_config_file(args).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some() && e.to_string().contains("names no `state_db`"), "{e}");
    }
}
