//! `ossmirror restore --bucket B [--prefix P] --to DIR`: a prefix back into a directory.
//!
//! The work is `ossmirror::restore::Restorer`; this is the edge: flags and config, the remote (an endpoint,
//! or with none the agent's embedded store found from the config file's `watch`), the checkpoint database,
//! and the report. One line per key that was downloaded or needs attention (`--json`: JSON Lines, one object
//! per key with `kind` = downloaded | unverified | identical | would_download | differs | refused |
//! needs_restore | failed | marker, then `{"kind": "summary", ...}`).
//!
//! Exit 0 when every object is restored and verified (or identical already); 1 when any key was refused,
//! failed, needs RestoreObject, was downloaded without a checksum to verify it, or differs from a local file
//! that was left alone; 2 for usage errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use ossmirror::agent::setup;
use ossmirror::cli::{RemoteArgs, RestoreArgs};
use ossmirror::config::{FileConfig, ProcessEnv, RemoteSettings, normalize_prefix, state_dir};
use ossmirror::remote::Remote;
use ossmirror::restore::{Checkpoint, DownloadConfig, Downloader, Event, RestoreOptions, Restorer, Summary};
use ossmirror::units::format_size;

use super::UsageError;

const DEFAULT_JOBS: usize = 8;

/// A remote for commands that read a bucket (`restore`, `ls`, `cp` downloads), and the embedded server
/// behind it when there is no endpoint (to shut down at the end).
pub(super) struct Connected {
    pub remote: Arc<dyn Remote>,
    pub embedded: Option<setup::Embedded>,
}

impl Connected {
    pub async fn shutdown(self) {
        if let Some(e) = self.embedded {
            e.server.shutdown().await;
        }
    }
}

/// As `verify` does: flags > environment > config file; without an endpoint, the agent's embedded store
/// found through the config file's `watch` (and `bucket`, `prefix`).
pub(super) async fn connect(
    remote: &RemoteArgs,
    config: Option<&std::path::Path>,
    command: &str,
    bucket: &str,
    agent: Option<(&std::path::Path, &str)>,
) -> anyhow::Result<Connected> {
    let (file, file_path) = FileConfig::load(config)?;
    let mut settings = RemoteSettings::resolve(remote, &file, &file_path, &ProcessEnv)?;
    super::warn_secret_flag(&settings);
    super::resolve_credentials(&mut settings).await?;
    if let Some(remote) = settings.connect()? {
        return Ok(Connected { remote, embedded: None });
    }
    let watch = agent.map(|(w, _)| w.to_path_buf()).or(file.watch.clone());
    let Some(watch) = watch.and_then(|w| std::fs::canonicalize(w).ok()) else {
        return Err(UsageError(format!(
            "{command} needs an endpoint: give --endpoint URL or set OSS_ENDPOINT (or `endpoint` in the config file; \
             with none, --watch DIR names the agent's tree and its embedded store is used)"
        ))
        .into());
    };
    let prefix = match agent {
        Some((_, p)) => p.to_string(),
        None => normalize_prefix(file.prefix.as_deref().unwrap_or("")),
    };
    let state_db =
        file.state_db.clone().unwrap_or_else(|| setup::state_db_for(&watch, bucket, &prefix, None, &ProcessEnv));
    let (embedded, remote) = super::verify::open_embedded(&state_db, bucket, command).await?;
    Ok(Connected { remote, embedded: Some(embedded) })
}

pub(super) fn open_checkpoint(path: Option<PathBuf>, none: bool) -> anyhow::Result<Option<Arc<Checkpoint>>> {
    if none {
        return Ok(None);
    }
    let path = path.unwrap_or_else(|| state_dir(&ProcessEnv).join("download.db"));
    Ok(Some(Arc::new(Checkpoint::open(&path)?)))
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let (file, _) = FileConfig::load(args.config.as_deref())?;
    let bucket = args
        .bucket
        .clone()
        .or(file.bucket.clone())
        .ok_or_else(|| UsageError("restore needs --bucket BUCKET (or `bucket` in the config file)".into()))?;
    ossmirror::remote::names::validate_bucket(&bucket).map_err(|e| UsageError(e.to_string()))?;
    let prefix = normalize_prefix(args.prefix.as_deref().or(file.prefix.as_deref()).unwrap_or(""));
    let agent = args.watch.as_deref().map(|w| (w, prefix.as_str()));
    let connected = connect(&args.remote, args.config.as_deref(), "restore", &bucket, agent).await?;
    let checkpoint = tokio::task::spawn_blocking({
        let (p, n) = (args.checkpoint_db.clone(), args.no_checkpoint || args.dry_run);
        move || open_checkpoint(p, n)
    })
    .await
    .context("opening the checkpoint database")??;
    let mut config = DownloadConfig::default();
    if let Some(s) = args.part_size {
        config.part_size = s.bytes();
    }
    if let Some(t) = args.threads {
        config.threads = t;
    }
    let downloader = Downloader::new(connected.remote.clone(), checkpoint, config);
    let options = RestoreOptions {
        bucket: bucket.clone(),
        prefix,
        jobs: args.jobs.map_or(DEFAULT_JOBS, usize::from),
        overwrite: args.overwrite,
        dry_run: args.dry_run,
        fast: args.fast,
    };
    let to = args.to.clone();
    let restorer = tokio::task::spawn_blocking(move || Restorer::new(downloader, &to, options))
        .await
        .context("preparing the target directory")?
        .map_err(|e| UsageError(e.to_string()))?;
    let json = args.json;
    let outcome = restorer.run(&move |e: &Event| print_event(e, json)).await;
    connected.shutdown().await;
    let summary = outcome?;
    print_summary(&summary, &args.to, json);
    Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(super) fn print_event(e: &Event, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
        }
        return;
    }
    let path = e.path.as_deref().unwrap_or("-");
    let detail = e.detail.as_deref().unwrap_or("");
    match e.kind {
        "downloaded" => {
            let resumed = e.ranges_reused.map(|n| format!(", resumed: {n} ranges reused")).unwrap_or_default();
            let how = e.verified.map_or("", |v| v.describe());
            println!("downloaded {path} ({} bytes, {how}{resumed})", e.size.unwrap_or(0));
            if !detail.is_empty() {
                println!("  note: {detail}");
            }
        }
        "identical" | "marker" => {}
        "would_download" => println!("would download {path} ({} bytes)", e.size.unwrap_or(0)),
        "unverified" => eprintln!("ossmirror: {path}: downloaded but UNVERIFIED: the server reports no checksum"),
        "differs" => eprintln!("ossmirror: {path} differs from {:?}: {detail}", e.key),
        "refused" => eprintln!("ossmirror: key {:?} refused: {detail}", e.key),
        "needs_restore" => eprintln!("ossmirror: {:?}: {detail}", e.key),
        _ => eprintln!("ossmirror: {:?} -> {path}: FAILED: {detail}", e.key),
    }
}

pub(super) fn print_summary(s: &Summary, to: &std::path::Path, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(s) {
            println!("{line}");
        }
        return;
    }
    let mut line = if s.dry_run {
        format!("dry run: would download {} files into {}", s.would_download, to.display())
    } else {
        format!(
            "restored {} files ({}) into {}",
            s.downloaded + s.unverified,
            format_size(s.downloaded_bytes),
            to.display()
        )
    };
    for (n, what) in [
        (s.identical, "already identical"),
        (s.unverified, "unverified"),
        (s.differs, "differ (left alone)"),
        (s.refused, "refused"),
        (s.needs_restore, "need RestoreObject"),
        (s.failed, "failed"),
    ] {
        if n > 0 {
            line.push_str(&format!(", {n} {what}"));
        }
    }
    println!("{line}");
}
