//! Engine tests against the in-memory remote and a real SQLite state file.
//!
//! The remote's request hook makes every scenario exact: "crash" while part k is in flight (the hook holds
//! the request and the test drops the upload future), or modify the file at the moment part k is requested.
//! Real-HTTP and real-process versions of these scenarios live in `tests/`.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::remote::memory::{HookAction, MemoryRemote, RequestInfo};
use crate::remote::{Capabilities, CompleteOptions, ServiceError};
use crate::state::{Checkpoint, StateDb};

const KIB: u64 = 1024;
const PART: u64 = 128 * KIB;

struct Bed {
    dir: tempfile::TempDir,
    remote: Arc<MemoryRemote>,
    state: StateDb,
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        part_size: PART,
        threads: 1,
        multipart_threshold: PART,
        // Well above the kernel's timestamp tick, far below the 2 s default: keeps tests quick.
        racy_window: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

impl Bed {
    async fn new(remote: MemoryRemote) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = StateDb::open(&dir.path().join("state.db")).unwrap();
        let remote = Arc::new(remote);
        remote.create_bucket("bkt").await.unwrap();
        Bed { dir, remote, state }
    }

    fn engine(&self, config: EngineConfig) -> Engine {
        Engine::new(self.remote.clone(), self.state.clone(), config).unwrap()
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn spec(&self, path: &Path) -> UploadSpec {
        UploadSpec {
            path: path.to_path_buf(),
            bucket: "bkt".into(),
            key: "obj".into(),
            options: ObjectOptions::default(),
        }
    }

    fn object(&self) -> Vec<u8> {
        self.remote.object("bkt", "obj").map(|b| b.to_vec()).unwrap_or_default()
    }

    fn checkpoints(&self) -> usize {
        self.state.list_checkpoints().unwrap().len()
    }
}

async fn upload(engine: &Engine, spec: &UploadSpec) -> Result<UploadOutcome, EngineError> {
    engine.upload(spec, None, &CancellationToken::new()).await
}

/// Hang the `n`-th UploadPart request (1-based) and report when it is reached.
fn crash_at_part(remote: &MemoryRemote, n: u32) -> Arc<tokio::sync::Notify> {
    let reached = Arc::new(tokio::sync::Notify::new());
    let signal = reached.clone();
    let seen = AtomicU32::new(0);
    remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) + 1 == n {
            signal.notify_one();
            return HookAction::Hang;
        }
        HookAction::Proceed
    });
    reached
}

/// Run an upload until the hook reports the crash point, then drop it (as kill -9 would stop it).
async fn run_until_crash(engine: &Engine, spec: &UploadSpec, reached: Arc<tokio::sync::Notify>) {
    tokio::select! {
        r = upload(engine, spec) => panic!("upload should have hung at the crash point, got {r:?}"),
        _ = reached.notified() => {}
    }
}

#[tokio::test]
async fn small_file_goes_in_one_put_and_is_recorded() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data(5000, 1);
    let path = bed.file("small", &content);
    let engine = bed.engine(config());
    let out = upload(&engine, &bed.spec(&path)).await.unwrap();
    assert_eq!(bed.object(), content);
    assert_eq!(out.crc64, crate::checksum::crc64(&content));
    assert_eq!(bed.remote.count("PutObject"), 1);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 0);
    let synced = bed.state.synced("bkt", "obj").unwrap().unwrap();
    assert_eq!((synced.size, synced.crc64), (5000, out.crc64));
    // An empty file is a PutObject too.
    let empty = bed.file("empty", b"");
    let out = upload(&engine, &bed.spec(&empty)).await.unwrap();
    assert_eq!(out.size, 0);
    assert!(bed.object().is_empty());
}

#[tokio::test]
async fn multipart_upload_verifies_and_cleans_up() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 3 + 777) as usize, 2);
    let path = bed.file("big", &content);
    let engine = bed.engine(EngineConfig { threads: 3, ..config() });
    let (tx, rx) = tokio::sync::watch::channel(Progress::default());
    let out = engine.upload(&bed.spec(&path), Some(&tx), &CancellationToken::new()).await.unwrap();
    assert_eq!(bed.object(), content);
    assert_eq!(out.part_blake3.len(), 4);
    assert_eq!((out.parts_sent, out.parts_reused, out.passes, out.resumed), (4, 0, 1, false));
    assert_eq!(out.crc64, crate::checksum::crc64(&content));
    assert!(out.etag.ends_with("-4\""), "{}", out.etag);
    assert_eq!(bed.remote.pending_uploads(), 0);
    assert_eq!(bed.checkpoints(), 0);
    let last = *rx.borrow();
    assert_eq!(
        (last.phase, last.done_bytes, last.total_bytes),
        (Phase::Done, content.len() as u64, content.len() as u64)
    );
    let synced = bed.state.synced("bkt", "obj").unwrap().unwrap();
    assert_eq!(synced.part_blake3, out.part_blake3);
    assert_eq!(synced.part_size, PART);
}

#[tokio::test]
async fn resume_after_crash_sends_only_missing_parts() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 6) as usize, 3);
    let path = bed.file("big", &content);
    let engine = bed.engine(config());
    let spec = bed.spec(&path);
    run_until_crash(&engine, &spec, crash_at_part(&bed.remote, 4)).await;
    assert_eq!(bed.remote.count("UploadPart"), 3);
    assert_eq!(bed.checkpoints(), 1, "the checkpoint survives the crash");

    bed.remote.clear_hook();
    let engine = bed.engine(config());
    let out = upload(&engine, &spec).await.unwrap();
    assert_eq!(bed.object(), content);
    assert!(out.resumed);
    assert_eq!((out.parts_sent, out.parts_reused), (3, 3), "only the parts the server did not have");
    assert_eq!(bed.remote.count("UploadPart"), 6);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1, "same upload id");
    assert_eq!(bed.remote.pending_uploads(), 0);
}

#[tokio::test]
async fn overwrite_in_the_middle_resends_only_that_part() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let mut content = data((PART * 5) as usize, 4);
    let path = bed.file("big", &content);
    let target = path.clone();
    // While part 4 is being requested, overwrite bytes inside part 2 (already sent).
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 3 {
            let mut f = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
            f.seek(SeekFrom::Start(PART + 100)).unwrap();
            f.write_all(b"CHANGED!").unwrap();
        }
        HookAction::Proceed
    });
    let engine = bed.engine(config());
    let out = upload(&engine, &bed.spec(&path)).await.unwrap();
    content[(PART + 100) as usize..(PART + 108) as usize].copy_from_slice(b"CHANGED!");
    assert_eq!(bed.object(), content, "the object is the final file");
    assert_eq!(out.passes, 2);
    assert_eq!(EngineStats::get(&engine.stats().parts_resent), 1, "only part 2 was sent again");
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1, "same upload id");
    assert_eq!(bed.remote.count("UploadPart"), 6);
}

#[tokio::test]
async fn append_during_upload_adds_parts_in_the_same_upload() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let mut content = data((PART * 3 + 10) as usize, 5);
    let path = bed.file("log", &content);
    let tail = data((PART * 2) as usize, 6);
    let (target, tail2) = (path.clone(), tail.clone());
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            let mut f = std::fs::OpenOptions::new().append(true).open(&target).unwrap();
            f.write_all(&tail2).unwrap();
        }
        HookAction::Proceed
    });
    let engine = bed.engine(config());
    let out = upload(&engine, &bed.spec(&path)).await.unwrap();
    content.extend_from_slice(&tail);
    assert_eq!(bed.object(), content);
    assert_eq!(out.passes, 2);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1);
    // Parts 1-2 kept; the old short last part 4 (10 bytes) is re-sent full size; parts 5-6 are new.
    assert!(EngineStats::get(&engine.stats().parts_resent) <= 1, "at most the old last part is re-sent");
}

async fn truncate_during_upload(capabilities: Capabilities) -> (Bed, Engine, Vec<u8>, UploadOutcome) {
    let bed = Bed::new(MemoryRemote::with_capabilities(capabilities)).await;
    let content = data((PART * 6) as usize, 7);
    let path = bed.file("big", &content);
    let target = path.clone();
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 4 {
            std::fs::OpenOptions::new().write(true).open(&target).unwrap().set_len(PART * 2 + 5).unwrap();
        }
        HookAction::Proceed
    });
    let engine = bed.engine(config());
    let out = upload(&engine, &bed.spec(&path)).await.unwrap();
    let expected = content[..(PART * 2 + 5) as usize].to_vec();
    (bed, engine, expected, out)
}

#[tokio::test]
async fn truncate_leaves_extra_parts_out_where_the_server_allows_it() {
    let caps = Capabilities { object_crc64: true, object_crc64nvme: true, complete_with_part_subset: true };
    let (bed, engine, expected, out) = truncate_during_upload(caps).await;
    assert_eq!(bed.object(), expected);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1);
    assert_eq!(bed.remote.pending_uploads(), 0);
    assert_eq!(out.part_blake3.len(), 3);
    assert_eq!(EngineStats::get(&engine.stats().uploads_aborted), 0);
}

#[tokio::test]
async fn truncate_restarts_cleanly_where_the_server_wants_every_part() {
    let caps = Capabilities { object_crc64: true, object_crc64nvme: true, complete_with_part_subset: false };
    let (bed, engine, expected, _) = truncate_during_upload(caps).await;
    assert_eq!(bed.object(), expected);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 2, "a fresh upload after the refused Complete");
    assert_eq!(bed.remote.pending_uploads(), 0, "the old upload was aborted");
    assert_eq!(EngineStats::get(&engine.stats().uploads_aborted), 1);
}

#[tokio::test]
async fn vanished_upload_on_resume_starts_a_new_one() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 4) as usize, 8);
    let path = bed.file("big", &content);
    let spec = bed.spec(&path);
    run_until_crash(&bed.engine(config()), &spec, crash_at_part(&bed.remote, 3)).await;
    bed.remote.clear_hook();
    // Someone (a lifecycle rule, another tool) aborted the upload meanwhile.
    let Some(Checkpoint::Valid { upload: rec, .. }) = bed.state.find_checkpoint(&path, "bkt", "obj").unwrap() else {
        panic!("expected a valid checkpoint");
    };
    bed.remote.abort_multipart("bkt", "obj", &rec.upload_id).await.unwrap();
    let out = upload(&bed.engine(config()), &spec).await.unwrap();
    assert_eq!(bed.object(), content);
    assert!(!out.resumed);
    assert_eq!(out.parts_sent, 4);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 2);
}

/// Kill a run while it waits for the answer to its Complete, which the server carries out anyway: the
/// checkpoint then names an upload that no longer exists, and the object holds the file.
async fn killed_after_the_server_completed(bed: &Bed, spec: &UploadSpec) {
    let reached = Arc::new(tokio::sync::Notify::new());
    let signal = reached.clone();
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "CompleteMultipartUpload" {
            signal.notify_one();
            return HookAction::Hang;
        }
        HookAction::Proceed
    });
    run_until_crash(&bed.engine(config()), spec, reached).await;
    bed.remote.clear_hook();
    let Some(Checkpoint::Valid { upload, parts }) = bed.state.find_checkpoint(&spec.path, "bkt", "obj").unwrap() else {
        panic!("expected a valid checkpoint");
    };
    // The in-memory remote does not check the parts' CRC-64/NVME.
    let list: Vec<_> = parts.iter().map(|p| multipart::completed_part(p, 0)).collect();
    bed.remote.complete_multipart("bkt", "obj", &upload.upload_id, &list, &CompleteOptions::default()).await.unwrap();
}

#[tokio::test]
async fn a_run_killed_after_the_server_completed_is_finished_without_sending_anything() {
    let nvme_only = Capabilities { object_crc64: false, object_crc64nvme: true, complete_with_part_subset: true };
    for remote in [MemoryRemote::new(), MemoryRemote::with_capabilities(nvme_only)] {
        let bed = Bed::new(remote).await;
        let content = data((PART * 4 + 5) as usize, 20);
        let path = bed.file("big", &content);
        let spec = bed.spec(&path);
        killed_after_the_server_completed(&bed, &spec).await;
        let sent_before = bed.remote.count("UploadPart");

        let out = upload(&bed.engine(config()), &spec).await.unwrap();
        assert!(out.resumed);
        assert_eq!((out.parts_sent, out.parts_reused, out.bytes_sent), (0, 5, 0));
        assert_eq!(bed.remote.count("UploadPart"), sent_before, "nothing sent again");
        assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1);
        assert_eq!(bed.object(), content);
        assert_eq!(bed.checkpoints(), 0);
        assert_eq!(bed.state.synced("bkt", "obj").unwrap().map(|s| s.crc64), Some(out.crc64));
    }
}

#[tokio::test]
async fn a_run_killed_after_the_server_completed_uploads_a_file_changed_since() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let mut content = data((PART * 4 + 5) as usize, 21);
    let path = bed.file("big", &content);
    let spec = bed.spec(&path);
    killed_after_the_server_completed(&bed, &spec).await;
    // Same size, one byte different in part 2: the object is not this file any more.
    content[PART as usize + 7] ^= 0xFF;
    std::fs::write(&path, &content).unwrap();

    let out = upload(&bed.engine(config()), &spec).await.unwrap();
    assert_eq!(bed.object(), content);
    assert_eq!((out.parts_sent, out.resumed), (5, false), "a fresh upload of the new content");
}

#[tokio::test]
async fn changed_options_abort_the_old_upload() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 4) as usize, 9);
    let path = bed.file("big", &content);
    let spec = bed.spec(&path);
    run_until_crash(&bed.engine(config()), &spec, crash_at_part(&bed.remote, 2)).await;
    bed.remote.clear_hook();
    let mut spec2 = spec.clone();
    spec2.options.content_type = Some("text/plain".into());
    upload(&bed.engine(config()), &spec2).await.unwrap();
    assert_eq!(bed.object(), content);
    assert_eq!(bed.remote.pending_uploads(), 0, "the upload with the old options was aborted");
    assert_eq!(bed.remote.count("AbortMultipartUpload"), 1);
}

#[tokio::test]
async fn a_file_that_never_settles_is_not_published() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 3) as usize, 10);
    let path = bed.file("busy", &content);
    let target = path.clone();
    let counter = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let mut f = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
            f.write_all(&n.to_le_bytes()).unwrap();
        }
        HookAction::Proceed
    });
    let engine = bed.engine(EngineConfig { max_passes: 3, ..config() });
    let err = upload(&engine, &bed.spec(&path)).await.unwrap_err();
    assert!(matches!(err, EngineError::KeepsChanging { passes: 3, .. }), "{err}");
    assert!(err.to_string().contains("kept changing"));
    assert!(bed.remote.object("bkt", "obj").is_none(), "nothing torn was published");
    assert_eq!(bed.checkpoints(), 1, "parts sent so far are kept for later");
}

#[tokio::test]
async fn server_side_corruption_is_never_called_synced() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 3) as usize, 16);
    let path = bed.file("big", &content);
    // The server acknowledges the bytes it received but stores others: Complete's CRC gives it away.
    bed.remote.corrupt_stored_parts(true);
    let err = upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap_err();
    assert!(matches!(err, EngineError::Integrity { server: Some(_), .. }), "{err}");
    assert!(err.to_string().contains("not marked synced"));
    assert!(bed.state.synced("bkt", "obj").unwrap().is_none());
    assert_eq!(bed.checkpoints(), 0, "the consumed upload id is forgotten");
    // A healthy server later: the next attempt uploads again and verifies.
    bed.remote.corrupt_stored_parts(false);
    upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap();
    assert_eq!(bed.object(), content);
}

#[tokio::test]
async fn failed_complete_is_finished_by_the_next_attempt() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 3) as usize, 11);
    let path = bed.file("big", &content);
    let injected = Arc::new(Mutex::new(false));
    let flag = injected.clone();
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "CompleteMultipartUpload" && !*flag.lock().unwrap() {
            *flag.lock().unwrap() = true;
            return HookAction::Fail(
                ServiceError {
                    op: "CompleteMultipartUpload",
                    status: 500,
                    code: "InternalError".into(),
                    message: String::new(),
                    request_id: None,
                    host_id: None,
                    ec: None,
                    server_time: None,
                }
                .into(),
            );
        }
        HookAction::Proceed
    });
    let err = upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap_err();
    assert!(err.remote().is_some(), "{err}");
    assert!(bed.state.synced("bkt", "obj").unwrap().is_none());
    // The next attempt resumes and completes; all parts are reused.
    bed.remote.clear_hook();
    let out = upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap();
    assert_eq!((out.parts_sent, out.parts_reused), (0, 3));
    assert_eq!(bed.object(), content);
}

#[tokio::test]
async fn without_checkpoints_a_failed_upload_is_aborted() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 3) as usize, 12);
    let path = bed.file("big", &content);
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            return HookAction::Fail(
                ServiceError {
                    op: "UploadPart",
                    status: 403,
                    code: "AccessDenied".into(),
                    message: String::new(),
                    request_id: None,
                    host_id: None,
                    ec: None,
                    server_time: None,
                }
                .into(),
            );
        }
        HookAction::Proceed
    });
    let engine = bed.engine(EngineConfig { keep_checkpoint: false, ..config() });
    let err = upload(&engine, &bed.spec(&path)).await.unwrap_err();
    assert_eq!(err.remote().and_then(|e| e.code()), Some("AccessDenied"));
    assert_eq!(bed.remote.pending_uploads(), 0, "no orphan upload");
    assert_eq!(bed.checkpoints(), 0);
}

#[tokio::test]
async fn graceful_cancel_keeps_a_resumable_checkpoint() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 5) as usize, 13);
    let path = bed.file("big", &content);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            trigger.cancel();
        }
        HookAction::Proceed
    });
    let engine = bed.engine(config());
    let err = engine.upload(&bed.spec(&path), None, &cancel).await.unwrap_err();
    assert!(matches!(err, EngineError::Cancelled { kept: true, .. }), "{err}");
    assert_eq!(bed.remote.count("UploadPart"), 2, "the part in flight finished, no new one started");
    bed.remote.clear_hook();
    let out = upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap();
    assert_eq!((out.parts_sent, out.parts_reused), (3, 2));
    assert_eq!(bed.object(), content);
}

#[tokio::test]
async fn replaced_file_uploads_the_new_content() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 4) as usize, 14);
    let path = bed.file("doc", &content);
    let newer = data((PART * 4 + 3) as usize, 15);
    let (target, newer2, dir) = (path.clone(), newer.clone(), bed.dir.path().to_path_buf());
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            // An editor save: write a temp file, rename it over the target.
            let tmp = dir.join("doc.tmp");
            std::fs::write(&tmp, &newer2).unwrap();
            std::fs::rename(&tmp, &target).unwrap();
        }
        HookAction::Proceed
    });
    upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap();
    assert_eq!(bed.object(), newer);
}

#[tokio::test]
async fn part_size_limits_are_clear_errors() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let err =
        Engine::new(bed.remote.clone(), bed.state.clone(), EngineConfig { part_size: 1000, ..config() }).unwrap_err();
    assert!(err.to_string().contains("between 100K and 5G"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// Model-based test: random sequences of (upload with a crash at part k | modify the file | full upload),
// checked against the reference model "after a successful upload the object equals the file, no upload is
// left open, no checkpoint is left, and a resume never re-sends a part the server has with the same bytes".

#[derive(Debug, Clone)]
enum Step {
    /// Start an upload and kill it when the k-th UploadPart request is made.
    CrashAt(u32),
    Overwrite {
        at: u64,
        len: u16,
        seed: u64,
    },
    Append {
        len: u32,
        seed: u64,
    },
    Truncate {
        to: u64,
    },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (1u32..8).prop_map(Step::CrashAt),
        (0u64..(PART * 6), 1u16..4000, any::<u64>()).prop_map(|(at, len, seed)| Step::Overwrite { at, len, seed }),
        (1u32..(PART as u32 * 2), any::<u64>()).prop_map(|(len, seed)| Step::Append { len, seed }),
        (0u64..(PART * 6)).prop_map(|to| Step::Truncate { to }),
    ]
}

fn apply(path: &Path, model: &mut Vec<u8>, step: &Step) {
    match *step {
        Step::CrashAt(_) => {}
        Step::Overwrite { at, len, seed } => {
            let at = at.min(model.len() as u64) as usize;
            let bytes = data(len as usize, seed);
            let end = (at + bytes.len()).max(model.len());
            model.resize(end, 0);
            model[at..at + bytes.len()].copy_from_slice(&bytes);
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.seek(SeekFrom::Start(at as u64)).unwrap();
            f.write_all(&bytes).unwrap();
        }
        Step::Append { len, seed } => {
            let bytes = data(len as usize, seed);
            model.extend_from_slice(&bytes);
            std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(&bytes).unwrap();
        }
        Step::Truncate { to } => {
            let to = to.min(model.len() as u64);
            model.truncate(to as usize);
            std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(to).unwrap();
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
    #[test]
    fn random_crashes_and_modifications_converge(
        initial in (PART * 2)..(PART * 6),
        steps in proptest::collection::vec(step(), 1..7),
        subset_ok in proptest::bool::ANY,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let caps = Capabilities { object_crc64: true, object_crc64nvme: true, complete_with_part_subset: subset_ok };
            let bed = Bed::new(MemoryRemote::with_capabilities(caps)).await;
            let mut model = data(initial as usize, initial);
            let path = bed.file("f", &model);
            let spec = bed.spec(&path);
            for s in &steps {
                match s {
                    Step::CrashAt(k) => {
                        let reached = crash_at_part(&bed.remote, *k);
                        let engine = bed.engine(config());
                        tokio::select! {
                            r = upload(&engine, &spec) => { r.unwrap(); }
                            _ = reached.notified() => {}
                        }
                        bed.remote.clear_hook();
                    }
                    other => apply(&path, &mut model, other),
                }
            }
            let before = bed.remote.count("UploadPart");
            let engine = bed.engine(config());
            let out = upload(&engine, &spec).await.unwrap();
            assert_eq!(bed.object(), model, "object equals the final file");
            assert_eq!(out.crc64, crate::checksum::crc64(&model));
            assert_eq!(bed.remote.pending_uploads(), 0, "no unfinished upload left");
            assert_eq!(bed.checkpoints(), 0, "no checkpoint left");
            // Waste bound: the final run never sends more parts than the file has (plus one restart's worth
            // when the server refused a Complete that left parts out).
            let parts = model.len().div_ceil(PART as usize).max(1) as u64;
            let sent = bed.remote.count("UploadPart") - before;
            let bound = if subset_ok { parts } else { 2 * parts };
            assert!(sent <= bound, "final run sent {sent} parts for a {parts}-part file");
        });
    }
}

#[tokio::test]
async fn a_target_being_uploaded_elsewhere_is_refused() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let path = bed.file("f", &data(1000, 17));
    let held = bed.state.claim(&path, "bkt", "obj", 1000).unwrap();
    let err = upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap_err();
    assert!(matches!(err, EngineError::State(StateError::Claimed { .. })), "{err}");
    assert!(err.to_string().contains(&std::process::id().to_string()), "names the owner: {err}");
    assert_eq!(bed.remote.count("PutObject"), 0);
    held.release().unwrap();
    upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap();
    assert!(bed.state.list_in_flight().unwrap().is_empty(), "the claim is released after success");
}

/// A server that confirms only CRC-64/NVME (the S3 dialect): resumed parts contribute the NVME CRC of
/// their re-hashed bytes, and a wrong object is still caught.
#[tokio::test]
async fn crc64nvme_servers_are_verified_too() {
    let caps = Capabilities { object_crc64: false, object_crc64nvme: true, complete_with_part_subset: true };
    let bed = Bed::new(MemoryRemote::with_capabilities(caps)).await;
    let content = data((PART * 5 + 99) as usize, 18);
    let path = bed.file("big", &content);
    let spec = bed.spec(&path);
    run_until_crash(&bed.engine(config()), &spec, crash_at_part(&bed.remote, 4)).await;
    bed.remote.clear_hook();
    let out = upload(&bed.engine(config()), &spec).await.unwrap();
    assert_eq!((out.parts_reused, out.parts_sent), (3, 3));
    assert_eq!(bed.object(), content);

    let other = bed.file("other", &data((PART * 3) as usize, 19));
    bed.remote.corrupt_stored_parts(true);
    let err = upload(&bed.engine(config()), &bed.spec(&other)).await.unwrap_err();
    assert!(matches!(err, EngineError::Integrity { .. }), "{err}");
}

/// A "small" file that grows past the threshold between single-PUT attempts is handed to the multipart
/// path, never read whole into memory.
#[tokio::test]
async fn a_small_file_that_grows_goes_multipart() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let mut content = data(5000, 20);
    let path = bed.file("grows", &content);
    let tail = data((PART * 3) as usize, 21);
    let (target, tail2) = (path.clone(), tail.clone());
    let grown = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "PutObject" && grown.fetch_add(1, Ordering::SeqCst) == 0 {
            std::fs::OpenOptions::new().append(true).open(&target).unwrap().write_all(&tail2).unwrap();
        }
        HookAction::Proceed
    });
    let out = upload(&bed.engine(config()), &bed.spec(&path)).await.unwrap();
    content.extend_from_slice(&tail);
    assert_eq!(bed.object(), content);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1, "the grown file went multipart");
    assert_eq!(out.part_blake3.len(), 4);
}

/// The file metadata the object `obj` carries, as HEAD reports it.
async fn carried(bed: &Bed) -> Option<crate::filemeta::FileMeta> {
    let info = bed.remote.head_object("bkt", "obj").await.unwrap().expect("the object");
    crate::filemeta::FileMeta::from_pairs(&info.metadata)
}

fn meta_of(path: &Path) -> crate::filemeta::FileMeta {
    crate::filemeta::FileMeta::of(&std::fs::metadata(path).unwrap())
}

#[tokio::test]
async fn a_chmod_during_a_multipart_upload_ends_up_on_the_object() {
    use std::os::unix::fs::PermissionsExt;
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 4) as usize, 31);
    let path = bed.file("big", &content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let target = path.clone();
    // Initiate carries 0644; while part 3 is requested the file becomes 0600 (same bytes: ctime moves).
    let seen = AtomicU32::new(0);
    bed.remote.set_hook(move |r: &RequestInfo| {
        if r.op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 2 {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        HookAction::Proceed
    });
    let engine = bed.engine(config());
    let out = upload(&engine, &bed.spec(&path)).await.unwrap();
    assert_eq!(bed.object(), content);
    assert_eq!(bed.remote.count("InitiateMultipartUpload"), 1);
    assert_eq!(bed.remote.count("CopyObject"), 1, "the metadata is set once, server-side, after Complete");
    let now = meta_of(&path);
    assert_eq!(now.mode, 0o100600);
    assert_eq!(carried(&bed).await, Some(now));
    assert_eq!(out.object_meta, Some(now));
    let row = bed.state.synced("bkt", "obj").unwrap().unwrap();
    assert_eq!(row.object_meta, Some(now.encode()));
    assert_eq!(row.etag, out.etag);
}

#[tokio::test]
async fn a_resumed_upload_learns_what_its_object_carries() {
    let bed = Bed::new(MemoryRemote::new()).await;
    let content = data((PART * 4) as usize, 32);
    let path = bed.file("big", &content);
    let spec = bed.spec(&path);
    run_until_crash(&bed.engine(config()), &spec, crash_at_part(&bed.remote, 3)).await;
    bed.remote.clear_hook();
    let out = upload(&bed.engine(config()), &spec).await.unwrap();
    assert!(out.resumed);
    // Initiate (by the first run) carried this file's metadata: HEAD says so, no copy is needed.
    assert_eq!(bed.remote.count("CopyObject"), 0);
    assert_eq!(out.object_meta, Some(meta_of(&path)));
    assert_eq!(carried(&bed).await, Some(meta_of(&path)));

    // Without file metadata nothing is sent or recorded.
    let engine = bed.engine(EngineConfig { file_metadata: false, ..config() });
    std::fs::write(&path, data(100, 33)).unwrap();
    let out = upload(&engine, &spec).await.unwrap();
    assert_eq!(out.object_meta, None);
    assert_eq!(carried(&bed).await, None);
    assert_eq!(bed.state.synced("bkt", "obj").unwrap().unwrap().object_meta, None);
}
