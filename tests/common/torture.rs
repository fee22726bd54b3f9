//! Helpers for the reliability campaign (`tests/reliability.rs`): short/long mode, replayable seeds, the
//! history of every version a file ever had (to prove no torn object is ever visible), a poller that reads
//! objects while the agent is being killed, CPU accounting from `/proc`, the oss2 view of a bucket, and
//! figures.
//!
//! - `OSSMIRROR_TORTURE=long` selects the long mode (hundreds of kills, thousands of mutation steps).
//! - `OSSMIRROR_TORTURE_SEED=N` replays a run; the seed is printed when a test fails.
//! - `OSSMIRROR_TORTURE_FIGURES=FILE` appends each test's figures to FILE as JSON lines
//!   (`scripts/torture/run` collects and prints them); they are always printed to stderr too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ossmirror::remote::oss::{OssClient, OssConfig};
use ossmirror::remote::{Credentials, ListObjectsRequest, Remote};
use serde_json::{Value, json};

use super::agent::{ACCESS_KEY_ID, ACCESS_KEY_SECRET, Tree};
use super::python;

/// Whether the long mode was asked for (`OSSMIRROR_TORTURE=long`).
pub fn long() -> bool {
    std::env::var("OSSMIRROR_TORTURE").is_ok_and(|v| v == "long")
}

/// `short` in the default mode, `long` with `OSSMIRROR_TORTURE=long`.
pub fn pick<T>(short: T, long_value: T) -> T {
    if long() { long_value } else { short }
}

/// A test's seed: `OSSMIRROR_TORTURE_SEED`, or a fresh random one. Dropping the guard while panicking prints
/// how to replay.
pub struct Seed {
    pub value: u64,
    test: &'static str,
}

impl Seed {
    pub fn new(test: &'static str) -> Seed {
        let value = std::env::var("OSSMIRROR_TORTURE_SEED")
            .ok()
            .map(|s| s.trim().parse().expect("OSSMIRROR_TORTURE_SEED must be an unsigned integer"))
            .unwrap_or_else(|| fastrand::u64(..));
        eprintln!("{test}: seed {value}");
        Seed { value, test }
    }

    pub fn rng(&self) -> fastrand::Rng {
        fastrand::Rng::with_seed(self.value)
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mode = if long() { "OSSMIRROR_TORTURE=long " } else { "" };
            eprintln!(
                "\n*** {test} failed with seed {seed}; replay with:\n    {mode}OSSMIRROR_TORTURE_SEED={seed} \
                 cargo nextest run --test reliability {test}\n",
                test = self.test,
                seed = self.value
            );
        }
    }
}

/// Every version (CRC-64 of the whole content) each key ever had locally. Record a version *before* it
/// can be on disk, so a reader never sees a legitimate version that is not recorded yet.
#[derive(Clone, Default)]
pub struct History {
    versions: Arc<Mutex<HashMap<String, HashSet<u64>>>>,
    count: Arc<AtomicU64>,
}

impl History {
    pub fn record(&self, key: &str, data: &[u8]) {
        let crc = ossmirror::checksum::crc64(data);
        if self.versions.lock().unwrap().entry(key.to_string()).or_default().insert(crc) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn knows(&self, key: &str, data: &[u8]) -> bool {
        let crc = ossmirror::checksum::crc64(data);
        self.versions.lock().unwrap().get(key).is_some_and(|v| v.contains(&crc))
    }

    /// Distinct (key, content) versions recorded.
    pub fn versions(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// A client for a bucket that never panics (faults may be injected while it reads).
fn client(endpoint: &str) -> OssClient {
    let mut config = OssConfig::new(endpoint);
    config.region = Some("cn-hangzhou".into());
    config.credentials = Some(Credentials::new(ACCESS_KEY_ID, ACCESS_KEY_SECRET));
    OssClient::new(config).expect("an OSS client")
}

/// Reads objects in a loop while the agent works and is killed; every body it gets must be a version the
/// local file really had.
pub struct TornWatcher {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    violations: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TornWatcher {
    pub fn start(endpoint: &str, bucket: &str, history: History) -> TornWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (endpoint, bucket) = (endpoint.to_string(), bucket.to_string());
        let (s, r, v) = (stop.clone(), reads.clone(), violations.clone());
        let thread = std::thread::spawn(move || {
            let client = client(&endpoint);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            while !s.load(Ordering::Relaxed) {
                let request = ListObjectsRequest { max_keys: Some(1000), ..Default::default() };
                let Ok(page) = rt.block_on(client.list_objects(&bucket, &request)) else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                for object in page.objects {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    // Absent (deleted since the listing) or unreachable (the server is down): nothing seen.
                    let Ok(got) = rt.block_on(client.get_object(&bucket, &object.key, None)) else { continue };
                    r.fetch_add(1, Ordering::Relaxed);
                    if !history.knows(&object.key, &got.body) {
                        v.lock().unwrap().push(format!(
                            "{}: {} bytes, CRC-64 {:016x}, not a version the file ever had",
                            object.key,
                            got.body.len(),
                            ossmirror::checksum::crc64(&got.body)
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        TornWatcher { stop, reads, violations, thread: Some(thread) }
    }

    /// Stop, and return (objects read, violations).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the torn-object watcher panicked");
        }
        (self.reads.load(Ordering::Relaxed), std::mem::take(&mut *self.violations.lock().unwrap()))
    }
}

impl Drop for TornWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What oss2 sees: key → (size, SHA-256 hex), and unfinished uploads as (key, upload id).
pub struct Oss2View {
    pub objects: BTreeMap<String, (u64, String)>,
    pub uploads: Vec<(String, String)>,
}

pub fn oss2_view(endpoint: &str, bucket: &str) -> Oss2View {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oss_tree.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([endpoint, bucket])
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
        .output()
        .expect("run oss_tree.py");
    assert!(out.status.success(), "oss_tree.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("oss_tree.py prints JSON");
    let objects = v["objects"]
        .as_object()
        .expect("objects")
        .iter()
        .map(|(k, o)| (k.clone(), (o["size"].as_u64().expect("size"), o["sha256"].as_str().expect("sha").into())))
        .collect();
    let uploads = v["uploads"]
        .as_array()
        .expect("uploads")
        .iter()
        .map(|u| (u["key"].as_str().unwrap_or("").to_string(), u["upload_id"].as_str().unwrap_or("").to_string()))
        .collect();
    Oss2View { objects, uploads }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// oss2 sees exactly `expected` (byte-identical by SHA-256, CRC-64 checked by oss2) and no unfinished
/// multipart upload.
pub fn assert_oss2_sees(endpoint: &str, bucket: &str, expected: &Tree) {
    let view = oss2_view(endpoint, bucket);
    let want: BTreeMap<String, (u64, String)> =
        expected.iter().map(|(k, v)| (k.clone(), (v.len() as u64, sha256_hex(v)))).collect();
    let mut diff = String::new();
    for (k, v) in &want {
        match view.objects.get(k) {
            None => diff.push_str(&format!("  missing: {k}\n")),
            Some(got) if got != v => diff.push_str(&format!("  differs: {k} (oss2 {got:?}, local {v:?})\n")),
            Some(_) => {}
        }
    }
    for k in view.objects.keys().filter(|k| !want.contains_key(*k)) {
        diff.push_str(&format!("  unexpected: {k}\n"));
    }
    assert!(diff.is_empty(), "oss2 does not see the local tree:\n{diff}");
    assert!(view.uploads.is_empty(), "unfinished multipart uploads are left: {:?}", view.uploads);
}

/// User + system CPU time a process has used so far (from `/proc/PID/stat`), or `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are the 12th and 13th after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// A test's figures: printed, and appended to `$OSSMIRROR_TORTURE_FIGURES` as one JSON line.
pub struct Figures {
    test: &'static str,
    values: serde_json::Map<String, Value>,
}

impl Figures {
    pub fn new(test: &'static str) -> Figures {
        Figures { test, values: serde_json::Map::new() }
    }

    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        self.values.insert(name.into(), value.into());
    }

    pub fn secs(&mut self, name: &str, d: Duration) {
        self.set(name, (d.as_secs_f64() * 100.0).round() / 100.0);
    }

    pub fn emit(self) {
        let line = json!({ "test": self.test, "mode": if long() { "long" } else { "short" }, "figures": self.values });
        eprintln!("FIGURES {line}");
        if let Some(path) = std::env::var_os("OSSMIRROR_TORTURE_FIGURES") {
            use std::io::Write as _;
            let mut f =
                std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the figures file");
            writeln!(f, "{line}").expect("write figures");
        }
    }
}

/// A file's key under the watched root (paths are UTF-8 in these tests).
pub fn key_of(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).expect("under the root").to_str().expect("UTF-8").to_string()
}
