//! The remote check: the index is compared with what the bucket really holds.
//!
//! An index row is a promise about an object ("it holds these bytes"), and objects change behind the
//! agent's back: another tool deletes them, a lifecycle rule expires them, the bucket is emptied or made
//! again. So the agent lists the prefix (ListObjectsV2, 1,000 keys per request) and walks the listing and
//! the index side by side, both in key order, holding one page of each:
//!
//! - an indexed key that is not listed, or is listed with another size, is **missing or changed**: its file
//!   goes back in the queue with a [`RemoteFinding`], and its sync, serialised with every other job of that
//!   key, forgets the row and uploads again. A row written after the listing started may be newer than what
//!   the listing saw, so such a finding is confirmed with a HEAD first; so is a listed ETag that differs
//!   while the size agrees (a server may spell ETags differently in listings), where the object's CRC-64
//!   decides;
//! - a listed key the index does not know is **unknown**: counted and shown by `status` (the first few by
//!   name); with `--delete`, an unknown object whose local path holds no file of the tree is deleted (a
//!   job of its own that looks again), unless so many would go at once that it looks like a lost disk
//!   rather than deletions (the same brake as for scans);
//! - `NoSuchBucket` is an error state (`status`, `/metrics`, the exit code of `--once`), never "converged".
//!
//! The check runs at start, every `--remote-check-interval` (24 h; `0` turns the periodic one off), while
//! the bucket is missing (every minute), and after any job met a missing object or bucket it expected.
//! `--once` reports converged only after the check at start has finished and what it queued is done.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::actions::{Ctx, is_gone, tree_stat};
use crate::remote::{ListObjectsRequest, ListedObject};
use crate::state::SyncedEntry;
use crate::watch::{Filter, escape_path, rel_path_of_key};

/// Keys per listing request (the most OSS and S3 return).
const LIST_PAGE: u32 = 1000;
/// Index rows read per step of the walk.
const INDEX_PAGE: usize = 1000;
/// Unknown keys named in the report (the count is exact).
const UNKNOWN_SAMPLE: usize = 20;
/// Unknown objects are deleted without `--allow-mass-delete` only when fewer than this many would go, or
/// they are at most half of what the prefix holds.
const BRAKE_MIN: u64 = 100;
/// Stray objects remembered by one check (memory stays bounded on a huge bucket; the next check finds the
/// rest).
const MAX_STRAYS: usize = 100_000;

/// Why a file is queued again by the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFinding {
    /// The listing did not confirm the row: no such key, or another size.
    pub kind: FindingKind,
    /// When the check started listing: a row synced before that and unchanged since is wrong for sure; a
    /// newer one is looked at again (HEAD).
    pub listed_after: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Missing,
    /// Listed with another size than the index recorded.
    OtherSize,
    /// Same size, another ETag: the object's CRC-64 decides (HEAD).
    OtherEtag,
}

/// What the check asks of the agent loop.
#[derive(Debug)]
pub enum CheckRequest {
    /// Sync this file again, with the finding.
    Resync {
        rel: PathBuf,
        key: String,
        finding: RemoteFinding,
    },
    /// `--delete`: this unknown object's local path held no file when listed; delete it if that still holds.
    DeleteStray {
        rel: PathBuf,
        key: String,
    },
    Finished(CheckReport),
}

/// The outcome of one check, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Unix seconds.
    pub started_at: u64,
    pub finished_at: u64,
    /// How long it took, in milliseconds.
    pub millis: u64,
    /// ListObjects requests made.
    pub requests: u64,
    pub objects: u64,
    pub indexed: u64,
    pub missing: u64,
    pub changed: u64,
    pub unknown: u64,
    pub unknown_sample: Vec<String>,
    /// Unknown objects whose local path holds no file (deleted with `--delete`, unless held).
    pub stray: u64,
    /// Stray objects held back by the brake.
    pub held: bool,
    pub bucket_missing: bool,
    /// The check could not finish (a listing error other than a missing bucket).
    pub error: Option<String>,
}

impl CheckReport {
    pub fn differences(&self) -> u64 {
        self.missing + self.changed
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Run one check; the last request sent is always [`CheckRequest::Finished`].
pub async fn run(ctx: Arc<Ctx>, filter: Arc<Filter>, tx: mpsc::Sender<CheckRequest>) {
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut report = CheckReport { started_at: unix(started), ..Default::default() };
    let mut strays = Vec::new();
    if let Err(e) = walk(&ctx, &filter, started, &tx, &mut report, &mut strays).await {
        match e {
            Stop::Remote(e) if e.code() == Some("NoSuchBucket") => report.bucket_missing = true,
            Stop::Remote(e) => report.error = Some(e.to_string()),
            Stop::Other(message) => report.error = Some(message),
            Stop::Closed => return,
        }
    }
    if report.error.is_none() && !report.bucket_missing && !strays.is_empty() && ctx.delete {
        let listed = report.objects;
        let most = report.stray >= BRAKE_MIN && report.stray * 2 > listed;
        // A fresh index over a tree with nothing in it: the disk is more likely lost than emptied.
        let everything = report.stray == listed && report.indexed == 0;
        if (most || everything) && !ctx.allow_mass_delete {
            report.held = true;
            tracing::error!(
                stray = report.stray,
                objects = listed,
                "{} of {listed} objects under the prefix are unknown to the index and have no local file: this looks \
                 like a lost or replaced disk, not deletions; nothing is deleted. If the files really were deleted, \
                 restart once with --allow-mass-delete.",
                report.stray
            );
        } else {
            for (rel, key) in strays {
                if tx.send(CheckRequest::DeleteStray { rel, key }).await.is_err() {
                    return;
                }
            }
        }
    }
    report.finished_at = unix(SystemTime::now());
    report.millis = clock.elapsed().as_millis() as u64;
    if report.bucket_missing {
        tracing::error!(bucket = %ctx.bucket, "the bucket does not exist: nothing is synced until it is back (checked again every minute)");
    } else if let Some(e) = &report.error {
        tracing::warn!(error = %e, "the remote check could not finish; it is tried again later");
    } else {
        tracing::info!(
            objects = report.objects,
            requests = report.requests,
            missing = report.missing,
            changed = report.changed,
            unknown = report.unknown,
            millis = report.millis,
            "remote check finished"
        );
    }
    let _ = tx.send(CheckRequest::Finished(report)).await;
}

enum Stop {
    Remote(crate::remote::RemoteError),
    Other(String),
    /// The loop went away (shutdown).
    Closed,
}

/// The index, one page at a time, in key order.
struct IndexCursor {
    ctx: Arc<Ctx>,
    page: std::collections::VecDeque<SyncedEntry>,
    after: Option<String>,
    done: bool,
}

impl IndexCursor {
    async fn next(&mut self) -> Result<Option<SyncedEntry>, Stop> {
        if self.page.is_empty() && !self.done {
            let (state, bucket, prefix, after) =
                (self.ctx.state.clone(), self.ctx.bucket.clone(), self.ctx.prefix.clone(), self.after.clone());
            let page =
                tokio::task::spawn_blocking(move || state.list_synced(&bucket, &prefix, after.as_deref(), INDEX_PAGE))
                    .await
                    .map_err(|e| Stop::Other(format!("reading the index: {e}")))?
                    .map_err(|e| Stop::Other(e.to_string()))?;
            self.done = page.len() < INDEX_PAGE;
            self.after = page.last().map(|e| e.key().to_string());
            self.page = page.into();
        }
        Ok(self.page.pop_front())
    }
}

async fn walk(
    ctx: &Arc<Ctx>,
    filter: &Filter,
    started: SystemTime,
    tx: &mpsc::Sender<CheckRequest>,
    report: &mut CheckReport,
    strays: &mut Vec<(PathBuf, String)>,
) -> Result<(), Stop> {
    let mut index = IndexCursor { ctx: ctx.clone(), page: Default::default(), after: None, done: false };
    let mut row = index.next().await?;
    let mut request = ListObjectsRequest {
        prefix: (!ctx.prefix.is_empty()).then(|| ctx.prefix.clone()),
        max_keys: Some(LIST_PAGE),
        ..Default::default()
    };
    let mut last_key: Option<String> = None;
    loop {
        let page = ctx.remote.list_objects(&ctx.bucket, &request).await.map_err(Stop::Remote)?;
        report.requests += 1;
        for object in &page.objects {
            // Both sides must be in the same (byte) order for the walk to mean anything.
            if last_key.as_deref().is_some_and(|k| k >= object.key.as_str()) {
                return Err(Stop::Other(format!(
                    "the listing is not in key order ({:?} after {:?}); the remote check needs a server that lists \
                     keys in UTF-8 byte order, as OSS and S3 do",
                    object.key, last_key
                )));
            }
            last_key = Some(object.key.clone());
            report.objects += 1;
            while let Some(entry) = row.take_if(|e| e.key() < object.key.as_str()) {
                indexed(report, &entry);
                finding(ctx, tx, report, entry, FindingKind::Missing, started).await?;
                row = index.next().await?;
            }
            match row.take_if(|e| e.key() == object.key) {
                Some(entry) => {
                    indexed(report, &entry);
                    if let Some(kind) = compare(&entry, object) {
                        finding(ctx, tx, report, entry, kind, started).await?;
                    }
                    row = index.next().await?;
                }
                None => unknown(ctx, filter, report, strays, object).await?,
            }
        }
        match page.next_continuation_token {
            Some(token) if request.continuation_token.as_deref() != Some(&token) => {
                request.continuation_token = Some(token)
            }
            Some(_) => return Err(Stop::Other("the listing's continuation token did not advance".into())),
            None => break,
        }
    }
    while let Some(entry) = row.take() {
        indexed(report, &entry);
        finding(ctx, tx, report, entry, FindingKind::Missing, started).await?;
        row = index.next().await?;
    }
    Ok(())
}

fn indexed(report: &mut CheckReport, entry: &SyncedEntry) {
    if matches!(entry, SyncedEntry::Valid(_)) {
        report.indexed += 1;
    }
}

/// How the listed object differs from the index row, if it does.
fn compare(entry: &SyncedEntry, object: &ListedObject) -> Option<FindingKind> {
    let SyncedEntry::Valid(row) = entry else { return None };
    if row.size != object.size {
        Some(FindingKind::OtherSize)
    } else if !etag_eq(&row.etag, &object.etag) {
        Some(FindingKind::OtherEtag)
    } else {
        None
    }
}

pub(crate) fn etag_eq(a: &str, b: &str) -> bool {
    a.trim_matches('"').eq_ignore_ascii_case(b.trim_matches('"'))
}

async fn finding(
    ctx: &Ctx,
    tx: &mpsc::Sender<CheckRequest>,
    report: &mut CheckReport,
    entry: SyncedEntry,
    kind: FindingKind,
    started: SystemTime,
) -> Result<(), Stop> {
    // A damaged row is distrusted and re-verified by the scan already.
    let SyncedEntry::Valid(row) = entry else { return Ok(()) };
    let Some(rel) = rel_path_of_key(&ctx.prefix, &row.key) else { return Ok(()) };
    match kind {
        FindingKind::Missing => report.missing += 1,
        FindingKind::OtherSize | FindingKind::OtherEtag => report.changed += 1,
    }
    tracing::info!(key = %row.key, finding = ?kind, "remote check: the object is not what the index recorded; syncing the file again");
    let finding = RemoteFinding { kind, listed_after: started };
    tx.send(CheckRequest::Resync { rel, key: row.key, finding }).await.map_err(|_| Stop::Closed)
}

async fn unknown(
    ctx: &Arc<Ctx>,
    filter: &Filter,
    report: &mut CheckReport,
    strays: &mut Vec<(PathBuf, String)>,
    object: &ListedObject,
) -> Result<(), Stop> {
    report.unknown += 1;
    if report.unknown_sample.len() < UNKNOWN_SAMPLE {
        report.unknown_sample.push(object.key.clone());
    }
    // Only objects that name a file of the tree (not a folder marker, not an excluded path) can be stray.
    let Some(rel) = rel_path_of_key(&ctx.prefix, &object.key) else { return Ok(()) };
    if object.key.ends_with('/') || rel.as_os_str().is_empty() || filter.excludes_path(&rel, false) {
        return Ok(());
    }
    if !ctx.delete {
        return Ok(());
    }
    let (root, owned, follow) = (ctx.root.clone(), rel.clone(), ctx.follow_symlinks);
    let gone = tokio::task::spawn_blocking(move || match tree_stat(&root, &owned, follow) {
        Ok(m) => !m.is_file(),
        Err(e) => is_gone(&e),
    })
    .await
    .map_err(|e| Stop::Other(format!("looking at a local file: {e}")))?;
    if gone {
        tracing::debug!(key = %object.key, path = %escape_path(&rel), "unknown object without a local file");
        report.stray += 1;
        if strays.len() < MAX_STRAYS {
            strays.push((rel, object.key.clone()));
        }
    }
    Ok(())
}
