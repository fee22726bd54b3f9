//! Reconciling a scan of the tree (or a subtree) with the index, in its own task so a long scan never stalls
//! the agent loop.
//!
//! Each scanned file is mapped to its key; if the index records exactly its snapshot it is skipped (the
//! common case on every rescan, one indexed lookup per file). Otherwise it is handed to the loop: to the
//! scheduler if the kernel vouches it is settled, to the settle gate if not. Names that cannot become keys
//! are reported (logged and kept in the status table), never silently dropped.
//!
//! Deletions come only from a *complete* scan, and only for index rows whose local path a fresh `stat`
//! confirms absent. A brake holds them when they look like a lost disk rather than deleted files: the
//! whole tree empty while the index has files, or more than half of a sizeable subtree gone at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::actions::Ctx;
use super::metrics;
use crate::watch::{ScanItem, Scanner, SkipReason, escape_path, is_settled, object_key, rel_path_of_key};

/// What a scan asks of the agent loop.
#[derive(Debug)]
pub enum Request {
    Sync {
        rel: PathBuf,
        key: String,
    },
    Settle {
        rel: PathBuf,
    },
    Remove {
        rel: PathBuf,
        key: String,
    },
    /// A name that cannot be an object key.
    BadName {
        rel: PathBuf,
        error: String,
    },
    Finished(Summary),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub subtree: PathBuf,
    pub complete: bool,
    pub files: u64,
    pub unchanged: u64,
    pub queued: u64,
    pub missing: u64,
    /// Deletions held by the brake.
    pub held: bool,
}

/// Deletions are held when they look like a lost disk: everything gone, or more than half of at least
/// this many tracked files.
const BRAKE_MIN_TRACKED: u64 = 100;

/// Scan `rel` and reconcile it; the last request sent is always [`Request::Finished`].
pub async fn run(ctx: Arc<Ctx>, scanner: Scanner, settle: Duration, rel: PathBuf, tx: mpsc::Sender<Request>) {
    let summary = scan(&ctx, &scanner, settle, rel, &tx).await;
    let _ = tx.send(Request::Finished(summary)).await;
}

async fn scan(ctx: &Ctx, scanner: &Scanner, settle: Duration, subtree: PathBuf, tx: &mpsc::Sender<Request>) -> Summary {
    metrics::inc(&ctx.metrics.scans);
    let mut summary = Summary { subtree: subtree.clone(), ..Summary::default() };
    let mut stream = scanner.stream(&subtree);
    while let Some(item) = stream.next().await {
        match item {
            ScanItem::File { rel, snapshot } => {
                summary.files += 1;
                let key = match object_key(&ctx.prefix, &rel) {
                    Ok(key) => key,
                    Err(e) => {
                        let _ = tx.send(Request::BadName { rel, error: e.to_string() }).await;
                        continue;
                    }
                };
                match ctx.state.synced(&ctx.bucket, &key) {
                    Ok(Some(s)) if s.snapshot == snapshot => {
                        summary.unchanged += 1;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %escape_path(&rel), error = %e, "index lookup failed; treating the file as changed")
                    }
                }
                summary.queued += 1;
                let request = if is_settled(&snapshot, settle, SystemTime::now()) {
                    Request::Sync { rel, key }
                } else {
                    Request::Settle { rel }
                };
                if tx.send(request).await.is_err() {
                    return summary;
                }
            }
            ScanItem::Skipped { rel, reason } => match reason {
                SkipReason::Symlink if !scanner.follows_symlinks() => {
                    tracing::info!(path = %escape_path(&rel), "symbolic link skipped (use --follow-symlinks to follow links)")
                }
                reason => tracing::info!(path = %escape_path(&rel), ?reason, "not a regular file; skipped"),
            },
            ScanItem::Problem { rel, error } => {
                tracing::warn!(path = %escape_path(&rel), %error, "could not read; will retry at the next scan");
            }
            // Reported like a name that cannot be a key: in status and the --once summary, once per run.
            ScanItem::Impossible { rel, error } => {
                if tx.send(Request::BadName { rel, error }).await.is_err() {
                    return summary;
                }
            }
            ScanItem::Done(report) => {
                summary.complete = report.complete;
                if !report.complete {
                    tracing::warn!(subtree = %escape_path(&subtree), problems = report.problems, "scan incomplete: no deletions inferred from it");
                }
            }
        }
    }
    if summary.complete {
        find_missing(ctx, &subtree, tx, &mut summary).await;
    }
    tracing::info!(subtree = %escape_path(&subtree), files = summary.files, unchanged = summary.unchanged, queued = summary.queued,
        missing = summary.missing, complete = summary.complete, "scan finished");
    summary
}

/// Index rows at and under `subtree` whose file is gone: counted first, then (unless the brake holds)
/// removed. "At": a synced file that became this directory is gone as a file.
async fn find_missing(ctx: &Ctx, subtree: &std::path::Path, tx: &mpsc::Sender<Request>, summary: &mut Summary) {
    let (own_key, key_prefix) = match object_key(&ctx.prefix, subtree) {
        Ok(k) if !subtree.as_os_str().is_empty() => (Some(k.clone()), format!("{k}/")),
        _ => (None, ctx.prefix.clone()),
    };
    let missing_rels = |ctx: &Ctx| {
        let mut tracked = 0u64;
        let mut missing = Vec::new();
        let own = own_key.iter().filter(|k| matches!(ctx.state.synced(&ctx.bucket, k), Ok(Some(_)))).cloned();
        let under = ctx.state.iter_synced(&ctx.bucket, &key_prefix).map_while(Result::ok).map(|e| e.key().to_string());
        for key in own.chain(under) {
            let Some(rel) = rel_path_of_key(&ctx.prefix, &key) else { continue };
            tracked += 1;
            if ctx.file_is_gone(&rel) {
                missing.push((rel, key));
            }
        }
        (tracked, missing)
    };
    let (tracked, missing) = missing_rels(ctx);
    summary.missing = missing.len() as u64;
    if missing.is_empty() {
        return;
    }
    let everything = missing.len() as u64 == tracked && subtree.as_os_str().is_empty();
    let most = tracked >= BRAKE_MIN_TRACKED && missing.len() as u64 * 2 > tracked;
    if (everything || most) && !ctx.allow_mass_delete {
        summary.held = true;
        tracing::error!(
            subtree = %escape_path(subtree), missing = missing.len(), tracked,
            "{} of {tracked} synced files under this directory are gone at once: this looks like a lost or replaced disk, \
             not deletions; nothing is deleted or forgotten. If the files really were deleted, restart once with \
             --allow-mass-delete.",
            missing.len()
        );
        return;
    }
    for (rel, key) in missing {
        if tx.send(Request::Remove { rel, key }).await.is_err() {
            return;
        }
    }
}
