//! The agent as users run it: the real `ossmirror --watch DIR --bucket B` process, real files, real signals,
//! against a real `ossmirror serve` whose exact request statistics tell what was sent. Each test has its
//! own directories, server and agent (see `common::agent`).

mod common;

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::agent::{
    ACCESS_KEY_ID, ACCESS_KEY_SECRET, Agent, BucketView, Mirror, PART_SIZE, Tree, content, diff, local_tree, op,
    uploads_in, wait_until, write,
};
use common::{ServeOptions, ServerProcess};
use serde_json::json;

fn rename(root: &Path, from: &str, to: &str) {
    std::fs::rename(root.join(from), root.join(to)).unwrap_or_else(|e| panic!("rename {from} → {to}: {e}"));
}

/// `base` plus objects the bucket keeps although their files are gone.
fn with_kept(base: Tree, kept: &Tree) -> Tree {
    let mut tree = base;
    tree.extend(kept.iter().map(|(k, v)| (k.clone(), v.clone())));
    tree
}

/// The content of every local file under `dir/`, keyed as it was there (to keep after a move or delete).
fn subtree(tree: &Tree, dir: &str) -> Tree {
    tree.iter().filter(|(k, _)| k.starts_with(&format!("{dir}/"))).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn assert_exit(status: std::process::ExitStatus, code: i32, agent: &Agent) {
    assert_eq!(status.code(), Some(code), "exit status {status}; log:\n{}", agent.log());
}

/// The last line of the log containing `needle`.
fn log_line(agent: &Agent, needle: &str) -> String {
    let log = agent.log();
    log.lines().rev().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}")).into()
}

/// Start (or restart) and wait for the first full scan to be reconciled.
fn start_scanned(agent: Agent) -> Agent {
    let agent = agent.start();
    agent.wait_log("scan finished subtree=.");
    agent
}

// -------------------------------------------------------------------------------------------------------
// 1. Start-up mirror and a quiet restart

#[test]
fn a_tree_is_mirrored_at_start_and_a_restart_uploads_nothing() {
    let m = Mirror::new();
    write(&m.root, "top.txt", b"top level");
    write(&m.root, "a/b/c/deep.txt", &content("deep", 1000));
    write(&m.root, "a/empty", b"");
    write(&m.root, "a/big.bin", &content("big", 3 * PART_SIZE + 1000));
    std::fs::create_dir(m.root.join("empty-dir")).unwrap();

    let mut agent = m.agent().start();
    m.wait_mirrored(&agent);
    let stats = m.stats();
    assert_eq!(op(&stats, "PutObject").requests, 3, "{stats:?}");
    assert_eq!(op(&stats, "InitiateMultipartUpload").requests, 1);
    assert_eq!(op(&stats, "UploadPart").requests, 4);
    assert_exit(agent.terminate(), 0, &agent);

    m.server.reset_stats();
    let agent = start_scanned(agent);
    let scan = log_line(&agent, "scan finished subtree=.");
    assert!(scan.contains("files=4 unchanged=4 queued=0"), "{scan}");
    let stats = m.stats();
    assert_eq!(uploads_in(&stats), 0, "a restart uploads nothing: {stats:?}");
    assert_eq!(op(&stats, "CopyObject").requests, 0);
    m.wait_mirrored(&agent);
}

// -------------------------------------------------------------------------------------------------------
// 2. Live changes

#[test]
fn live_changes_are_mirrored() {
    let m = Mirror::new();
    let root = &m.root;
    write(root, "dir1/one.txt", &content("one", 500));
    write(root, "dir1/two.txt", &content("two", 700));
    write(root, "dir1/sub/three.bin", &content("three", 2 * PART_SIZE + 5));
    for name in ["swap/file", "swap/link", "swap/fifo"] {
        write(root, name, name.as_bytes());
    }
    let mut agent = m.agent().start();
    m.wait_mirrored(&agent);
    let mut kept = Tree::new();

    // Create, then edit in place.
    write(root, "a.txt", b"first version");
    m.wait_mirrored(&agent);
    std::fs::OpenOptions::new().append(true).open(root.join("a.txt")).unwrap().write_all(b", edited").unwrap();
    m.wait_mirrored(&agent);

    // A touch or a chmod changes metadata, not content: the object's metadata is replaced server-side
    // (one CopyObject each), nothing is uploaded.
    m.server.reset_stats();
    let revalidated = "object metadata replaced server-side, nothing uploaded path=a.txt";
    let a = std::fs::File::options().write(true).open(root.join("a.txt")).unwrap();
    a.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    agent.wait_log(revalidated);
    std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_until("the chmod is handled", || agent.log().matches(revalidated).count() == 2, || agent.log());
    assert_eq!(uploads_in(&m.stats()), 0, "{:?}", m.stats());
    assert_eq!(op(&m.stats(), "CopyObject").requests, 2, "{:?}", m.stats());

    // An editor's save: write a temporary file, rename it over the original. One upload of the final content;
    // the temporary never becomes an object (without --delete it would stay in the bucket).
    write(root, "notes.txt", b"notes, first draft");
    m.wait_mirrored(&agent);
    m.server.reset_stats();
    let saved = content("notes saved", 5000);
    write(root, "notes.txt.new", &saved);
    rename(root, "notes.txt.new", "notes.txt");
    m.wait_mirrored(&agent);
    let stats = m.stats();
    assert_eq!(op(&stats, "PutObject").requests, 1, "{stats:?}");
    assert_eq!(op(&stats, "PutObject").body_bytes, saved.len() as u64);

    // Renaming a file copies it server-side; no content is uploaded. The old object stays (no --delete).
    m.server.reset_stats();
    kept.insert("a.txt".into(), std::fs::read(root.join("a.txt")).unwrap());
    rename(root, "a.txt", "b.txt");
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));
    let stats = m.stats();
    assert_eq!(op(&stats, "CopyObject").requests, 1, "{stats:?}");
    assert_eq!(uploads_in(&stats), 0, "{stats:?}");

    // Renaming a directory copies every file in it, the multipart one too.
    m.server.reset_stats();
    kept.extend(subtree(&local_tree(root), "dir1"));
    rename(root, "dir1", "dir2");
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));
    let stats = m.stats();
    assert_eq!(op(&stats, "CopyObject").requests, 3, "{stats:?}");
    assert_eq!(uploads_in(&stats), 0, "{stats:?}");

    // A deletion without --delete keeps the object.
    kept.insert("b.txt".into(), std::fs::read(root.join("b.txt")).unwrap());
    std::fs::remove_file(root.join("b.txt")).unwrap();
    agent.wait_log("deleted locally: remote objects kept (no --delete) path=b.txt");
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));

    // A new directory, and files moved into it from outside the watched tree.
    let outside = m.tmp.path().join("outside");
    write(&outside, "m1.txt", &content("m1", 300));
    write(&outside, "m2.txt", &content("m2", 400));
    std::fs::create_dir(root.join("new")).unwrap();
    for name in ["m1.txt", "m2.txt"] {
        std::fs::rename(outside.join(name), root.join("new").join(name)).unwrap();
    }
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));
    assert_exit(agent.terminate(), 0, &agent);

    // With --delete the mirror is exact: the check of the remote at start finds the objects kept while
    // --delete was off (the index forgot them with their files) and, their files being gone, deletes them.
    // Then deleting a file or a directory deletes the objects.
    let agent = start_scanned(agent.arg("--delete"));
    m.wait_mirrored(&agent);
    assert!(agent.log().contains("deleted an object the index did not know"), "{}", agent.log());
    kept.clear();
    std::fs::remove_file(root.join("new/m1.txt")).unwrap();
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));
    std::fs::remove_dir_all(root.join("dir2")).unwrap();
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));

    // A file replaced by a directory, a symlink or a FIFO is gone as a file: its object goes too.
    for name in ["swap/file", "swap/link", "swap/fifo"] {
        std::fs::remove_file(root.join(name)).unwrap();
    }
    write(root, "swap/file/inner.txt", b"inner");
    std::os::unix::fs::symlink("file/inner.txt", root.join("swap/link")).unwrap();
    mkfifo(&root.join("swap/fifo"));
    m.wait_remote(&agent, &with_kept(local_tree(root), &kept));
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

#[test]
fn with_delete_what_was_deleted_while_stopped_is_deleted_at_start() {
    let m = Mirror::new();
    for name in ["a.txt", "b.txt", "keep.txt", "gone/1.txt", "gone/2.txt"] {
        write(&m.root, name, &content(name, 100));
    }
    let (agent, status) = m.agent().args(["--once", "--delete"]).run();
    assert_exit(status, 0, &agent);
    m.assert_mirrored(&agent);

    std::fs::remove_file(m.root.join("a.txt")).unwrap();
    std::fs::remove_dir_all(m.root.join("gone")).unwrap();
    write(&m.root, "b.txt", b"changed while the agent was stopped");
    let (agent, status) = agent.run();
    assert_exit(status, 0, &agent);
    m.assert_mirrored(&agent);
}

/// `tree` with every key under `prefix`.
fn prefixed(prefix: &str, tree: Tree) -> Tree {
    tree.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect()
}

#[test]
fn a_prefix_confines_uploads_deletions_and_the_orphan_sweep() {
    let m = Mirror::new();
    let others: Tree = [("outside.txt", "not ours"), ("host1-sibling/x.txt", "not ours either")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    for (key, data) in &others {
        m.bucket.put(key, data);
    }
    m.bucket.initiate("host1/orphan.bin");
    let theirs = m.bucket.initiate("elsewhere/orphan.bin");
    write(&m.root, "a.txt", b"a");
    write(&m.root, "d/b.txt", b"b");
    let agent = m.agent().args(["--prefix", "host1/", "--delete", "--orphan-age", "0s"]).start();
    let expected = || with_kept(prefixed("host1/", local_tree(&m.root)), &others);
    m.wait_remote(&agent, &expected());
    let left: Vec<String> = m.bucket.uploads().into_iter().map(|u| u.upload_id).collect();
    assert_eq!(left, [theirs], "only the orphan under the prefix is aborted");

    std::fs::remove_dir_all(m.root.join("d")).unwrap();
    rename(&m.root, "a.txt", "c.txt");
    m.wait_remote(&agent, &expected());
}

#[test]
fn a_second_agent_on_the_same_state_database_is_refused() {
    let m = Mirror::new();
    let _first = start_scanned(m.agent());
    let (second, status) = m.agent().run();
    assert_exit(status, 1, &second);
    assert!(second.log().contains("already running"), "{}", second.log());
}

#[test]
fn a_missing_root_is_waited_for_and_refused_with_once() {
    let m = Mirror::new();
    std::fs::remove_dir(&m.root).unwrap();
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 2, &agent);
    assert!(log_line(&agent, "ossmirror: error:").contains("--watch"), "{}", agent.log());

    let agent = m.agent().start();
    agent.wait_log("the directory to watch is missing; waiting");
    write(&m.root, "late.txt", b"late");
    m.wait_mirrored(&agent);
}

#[test]
fn with_delete_renames_are_copies_and_the_old_objects_go() {
    let m = Mirror::new();
    for i in 0..12 {
        write(&m.root, &format!("photos/{i:02}.jpg"), &content(&format!("photo {i}"), 2000 + i));
    }
    write(&m.root, "report.pdf", &content("report", 3 * PART_SIZE));
    let agent = m.agent().arg("--delete").start();
    m.wait_mirrored(&agent);
    // A real endpoint takes its time to copy: the removals of the old paths must wait for the copies.
    m.server.script(json!({"op": "CopyObject", "times": 1000, "delay": {"ms": 300}}));
    m.server.reset_stats();
    rename(&m.root, "photos", "pictures");
    rename(&m.root, "report.pdf", "report-final.pdf");
    m.wait_mirrored(&agent);
    let stats = m.stats();
    assert_eq!(uploads_in(&stats), 0, "renames upload nothing: {stats:?}");
    assert_eq!(op(&stats, "CopyObject").requests, 13, "{stats:?}");
}

#[test]
fn an_outage_of_the_server_is_waited_out() {
    let m = Mirror::new();
    let agent = start_scanned(m.agent());
    m.server.set_down("drop", None);
    write(&m.root, "during-outage.txt", b"written while the server was down");
    wait_until("the agent tried", || m.stats().faults.down_drops > 0, || agent.log());
    m.server.set_down("up", None);
    m.wait_mirrored(&agent);
}

// -------------------------------------------------------------------------------------------------------
// 3. A file written slowly

#[test]
fn a_slowly_written_file_is_uploaded_once_with_its_final_content() {
    let m = Mirror::new();
    // Appends every 200 ms: well inside a 2 s settle time even on a loaded machine.
    let agent = start_scanned(m.agent().set("--settle", "2s"));
    let mut file = std::fs::File::create(m.root.join("growing.dat")).unwrap();
    for i in 0..15 {
        file.write_all(&content(&format!("chunk {i}"), 1000)).unwrap();
        file.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(file);
    m.wait_mirrored(&agent);
    let stats = m.stats();
    assert_eq!(op(&stats, "PutObject").requests, 1, "one upload, not one per append: {stats:?}");
    assert_eq!(op(&stats, "PutObject").body_bytes, 15_000);
}

// -------------------------------------------------------------------------------------------------------
// 4, 5. Interrupted uploads resume

const STUCK_PART: u64 = 9;
const BIG_PARTS: u64 = 25;

/// Start uploading a 25-part file one part at a time, hold part 9 on the server, `interrupt` the agent
/// while it waits for it, restart: the upload resumes (same upload id), only the parts the server had
/// not acknowledged are sent, and no unfinished upload is left.
fn interrupted_upload_resumes(extra: &[&str], interrupt: impl FnOnce(&mut Agent)) -> Agent {
    let m = Mirror::new();
    let size = (BIG_PARTS - 1) * PART_SIZE as u64 + 1000;
    write(&m.root, "big.bin", &content("big", size as usize));
    m.server.script(json!({"op": "UploadPart", "part_number": STUCK_PART, "delay": {"ms": 600_000}}));
    let mut agent = m.agent().set("--threads", "1").args(extra).start();
    wait_until(
        "the parts before the held one are acknowledged",
        || {
            let parts = op(&m.stats(), "UploadPart");
            parts.requests == STUCK_PART && parts.statuses.get("200") == Some(&(STUCK_PART - 1))
        },
        || format!("{:?}\n{}", m.stats(), agent.log()),
    );
    interrupt(&mut agent);
    assert_eq!(m.bucket.uploads().len(), 1, "the unfinished upload is on the server");
    assert!(m.bucket.listing().is_empty());

    m.server.reset_stats();
    let agent = agent.start();
    m.wait_mirrored(&agent);
    let stats = m.stats();
    assert_eq!(op(&stats, "InitiateMultipartUpload").requests, 0, "resumed, not restarted: {stats:?}");
    let parts = op(&stats, "UploadPart");
    assert_eq!(parts.requests, BIG_PARTS - (STUCK_PART - 1), "only the missing parts are sent: {stats:?}");
    assert_eq!(parts.body_bytes, size - (STUCK_PART - 1) * PART_SIZE as u64);
    assert!(m.bucket.uploads().is_empty(), "no unfinished multipart upload is left");
    agent
}

#[test]
fn sigkill_mid_upload_then_restart_sends_only_the_missing_parts() {
    interrupted_upload_resumes(&[], |agent| agent.kill());
}

#[test]
fn sigterm_mid_upload_exits_0_after_the_shutdown_timeout_and_resumes() {
    interrupted_upload_resumes(&["--shutdown-timeout", "1s"], |agent| {
        // The held part would keep the agent for 10 minutes: it leaves after its shutdown timeout.
        assert_exit(agent.terminate(), 0, agent);
        assert!(agent.log().contains("shutdown timeout: stopping uploads now"), "{}", agent.log());
    });
}

#[test]
fn a_kept_upload_of_a_file_excluded_since_is_aborted_at_start() {
    let m = Mirror::new();
    let size = (BIG_PARTS - 1) * PART_SIZE as u64 + 1000;
    write(&m.root, "big.bin", &content("big", size as usize));
    m.server.script(json!({"op": "UploadPart", "part_number": STUCK_PART, "delay": {"ms": 600_000}}));
    let mut agent = m.agent().set("--threads", "1").start();
    wait_until("the held part is being sent", || op(&m.stats(), "UploadPart").requests == STUCK_PART, || agent.log());
    agent.kill();
    assert_eq!(m.bucket.uploads().len(), 1, "the unfinished upload is on the server");

    write(&m.root, "small.txt", b"still mirrored");
    let agent = m.agent().args(["--exclude", "*.bin", "--once"]).start();
    wait_until("the excluded file's upload is aborted", || m.bucket.uploads().is_empty(), || agent.log());
    wait_until("the rest is mirrored", || m.bucket.listing().contains_key("small.txt"), || agent.log());
    assert!(!m.bucket.listing().contains_key("big.bin"), "{}", agent.log());
    assert!(log_line(&agent, "aborted multipart upload").contains("excluded"), "{}", agent.log());
}

#[test]
fn a_file_modified_mid_upload_resends_only_the_changed_part() {
    use std::os::unix::fs::FileExt as _;
    let m = Mirror::new();
    let size = (BIG_PARTS - 1) * PART_SIZE as u64 + 1000;
    write(&m.root, "big.bin", &content("big", size as usize));
    // Part 5 is held long enough for the test to change part 2, which was already sent.
    m.server.script(json!({"op": "UploadPart", "part_number": 5, "delay": {"ms": 5000}}));
    let agent = m.agent().set("--threads", "1").start();
    wait_until("part 5 is held", || op(&m.stats(), "UploadPart").requests == 5, || agent.log());
    let file = std::fs::File::options().write(true).open(m.root.join("big.bin")).unwrap();
    file.write_all_at(b"changed while uploading", PART_SIZE as u64 + 10).unwrap();
    drop(file);
    m.wait_mirrored(&agent);
    let stats = m.stats();
    assert_eq!(op(&stats, "InitiateMultipartUpload").requests, 1, "{stats:?}");
    let parts = op(&stats, "UploadPart");
    assert_eq!(parts.requests, BIG_PARTS + 1, "every part once, part 2 twice: {stats:?}");
    assert_eq!(parts.body_bytes, size + PART_SIZE as u64);
}

// -------------------------------------------------------------------------------------------------------
// 6. The watched directory disappears

fn root_removed_and_recreated(delete: bool) {
    let m = Mirror::new();
    write(&m.root, "x.txt", b"x");
    write(&m.root, "sub/y.txt", b"y");
    let agent = m.agent();
    let agent = if delete { agent.arg("--delete") } else { agent }.start();
    m.wait_mirrored(&agent);
    let before = m.bucket.tree();

    std::fs::remove_dir_all(&m.root).unwrap();
    agent.wait_log("the watched directory is gone");
    std::fs::create_dir(&m.root).unwrap();
    write(&m.root, "z.txt", b"z");
    agent.wait_log("the watched directory is back");
    m.wait_remote(&agent, &with_kept(local_tree(&m.root), &before));
    write(&m.root, "w.txt", b"w");
    m.wait_remote(&agent, &with_kept(local_tree(&m.root), &before));
    let stats = m.stats();
    assert_eq!(op(&stats, "DeleteObject").requests + op(&stats, "DeleteMultipleObjects").requests, 0, "{stats:?}");
}

#[test]
fn a_removed_and_recreated_root_deletes_nothing_and_mirroring_resumes() {
    root_removed_and_recreated(false);
}

#[test]
fn a_removed_root_deletes_nothing_even_with_delete() {
    root_removed_and_recreated(true);
}

// -------------------------------------------------------------------------------------------------------
// 7. Many files

#[test]
fn ten_thousand_files_converge_with_once() {
    let m = Mirror::new();
    for d in 0..100 {
        for f in 0..100 {
            write(&m.root, &format!("d{d:02}/f{f:02}.txt"), format!("file {d} {f}\n").as_bytes());
        }
    }
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);
    let listing = m.bucket.listing();
    let local = local_tree(&m.root);
    assert_eq!(listing.len(), 10_000);
    for (key, data) in &local {
        let object = listing.get(key).unwrap_or_else(|| panic!("{key} is missing"));
        let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(data));
        assert!(object.etag.trim_matches('"').eq_ignore_ascii_case(&md5), "{key}: ETag {} is not the MD5", object.etag);
    }
    for key in local.keys().step_by(997) {
        assert_eq!(&m.bucket.get(key), &local[key], "{key}");
    }
}

// -------------------------------------------------------------------------------------------------------
// 8. Names and special files

#[test]
fn odd_names_special_files_links_and_excludes() {
    let m = Mirror::new();
    let root = &m.root;
    let names = ["with space.txt", "plus+sign.txt", "amp&ersand.txt", "percent%20.txt", "ünïcödé 日本語.txt"];
    for name in names {
        write(root, name, &content(name, 100));
    }
    write(root, "dir with space/+&%.txt", b"nested");
    write(root, "target.txt", b"the link's target");
    std::os::unix::fs::symlink("target.txt", root.join("link.txt")).unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"bad\xffname.txt")), b"invalid UTF-8 name").unwrap();
    mkfifo(&root.join("pipe"));
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    write(root, "debug.log", b"excluded by --exclude");
    write(root, "foo.swp", b"excluded by the default ignore list");
    write(root, "dir with space/bar.swp", b"also");
    let expected: Tree =
        local_tree_of(root, &["bad\u{fffd}name.txt", "debug.log", "foo.swp", "dir with space/bar.swp"]);

    let (agent, status) = m.agent().args(["--once", "--exclude", "*.log"]).run();
    assert_eq!(m.bucket.tree(), expected, "{}\n{}", diff(&expected, &m.bucket.tree()), agent.log());
    let log = agent.log();
    let bad = log_line(&agent, "cannot be uploaded under its name");
    assert!(bad.contains("path=bad\\xFFname.txt") && bad.contains("not valid UTF-8"), "{bad}");
    assert!(log.contains("path=pipe") && log.contains("path=sock"), "FIFO and socket are named as skipped:\n{log}");
    assert!(log_line(&agent, "path=link.txt").contains("symbolic link skipped"));
    // The file that could not be uploaded makes the run fail, naming it.
    assert_exit(status, 1, &agent);
    assert!(log_line(&agent, "could not be synced").contains("bad\\xFFname.txt"), "{log}");

    let (agent, _) = agent.arg("--follow-symlinks").run();
    let mut expected = expected;
    expected.insert("link.txt".into(), b"the link's target".to_vec());
    assert_eq!(m.bucket.tree(), expected, "{}\n{}", diff(&expected, &m.bucket.tree()), agent.log());
}

/// The local tree without the files that are not mirrored (an invalid name shows as its lossy form).
fn local_tree_of(root: &Path, leave_out: &[&str]) -> Tree {
    let mut tree = Tree::new();
    for entry in walkdir::WalkDir::new(root).into_iter().map(Result::unwrap).filter(|e| e.file_type().is_file()) {
        let key = entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if !leave_out.contains(&key.as_str()) {
            tree.insert(key, std::fs::read(entry.path()).unwrap());
        }
    }
    tree
}

// -------------------------------------------------------------------------------------------------------
// 9. Secrets

#[test]
fn secrets_never_reach_the_log_or_the_state_database() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    write(&m.root, "big.bin", &content("big", 2 * PART_SIZE + 1));
    let (agent, status) = m.agent().env("OSSMIRROR_LOG", "debug").arg("--once").run();
    assert_exit(status, 0, &agent);

    // The secret as a flag: it works, with a warning.
    write(&m.root, "b.txt", b"b");
    let (agent, status) = m
        .agent_without_credentials()
        .env("OSSMIRROR_LOG", "debug")
        .args(["--once", "--access-key-id", ACCESS_KEY_ID, "--access-key-secret", ACCESS_KEY_SECRET])
        .run();
    assert_exit(status, 0, &agent);
    assert!(agent.log().contains("command-line flag"), "{}", agent.log());
    m.wait_mirrored(&agent);

    // A wrong secret is refused, and not printed either.
    let wrong = "wrong-secret-also-private";
    let (agent, status) = m
        .agent_without_credentials()
        .env("OSSMIRROR_LOG", "debug")
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", wrong)
        .arg("--once")
        .run();
    assert_exit(status, 1, &agent);

    let logs = agent.all_logs();
    for secret in [ACCESS_KEY_SECRET, wrong] {
        assert!(!logs.contains(secret), "the secret is in the log:\n{logs}");
        for file in std::fs::read_dir(m.state_db.parent().unwrap()).unwrap() {
            let path = file.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret is in {}",
                path.display()
            );
        }
    }
}

// -------------------------------------------------------------------------------------------------------
// 10. Adoption

#[test]
fn a_fresh_state_database_adopts_what_the_bucket_already_holds() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    write(&m.root, "sub/b.txt", &content("b", 5000));
    write(&m.root, "big.bin", &content("big", 3 * PART_SIZE + 7));
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 0, &agent);

    std::fs::remove_dir_all(m.state_db.parent().unwrap()).unwrap();
    m.server.reset_stats();
    let (agent, status) = agent.run();
    assert_exit(status, 0, &agent);
    let stats = m.stats();
    assert_eq!(uploads_in(&stats), 0, "nothing is uploaded again: {stats:?}");
    assert_eq!(op(&stats, "InitiateMultipartUpload").requests, 0);
    assert_eq!(agent.log().matches("adopted, nothing uploaded").count(), 3, "{}", agent.log());

    // The adopted files are in the index: the next run does not even look at the objects.
    m.server.reset_stats();
    let (agent, status) = agent.run();
    assert_exit(status, 0, &agent);
    assert_eq!(op(&m.stats(), "HeadObject").requests, 0);
    m.wait_mirrored(&agent);
}

// -------------------------------------------------------------------------------------------------------
// 11. --once and failures

#[test]
fn once_exits_1_when_a_file_cannot_be_synced() {
    let m = Mirror::new();
    write(&m.root, "good.txt", b"good");
    write(&m.root, "bad.txt", b"bad");
    m.server.script(json!({"op": "PutObject", "key": "bad.txt", "times": 1000,
        "error": {"status": 400, "code": "InvalidArgument", "message": "scripted persistent failure"}}));
    let (agent, status) = m.agent().arg("--once").run();
    assert_exit(status, 1, &agent);
    assert!(log_line(&agent, "could not be synced").contains("bad.txt"), "{}", agent.log());
    assert_eq!(m.bucket.listing().into_keys().collect::<Vec<_>>(), ["good.txt"]);
}

#[test]
fn once_with_wrong_credentials_exits_1_with_a_clear_message() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    let (agent, status) = m
        .agent_without_credentials()
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", "not-the-secret")
        .arg("--once")
        .run();
    assert_exit(status, 1, &agent);
    let error = log_line(&agent, "ossmirror: error:");
    assert!(error.contains("SignatureDoesNotMatch"), "{error}");
    assert_eq!(uploads_in(&m.stats()), 0);
}

// -------------------------------------------------------------------------------------------------------
// 12. The embedded default

#[test]
fn without_an_endpoint_the_agent_keeps_objects_on_this_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, state_home) = (tmp.path().join("data"), tmp.path().join("xdg-state"));
    std::fs::create_dir(&root).unwrap();
    let agent = Agent::new(tmp.path())
        .arg("--watch")
        .arg(&root)
        .args(["--bucket", "local", "--settle", "300ms"])
        .env("XDG_STATE_HOME", &state_home)
        .env("HOME", tmp.path());
    let mut agent = start_scanned(agent);
    assert!(agent.log().contains("objects are stored ON THIS MACHINE"), "{}", agent.log());
    write(&root, "hello.txt", b"hello, local store");
    agent.wait_log("uploaded (single PutObject)");
    assert_exit(agent.terminate(), 0, &agent);

    // Open the store the agent left with our own credentials and read the object back.
    let store = std::fs::read_dir(state_home.join("ossmirror"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension() == Some(OsStr::new("store")))
        .expect("the embedded store is under XDG_STATE_HOME");
    let mut options = ServeOptions::new().credentials(ACCESS_KEY_ID, ACCESS_KEY_SECRET);
    options.root = Some(store);
    let server = ServerProcess::start(options);
    let bucket = BucketView::new(&server.endpoint(), "local", ACCESS_KEY_ID, ACCESS_KEY_SECRET);
    assert_eq!(bucket.tree(), local_tree(&root));
}

#[test]
fn the_mass_delete_brake_holds_when_every_synced_file_is_gone_at_once() {
    let m = Mirror::new();
    let once = || m.agent().args(["--delete", "--once"]);
    write(&m.root, "a.txt", b"first synced file");
    write(&m.root, "b.txt", b"second synced file");
    let (agent, status) = once().run();
    assert_exit(status, 0, &agent);
    assert_eq!(m.bucket.listing().len(), 2);

    // One of two deleted while stopped: an ordinary deletion, applied.
    std::fs::remove_file(m.root.join("a.txt")).unwrap();
    let (agent, status) = once().run();
    assert_exit(status, 0, &agent);
    assert_eq!(m.bucket.listing().into_keys().collect::<Vec<_>>(), ["b.txt"], "{}", agent.log());

    // Every synced file gone at once (a new file beside them, as on a disk replaced by another one):
    // nothing is deleted.
    std::fs::remove_file(m.root.join("b.txt")).unwrap();
    write(&m.root, "new.txt", b"a new file");
    let (agent, _) = once().run();
    assert!(agent.log().contains("gone at once"), "{}", agent.log());
    assert!(m.bucket.listing().contains_key("b.txt"), "held: {}", agent.log());

    // The user confirms.
    let (agent, status) = once().arg("--allow-mass-delete").run();
    assert_exit(status, 0, &agent);
    assert_eq!(m.bucket.listing().into_keys().collect::<Vec<_>>(), ["new.txt"], "{}", agent.log());
}

/// `--once` right after files were written: the initial scan finds them too fresh and hands them to the
/// settle gate; the run must wait for the gate, never exit 0 with them not uploaded (a race between the
/// scan's hand-over and the loop's convergence check, once seen in agent_cmds). Several rounds, fresh
/// files each time.
#[test]
fn once_waits_for_files_the_scan_sends_through_the_settle_gate() {
    let m = Mirror::new();
    for round in 0..4 {
        for i in 0..20 {
            write(&m.root, &format!("r{round}/f{i}.txt"), &content(&format!("{round}-{i}"), 100 + i));
        }
        let (agent, status) = m.agent().set("--settle", "1s").arg("--once").run();
        assert_exit(status, 0, &agent);
        assert!(agent.log().contains("queued=20"), "the scan found fresh files to settle:\n{}", agent.log());
        m.assert_mirrored(&agent);
    }
}

// -------------------------------------------------------------------------------------------------------
// OSS options on the agent's objects (issue 14): encryption, tags, upload callbacks

/// What oss2 sees of one object (tests/interop/oss_inspect.py).
fn oss2_inspect(m: &Mirror, key: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oss_inspect.py");
    let out = std::process::Command::new(common::python())
        .arg(script)
        .args([&m.server.endpoint(), "v4", common::agent::BUCKET, key])
        .env("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run oss_inspect.py");
    assert!(out.status.success(), "oss_inspect.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("oss_inspect.py prints JSON")
}

#[test]
fn the_agents_objects_carry_encryption_and_tags_and_fire_the_upload_callback() {
    let m = Mirror::new();
    let callback = common::callback::CallbackServer::start();
    write(&m.root, "small.txt", b"a small file");
    write(&m.root, "big.bin", &content("big", 3 * PART_SIZE + 7));
    let (agent, status) = m
        .agent()
        .args(["--sse", "AES256", "--tag", "backup=nightly"])
        .args(["--callback-url", &callback.url, "--callback-body", "object=${object}&size=${size}"])
        .arg("--once")
        .run();
    assert_exit(status, 0, &agent);
    let mut bodies = callback.bodies();
    bodies.sort();
    let big = 3 * PART_SIZE + 7;
    assert_eq!(bodies, [format!("object=big.bin&size={big}"), "object=small.txt&size=12".to_string()]);
    assert_eq!(agent.log().matches("upload callback answered").count(), 2, "{}", agent.log());
    for key in ["small.txt", "big.bin"] {
        let object = &oss2_inspect(&m, key)["object"];
        assert_eq!(object["sse"], "AES256", "{key}");
        assert_eq!(object["tags"], json!({ "backup": "nightly" }), "{key}");
    }
}
