//! Run the agent (`ossmirror --watch DIR --bucket B …`) as a real process against a real `ossmirror serve`,
//! and compare what the bucket holds with what the folder holds.
//!
//! ```ignore
//! let m = Mirror::new();                          // server with credentials and a bucket, an empty folder
//! std::fs::write(m.root.join("a.txt"), "hello")?;
//! let mut agent = m.agent().start();              // --endpoint, --state-db, --settle 300ms, credentials in env
//! m.wait_mirrored(&agent);                        // until the bucket equals the folder (keys and bytes)
//! assert_eq!(agent.terminate().code(), Some(0));  // SIGTERM
//! let agent = agent.start();                      // the same command again (its log restarts)
//! ```
//!
//! - Every start writes its combined output to its own file (`agent-N.log`); [`Agent::log`] is the current
//!   run's, [`Agent::all_logs`] every run's.
//! - Waiting is polling with a generous deadline; a timeout fails the test with the agent's log and what
//!   differs.
//! - `Drop` SIGKILLs a running agent and reaps it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ossmirror::remote::oss::{OssClient, OssConfig};
use ossmirror::remote::{Credentials, ListObjectsRequest, ListedObject, ListedUpload, ObjectOptions, Remote};
use ossmirror::server::Stats;
use ossmirror::server::faults::OpStats;

use super::{ServeOptions, ServerProcess, binary};

pub const BUCKET: &str = "mirror";
pub const ACCESS_KEY_ID: &str = "LTAIagenttest";
pub const ACCESS_KEY_SECRET: &str = "agent-test-secret-do-not-log";
/// How long a test waits for a condition before failing (generous: two cores shared by parallel tests).
pub const DEADLINE: Duration = Duration::from_secs(120);
/// Part size for the agents of these tests: a file above it is uploaded in parts.
pub const PART_SIZE: usize = 128 * 1024;

/// Poll `cond` until it holds; on timeout fail with `what` and `context()`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool, context: impl FnOnce() -> String) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An agent command line, and the process while it runs.
pub struct Agent {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_dir: PathBuf,
    /// Tells this agent's logs from those of other agents logging to the same directory.
    id: u32,
    runs: u32,
    child: Option<Child>,
    /// A command the agent is started through (e.g. `unshare …`), the binary and its arguments appended.
    wrapper: Vec<OsString>,
}

impl Agent {
    /// An agent with no arguments yet; logs go to `log_dir`. Inherits no `OSS_*`/`AWS_*` variables, and is
    /// isolated from the cloud ([`super::isolate_from_cloud`]) unless its `env` says otherwise.
    pub fn new(log_dir: &Path) -> Agent {
        let log_dir = log_dir.to_path_buf();
        Agent {
            args: Vec::new(),
            env: Vec::new(),
            log_dir,
            id: fastrand::u32(..),
            runs: 0,
            child: None,
            wrapper: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Agent {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: Into<OsString>>(mut self, args: impl IntoIterator<Item = I>) -> Agent {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set `flag` to `value`, replacing an earlier value (the agent refuses a repeated flag).
    pub fn set(mut self, flag: &str, value: impl Into<OsString>) -> Agent {
        match self.args.iter().position(|a| a == flag) {
            Some(i) => self.args[i + 1] = value.into(),
            None => self.args.extend([flag.into(), value.into()]),
        }
        self
    }

    /// Start the agent through `wrapper` (its program and arguments; the agent's command line follows).
    pub fn wrapped<I: Into<OsString>>(mut self, wrapper: impl IntoIterator<Item = I>) -> Agent {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Agent {
        self.env.push((name.into(), value.into()));
        self
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.log_dir.join(format!("agent-{:08x}-{run}.log", self.id))
    }

    /// Start the process (panics if one is running).
    pub fn start(mut self) -> Agent {
        assert!(self.child.is_none(), "the agent is already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).expect("create the agent log");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.args(&self.args);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("OSS_") || name.starts_with("AWS_") || name.starts_with("OSSMIRROR_") {
                cmd.env_remove(&*name);
            }
        }
        super::isolate_from_cloud(&mut cmd);
        cmd.env("NO_COLOR", "1").env("OSSMIRROR_LOG", "info");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let stderr = log.try_clone().expect("clone the log handle");
        cmd.stdin(Stdio::null()).stdout(log).stderr(stderr);
        self.child = Some(cmd.spawn().expect("spawn the agent"));
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent is running").id()
    }

    /// The current (or last) run's output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.runs)).unwrap_or_default()
    }

    /// Every run's output, oldest first.
    pub fn all_logs(&self) -> String {
        (1..=self.runs).map(|run| std::fs::read_to_string(self.log_path(run)).unwrap_or_default()).collect()
    }

    /// Wait until the current run's log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_until(&format!("the agent logs {needle:?}"), || self.log().contains(needle), || self.log());
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let log = self.log_path(self.runs);
        let child = self.child.as_mut().expect("the agent is running");
        let mut status = None;
        wait_until(
            "the agent exits",
            || {
                status = child.try_wait().expect("poll the agent");
                status.is_some()
            },
            || std::fs::read_to_string(log).unwrap_or_default(),
        );
        self.child = None;
        status.expect("exited")
    }

    /// Run to completion (for `--once`): start, wait for the exit.
    pub fn run(self) -> (Agent, ExitStatus) {
        let mut agent = self.start();
        let status = agent.wait_exit();
        (agent, status)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sending a signal to our own child process by its pid.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking view of a bucket through the library's OSS client (signed, path style).
pub struct BucketView {
    client: OssClient,
    runtime: tokio::runtime::Runtime,
    pub bucket: String,
}

impl BucketView {
    pub fn new(endpoint: &str, bucket: &str, id: &str, secret: &str) -> BucketView {
        Self::with_token(endpoint, bucket, id, secret, None)
    }

    /// With an STS session token (for a server started with one).
    pub fn with_token(endpoint: &str, bucket: &str, id: &str, secret: &str, token: Option<&str>) -> BucketView {
        let mut config = OssConfig::new(endpoint);
        config.region = Some("cn-hangzhou".into());
        let credentials = Credentials::new(id, secret);
        config.credentials = Some(match token {
            Some(t) => credentials.with_session_token(t),
            None => credentials,
        });
        let client = OssClient::new(config).expect("an OSS client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        BucketView { client, runtime, bucket: bucket.into() }
    }

    /// Every object, by key.
    pub fn listing(&self) -> BTreeMap<String, ListedObject> {
        let mut all = BTreeMap::new();
        let mut request = ListObjectsRequest { max_keys: Some(1000), ..Default::default() };
        loop {
            let page = self.runtime.block_on(self.client.list_objects(&self.bucket, &request)).expect("list objects");
            all.extend(page.objects.into_iter().map(|o| (o.key.clone(), o)));
            match page.next_continuation_token {
                Some(token) => request.continuation_token = Some(token),
                None => return all,
            }
        }
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let got = self.runtime.block_on(self.client.get_object(&self.bucket, key, None));
        got.unwrap_or_else(|e| panic!("GET {key}: {e}")).body.to_vec()
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        let body = ossmirror::remote::Body::Bytes(data.to_vec().into());
        let options = ObjectOptions::default();
        let put = self.client.put_object(&self.bucket, key, body, &options);
        self.runtime.block_on(put).unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }

    pub fn delete(&self, key: &str) {
        let delete = self.client.delete_object(&self.bucket, key);
        self.runtime.block_on(delete).unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
    }

    /// Start a multipart upload (and leave it unfinished); returns its id.
    pub fn initiate(&self, key: &str) -> String {
        let options = ObjectOptions::default();
        let initiate = self.client.initiate_multipart(&self.bucket, key, &options);
        self.runtime.block_on(initiate).unwrap_or_else(|e| panic!("initiate {key}: {e}"))
    }

    /// Every object with its content.
    pub fn tree(&self) -> Tree {
        self.listing().into_keys().map(|key| (key.clone(), self.get(&key))).collect()
    }

    /// Unfinished multipart uploads (ListMultipartUploads).
    pub fn uploads(&self) -> Vec<ListedUpload> {
        self.runtime
            .block_on(ossmirror::remote::list_all_uploads(&self.client, &self.bucket, None))
            .expect("list multipart uploads")
    }
}

/// Keys (paths relative to the root, '/'-separated) to contents.
pub type Tree = BTreeMap<String, Vec<u8>>;

/// The regular files under `root` (symbolic links, FIFOs and sockets are not files here).
pub fn local_tree(root: &Path) -> Tree {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.expect("walk the local tree"))
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).expect("under the root");
            let key = rel.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", rel.display())).to_string();
            (key, std::fs::read(e.path()).expect("read a local file"))
        })
        .collect()
}

/// What differs between two trees, for failure messages.
pub fn diff(expected: &Tree, actual: &Tree) -> String {
    let mut out = String::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push_str(&format!("  missing: {k}\n")),
            Some(a) if a != v => out.push_str(&format!("  differs: {k} ({} bytes, expected {})\n", a.len(), v.len())),
            Some(_) => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push_str(&format!("  unexpected: {k}\n"));
    }
    out
}

/// One request type's counters (zero when the server never saw it).
pub fn op(stats: &Stats, name: &str) -> OpStats {
    stats.operations.get(name).cloned().unwrap_or_default()
}

/// Requests that carry file content to the server.
pub fn uploads_in(stats: &Stats) -> u64 {
    op(stats, "PutObject").requests + op(stats, "UploadPart").requests
}

/// Deterministic content for a name, so any object can be checked.
pub fn content(name: &str, size: usize) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.u8(..)).collect()
}

/// Write `data` to `root/rel`, creating parent directories.
pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create parent directories");
    std::fs::write(&path, data).expect("write a file");
}

/// One test's world: a server with credentials and a bucket, an empty watched folder, a state database
/// path, all in one temporary directory.
pub struct Mirror {
    pub tmp: tempfile::TempDir,
    pub server: ServerProcess,
    pub root: PathBuf,
    pub state_db: PathBuf,
    pub bucket: BucketView,
}

impl Mirror {
    pub fn new() -> Mirror {
        Self::with_server(ServeOptions::new())
    }

    /// With extra server options (credentials and the bucket are added).
    pub fn with_server(options: ServeOptions) -> Mirror {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let token = options.session_token.clone();
        let server = ServerProcess::start(options.credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET).bucket(BUCKET));
        let root = tmp.path().join("data");
        std::fs::create_dir(&root).expect("create the watched directory");
        let state_db = tmp.path().join("state").join("agent.db");
        let bucket =
            BucketView::with_token(&server.endpoint(), BUCKET, ACCESS_KEY_ID, ACCESS_KEY_SECRET, token.as_deref());
        Mirror { tmp, server, root, state_db, bucket }
    }

    /// The agent for this world, not started: credentials in the environment, a 300 ms settle time and
    /// small parts. Add flags with [`Agent::arg`].
    pub fn agent(&self) -> Agent {
        self.agent_without_credentials()
            .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    }

    /// As [`Mirror::agent`], with no credentials at all (add them as flags or variables).
    pub fn agent_without_credentials(&self) -> Agent {
        Agent::new(self.tmp.path())
            .arg("--watch")
            .arg(&self.root)
            .args(["--bucket", BUCKET, "--endpoint", &self.server.endpoint(), "--region", "cn-hangzhou"])
            .arg("--state-db")
            .arg(&self.state_db)
            .set("--settle", "300ms")
            .set("--part-size", PART_SIZE.to_string())
    }

    /// Wait until the bucket holds exactly `expected`.
    pub fn wait_remote(&self, agent: &Agent, expected: &Tree) {
        let last = std::cell::RefCell::new(Tree::new());
        wait_until(
            "the bucket holds the expected objects",
            || {
                // The listing is cheap; read the objects back only once it agrees on keys and sizes.
                let listing = self.bucket.listing();
                let same_shape = listing.len() == expected.len()
                    && expected.iter().all(|(k, v)| listing.get(k).is_some_and(|o| o.size == v.len() as u64));
                let actual = if same_shape {
                    self.bucket.tree()
                } else {
                    listing.into_keys().map(|k| (k, b"(not read)".to_vec())).collect()
                };
                let done = actual == *expected;
                *last.borrow_mut() = actual;
                done
            },
            || format!("differences:\n{}\nagent log:\n{}", diff(expected, &last.borrow()), agent.log()),
        );
    }

    /// The bucket mirrors the watched folder exactly, now.
    pub fn assert_mirrored(&self, agent: &Agent) {
        let (expected, actual) = (local_tree(&self.root), self.bucket.tree());
        assert!(expected == actual, "differences:\n{}\nagent log:\n{}", diff(&expected, &actual), agent.log());
    }

    /// Wait until the bucket mirrors the watched folder exactly.
    pub fn wait_mirrored(&self, agent: &Agent) {
        self.wait_remote(agent, &local_tree(&self.root));
    }

    pub fn stats(&self) -> Stats {
        self.server.stats()
    }
}
