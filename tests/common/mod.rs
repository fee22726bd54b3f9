//! Shared harness for integration tests: run `ossmirror serve` as a real process and talk to it.
//!
//! ```ignore
//! mod common;
//! use common::{ServeOptions, ServerProcess};
//!
//! let server = ServerProcess::start(ServeOptions::new().credentials("AK", "SK").bucket("demo"));
//! let endpoint = server.endpoint();            // "http://127.0.0.1:PORT" (path style)
//! server.set_faults(serde_json::json!({"error_rate": 0.2, "seed": 7}));
//! server.script(serde_json::json!({"op": "UploadPart", "part_number": 3,
//!                                  "reset": {"after_bytes": 1000}}));
//! // ... run the code under test against `endpoint` ...
//! let stats = server.stats();                   // ossmirror::server::Stats, exact request/byte counts
//! assert_eq!(stats.operations["UploadPart"].requests, 4);
//! let server = server.kill_and_restart();       // SIGKILL, then start again on the same root and port
//! ```
//!
//! - The server listens on a free loopback port (`--listen 127.0.0.1:0`, read back from `--address-file`);
//!   a restart reuses the same port, so clients configured with the endpoint keep working.
//! - Its data lives in a temporary directory removed on drop (or in `ServeOptions::root`).
//! - The control API is on by default (see `ossmirror::server::control` for its endpoints), fsync off
//!   (the tests kill processes, they do not cut power).
//! - `Drop` kills the process (SIGKILL) and reaps it; its log stays readable through `log()` until then.
//! - [`http`] is a tiny blocking HTTP/1.1 client (one request per connection) for the control API and for
//!   raw, possibly malformed, requests; it needs no async runtime.
//! - [`isolate_from_cloud`] keeps every process the harnesses spawn off the real cloud: the credential
//!   chain cannot reach the ECS metadata service (100.100.100.200) or STS, nor read the profile files of
//!   whoever runs the tests. `tests/credentials.rs` proves it, and opts in to loopback fakes
//!   (`fakecloud`) where it tests the chain.

#![allow(dead_code)]

pub mod agent;
pub mod callback;
pub mod fakecloud;
pub mod seaweed;
pub mod torture;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ossmirror::server::Stats;
use serde_json::Value;

/// How long a server may take to start listening before a test gives up.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub credentials: Option<(String, String)>,
    pub session_token: Option<String>,
    pub control_api: bool,
    pub fsync: bool,
    pub buckets: Vec<String>,
    /// Reuse this data directory instead of a fresh temporary one.
    pub root: Option<PathBuf>,
    /// Listen here instead of a free port.
    pub listen: Option<SocketAddr>,
    /// Extra command-line flags, e.g. `["--fault-error-rate", "0.1", "--fault-seed", "3"]`.
    pub extra_args: Vec<String>,
    /// Extra environment, e.g. `OSSMIRROR_LOG=debug`.
    pub env: Vec<(String, String)>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            credentials: None,
            session_token: None,
            control_api: true,
            fsync: false,
            buckets: Vec::new(),
            root: None,
            listen: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl ServeOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn credentials(mut self, id: &str, secret: &str) -> Self {
        self.credentials = Some((id.into(), secret.into()));
        self
    }

    pub fn session_token(mut self, token: &str) -> Self {
        self.session_token = Some(token.into());
        self
    }

    pub fn bucket(mut self, name: &str) -> Self {
        self.buckets.push(name.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }
}

/// A running `ossmirror serve` process.
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    root: PathBuf,
    log_path: PathBuf,
    options: ServeOptions,
    // Held for its Drop (removes the data); shared across restarts.
    tmp: std::sync::Arc<tempfile::TempDir>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ossmirror"))
}

/// A loopback address where nothing listens (the discard port): what the metadata service and STS
/// endpoints point at by default in tests, so a request that should never be made fails at once, locally.
pub const CLOSED_LOOPBACK: &str = "http://127.0.0.1:9";

/// Keep `cmd` off the real cloud: no inherited `ALIBABA_CLOUD_*` variable, the ECS metadata provider
/// disabled (and its address, like STS's, a closed loopback port should anything still ask), the aliyun
/// CLI profile disabled, and an empty shared credentials file. A test that exercises the chain sets what it
/// needs after this (later `env` calls win).
pub fn isolate_from_cloud(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ALIBABA_CLOUD_") {
            cmd.env_remove(&*name);
        }
    }
    cmd.env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .env("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true")
        .env("ALIBABA_CLOUD_CREDENTIALS_FILE", "/dev/null")
        .env("OSSMIRROR_ECS_METADATA_ENDPOINT", CLOSED_LOOPBACK)
        .env("OSSMIRROR_STS_ENDPOINT", CLOSED_LOOPBACK)
}

/// The Python of the virtualenv holding the official SDKs: `$OSSMIRROR_TEST_VENV`, or `<repo>/.venv`
/// (`./scripts/test` creates it from `tests/requirements.txt`). A missing environment fails the test,
/// never skips it.
pub fn python() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("OSSMIRROR_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| manifest.join(".venv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "this test needs the Python SDKs in a virtualenv, but {} does not exist.\n\
         Run ./scripts/test (it creates .venv from tests/requirements.txt), or set OSSMIRROR_TEST_VENV.",
        python.display()
    );
    python
}

impl ServerProcess {
    /// Start a server and wait until it listens. Panics (failing the test) with the server's log if it
    /// does not come up.
    pub fn start(options: ServeOptions) -> ServerProcess {
        let tmp = std::sync::Arc::new(tempfile::tempdir().expect("create a temporary directory"));
        Self::start_in(options, tmp)
    }

    fn start_in(options: ServeOptions, tmp: std::sync::Arc<tempfile::TempDir>) -> ServerProcess {
        let root = options.root.clone().unwrap_or_else(|| tmp.path().join("root"));
        let addr_file = tmp.path().join(format!("address-{}", fastrand::u64(..)));
        let log_path = tmp.path().join(format!("server-{}.log", fastrand::u64(..)));
        let log = std::fs::File::create(&log_path).expect("create the server log");
        let listen = options.listen.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = Command::new(binary());
        cmd.arg("serve").arg("--root").arg(&root).arg("--listen").arg(&listen).arg("--address-file").arg(&addr_file);
        if let Some((id, secret)) = &options.credentials {
            cmd.arg("--access-key-id").arg(id).env("OSSMIRROR_SERVE_SECRET", secret);
        }
        if let Some(token) = &options.session_token {
            cmd.env("OSSMIRROR_SERVE_SESSION_TOKEN", token);
        }
        if options.control_api {
            cmd.arg("--enable-control-api");
        }
        if !options.fsync {
            cmd.arg("--no-fsync");
        }
        for b in &options.buckets {
            cmd.arg("--bucket").arg(b);
        }
        cmd.args(&options.extra_args);
        isolate_from_cloud(&mut cmd);
        cmd.env("NO_COLOR", "1").env("OSSMIRROR_LOG", "info");
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let stderr = log.try_clone().expect("clone the log handle");
        cmd.stdin(Stdio::null()).stdout(log).stderr(stderr);
        let mut child = cmd.spawn().expect("spawn ossmirror serve");
        let deadline = Instant::now() + START_DEADLINE;
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ossmirror serve exited with {status}:\n{}", read_log(&log_path));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ossmirror serve did not start listening:\n{}", read_log(&log_path));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        ServerProcess { child, addr, root, log_path, options, tmp }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: clients pointed at an IP use path-style addressing.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().expect("wait for ossmirror serve")
    }

    /// SIGKILL, then start again with the same options, data directory and port.
    pub fn kill_and_restart(mut self) -> ServerProcess {
        self.kill();
        self.restart_with(|_| {})
    }

    /// Start again (after `kill` or `terminate`) with modified options, same root and port.
    pub fn restart_with(mut self, change: impl FnOnce(&mut ServeOptions)) -> ServerProcess {
        self.kill();
        let mut options = self.options.clone();
        options.root = Some(self.root.clone());
        options.listen = Some(self.addr);
        change(&mut options);
        let tmp = self.tmp.clone();
        drop(self);
        Self::start_in(options, tmp)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    // -- control API ---------------------------------------------------------------------------------------

    /// Call the control API (`path` relative to `/_ossmirror/`); panics on a non-200 answer.
    pub fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let resp = http(self.addr, method, &format!("/_ossmirror/{path}"), &[], &body)
            .unwrap_or_else(|e| panic!("control API {method} {path}: {e}"));
        assert_eq!(resp.status, 200, "control API {method} {path}: {}", resp.text());
        serde_json::from_slice(&resp.body).expect("control API answers JSON")
    }

    pub fn stats(&self) -> Stats {
        serde_json::from_value(self.control("GET", "stats", None)).expect("stats JSON")
    }

    pub fn reset_stats(&self) {
        self.control("POST", "stats/reset", None);
    }

    /// Merge random fault settings: `{"error_rate", "reset_rate", "reset_after", "latency_ms", "seed"}`.
    pub fn set_faults(&self, settings: Value) {
        self.control("PUT", "faults", Some(settings));
    }

    /// Add one scripted fault rule (or an array of rules).
    pub fn script(&self, rule: Value) {
        self.control("POST", "script", Some(rule));
    }

    pub fn set_clock_offset(&self, secs: i64) {
        self.control("PUT", "clock", Some(serde_json::json!({ "offset_secs": secs })));
    }

    pub fn set_token_expired(&self, expired: bool) {
        self.control("PUT", "token", Some(serde_json::json!({ "expired": expired })));
    }

    /// `"up"`, `"drop"`, or `"refuse"` (which needs `duration_ms`).
    pub fn set_down(&self, mode: &str, duration_ms: Option<u64>) {
        self.control("PUT", "down", Some(serde_json::json!({ "mode": mode, "duration_ms": duration_ms })));
    }

    /// Faults, rules, clock, token, outage and stats back to the start-up state.
    pub fn reset(&self) {
        self.control("POST", "reset", None);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(20_000);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    text[start..].to_string()
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `<Code>` of an OSS error body (or of the Base64 `x-oss-err` header of a HEAD answer).
    pub fn oss_code(&self) -> Option<String> {
        let xml = if self.body.is_empty() {
            use base64::Engine as _;
            let err = self.header("x-oss-err")?;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(err).ok()?).ok()?
        } else {
            self.text()
        };
        let start = xml.find("<Code>")? + "<Code>".len();
        let end = xml[start..].find("</Code>")? + start;
        Some(xml[start..end].to_string())
    }
}

/// Send one request (`Connection: close`) and read the whole answer. `target` is the raw request target,
/// sent as is (so tests can send what a URL library would refuse or normalize).
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_length = false;
    for (n, v) in headers {
        has_length |= n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    send_raw(addr, &request)
}

/// Send raw bytes and parse the answer.
pub fn send_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    send_raw_inner(addr, request, false)
}

/// Send raw bytes, then shut down the write side (the server sees the end of the stream, e.g. in the
/// middle of a body), and parse the answer.
pub fn send_raw_then_close(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    send_raw_inner(addr, request, true)
}

fn send_raw_inner(addr: SocketAddr, request: &[u8], close_write: bool) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.write_all(request)?;
    if close_write {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<RawResponse> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty answer"))?;
    let status: u16 =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(RawResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
