//! `ossmirror serve`: run the local OSS-compatible server until SIGTERM or SIGINT.
//!
//! Once listening it prints `listening on http://ADDR` on stdout and, with `--address-file`, writes the
//! bound address there (atomically: written to a temporary file and renamed, so a reader polling for the
//! file never sees half of it). Tests start it on port 0 and read the real port from that file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use ossmirror::cli::ServeArgs;
use ossmirror::remote::Credentials;
use ossmirror::server::{FaultConfig, Server, ServerConfig};

use super::UsageError;

fn config_from_args(args: ServeArgs) -> Result<ServerConfig, UsageError> {
    for (name, rate) in [("--fault-error-rate", args.fault_error_rate), ("--fault-reset-rate", args.fault_reset_rate)] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(UsageError(format!("{name} must be between 0 and 1, not {rate}")));
        }
    }
    if args.fault_reset_rate > 0.0 && args.fault_reset_after.is_none() {
        return Err(UsageError("--fault-reset-rate needs --fault-reset-after SIZE".into()));
    }
    let credentials = match (args.access_key_id, args.access_key_secret) {
        (Some(id), Some(secret)) => {
            let c = Credentials::new(id, secret);
            Some(match args.session_token {
                Some(t) => c.with_session_token(t),
                None => c,
            })
        }
        (None, None) => None,
        _ => return Err(UsageError("--access-key-id and --access-key-secret go together".into())),
    };
    let mut config = ServerConfig::new(args.root);
    config.listen = args.listen;
    config.credentials = credentials;
    config.region = args.region;
    config.base_domains = args.virtual_host_domains;
    config.control_api = args.enable_control_api;
    config.fsync = !args.no_fsync;
    config.buckets = args.buckets;
    config.allow_remote_callbacks = args.allow_remote_callbacks;
    config.lifecycle_interval = Some(args.lifecycle_interval.0).filter(|d| !d.is_zero());
    config.faults = FaultConfig {
        error_rate: args.fault_error_rate,
        reset_rate: args.fault_reset_rate,
        reset_after: args.fault_reset_after.map(|s| s.bytes()).unwrap_or(0),
        latency_ms: args.fault_latency.map(|d| d.0.as_millis() as u64).unwrap_or(0),
        seed: args.fault_seed,
    };
    Ok(config)
}

fn write_address_file(path: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{addr}\n")).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let address_file = args.address_file.clone();
    let config = config_from_args(args)?;
    let root = config.root.clone();
    let running = Server::start(config).await.with_context(|| format!("start the server in {}", root.display()))?;
    let addr = running.addr();
    println!("listening on http://{addr}");
    if let Some(path) = &address_file {
        write_address_file(path, addr)?;
    }
    let signal = wait_for_signal().await?;
    tracing::info!(signal, "shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
