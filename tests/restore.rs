//! The way back, as a user runs it: `ossmirror restore`, `cp oss://… LOCAL` and `ls`, real processes against
//! a real `ossmirror serve` (and SeaweedFS for the S3 dialect). Objects are planted with Alibaba's oss2 (via
//! `tests/interop/oss_put.py`) or rclone, never with our own client, so what is read back was written by
//! someone else — including keys our client would refuse to write.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ServeOptions, ServerProcess};
use serde_json::{Value, json};

const AK: &str = "restore-test-access-key";
const SK: &str = "restore-test-SECRET-p3Xv8";
const BUCKET: &str = "restore-bucket";
const REGION: &str = "cn-hangzhou";
const KIB: usize = 1024;
/// A run that takes longer than this has hung.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// An object to plant: key, bytes, user metadata.
type Plant<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)]);

struct Setup {
    dir: tempfile::TempDir,
    server: ServerProcess,
}

impl Setup {
    fn new() -> Setup {
        let server = ServerProcess::start(ServeOptions::new().credentials(AK, SK).bucket(BUCKET));
        Setup { dir: tempfile::tempdir().expect("create a test directory"), server }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Plant objects with oss2: `(key, bytes, metadata)`.
    fn plant(&self, objects: &[Plant]) -> BTreeMap<String, String> {
        self.plant_json(
            objects
                .iter()
                .map(|(key, data, meta)| {
                    let file = self.path(&format!("plant-{}", fastrand::u64(..)));
                    std::fs::write(&file, data).expect("write a plant file");
                    let meta: serde_json::Map<String, Value> =
                        meta.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    json!({"key": key, "file": file, "meta": meta})
                })
                .collect(),
        )
    }

    fn plant_json(&self, objects: Vec<Value>) -> BTreeMap<String, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oss_put.py");
        let mut child = Command::new(common::python())
            .arg(script)
            .arg(self.server.endpoint())
            .arg(BUCKET)
            .env("OSS_ACCESS_KEY_ID", AK)
            .env("OSS_ACCESS_KEY_SECRET", SK)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run oss_put.py");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(Value::Array(objects).to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "oss_put.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("oss_put.py prints JSON")
    }

    /// `ossmirror ARGS…` with this server's endpoint and credentials, nothing inherited.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(common::binary());
        cmd.args(args)
            .args(["--endpoint", &self.server.endpoint(), "--region", REGION])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("NO_COLOR", "1")
            .env("OSS_ACCESS_KEY_ID", AK)
            .env("OSS_ACCESS_KEY_SECRET", SK);
        common::isolate_from_cloud(&mut cmd);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run_to_end(self.cmd(args))
    }

    fn restore(&self, to: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["restore", "--bucket", BUCKET, "--to", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn run_to_end(mut cmd: Command) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_DEADLINE) {
        Ok(out) => out.expect("wait for ossmirror"),
        Err(_) => {
            // SAFETY: signalling a child we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("ossmirror {cmd:?} did not finish within {RUN_DEADLINE:?}");
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn expect_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
}

/// The JSON Lines of a `--json` run.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn summary(out: &Output) -> Value {
    json_lines(out).into_iter().find(|v| v["kind"] == "summary").unwrap_or_else(|| panic!("no summary: {}", text(out)))
}

fn random_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

/// Every file below `dir` (relative path → bytes), and no leftover temporary file.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        assert!(!name.contains(".ossmirror-part-"), "temporary file left: {}", entry.path().display());
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap().to_string_lossy().to_string();
            files.insert(rel, std::fs::read(entry.path()).unwrap());
        }
    }
    files
}

/// (inode, mtime s, mtime ns, ctime s, ctime ns) of each file: equal before and after means not rewritten.
fn stamps(dir: &Path) -> BTreeMap<String, (u64, i64, i64, i64, i64)> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().to_string();
            (rel, (m.ino(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------

#[test]
fn restore_gives_back_bytes_mtimes_and_modes_and_then_rewrites_nothing() {
    let s = Setup::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let big = random_bytes(&mut rng, 700 * KIB + 13);
    let odd = random_bytes(&mut rng, 5 * KIB);
    let plain = b"no metadata at all".to_vec();
    let script = b"#!/bin/sh\necho hi\n".to_vec();
    s.plant(&[
        ("big/deep/data.bin", &big, &[("mtime", "1500000000.123456789"), ("mode", "100644")]),
        ("dir with space/ü-名 #1%.txt", &odd, &[("mtime", "1600000000.000000001"), ("mode", "100640")]),
        ("bin/run.sh", &script, &[("mtime", "1234567890.5"), ("mode", "755")]),
        ("empty", b"", &[("mtime", "1700000000.999999999"), ("mode", "100600")]),
        ("plain.txt", &plain, &[]),
        ("folder/", b"", &[]),
    ]);
    let to = s.path("restored");
    let out = s.restore(&to, &["--part-size", "64K", "--threads", "3", "--jobs", "3", "--json"]);
    expect_code(&out, 0);
    let sum = summary(&out);
    assert_eq!((sum["downloaded"].as_u64(), sum["markers"].as_u64()), (Some(5), Some(1)), "{}", text(&out));

    let files = tree(&to);
    let want: BTreeMap<String, Vec<u8>> = [
        ("big/deep/data.bin", big.clone()),
        ("dir with space/ü-名 #1%.txt", odd.clone()),
        ("bin/run.sh", script.clone()),
        ("empty", Vec::new()),
        ("plain.txt", plain.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(files.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert!(files == want, "restored bytes differ");
    assert!(to.join("folder").is_dir() || !to.join("folder").exists(), "a marker never becomes a file");

    let meta = |rel: &str| std::fs::metadata(to.join(rel)).unwrap();
    let check = |rel: &str, mode: u32, secs: i64, nanos: i64| {
        let m = meta(rel);
        assert_eq!((m.permissions().mode() & 0o7777, m.mtime(), m.mtime_nsec()), (mode, secs, nanos), "{rel}");
    };
    check("big/deep/data.bin", 0o644, 1_500_000_000, 123_456_789);
    check("dir with space/ü-名 #1%.txt", 0o640, 1_600_000_000, 1);
    check("bin/run.sh", 0o755, 1_234_567_890, 500_000_000);
    check("empty", 0o600, 1_700_000_000, 999_999_999);
    // No metadata: the object's Last-Modified (recent) and 0644.
    let m = meta("plain.txt");
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - 3600..=now + 60).contains(&m.mtime()), "Last-Modified as the mtime: {}", m.mtime());

    // Again onto the identical tree: nothing is rewritten (same inode, mtime and ctime).
    let before = stamps(&to);
    let out = s.restore(&to, &["--json"]);
    expect_code(&out, 0);
    let sum = summary(&out);
    assert_eq!((sum["identical"].as_u64(), sum["downloaded"].as_u64()), (Some(5), Some(0)), "{}", text(&out));
    assert_eq!(stamps(&to), before, "an identical tree was rewritten");
    let out = s.restore(&to, &["--json", "--fast"]);
    expect_code(&out, 0);
    assert_eq!(summary(&out)["identical"].as_u64(), Some(5));
    assert_eq!(stamps(&to), before);

    // A local file that differs (same size) is left alone and reported; --overwrite replaces it.
    let mut changed = odd.clone();
    changed[100] ^= 0xff;
    std::fs::write(to.join("dir with space/ü-名 #1%.txt"), &changed).unwrap();
    let out = s.restore(&to, &[]);
    expect_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs"), "{}", text(&out));
    assert_eq!(std::fs::read(to.join("dir with space/ü-名 #1%.txt")).unwrap(), changed, "left alone");
    let out = s.restore(&to, &["--overwrite"]);
    expect_code(&out, 0);
    assert_eq!(std::fs::read(to.join("dir with space/ü-名 #1%.txt")).unwrap(), odd, "replaced");
    assert_eq!(tree(&to), want);

    // --dry-run writes nothing, not even the target directory.
    let fresh = s.path("dry");
    let out = s.restore(&fresh, &["--dry-run", "--json"]);
    expect_code(&out, 0);
    assert_eq!(summary(&out)["would_download"].as_u64(), Some(5), "{}", text(&out));
    assert!(!fresh.exists(), "a dry run created the target");
    std::fs::remove_file(to.join("plain.txt")).unwrap();
    let out = s.restore(&to, &["--dry-run", "--json"]);
    expect_code(&out, 0);
    let lines = json_lines(&out);
    let would: Vec<_> = lines.iter().filter(|l| l["kind"] == "would_download").map(|l| l["key"].clone()).collect();
    assert_eq!(would, vec![json!("plain.txt")]);
    assert!(!to.join("plain.txt").exists());
}

#[test]
fn escaping_keys_and_symlinks_inside_the_target_never_lead_outside() {
    let s = Setup::new();
    let planted = s.plant(&[
        ("../escape-1.txt", b"evil", &[]),
        ("a/../../escape-2.txt", b"evil", &[]),
        ("a//b.txt", b"evil", &[]),
        ("back\\slash.txt", b"evil", &[]),
        ("link/through-link.txt", b"evil", &[]),
        ("ok/fine.txt", b"good", &[]),
    ]);
    assert_eq!(planted.len(), 6, "oss2 wrote every key");
    s.plant_json(vec![json!({"key": "cold/frozen.bin", "text": "ice", "storage_class": "Archive"})]);
    let outside = s.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let to = s.path("target/inner");
    std::fs::create_dir_all(&to).unwrap();
    std::os::unix::fs::symlink(&outside, to.join("link")).unwrap();

    let out = s.restore(&to, &["--json"]);
    expect_code(&out, 1);
    let lines = json_lines(&out);
    let kind_of = |key: &str| {
        lines.iter().find(|l| l["key"] == key).map(|l| l["kind"].as_str().unwrap().to_string()).unwrap_or_default()
    };
    for key in ["../escape-1.txt", "a/../../escape-2.txt", "a//b.txt", "back\\slash.txt"] {
        assert_eq!(kind_of(key), "refused", "{key}: {}", text(&out));
    }
    assert_eq!(kind_of("link/through-link.txt"), "failed", "{}", text(&out));
    assert_eq!(kind_of("ok/fine.txt"), "downloaded");
    assert_eq!(kind_of("cold/frozen.bin"), "needs_restore");
    let detail = lines.iter().find(|l| l["key"] == "cold/frozen.bin").unwrap()["detail"].to_string();
    assert!(detail.contains("RestoreObject"), "{detail}");
    let sum = summary(&out);
    assert_eq!(
        (sum["refused"].as_u64(), sum["failed"].as_u64(), sum["needs_restore"].as_u64()),
        (Some(4), Some(1), Some(1))
    );

    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written through the symlink");
    assert!(std::fs::symlink_metadata(to.join("link")).unwrap().file_type().is_symlink(), "the link is untouched");
    let mut everything: Vec<String> = walkdir::WalkDir::new(s.path("target"))
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(s.path("target")).unwrap().to_string_lossy().to_string())
        .collect();
    everything.sort();
    assert_eq!(everything, vec!["inner", "inner/link", "inner/ok", "inner/ok/fine.txt"]);
    assert!(!s.path("escape-1.txt").exists() && !s.path("escape-2.txt").exists());
    assert_eq!(std::fs::read(to.join("ok/fine.txt")).unwrap(), b"good");
}

/// Wait for a condition polled from the outside (server stats, files), failing after a deadline.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get_requests(s: &Setup) -> u64 {
    s.server.stats().operations.get("GetObject").map_or(0, |o| o.requests)
}

#[test]
fn cp_download_killed_again_and_again_resumes_with_only_the_missing_ranges() {
    let s = Setup::new();
    let mut rng = fastrand::Rng::with_seed(3);
    let parts = 48u64;
    let part = 64 * KIB;
    let data = random_bytes(&mut rng, parts as usize * part - 777);
    s.plant(&[("large.bin", &data, &[("mtime", "1650000000.000000042"), ("mode", "100640")])]);
    // Each request takes a while, so a kill lands mid-download.
    s.server.set_faults(json!({"latency_ms": 40}));
    s.server.reset_stats();
    let target = s.path("large.bin");
    let db = s.path("ck/download.db");
    let cp = || {
        let mut cmd = s.cmd(&[
            "cp",
            &format!("oss://{BUCKET}/large.bin"),
            target.to_str().unwrap(),
            "--part-size",
            "64K",
            "--threads",
            "4",
            "--no-progress",
            "--checkpoint-db",
            db.to_str().unwrap(),
        ]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };
    let threads = 4u64;
    let mut kills = 0u64;
    for round in 1..=3u64 {
        let mut child = cp().spawn().unwrap();
        let start = get_requests(&s);
        wait_for("some ranges fetched", || get_requests(&s) >= start + 6);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "round {round}");
        kills += 1;
        assert!(!target.exists(), "a killed download left a torn target");
        // The server may still be answering the killed client's requests; wait until none are in flight.
        let n = get_requests(&s);
        wait_for("the server to go idle", || {
            let st = s.server.stats();
            st.operations.get("GetObject").is_some_and(|o| o.statuses.values().sum::<u64>() >= n)
        });
    }
    let out = run_to_end(cp());
    expect_code(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CRC-64 verified"), "{}", text(&out));
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let m = std::fs::metadata(&target).unwrap();
    assert_eq!((m.permissions().mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_650_000_000, 42));
    // Every range once, plus at most the ones in flight at each kill.
    let gets = get_requests(&s);
    assert!(gets <= parts + kills * threads, "{gets} GETs for {parts} ranges over {kills} kills");
    assert!(stdout.contains("reused"), "{stdout}");
    let reused: u64 = stdout
        .split(" reused")
        .next()
        .and_then(|t| t.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reused count in {stdout}"));
    assert!(reused >= 6, "the last run reused only {reused} ranges: {stdout}");
    let names: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("ossmirror-part"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let pending: i64 = conn.query_row("SELECT count(*) FROM downloads", [], |r| r.get(0)).unwrap();
    assert_eq!(pending, 0, "the finished download is still in the checkpoint");
}

#[test]
fn an_object_replaced_mid_download_restarts_and_ends_with_the_new_bytes() {
    let s = Setup::new();
    let mut rng = fastrand::Rng::with_seed(5);
    let old = random_bytes(&mut rng, 40 * 64 * KIB);
    let new = random_bytes(&mut rng, 40 * 64 * KIB + 99);
    s.plant(&[("moving.bin", &old, &[])]);
    s.server.set_faults(json!({"latency_ms": 100}));
    s.server.reset_stats();
    let target = s.path("moving.bin");
    let mut cmd = s.cmd(&[
        "cp",
        &format!("oss://{BUCKET}/moving.bin"),
        target.to_str().unwrap(),
        "--part-size",
        "64K",
        "--threads",
        "1",
        "--no-progress",
        "--no-checkpoint",
    ]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // One range at a time, 100 ms each: 40 ranges take seconds; replace the object after the second.
    wait_for("a range fetched", || get_requests(&s) >= 2);
    s.plant(&[("moving.bin", &new, &[])]);
    let out = child.wait_with_output().unwrap();
    expect_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("restarted"), "{}", text(&out));
    assert_eq!(std::fs::read(&target).unwrap(), new, "the final bytes are the new object's");
    let st = s.server.stats();
    let statuses = &st.operations["GetObject"].statuses;
    assert!(statuses.get("412").copied().unwrap_or(0) >= 1, "If-Match was not what stopped it: {statuses:?}");
}

#[test]
fn ls_shows_size_mtime_class_and_folders() {
    let s = Setup::new();
    s.plant(&[
        ("top.txt", b"12345", &[("mtime", "1600000000.5")]),
        ("docs/a.txt", b"abc", &[]),
        ("docs/sub/b.txt", b"abcd", &[("mtime", "1500000000.000000001")]),
    ]);
    let out = s.run(&["ls", &format!("oss://{BUCKET}/")]);
    expect_code(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().any(|l| l.contains("PRE") && l.ends_with(" docs/")), "{stdout}");
    let top = lines.iter().find(|l| l.ends_with(" top.txt")).expect("top.txt listed");
    assert!(top.contains("2020-09-13T12:26:40.500000000Z") && top.contains(" 5 ") && top.contains("Standard"), "{top}");

    let out = s.run(&["ls", &format!("oss://{BUCKET}/docs/"), "--recursive", "--json"]);
    expect_code(&out, 0);
    let entries = json_lines(&out);
    assert_eq!(entries.len(), 2, "{}", text(&out));
    let b = entries.iter().find(|e| e["key"] == "docs/sub/b.txt").unwrap();
    assert_eq!(
        (b["size"].as_u64(), b["mtime"].as_str(), b["mtime_source"].as_str()),
        (Some(4), Some("1500000000.000000001"), Some("metadata"))
    );
    let a = entries.iter().find(|e| e["key"] == "docs/a.txt").unwrap();
    assert_eq!(a["mtime_source"], "last_modified");

    let out = s.run(&["ls", "oss://no-such-bucket-here/"]);
    expect_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchBucket"), "{}", text(&out));
}

#[test]
fn cp_of_a_prefix_with_a_trailing_slash_downloads_the_tree() {
    let s = Setup::new();
    s.plant(&[("p/x/1.txt", b"one", &[]), ("p/2.txt", b"two", &[]), ("other.txt", b"no", &[])]);
    let dest = s.path("tree");
    let out = s.run(&["cp", &format!("oss://{BUCKET}/p/"), dest.to_str().unwrap(), "--no-progress"]);
    expect_code(&out, 0);
    let files = tree(&dest);
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["2.txt", "x/1.txt"], "{}", text(&out));
    // A single object into an existing directory keeps its name.
    let out = s.run(&["cp", &format!("oss://{BUCKET}/other.txt"), dest.to_str().unwrap(), "--no-progress"]);
    expect_code(&out, 0);
    assert_eq!(std::fs::read(dest.join("other.txt")).unwrap(), b"no");
    let out = s.run(&["cp", &format!("oss://{BUCKET}/missing.txt"), dest.to_str().unwrap(), "--no-progress"]);
    expect_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{}", text(&out));
}

/// The S3 dialect against SeaweedFS, objects written by rclone from files with old mtimes and modes.
#[test]
fn restore_from_seaweedfs_over_s3_gives_back_what_rclone_stored() {
    let sw = common::seaweed::shared();
    let bucket = sw.unique_bucket("restore");
    sw.rclone_ok(&["mkdir", &format!("sw:{bucket}")]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    let files = [
        ("a.txt", random_bytes(&mut rng, 3000), 0o640u32, 1_400_000_000i64),
        ("sub/b.bin", random_bytes(&mut rng, 300 * KIB), 0o755, 1_300_000_000),
    ];
    for (rel, data, mode, mtime) in &files {
        let p = src.join(rel);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        let t = std::time::UNIX_EPOCH + Duration::new(*mtime as u64, 123_456_789);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
    }
    std::fs::write(src.join("empty"), b"").unwrap();
    sw.rclone_ok(&["copy", "--metadata", src.to_str().unwrap(), &format!("sw:{bucket}/m")]);

    let to = dir.path().join("restored");
    let (ak, sk) = sw.credentials();
    let mut cmd = Command::new(common::binary());
    cmd.args([
        "restore",
        "--bucket",
        &bucket,
        "--prefix",
        "m",
        "--to",
        to.to_str().unwrap(),
        "--protocol",
        "s3",
        "--json",
    ])
    .args(["--endpoint", &sw.endpoint(), "--part-size", "64K"])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("HOME", dir.path().join("home"))
    .env("XDG_STATE_HOME", dir.path().join("state"))
    .env("AWS_ACCESS_KEY_ID", ak)
    .env("AWS_SECRET_ACCESS_KEY", sk)
    .env("AWS_REGION", "us-east-1");
    common::isolate_from_cloud(&mut cmd);
    let out = run_to_end(cmd);
    expect_code(&out, 0);
    assert_eq!(summary(&out)["downloaded"].as_u64(), Some(3), "{}", text(&out));
    for (rel, data, mode, mtime) in &files {
        let p = to.join(rel);
        assert_eq!(&std::fs::read(&p).unwrap(), data, "{rel}");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.permissions().mode() & 0o7777, m.mtime(), m.mtime_nsec()), (*mode, *mtime, 123_456_789), "{rel}");
    }
    assert_eq!(std::fs::read(to.join("empty")).unwrap(), b"");
}

#[test]
fn a_restore_killed_mid_file_resumes_that_file_and_skips_the_finished_ones() {
    let s = Setup::new();
    let mut rng = fastrand::Rng::with_seed(13);
    let small: Vec<Vec<u8>> = (0..4).map(|_| random_bytes(&mut rng, 2000)).collect();
    let big = random_bytes(&mut rng, 40 * 64 * KIB + 5);
    let keys = ["a-0.txt", "a-1.txt", "a-2.txt", "a-3.txt"];
    let mut plants: Vec<Plant> = keys.iter().zip(&small).map(|(k, d)| (*k, d.as_slice(), &[][..])).collect();
    plants.push(("m-big.bin", &big, &[("mode", "100600")]));
    plants.push(("z-last.txt", b"last", &[]));
    s.plant(&plants);
    s.server.set_faults(json!({"latency_ms": 30}));
    let to = s.path("to");
    let db = s.path("ck.db");
    let args =
        ["--jobs", "1", "--part-size", "64K", "--threads", "2", "--checkpoint-db", db.to_str().unwrap(), "--json"];
    let mut cmd = s.cmd(&["restore", "--bucket", BUCKET, "--to", to.to_str().unwrap()]);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Kill once the big file has a few ranges recorded in the checkpoint (keys are restored in order).
    let recorded = || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM download_ranges", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    wait_for("ranges of the big file recorded", || recorded() >= 4);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(!to.join("m-big.bin").exists(), "a torn target");

    let out = s.restore(&to, &args);
    expect_code(&out, 0);
    let lines = json_lines(&out);
    let event =
        |key: &str| lines.iter().find(|l| l["key"] == key).cloned().unwrap_or_else(|| panic!("{key}: {}", text(&out)));
    for k in keys {
        assert_eq!(event(k)["kind"], "identical", "{k} was finished before the kill: {}", text(&out));
    }
    let b = event("m-big.bin");
    assert_eq!(b["kind"], "downloaded");
    assert!(b["ranges_reused"].as_u64().unwrap_or(0) >= 4, "the big file did not resume: {b}");
    assert_eq!(event("z-last.txt")["kind"], "downloaded");
    let files = tree(&to);
    assert_eq!(files["m-big.bin"], big);
    for (k, d) in keys.iter().zip(&small) {
        assert_eq!(&files[*k], d);
    }
    assert_eq!(std::fs::metadata(to.join("m-big.bin")).unwrap().permissions().mode() & 0o7777, 0o600);
}

#[test]
fn bad_input_gets_a_clear_message() {
    let s = Setup::new();
    s.plant(&[("k.txt", b"x", &[])]);
    let file = s.path("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = s.restore(&file, &[]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"), "{}", text(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");

    let out = s.run(&["restore", "--bucket", "no-such-bucket-x", "--to", s.path("t").to_str().unwrap()]);
    expect_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchBucket"), "{}", text(&out));

    let out = s.run(&["cp", &format!("oss://{BUCKET}/k.txt"), s.path("no/such/dir/k.txt").to_str().unwrap()]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("its directory must exist"), "{}", text(&out));

    let out = s.run(&["cp", &format!("oss://{BUCKET}/k.txt"), s.path("k.txt").to_str().unwrap(), "--meta", "a=b"]);
    expect_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--meta is for uploads"), "{}", text(&out));
}

/// The quick start's promise end to end: the agent mirrors a tree (odd names, old nanosecond mtimes, modes
/// 0640/0755, an empty file, a multipart file), the tree is wiped, and `restore` gives back the same bytes,
/// mtimes to the nanosecond and modes — the metadata the agent wrote is what restore applies.
#[test]
fn what_the_agent_mirrored_comes_back_with_its_mtimes_and_modes() {
    use common::agent::{ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET as AGENT_BUCKET, Mirror, PART_SIZE, content, write};
    let m = Mirror::new();
    let files: [(&str, Vec<u8>, u32, i64, u32); 5] = [
        ("top.txt", b"top level".to_vec(), 0o644, 1_500_000_000, 123_456_789),
        ("dir with space/ü-名 #1%.txt", content("odd", 5000), 0o640, 1_600_000_000, 1),
        ("bin/run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755, 1_234_567_890, 500_000_000),
        ("empty", Vec::new(), 0o600, 1_700_000_000, 999_999_999),
        ("big/data.bin", content("big", 3 * PART_SIZE + 11), 0o644, 1_400_000_000, 42),
    ];
    for (rel, data, mode, secs, nanos) in &files {
        write(&m.root, rel, data);
        let path = m.root.join(rel);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        let when = std::time::UNIX_EPOCH + Duration::new(*secs as u64, *nanos);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }
    let (agent, status) = m.agent().arg("--once").run();
    assert_eq!(status.code(), Some(0), "agent --once:\n{}", agent.log());

    let to = m.tmp.path().join("restored");
    let mut cmd = Command::new(common::binary());
    cmd.args(["restore", "--bucket", AGENT_BUCKET, "--to", to.to_str().unwrap(), "--json"])
        .args(["--endpoint", &m.server.endpoint(), "--region", REGION])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", m.tmp.path().join("home"))
        .env("XDG_STATE_HOME", m.tmp.path().join("xdg-state"))
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET);
    common::isolate_from_cloud(&mut cmd);
    let out = run_to_end(cmd);
    expect_code(&out, 0);
    assert_eq!(summary(&out)["downloaded"].as_u64(), Some(files.len() as u64), "{}", text(&out));
    for (rel, data, mode, secs, nanos) in &files {
        let path = to.join(rel);
        assert_eq!(&std::fs::read(&path).unwrap(), data, "{rel}: bytes");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.mtime(), meta.mtime_nsec()),
            (*mode, *secs, *nanos as i64),
            "{rel}: mode and mtime"
        );
    }
}
