//! "Synced" is proven against the remote it names (issue 9): each test is one way the index could show
//! "synced" while the bucket differs from the folder, or read data from outside the watched tree. Real agent
//! processes against real `ossmirror serve` processes; what the bucket holds is read back with oss2
//! (Alibaba's SDK), not with our client.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::agent::{
    ACCESS_KEY_ID, ACCESS_KEY_SECRET, Agent, BUCKET, Mirror, Tree, content, local_tree, wait_until, write,
};
use common::torture::{assert_oss2_sees, oss2_view};
use common::{ServeOptions, ServerProcess, binary};

fn assert_exit(status: std::process::ExitStatus, code: i32, agent: &Agent) {
    assert_eq!(status.code(), Some(code), "exit status {status}; log:\n{}", agent.all_logs());
}

/// `ossmirror status --json` for a state database.
fn status_json(state_db: &Path) -> serde_json::Value {
    let out = Command::new(binary()).args(["status", "--json", "--state-db"]).arg(state_db).output().unwrap();
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status prints JSON")
}

fn server() -> ServerProcess {
    ServerProcess::start(ServeOptions::new().credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET).bucket(BUCKET))
}

fn tree_of(root: &Path) -> Tree {
    local_tree(root)
}

// -------------------------------------------------------------------------------------------------------
// 1. The index names its remote

/// The quick start on one endpoint, then the same folder and bucket on another: everything must reach the
/// second one. Once with the default state path (derived from the remote too), once with one explicit
/// `--state-db` used for both (the database says it described the first remote, so nothing is trusted).
#[test]
fn an_index_is_never_trusted_for_another_remote() {
    let m = Mirror::new();
    for i in 0..5 {
        write(&m.root, &format!("f{i}.txt"), &content(&format!("f{i}"), 1000 + i));
    }
    let other = server();
    let xdg = m.tmp.path().join("xdg");
    let agent_for = |endpoint: &str| {
        Agent::new(m.tmp.path())
            .arg("--watch")
            .arg(&m.root)
            .args(["--bucket", BUCKET, "--endpoint", endpoint, "--region", "cn-hangzhou", "--once"])
            .args(["--settle", "300ms"])
            .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
            .env("XDG_STATE_HOME", &xdg)
    };
    let (agent, status) = agent_for(&m.server.endpoint()).run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
    let (agent, status) = agent_for(&other.endpoint()).run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&other.endpoint(), BUCKET, &tree_of(&m.root));

    // One explicit database for two remotes: the second run re-proves every row against its remote.
    let third = server();
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);
    let (agent, status) = m.agent().set("--endpoint", third.endpoint()).arg("--once").run();
    assert_exit(status, 0, &agent);
    assert!(agent.log().contains("the state database described another remote"), "{}", agent.log());
    assert_oss2_sees(&third.endpoint(), BUCKET, &tree_of(&m.root));
}

// -------------------------------------------------------------------------------------------------------
// 2. The remote is checked, not assumed

#[test]
fn objects_deleted_or_replaced_behind_the_agents_back_are_uploaded_again() {
    let m = Mirror::new();
    for name in ["a.txt", "b.txt", "c.txt", "dir/d.bin"] {
        write(&m.root, name, &content(name, 3000));
    }
    write(&m.root, "big.bin", &content("big", 3 * common::agent::PART_SIZE + 11));
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));

    // Another tool deletes one object and overwrites two (one with another size, one with the same size).
    m.bucket.delete("a.txt");
    m.bucket.put("b.txt", b"someone else's bytes");
    m.bucket.put("dir/d.bin", &content("other", 3000));
    m.bucket.delete("big.bin");
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
    let check = &status_check(&m.state_db);
    assert_eq!(check["missing"], 2, "{check}");
    assert_eq!(check["changed"], 2, "{check}");
    assert_eq!(check["objects"], 3, "{check}");

    // The bucket wiped (every object gone): everything comes back.
    for key in m.bucket.listing().into_keys() {
        m.bucket.delete(&key);
    }
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
    // An object nobody indexed is counted and named, and kept without --delete.
    m.bucket.put("stray.txt", b"not from this folder");
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);
    let check = status_check(&m.state_db);
    assert_eq!(check["unknown"], 1, "{check}");
    assert_eq!(check["unknown_sample"][0], "stray.txt", "{check}");
    assert!(oss2_view(&m.server.endpoint(), BUCKET).objects.contains_key("stray.txt"));
    // With --delete it goes: no local file stands for it.
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
}

/// `oss2.Bucket(...).<method>()` on the test bucket (DeleteBucket / PutBucket, which our client has not).
fn oss2_bucket(endpoint: &str, method: &str) {
    let script = "import oss2, sys\n\
                  b = oss2.Bucket(oss2.AuthV4(sys.argv[1], sys.argv[2]), sys.argv[3], sys.argv[4], region='cn-hangzhou')\n\
                  getattr(b, sys.argv[5])()\n";
    let out = Command::new(common::python())
        .args(["-c", script, ACCESS_KEY_ID, ACCESS_KEY_SECRET, endpoint, BUCKET, method])
        .output()
        .expect("run oss2");
    assert!(out.status.success(), "oss2 {method}: {}", String::from_utf8_lossy(&out.stderr));
}

fn status_check(state_db: &Path) -> serde_json::Value {
    let s = status_json(state_db);
    assert!(s["remote_check"].is_object(), "status shows the last remote check: {s}");
    s["remote_check"].clone()
}

/// A running agent whose bucket is deleted: an error state in `status` (not "synced"), and when a bucket
/// of the same name is back, everything is uploaded into it.
#[test]
fn a_deleted_bucket_is_an_error_state_and_a_new_one_is_filled_again() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"alpha");
    write(&m.root, "b.txt", b"beta");
    let agent = m.agent().args(["--remote-check-interval", "1s"]).start();
    m.wait_mirrored(&agent);
    for key in m.bucket.listing().into_keys() {
        m.bucket.delete(&key);
    }
    oss2_bucket(&m.server.endpoint(), "delete_bucket");
    wait_until(
        "status shows the bucket missing",
        || {
            let s = status_json(&m.state_db);
            s["flags"]["bucket_missing"] == true
        },
        || agent.log(),
    );
    let s = status_json(&m.state_db);
    assert!(s["flags"]["remote_error"].as_str().is_some_and(|e| e.contains("does not exist")), "{s}");
    // The bucket is created again: the agent fills it.
    oss2_bucket(&m.server.endpoint(), "create_bucket");
    m.wait_mirrored(&agent);
    wait_until(
        "the error state clears",
        || status_json(&m.state_db)["flags"]["bucket_missing"] == false,
        || agent.log(),
    );
}

// -------------------------------------------------------------------------------------------------------
// 3. Hard links are one content

#[test]
fn a_write_through_one_hard_link_updates_every_name() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"version one");
    std::fs::create_dir(m.root.join("sub")).unwrap();
    std::fs::hard_link(m.root.join("a.txt"), m.root.join("b.txt")).unwrap();
    std::fs::hard_link(m.root.join("a.txt"), m.root.join("sub/c.txt")).unwrap();
    let agent = m.agent().start();
    m.wait_mirrored(&agent);
    // Rewrite in place through one name: the inode (and every name of it) holds the new bytes.
    std::fs::write(m.root.join("a.txt"), b"version two, longer").unwrap();
    m.wait_mirrored(&agent);
    let expected: Tree =
        ["a.txt", "b.txt", "sub/c.txt"].iter().map(|k| (k.to_string(), b"version two, longer".to_vec())).collect();
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &expected);
    assert!(agent.log().contains("another name of a changed file (hard link)"), "{}", agent.log());
}

// -------------------------------------------------------------------------------------------------------
// 4. Gone means gone

#[test]
fn a_directory_replaced_by_a_file_or_by_a_symlink_counts_as_deleted() {
    let m = Mirror::new();
    for name in ["d/f1", "d/f2", "e/g", "keep.txt"] {
        write(&m.root, name, &content(name, 200));
    }
    let outside = m.tmp.path().join("outside");
    write(&outside, "g", b"not part of the tree");
    let agent = m.agent().arg("--delete").start();
    m.wait_mirrored(&agent);
    // Live: d/ becomes a file, e/ a symlink to a directory outside the tree.
    std::fs::remove_dir_all(m.root.join("d")).unwrap();
    write(&m.root, "d", b"now a file");
    std::fs::remove_dir_all(m.root.join("e")).unwrap();
    std::os::unix::fs::symlink(&outside, m.root.join("e")).unwrap();
    m.wait_mirrored(&agent);
    drop(agent);

    // While stopped: the same again, found by the scan at start.
    for name in ["x/f1", "y/g"] {
        write(&m.root, name, &content(name, 100));
    }
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 0, &agent);
    std::fs::remove_dir_all(m.root.join("x")).unwrap();
    write(&m.root, "x", b"x is a file now");
    std::fs::remove_dir_all(m.root.join("y")).unwrap();
    std::os::unix::fs::symlink(&outside, m.root.join("y")).unwrap();
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 0, &agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
}

// -------------------------------------------------------------------------------------------------------
// 5. Security: nothing outside the tree is ever opened

/// Run a shell command as the unprivileged user `nobody`.
fn as_nobody(script: &str) {
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", script])
        .output()
        .expect("run setpriv");
    assert!(out.status.success(), "as nobody: {script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The agent runs as root; a user owns a watched subdirectory and swaps a directory in it for a symlink
/// to a root-only directory, with and without a file event under it. The root-only file must never be read.
#[test]
fn a_symlinked_parent_never_makes_a_root_agent_upload_a_file_from_outside_the_tree() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test plays the attack of a local user on an agent run as root");
    let m = Mirror::new();
    std::fs::set_permissions(m.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&m.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret_dir = m.tmp.path().join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = b"TOP SECRET: root's private key";
    std::fs::write(secret_dir.join("key.pem"), secret).unwrap();
    std::fs::set_permissions(secret_dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let user_dir = m.root.join("u");
    std::fs::create_dir(&user_dir).unwrap();
    std::os::unix::fs::chown(&user_dir, Some(65534), Some(65534)).unwrap();
    let u = user_dir.display();
    as_nobody(&format!("mkdir {u}/x && echo 'the user file' > {u}/x/key.pem"));

    let agent = m.agent().arg("--delete").start();
    m.wait_mirrored(&agent);
    // A write to u/x/key.pem, and within the settle window the swap: when the gate looks at u/x/key.pem
    // again, the path leads through the symlink to the root-only file.
    as_nobody(&format!("echo more >> {u}/x/key.pem && mv {u}/x {u}/x.old && ln -s {} {u}/x", secret_dir.display()));
    // Give the agent time to see every event; the tree without the link is what must be mirrored.
    m.wait_mirrored(&agent);
    std::thread::sleep(Duration::from_secs(2));
    m.wait_mirrored(&agent);
    drop(agent);
    // And a scan at start (the index may still hold u/x/key.pem): same result.
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 0, &agent);
    let view = oss2_view(&m.server.endpoint(), BUCKET);
    assert!(!view.objects.contains_key("u/x/key.pem"), "{:?}\n{}", view.objects, agent.all_logs());
    let secret_hash = common::torture::sha256_hex(secret);
    assert!(view.objects.values().all(|(_, h)| *h != secret_hash), "the root-only file was uploaded");
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
}

// -------------------------------------------------------------------------------------------------------
// 6. Private by default

/// Every directory and file the agent and its embedded store create is private, under `umask 000`; an
/// existing state directory others can read gets a warning.
#[test]
fn state_and_embedded_store_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    write(&root, "private.txt", b"mode 0600 data");
    std::fs::set_permissions(root.join("private.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let xdg = tmp.path().join("xdg");
    let run = |xdg: &Path| {
        Agent::new(tmp.path())
            .arg("--watch")
            .arg(&root)
            .args(["--bucket", "demo", "--once", "--settle", "100ms"])
            .env("XDG_STATE_HOME", xdg)
            .wrapped(["sh", "-c", "umask 000; exec \"$0\" \"$@\""])
            .run()
    };
    let (agent, status) = run(&xdg);
    assert_exit(status, 0, &agent);
    let state_dir = xdg.join("ossmirror");
    let mut seen = 0;
    for entry in walkdir::WalkDir::new(&state_dir) {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().mode() & 0o777;
        let want = if entry.file_type().is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", entry.path().display());
        seen += 1;
    }
    assert!(seen > 8, "the state directory holds the database and the embedded store ({seen} entries)");

    let open = tmp.path().join("xdg-open");
    std::fs::create_dir_all(open.join("ossmirror")).unwrap();
    std::fs::set_permissions(open.join("ossmirror"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (agent, status) = run(&open);
    assert_exit(status, 0, &agent);
    assert!(agent.log().contains("the state directory is readable by other users"), "{}", agent.log());
}

// -------------------------------------------------------------------------------------------------------
// 7. No object the index does not know

#[test]
fn a_file_deleted_or_renamed_while_its_put_is_in_flight_leaves_no_stray_object() {
    let m = Mirror::new();
    write(&m.root, "seed.txt", b"seed");
    let agent = m.agent().arg("--delete").start();
    m.wait_mirrored(&agent);
    for (i, change) in ["delete", "rename"].into_iter().enumerate() {
        m.server.script(serde_json::json!({"op": "PutObject", "key": format!("f{i}.txt"), "delay": {"ms": 2500}}));
        let before = m.stats().faults.delays;
        let answered = |stats: &ossmirror::server::Stats| {
            common::agent::op(stats, "PutObject").statuses.get("200").copied().unwrap_or(0)
        };
        let answered_before = answered(&m.stats());
        write(&m.root, &format!("f{i}.txt"), &content("slow", 1000));
        wait_until("the PUT is in flight", || m.stats().faults.delays > before, || agent.log());
        match change {
            "delete" => std::fs::remove_file(m.root.join(format!("f{i}.txt"))).unwrap(),
            _ => std::fs::rename(m.root.join(format!("f{i}.txt")), m.root.join(format!("moved{i}.txt"))).unwrap(),
        }
        // Only once the server has stored the object does the bucket show whether the agent knows it.
        wait_until("the delayed PUT is answered", || answered(&m.stats()) > answered_before, || agent.log());
        m.wait_mirrored(&agent);
    }
    drop(agent);
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &tree_of(&m.root));
}

// -------------------------------------------------------------------------------------------------------
// 8. The agent never uploads itself

/// `--watch $HOME` where `$HOME` is a symlink and the state directory is under it (the default): the agent
/// must not upload its own database, WAL or lock files, and `--once` must converge.
#[test]
fn the_agent_never_uploads_its_own_files_however_the_tree_reaches_them() {
    let m = Mirror::new();
    let real_home = m.tmp.path().join("real-home");
    let home = m.tmp.path().join("home");
    std::fs::create_dir(&real_home).unwrap();
    std::os::unix::fs::symlink(&real_home, &home).unwrap();
    write(&home, "notes.txt", b"the user's notes");
    write(&home, "work/report.md", &content("report", 5000));
    let agent = Agent::new(m.tmp.path())
        .arg("--watch")
        .arg(&home)
        .args(["--bucket", BUCKET, "--endpoint", &m.server.endpoint(), "--region", "cn-hangzhou"])
        .args(["--settle", "300ms", "--once"])
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
        .env("HOME", &home)
        .env("XDG_STATE_HOME", home.join(".local/state"));
    let (agent, status) = agent.run();
    assert_exit(status, 0, &agent);
    let keys: Vec<String> = oss2_view(&m.server.endpoint(), BUCKET).objects.into_keys().collect();
    assert_eq!(keys, ["notes.txt", "work/report.md"], "{}", agent.log());
    // A second run finds nothing of its own to upload either (it converges and uploads nothing).
    m.server.reset_stats();
    let (agent, status) = agent.run();
    assert_exit(status, 0, &agent);
    assert_eq!(common::agent::uploads_in(&m.stats()), 0, "{}", agent.log());
}

// -------------------------------------------------------------------------------------------------------
// 9. Impossible paths are reported once and do not stall the rest

/// A directory nested beyond PATH_MAX (made with openat, as the kernel allows).
fn make_too_deep(base: &Path) -> PathBuf {
    use std::ffi::CString;
    let name = CString::new("d".repeat(200)).unwrap();
    let mut rel = PathBuf::new();
    // SAFETY: plain system calls on descriptors this function opens and closes.
    unsafe {
        let base_c = CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
        let mut fd = libc::open(base_c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC);
        assert!(fd >= 0);
        for _ in 0..24 {
            assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o755), 0);
            let next = libc::openat(fd, name.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
            rel.push("d".repeat(200));
        }
        let leaf = CString::new("leaf.txt").unwrap();
        let f = libc::openat(fd, leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
        assert!(f >= 0);
        libc::close(f);
        libc::close(fd);
    }
    rel
}

#[test]
fn a_path_over_path_max_is_reported_once_and_deletions_still_happen() {
    let m = Mirror::new();
    write(&m.root, "normal.txt", b"normal");
    write(&m.root, "other.txt", b"other");
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 0, &agent);
    make_too_deep(&m.root);
    std::fs::remove_file(m.root.join("normal.txt")).unwrap();
    // The deep path is reported (and fails --once, like any file left out), but the deletion is applied.
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 1, &agent);
    let expected: Tree = [("other.txt".to_string(), b"other".to_vec())].into();
    assert_oss2_sees(&m.server.endpoint(), BUCKET, &expected);
    let log = agent.log();
    assert!(log.contains("longer than this system allows"), "{log}");
    assert!(!log.contains("scan incomplete"), "{log}");
    // A running agent rescanning every second reports it once, not at every scan.
    let agent = m.agent().args(["--delete", "--rescan-interval", "1s"]).start();
    wait_until("three rescans", || agent.log().matches("scan finished subtree=.").count() >= 3, || agent.log());
    assert_eq!(agent.log().matches("longer than this system allows").count(), 1, "{}", agent.log());
    let s = status_json(&m.state_db);
    assert!(s["errors"].to_string().contains("longer than this system allows"), "{s}");
}
