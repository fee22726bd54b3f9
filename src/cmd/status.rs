use std::process::ExitCode;

use ossmirror::cli::StatusArgs;

pub async fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`status` is not built yet")
}
