//! `ossmirror verify --watch DIR --bucket B [--prefix P]`: is the remote really a copy of the local tree?
//!
//! Independent of the agent's index on purpose: it checks what is, not what was recorded. Two passes, each
//! a stream, so memory does not grow with the tree:
//! 1. **Local → remote.** The tree is scanned with the agent's own scanner and filter (same excludes, same
//!    default ignores, the agent's own files left out). For each file, a HEAD of its key: missing, size
//!    differs, or else the file is read and its CRC-64 compared with the one the remote reports (`crc64` on
//!    OSS, `crc64nvme` on S3). An object that reports no checksum is *not* verified, and is said so. Up to
//!    `--jobs` files are in flight at once.
//! 2. **Remote → local.** The listing under the prefix, page by page: an object whose file does not exist
//!    (or is excluded) is reported for information; it is not a mismatch (without `--delete` the agent keeps
//!    such objects on purpose).
//!
//! A file that changes while it is read is reported as changed (not verified), as is one that cannot be
//! read. While an agent is busy, recently changed files may show up until it catches up.
//!
//! # No endpoint
//! With no endpoint configured, the agent keeps objects in its embedded store next to its state database.
//! `verify` then opens that store itself, in process, and verifies against it, which it can do only while
//! the agent is stopped (one server owns a store at a time); while the agent runs it says so. With neither
//! an endpoint nor an embedded store it asks for an endpoint.
//!
//! # Output and exit codes
//! One line per finding, then a summary; with `--json`, JSON Lines: one object per finding
//! (`{"kind": "missing" | "size" | "checksum" | "no_checksum" | "changed" | "unreadable" | "bad_name" |
//! "extra", "path", "key", ...}`, CRC-64 values as decimal strings) and a last `{"kind": "summary", ...}`.
//! Exit 0: every file verified; 1: any mismatch or unverified file, or a failure; 2: usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use ossmirror::agent::local::{hash_file, open_in_tree};
use ossmirror::agent::setup;
use ossmirror::cli::VerifyArgs;
use ossmirror::config::{FileConfig, ProcessEnv, RemoteSettings};
use ossmirror::remote::{ListObjectsRequest, ObjectInfo, Remote};
use ossmirror::snapshot::FileSnapshot;
use ossmirror::units::format_size;
use ossmirror::watch::{Filter, FilterConfig, RootGuard, ScanItem, Scanner, escape_path, object_key, rel_path_of_key};
use serde::Serialize;
use tokio::task::JoinSet;

use super::UsageError;

const DEFAULT_JOBS: usize = 8;
/// Keys per listing page.
const LIST_PAGE: u32 = 1000;

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (file, file_path) = FileConfig::load(args.config.as_deref())?;
    let mut settings = RemoteSettings::resolve(&args.remote, &file, &file_path, &ProcessEnv)?;
    super::warn_secret_flag(&settings);
    super::resolve_credentials(&mut settings).await?;
    ossmirror::remote::names::validate_bucket(&args.bucket).map_err(|e| UsageError(e.to_string()))?;
    let prefix = ossmirror::config::normalize_prefix(args.prefix.as_deref().unwrap_or(""));
    let root =
        std::fs::canonicalize(&args.watch).map_err(|e| UsageError(format!("--watch {}: {e}", args.watch.display())))?;
    if !root.is_dir() {
        return Err(UsageError(format!("--watch {}: not a directory", root.display())).into());
    }
    let state_db = match &args.state_db {
        Some(p) => p.clone(),
        None => {
            let tag = settings.endpoint.as_deref().map(|e| setup::endpoint_tag(settings.protocol, e));
            match super::status::derived_state_db(&root, &args.bucket, &prefix, Some(tag.as_deref()), &ProcessEnv) {
                super::status::Derived::Found(path) => path,
                _ => setup::state_db_for(&root, &args.bucket, &prefix, tag.as_deref(), &ProcessEnv),
            }
        }
    };

    let mut embedded = None;
    let remote: Arc<dyn Remote> = match settings.connect()? {
        Some(remote) => remote,
        None => {
            let (e, remote) = open_embedded(&state_db, &args.bucket, "verify").await?;
            embedded = Some(e);
            remote
        }
    };

    let own_paths = vec![state_db.clone(), state_db.with_extension("agent.lock"), setup::embedded_root(&state_db)];
    let mut excludes = file.exclude.clone().unwrap_or_default();
    excludes.extend(args.exclude.iter().cloned());
    let filter_config = FilterConfig {
        excludes,
        default_ignores: !args.no_default_excludes && file.default_excludes.unwrap_or(true),
        own_paths,
    };
    let filter = Arc::new(Filter::new(&root, &filter_config).map_err(|e| UsageError(e.to_string()))?);
    let guard = Arc::new(RootGuard::new(&root).context("the watched directory")?);
    let follow = args.follow_symlinks || file.follow_symlinks.unwrap_or(false);
    let scanner = Scanner::new(guard, filter.clone(), follow);

    let verify = Verify {
        remote,
        bucket: args.bucket.clone(),
        prefix,
        root,
        jobs: args.jobs.map_or(DEFAULT_JOBS, usize::from),
        follow_symlinks: follow,
        out: Output { json: args.json },
    };
    let outcome = verify.run(&scanner, &filter).await;
    if let Some(e) = embedded {
        e.server.shutdown().await;
    }
    let summary = outcome?;
    verify.out.summary(&summary);
    Ok(if summary.mismatches == 0 && summary.complete { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// No endpoint: the agent's embedded store, opened in this process while the agent is stopped.
pub(super) async fn open_embedded(
    state_db: &Path,
    bucket: &str,
    command: &str,
) -> anyhow::Result<(setup::Embedded, Arc<dyn Remote>)> {
    let store = state_db.with_extension("store");
    if !store.is_dir() {
        return Err(UsageError(format!(
            "{command} needs an endpoint: give --endpoint URL (or OSS_ENDPOINT) and credentials. (Without one the \
             agent keeps objects in an embedded store next to its state database, but there is none at {})",
            store.display()
        ))
        .into());
    }
    if let Some(pid) = super::status::running_agent(state_db) {
        anyhow::bail!(
            "the agent (pid {pid}) is running with its embedded store {}, and only one server may open a store: \
             stop the agent, run {command}, then start it again",
            store.display()
        );
    }
    eprintln!(
        "ossmirror: no endpoint given: using the agent's embedded local store {} (objects on this \
         machine)",
        store.display()
    );
    setup::embedded(state_db, bucket, None)
        .await
        .with_context(|| format!("opening the embedded store {}", store.display()))
}

struct Verify {
    remote: Arc<dyn Remote>,
    bucket: String,
    prefix: String,
    root: PathBuf,
    jobs: usize,
    follow_symlinks: bool,
    out: Output,
}

/// One discrepancy (or, for `extra`, one piece of information).
#[derive(Debug, Serialize, Default)]
struct Finding {
    kind: &'static str,
    path: Option<String>,
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_size: Option<u64>,
    /// Which checksum was compared: "crc64" (CRC-64/XZ, OSS) or "crc64nvme" (S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// What checking one file found.
enum Checked {
    Verified { size: u64 },
    Mismatch(Finding),
}

#[derive(Debug, Serialize, Default)]
struct Summary {
    kind: &'static str,
    files: u64,
    verified: u64,
    verified_bytes: u64,
    mismatches: u64,
    extra: u64,
    /// The local scan read every directory (an incomplete scan cannot vouch for files it did not see).
    complete: bool,
}

impl Verify {
    async fn run(&self, scanner: &Scanner, filter: &Filter) -> anyhow::Result<Summary> {
        let mut summary = Summary { kind: "summary", complete: true, ..Default::default() };
        let mut checks: JoinSet<anyhow::Result<Checked>> = JoinSet::new();
        let mut scan = scanner.stream(Path::new(""));
        while let Some(item) = scan.next().await {
            match item {
                ScanItem::File { rel, snapshot } => {
                    summary.files += 1;
                    match object_key(&self.prefix, &rel) {
                        Ok(key) => {
                            while checks.len() >= self.jobs {
                                self.collect(&mut checks, &mut summary).await?;
                            }
                            checks.spawn(check(
                                self.remote.clone(),
                                self.bucket.clone(),
                                key,
                                (self.root.clone(), self.follow_symlinks),
                                rel,
                                snapshot,
                            ));
                        }
                        Err(e) => self.mismatch(
                            &mut summary,
                            Finding {
                                kind: "bad_name",
                                path: Some(escape_path(&rel)),
                                detail: Some(e.to_string()),
                                ..Default::default()
                            },
                        ),
                    }
                }
                ScanItem::Problem { rel, error } => self.mismatch(
                    &mut summary,
                    Finding {
                        kind: "unreadable",
                        path: Some(escape_path(&rel)),
                        detail: Some(error.to_string()),
                        ..Default::default()
                    },
                ),
                // Not mirrored, so not verified: a mismatch like a name that cannot be a key.
                ScanItem::Impossible { rel, error } => self.mismatch(
                    &mut summary,
                    Finding {
                        kind: "impossible_path",
                        path: Some(escape_path(&rel)),
                        detail: Some(error),
                        ..Default::default()
                    },
                ),
                ScanItem::Skipped { .. } => {}
                ScanItem::Done(report) => summary.complete = report.complete,
            }
        }
        while !checks.is_empty() {
            self.collect(&mut checks, &mut summary).await?;
        }
        self.extras(filter, &mut summary).await?;
        Ok(summary)
    }

    async fn collect(
        &self,
        checks: &mut JoinSet<anyhow::Result<Checked>>,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let Some(done) = checks.join_next().await else { return Ok(()) };
        match done.context("a verification task failed")?? {
            Checked::Verified { size } => {
                summary.verified += 1;
                summary.verified_bytes += size;
            }
            Checked::Mismatch(f) => self.mismatch(summary, f),
        }
        Ok(())
    }

    fn mismatch(&self, summary: &mut Summary, finding: Finding) {
        summary.mismatches += 1;
        self.out.finding(&finding);
    }

    /// Pass 2: objects under the prefix with no local file.
    async fn extras(&self, filter: &Filter, summary: &mut Summary) -> anyhow::Result<()> {
        let mut request = ListObjectsRequest {
            prefix: (!self.prefix.is_empty()).then(|| self.prefix.clone()),
            max_keys: Some(LIST_PAGE),
            ..Default::default()
        };
        loop {
            let page = self
                .remote
                .list_objects(&self.bucket, &request)
                .await
                .with_context(|| format!("listing oss://{}/{}", self.bucket, self.prefix))?;
            for object in &page.objects {
                let why = match rel_path_of_key(&self.prefix, &object.key) {
                    None => Some("the key names no local file"),
                    Some(rel) if filter.excludes_path(&rel, false) => Some("its local path is excluded"),
                    Some(rel) => match std::fs::symlink_metadata(self.root.join(&rel)) {
                        Ok(m) if m.is_file() => None,
                        // Followed links were checked in pass 1; unfollowed ones are never mirrored.
                        Ok(m) if m.file_type().is_symlink() && self.follow_symlinks => None,
                        _ => Some("no local file"),
                    },
                };
                if let Some(why) = why {
                    summary.extra += 1;
                    self.out.finding(&Finding {
                        kind: "extra",
                        key: Some(object.key.clone()),
                        remote_size: Some(object.size),
                        detail: Some(why.to_string()),
                        ..Default::default()
                    });
                }
            }
            match page.next_continuation_token {
                Some(token) if request.continuation_token.as_deref() != Some(&token) => {
                    request.continuation_token = Some(token)
                }
                Some(_) => anyhow::bail!("the listing of oss://{}/{} did not advance", self.bucket, self.prefix),
                None => return Ok(()),
            }
        }
    }
}

/// Check one file: HEAD, size, then its bytes against the checksum the remote reports.
async fn check(
    remote: Arc<dyn Remote>,
    bucket: String,
    key: String,
    (root, follow_symlinks): (PathBuf, bool),
    rel: PathBuf,
    snapshot: FileSnapshot,
) -> anyhow::Result<Checked> {
    let finding = |kind| Finding { kind, path: Some(escape_path(&rel)), key: Some(key.clone()), ..Default::default() };
    let info = remote.head_object(&bucket, &key).await.with_context(|| format!("HEAD oss://{bucket}/{key}"))?;
    let Some(info) = info else {
        return Ok(Checked::Mismatch(Finding { local_size: Some(snapshot.size), ..finding("missing") }));
    };
    if info.size != snapshot.size {
        return Ok(Checked::Mismatch(Finding {
            local_size: Some(snapshot.size),
            remote_size: Some(info.size),
            ..finding("size")
        }));
    }
    let Some((name, remote_crc)) = remote_checksum(&info) else {
        return Ok(Checked::Mismatch(Finding {
            detail: Some("the remote reports no CRC-64 for this object: its content cannot be verified".into()),
            ..finding("no_checksum")
        }));
    };
    // One piece (u64::MAX): only the whole-file checksums are wanted.
    let owned = rel.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        open_in_tree(&root, &owned, follow_symlinks).and_then(|file| hash_file(&file, u64::MAX, &snapshot))
    })
    .await
    .context("a file-reading task failed")?;
    let local = match hashed {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Ok(Checked::Mismatch(Finding {
                detail: Some("the file changed while it was being verified; run verify again".into()),
                ..finding("changed")
            }));
        }
        Err(e) => return Ok(Checked::Mismatch(Finding { detail: Some(e.to_string()), ..finding("unreadable") })),
    };
    let local_crc = if name == "crc64" { local.crc64 } else { local.crc64nvme };
    if local_crc == remote_crc {
        return Ok(Checked::Verified { size: info.size });
    }
    Ok(Checked::Mismatch(Finding {
        checksum: Some(name),
        local_checksum: Some(local_crc.to_string()),
        remote_checksum: Some(remote_crc.to_string()),
        ..finding("checksum")
    }))
}

/// The checksum to compare with: OSS's CRC-64/XZ when reported, else S3's full-object CRC-64/NVME. A copy
/// or an old object may report neither.
fn remote_checksum(info: &ObjectInfo) -> Option<(&'static str, u64)> {
    match (info.crc64, info.crc64nvme) {
        (Some(c), _) => Some(("crc64", c)),
        (None, Some(c)) => Some(("crc64nvme", c)),
        (None, None) => None,
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn finding(&self, f: &Finding) {
        if self.json {
            if let Ok(line) = serde_json::to_string(f) {
                println!("{line}");
            }
            return;
        }
        let path = f.path.as_deref().or(f.key.as_deref()).unwrap_or("?");
        let text = match f.kind {
            "missing" => format!("MISSING     {path}  (no object {})", f.key.as_deref().unwrap_or("?")),
            "size" => format!(
                "SIZE        {path}  local {} bytes, remote {} bytes",
                f.local_size.unwrap_or(0),
                f.remote_size.unwrap_or(0)
            ),
            "checksum" => format!(
                "CHECKSUM    {path}  same size, different content: local {} {}, remote {}",
                f.checksum.unwrap_or("crc64"),
                f.local_checksum.as_deref().unwrap_or("?"),
                f.remote_checksum.as_deref().unwrap_or("?")
            ),
            "no_checksum" => format!("NO CHECKSUM {path}  NOT VERIFIED: {}", f.detail.as_deref().unwrap_or("")),
            "changed" => format!("CHANGED     {path}  NOT VERIFIED: {}", f.detail.as_deref().unwrap_or("")),
            "unreadable" => format!("UNREADABLE  {path}  {}", f.detail.as_deref().unwrap_or("")),
            "bad_name" => format!("BAD NAME    {path}  {}", f.detail.as_deref().unwrap_or("")),
            "extra" => format!(
                "extra       {}  ({} bytes; {}; informational)",
                f.key.as_deref().unwrap_or("?"),
                f.remote_size.unwrap_or(0),
                f.detail.as_deref().unwrap_or("")
            ),
            other => format!("{other} {path}"),
        };
        println!("{text}");
    }

    fn summary(&self, s: &Summary) {
        if self.json {
            if let Ok(line) = serde_json::to_string(s) {
                println!("{line}");
            }
            return;
        }
        let mut line = format!(
            "verified {} of {} files ({}B); {} mismatch{}",
            s.verified,
            s.files,
            format_size(s.verified_bytes),
            s.mismatches,
            if s.mismatches == 1 { "" } else { "es" }
        );
        if s.extra > 0 {
            line.push_str(&format!(
                "; {} remote object{} without a local file",
                s.extra,
                if s.extra == 1 { "" } else { "s" }
            ));
        }
        if !s.complete {
            line.push_str("; the local scan was INCOMPLETE (see the errors above)");
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_follows_what_the_remote_reports() {
        let info = ObjectInfo {
            key: "k".into(),
            size: 1,
            etag: "\"e\"".into(),
            crc64: None,
            crc64nvme: None,
            last_modified: None,
            content_type: None,
            metadata: Vec::new(),
            storage_class: None,
            object_type: None,
        };
        assert_eq!(remote_checksum(&info), None, "no checksum: never called verified");
        let s3 = ObjectInfo { crc64nvme: Some(7), ..info.clone() };
        assert_eq!(remote_checksum(&s3), Some(("crc64nvme", 7)));
        let oss = ObjectInfo { crc64: Some(9), ..s3 };
        assert_eq!(remote_checksum(&oss), Some(("crc64", 9)));
    }
}
