use std::process::ExitCode;

use ossmirror::cli::AgentArgs;

pub async fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`agent` is not built yet")
}
