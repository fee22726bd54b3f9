//! Database files: damaged, foreign, newer, missing; modes; locking; concurrent handles.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Uploads (with parts) and enough synced rows for the file to span dozens of pages; the handle is closed
/// (so everything is checkpointed into the main file). Returns what salvage should find.
fn populate(path: &Path) -> Vec<SalvagedUpload> {
    let (db, _) = StateDb::open(path).unwrap();
    let mut expected = Vec::new();
    for i in 0..3 {
        let (local, key, upload_id) = (PathBuf::from(format!("/d/{i}")), format!("big/{i}"), format!("UPLOAD-{i}"));
        let id = db.begin_upload(&new_upload(&local, "bkt", &key, &upload_id)).unwrap();
        for n in 1..=4 {
            db.record_part(id, &part(n)).unwrap();
        }
        expected.push(SalvagedUpload { bucket: "bkt".into(), key, upload_id });
    }
    for i in 0..400 {
        db.complete(None, &synced_file("bkt", &format!("small/{i:05}"), 4)).unwrap();
    }
    drop(db);
    assert!(!with_suffix(path, "-wal").exists(), "closing checkpoints and removes the WAL");
    expected
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    super::super::open::with_suffix(path, suffix)
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Page size and the leaf pages of the synced table (SQLite's dbstat virtual table).
fn synced_leaf_pages(path: &Path) -> (u64, Vec<u64>) {
    let conn = raw(path);
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let mut stmt =
        conn.prepare("SELECT pageno FROM dbstat WHERE name = 'synced' AND pagetype = 'leaf' ORDER BY pageno").unwrap();
    let pages: Vec<i64> = stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    assert!(pages.len() > 10, "several pages: {pages:?}");
    (page_size as u64, pages.into_iter().map(|p| p as u64).collect())
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// The file was recovered: moved aside, a fresh private database in its place that works.
fn recovered(path: &Path) -> (StateDb, Quarantine) {
    let (db, report) = StateDb::open(path).unwrap();
    let q = report.quarantined.expect("the damaged file is quarantined");
    assert!(fs::symlink_metadata(&q.moved_to).is_ok(), "{:?} exists", q.moved_to);
    let name = q.moved_to.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("state.db.corrupt-"), "{name}");
    assert!(fs::metadata(path).unwrap().is_file());
    assert_eq!(mode(path), 0o600);
    assert!(db.list_checkpoints().unwrap().is_empty());
    let id = db.begin_upload(&new_upload(Path::new("/new"), "b", "k", "U")).unwrap();
    db.record_part(id, &part(1)).unwrap();
    assert_eq!(valid(db.find_checkpoint(Path::new("/new"), "b", "k").unwrap().unwrap()).1, vec![part(1)]);
    // And it is a healthy database the next time too.
    drop(db);
    let (db, report) = StateDb::open(path).unwrap();
    assert!(report.quarantined.is_none());
    (db, q)
}

fn sorted(mut v: Vec<SalvagedUpload>) -> Vec<SalvagedUpload> {
    v.sort_by(|a, b| a.upload_id.cmp(&b.upload_id));
    v
}

#[test]
fn data_persists_across_handles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let expected = populate(&path);
    let (db, report) = StateDb::open(&path).unwrap();
    assert!(report.quarantined.is_none());
    let ids: Vec<String> = db.list_checkpoints().unwrap().into_iter().map(|c| valid(c).0.upload_id).collect();
    assert_eq!(ids, expected.iter().map(|e| e.upload_id.clone()).collect::<Vec<_>>());
    assert_eq!(db.synced("bkt", "small/00123").unwrap(), Some(synced_file("bkt", "small/00123", 4)));
}

#[test]
fn garbage_over_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    populate(&path);
    overwrite(&path, 0, &[0xa5; 100]);
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("not a database"), "{}", q.reason);
    assert!(q.salvaged_uploads.is_empty());
    assert_eq!(fs::read(&q.moved_to).unwrap()[..100], [0xa5; 100], "moved, not rewritten");
}

#[test]
fn garbage_over_a_middle_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let expected = populate(&path);
    let (page_size, pages) = synced_leaf_pages(&path);
    let victim = pages[pages.len() / 2];
    overwrite(&path, (victim - 1) * page_size, &vec![0xa5; page_size as usize]);
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("quick_check") || q.reason.contains("malformed"), "{}", q.reason);
    // The uploads table lives on other pages: every upload id is salvaged for aborting.
    assert_eq!(sorted(q.salvaged_uploads), expected);
}

#[test]
fn truncated_to_half() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let expected = populate(&path);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    let (_db, q) = recovered(&path);
    // The uploads table lives on an early page, which survived: every upload id is salvaged for aborting,
    // although tables rooted past the new end make SQLite call the schema corrupt.
    assert_eq!(sorted(q.salvaged_uploads), expected);
}

#[test]
fn zero_length_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    fs::write(&path, b"").unwrap();
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("empty"), "{}", q.reason);
    assert!(q.salvaged_uploads.is_empty());
}

#[test]
fn a_directory_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("something"), b"kept").unwrap();
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("directory"), "{}", q.reason);
    assert_eq!(fs::read(q.moved_to.join("something")).unwrap(), b"kept");
}

#[test]
fn a_fifo_in_its_place_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("FIFO"), "{}", q.reason);
    assert!(fs::symlink_metadata(&q.moved_to).unwrap().file_type().is_fifo());
}

#[test]
fn garbage_files_of_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    populate(&path);
    let good = fs::read(&path).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let noise = |n: usize, rng: &mut fastrand::Rng| (0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>();
    let shapes: Vec<Vec<u8>> = vec![
        noise(65536, &mut rng),                               // random bytes
        [&good[..100], &noise(65536, &mut rng)[..]].concat(), // a valid header, garbage pages
        good[..100].to_vec(),                                 // a header and nothing else
        b"SQLite format 3\0".to_vec(),                        // the magic alone
        [&good[..4096], &vec![0u8; 8192][..]].concat(),       // page 1, then zeros
        good.iter().map(|b| b ^ 0x01).collect(),              // every bit 0 flipped
    ];
    for (i, bytes) in shapes.into_iter().enumerate() {
        fs::write(&path, &bytes).unwrap();
        let (db, report) = StateDb::open(&path).unwrap_or_else(|e| panic!("shape {i}: {e}"));
        let q = report.quarantined.unwrap_or_else(|| panic!("shape {i} was not quarantined"));
        assert!(db.list_checkpoints().unwrap().is_empty(), "shape {i}");
        // Whatever salvage read came from the file's own upload rows or nowhere.
        assert!(q.salvaged_uploads.iter().all(|s| s.upload_id.starts_with("UPLOAD-")), "shape {i}");
    }
}

/// Random byte damage anywhere in the file: `open` never panics, and whatever it reads afterwards is
/// either exactly what was written or reported damaged/absent (or an error).
#[test]
fn random_damage_never_yields_a_wrong_record() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.db");
    populate(&pristine);
    let good = fs::read(&pristine).unwrap();
    let (db, _) = StateDb::open(&pristine).unwrap();
    let originals: Vec<(UploadRecord, Vec<PartRecord>)> =
        db.list_checkpoints().unwrap().into_iter().map(valid).collect();
    drop(db);

    let (mut quarantined, mut opened) = (0, 0);
    for seed in 0..24 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bytes = good.clone();
        for _ in 0..rng.usize(1..5) {
            let at = rng.usize(..bytes.len());
            let len = rng.usize(1..200).min(bytes.len() - at);
            rng.fill(&mut bytes[at..at + len]);
        }
        let path = dir.path().join(format!("s{seed}.db"));
        fs::write(&path, &bytes).unwrap();
        let db = match StateDb::open(&path) {
            Ok((db, report)) => {
                if report.quarantined.is_some() {
                    quarantined += 1;
                } else {
                    opened += 1;
                }
                db
            }
            // Refusing is fine (a hit on the header's application id or schema version reads as someone
            // else's or a newer database); panicking or trusting garbage is not.
            Err(StateError::Foreign { .. } | StateError::TooNew { .. } | StateError::Corrupt { .. }) => continue,
            Err(e) => panic!("seed {seed}: {e}"),
        };
        if let Ok(checkpoints) = db.list_checkpoints() {
            for cp in checkpoints {
                if let Checkpoint::Valid { upload, parts } = cp {
                    let (orig, orig_parts) = originals.iter().find(|(u, _)| u.id == upload.id).expect("known id");
                    assert_eq!(&upload, orig, "seed {seed}");
                    assert!(parts.iter().all(|p| orig_parts.contains(p)), "seed {seed}");
                }
            }
        }
        for i in 0..400 {
            let key = format!("small/{i:05}");
            if let Ok(Some(file)) = db.synced("bkt", &key) {
                assert_eq!(file, synced_file("bkt", &key, 4), "seed {seed}");
            }
        }
    }
    assert!(quarantined > 0 && opened + quarantined > 12, "quarantined {quarantined}, opened {opened}");
}

#[test]
fn corruption_seen_at_run_time_is_remembered_and_recovered_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let expected = populate(&path);
    let (page_size, pages) = synced_leaf_pages(&path);
    let (db, _) = StateDb::open(&path).unwrap();
    // Damage the file under the open handle and make it drop its page cache.
    for p in &pages {
        overwrite(&path, (p - 1) * page_size, &vec![0x5a; page_size as usize]);
    }
    db.run(|c, _| Ok(c.execute_batch("PRAGMA shrink_memory")?)).unwrap();
    let err = db.iter_synced("bkt", "").find_map(Result::err).expect("SQLite notices the damage");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("rebuilt on the next start"));
    assert!(with_suffix(&path, ".damaged").exists());
    drop(db);
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("while it was in use"), "{}", q.reason);
    assert_eq!(sorted(q.salvaged_uploads), expected);
    assert!(!with_suffix(&path, ".damaged").exists());
}

#[test]
fn uploads_only_in_the_wal_are_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut expected = populate(&path);
    let (page_size, pages) = synced_leaf_pages(&path);
    let (db, _) = StateDb::open(&path).unwrap();
    db.begin_upload(&new_upload(Path::new("/d/w"), "bkt", "wal/only", "IN-THE-WAL")).unwrap();
    expected.push(SalvagedUpload { bucket: "bkt".into(), key: "wal/only".into(), upload_id: "IN-THE-WAL".into() });

    // A copy of the files as a crash would leave them: main file plus a WAL that was never checkpointed.
    let crashed = dir.path().join("crashed");
    fs::create_dir(&crashed).unwrap();
    let copy = crashed.join("state.db");
    fs::copy(&path, &copy).unwrap();
    fs::copy(with_suffix(&path, "-wal"), with_suffix(&copy, "-wal")).unwrap();
    drop(db);
    overwrite(&copy, (pages[1] - 1) * page_size, &vec![0xa5; page_size as usize]);

    let (_db, q) = recovered(&copy);
    assert!(with_suffix(&q.moved_to, "-wal").exists(), "the WAL went aside with its database");
    assert!(!with_suffix(&copy, "-wal").exists() || fs::metadata(with_suffix(&copy, "-wal")).unwrap().len() == 0);
    assert_eq!(sorted(q.salvaged_uploads), sorted(expected));
}

#[test]
fn leftover_wal_without_a_database_is_moved_away_before_creating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    populate(&path);
    let (db, _) = StateDb::open(&path).unwrap();
    db.begin_upload(&new_upload(Path::new("/d/w"), "bkt", "wal/only", "IN-THE-WAL")).unwrap();
    let other = dir.path().join("other.db");
    fs::copy(with_suffix(&path, "-wal"), with_suffix(&other, "-wal")).unwrap();
    drop(db);
    // other.db does not exist but has a WAL: it must not be replayed into the new database.
    let (db, report) = StateDb::open(&other).unwrap();
    assert!(report.quarantined.is_none());
    assert!(db.list_checkpoints().unwrap().is_empty());
    let orphan = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("other.db.orphan-") && n.ends_with("-wal"));
    assert!(orphan.is_some());
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let (_dir, path, db) = temp_db();
    drop(db);
    raw(&path).execute_batch(&format!("PRAGMA user_version = {}", schema::LATEST + 1)).unwrap();
    let before = fs::read(&path).unwrap();
    match StateDb::open(&path) {
        Err(StateError::TooNew { found, known, .. }) => {
            assert_eq!((found, known), (schema::LATEST + 1, schema::LATEST))
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert!(matches!(StateDb::open_read_only(&path), Err(StateError::TooNew { .. })));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_damaged_schema_version_in_our_header_is_recovered() {
    for version in [0, -3] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let expected = populate(&path);
        raw(&path).execute_batch(&format!("PRAGMA user_version = {version}")).unwrap();
        let (_db, q) = recovered(&path);
        assert!(q.reason.contains("schema version"), "{}", q.reason);
        assert_eq!(sorted(q.salvaged_uploads), expected);
    }
}

#[test]
fn someone_elses_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    raw(&path).execute_batch("CREATE TABLE important (x); INSERT INTO important VALUES (42);").unwrap();
    let before = fs::read(&path).unwrap();
    let err = StateDb::open(&path).unwrap_err();
    assert!(matches!(err, StateError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("refusing"));
    assert!(matches!(StateDb::open_read_only(&path), Err(StateError::Foreign { .. })));
    assert_eq!(fs::read(&path).unwrap(), before);

    // An empty SQLite database is taken over in place.
    let blank = dir.path().join("blank.db");
    raw(&blank).execute_batch("VACUUM").unwrap();
    assert!(fs::metadata(&blank).unwrap().len() > 0);
    let (db, report) = StateDb::open(&blank).unwrap();
    assert!(report.quarantined.is_none());
    db.begin_upload(&new_upload(Path::new("/f"), "b", "k", "U")).unwrap();
}

/// Serializes the tests that change the process umask.
static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn files_are_private_whatever_the_umask() {
    let _guard = UMASK.lock().unwrap();
    // SAFETY: umask only changes the process's file creation mask; restored below.
    let old = unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let parent_mode = mode(dir.path());
    let path = dir.path().join("a").join("b").join("state.db");
    let result = std::panic::catch_unwind(|| {
        let (db, _) = StateDb::open(&path).unwrap();
        db.begin_upload(&new_upload(Path::new("/f"), "b", "k", "U")).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(dir.path()), parent_mode, "existing directories are left alone");
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let p = with_suffix(&path, suffix);
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(db);
        // A quarantined database is replaced by a private one too.
        fs::write(&path, b"garbage").unwrap();
        let (db, report) = StateDb::open(&path).unwrap();
        assert!(report.quarantined.is_some());
        db.begin_upload(&new_upload(Path::new("/f"), "b", "k", "U")).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(&with_suffix(&path, suffix)), 0o600, "{suffix}");
        }
    });
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_world_readable_database_is_made_private() {
    let (_dir, path, db) = temp_db();
    drop(db);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let (db, _) = StateDb::open(&path).unwrap();
    db.begin_upload(&new_upload(Path::new("/f"), "b", "k", "U")).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&with_suffix(&path, suffix)), 0o600, "{suffix}");
    }
}

#[test]
fn a_damaged_database_in_use_elsewhere_is_left_in_place() {
    let (_dir, path, db) = temp_db();
    // Another handle (standing in for another process) keeps it open while damage is found.
    super::super::open::mark_damaged(&path, "test damage");
    match StateDb::open(&path) {
        Err(StateError::Corrupt { detail, .. }) => assert!(detail.contains("another process"), "{detail}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(db.list_checkpoints().unwrap().is_empty(), "the open handle still works on the same file");
    // The reader never recovers.
    assert!(StateDb::open_read_only(&path).is_ok());
    drop(db);
    let (_db, q) = recovered(&path);
    assert!(q.reason.contains("test damage"));
}

#[test]
fn read_only_handles_never_create_or_recover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    assert!(matches!(StateDb::open_read_only(&path), Err(StateError::Io { .. })));
    assert!(!path.exists());
    fs::write(&path, [0xa5; 8192]).unwrap();
    assert!(matches!(StateDb::open_read_only(&path), Err(StateError::Corrupt { .. })));
    assert_eq!(fs::read(&path).unwrap(), [0xa5; 8192]);
}

#[test]
fn processes_starting_together_share_one_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("state.db");
    let handles: Vec<StateDb> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4).map(|_| s.spawn(|| StateDb::open(&path).unwrap().0)).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    handles[0].complete(None, &synced_file("b", "k", 1)).unwrap();
    for h in &handles {
        assert_eq!(h.synced("b", "k").unwrap(), Some(synced_file("b", "k", 1)));
    }
}

#[test]
fn processes_recovering_together_recover_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    populate(&path);
    overwrite(&path, 0, &[0xa5; 100]);
    let reports: Vec<Result<OpenReport, StateError>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3).map(|_| s.spawn(|| StateDb::open(&path).map(|(_, r)| r))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // One recovers; the others open the recovered file or are told it was busy; none moves it twice.
    let recovered = reports.iter().filter(|r| matches!(r, Ok(r) if r.quarantined.is_some())).count();
    assert_eq!(recovered, 1, "{reports:?}");
    let aside = fs::read_dir(dir.path()).unwrap().filter(|e| {
        let name = e.as_ref().unwrap().file_name().into_string().unwrap();
        name.starts_with("state.db.corrupt-") && !name.contains("-shm") && !name.contains("-wal")
    });
    assert_eq!(aside.count(), 1);
}

#[test]
fn a_reader_in_another_thread_sees_consistent_state_while_a_writer_writes() {
    let (_dir, path, writer) = temp_db();
    let (reader, _) = StateDb::open(&path).unwrap();
    writer.complete(None, &synced_file("b", "first", 1)).unwrap();
    let read_only = StateDb::open_read_only(&path).unwrap();
    let done = AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reads = s.spawn(|| {
            let mut reads = 0u64;
            loop {
                // Check the flag first, so one full pass runs after the writer finished.
                let finished = done.load(Ordering::SeqCst);
                for cp in reader.list_checkpoints().unwrap() {
                    let (upload, parts) = valid(cp);
                    assert!(upload.upload_id.starts_with("U-"));
                    assert!(parts.iter().all(|p| *p == part(p.part_number)));
                }
                for entry in read_only.iter_synced("b", "") {
                    let SyncedEntry::Valid(file) = entry.unwrap() else { panic!("damaged") };
                    let parts = file.part_blake3.len() as u32;
                    assert_eq!(file, synced_file("b", &file.key, parts));
                }
                read_only.counts().unwrap();
                reads += 1;
                if finished {
                    return reads;
                }
            }
        });
        for i in 0..60 {
            let (local, key) = (PathBuf::from(format!("/d/{i}")), format!("k{i:03}"));
            let id = writer.begin_upload(&new_upload(&local, "b", &key, &format!("U-{i}"))).unwrap();
            writer.record_part(id, &part(1)).unwrap();
            writer.record_part(id, &part(2)).unwrap();
            if i % 3 != 0 {
                writer.complete(Some(id), &synced_file("b", &key, 2)).unwrap();
            }
        }
        done.store(true, Ordering::SeqCst);
        reads.join().unwrap()
    });
    assert!(reads >= 1);
    assert_eq!(read_only.counts().unwrap().synced_files, 41);
    assert_eq!(reader.list_checkpoints().unwrap().len(), 20);
    // The read-only handle cannot write.
    assert!(read_only.forget_synced("b", "first").is_err());
}

#[test]
fn a_read_only_handle_works_when_nothing_else_has_the_database_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    populate(&path);
    assert!(!with_suffix(&path, "-wal").exists() && !with_suffix(&path, "-shm").exists());
    let db = StateDb::open_read_only(&path).unwrap();
    assert_eq!(db.counts().unwrap().synced_files, 400);
    assert_eq!(db.list_checkpoints().unwrap().len(), 3);
    drop(db);
    // And the writer opens normally afterwards.
    let (db, report) = StateDb::open(&path).unwrap();
    assert!(report.quarantined.is_none());
    assert_eq!(db.counts().unwrap().synced_files, 400);
}
