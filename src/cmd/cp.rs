use std::process::ExitCode;

use ossmirror::cli::CpArgs;

pub async fn run(_args: CpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`cp` is not built yet")
}
