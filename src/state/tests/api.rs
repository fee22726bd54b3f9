//! Round trips of every method.

use super::*;

#[test]
fn checkpoint_round_trip() {
    let (_dir, _path, db) = temp_db();
    let local = Path::new("/data/big.iso");
    let id = db.begin_upload(&new_upload(local, "bkt", "dir/big.iso", "UPID-1")).unwrap();

    let (upload, parts) = valid(db.find_checkpoint(local, "bkt", "dir/big.iso").unwrap().unwrap());
    assert_eq!(upload.id, id);
    assert_eq!(upload.local_path, local);
    assert_eq!(
        (upload.bucket.as_str(), upload.key.as_str(), upload.upload_id.as_str()),
        ("bkt", "dir/big.iso", "UPID-1")
    );
    assert_eq!(upload.part_size, 5 << 20);
    assert_eq!(upload.snapshot, snap(1));
    assert_eq!(upload.options_fingerprint, "ct=application/octet-stream");
    assert!(upload.created_at <= now() && upload.created_at > now() - Duration::from_secs(3600));
    assert!(parts.is_empty());

    // Other path, bucket or key: no checkpoint.
    assert!(db.find_checkpoint(Path::new("/data/other"), "bkt", "dir/big.iso").unwrap().is_none());
    assert!(db.find_checkpoint(local, "other", "dir/big.iso").unwrap().is_none());
    assert!(db.find_checkpoint(local, "bkt", "dir/other").unwrap().is_none());

    // Parts come back ordered by number; record_part replaces by number.
    for n in [3, 1, 2] {
        db.record_part(id, &part(n)).unwrap();
    }
    let mut replaced = part(2);
    replaced.etag = "\"REPLACED\"".into();
    replaced.size = 17;
    db.record_part(id, &replaced).unwrap();
    let (_, parts) = valid(db.find_checkpoint(local, "bkt", "dir/big.iso").unwrap().unwrap());
    assert_eq!(parts, vec![part(1), replaced.clone(), part(3)]);

    db.remove_parts(id, &[1, 3, 99]).unwrap();
    let (_, parts) = valid(db.find_checkpoint(local, "bkt", "dir/big.iso").unwrap().unwrap());
    assert_eq!(parts, vec![replaced.clone()]);

    db.update_snapshot(id, snap(7)).unwrap();
    let (after, parts) = valid(db.find_checkpoint(local, "bkt", "dir/big.iso").unwrap().unwrap());
    assert_eq!(after.snapshot, snap(7));
    assert_eq!(UploadRecord { snapshot: snap(1), ..after.clone() }, upload);
    assert_eq!(parts.len(), 1);

    let listed = db.list_checkpoints().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id(), id);
    assert_eq!(valid(listed[0].clone()), (after, vec![replaced]));

    db.delete_upload(id).unwrap();
    assert!(db.find_checkpoint(local, "bkt", "dir/big.iso").unwrap().is_none());
    assert!(db.list_checkpoints().unwrap().is_empty());
    let orphans: i64 = raw(db.path().unwrap()).query_row("SELECT count(*) FROM parts", [], |r| r.get(0)).unwrap();
    assert_eq!(orphans, 0, "deleting an upload deletes its parts");
    // Idempotent.
    db.delete_upload(id).unwrap();
}

#[test]
fn begin_upload_refuses_a_second_checkpoint_for_the_same_target() {
    let db = StateDb::open_in_memory().unwrap();
    let local = Path::new("/data/f");
    let id = db.begin_upload(&new_upload(local, "b", "k", "U1")).unwrap();
    match db.begin_upload(&new_upload(local, "b", "k", "U2")) {
        Err(StateError::CheckpointExists { existing, bucket, key, local_path, .. }) => {
            assert_eq!((existing, bucket.as_str(), key.as_str(), local_path.as_path()), (id, "b", "k", local));
        }
        other => panic!("expected CheckpointExists, got {other:?}"),
    }
    // The first checkpoint is untouched; other targets are independent.
    assert_eq!(valid(db.find_checkpoint(local, "b", "k").unwrap().unwrap()).0.upload_id, "U1");
    db.begin_upload(&new_upload(local, "b", "k2", "U3")).unwrap();
    db.begin_upload(&new_upload(Path::new("/data/g"), "b", "k", "U4")).unwrap();
    db.begin_upload(&new_upload(local, "b2", "k", "U5")).unwrap();
    assert_eq!(db.list_checkpoints().unwrap().len(), 4);
}

#[test]
fn begin_upload_commits_with_synchronous_full_and_restores_normal() {
    let (_dir, _path, db) = temp_db();
    db.begin_upload(&new_upload(Path::new("/f"), "b", "k", "U")).unwrap();
    assert_eq!(db.inner.begin_sync_level.load(std::sync::atomic::Ordering::Relaxed), 2, "FULL inside the commit");
    let level: i64 = db.run(|c, _| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)).unwrap();
    assert_eq!(level, 1, "NORMAL again afterwards");
    let mode: String = db.run(|c, _| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn ids_are_never_reused_and_stale_ids_are_refused() {
    let db = StateDb::open_in_memory().unwrap();
    let local = Path::new("/data/f");
    let first = db.begin_upload(&new_upload(local, "b", "k", "U1")).unwrap();
    db.delete_upload(first).unwrap();
    let second = db.begin_upload(&new_upload(local, "b", "k", "U2")).unwrap();
    assert!(second > first, "AUTOINCREMENT: a stale id never names a newer checkpoint");
    for result in [db.record_part(first, &part(1)), db.update_snapshot(first, snap(2)), db.remove_parts(first, &[1])] {
        assert!(matches!(result, Err(StateError::NoSuchUpload { id, .. }) if id == first), "{result:?}");
    }
    assert!(valid(db.find_checkpoint(local, "b", "k").unwrap().unwrap()).1.is_empty());
}

#[test]
fn complete_deletes_the_checkpoint_and_upserts_the_synced_row() {
    let (_dir, path, db) = temp_db();
    let local = Path::new("/data/k");
    let id = db.begin_upload(&new_upload(local, "b", "k", "U")).unwrap();
    db.record_part(id, &part(1)).unwrap();
    db.record_part(id, &part(2)).unwrap();
    db.mark_failed(local, "b", "k", "earlier failure", None).unwrap();

    let mut file = synced_file("b", "k", 2);
    file.local_path = local.to_path_buf();
    db.complete(Some(id), &file).unwrap();
    assert!(db.find_checkpoint(local, "b", "k").unwrap().is_none());
    assert_eq!(db.synced("b", "k").unwrap(), Some(file.clone()));
    assert_eq!(db.file_status("b", "k").unwrap(), None, "complete clears the failure");
    let parts: i64 = raw(&path).query_row("SELECT count(*) FROM parts", [], |r| r.get(0)).unwrap();
    assert_eq!(parts, 0);

    // A later version replaces the row (keyed by bucket/key), without a checkpoint (a single PutObject).
    let newer = SyncedFile { etag: "\"v2\"".into(), part_blake3: vec![[9; 32]], part_size: 3, size: 3, ..file };
    db.complete(None, &newer).unwrap();
    assert_eq!(db.synced("b", "k").unwrap(), Some(newer.clone()));
    assert_eq!(db.counts().unwrap().synced_files, 1);
    assert_eq!(db.synced("b", "other").unwrap(), None);
    assert_eq!(db.synced("other", "k").unwrap(), None);

    db.forget_synced("b", "k").unwrap();
    assert_eq!(db.synced("b", "k").unwrap(), None);
    db.forget_synced("b", "k").unwrap();
}

#[test]
fn complete_rolls_back_as_a_whole() {
    let (_dir, path, db) = temp_db();
    let local = Path::new("/data/k");
    let id = db.begin_upload(&new_upload(local, "b", "k", "U")).unwrap();
    // Make the synced insert fail inside the transaction: the checkpoint must survive.
    raw(&path)
        .execute_batch("CREATE TRIGGER no_synced BEFORE INSERT ON synced BEGIN SELECT RAISE(ABORT, 'nope'); END;")
        .unwrap();
    assert!(matches!(db.complete(Some(id), &synced_file("b", "k", 1)), Err(StateError::Sqlite { .. })));
    assert!(db.find_checkpoint(local, "b", "k").unwrap().is_some());
}

#[test]
fn non_utf8_paths_round_trip() {
    let (_dir, _path, db) = temp_db();
    let local = non_utf8_path();
    assert!(local.to_str().is_none());
    let id = db.begin_upload(&new_upload(&local, "b", "k", "U")).unwrap();
    db.record_part(id, &part(1)).unwrap();
    let (upload, _) = valid(db.find_checkpoint(&local, "b", "k").unwrap().unwrap());
    assert_eq!(upload.local_path, local);
    assert_eq!(upload.local_path.as_os_str().as_bytes(), local.as_os_str().as_bytes());
    assert_eq!(valid(db.list_checkpoints().unwrap().remove(0)).0.local_path, local);

    let file = SyncedFile { local_path: local.clone(), ..synced_file("b", "k", 1) };
    db.complete(Some(id), &file).unwrap();
    assert_eq!(db.synced("b", "k").unwrap().unwrap().local_path, local);

    db.mark_failed(&local, "b", "k", "x", None).unwrap();
    assert_eq!(db.file_status("b", "k").unwrap().unwrap().local_path, local);
    let claim = db.claim(&local, "b", "k", 1).unwrap();
    assert_eq!(db.list_in_flight().unwrap()[0].local_path, local);
    claim.release().unwrap();
}

#[test]
fn paths_and_in_memory() {
    let (_dir, path, db) = temp_db();
    assert_eq!(db.path(), Some(path.as_path()));
    let mem = StateDb::open_in_memory().unwrap();
    assert_eq!(mem.path(), None);
    // Two in-memory databases are private to their handles; clones share one.
    let other = StateDb::open_in_memory().unwrap();
    mem.complete(None, &synced_file("b", "k", 1)).unwrap();
    assert!(other.synced("b", "k").unwrap().is_none());
    assert!(mem.clone().synced("b", "k").unwrap().is_some());
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<StateDb>();
    assert!(format!("{db:?}").contains("state.db"));
}

#[test]
fn synced_listing_is_paged_in_key_order_within_a_prefix() {
    let (_dir, _path, db) = temp_db();
    let mut keys: Vec<String> = (0..700).map(|i| format!("photos/{i:04}.jpg")).collect();
    keys.extend(["photo", "photos", "photos0", "pho", "zz/top", "a"].map(String::from));
    for k in &keys {
        db.complete(None, &synced_file("b", k, 1)).unwrap();
    }
    db.complete(None, &synced_file("other-bucket", "photos/0001.jpg", 1)).unwrap();

    // Manual paging.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db.list_synced("b", "photos/", after.as_deref(), 64).unwrap();
        assert!(page.len() <= 64);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().key().to_string());
        seen.extend(page.into_iter().map(|e| match e {
            SyncedEntry::Valid(f) => {
                assert_eq!(f.bucket, "b");
                f.key
            }
            SyncedEntry::Damaged { reason, .. } => panic!("{reason}"),
        }));
    }
    let expected: Vec<String> = (0..700).map(|i| format!("photos/{i:04}.jpg")).collect();
    assert_eq!(seen, expected);

    // The iterator, with and without a prefix.
    let all: Vec<String> = db.iter_synced("b", "").map(|e| e.unwrap().key().to_string()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(db.iter_synced("b", "photos/").count(), 700);
    assert_eq!(db.iter_synced("b", "photo").count(), 703);
    assert_eq!(db.iter_synced("b", "nothing/").count(), 0);
    assert_eq!(db.iter_synced("other-bucket", "").count(), 1);
    // A cursor before the prefix starts at the prefix.
    assert_eq!(db.list_synced("b", "photos/", Some("a"), 1).unwrap()[0].key(), "photos/0000.jpg");
}

#[test]
fn lookups_by_content_and_by_inode() {
    let db = StateDb::open_in_memory().unwrap();
    let a = synced_file("b", "a", 2);
    let b = SyncedFile { key: "b".into(), ..a.clone() }; // same content and inode, other key
    let mut c = synced_file("b", "c", 3);
    c.snapshot.inode = 5;
    for f in [&a, &b, &c] {
        db.complete(None, f).unwrap();
    }
    let mut by_content = db.synced_by_content(a.size, a.crc64, 10).unwrap();
    by_content.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(by_content, vec![a.clone(), b.clone()]);
    assert_eq!(db.synced_by_content(a.size, a.crc64, 1).unwrap().len(), 1);
    assert!(db.synced_by_content(a.size + 1, a.crc64, 10).unwrap().is_empty());
    assert_eq!(db.synced_by_inode(c.snapshot.dev, 5, 10).unwrap(), vec![c.clone()]);
    assert_eq!(db.synced_by_inode(a.snapshot.dev, a.snapshot.inode, 10).unwrap().len(), 2);
    assert!(db.synced_by_inode(a.snapshot.dev ^ 1, a.snapshot.inode, 10).unwrap().is_empty());
}

#[test]
fn file_status_lifecycle_and_counts() {
    let db = StateDb::open_in_memory().unwrap();
    assert_eq!(db.counts().unwrap(), StateCounts::default());
    let paths: Vec<PathBuf> = (0..5).map(|i| PathBuf::from(format!("/d/{i}"))).collect();
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    db.mark_pending(paths.iter().zip(&keys).map(|(p, k)| (p.as_path(), "b", k.as_str()))).unwrap();
    let pending = db.list_status(FileState::Pending, None, 100).unwrap();
    assert_eq!(pending.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["k0", "k1", "k2", "k3", "k4"]);
    assert!(pending.iter().all(|s| s.attempts == 0 && s.last_error.is_none() && s.retry_at.is_none()));

    let retry = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    assert_eq!(db.mark_failed(&paths[1], "b", "k1", "connection reset", Some(retry)).unwrap(), 1);
    let long = "é".repeat(MAX_ERROR_LEN);
    assert_eq!(db.mark_failed(&paths[1], "b", "k1", &long, None).unwrap(), 2);
    let s = db.file_status("b", "k1").unwrap().unwrap();
    assert_eq!((s.state, s.attempts, s.retry_at), (FileState::Failed, 2, None));
    assert!(s.last_error.as_ref().unwrap().len() <= MAX_ERROR_LEN);
    db.mark_failed(&paths[3], "b", "k3", "permission denied", Some(retry)).unwrap();
    let failed = db.list_status(FileState::Failed, None, 100).unwrap();
    assert_eq!(failed.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["k1", "k3"]);
    assert_eq!(failed[1].retry_at, Some(retry));
    assert_eq!(failed[1].last_error.as_deref(), Some("permission denied"));
    // Paging.
    assert_eq!(db.list_status(FileState::Failed, Some(("b", "k1")), 100).unwrap().len(), 1);
    assert_eq!(db.list_status(FileState::Pending, None, 2).unwrap().len(), 2);

    // Queued again: pending, attempts and last error kept.
    db.mark_pending([(paths[1].as_path(), "b", "k1")]).unwrap();
    let s = db.file_status("b", "k1").unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (FileState::Pending, 2));

    let id = db.begin_upload(&new_upload(&paths[0], "b", "k0", "U")).unwrap();
    db.record_part(id, &part(1)).unwrap();
    db.complete(None, &synced_file("b", "k2", 2)).unwrap();
    db.clear_status("b", "k4").unwrap();
    let claim = db.claim(&paths[0], "b", "k0", 10).unwrap();
    let counts = db.counts().unwrap();
    assert_eq!(
        counts,
        StateCounts {
            checkpoints: 1,
            parts: 1,
            synced_files: 1,
            synced_bytes: 2 * (5 << 20),
            pending: 2, // k0, k1 (queued again)
            failed: 1,  // k3; k2 was synced, k4 cleared
            in_flight: 1,
        }
    );
    drop(claim);
    assert_eq!(db.counts().unwrap().in_flight, 0);
    assert!(serde_json::to_string(&counts).unwrap().contains("\"synced_files\":1"));
}

#[test]
fn claims_exclude_live_owners_and_free_dead_or_stale_ones() {
    let db = StateDb::open_in_memory().unwrap();
    let local = Path::new("/d/f");
    let claim = db.claim(local, "b", "k", 1000).unwrap();
    assert_eq!((claim.bucket(), claim.key()), ("b".to_string(), "k".to_string()));
    // Held by a live process (this one): refused, even from the same process.
    match db.claim(local, "b", "k", 1000) {
        Err(StateError::Claimed { owner_pid, .. }) => assert_eq!(owner_pid, std::process::id()),
        other => panic!("expected Claimed, got {other:?}"),
    }
    // Other targets are independent.
    let other = db.claim(local, "b", "k2", 5).unwrap();

    claim.progress(400).unwrap();
    claim.attach_upload(UploadRowId(7)).unwrap();
    claim.set_total_bytes(2000).unwrap();
    let inflight = db.list_in_flight().unwrap();
    assert_eq!(inflight.len(), 2);
    let f = &inflight[0];
    assert_eq!(
        (f.key.as_str(), f.done_bytes, f.total_bytes, f.upload, f.live),
        ("k", 400, 2000, Some(UploadRowId(7)), true)
    );
    assert_eq!(f.owner_pid, std::process::id());
    assert!(f.heartbeat_at >= f.started_at);

    claim.release().unwrap();
    drop(other); // dropping releases too
    assert!(db.list_in_flight().unwrap().is_empty());
    let again = db.claim(local, "b", "k", 1).unwrap();
    drop(again);

    // A claim of a process that no longer runs is free (i32::MAX is above any pid_max).
    let dead = db.claim_for_test(local, "b", "k", i32::MAX as u32, now()).unwrap();
    assert!(!db.list_in_flight().unwrap()[0].live);
    let taken = db.claim(local, "b", "k", 1).unwrap();
    // The dead owner's handle notices it lost the claim and does not delete the new owner's row.
    assert!(matches!(dead.progress(1), Err(StateError::ClaimLost { .. })));
    assert!(matches!(dead.release(), Err(StateError::ClaimLost { .. })));
    assert!(db.list_in_flight().unwrap()[0].live);
    drop(taken);

    // A claim whose heartbeat is older than the stale period is free even though its pid runs.
    let old = now() - CLAIM_STALE_AFTER - Duration::from_secs(1);
    let stale = db.claim_for_test(local, "b", "k", std::process::id(), old).unwrap();
    let fresh = db.claim(local, "b", "k", 1).unwrap();
    assert!(matches!(stale.progress(1), Err(StateError::ClaimLost { .. })));
    drop(stale);
    drop(fresh);

    // Leftovers of dead processes are pruned; live claims are kept.
    let _dead1 = db.claim_for_test(local, "b", "x1", i32::MAX as u32, now()).unwrap();
    let _dead2 = db.claim_for_test(local, "b", "x2", std::process::id(), old).unwrap();
    let live = db.claim(local, "b", "x3", 1).unwrap();
    assert_eq!(db.prune_stale_claims().unwrap(), 2);
    let left = db.list_in_flight().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, "x3");
    drop(live);
}

#[test]
fn claims_are_exclusive_across_handles() {
    let (_dir, path, a) = temp_db();
    let (b, _) = StateDb::open(&path).unwrap();
    let held = a.claim(Path::new("/f"), "b", "k", 1).unwrap();
    assert!(matches!(b.claim(Path::new("/f"), "b", "k", 1), Err(StateError::Claimed { .. })));
    held.release().unwrap();
    b.claim(Path::new("/f"), "b", "k", 1).unwrap().release().unwrap();
}
