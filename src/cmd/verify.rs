use std::process::ExitCode;

use ossmirror::cli::VerifyArgs;

pub async fn run(_args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`verify` is not built yet")
}
