//! File metadata on every object (mtime, mode; uid/gid as root, in rclone's keys) and metadata-only changes
//! applied server-side; the agent's `--once --dry-run`. Real `ossmirror` processes against a real `serve`
//! (read back with oss2, counted with the server's exact statistics) and SeaweedFS (read back with rclone).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::agent::{ACCESS_KEY_ID, ACCESS_KEY_SECRET, Agent, BUCKET, Mirror, PART_SIZE, content, op, write};
use common::seaweed;
use serde_json::Value;

/// `touch -d @SECONDS.NANOS`: an old mtime with a nanosecond part.
fn set_mtime(path: &Path, stamp: &str) {
    let out = Command::new("touch").arg("-d").arg(format!("@{stamp}")).arg(path).output().expect("run touch");
    assert!(out.status.success(), "touch -d @{stamp}: {}", String::from_utf8_lossy(&out.stderr));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What oss2 sees of `key` (tests/interop/oss_inspect.py): size, sha256, content type, user metadata.
fn inspect(m: &Mirror, key: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oss_inspect.py");
    let out = Command::new(common::python())
        .arg(script)
        .args([&m.server.endpoint(), "v4", BUCKET, key])
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run oss_inspect.py");
    assert!(out.status.success(), "oss_inspect.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("oss_inspect.py prints JSON");
    assert!(v["object"].is_object(), "oss2 finds no object {key}: {v}");
    v["object"].clone()
}

/// The user metadata oss2 reports, names lower-cased.
fn meta_of(object: &Value) -> std::collections::BTreeMap<String, String> {
    object["meta"]
        .as_object()
        .expect("a meta object")
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The metadata the agent must have written for the file at `path` now.
fn expected_meta(path: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let mut e = std::collections::BTreeMap::new();
    e.insert("mtime".to_string(), format!("{}.{:09}", m.mtime(), m.mtime_nsec()));
    e.insert("mode".to_string(), format!("{:o}", m.mode()));
    if as_root() {
        e.insert("uid".to_string(), m.uid().to_string());
        e.insert("gid".to_string(), m.gid().to_string());
    }
    e
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

fn run_once(agent: Agent) -> Agent {
    let (agent, status) = agent.arg("--once").run();
    assert_eq!(status.code(), Some(0), "exit status {status}; log:\n{}", agent.log());
    agent
}

#[test]
fn objects_carry_mtime_and_mode_and_a_touch_or_chmod_is_applied_server_side() {
    let m = Mirror::new();
    write(&m.root, "notes.txt", b"some notes");
    write(&m.root, "bin/run.sh", b"#!/bin/sh\necho hi\n");
    write(&m.root, "empty", b"");
    let big = content("big", 3 * PART_SIZE + 17);
    write(&m.root, "big.bin", &big);
    chmod(&m.root.join("notes.txt"), 0o640);
    chmod(&m.root.join("bin/run.sh"), 0o755);
    set_mtime(&m.root.join("notes.txt"), "1000000000.123456789");
    set_mtime(&m.root.join("bin/run.sh"), "1234567890.000000001");
    set_mtime(&m.root.join("big.bin"), "1500000000.987654321");
    set_mtime(&m.root.join("empty"), "946684800");

    run_once(m.agent());
    let stats = m.stats();
    assert_eq!(op(&stats, "InitiateMultipartUpload").requests, 1, "big.bin goes multipart: {stats:?}");
    for (key, mtime, mode) in [
        ("notes.txt", "1000000000.123456789", "100640"),
        ("bin/run.sh", "1234567890.000000001", "100755"),
        ("big.bin", "1500000000.987654321", "100644"),
        ("empty", "946684800.000000000", "100644"),
    ] {
        let object = inspect(&m, key);
        let meta = meta_of(&object);
        assert_eq!(meta.get("mtime").map(String::as_str), Some(mtime), "{key}: {object}");
        assert_eq!(meta.get("mode").map(String::as_str), Some(mode), "{key}: {object}");
        assert_eq!(meta, expected_meta(&m.root.join(key)), "{key}");
    }
    assert_eq!(inspect(&m, "notes.txt")["content_type"], "text/plain");

    // touch and chmod: same bytes, other metadata. One CopyObject each, not a byte of content re-sent.
    set_mtime(&m.root.join("notes.txt"), "1100000000.5");
    chmod(&m.root.join("bin/run.sh"), 0o700);
    set_mtime(&m.root.join("big.bin"), "1600000000.000000002");
    m.server.reset_stats();
    let agent = run_once(m.agent());
    let stats = m.stats();
    assert_eq!(op(&stats, "CopyObject").requests, 3, "{stats:?}\n{}", agent.log());
    assert_eq!(op(&stats, "PutObject").requests, 0, "{stats:?}");
    assert_eq!(op(&stats, "UploadPart").requests, 0, "{stats:?}");
    assert_eq!(op(&stats, "InitiateMultipartUpload").requests, 0, "{stats:?}");
    assert!(agent.log().contains("object metadata replaced server-side"), "{}", agent.log());
    for (key, data) in
        [("notes.txt", b"some notes".to_vec()), ("bin/run.sh", b"#!/bin/sh\necho hi\n".to_vec()), ("big.bin", big)]
    {
        let object = inspect(&m, key);
        assert_eq!(meta_of(&object), expected_meta(&m.root.join(key)), "{key}");
        assert_eq!(object["sha256"], sha256(&data), "{key}: content unchanged");
    }
    assert_eq!(meta_of(&inspect(&m, "notes.txt"))["mtime"], "1100000000.500000000");
    assert_eq!(meta_of(&inspect(&m, "bin/run.sh"))["mode"], "100700");
    assert_eq!(inspect(&m, "notes.txt")["content_type"], "text/plain", "REPLACE keeps the content type");

    // Nothing changed: nothing sent at all.
    m.server.reset_stats();
    run_once(m.agent());
    let stats = m.stats();
    assert_eq!(op(&stats, "CopyObject").requests + op(&stats, "PutObject").requests, 0, "{stats:?}");

    // A rename is a server-side copy that carries the file's metadata (unchanged by the rename).
    let mut agent = m.agent().arg("--delete").start();
    agent.wait_log("scan finished subtree=.");
    m.server.reset_stats();
    std::fs::rename(m.root.join("notes.txt"), m.root.join("renamed.md")).unwrap();
    agent.wait_log("renamed: copied server-side");
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.log());
    let stats = m.stats();
    assert_eq!(op(&stats, "CopyObject").requests, 1, "{stats:?}");
    assert_eq!(op(&stats, "PutObject").requests, 0, "{stats:?}");
    let object = inspect(&m, "renamed.md");
    assert_eq!(meta_of(&object), expected_meta(&m.root.join("renamed.md")));
    assert_eq!(meta_of(&object)["mtime"], "1100000000.500000000");
    assert_eq!(object["content_type"], "text/markdown", "the copy takes the new name's content type");
}

#[test]
fn cp_uploads_carry_the_metadata_too() {
    let m = Mirror::new();
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"hello").unwrap();
    chmod(&small, 0o600);
    set_mtime(&small, "1111111111.111111111");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, content("cp-big", 2 * PART_SIZE + 5)).unwrap();
    set_mtime(&big, "1222222222.000000222");
    for (path, key) in [(&small, "cp/small.txt"), (&big, "cp/big.bin")] {
        let out = Command::new(common::binary())
            .arg("cp")
            .arg(path)
            .arg(format!("oss://{BUCKET}/{key}"))
            .args(["--endpoint", &m.server.endpoint(), "--region", "cn-hangzhou", "--no-progress", "--no-checkpoint"])
            .args(["--part-size", &PART_SIZE.to_string(), "--meta", "owner=alice"])
            .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
            .output()
            .expect("run cp");
        assert!(out.status.success(), "cp failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut expected = expected_meta(path);
        expected.insert("owner".into(), "alice".into());
        assert_eq!(meta_of(&inspect(&m, key)), expected, "{key}");
    }
    assert_eq!(meta_of(&inspect(&m, "cp/small.txt"))["mode"], "100600");
    assert_eq!(meta_of(&inspect(&m, "cp/big.bin"))["mtime"], "1222222222.000000222");
}

/// `rclone lsl` of a directory and of a remote, as (size, mtime, name) lines sorted by name.
fn lsl(out: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> =
        String::from_utf8_lossy(out).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    lines.sort_by(|a, b| a.rsplit(' ').next().cmp(&b.rsplit(' ').next()));
    lines
}

#[test]
fn through_seaweedfs_rclone_lsl_shows_the_mtimes_the_agent_stored() {
    let sw = seaweed::shared();
    let bucket = sw.unique_bucket("meta");
    sw.rclone_ok(&["mkdir", &format!("sw:{bucket}")]);
    let state = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write(root, "a.txt", b"alpha");
    write(root, "d/b.bin", &content("b", 6 << 20));
    write(root, "d/empty", b"");
    set_mtime(&root.join("a.txt"), "1000000000.123456789");
    set_mtime(&root.join("d/b.bin"), "1300000000.000000007");
    set_mtime(&root.join("d/empty"), "1400000000");
    chmod(&root.join("a.txt"), 0o640);
    let (ak, sk) = sw.credentials();
    let run = || {
        let out = Command::new(common::binary())
            .arg("--watch")
            .arg(root)
            .args(["--bucket", &bucket, "--protocol", "s3", "--once", "--settle", "100ms", "--part-size", "5M"])
            .arg("--state-db")
            .arg(state.path().join("agent.db"))
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk)
            .env("AWS_ENDPOINT_URL", sw.endpoint())
            .env_remove("OSS_ENDPOINT")
            .output()
            .expect("run the agent");
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the agent failed:\n{log}");
        log
    };
    run();
    let local = lsl(&sw.rclone_ok(&["lsl", root.to_str().unwrap()]));
    let remote = lsl(&sw.rclone_ok(&["lsl", &format!("sw:{bucket}")]));
    assert_eq!(local.len(), 3, "{local:?}");
    assert_eq!(remote, local, "rclone reads the agent's mtimes back (to the nanosecond it prints)");
    assert!(remote.iter().any(|l| l.ends_with(".123456789 a.txt")), "{remote:?}");

    // A touch is applied server-side on S3 too (x-amz-metadata-directive: REPLACE), and rclone sees it.
    set_mtime(&root.join("a.txt"), "1050000000.000000042");
    set_mtime(&root.join("d/b.bin"), "1350000000.5");
    let log = run();
    assert!(log.contains("object metadata replaced server-side"), "{log}");
    assert!(!log.contains("uploaded (single PutObject)") && !log.contains("uploaded and verified"), "{log}");
    let local = lsl(&sw.rclone_ok(&["lsl", root.to_str().unwrap()]));
    let remote = lsl(&sw.rclone_ok(&["lsl", &format!("sw:{bucket}")]));
    assert_eq!(remote, local);
    assert_eq!(sw.rclone_ok(&["cat", &format!("sw:{bucket}/a.txt")]), b"alpha", "content unchanged");
}

/// The state database's files (the database, and its WAL and shared-memory files when present), as bytes.
fn db_files(db: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|ext| {
            let p = PathBuf::from(format!("{}{ext}", db.display()));
            (p.display().to_string(), std::fs::read(&p).ok())
        })
        .collect()
}

#[test]
fn dry_run_lists_what_a_run_would_do_and_changes_nothing() {
    let m = Mirror::new();
    write(&m.root, "edited.txt", b"version one");
    write(&m.root, "touched.txt", b"same bytes");
    write(&m.root, "moved.txt", b"about to be renamed");
    write(&m.root, "gone.bin", &content("gone", 3 * PART_SIZE));
    run_once(m.agent());
    let synced = m.bucket.tree();
    assert_eq!(synced.len(), 4);

    write(&m.root, "edited.txt", b"version two, longer");
    set_mtime(&m.root.join("touched.txt"), "1200000000.25");
    std::fs::rename(m.root.join("moved.txt"), m.root.join("renamed.txt")).unwrap();
    std::fs::remove_file(m.root.join("gone.bin")).unwrap();
    write(&m.root, "new/fresh.txt", b"brand new");
    let db_before = db_files(&m.state_db);
    m.server.reset_stats();

    let (agent, status) = m.agent().args(["--once", "--dry-run", "--delete"]).run();
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{log}");
    for line in [
        "upload edited.txt (19 bytes)",
        "upload new/fresh.txt (9 bytes)",
        "update-metadata touched.txt (server-side)",
        "copy moved.txt -> renamed.txt (server-side)",
        "delete gone.bin",
        // The rename's old key: its object goes once the copy is made.
        "delete moved.txt",
        "dry run: 2 to upload (28 bytes), 1 to copy, 1 metadata updates, 2 to delete, 0 unmirrorable; nothing was changed",
    ] {
        assert!(log.lines().any(|l| l == line), "no line {line:?} in:\n{log}");
    }
    let stats = m.stats();
    assert_eq!(stats.requests, 0, "a dry run sends nothing at all: {stats:?}");
    assert_eq!(m.bucket.tree(), synced, "the bucket is unchanged");
    // The database file is byte-identical and no WAL frame was written (SQLite's read-only reader may
    // leave an empty -wal/-shm beside it, which hold no data).
    let db_after = db_files(&m.state_db);
    assert!(db_before[0] == db_after[0], "the state database changed");
    let wal_len = |files: &[(String, Option<Vec<u8>>)]| files[1].1.as_ref().map_or(0, Vec::len);
    assert_eq!((wal_len(&db_before), wal_len(&db_after)), (0, 0), "no WAL frames written");

    // Without --delete nothing would be deleted (the objects are kept).
    let (agent, status) = m.agent().args(["--once", "--dry-run"]).run();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(!agent.log().contains("delete gone.bin"), "{}", agent.log());
    assert!(agent.log().contains(", 0 to delete,"), "{}", agent.log());

    // A real run then does it, and a dry run after it has nothing left to do.
    run_once(m.agent().arg("--delete"));
    let (agent, status) = m.agent().args(["--once", "--dry-run", "--delete"]).run();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(
        agent.log().contains(
            "dry run: 0 to upload (0 bytes), 0 to copy, 0 metadata updates, 0 to delete, 0 unmirrorable; nothing was changed"
        ),
        "{}",
        agent.log()
    );
}

#[test]
fn dry_run_without_once_is_a_usage_error() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    let (agent, status) = m.agent().arg("--dry-run").run();
    assert_eq!(status.code(), Some(2), "{}", agent.log());
    assert!(agent.log().contains("--dry-run needs --once"), "{}", agent.log());
    assert_eq!(m.stats().requests, 0);
    assert!(!m.state_db.exists(), "no state database is created");
}

#[test]
fn a_metadata_update_never_relabels_an_object_replaced_behind_the_agents_back() {
    let m = Mirror::new();
    write(&m.root, "doc.txt", b"the agent's bytes");
    run_once(m.agent());
    // Someone else replaces the object; then the file is only touched.
    m.bucket.put("doc.txt", b"somebody else's bytes");
    set_mtime(&m.root.join("doc.txt"), "1300000000.3");
    m.server.reset_stats();
    let agent = run_once(m.agent());
    let stats = m.stats();
    // No copy succeeds (the remote check at start sees the other object; a copy would be conditional on the
    // recorded ETag anyway): the file is uploaded again, with its metadata.
    assert_eq!(op(&stats, "CopyObject").statuses.get("200"), None, "{stats:?}\n{}", agent.log());
    assert_eq!(op(&stats, "PutObject").requests, 1, "{stats:?}");
    let object = inspect(&m, "doc.txt");
    assert_eq!(object["sha256"], sha256(b"the agent's bytes"));
    assert_eq!(meta_of(&object), expected_meta(&m.root.join("doc.txt")));
}
