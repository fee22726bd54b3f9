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
