//! One file per command. This is the binary edge: errors are `anyhow`, with context naming what failed.

pub mod agent;
pub mod cp;
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
