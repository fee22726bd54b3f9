//! The reliability campaign (issue 6): crash loops, injected faults, files mutated under the agent, damaged
//! state, hostile inputs. Real `ossmirror` agent processes against a real `ossmirror serve`, real files, real
//! signals; convergence is checked through Alibaba's official SDK (oss2).
//!
//! Short mode by default (part of `./scripts/test`); `OSSMIRROR_TORTURE=long` for the long mode
//! (`scripts/torture/run` builds, runs it and prints the figures). Random choices come from one seed per
//! test, printed when it fails; `OSSMIRROR_TORTURE_SEED=N` replays it. No test asserts a timing threshold:
//! durations and CPU use are recorded as figures (see docs/RELIABILITY.md).

mod common;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::agent::{Agent, Mirror, PART_SIZE, Tree, local_tree, op, wait_until, write};
use common::torture::{Figures, History, Seed, TornWatcher, assert_oss2_sees, cpu_time, pick};
use serde_json::json;

fn random_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

/// Wait until the bucket mirrors the folder and return how long that took.
fn converge(m: &Mirror, agent: &Agent) -> Duration {
    let start = Instant::now();
    m.wait_mirrored(agent);
    start.elapsed()
}

/// Bytes of content the server received (PutObject and UploadPart bodies).
fn upload_bytes(stats: &ossmirror::server::Stats) -> u64 {
    op(stats, "PutObject").body_bytes + op(stats, "UploadPart").body_bytes
}

// -------------------------------------------------------------------------------------------------------
// 1. Crash loop

/// The workload of the crash loop: many small files, a few large (multipart) ones replaced editor-style or
/// rewritten in place, and files being appended to. Every version is recorded in `history` before it can
/// be on disk.
struct Workload {
    root: std::path::PathBuf,
    scratch: std::path::PathBuf,
    history: History,
    rng: fastrand::Rng,
    small: usize,
    large: usize,
    written: u64,
    steps: u64,
}

impl Workload {
    fn record_write(&mut self, rel: &str, data: &[u8], in_place: bool) {
        let path = self.root.join(rel);
        if in_place && path.exists() {
            // O_TRUNC then write: the empty file is a state the file really has for a moment.
            self.history.record(rel, b"");
        }
        self.history.record(rel, data);
        if in_place {
            write(&self.root, rel, data);
        } else {
            let tmp = self.scratch.join(format!("save-{}", self.steps));
            std::fs::write(&tmp, data).unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        self.written += data.len() as u64;
    }

    fn initial(&mut self) {
        for i in 0..self.small {
            let len = self.rng.usize(0..8000);
            let data = random_bytes(&mut self.rng, len);
            self.record_write(&format!("small/d{}/f{i:04}.txt", i % 10), &data, true);
        }
        for i in 0..self.large {
            let len = self.rng.usize(3 * PART_SIZE..12 * PART_SIZE);
            let data = random_bytes(&mut self.rng, len);
            self.record_write(&format!("large/big{i}.bin"), &data, true);
        }
        for i in 0..3 {
            self.record_write(&format!("logs/app{i}.log"), b"", true);
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        match self.rng.u32(0..100) {
            0..30 => {
                let (i, len) = (self.rng.usize(0..self.small * 2), self.rng.usize(0..8000));
                let data = random_bytes(&mut self.rng, len);
                let in_place = self.rng.bool();
                self.record_write(&format!("small/d{}/f{i:04}.txt", i % 10), &data, in_place);
            }
            30..70 => {
                let rel = format!("logs/app{}.log", self.rng.usize(0..3));
                let mut data = std::fs::read(self.root.join(&rel)).unwrap();
                let line = format!("{} step {} {}\n", rel, self.steps, "x".repeat(self.rng.usize(10..3000)));
                data.extend_from_slice(line.as_bytes());
                self.history.record(&rel, &data);
                let mut f = std::fs::OpenOptions::new().append(true).open(self.root.join(&rel)).unwrap();
                f.write_all(line.as_bytes()).unwrap();
                self.written += line.len() as u64;
            }
            _ => {
                let i = self.rng.usize(0..self.large);
                let len = self.rng.usize(2 * PART_SIZE..12 * PART_SIZE);
                let data = random_bytes(&mut self.rng, len);
                let in_place = self.rng.u32(0..4) == 0;
                self.record_write(&format!("large/big{i}.bin"), &data, in_place);
            }
        }
    }
}

#[test]
fn crash_loop_converges_with_nothing_torn_and_no_upload_left() {
    let seed = Seed::new("crash_loop_converges_with_nothing_torn_and_no_upload_left");
    let mut rng = seed.rng();
    let kills = pick(10, 200);
    let m = Mirror::new();
    let scratch = m.tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let history = History::default();
    let mut work = Workload {
        root: m.root.clone(),
        scratch,
        history: history.clone(),
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        small: pick(60, 300),
        large: pick(3, 6),
        written: 0,
        steps: 0,
    };
    work.initial();

    let watcher = TornWatcher::start(&m.server.endpoint(), &m.bucket.bucket, history.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicU64::new(0));
    let (stop2, steps2) = (stop.clone(), steps.clone());
    let writer = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            work.step();
            steps2.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(work.rng.u64(5..60)));
        }
        work
    });

    let mut agent = m.agent().arg("--delete").start();
    let started = Instant::now();
    for _ in 0..kills {
        // Random moments: during the start-up scan and recovery, mid-part, between Complete and the index.
        std::thread::sleep(Duration::from_millis(rng.u64(50..1500)));
        agent.kill();
        agent = agent.start();
    }
    stop.store(true, Ordering::Relaxed);
    let work = writer.join().unwrap();
    let loop_time = started.elapsed();

    // The last run (it was started after the last kill) must converge.
    let to_converge = converge(&m, &agent);
    let (reads, torn) = watcher.finish();
    assert!(torn.is_empty(), "objects were visible with content no version of the file had:\n{}", torn.join("\n"));
    assert!(reads > 0, "the torn-object watcher read nothing");
    let local = local_tree(&m.root);
    assert_oss2_sees(&m.server.endpoint(), &m.bucket.bucket, &local);
    assert!(m.bucket.uploads().is_empty(), "no unfinished multipart upload is left");

    let stats = m.stats();
    let final_bytes: u64 = local.values().map(|v| v.len() as u64).sum();
    let mut f = Figures::new("crash_loop");
    f.set("seed", seed.value);
    f.set("kills", kills);
    f.set("restarts", kills);
    f.set("workload_steps", steps.load(Ordering::Relaxed));
    f.set("versions_written", history.versions());
    f.set("bytes_written_locally", work.written);
    f.set("final_files", local.len());
    f.set("final_bytes", final_bytes);
    f.set("bytes_uploaded", upload_bytes(&stats));
    f.set("put_object", op(&stats, "PutObject").requests);
    f.set("upload_part", op(&stats, "UploadPart").requests);
    f.set("initiate_multipart", op(&stats, "InitiateMultipartUpload").requests);
    f.set("abort_multipart", op(&stats, "AbortMultipartUpload").requests);
    f.set("complete_multipart", op(&stats, "CompleteMultipartUpload").requests);
    f.set("objects_read_by_torn_watcher", reads);
    f.secs("loop_seconds", loop_time);
    f.secs("seconds_to_converge_after_last_restart", to_converge);
    f.emit();
}

// -------------------------------------------------------------------------------------------------------
// 2. Injected faults

/// Add `count` files named after `phase` (two small, one multipart) and return nothing: the caller waits.
fn add_files(m: &Mirror, phase: &str, rng: &mut fastrand::Rng) {
    for i in 0..2 {
        let len = rng.usize(1..20_000);
        write(&m.root, &format!("{phase}/small{i}.txt"), &random_bytes(rng, len));
    }
    let len = rng.usize(4 * PART_SIZE..8 * PART_SIZE);
    write(&m.root, &format!("{phase}/large.bin"), &random_bytes(rng, len));
}

/// Requests the server answered with something other than 2xx (injected errors, resets, drops).
fn failed_requests(stats: &ossmirror::server::Stats) -> u64 {
    stats
        .operations
        .values()
        .map(|o| o.statuses.iter().filter(|(s, _)| !s.starts_with('2')).map(|(_, n)| n).sum::<u64>())
        .sum()
}

#[test]
fn injected_faults_converge_with_bounded_retries_and_no_spinning() {
    let seed = Seed::new("injected_faults_converge_with_bounded_retries_and_no_spinning");
    let mut rng = seed.rng();
    let mut f = Figures::new("injected_faults");
    f.set("seed", seed.value);
    let m = Mirror::new();
    add_files(&m, "start", &mut rng);
    let agent = m.agent().arg("--delete").start();
    m.wait_mirrored(&agent);

    // 5xx bursts: every injected error costs exactly one more request, no more.
    m.server.reset_stats();
    let burst = pick(3, 10);
    m.server.script(json!([
        {"op": "PutObject", "times": burst, "error": {"status": 503, "code": "ServiceUnavailable", "message": "burst"}},
        {"op": "UploadPart", "times": burst, "error": {"status": 500, "code": "InternalError", "message": "burst"}},
        {"op": "CompleteMultipartUpload", "times": 1, "error": {"status": 502, "code": "BadGateway", "message": "burst", "after": true}},
    ]));
    add_files(&m, "bursts", &mut rng);
    f.secs("bursts_seconds_to_converge", converge(&m, &agent));
    let stats = m.stats();
    assert_eq!(stats.faults.errors, 2 * burst + 1, "every scripted error was hit: {stats:?}");
    // The Complete that acted but answered 502 is either retried once, finds no upload (404), or not
    // retried at all; either way the object is verified by a HEAD instead. That 404 is the only failure
    // allowed beyond the injected ones.
    let complete = op(&stats, "CompleteMultipartUpload");
    let lost_complete_404 = complete.statuses.get("404").copied().unwrap_or(0);
    assert!(lost_complete_404 <= 1, "{stats:?}");
    assert_eq!(
        failed_requests(&stats),
        2 * burst + 1 + lost_complete_404,
        "no failure beyond the injected ones: {stats:?}"
    );
    let (puts, parts) = (op(&stats, "PutObject"), op(&stats, "UploadPart"));
    assert_eq!(puts.requests, 2 + burst, "one retry per injected PutObject error: {stats:?}");
    assert!(parts.requests <= 8 + burst, "one retry per injected UploadPart error: {stats:?}");
    f.set("bursts_injected_errors", stats.faults.errors);
    f.set("bursts_requests", stats.requests);

    // Connection resets in the middle of bodies: the part is re-sent, nothing else.
    m.server.reset_stats();
    m.server.script(json!([
        {"op": "UploadPart", "times": pick(2, 6), "reset": {"after_bytes": PART_SIZE / 2}},
        {"op": "PutObject", "times": 1, "reset": {"after_bytes": 100}},
    ]));
    add_files(&m, "resets", &mut rng);
    f.secs("resets_seconds_to_converge", converge(&m, &agent));
    let stats = m.stats();
    assert_eq!(stats.faults.resets, pick(2, 6) + 1, "{stats:?}");
    f.set("resets_injected", stats.faults.resets);
    f.set("resets_requests", stats.requests);

    // Random errors, resets and latency together.
    m.server.reset_stats();
    m.server.set_faults(
        json!({"error_rate": 0.15, "reset_rate": 0.1, "reset_after": 30_000, "latency_ms": 150, "seed": rng.u64(..)}),
    );
    add_files(&m, "random", &mut rng);
    f.secs("random_faults_seconds_to_converge", converge(&m, &agent));
    let stats = m.stats();
    m.server.set_faults(json!({"error_rate": 0.0, "reset_rate": 0.0, "latency_ms": 0}));
    f.set("random_faults_errors", stats.faults.errors);
    f.set("random_faults_resets", stats.faults.resets);
    f.set("random_faults_requests", stats.requests);

    // Slow responses: every request waits (longer than a part takes to send).
    m.server.reset_stats();
    m.server.script(json!({"op": "UploadPart", "times": 1000, "delay": {"ms": 1500}}));
    add_files(&m, "slow", &mut rng);
    f.secs("slow_seconds_to_converge", converge(&m, &agent));
    m.server.control("DELETE", "script", None);
    let stats = m.stats();
    assert_eq!(failed_requests(&stats), 0, "slow answers are waited for, not abandoned: {stats:?}");

    // The server is down (connections reset) for a while: the agent waits it out without spinning.
    let outage = Duration::from_secs(pick(20, 60));
    m.server.reset_stats();
    m.server.set_down("drop", None);
    add_files(&m, "outage", &mut rng);
    let cpu_before = cpu_time(agent.pid()).unwrap();
    let down_at = Instant::now();
    let mut max_cpu_fraction: f64 = 0.0;
    let mut last = (Instant::now(), cpu_before);
    while down_at.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(2));
        let now = (Instant::now(), cpu_time(agent.pid()).unwrap());
        let fraction = (now.1 - last.1).as_secs_f64() / (now.0 - last.0).as_secs_f64();
        max_cpu_fraction = max_cpu_fraction.max(fraction);
        last = now;
    }
    let cpu_used = cpu_time(agent.pid()).unwrap() - cpu_before;
    let wall = down_at.elapsed();
    let drops = m.stats().faults.down_drops;
    m.server.set_down("up", None);
    assert!(drops > 0, "the agent tried during the outage");
    // A spinning agent burns a core; a waiting one, almost nothing. Robust on a loaded machine: the bound is
    // a tenth of the wall time.
    assert!(
        cpu_used < wall / 10,
        "the agent used {cpu_used:?} of CPU during a {wall:?} outage ({drops} requests dropped)\n{}",
        agent.log()
    );
    f.secs("outage_seconds", wall);
    f.secs("outage_agent_cpu_seconds", cpu_used);
    f.set("outage_agent_max_cpu_percent_over_2s", (max_cpu_fraction * 1000.0).round() / 10.0);
    f.set("outage_requests_dropped", drops);
    f.secs("outage_seconds_to_converge_after_up", converge(&m, &agent));

    // The server process restarted mid-upload (SIGKILL while a part is held): the upload resumes.
    m.server.reset_stats();
    m.server.script(json!({"op": "UploadPart", "part_number": 3, "delay": {"ms": 600_000}}));
    add_files(&m, "restart", &mut rng);
    wait_until("part 3 is held", || op(&m.stats(), "UploadPart").requests >= 3, || agent.log());
    let Mirror { tmp, server, root, state_db, bucket } = m;
    let server = server.kill_and_restart();
    let m = Mirror { tmp, server, root, state_db, bucket };
    f.secs("server_restart_seconds_to_converge", converge(&m, &agent));
    assert!(m.bucket.uploads().is_empty(), "the upload completed after the server restart");

    // RequestTimeTooSkewed: the server's clock is 20 minutes ahead, then 20 minutes behind.
    for offset in [1200, -1200] {
        m.server.reset_stats();
        m.server.set_clock_offset(offset);
        add_files(&m, &format!("skew{offset}"), &mut rng);
        f.secs(&format!("skew_{offset}s_seconds_to_converge"), converge(&m, &agent));
        let stats = m.stats();
        f.set(&format!("skew_{offset}s_failed_requests"), failed_requests(&stats));
        assert!(failed_requests(&stats) > 0, "the skew was noticed: {stats:?}");
        // The offset is learned once, not per request.
        assert!(failed_requests(&stats) <= 4, "the clock offset is learned, not retried blindly: {stats:?}");
    }
    m.server.set_clock_offset(0);

    assert_oss2_sees(&m.server.endpoint(), &m.bucket.bucket, &local_tree(&m.root));
    f.emit();
}

// -------------------------------------------------------------------------------------------------------
// 3. Mutation model

const DIRS: [&str; 5] = ["", "a", "a/b", "c", "c/d e"];

/// The regular files and directories under `root` (relative paths), sorted.
fn entries(root: &Path) -> (Vec<String>, Vec<String>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
        if e.file_type().is_dir() {
            dirs.push(rel);
        } else {
            files.push(rel);
        }
    }
    (files, dirs)
}

/// One random operation on the tree; returns its description for the replay log.
fn mutate(root: &Path, scratch: &Path, rng: &mut fastrand::Rng, step: u64) -> String {
    use std::os::unix::fs::FileExt as _;
    let (files, dirs) = entries(root);
    let pick_file = |rng: &mut fastrand::Rng| (!files.is_empty()).then(|| files[rng.usize(..files.len())].clone());
    let new_path = |rng: &mut fastrand::Rng| {
        let dir = DIRS[rng.usize(..DIRS.len())];
        let name = format!("f{}", rng.usize(0..12));
        if dir.is_empty() { name } else { format!("{dir}/{name}") }
    };
    let size = |rng: &mut fastrand::Rng| match rng.u32(0..10) {
        0 => 0,
        1..=7 => rng.usize(1..30_000),
        _ => rng.usize(PART_SIZE..5 * PART_SIZE),
    };
    // Writes go only where a directory (or nothing) would not be replaced by a file.
    let free = |rel: &str| !root.join(rel).is_dir();
    match rng.u32(0..100) {
        0..20 => {
            let rel = new_path(rng);
            if !free(&rel) {
                return format!("write {rel}: a directory, skipped");
            }
            let len = size(rng);
            write(root, &rel, &random_bytes(rng, len));
            format!("write {rel} ({len} bytes)")
        }
        20..32 => {
            let Some(rel) = pick_file(rng) else { return "overwrite-range: no file".into() };
            let f = std::fs::OpenOptions::new().write(true).open(root.join(&rel)).unwrap();
            let len = f.metadata().unwrap().len();
            let at = rng.u64(0..=len);
            let n = rng.usize(1..20_000);
            f.write_all_at(&random_bytes(rng, n), at).unwrap();
            format!("overwrite {rel} [{at}, +{n})")
        }
        32..44 => {
            let Some(rel) = pick_file(rng) else { return "append: no file".into() };
            let n = rng.usize(1..50_000);
            let mut f = std::fs::OpenOptions::new().append(true).open(root.join(&rel)).unwrap();
            f.write_all(&random_bytes(rng, n)).unwrap();
            format!("append {rel} +{n}")
        }
        44..52 => {
            let Some(rel) = pick_file(rng) else { return "truncate: no file".into() };
            let f = std::fs::OpenOptions::new().write(true).open(root.join(&rel)).unwrap();
            let len = rng.u64(0..=f.metadata().unwrap().len());
            f.set_len(len).unwrap();
            format!("truncate {rel} to {len}")
        }
        52..64 => {
            let Some(rel) = pick_file(rng) else { return "rename: no file".into() };
            let to = new_path(rng);
            if !free(&to) || to == rel {
                return format!("rename {rel} → {to}: skipped");
            }
            std::fs::create_dir_all(root.join(&to).parent().unwrap()).unwrap();
            std::fs::rename(root.join(&rel), root.join(&to)).unwrap();
            format!("rename {rel} → {to}")
        }
        64..74 => {
            let Some(rel) = pick_file(rng) else { return "delete: no file".into() };
            std::fs::remove_file(root.join(&rel)).unwrap();
            format!("delete {rel}")
        }
        74..80 => {
            let dir = DIRS[1 + rng.usize(..DIRS.len() - 1)];
            if root.join(dir).exists() {
                return format!("mkdir {dir}: exists");
            }
            std::fs::create_dir_all(root.join(dir)).unwrap();
            format!("mkdir {dir}")
        }
        80..86 => {
            if dirs.is_empty() {
                return "rmdir: no directory".into();
            }
            let dir = dirs[rng.usize(..dirs.len())].clone();
            std::fs::remove_dir_all(root.join(&dir)).unwrap();
            format!("rmdir -r {dir}")
        }
        86..90 => {
            if dirs.is_empty() {
                return "rename dir: no directory".into();
            }
            let dir = dirs[rng.usize(..dirs.len())].clone();
            let to = format!("moved{}", rng.usize(0..3));
            if root.join(&to).exists() {
                return format!("rename dir {dir} → {to}: target exists");
            }
            std::fs::rename(root.join(&dir), root.join(&to)).unwrap();
            format!("rename dir {dir} → {to}")
        }
        _ => {
            // An editor's save: the new content in a temporary file next to the original, renamed over it.
            let Some(rel) = pick_file(rng) else { return "editor save: no file".into() };
            let len = size(rng);
            let tmp = root.join(format!("{rel}.tmp{step}"));
            std::fs::write(&tmp, random_bytes(rng, len)).unwrap();
            std::fs::rename(&tmp, root.join(&rel)).unwrap();
            let _ = scratch;
            format!("editor-save {rel} ({len} bytes)")
        }
    }
}

#[test]
fn mutation_model_remote_equals_local_at_quiescence() {
    let seed = Seed::new("mutation_model_remote_equals_local_at_quiescence");
    let mut rng = seed.rng();
    let steps: u64 = pick(60, 3000);
    let check_every: u64 = pick(30, 300);
    let m = Mirror::new();
    let scratch = m.tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // The model may delete every file while the agent is down: that is the mass-delete brake's case (held
    // on purpose, tests/agent.rs), not what this test is about.
    let mut agent = m.agent().args(["--delete", "--allow-mass-delete"]).set("--settle", "200ms").start();
    let mut journal = Vec::new();
    let (mut kills, mut checks) = (0u64, 0u64);
    let mut to_converge = Duration::ZERO;
    for step in 1..=steps {
        journal.push(format!("{step}: {}", mutate(&m.root, &scratch, &mut rng, step)));
        match rng.u32(0..100) {
            0..4 => {
                agent.kill();
                agent = agent.start();
                kills += 1;
                journal.push(format!("{step}: kill -9 and restart"));
            }
            4..40 => std::thread::sleep(Duration::from_millis(rng.u64(0..400))),
            _ => {}
        }
        if step % check_every == 0 || step == steps {
            let start = Instant::now();
            let expected = local_tree(&m.root);
            let last = std::cell::RefCell::new(Tree::new());
            let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.wait_remote(&agent, &expected)));
            if converged.is_err() {
                *last.borrow_mut() = m.bucket.tree();
                panic!(
                    "not converged after step {step}; the operations were:\n{}\ndifferences:\n{}",
                    journal.join("\n"),
                    common::agent::diff(&expected, &last.borrow())
                );
            }
            to_converge = to_converge.max(start.elapsed());
            checks += 1;
        }
    }
    assert_oss2_sees(&m.server.endpoint(), &m.bucket.bucket, &local_tree(&m.root));
    let stats = m.stats();
    let mut f = Figures::new("mutation_model");
    f.set("seed", seed.value);
    f.set("steps", steps);
    f.set("kills", kills);
    f.set("quiescence_checks", checks);
    f.set("final_files", local_tree(&m.root).len());
    f.set("bytes_uploaded", upload_bytes(&stats));
    f.set("copies", op(&stats, "CopyObject").requests);
    f.set("deletes", op(&stats, "DeleteMultipleObjects").requests + op(&stats, "DeleteObject").requests);
    f.secs("max_seconds_to_converge", to_converge);
    f.emit();
}

// -------------------------------------------------------------------------------------------------------
// 4. Storage faults

/// Run the agent with `--once` to the end; it must exit 0 and leave the bucket equal to the folder.
fn once_ok(m: &Mirror, agent: Agent) -> Agent {
    let (agent, status) = agent.run();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    m.assert_mirrored(&agent);
    agent
}

fn sidecars(db: &Path) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm"].iter().map(|s| std::path::PathBuf::from(format!("{}{s}", db.display()))).collect()
}

fn fold_wal(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

fn nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

#[test]
fn damaged_state_is_reported_and_recovered_by_reverification() {
    use std::os::unix::fs::MetadataExt as _;
    let seed = Seed::new("damaged_state_is_reported_and_recovered_by_reverification");
    let mut rng = seed.rng();
    let m = Mirror::new();
    for i in 0..20 {
        let len = rng.usize(0..5000);
        write(&m.root, &format!("s/f{i}.txt"), &random_bytes(&mut rng, len));
    }
    write(&m.root, "big.bin", &random_bytes(&mut rng, 5 * PART_SIZE + 17));
    let agent = once_ok(&m, m.agent().arg("--once"));
    let mut f = Figures::new("storage_faults");

    // Each damage, then a local change to one file: the restarted agent says what happened, re-verifies
    // (adopts the unchanged files by CRC-64, uploads nothing else) and uploads exactly the changed file.
    type Damage<'a> = (&'a str, &'a dyn Fn(&Path));
    let damages: [Damage; 4] = [
        ("deleted", &|db| sidecars(db).iter().for_each(|p| drop(std::fs::remove_file(p)))),
        ("truncated", &|db| {
            fold_wal(db);
            let len = std::fs::metadata(db).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(db).unwrap().set_len(len / 2).unwrap();
        }),
        ("garbage over the header", &|db| {
            fold_wal(db);
            write_at(db, 0, &[0x5a; 4096]);
        }),
        ("garbage over a middle page", &|db| {
            fold_wal(db);
            let len = std::fs::metadata(db).unwrap().len();
            write_at(db, (len / 2) & !4095, &[0xa5; 4096]);
        }),
    ];
    let mut agent = agent;
    for (i, (what, damage)) in damages.iter().enumerate() {
        damage(&m.state_db);
        let changed = format!("s/f{i}.txt");
        write(&m.root, &changed, format!("changed after the database was {what}").as_bytes());
        m.server.reset_stats();
        agent = once_ok(&m, agent);
        let stats = m.stats();
        assert_eq!(op(&stats, "PutObject").requests, 1, "{what}: only the changed file is uploaded: {stats:?}");
        assert_eq!(op(&stats, "UploadPart").requests, 0, "{what}: {stats:?}\n{}", agent.log());
        if *what != "deleted" && *what != "garbage over a middle page" {
            assert!(agent.log().contains("damaged"), "{what}: the damage is reported:\n{}", agent.log());
        }
        f.set(&format!("{what}: requests to re-verify"), stats.requests);
    }

    // A synced row edited to claim a changed file is up to date: its MAC gives it away, the file is uploaded.
    let changed = m.root.join("s/f10.txt");
    let before = std::fs::read(&changed).unwrap();
    let mut after = before.clone();
    after.iter_mut().for_each(|b| *b = b.wrapping_add(1));
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changed, &after).unwrap();
    let meta = std::fs::metadata(&changed).unwrap();
    let conn = rusqlite::Connection::open(&m.state_db).unwrap();
    let edited = conn
        .execute(
            "UPDATE synced SET snap_mtime_ns = ?1, snap_ctime_ns = ?2 WHERE key = 's/f10.txt'",
            rusqlite::params![nanos(meta.modified().unwrap()), meta.ctime() * 1_000_000_000 + meta.ctime_nsec()],
        )
        .unwrap();
    assert_eq!(edited, 1);
    drop(conn);
    m.server.reset_stats();
    let agent = once_ok(&m, agent);
    assert_eq!(op(&m.stats(), "PutObject").requests, 1, "{:?}\n{}", m.stats(), agent.log());

    // A checkpoint edited while an upload is interrupted: not trusted, its upload aborted, a fresh one done.
    write(&m.root, "big.bin", &random_bytes(&mut rng, 6 * PART_SIZE));
    m.server.script(json!({"op": "UploadPart", "part_number": 3, "delay": {"ms": 600_000}}));
    let mut agent = agent.start();
    wait_until("part 3 is held", || op(&m.stats(), "UploadPart").requests >= 3, || agent.log());
    agent.kill();
    m.server.control("DELETE", "script", None);
    let conn = rusqlite::Connection::open(&m.state_db).unwrap();
    assert_eq!(conn.execute("UPDATE uploads SET upload_id = 'F00D' || upload_id", []).unwrap(), 1);
    drop(conn);
    let agent = once_ok(&m, agent);
    assert!(agent.log().contains("damaged"), "the edited checkpoint is reported:\n{}", agent.log());
    assert!(m.bucket.uploads().is_empty(), "the real upload behind the edited checkpoint was aborted");
    f.emit();
}

/// Start the agent without the capabilities that let root ignore file permissions (when the tests run as
/// root, `chmod 000` would otherwise prove nothing).
fn without_dac_override(agent: Agent) -> Agent {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        agent.wrapped(["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"])
    } else {
        agent
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn unreadable_parts_of_the_tree_are_reported_and_synced_once_readable() {
    let m = Mirror::new();
    write(&m.root, "ok.txt", b"readable");
    write(&m.root, "locked.txt", b"no read permission");
    write(&m.root, "closed/inside.txt", b"in a directory that cannot be listed");
    write(&m.root, "open/fine.txt", b"fine");
    chmod(&m.root.join("locked.txt"), 0o000);
    chmod(&m.root.join("closed"), 0o000);
    let (agent, status) = without_dac_override(m.agent().arg("--once")).run();
    let log = agent.log();
    chmod(&m.root.join("locked.txt"), 0o644);
    chmod(&m.root.join("closed"), 0o755);
    let keys: Vec<String> = m.bucket.listing().into_keys().collect();
    assert_eq!(keys, ["ok.txt", "open/fine.txt"], "the readable files are mirrored:\n{log}");
    assert!(log.contains("locked.txt") && log.contains("closed"), "the unreadable paths are named:\n{log}");
    assert_eq!(status.code(), Some(1), "a run that could not read everything fails:\n{log}");
    // Readable again: the next run mirrors them.
    once_ok(&m, agent);
}

#[test]
fn a_sparse_file_larger_than_ten_thousand_parts_gets_a_bigger_part_size() {
    let m = Mirror::new();
    let part = 100 * 1024u64;
    let size = 10_001 * part + 1;
    let file = std::fs::File::create(m.root.join("sparse.img")).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    write(&m.root, "small.txt", b"next to a sparse file");
    let (agent, status) = m.agent().set("--part-size", "100KiB").arg("--once").run();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    let listing = m.bucket.listing();
    assert_eq!(listing["sparse.img"].size, size);
    let stats = m.stats();
    let parts = op(&stats, "UploadPart");
    assert!(parts.requests <= 10_000, "at most 10,000 parts: {stats:?}");
    assert_eq!(parts.body_bytes, size, "every byte once: {stats:?}");
    let mut crc = ossmirror::checksum::Crc64::new();
    let zeros = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        crc.update(&zeros[..n]);
        left -= n as u64;
    }
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(
            "import oss2,os,sys\n\
             b=oss2.Bucket(oss2.AuthV4(os.environ['K'],os.environ['S']),sys.argv[1],'mirror',region='cn-hangzhou')\n\
             h=b.head_object('sparse.img')\nprint(h.content_length, h.server_crc)",
        )
        .arg(m.server.endpoint())
        .env("K", common::agent::ACCESS_KEY_ID)
        .env("S", common::agent::ACCESS_KEY_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{size} {}", crc.finish()), "oss2's HEAD");
}

#[test]
fn a_file_deleted_between_scan_and_upload_is_not_an_error() {
    let m = Mirror::new();
    for i in 0..6 {
        write(&m.root, &format!("f{i}.txt"), format!("file {i}").as_bytes());
    }
    // The first upload is held: the files queued behind it are deleted before their turn.
    m.server.script(json!({"op": "PutObject", "times": 1, "delay": {"ms": 3000}}));
    let agent = m.agent().args(["--once", "--jobs", "1"]).start();
    wait_until("an upload is held", || op(&m.stats(), "PutObject").requests >= 1, || agent.log());
    let held: Vec<String> = (0..6).map(|i| format!("f{i}.txt")).collect();
    for name in &held[2..] {
        let _ = std::fs::remove_file(m.root.join(name));
    }
    let mut agent = agent;
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(0), "a vanished file is not a failure:\n{}", agent.log());
    let keys: Vec<String> = m.bucket.listing().into_keys().collect();
    assert!(keys.iter().all(|k| m.root.join(k).exists()), "only files that still exist were uploaded: {keys:?}");
    assert!(!keys.is_empty());
}

#[test]
fn a_watched_root_that_is_a_symlink_is_resolved() {
    let m = Mirror::new();
    write(&m.root, "a.txt", b"through a link");
    let link = m.tmp.path().join("link-to-data");
    std::os::unix::fs::symlink(&m.root, &link).unwrap();
    let (agent, status) = m.agent().set("--watch", &link).arg("--once").run();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    m.assert_mirrored(&agent);
    // A link to a link to a link to itself is refused clearly.
    let looped = m.tmp.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let (agent, status) = m.agent().set("--watch", &looped).arg("--once").run();
    assert_eq!(status.code(), Some(2), "{}", agent.log());
    assert!(agent.log().contains("--watch"), "{}", agent.log());
}

// -------------------------------------------------------------------------------------------------------
// 5. Hostile inputs (names and special files)

#[test]
fn hostile_names_are_mirrored_literally_or_reported_by_name() {
    let m = Mirror::new();
    let root = &m.root;
    let long_name = "n".repeat(255);
    let deep: String = (0..60).map(|i| format!("d{i}/")).collect::<String>() + "deep.txt";
    let too_long: String = (0..5).map(|i| format!("{}{i}/", "L".repeat(220))).collect::<String>() + "x.txt";
    let nfc = "caf\u{e9}.txt";
    let nfd = "cafe\u{301}.txt";
    let mirrored = ["..dots", "...", "a\\b.txt", "trailing\\", " ", "lead space", ".hidden", nfc, nfd, "zero", "hard1"];
    for name in mirrored {
        write(root, name, name.as_bytes());
    }
    write(root, "zero", b"");
    std::fs::hard_link(root.join("hard1"), root.join("hard2")).unwrap();
    write(root, &long_name, b"a 255-byte name");
    write(root, &deep, b"sixty directories down");
    write(root, &too_long, b"a key over 1023 bytes");
    write(root, "new\nline.txt", b"a newline in the name");
    write(root, "tab\there.txt", b"a tab in the name");
    write(root, "\\leading-backslash.txt", b"a backslash first");
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("self-loop", root.join("self-loop")).unwrap();
    std::os::unix::fs::symlink("loop-b", root.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", root.join("loop-b")).unwrap();
    std::os::unix::fs::symlink(".", root.join("dot-link")).unwrap();

    for follow in [false, true] {
        let agent = m.agent().arg("--once");
        let agent = if follow { agent.arg("--follow-symlinks") } else { agent };
        let (agent, status) = agent.run();
        let log = agent.log();
        let listing = m.bucket.listing();
        let mut expected: Vec<String> = mirrored.iter().map(|s| s.to_string()).collect();
        expected.extend(["hard2".to_string(), long_name.clone(), deep.clone()]);
        for key in &expected {
            assert_eq!(m.bucket.get(key), std::fs::read(root.join(key)).unwrap(), "{key:?} is mirrored:\n{log}");
        }
        // The names a key cannot carry are reported by name, and the run fails saying so.
        for (name, why) in [
            (too_long.as_str(), "1023"),
            ("new\\nline.txt", "control"),
            ("tab\\there.txt", "control"),
            ("\\\\leading-backslash.txt", "start"),
        ] {
            let line = log
                .lines()
                .find(|l| l.contains("cannot be uploaded under its name") && l.contains(&name[..name.len().min(40)]));
            assert!(line.is_some_and(|l| l.to_lowercase().contains(why)), "{name:?} is reported ({why}):\n{log}");
        }
        assert_eq!(status.code(), Some(1), "{log}");
        // Links: skipped without --follow-symlinks; with it, loops and dangling links are named, not followed
        // forever, and the link to the root itself does not mirror the tree twice.
        let others: Vec<&String> = listing.keys().filter(|k| !expected.contains(k)).collect();
        assert!(others.is_empty(), "follow={follow}: nothing else is uploaded: {others:?}\n{log}");
        for link in ["dangling", "self-loop", "loop-a", "dot-link"] {
            assert!(log.contains(&format!("path={link}")), "follow={follow}: {link} is named in the log:\n{log}");
        }
    }
}

// -------------------------------------------------------------------------------------------------------
// 5b. Hostile remotes

/// A loopback endpoint that answers every request with an HTML page (a captive portal, a proxy's error
/// page), with `status`.
fn html_endpoint(status: u16) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::Read as _;
                let mut buf = [0u8; 65536];
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = stream.read(&mut buf);
                let body = "<html><head><title>Welcome</title></head><body>Please log in to the network</body></html>";
                let answer = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    addr
}

#[test]
fn remote_misconfigurations_fail_clearly_under_once() {
    let m = Mirror::with_server(common::ServeOptions::new().session_token("sts-token-value"));
    write(&m.root, "a.txt", b"a");
    let error_line = |agent: &Agent| {
        agent.log().lines().rev().find(|l| l.contains("ossmirror: error:")).unwrap_or_default().to_string()
    };

    // A bucket that does not exist.
    let (agent, status) =
        m.agent().env("OSS_SESSION_TOKEN", "sts-token-value").set("--bucket", "no-such-bucket").arg("--once").run();
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    assert!(error_line(&agent).contains("NoSuchBucket"), "{}", agent.log());

    // An STS token that expired.
    m.server.set_token_expired(true);
    let (agent, status) = m.agent().env("OSS_SESSION_TOKEN", "sts-token-value").arg("--once").run();
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    assert!(error_line(&agent).contains("SecurityTokenExpired"), "{}", agent.log());
    m.server.set_token_expired(false);
    let (agent, status) = m.agent().env("OSS_SESSION_TOKEN", "sts-token-value").arg("--once").run();
    assert_eq!(status.code(), Some(0), "a fresh token works: {}", agent.log());

    // An endpoint that answers HTML, as a 200 and as an error page: a clear error, no crash, no upload.
    for status_code in [200, 403, 502] {
        let addr = html_endpoint(status_code);
        let (agent, status) = m
            .agent()
            .set("--endpoint", format!("http://{addr}"))
            .set("--state-db", m.tmp.path().join(format!("html{status_code}.db")))
            .arg("--once")
            .run();
        let line = error_line(&agent);
        assert_eq!(status.code(), Some(1), "HTML {status_code}: {}", agent.log());
        assert!(!line.is_empty() && !agent.log().contains("panicked"), "HTML {status_code}: {}", agent.log());
        eprintln!("HTML {status_code}: {line}");
    }
}

#[test]
fn a_state_database_on_a_full_disk_is_reported_and_nothing_is_lost() {
    let m = Mirror::new();
    for i in 0..1500 {
        write(&m.root, &format!("d{}/file-with-a-long-name-{i:04}.txt", i % 7), format!("content {i}").as_bytes());
    }
    let state_dir = m.state_db.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&state_dir).unwrap();
    // The state directory is a small tmpfs in a private mount namespace: 64 KiB is full before the database
    // is open (SQLite then says only "disk I/O error"), 160 KiB fills up while the index grows.
    for size in ["64k", "160k"] {
        let script = format!("mount -t tmpfs -o size={size} tmpfs \"$0\" && exec \"$@\"");
        let wrapper =
            ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c", &script];
        let agent = m.agent().wrapped(wrapper.iter().copied().chain([state_dir.to_str().unwrap()])).arg("--once");
        let (agent, status) = agent.run();
        let log = agent.log();
        assert_ne!(status.code(), Some(0), "{size}: a run that cannot record its work does not claim success:\n{log}");
        assert!(log.to_lowercase().contains("full"), "{size}: the full disk is named:\n{log}");
        assert!(!log.contains("panicked"), "{log}");
        let said: Vec<&str> = log.lines().filter(|l| l.to_lowercase().contains("full")).take(2).collect();
        eprintln!("observed with a {size} state file system (exit {status}):\n{}", said.join("\n"));
    }
    // With room again, the run converges (objects already uploaded are adopted, not uploaded again).
    once_ok(&m, m.agent().arg("--once"));
    assert!(m.bucket.uploads().is_empty());
}

// -------------------------------------------------------------------------------------------------------
// 6. Security

#[test]
fn state_files_are_private_and_secrets_stay_out_of_the_command_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    write(&m.root, "big.bin", &vec![7u8; 3 * PART_SIZE]);
    // The agent's umask must not matter: state files are 0600 whatever it is.
    let agent = m.agent().wrapped(["sh", "-c", "umask 000 && exec \"$@\"", "sh"]).start();
    m.wait_mirrored(&agent);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    let secret = common::agent::ACCESS_KEY_SECRET.as_bytes();
    assert!(!cmdline.windows(secret.len()).any(|w| w == secret), "the secret is in the command line");
    let dir = m.state_db.parent().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        if path.is_file() {
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "the database and its lock were checked");
}

#[test]
fn tls_certificates_are_verified_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = (tmp.path().join("key.pem"), tmp.path().join("cert.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-key")
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("openssl s_server listens", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), String::new);
    let m = Mirror::new();
    write(&m.root, "a.txt", b"a");
    let (agent, status) = m.agent().set("--endpoint", format!("https://127.0.0.1:{port}")).arg("--once").run();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    let log = agent.log().to_lowercase();
    assert!(log.contains("certificate"), "a self-signed certificate is refused, and said so:\n{log}");
}

#[test]
fn a_kill_before_the_checkpoint_is_written_leaves_no_upload_behind() {
    let m = Mirror::new();
    write(&m.root, "a.bin", &vec![1u8; 3 * PART_SIZE]);
    let mut agent = m.agent().start();
    m.wait_mirrored(&agent);
    agent.kill();
    // Killed after the server created an upload the agent never recorded: every InitiateMultipartUpload
    // acts but its answer is lost, and the agent is SIGKILLed while it retries.
    write(&m.root, "b.bin", &vec![2u8; 3 * PART_SIZE]);
    m.server.script(json!({"op": "InitiateMultipartUpload", "times": 1000,
        "error": {"status": 503, "code": "ServiceUnavailable", "message": "lost answer", "after": true}}));
    let mut agent = agent.start();
    wait_until("initiates were lost", || op(&m.stats(), "InitiateMultipartUpload").requests >= 4, || agent.log());
    agent.kill();
    m.server.control("DELETE", "script", None);
    let agent = agent.start();
    m.wait_mirrored(&agent);
    wait_until(
        "no unfinished upload is left",
        || m.bucket.uploads().is_empty(),
        || format!("{:?}\n{}", m.bucket.uploads(), agent.all_logs()),
    );
}
