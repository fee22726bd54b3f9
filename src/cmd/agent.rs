//! `ossmirror --watch DIR --bucket B`: the agent as a command. SIGTERM or SIGINT stop it gracefully: SIGTERM
//! (a service stop) exits 0, SIGINT (Ctrl-C) exits 130 as shells expect of an interrupted command. `--once`
//! exits 0 when everything is synced and 1 if any file still failed.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ossmirror::agent::{self, AgentError};
use ossmirror::cli::AgentArgs;
use ossmirror::config::{AgentSettings, ProcessEnv};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::UsageError;

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.watch.is_none() && args.bucket.is_none() && args.config.is_none() && !has_default_config() {
        return Err(UsageError(
            "nothing to do: give --watch DIR --bucket NAME (or a subcommand: cp, serve, status, verify, doctor; see --help)"
                .into(),
        )
        .into());
    }
    let mut settings = AgentSettings::resolve(&args, &ProcessEnv)?;
    if settings.dry_run {
        if !settings.once {
            return Err(
                UsageError("--dry-run needs --once: it plans one run and changes nothing (add --once)".into()).into()
            );
        }
        // Before credentials are resolved: a dry run sends nothing anywhere.
        let plan = match agent::dry_run::plan(&settings).await {
            Ok(plan) => plan,
            Err(e @ (AgentError::Config(_) | AgentError::Invalid(_))) => return Err(UsageError(e.to_string()).into()),
            Err(e) => return Err(e.into()),
        };
        agent::dry_run::print(&plan);
        return Ok(ExitCode::SUCCESS);
    }
    super::warn_secret_flag(&settings.remote);
    super::resolve_credentials(&mut settings.remote).await?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let trigger = shutdown.clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    let saw_sigint = interrupted.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => {
                tracing::info!("SIGINT received");
                saw_sigint.store(true, Ordering::SeqCst);
            }
        }
        trigger.cancel();
        // A second signal while shutting down: leave now (uploads resume from their checkpoints).
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        std::process::exit(130);
    });
    let once = settings.once;
    match agent::run(settings, shutdown).await {
        Ok(_) if interrupted.load(Ordering::SeqCst) => Ok(ExitCode::from(130)),
        Ok(report) if once && !report.failed.is_empty() => {
            eprintln!("ossmirror: {} file(s) could not be synced: {}", report.failed.len(), report.failed.join(", "));
            Ok(ExitCode::from(1))
        }
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e @ (AgentError::Config(_) | AgentError::Invalid(_))) => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

fn has_default_config() -> bool {
    std::path::Path::new(ossmirror::config::DEFAULT_CONFIG_PATH).exists()
}
