//! Running as a service and as a command a person types: the systemd unit, the man page and completions,
//! plain logs off a terminal, help that says only what is true, and the exit code of Ctrl-C.

mod common;

use std::process::{Command, Output, Stdio};

use common::agent::{Mirror, write};
use common::binary;

fn ossmirror(args: &[&str]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).stdin(Stdio::null());
    common::isolate_from_cloud(&mut cmd);
    cmd.output().expect("run ossmirror")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `systemd-analyze verify` of the packaged unit prints nothing (it warned about `StartLimitIntervalSec`
/// in `[Service]`), and a configuration error (exit 2) is not restarted every 5 s. The unit's
/// `ExecStart` is pointed at the binary under test (verify checks that it is executable). Needs the
/// `systemd` package (Debian), which .ci/run installs.
#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/ossmirror.service")).unwrap();
    let section = |name: &str| -> String {
        let start = unit.find(&format!("[{name}]")).unwrap_or_else(|| panic!("no [{name}] in the unit"));
        let rest = &unit[start + name.len() + 2..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
    };
    assert!(section("Unit").contains("\nStartLimitIntervalSec=0"), "StartLimitIntervalSec belongs in [Unit]");
    assert!(!section("Service").contains("StartLimitIntervalSec"));
    assert!(section("Service").contains("\nRestartPreventExitStatus=2"), "a config error must not be restarted");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ossmirror.service");
    std::fs::write(&path, unit.replace("/usr/bin/ossmirror", &binary().display().to_string())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze is needed for this test: apt-get install systemd");
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
}

#[test]
fn man_page_and_completions_come_from_the_clap_definitions() {
    let out = ossmirror(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    for needle in [
        ".TH ossmirror",
        ".SH CREDENTIALS",
        ".SH \"DOCTOR\"",
        ".SH \"CP\"",
        "\\-\\-anonymous",
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED",
        "130",
    ] {
        assert!(page.contains(needle), "the man page lacks {needle:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = ossmirror(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains("doctor") && script.contains("anonymous"),
            "{shell}: {}",
            text(&out)
        );
    }
    assert_eq!(ossmirror(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell is a usage error");
    let help = String::from_utf8_lossy(&ossmirror(&["--help"]).stdout).into_owned();
    assert!(help.contains("completions") && help.contains("doctor") && !help.contains("\n  man "), "{help}");
}

/// Logs written to a pipe or a file (journald, a log file) carry no ANSI colour codes, even with
/// `NO_COLOR` unset.
#[test]
fn logs_carry_no_colour_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut cmd = Command::new(binary());
    // No endpoint: the agent warns loudly about its embedded store, syncs the empty folder and exits.
    cmd.arg("--watch").arg(&data).args(["--bucket", "plain-logs", "--once"]);
    cmd.env_remove("NO_COLOR").env("OSSMIRROR_LOG", "info").env("XDG_STATE_HOME", dir.path().join("state"));
    common::isolate_from_cloud(&mut cmd);
    let out = cmd.stdin(Stdio::null()).output().expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("WARN") && stderr.contains("NO ENDPOINT CONFIGURED"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in a non-terminal log: {stderr:?}");
}

/// `--help` mentions the embedded store only where there is one: the agent's and verify's, not cp's.
#[test]
fn help_names_the_embedded_store_only_where_there_is_one() {
    let help = |args: &[&str]| String::from_utf8_lossy(&ossmirror(args).stdout).into_owned();
    assert!(help(&["--help"]).contains("the agent runs an embedded local server"));
    assert!(!help(&["cp", "--help"]).contains("embedded"), "{}", help(&["cp", "--help"]));
    let verify = help(&["verify", "--help"]);
    assert!(
        verify.contains("verify checks the agent's embedded local store")
            && !verify.contains("the agent runs an embedded"),
        "{verify}"
    );
}

/// Ctrl-C (SIGINT) stops the agent gracefully with 130, as shells expect of an interrupted command; a
/// service stop (SIGTERM) stays 0.
#[test]
fn ctrl_c_stops_the_agent_with_130() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"mirrored before the interrupt");
    let mut agent = m.agent().start();
    m.wait_mirrored(&agent);
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(130), "{}", agent.log());
    assert!(agent.log().contains("SIGINT received"), "{}", agent.log());
}
