//! The `ossmirror` binary: parse flags, set up logging, run one command, map the outcome to an exit code.
//!
//! Exit codes are a contract: 0 success, 1 runtime failure, 2 usage or configuration error.

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use ossmirror::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let (log_format, default_filter) = match &cli.command {
        // The agent's embedded server would log every request it serves; its own log says what matters.
        None => (cli.agent.log_format, "info,ossmirror::server=warn"),
        // `verify` may open the embedded store in process: its requests are not news either.
        Some(Command::Verify(_)) => (None, "info,ossmirror::server=warn"),
        Some(_) => (None, "info"),
    };
    init_logging(log_format.unwrap_or(LogFormat::Text), default_filter);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ossmirror: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Some(Command::Cp(args)) => cmd::cp::run(*args).await,
            Some(Command::Serve(args)) => cmd::serve::run(args).await,
            Some(Command::Status(args)) => cmd::status::run(args).await,
            Some(Command::Verify(args)) => cmd::verify::run(args).await,
            Some(Command::Doctor(args)) => cmd::doctor::run(args).await,
            Some(Command::Restore(args)) => cmd::restore::run(args).await,
            Some(Command::Ls(args)) => cmd::ls::run(args).await,
            Some(Command::Completions(args)) => cmd::generate::completions(args.shell),
            Some(Command::Man) => cmd::generate::man(),
            None => cmd::agent::run(cli.agent).await,
        }
    });
    // Do not wait for blocking tasks (a reader stuck on a slow disk) once the command has decided.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<cmd::UsageError>().is_some()
                || e.downcast_ref::<ossmirror::config::ConfigError>().is_some();
            eprintln!("ossmirror: error: {}", error_chain(&e));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// The error and its causes, each printed once: our typed errors already include their cause in their own
/// message, so a cause whose text is already on the line is skipped.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("OSSMIRROR_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only for a person at a terminal: journald, log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
