//! One file per command. This is the binary edge: errors are `anyhow`, with context naming what failed.

pub mod agent;
pub mod cp;
pub mod doctor;
pub mod generate;
pub mod ls;
pub mod restore;
pub mod serve;
pub mod status;
pub mod verify;

/// A usage or configuration problem: exit code 2 instead of 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A secret on the command line is visible to every user in `ps`: say so, once.
pub fn warn_secret_flag(settings: &ossmirror::config::RemoteSettings) {
    if settings.secret_from_flag {
        tracing::warn!(
            "the access key secret was given as a command-line flag, which other users can read in `ps`; \
             prefer OSS_ACCESS_KEY_SECRET in the environment or an EnvironmentFile"
        );
    }
}

/// Decide what requests are signed with (the chain may fetch temporary credentials, and then keeps them
/// fresh in the background). No credentials, or a misconfigured source, is a usage error (exit 2); a
/// source that fails for now (STS busy) is a runtime failure (exit 1: systemd restarts the agent).
pub async fn resolve_credentials(settings: &mut ossmirror::config::RemoteSettings) -> anyhow::Result<()> {
    match settings.resolve_credentials(ossmirror::credentials::ChainEnv::process()).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_configuration() => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(anyhow::Error::new(e).context("getting credentials")),
    }
}
