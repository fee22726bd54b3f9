//! The credential chain end to end: real `ossmirror` processes against a real `ossmirror serve`, with the
//! cloud services of the chain (ECS metadata, STS, a credentials URI) played by a loopback fake
//! (`common::fakecloud`) whose every request is checked.
//!
//! `serve` accepts one key pair and one session token, so the fake hands out those (with short lifetimes,
//! and in one test a stale token first, which the server refuses): what rotates is the credentials' expiry
//! and, once, the token; the fake's request log shows every refresh.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::agent::{ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, Mirror, wait_until, write};
use common::fakecloud::{FakeCloud, Issued};
use common::{ServeOptions, binary};
use serde_json::Value;

const TOKEN: &str = "CAIS-session-token-of-the-role";
const REGION: &str = "cn-hangzhou";

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// One check of a `doctor --json` report (`null` when absent).
fn check(report: &Value, name: &str) -> Value {
    report["checks"].as_array().and_then(|c| c.iter().find(|c| c["check"] == name)).cloned().unwrap_or_default()
}

/// The harness keeps every process it starts off the cloud, and the endpoint override is what the binary
/// really uses: with the harness defaults a listener named as the metadata service is never contacted;
/// with the provider enabled, it is (and so nothing else is).
#[test]
fn the_metadata_service_is_only_reached_where_a_test_points_it() {
    let m = Mirror::new();
    let cloud = FakeCloud::start();
    write(&m.root, "a.txt", b"a");

    let (agent, status) =
        m.agent_without_credentials().env("OSSMIRROR_ECS_METADATA_ENDPOINT", cloud.endpoint()).arg("--once").run();
    assert_eq!(status.code(), Some(2), "{}", agent.log());
    assert!(
        agent.log().contains("ECS instance RAM role: disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"),
        "{}",
        agent.log()
    );
    assert!(
        cloud.requests().is_empty(),
        "the harness defaults must contact no metadata service: {:?}",
        cloud.requests()
    );

    let (agent, status) = m
        .agent_without_credentials()
        .env("OSSMIRROR_ECS_METADATA_ENDPOINT", cloud.endpoint())
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "false")
        .arg("--once")
        .run();
    assert_eq!(status.code(), Some(2), "no role attached: still no credentials: {}", agent.log());
    assert!(agent.log().contains("reports no RAM role attached to this instance"), "{}", agent.log());
    let sent = cloud.requests();
    let paths: Vec<_> = sent.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(
        paths,
        ["PUT /latest/api/token", "GET /latest/meta-data/ram/security-credentials/"],
        "IMDSv2, at the override"
    );
    assert_eq!(sent[0].header("x-aliyun-ecs-metadata-token-ttl-seconds"), Some("21600"));
    assert_eq!(sent[1].header("x-aliyun-ecs-metadata-token"), Some("imds-token-1"));
    assert_eq!(m.stats().requests, 0, "without credentials nothing is sent to the endpoint");
}

/// An agent with no keys in its environment mirrors through the instance role: the first credentials carry
/// a token the server refuses (refresh, retry once, go on), later ones expire after 3 s and are refreshed
/// in the background while the agent keeps syncing, and an expired-token refusal mid-run is refreshed and
/// retried, then recovered from.
#[test]
fn the_agent_syncs_through_the_instance_role_past_the_first_expiry() {
    let m = Mirror::with_server(ServeOptions::new().session_token(TOKEN));
    let cloud = FakeCloud::start();
    cloud.set_role(Some("ossmirror-uploader"));
    cloud.set_lifetime(Duration::from_secs(3));
    cloud.issue(|n| Issued::new(ACCESS_KEY_ID, ACCESS_KEY_SECRET, if n == 1 { "CAIS-stale-token" } else { TOKEN }));
    write(&m.root, "first.txt", b"synced with the refreshed credentials");
    let mut agent = m
        .agent_without_credentials()
        .env("OSSMIRROR_ECS_METADATA_ENDPOINT", cloud.endpoint())
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "false")
        .start();
    m.wait_mirrored(&agent);
    let log = agent.log();
    assert!(log.contains("credentials found source=ECS instance RAM role \"ossmirror-uploader\""), "{log}");
    assert!(log.contains("fetched new ones, retrying once") && log.contains("code=\"InvalidSecurityToken\""), "{log}");

    // Past the first credentials' expiry: refreshed in the background (3 s lifetime, refresh at 2 s).
    wait_until("two background refreshes", || cloud.issued() >= 4, || agent.log());
    write(&m.root, "second.txt", b"synced after the first credentials expired");
    m.wait_mirrored(&agent);

    // Refused as expired mid-run: one refresh and one retry per refusal, then recovery.
    let retries_before = count(&agent.log(), "fetched new ones, retrying once");
    m.server.set_token_expired(true);
    write(&m.root, "third.txt", b"synced once the token is valid again");
    wait_until(
        "an expired-token refusal is refreshed and retried",
        || {
            let log = agent.log();
            count(&log, "fetched new ones, retrying once") > retries_before
                && log.contains("code=\"SecurityTokenExpired\"")
        },
        || agent.log(),
    );
    m.server.set_token_expired(false);
    m.wait_mirrored(&agent);
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.log());

    let sent = cloud.requests();
    let fetches: Vec<_> = sent.iter().filter(|r| r.is_credentials_fetch()).collect();
    assert!(fetches.len() >= 4, "{fetches:?}");
    for r in &fetches {
        assert_eq!(r.path, "/latest/meta-data/ram/security-credentials/ossmirror-uploader");
        let token = r.header("x-aliyun-ecs-metadata-token").unwrap_or_default();
        assert!(token.starts_with("imds-token-"), "every fetch is IMDSv2: {r:?}");
    }
    assert!(
        sent.iter()
            .filter(|r| r.method == "PUT")
            .all(|r| r.header("x-aliyun-ecs-metadata-token-ttl-seconds") == Some("21600"))
    );
    let logs = agent.all_logs();
    assert!(!logs.contains(ACCESS_KEY_SECRET) && !logs.contains(TOKEN), "a secret reached the log");
}

/// `doctor` with the service's environment: the credential sources one by one, each checked on the fake's
/// side (action, parameters, signature) and by a signed listing of the bucket on the real server.
struct Bed {
    server: common::ServerProcess,
    cloud: FakeCloud,
    home: tempfile::TempDir,
}

const CALLER_ID: &str = "LTAIcallerkey";
const CALLER_SECRET: &str = "caller-secret-never-logged";
const ROLE_ARN: &str = "acs:ram::1234567890123456:role/ossmirror-uploader";

impl Bed {
    fn new() -> Bed {
        let server = common::ServerProcess::start(
            ServeOptions::new().credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET).session_token(TOKEN).bucket(BUCKET),
        );
        let cloud = FakeCloud::start();
        cloud.issue(|_| Issued::new(ACCESS_KEY_ID, ACCESS_KEY_SECRET, TOKEN));
        cloud.set_sts_caller(CALLER_ID, CALLER_SECRET);
        Bed { server, cloud, home: tempfile::tempdir().expect("a home directory") }
    }

    fn file(&self, rel: &str, text: &str) -> String {
        let path = self.home.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, text).expect("write a profile file");
        path.display().to_string()
    }

    /// `ossmirror doctor --json` with only `env` (and the harness isolation, STS and metadata at the fake).
    fn doctor(&self, env: &[(&str, &str)], unset: &[&str]) -> (Output, Value) {
        let mut cmd = Command::new(binary());
        cmd.args(["doctor", "--json", "--endpoint", &self.server.endpoint(), "--region", REGION, "--bucket", BUCKET]);
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", self.home.path());
        common::isolate_from_cloud(&mut cmd);
        cmd.env("OSSMIRROR_STS_ENDPOINT", self.cloud.endpoint())
            .env("OSSMIRROR_ECS_METADATA_ENDPOINT", self.cloud.endpoint());
        for name in unset {
            cmd.env_remove(name);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().expect("run ossmirror doctor");
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out, report)
    }

    /// Run doctor, expect every check to pass, and return the credentials' source.
    fn source(&self, env: &[(&str, &str)], unset: &[&str]) -> String {
        let (out, report) = self.doctor(env, unset);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert_eq!(
            check(&report, "bucket")["status"],
            "ok",
            "the credentials found must sign a listing the server accepts: {text}"
        );
        for secret in [ACCESS_KEY_SECRET, CALLER_SECRET, TOKEN] {
            assert!(!text.contains(secret), "a secret was printed: {text}");
        }
        check(&report, "credentials")["detail"].as_str().unwrap_or_default().to_string()
    }

    /// The STS requests since the last call.
    fn sts_requests(&self) -> Vec<common::fakecloud::Recorded> {
        let sent: Vec<_> = self.cloud.requests().into_iter().filter(|r| r.method == "POST").collect();
        self.cloud.clear();
        sent
    }
}

const CLI_PROFILES: &str = r#"{
    "current": "uploader",
    "profiles": [
        {"name": "uploader", "mode": "RamRoleArn", "access_key_id": "LTAIcallerkey",
         "access_key_secret": "caller-secret-never-logged", "ram_role_arn": "acs:ram::1234567890123456:role/ossmirror-uploader",
         "ram_session_name": "doctor-session", "expired_seconds": 1800, "region_id": "cn-hangzhou"},
        {"name": "temporary", "mode": "StsToken", "access_key_id": "LTAIagenttest",
         "access_key_secret": "agent-test-secret-do-not-log", "sts_token": "CAIS-session-token-of-the-role"}
    ]
}"#;

#[test]
fn every_source_of_the_chain_against_loopback_fakes() {
    let bed = Bed::new();
    let cli_enabled = [("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "false")];

    // aliyun CLI profile, RamRoleArn: AssumeRole at STS, signed with the caller's key.
    bed.file(".aliyun/config.json", CLI_PROFILES);
    let source = bed.source(&cli_enabled, &[]);
    assert!(source.contains("aliyun CLI profile \"uploader\"") && source.contains("mode RamRoleArn"), "{source}");
    assert!(source.contains(ROLE_ARN) && source.contains("AssumeRole"), "{source}");
    let sts = bed.sts_requests();
    assert_eq!(sts.len(), 1, "{sts:?}");
    let r = &sts[0];
    for (name, value) in [
        ("Action", "AssumeRole"),
        ("Version", "2015-04-01"),
        ("Format", "JSON"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("AccessKeyId", CALLER_ID),
        ("RoleArn", ROLE_ARN),
        ("RoleSessionName", "doctor-session"),
        ("DurationSeconds", "1800"),
    ] {
        assert_eq!(r.param(name), Some(value), "{name} in {r:?}");
    }
    assert_eq!(r.signature_ok, Some(true), "the fake recomputed the signature with the caller's secret");
    assert!(r.param("SignatureNonce").is_some_and(|n| n.len() >= 16));
    assert!(r.param("Timestamp").is_some_and(|t| t.len() == 20 && t.ends_with('Z')), "{r:?}");
    assert!(
        r.query.iter().any(|(k, _)| k == "Signature") && r.form.iter().any(|(k, _)| k == "RoleArn"),
        "signature in the query, role in the form"
    );
    assert_eq!(r.header("content-type"), Some("application/x-www-form-urlencoded"));

    // ... and a caller key STS does not accept is a configuration error naming STS's answer.
    bed.cloud.set_sts_caller(CALLER_ID, "another-secret");
    let (out, _) = bed.doctor(&cli_enabled, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("SignatureDoesNotMatch") && text.contains("FAKE-REQUEST") && !text.contains(CALLER_SECRET),
        "{text}"
    );
    bed.cloud.set_sts_caller(CALLER_ID, CALLER_SECRET);
    bed.cloud.clear();

    // ALIBABA_CLOUD_PROFILE picks another CLI profile: StsToken, no STS call.
    let source = bed.source(&[cli_enabled[0], ("ALIBABA_CLOUD_PROFILE", "temporary")], &[]);
    assert!(source.contains("aliyun CLI profile \"temporary\"") && source.contains("mode StsToken"), "{source}");
    assert!(bed.sts_requests().is_empty());

    // The shared credentials file (CLI profiles disabled, the harness default): ram_role_arn at
    // ~/.alibabacloud/credentials, sts in a file named by ALIBABA_CLOUD_CREDENTIALS_FILE.
    bed.file(
        ".alibabacloud/credentials",
        &format!(
            "[default]\ntype = ram_role_arn\naccess_key_id = {CALLER_ID}\naccess_key_secret = {CALLER_SECRET}\n\
             role_arn = {ROLE_ARN}\nrole_session_name = ini-session\n\n\
             [ci]\ntype = sts\naccess_key_id = {ACCESS_KEY_ID}\naccess_key_secret = {ACCESS_KEY_SECRET}\nsecurity_token = {TOKEN}\n"
        ),
    );
    let source = bed.source(&[], &["ALIBABA_CLOUD_CREDENTIALS_FILE"]);
    assert!(source.contains(".alibabacloud/credentials [default] (type ram_role_arn)"), "{source}");
    let sts = bed.sts_requests();
    assert_eq!(
        (sts.len(), sts[0].param("RoleSessionName"), sts[0].signature_ok),
        (1, Some("ini-session"), Some(true)),
        "{sts:?}"
    );
    assert_eq!(sts[0].param("DurationSeconds"), Some("3600"), "the SDKs' default session length");
    let ini = bed.file(
        "elsewhere/credentials.ini",
        &std::fs::read_to_string(bed.home.path().join(".alibabacloud/credentials")).unwrap_or_default(),
    );
    let source = bed.source(&[("ALIBABA_CLOUD_CREDENTIALS_FILE", &ini), ("ALIBABA_CLOUD_PROFILE", "ci")], &[]);
    assert!(source.contains("elsewhere/credentials.ini [ci] (type sts)"), "{source}");
    assert!(bed.sts_requests().is_empty());

    // OIDC (RRSA): AssumeRoleWithOIDC with the token file's content, unsigned. It comes before the
    // profile files, which are all still there.
    let token_file = bed.file("var/run/secrets/tokens/oidc-token", "eyJhbGciOiJSUzI1NiJ9.fake-oidc-token.sig\n");
    bed.cloud.set_oidc_token("eyJhbGciOiJSUzI1NiJ9.fake-oidc-token.sig");
    let oidc = [
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1"),
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token_file.as_str()),
        ("ALIBABA_CLOUD_ROLE_SESSION_NAME", "pod-session"),
        ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "false"),
    ];
    let source = bed.source(&oidc, &["ALIBABA_CLOUD_CREDENTIALS_FILE"]);
    assert!(source.contains("OIDC role") && source.contains("AssumeRoleWithOIDC"), "{source}");
    let sts = bed.sts_requests();
    assert_eq!(sts.len(), 1, "{sts:?}");
    let r = &sts[0];
    for (name, value) in [
        ("Action", "AssumeRoleWithOIDC"),
        ("Version", "2015-04-01"),
        ("Format", "JSON"),
        ("RoleArn", ROLE_ARN),
        ("OIDCProviderArn", "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1"),
        ("OIDCToken", "eyJhbGciOiJSUzI1NiJ9.fake-oidc-token.sig"),
        ("RoleSessionName", "pod-session"),
        ("DurationSeconds", "3600"),
    ] {
        assert_eq!(r.param(name), Some(value), "{name} in {r:?}");
    }
    assert!(
        r.param("Signature").is_none() && r.param("AccessKeyId").is_none(),
        "AssumeRoleWithOIDC is not signed: {r:?}"
    );

    // The environment's keys come before all of them, and no STS call is made.
    let mut with_keys = oidc.to_vec();
    with_keys.extend([
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", TOKEN),
    ]);
    let source = bed.source(&with_keys, &["ALIBABA_CLOUD_CREDENTIALS_FILE"]);
    assert_eq!(
        source,
        "from ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET, ALIBABA_CLOUD_SECURITY_TOKEN"
    );
    assert!(bed.sts_requests().is_empty());

    // ALIBABA_CLOUD_CREDENTIALS_URI, last in the chain: its query (a token, here) is never shown.
    let uri = format!("{}/credentials?auth=uri-query-secret", bed.cloud.endpoint());
    let (out, report) = bed.doctor(&[("ALIBABA_CLOUD_CREDENTIALS_URI", &uri)], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let detail = check(&report, "credentials")["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains(&format!("credentials URI {}/credentials ", bed.cloud.endpoint())), "{detail}");
    assert!(detail.contains("temporary, valid for"), "{detail}");
    assert!(!text.contains("uri-query-secret"), "{text}");
    let got: Vec<_> = bed.cloud.requests().into_iter().filter(|r| r.path == "/credentials").collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].query, [("auth".to_string(), "uri-query-secret".to_string())]);
}

/// With an endpoint and no credentials anywhere, every command that talks to it stops at start with exit 2
/// and the list of sources looked at, before any request; `--anonymous` sends unsigned requests instead.
#[test]
fn no_credentials_is_a_usage_error_naming_every_source() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    let endpoint = m.server.endpoint();
    let run = |args: &[&str]| -> Output {
        let mut cmd = Command::new(binary());
        cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        cmd.env("HOME", m.tmp.path()).env("XDG_STATE_HOME", m.tmp.path().join("state")).env("NO_COLOR", "1");
        common::isolate_from_cloud(&mut cmd);
        cmd.output().expect("run ossmirror")
    };
    let root = m.root.display().to_string();
    let file = m.root.join("a.txt").display().to_string();
    let remote = ["--endpoint", endpoint.as_str(), "--region", REGION];
    let commands: [Vec<&str>; 4] = [
        [&["--watch", root.as_str(), "--bucket", BUCKET, "--once"][..], &remote].concat(),
        [&["cp", file.as_str(), "oss://mirror/a.txt"][..], &remote].concat(),
        [&["verify", "--watch", root.as_str(), "--bucket", BUCKET][..], &remote].concat(),
        [&["doctor", "--bucket", BUCKET][..], &remote].concat(),
    ];
    for (i, args) in commands.iter().enumerate() {
        if i == 3 {
            assert_eq!(m.stats().requests, 0, "no request was sent before the credentials error");
        }
        let out = run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        for source in [
            "--access-key-id",
            "OSS_ACCESS_KEY_ID",
            "ALIBABA_CLOUD_ACCESS_KEY_ID",
            "OIDC",
            "aliyun CLI profile",
            "credentials file",
            "ECS instance RAM role",
            "ALIBABA_CLOUD_CREDENTIALS_URI",
            "--anonymous",
        ] {
            assert!(text.contains(source), "{args:?} does not name {source}: {text}");
        }
    }

    let out = run(&[&["cp", file.as_str(), "oss://mirror/a.txt", "--anonymous"][..], &remote].concat());
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "unsigned, the server refuses: {text}");
    assert!(text.contains("AccessDenied") && !text.contains("no credentials found"), "{text}");
}
