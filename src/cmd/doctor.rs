//! `ossmirror doctor`: is this machine ready to mirror? One line per check, in the order a problem would
//! bite:
//! - **config**: which config file was read;
//! - **endpoint**: where requests go, with the protocol, signature and region (configured or guessed);
//! - **credentials**: which source of the chain supplied them (never the secret) and, for temporary ones,
//!   how long they are valid; no credentials is the same error, naming every source, as the agent's;
//! - **clock**: this machine's clock against the server's `Date` (OSS refuses signatures more than 15
//!   minutes off; ossmirror corrects for a skew it is told about, but a drifting clock is worth fixing);
//! - **bucket**: a ListObjects with max-keys 1 under the prefix, so credentials, permissions, region and
//!   bucket name are all exercised;
//! - **inotify**: `fs.inotify.max_user_watches` and `max_user_instances`, against the number of
//!   directories of the watched tree when one is configured (the agent watches every directory).
//!
//! Exit codes: 0 when nothing failed (warnings allowed), 2 when no credentials (or a broken credential
//! source) were found, 1 when another check failed.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use ossmirror::cli::DoctorArgs;
use ossmirror::config::{FileConfig, ProcessEnv, RemoteSettings};
use ossmirror::remote::ListObjectsRequest;
use ossmirror::units::format_duration;
use serde::Serialize;

const INOTIFY: &str = "/proc/sys/fs/inotify";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    detail: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, check: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check { check, status, detail: detail.into() });
    }

    fn print(&self, json: bool) {
        if json {
            if let Ok(text) = serde_json::to_string_pretty(self) {
                println!("{text}");
            }
            return;
        }
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            // Multi-line details (the chain's list of sources) stay aligned under the first line.
            let detail = c.detail.replace('\n', &format!("\n{:18}", ""));
            println!("{:<12} {status:<4}  {detail}", c.check);
        }
    }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let (file, file_path) = FileConfig::load(args.config.as_deref())?;
    let mut settings = RemoteSettings::resolve(&args.remote, &file, &file_path, &ProcessEnv)?;
    let mut report = Report::default();
    report.add(
        "config",
        Status::Ok,
        match &file_path {
            Some(p) => format!("read {}", p.display()),
            None => "no config file (flags and environment only)".to_string(),
        },
    );

    let mut credentials_missing = false;
    match settings.endpoint.clone() {
        None => report.add(
            "endpoint",
            Status::Warn,
            "none configured: the agent would keep objects ON THIS MACHINE in its embedded store; set --endpoint \
             or OSS_ENDPOINT to mirror to OSS",
        ),
        Some(endpoint) => {
            report.add("endpoint", Status::Ok, describe_endpoint(&settings, &endpoint));
            match settings.resolve_credentials(ossmirror::credentials::ChainEnv::process()).await {
                Ok(()) => report.add("credentials", Status::Ok, describe_credentials(&settings)),
                Err(e) => {
                    credentials_missing = e.is_configuration();
                    report.add("credentials", Status::Fail, e.to_string());
                }
            }
            match clock_offset(&endpoint).await {
                Ok(offset) => {
                    let (status, note) = judge_offset(offset);
                    report.add("clock", status, note);
                }
                Err(e) => report.add("clock", Status::Fail, format!("cannot reach {endpoint}: {e}")),
            }
            let bucket = args.bucket.clone().or(file.bucket.clone());
            let prefix = ossmirror::config::normalize_prefix(
                args.prefix.as_deref().or(file.prefix.as_deref()).unwrap_or_default(),
            );
            match bucket {
                None => {
                    report.add("bucket", Status::Warn, "no bucket given (--bucket, or `bucket` in the config file)")
                }
                Some(_) if credentials_missing => report.add("bucket", Status::Fail, "not checked: no credentials"),
                Some(bucket) => {
                    let (status, detail) = list_bucket(&settings, &bucket, &prefix).await;
                    report.add("bucket", status, detail);
                }
            }
        }
    }

    let watch = file.watch.clone();
    let (status, detail) = tokio::task::spawn_blocking(move || inotify(watch.as_deref())).await?;
    report.add("inotify", status, detail);

    report.print(args.json);
    Ok(if credentials_missing {
        ExitCode::from(2)
    } else if report.checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn describe_endpoint(settings: &RemoteSettings, endpoint: &str) -> String {
    let protocol = match settings.protocol {
        ossmirror::remote::Dialect::Oss => format!("OSS, signature {:?}", settings.signature).to_lowercase(),
        ossmirror::remote::Dialect::S3 => "S3".to_string(),
    };
    let guessed = ossmirror::remote::oss::endpoint::Endpoint::parse(endpoint).ok().and_then(|e| e.guess_region());
    let region = match (&settings.region, guessed) {
        (Some(r), _) => format!("region {r}"),
        (None, Some(g)) => format!("region {g} (from the host name)"),
        (None, None) => "no region (give --region for signature v4)".to_string(),
    };
    format!("{endpoint} ({protocol}, {region})")
}

fn describe_credentials(settings: &RemoteSettings) -> String {
    let Some(provider) = &settings.provider else {
        return "none: --anonymous, requests are unsigned".to_string();
    };
    let mut text = format!("from {}", provider.source());
    if let Some(expiration) = provider.expiration() {
        match expiration.duration_since(SystemTime::now()) {
            Ok(left) => text.push_str(&format!(
                "; temporary, valid for {} more (refreshed in the background)",
                format_duration(Duration::from_secs(left.as_secs()))
            )),
            Err(_) => text.push_str("; temporary, and ALREADY EXPIRED: is this machine's clock right?"),
        }
    }
    text
}

/// Server time minus local time, in seconds, from the `Date` of any answer to a GET of the endpoint (an
/// anonymous request is refused, but the refusal is dated). Measured against the middle of the exchange.
async fn clock_offset(endpoint: &str) -> Result<f64, String> {
    let url =
        ossmirror::remote::oss::endpoint::Endpoint::parse(endpoint).map(|e| e.display()).map_err(|e| e.to_string())?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none());
    if is_loopback(&url) {
        builder = builder.no_proxy();
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let before = SystemTime::now();
    let response = client.get(&url).send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    })?;
    let after = SystemTime::now();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(ossmirror::timefmt::parse_rfc1123)
        .ok_or("the answer has no Date header")?;
    let middle = before + after.duration_since(before).unwrap_or_default() / 2;
    Ok(match date.duration_since(middle) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    })
}

fn judge_offset(offset: f64) -> (Status, String) {
    let side = if offset >= 0.0 { "ahead of" } else { "behind" };
    let size = offset.abs();
    // `Date` has one-second resolution.
    if size < 2.0 {
        return (Status::Ok, "the server's Date matches this machine's clock (within 2 s)".to_string());
    }
    let text = format!("the server's clock is {size:.0} s {side} this machine's");
    if size > 15.0 * 60.0 {
        (
            Status::Warn,
            format!(
                "{text}: OSS refuses signatures more than 15 minutes off; ossmirror signs with the server's time once told, but fix this machine's clock (NTP)"
            ),
        )
    } else if size > 60.0 {
        (Status::Warn, format!("{text}: fix this machine's clock (NTP)"))
    } else {
        (Status::Ok, text)
    }
}

async fn list_bucket(settings: &RemoteSettings, bucket: &str, prefix: &str) -> (Status, String) {
    let shown = format!(
        "{}://{bucket}/{prefix}",
        if settings.protocol == ossmirror::remote::Dialect::S3 { "s3" } else { "oss" }
    );
    let remote = match settings.connect() {
        Ok(Some(r)) => r,
        Ok(None) => return (Status::Fail, "no endpoint".to_string()),
        Err(e) => return (Status::Fail, e.to_string()),
    };
    let request = ListObjectsRequest {
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        max_keys: Some(1),
        ..Default::default()
    };
    match remote.list_objects(bucket, &request).await {
        Ok(page) if page.objects.is_empty() => (Status::Ok, format!("{shown} can be listed (it is empty)")),
        Ok(_) => (Status::Ok, format!("{shown} can be listed (it holds objects)")),
        Err(e) => (Status::Fail, format!("listing {shown}: {e}")),
    }
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).is_some_and(|h| {
        h == "localhost" || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// The inotify limits, and whether the watched tree fits in them.
fn inotify(watch: Option<&Path>) -> (Status, String) {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new(INOTIFY).join(name)).ok().and_then(|t| t.trim().parse().ok())
    };
    let (Some(watches), Some(instances)) = (read("max_user_watches"), read("max_user_instances")) else {
        return (Status::Warn, format!("cannot read {INOTIFY}/max_user_watches and max_user_instances"));
    };
    let limits = format!("max_user_watches {watches}, max_user_instances {instances}");
    let Some(root) = watch else { return (Status::Ok, limits) };
    // One watch per directory; stop counting once past the limit.
    let directories = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .take(watches as usize + 1)
        .count() as u64;
    let fix = "raise it: sysctl -w fs.inotify.max_user_watches=1048576 (and in /etc/sysctl.d/ to keep it)";
    if directories > watches {
        (
            Status::Warn,
            format!(
                "{limits}: {} has more than {watches} directories, so the agent cannot watch them all and falls back to \
             periodic scans; {fix}",
                root.display()
            ),
        )
    } else if directories * 10 > watches * 8 {
        (Status::Warn, format!("{limits}: {} has {directories} directories, close to the limit; {fix}", root.display()))
    } else {
        (Status::Ok, format!("{limits}; {} has {directories} directories", root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_are_judged() {
        assert_eq!(judge_offset(0.4).0, Status::Ok);
        assert_eq!(judge_offset(-30.0).0, Status::Ok);
        let (status, text) = judge_offset(-120.0);
        assert_eq!(status, Status::Warn);
        assert!(text.contains("120 s behind"), "{text}");
        assert!(judge_offset(3600.0).1.contains("15 minutes"));
    }
}
