//! `--once --dry-run`: what one run would do, and nothing done.
//!
//! The plan is made from the local tree and the index alone, by the rules `actions` applies: a file whose
//! index row records its snapshot is up to date (unless the object carries other file metadata); same size
//! and the same bytes (hashed, read-only) is a metadata update or nothing; an indexed object with the
//! file's inode, size and mtime under another key is a server-side copy (a rename); anything else is an
//! upload; an indexed object whose file is gone is a deletion with `--delete`. Nothing is written: the state
//! database is opened read-only (no migration, no recovery, no lock taken for writing), no request is sent
//! to the remote at all, and no embedded server is started. A file the index does not know is listed as an
//! upload even where a run would find an identical object on the remote and adopt it.

use std::path::Path;
use std::sync::Arc;

use super::AgentError;
use super::actions::tree_stat;
use super::local::{hash_file, open_in_tree};
use crate::config::{AgentSettings, ProcessEnv};
use crate::filemeta::FileMeta;
use crate::snapshot::FileSnapshot;
use crate::state::{StateDb, StateError, SyncedEntry, SyncedFile};
use crate::watch::{Filter, FilterConfig, RootGuard, ScanItem, Scanner, escape_path, object_key, rel_path_of_key};

/// One action a run would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    Upload {
        key: String,
        size: u64,
    },
    Copy {
        from: String,
        key: String,
    },
    UpdateMetadata {
        key: String,
    },
    Delete {
        key: String,
    },
    /// A path that cannot become an object key (a run reports it as failed).
    Unmirrorable {
        path: String,
        reason: String,
    },
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Planned::Upload { key, size } => write!(f, "upload {key} ({size} bytes)"),
            Planned::Copy { from, key } => write!(f, "copy {from} -> {key} (server-side)"),
            Planned::UpdateMetadata { key } => write!(f, "update-metadata {key} (server-side)"),
            Planned::Delete { key } => write!(f, "delete {key}"),
            Planned::Unmirrorable { path, reason } => write!(f, "skip {path}: {reason}"),
        }
    }
}

/// The plan and its summary line.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Planned>,
    /// The scan could not read everything: deletions are not planned (a run would not apply them either).
    pub incomplete: bool,
}

impl Plan {
    pub fn summary(&self) -> String {
        let count = |f: fn(&Planned) -> bool| self.actions.iter().filter(|a| f(a)).count();
        let bytes: u64 =
            self.actions.iter().map(|a| if let Planned::Upload { size, .. } = a { *size } else { 0 }).sum();
        format!(
            "dry run: {} to upload ({bytes} bytes), {} to copy, {} metadata updates, {} to delete, {} unmirrorable{}; nothing was changed",
            count(|a| matches!(a, Planned::Upload { .. })),
            count(|a| matches!(a, Planned::Copy { .. })),
            count(|a| matches!(a, Planned::UpdateMetadata { .. })),
            count(|a| matches!(a, Planned::Delete { .. })),
            count(|a| matches!(a, Planned::Unmirrorable { .. })),
            if self.incomplete { " (the scan was incomplete: no deletions planned)" } else { "" },
        )
    }
}

/// Work out what `--once` would do with `settings`, changing nothing.
pub async fn plan(settings: &AgentSettings) -> Result<Plan, AgentError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || plan_blocking(&settings))
        .await
        .map_err(|e| AgentError::Io(format!("dry run task failed: {e}")))?
}

fn plan_blocking(settings: &AgentSettings) -> Result<Plan, AgentError> {
    let root = std::fs::canonicalize(&settings.watch)
        .map_err(|e| AgentError::Io(format!("--watch {}: {e}", settings.watch.display())))?;
    let state_path = match &settings.state_db {
        Some(p) => p.clone(),
        None => super::setup::default_state_db(settings, &ProcessEnv),
    };
    let state = if state_path.exists() {
        StateDb::open_read_only(&state_path).map_err(|e| match e {
            StateError::TooOld { .. } => AgentError::Invalid(format!(
                "{e}; --dry-run never migrates it: run the agent once without --dry-run first"
            )),
            e => AgentError::State(e),
        })?
    } else {
        // No index yet: everything would be uploaded.
        StateDb::open_in_memory()?
    };
    let mut own_paths = vec![state_path.clone()];
    if settings.remote.endpoint.is_none() {
        own_paths.push(super::setup::embedded_root(&state_path));
    }
    let filter_config =
        FilterConfig { excludes: settings.exclude.clone(), default_ignores: settings.default_excludes, own_paths };
    let filter = Filter::new(&root, &filter_config).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let guard = RootGuard::new(&root).map_err(|e| AgentError::Io(e.to_string()))?;
    let scanner = Scanner::new(Arc::new(guard), Arc::new(filter), settings.follow_symlinks);
    let planner = Planner { root: &root, settings, state: &state };
    let mut plan = Plan::default();
    for item in scanner.walk(Path::new("")) {
        match item {
            ScanItem::File { rel, .. } => planner.file(&rel, &mut plan.actions)?,
            ScanItem::Problem { .. } => plan.incomplete = true,
            ScanItem::Done(report) => plan.incomplete |= !report.complete,
            _ => {}
        }
    }
    if settings.delete && !plan.incomplete {
        for entry in state.iter_synced(&settings.bucket, &settings.prefix) {
            let SyncedEntry::Valid(row) = entry? else { continue };
            let Some(rel) = rel_path_of_key(&settings.prefix, &row.key) else { continue };
            let gone = match tree_stat(&root, &rel, settings.follow_symlinks) {
                Ok(m) => !m.is_file(),
                Err(e) => super::actions::is_gone(&e),
            };
            if gone {
                plan.actions.push(Planned::Delete { key: row.key });
            }
        }
    }
    Ok(plan)
}

struct Planner<'a> {
    root: &'a Path,
    settings: &'a AgentSettings,
    state: &'a StateDb,
}

impl Planner<'_> {
    fn file(&self, rel: &Path, out: &mut Vec<Planned>) -> Result<(), AgentError> {
        let key = match object_key(&self.settings.prefix, rel) {
            Ok(key) => key,
            Err(e) => {
                out.push(Planned::Unmirrorable { path: escape_path(rel).to_string(), reason: e.to_string() });
                return Ok(());
            }
        };
        // Gone or unreadable since the scan listed it: a run would find the same.
        let Ok(meta) = tree_stat(self.root, rel, self.settings.follow_symlinks) else { return Ok(()) };
        if !meta.is_file() {
            return Ok(());
        }
        let snapshot = FileSnapshot::from_metadata(&meta);
        let wanted = FileMeta::of(&meta).encode();
        let row = self.state.synced(&self.settings.bucket, &key)?;
        if let Some(s) = row.as_ref().filter(|s| s.snapshot == snapshot) {
            if s.object_meta.as_deref().is_none_or(|m| m == wanted) {
                return Ok(());
            }
            out.push(Planned::UpdateMetadata { key });
            return Ok(());
        }
        if let Some(s) = row.as_ref().filter(|s| s.size == snapshot.size) {
            if let Some(local) = self.hash(rel, s, snapshot) {
                if local.part_blake3 == s.part_blake3 && local.crc64 == s.crc64 {
                    if s.object_meta.as_deref() != Some(local.meta.encode().as_str()) {
                        out.push(Planned::UpdateMetadata { key });
                    }
                    return Ok(());
                }
            }
        }
        let source = self.state.synced_by_inode(snapshot.dev, snapshot.inode, 8)?.into_iter().find(|s| {
            s.bucket == self.settings.bucket
                && s.key != key
                && s.size == snapshot.size
                && s.snapshot.mtime_ns == snapshot.mtime_ns
                && s.snapshot.same_file(&snapshot)
        });
        match source {
            Some(s) => out.push(Planned::Copy { from: s.key, key }),
            None => out.push(Planned::Upload { key, size: snapshot.size }),
        }
        Ok(())
    }

    fn hash(&self, rel: &Path, row: &SyncedFile, snapshot: FileSnapshot) -> Option<super::local::LocalHashes> {
        let file = open_in_tree(self.root, rel, self.settings.follow_symlinks).ok()?;
        hash_file(&file, row.part_size, &snapshot).ok().flatten()
    }
}

/// Print the plan, one line per action and the summary, on stdout.
pub fn print(plan: &Plan) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for action in &plan.actions {
        let _ = writeln!(out, "{action}");
    }
    let _ = writeln!(out, "{}", plan.summary());
}
