use std::process::ExitCode;

use ossmirror::cli::ServeArgs;

pub async fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`serve` is not built yet")
}
