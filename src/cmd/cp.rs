//! `ossmirror cp LOCAL oss://BUCKET/KEY`: the SDKs' resumable upload as a command; and the way back,
//! `ossmirror cp oss://BUCKET/KEY LOCAL` (see [`download`]).
//!
//! Exit code 0 only when the object is verified (its CRC-64 equals the bytes read from an unchanged file).
//! Ctrl-C stops gracefully: parts in flight finish and are checkpointed, so running the same command again
//! resumes; with `--abort-on-cancel` the server-side upload is aborted and the checkpoint deleted instead.
//! Either way the exit code is 130, as for any command a shell interrupted. A second Ctrl-C exits at once
//! (the checkpoint is still consistent: parts are recorded only once acked).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ossmirror::cli::CpArgs;
use ossmirror::config::{FileConfig, ProcessEnv, RemoteSettings, state_dir};
use ossmirror::engine::{Engine, EngineConfig, EngineError, Phase, Progress, UploadSpec};
use ossmirror::remote::{CallbackOutcome, ObjectOptions};
use ossmirror::restore::{
    DownloadConfig, Downloader, Event, Progress as DownloadProgress, RestoreOptions, Restorer, Target,
};
use ossmirror::state::StateDb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::UsageError;

pub async fn run(args: CpArgs) -> anyhow::Result<ExitCode> {
    if let Some(source) = args.source.to_str()
        && (source.starts_with("oss://") || source.starts_with("s3://"))
    {
        return download(args.clone(), source.to_string()).await;
    }
    let (bucket, key) = parse_destination(&args.destination, &args.source)?;
    check_source(&args.source)?;
    let (file, file_path) = FileConfig::load(args.config.as_deref())?;
    let mut settings = RemoteSettings::resolve(&args.remote, &file, &file_path, &ProcessEnv)?;
    let extras = ossmirror::config::object_extras(&args.object, &file, &file_path)?;
    if settings.protocol == ossmirror::remote::Dialect::S3 && extras.callback.is_some() {
        return Err(UsageError(
            "upload callbacks are an OSS feature the S3 API does not have: drop --callback-url with --protocol s3"
                .into(),
        )
        .into());
    }
    super::warn_secret_flag(&settings);
    if settings.endpoint.is_none() {
        let variable = match settings.protocol {
            ossmirror::remote::Dialect::Oss => "OSS_ENDPOINT",
            ossmirror::remote::Dialect::S3 => "AWS_ENDPOINT_URL",
        };
        return Err(UsageError(format!(
            "cp needs an endpoint: give --endpoint URL or set {variable} (or `endpoint` in the config file)"
        ))
        .into());
    }
    super::resolve_credentials(&mut settings).await?;
    let remote = settings.connect()?.ok_or_else(|| UsageError("cp needs an endpoint".into()))?;
    let scheme = match settings.protocol {
        ossmirror::remote::Dialect::Oss => "oss",
        ossmirror::remote::Dialect::S3 => "s3",
    };

    let (state, keep_checkpoint) = if args.no_checkpoint {
        (StateDb::open_in_memory()?, false)
    } else {
        let path = args.checkpoint_db.clone().unwrap_or_else(|| state_dir(&ProcessEnv).join("cp.db"));
        let db_path = path.clone();
        let (state, report) = tokio::task::spawn_blocking(move || StateDb::open(&db_path))
            .await
            .context("opening the checkpoint database")??;
        if let Some(q) = report.quarantined {
            tracing::warn!(moved_to = %q.moved_to.display(), reason = %q.reason, "checkpoint database was damaged; started a fresh one");
            let ours: Vec<_> = q.salvaged_uploads.iter().filter(|u| u.bucket == bucket && u.key == key).collect();
            if ours.is_empty() {
                tracing::warn!(
                    "no upload to oss://{bucket}/{key} could be read from the damaged checkpoint database: if an \
                     earlier run was interrupted, its unfinished upload stays on the server (its parts are billed) \
                     until it is aborted, e.g. by a lifecycle rule for incomplete multipart uploads"
                );
            }
            for upload in ours {
                match remote.abort_multipart(&upload.bucket, &upload.key, &upload.upload_id).await {
                    Ok(()) => {
                        tracing::info!(upload_id = %upload.upload_id, "aborted the upload recorded in the damaged checkpoint database")
                    }
                    Err(e) => {
                        tracing::warn!(upload_id = %upload.upload_id, error = %e, "could not abort an upload from the damaged checkpoint database")
                    }
                }
            }
        }
        (state, true)
    };

    let mut config = EngineConfig { keep_checkpoint, ..EngineConfig::default() };
    if let Some(size) = args.part_size {
        config.part_size = size.bytes();
        config.multipart_threshold = size.bytes();
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let engine = Engine::new(remote, state, config).map_err(|e| UsageError(e.to_string()))?;
    let spec = UploadSpec {
        path: args.source.clone(),
        bucket: bucket.clone(),
        key: key.clone(),
        options: object_options(&args, extras)?,
    };

    let cancel = CancellationToken::new();
    let ctrl_c = tokio::spawn(watch_ctrl_c(cancel.clone()));
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| spawn_progress_bar(progress_rx));

    let result = engine.upload(&spec, Some(&progress_tx), &cancel).await;
    ctrl_c.abort();
    if let Some(bar) = bar {
        bar.abort();
        eprintln!();
    }
    match result {
        Ok(outcome) => {
            println!(
                "uploaded {} to {scheme}://{bucket}/{key}: {} bytes, CRC-64 {}, ETag {} ({} parts sent, {} reused{})",
                args.source.display(),
                outcome.size,
                outcome.crc64,
                outcome.etag,
                outcome.parts_sent,
                outcome.parts_reused,
                if outcome.resumed { ", resumed" } else { "" }
            );
            // The object is stored whatever the callback did; its answer is the caller's to read.
            match &outcome.callback {
                None => {}
                Some(CallbackOutcome::Answered(body)) => println!("callback answered: {body}"),
                Some(CallbackOutcome::Failed { message, request_id }) => eprintln!(
                    "ossmirror: the object is stored, but its upload callback failed (CallbackFailed): {message} \
                     [RequestId: {}]",
                    request_id.as_deref().unwrap_or("-")
                ),
                Some(CallbackOutcome::Unknown) => eprintln!(
                    "ossmirror: the object is stored; the upload callback's answer is unknown (the upload had \
                     been completed by an earlier attempt)"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(EngineError::Cancelled { kept, .. }) => {
            if args.abort_on_cancel && kept {
                let aborted = engine.abort(&spec).await?;
                eprintln!(
                    "ossmirror: cancelled; {}",
                    if aborted {
                        "the server-side upload was aborted and the checkpoint deleted"
                    } else {
                        "nothing to resume"
                    }
                );
            } else if kept {
                eprintln!("ossmirror: cancelled; run the same command again to resume");
            } else {
                eprintln!("ossmirror: cancelled; the server-side upload was aborted");
            }
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("uploading {} to {scheme}://{bucket}/{key}", args.source.display())))
        }
    }
}

/// `cp oss://BUCKET/KEY LOCAL`: one resumable, verified download (`ossmirror::restore::download`);
/// `cp oss://BUCKET/PREFIX/ DIR` restores the tree below the prefix. Exit 0 only when verified: an object
/// whose server reports no checksum is written, but the exit code is 1 and the output says UNVERIFIED.
/// A kill leaves the temporary file and the checkpoint: the same command resumes. Ctrl-C likewise.
async fn download(args: CpArgs, source: String) -> anyhow::Result<ExitCode> {
    let upload_only = [
        (args.content_type.is_some(), "--content-type"),
        (!args.meta.is_empty(), "--meta"),
        (args.acl.is_some(), "--acl"),
        (args.storage_class.is_some(), "--storage-class"),
        (args.abort_on_cancel, "--abort-on-cancel"),
        (args.object.sse.is_some(), "--sse"),
        (!args.object.tags.is_empty(), "--tag"),
        (args.object.callback_url.is_some(), "--callback-url"),
    ];
    if let Some((_, flag)) = upload_only.iter().find(|(given, _)| *given) {
        return Err(UsageError(format!("{flag} is for uploads; a download (cp oss://… LOCAL) does not take it")).into());
    }
    let (bucket, key) = super::ls::parse_location(&source)?;
    let connected = super::restore::connect(&args.remote, args.config.as_deref(), "cp", &bucket, None).await?;
    let checkpoint = tokio::task::spawn_blocking({
        let (p, n) = (args.checkpoint_db.clone(), args.no_checkpoint);
        move || super::restore::open_checkpoint(p, n)
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
    let destination = PathBuf::from(&args.destination);

    if key.is_empty() || key.ends_with('/') {
        let options = RestoreOptions {
            bucket: bucket.clone(),
            prefix: key.clone(),
            jobs: 8,
            overwrite: true,
            dry_run: false,
            fast: false,
        };
        let dest = destination.clone();
        let restorer = tokio::task::spawn_blocking(move || Restorer::new(downloader, &dest, options))
            .await
            .context("preparing the target directory")?
            .map_err(|e| UsageError(e.to_string()))?;
        let outcome = restorer.run(&|e: &Event| super::restore::print_event(e, false)).await;
        connected.shutdown().await;
        let summary = outcome?;
        super::restore::print_summary(&summary, &destination, false);
        return Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }

    let name = key.rsplit('/').next().unwrap_or(&key).to_string();
    let path =
        if args.destination.ends_with('/') || destination.is_dir() { destination.join(&name) } else { destination };
    let target_path = path.clone();
    let target = tokio::task::spawn_blocking(move || Target::from_path(&target_path))
        .await
        .context("opening the target directory")?
        .map_err(|e| UsageError(format!("cannot download to {}: {e} (its directory must exist)", path.display())))?;
    let progress = Arc::new(DownloadProgress::default());
    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| spawn_download_bar(progress.clone()));
    let result = downloader.download(&bucket, &key, &target, None, Some(&progress)).await;
    if let Some(bar) = bar {
        bar.abort();
        eprintln!();
    }
    connected.shutdown().await;
    let object = downloader.object_name(&bucket, &key);
    match result {
        Ok(o) => {
            println!(
                "downloaded {object} to {}: {} bytes, CRC-64 {}, ETag {}, {} ({} ranges fetched, {} reused{})",
                path.display(),
                o.size,
                o.crc64,
                o.etag.trim_matches('"'),
                o.verified.describe(),
                o.ranges_fetched,
                o.ranges_reused,
                if o.restarted { ", restarted: the object was replaced mid-download" } else { "" }
            );
            if o.verified.is_verified() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("ossmirror: {} was written but could not be verified (exit 1)", path.display());
                Ok(ExitCode::from(1))
            }
        }
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

fn spawn_download_bar(progress: Arc<DownloadProgress>) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("downloading");
    tokio::spawn(async move {
        loop {
            bar.set_length(progress.total.load(std::sync::atomic::Ordering::Relaxed));
            bar.set_position(progress.done.load(std::sync::atomic::Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The file to upload must exist and be a regular file (or a link to one): say so before anything else.
fn check_source(source: &Path) -> Result<(), UsageError> {
    match std::fs::metadata(source) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(UsageError(format!(
            "{} is a directory: cp uploads one file (to mirror a directory, run the agent: ossmirror --watch DIR \
             --bucket B)",
            source.display()
        ))),
        Ok(_) => Err(UsageError(format!("{} is not a regular file", source.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(UsageError(format!("{} does not exist", source.display())))
        }
        Err(e) => Err(UsageError(format!("{} cannot be read: {e}", source.display()))),
    }
}

/// `oss://bucket/key`; a key ending in `/` (or none) gets the source file name appended.
fn parse_destination(destination: &str, source: &Path) -> Result<(String, String), UsageError> {
    let rest = destination
        .strip_prefix("oss://")
        .or_else(|| destination.strip_prefix("s3://"))
        .ok_or_else(|| UsageError(format!("destination {destination:?} must look like oss://BUCKET/KEY")))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(UsageError(format!("destination {destination:?} has no bucket: use oss://BUCKET/KEY")));
    }
    let key = if key.is_empty() || key.ends_with('/') {
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| UsageError(format!("{} has no UTF-8 file name: give the full key", source.display())))?;
        format!("{key}{name}")
    } else {
        key.to_string()
    };
    Ok((bucket.to_string(), key))
}

/// The object's options: `extras` (encryption, tags, callback) with the content type, metadata, ACL and
/// storage class of the flags.
fn object_options(args: &CpArgs, extras: ObjectOptions) -> Result<ObjectOptions, UsageError> {
    let mut metadata = Vec::new();
    for pair in &args.meta {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--meta {pair:?}: expected NAME=VALUE, e.g. --meta author=alice")))?;
        metadata.push((k.trim().to_string(), v.to_string()));
    }
    let content_type =
        args.content_type.clone().or_else(|| mime_guess::from_path(&args.source).first_raw().map(str::to_string));
    Ok(ObjectOptions {
        content_type,
        metadata,
        acl: args.acl.clone(),
        storage_class: args.storage_class.clone(),
        ..extras
    })
}

/// First Ctrl-C: cancel gracefully. Second: leave now.
async fn watch_ctrl_c(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!("\nossmirror: stopping after the parts in flight (Ctrl-C again to quit now)");
    cancel.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

fn spawn_progress_bar(mut rx: watch::Receiver<Progress>) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let p = *rx.borrow();
            bar.set_length(p.total_bytes);
            bar.set_position(p.done_bytes);
            bar.set_message(match p.phase {
                Phase::Starting => "starting".to_string(),
                Phase::Uploading if p.pass > 1 => format!("pass {}", p.pass),
                Phase::Uploading => "uploading".to_string(),
                Phase::Completing => "completing".to_string(),
                Phase::Done => "done".to_string(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let src = PathBuf::from("/tmp/data.bin");
        assert_eq!(parse_destination("oss://b/k", &src).unwrap(), ("b".into(), "k".into()));
        assert_eq!(parse_destination("oss://b/dir/", &src).unwrap(), ("b".into(), "dir/data.bin".into()));
        assert_eq!(parse_destination("oss://b", &src).unwrap(), ("b".into(), "data.bin".into()));
        assert!(parse_destination("b/k", &src).unwrap_err().0.contains("oss://BUCKET/KEY"));
        assert!(parse_destination("oss:///k", &src).is_err());
    }

    #[test]
    fn metadata_and_content_type() {
        let args = CpArgs {
            source: PathBuf::from("photo.jpg"),
            destination: "oss://b/k".into(),
            part_size: None,
            threads: None,
            checkpoint_db: None,
            no_checkpoint: false,
            content_type: None,
            meta: vec!["author=alice".into(), "note=a=b".into()],
            acl: None,
            storage_class: None,
            abort_on_cancel: false,
            no_progress: false,
            remote: Default::default(),
            object: Default::default(),
            config: None,
        };
        let o = object_options(&args, ObjectOptions::default()).unwrap();
        assert_eq!(o.content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(o.metadata, vec![("author".into(), "alice".into()), ("note".into(), "a=b".into())]);
        let bad = CpArgs { meta: vec!["novalue".into()], ..args };
        assert!(object_options(&bad, ObjectOptions::default()).unwrap_err().0.contains("NAME=VALUE"));
    }
}
