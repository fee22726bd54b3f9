//! The operator commands against a real agent process and a real `ossmirror serve` process: `status` while an
//! upload is in flight, after a clean stop, after a kill, and on the embedded store; `verify` on a synced
//! tree and after local, deleted and overwritten-on-the-server changes; `/metrics` of `--metrics-listen`.
//!
//! Waits are bounded polls for a state (with a generous deadline that only turns a hang into a failure),
//! never assertions about how long something took.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ServeOptions, ServerProcess, binary};
use ossmirror::remote::oss::{OssClient, OssConfig};
use ossmirror::remote::{Body, Credentials, ObjectOptions, Remote};
use serde_json::Value;

const AK: &str = "AK";
const SK: &str = "SK";
const BUCKET: &str = "mirror";
/// Long enough for a loaded 2-core machine; reaching it means the state never came.
const DEADLINE: Duration = Duration::from_secs(120);

/// A running agent (`ossmirror --watch DIR --bucket B ...`) with its own state directory. Killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

/// One test's directories: the tree, the state directory (`XDG_STATE_HOME`), the logs.
struct Bed {
    tmp: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("data")).expect("data dir");
        Bed { tmp }
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn state_home(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// A command for the binary with this bed's environment (state directory, credentials, region).
    fn command(&self) -> Command {
        let mut cmd = Command::new(binary());
        cmd.env("XDG_STATE_HOME", self.state_home())
            .env("OSS_ACCESS_KEY_ID", AK)
            .env("OSS_ACCESS_KEY_SECRET", SK)
            .env("OSS_REGION", "cn-hangzhou")
            .env("NO_COLOR", "1")
            .env_remove("OSS_ENDPOINT")
            .stdin(Stdio::null());
        common::isolate_from_cloud(&mut cmd);
        cmd
    }

    /// Start the agent on `data/`; `endpoint: None` runs the embedded store.
    fn agent(&self, endpoint: Option<&str>, extra: &[&str]) -> Agent {
        let log = self.tmp.path().join(format!("agent-{}.log", fastrand::u32(..)));
        let file = std::fs::File::create(&log).expect("agent log");
        let mut cmd = self.command();
        cmd.arg("--watch").arg(self.data()).args(["--bucket", BUCKET, "--settle", "200ms", "--log-format", "json"]);
        if let Some(e) = endpoint {
            cmd.args(["--endpoint", e]);
        } else {
            // The embedded store needs no credentials; none should be needed.
            cmd.env_remove("OSS_ACCESS_KEY_ID").env_remove("OSS_ACCESS_KEY_SECRET");
        }
        cmd.args(extra);
        cmd.stdout(file.try_clone().expect("log handle")).stderr(file);
        Agent { child: cmd.spawn().expect("spawn the agent"), log }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run ossmirror")
    }

    fn status_json(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("status --json is not one JSON document ({e}):\n{}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// `status --json` while the agent may not have created its database yet: `None` until it can answer.
    fn try_status_json(&self) -> Option<Value> {
        let out = self.run(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status_text(&self) -> String {
        let out = self.run(&["status"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `verify` against `endpoint` (or the embedded store): exit code and JSON lines.
    fn verify(&self, endpoint: Option<&str>) -> (i32, Vec<Value>) {
        let data = self.data();
        let mut args = vec!["verify", "--watch", data.to_str().expect("utf-8 path"), "--bucket", BUCKET, "--json"];
        if let Some(e) = endpoint {
            args.extend(["--endpoint", e]);
        }
        let out = self.run(&args);
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (out.status.code().unwrap_or(-1), lines)
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log, for a failure message, readable while the agent is borrowed elsewhere.
    fn log_reader(&self) -> impl Fn() -> String + use<> {
        let path = self.log.clone();
        move || std::fs::read_to_string(&path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait: the agent stops gracefully.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait for the agent")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the agent exited with {status}:\n{}", self.log());
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `probe` until it returns `Some`; on the deadline, fail with `context()`.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up waiting for {what}:\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn server() -> ServerProcess {
    ServerProcess::start(ServeOptions::new().credentials(AK, SK).bucket(BUCKET))
}

/// A client of the server, for changing objects behind the agent's back.
fn client(server: &ServerProcess) -> OssClient {
    let mut config = OssConfig::new(server.endpoint());
    config.region = Some("cn-hangzhou".into());
    config.credentials = Some(Credentials::new(AK, SK));
    OssClient::new(config).expect("client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32 * 31 + u32::from(seed)) as u8).collect()
}

#[test]
fn status_follows_an_upload_in_flight_and_the_stop() {
    let server = server();
    let bed = Bed::new();
    let endpoint = server.endpoint();
    let mut agent = bed.agent(Some(&endpoint), &["--part-size", "128K", "--threads", "1", "--jobs", "1"]);
    let agent_log = agent.log_reader();
    wait_for(
        "the agent to report running",
        || (bed.try_status_json()?["agent"]["state"] == "running").then_some(()),
        agent_log,
    );

    // Every answer takes 400 ms: a 1.5 MB file in 128 KiB parts, one at a time, is in flight for seconds.
    server.set_faults(serde_json::json!({ "latency_ms": 400 }));
    let total = 1_500_000u64;
    write(&bed.data().join("big/file.bin"), &pattern(total as usize, 1));
    let agent_log = agent.log_reader();
    let upload = wait_for(
        "status to show the upload with progress",
        || {
            agent.assert_running();
            let s = bed.try_status_json()?;
            let u = s["in_flight"].as_array()?.first()?.clone();
            let done = u["done_bytes"].as_u64()?;
            (done > 0 && done < total).then_some((s, u))
        },
        agent_log,
    );
    let (report, u) = upload;
    assert_eq!(u["key"], "big/file.bin");
    assert!(u["path"].as_str().unwrap().ends_with("data/big/file.bin"), "{u}");
    assert_eq!(u["total_bytes"], total);
    assert_eq!(u["pid"], agent.pid());
    let expected = (u["done_bytes"].as_u64().unwrap() as f64 * 1000.0 / total as f64).round() / 10.0;
    assert_eq!(u["percent"].as_f64().unwrap(), expected);
    assert_eq!(report["counts"]["in_flight"], 1);
    assert_eq!(report["agent"]["running"], true);
    assert_eq!(report["agent"]["embedded"], false);
    assert_eq!(report["agent"]["endpoint"], endpoint.as_str());
    assert!(report["counts"]["queued"].is_u64(), "a running agent's queue is shown: {report}");
    let text = bed.status_text();
    assert!(text.contains("uploads in flight (1)") && text.contains("big/file.bin"), "{text}");

    server.set_faults(serde_json::json!({ "latency_ms": 0 }));
    let agent_log = agent.log_reader();
    wait_for(
        "the file to be synced",
        || {
            let s = bed.try_status_json()?;
            (s["counts"]["synced_files"] == 1 && s["in_flight"].as_array()?.is_empty()).then_some(())
        },
        agent_log,
    );
    assert!(agent.terminate().success(), "{}", agent.log());

    let after = bed.status_json();
    assert_eq!(after["agent"]["state"], "stopped");
    assert_eq!(after["agent"]["running"], false);
    assert_eq!(after["agent"]["pid"], Value::Null);
    assert_eq!(after["counts"]["synced_files"], 1);
    assert_eq!(after["counts"]["synced_bytes"], total);
    assert_eq!(after["counts"]["queued"], Value::Null, "no queue without an agent");
    assert!(bed.status_text().contains("not running (stopped"));
    // The same database, named the three other ways.
    let data = bed.data();
    let by_args = bed.run(&["status", "--json", "--watch", data.to_str().unwrap(), "--bucket", BUCKET]);
    assert!(by_args.status.success());
    let by_args: Value = serde_json::from_slice(&by_args.stdout).unwrap();
    assert_eq!(by_args["state_db"], after["state_db"]);
    let by_path = bed.run(&["status", "--json", "--state-db", after["state_db"].as_str().unwrap()]);
    assert_eq!(serde_json::from_slice::<Value>(&by_path.stdout).unwrap()["state_db"], after["state_db"]);
}

#[test]
fn status_without_a_database_names_the_path_and_the_fix() {
    let bed = Bed::new();
    let data = bed.data();
    let out = bed.run(&["status", "--watch", data.to_str().unwrap(), "--bucket", "nothing-here"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no state database") && err.contains(&bed.state_home().display().to_string()), "{err}");
    let out = bed.run(&["status", "--state-db", "/nonexistent/x.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.db"));
}

#[test]
fn the_embedded_store_is_announced_and_verified_once_the_agent_is_gone() {
    let bed = Bed::new();
    write(&bed.data().join("a.txt"), b"kept on this machine");
    write(&bed.data().join("d/b.bin"), &pattern(300_000, 2));
    let mut agent = bed.agent(None, &[]);
    let agent_log = agent.log_reader();
    let report = wait_for(
        "both files synced to the embedded store",
        || {
            agent.assert_running();
            let s = bed.try_status_json()?;
            (s["counts"]["synced_files"] == 2 && s["agent"]["state"] == "running").then_some(s)
        },
        agent_log,
    );
    assert_eq!(report["agent"]["embedded"], true);
    let store = report["agent"]["embedded_root"].as_str().expect("the store's path").to_string();
    assert!(Path::new(&store).is_dir(), "{store}");
    let text = bed.status_text();
    assert!(
        text.contains("EMBEDDED LOCAL STORE") && text.contains("ON THIS MACHINE") && text.contains(&store),
        "{text}"
    );

    // While the agent owns the store, verify cannot open it, and says why.
    let (code, _) = bed.verify(None);
    assert_eq!(code, 1);
    let data = bed.data();
    let out = bed.run(&["verify", "--watch", data.to_str().unwrap(), "--bucket", BUCKET]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the agent"), "{out:?}");

    // kill -9: no goodbye, so status tells a crash from a stop.
    agent.kill();
    let after = bed.status_json();
    assert_eq!(after["agent"]["state"], "exited");
    assert!(after["agent"]["embedded"].as_bool().unwrap());
    let (code, lines) = bed.verify(None);
    let summary = lines.last().expect("a summary");
    assert_eq!(
        (code, summary["verified"].as_u64(), summary["mismatches"].as_u64()),
        (0, Some(2), Some(0)),
        "{lines:?}"
    );
}

#[test]
fn verify_reports_each_kind_of_difference() {
    let server = server();
    let bed = Bed::new();
    let endpoint = server.endpoint();
    write(&bed.data().join("same-size.txt"), b"0123456789");
    write(&bed.data().join("deleted-remotely.txt"), b"soon gone");
    write(&bed.data().join("overwritten.txt"), b"original!!");
    write(&bed.data().join("dir/multipart.bin"), &pattern(700_000, 3));
    // The files are fresh: the initial scan sends them through the settle gate, and `--once` must still wait
    // for them (see agent::once_waits_for_files_the_scan_sends_through_the_settle_gate).
    // --bwlimit on the way: bodies are paced (streamed parts and in-memory puts) and still arrive intact.
    let out = bed
        .command()
        .arg("--watch")
        .arg(bed.data())
        .args(["--bucket", BUCKET, "--endpoint", &endpoint, "--once", "--settle", "100ms"])
        .args(["--part-size", "128K", "--bwlimit", "8M"])
        .output()
        .expect("agent --once");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (code, lines) = bed.verify(Some(&endpoint));
    let summary = lines.last().expect("summary");
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(summary["kind"], "summary");
    assert_eq!((summary["files"].as_u64(), summary["verified"].as_u64()), (Some(4), Some(4)), "{summary}");
    assert_eq!(summary["mismatches"], 0);

    // Same size, different bytes locally; an object deleted and one overwritten on the server; an object
    // with no file; a file never uploaded.
    write(&bed.data().join("same-size.txt"), b"9876543210");
    let remote = client(&server);
    block_on(async {
        remote.delete_object(BUCKET, "deleted-remotely.txt").await.expect("delete");
        let body = Body::Bytes(bytes::Bytes::from_static(b"tampered!!"));
        remote.put_object(BUCKET, "overwritten.txt", body, &ObjectOptions::default()).await.expect("overwrite");
        let body = Body::Bytes(bytes::Bytes::from_static(b"nobody's"));
        remote.put_object(BUCKET, "stray/object.txt", body, &ObjectOptions::default()).await.expect("stray");
    });
    write(&bed.data().join("new.txt"), b"not uploaded");

    let (code, lines) = bed.verify(Some(&endpoint));
    assert_eq!(code, 1, "{lines:?}");
    let find = |kind: &str, name: &str| {
        lines.iter().find(|l| l["kind"] == kind && (l["path"] == name || l["key"] == name)).cloned()
    };
    let changed = find("checksum", "same-size.txt").expect("the local edit");
    assert_eq!(changed["checksum"], "crc64");
    assert_ne!(changed["local_checksum"], changed["remote_checksum"]);
    assert!(find("missing", "deleted-remotely.txt").is_some(), "{lines:?}");
    assert!(find("checksum", "overwritten.txt").is_some(), "{lines:?}");
    assert!(find("missing", "new.txt").is_some(), "{lines:?}");
    let stray = find("extra", "stray/object.txt").expect("the stray object, for information");
    assert_eq!(stray["remote_size"], 8);
    let summary = lines.last().expect("summary");
    assert_eq!(summary["mismatches"], 4, "{lines:?}");
    assert_eq!(summary["extra"], 1);
    assert_eq!(summary["verified"], 1, "only the multipart object is still the same");

    // The text form says the same in words.
    let data = bed.data();
    let out = bed.run(&["verify", "--watch", data.to_str().unwrap(), "--bucket", BUCKET, "--endpoint", &endpoint]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CHECKSUM    same-size.txt") && text.contains("MISSING     new.txt"), "{text}");
    assert!(text.contains("4 mismatches") && text.contains("1 remote object without a local file"), "{text}");

    // Usage errors exit 2.
    let out = bed.run(&["verify", "--watch", "/nonexistent/dir", "--bucket", BUCKET, "--endpoint", &endpoint]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = bed.run(&["verify", "--watch", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The `address` field of the agent's JSON log line announcing the metrics listener.
fn metrics_address(log: &str) -> Option<std::net::SocketAddr> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains("Prometheus")))
        .and_then(|v| v["address"].as_str()?.parse().ok())
}

/// `name value` from a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_are_served_and_count_a_synced_file() {
    let server = server();
    let bed = Bed::new();
    let mut agent = bed.agent(Some(&server.endpoint()), &["--metrics-listen", "127.0.0.1:0"]);
    let agent_log = agent.log_reader();
    let addr = wait_for(
        "the metrics listener",
        || {
            agent.assert_running();
            metrics_address(&agent.log())
        },
        agent_log,
    );
    let scrape = || {
        let r = common::http(addr, "GET", "/metrics", &[], b"").expect("GET /metrics");
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap_or("").starts_with("text/plain"), "{:?}", r.headers);
        r.text()
    };
    let before = scrape();
    assert_eq!(metric(&before, "ossmirror_files_synced_total"), Some(0), "{before}");
    assert!(before.contains("# TYPE ossmirror_files_synced_total counter"));

    let data = pattern(50_000, 4);
    write(&bed.data().join("m.bin"), &data);
    let agent_log = agent.log_reader();
    let after = wait_for(
        "the counters to move",
        || {
            let text = scrape();
            // bytes_uploaded is copied from the engine on the agent's 1 s tick: wait for it too.
            (metric(&text, "ossmirror_files_synced_total") == Some(1)
                && metric(&text, "ossmirror_bytes_uploaded_total").is_some_and(|b| b > 0))
            .then_some(text)
        },
        agent_log,
    );
    assert_eq!(metric(&after, "ossmirror_bytes_synced_total"), Some(data.len() as u64));
    assert_eq!(metric(&after, "ossmirror_files_uploaded_total"), Some(1));
    assert_eq!(metric(&after, "ossmirror_bytes_uploaded_total"), Some(data.len() as u64));
    assert_eq!(metric(&after, "ossmirror_remote_reachable"), Some(1));
    assert_eq!(metric(&after, "ossmirror_errors_total"), Some(0));
    let r = common::http(addr, "GET", "/other", &[], b"").expect("GET /other");
    assert_eq!(r.status, 404);
    assert!(metric(&after, "ossmirror_last_sync_timestamp_seconds").is_some_and(|t| t > 1_700_000_000), "{after}");
    assert_eq!(metric(&after, "ossmirror_files_failing"), Some(0));
    assert_eq!(metric(&after, "ossmirror_bucket_missing"), Some(0));

    // Alive and ready; then the remote goes away: still alive, no longer ready (a load balancer or a
    // Kubernetes probe tells the two apart), and ready again once it is back.
    let get = |path: &str| common::http(addr, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!((get("/healthz").status, get("/readyz").status), (200, 200));
    server.set_down("drop", None);
    write(&bed.data().join("n.bin"), b"while the server is down");
    let agent_log = agent.log_reader();
    wait_for("/readyz to say not ready", || (get("/readyz").status == 503).then_some(()), agent_log);
    assert!(get("/readyz").text().contains("not reachable"));
    assert_eq!(get("/healthz").status, 200);
    server.set_down("up", None);
    let agent_log = agent.log_reader();
    wait_for("/readyz to say ready again", || (get("/readyz").status == 200).then_some(()), agent_log);
    assert!(agent.terminate().success());
}
