//! `ossmirror completions SHELL` and the hidden `ossmirror man`: shell completions and the man page, both
//! generated from the clap definitions in `cli.rs`, so they can never disagree with `--help`. The .deb
//! build (`packaging/build-deb`) installs their output.

use std::io::Write as _;
use std::process::ExitCode;

use clap::CommandFactory;
use ossmirror::cli::Cli;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "ossmirror", &mut out);
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// ossmirror(1), with one section per subcommand after the agent's own options.
pub fn man() -> anyhow::Result<ExitCode> {
    let command = Cli::command();
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ossmirror {}", sub.get_name());
        let sub = sub.clone().bin_name(name);
        let sub_man = clap_mangen::Man::new(sub.clone());
        writeln!(page, ".SH \"{}\"", sub.get_name().to_uppercase())?;
        if let Some(about) = sub.get_about() {
            writeln!(page, "{about}")?;
        }
        sub_man.render_synopsis_section(&mut page)?;
        sub_man.render_options_section(&mut page)?;
    }
    page.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    man.render_version_section(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What `--help` cannot say at length: where credentials come from, and the exit codes.
const EXTRA_SECTIONS: &str = r#".SH CREDENTIALS
With an endpoint and no \fB--anonymous\fR, the first source that has credentials is used, in the order of
Alibaba Cloud's credentials SDKs:
.IP 1. 4
\fB--access-key-id\fR/\fB--access-key-secret\fR; OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET,
OSS_SESSION_TOKEN; ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET,
ALIBABA_CLOUD_SECURITY_TOKEN; access_key_id and access_key_secret in the config file.
.IP 2. 4
OIDC (RRSA in ACK): ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN, ALIBABA_CLOUD_OIDC_TOKEN_FILE.
.IP 3. 4
The aliyun CLI profile in ~/.aliyun/config.json (ALIBABA_CLOUD_PROFILE, else the current one).
.IP 4. 4
ALIBABA_CLOUD_CREDENTIALS_FILE, else ~/.alibabacloud/credentials (INI, section ALIBABA_CLOUD_PROFILE or
default).
.IP 5. 4
The ECS instance RAM role (IMDSv2), unless ALIBABA_CLOUD_ECS_METADATA_DISABLED=true.
.IP 6. 4
ALIBABA_CLOUD_CREDENTIALS_URI.
.PP
Temporary credentials are refreshed in the background. \fBossmirror doctor\fR shows which source was used.
.SH EXIT STATUS
0 success; 1 a runtime failure; 2 a usage or configuration error (including no credentials); 130 interrupted
by Ctrl-C.
"#;
