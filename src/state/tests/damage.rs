//! Records edited behind the database's back are reported damaged, never returned wrong.

use std::collections::HashMap;

use super::*;

/// Two checkpoints (A with parts 1–3, B with parts 1–2), two synced rows, two status rows, two claims.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: StateDb,
    a: UploadRowId,
    checkpoints: HashMap<UploadRowId, (UploadRecord, Vec<PartRecord>)>,
    synced: Vec<SyncedFile>,
    statuses: Vec<FileStatus>,
    claims: Vec<InFlight>,
    // Kept, not dropped: dropping a claim deletes its row, and these rows are under test.
    _held: Vec<Claim>,
}

fn fixture() -> Fixture {
    let (dir, path, db) = temp_db();
    let a = db.begin_upload(&new_upload(Path::new("/d/a"), "b", "ka", "UP-A")).unwrap();
    let b = db.begin_upload(&new_upload(Path::new("/d/b"), "b", "kb", "UP-B")).unwrap();
    for n in 1..=3 {
        db.record_part(a, &part(n)).unwrap();
    }
    for n in 1..=2 {
        db.record_part(b, &part(n)).unwrap();
    }
    let synced = vec![synced_file("b", "s1", 3), synced_file("b", "s2", 1)];
    for s in &synced {
        db.complete(None, s).unwrap();
    }
    db.mark_failed(Path::new("/d/f1"), "b", "f1", "boom", None).unwrap();
    db.mark_pending([(Path::new("/d/f2"), "b", "f2")]).unwrap();
    let held = ["c1", "c2"].map(|key| db.claim(Path::new("/d/c"), "b", key, 10).unwrap()).into();
    let checkpoints = db.list_checkpoints().unwrap().into_iter().map(|c| (c.id(), valid(c))).collect();
    let statuses = vec![db.file_status("b", "f1").unwrap().unwrap(), db.file_status("b", "f2").unwrap().unwrap()];
    let claims = db.list_in_flight().unwrap();
    assert_eq!(claims.len(), 2);
    Fixture { _dir: dir, path, db, a, checkpoints, synced, statuses, claims, _held: held }
}

impl Fixture {
    fn sql(&self, sql: &str) {
        raw(&self.path).execute_batch(sql).unwrap();
    }

    /// Every checkpoint that reads as valid is exactly one that was written (parts: a subset, since a
    /// missing part row is safe: that part is simply sent again). Returns the damaged ones.
    fn checkpoints_never_wrong(&self) -> Vec<DamagedFields> {
        let mut damaged_ones = Vec::new();
        for cp in self.db.list_checkpoints().unwrap() {
            match cp {
                Checkpoint::Valid { upload, parts } => {
                    let (orig, orig_parts) = &self.checkpoints[&upload.id];
                    assert_eq!(&upload, orig);
                    assert!(parts.iter().all(|p| orig_parts.contains(p)), "{parts:?}");
                }
                damaged_cp => damaged_ones.push(damaged(damaged_cp)),
            }
        }
        damaged_ones
    }

    fn find_a(&self) -> Option<Checkpoint> {
        self.db.find_checkpoint(Path::new("/d/a"), "b", "ka").unwrap()
    }

    /// (bucket, key) of every row of `table`, as text, whatever was done to them.
    fn keys(&self, table: &str) -> Vec<(String, String)> {
        let conn = raw(&self.path);
        let mut stmt = conn.prepare(&format!("SELECT CAST(bucket AS TEXT), CAST(key AS TEXT) FROM {table}")).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// How many synced rows read back as absent; the others must be exactly as written.
    fn synced_rows_rejected(&self) -> usize {
        let mut rejected = 0;
        for (bucket, key) in self.keys("synced") {
            match self.db.synced(&bucket, &key).unwrap() {
                Some(file) => assert!(self.synced.contains(&file), "{file:?}"),
                None => rejected += 1,
            }
        }
        for entry in self.db.iter_synced("b", "") {
            if let SyncedEntry::Valid(file) = entry.unwrap() {
                assert!(self.synced.contains(&file));
            }
        }
        rejected
    }

    fn statuses_rejected(&self) -> usize {
        let mut rejected = 0;
        for (bucket, key) in self.keys("file_status") {
            match self.db.file_status(&bucket, &key).unwrap() {
                Some(s) => assert!(self.statuses.contains(&s), "{s:?}"),
                None => rejected += 1,
            }
        }
        rejected
    }

    fn claims_rejected(&self) -> usize {
        let listed = self.db.list_in_flight().unwrap();
        assert!(listed.iter().all(|c| self.claims.contains(c)), "{listed:?}");
        self.claims.len() - listed.len()
    }
}

#[test]
fn edited_part_etag_damages_the_whole_checkpoint() {
    let f = fixture();
    f.sql(&format!("UPDATE parts SET etag = '\"0123\"' WHERE upload = {} AND part_number = 2", f.a));
    let (id, bucket, key, upload_id, reason) = damaged(f.find_a().unwrap());
    assert_eq!(
        (id, bucket.as_deref(), key.as_deref(), upload_id.as_deref()),
        (f.a, Some("b"), Some("ka"), Some("UP-A"))
    );
    assert!(reason.contains("part row 2") && reason.contains("MAC"), "{reason}");
    assert_eq!(f.checkpoints_never_wrong().len(), 1);
    // A damaged checkpoint can be deleted by its id, parts included, and the target started over.
    f.db.delete_upload(id).unwrap();
    assert!(f.find_a().is_none());
    f.db.begin_upload(&new_upload(Path::new("/d/a"), "b", "ka", "UP-A2")).unwrap();
}

#[test]
fn edited_sizes_are_detected() {
    let f = fixture();
    f.sql(&format!("UPDATE parts SET size = size + 1 WHERE upload = {} AND part_number = 1", f.a));
    assert!(damaged(f.find_a().unwrap()).4.contains("part row 1"));

    let f = fixture();
    f.sql(&format!("UPDATE uploads SET part_size = 1 WHERE id = {}", f.a));
    assert!(damaged(f.find_a().unwrap()).4.contains("upload row"));

    let f = fixture();
    f.sql(&format!("UPDATE uploads SET snap_size = snap_size - 1 WHERE id = {}", f.a));
    damaged(f.find_a().unwrap());

    let f = fixture();
    f.sql("UPDATE synced SET size = 1 WHERE key = 's1'");
    assert_eq!(f.db.synced("b", "s1").unwrap(), None);
    assert_eq!(f.db.synced("b", "s2").unwrap().as_ref(), Some(&f.synced[1]));
    let listed: Vec<SyncedEntry> = f.db.iter_synced("b", "").map(Result::unwrap).collect();
    assert!(matches!(&listed[0], SyncedEntry::Damaged { key, reason, .. } if key == "s1" && reason.contains("MAC")));
    assert_eq!(listed[1], SyncedEntry::Valid(f.synced[1].clone()));
    assert!(f.db.synced_by_content(1, f.synced[0].crc64, 10).unwrap().is_empty());
}

#[test]
fn edited_upload_id_is_detected_and_reported_as_read() {
    let f = fixture();
    f.sql(&format!("UPDATE uploads SET upload_id = 'SOMEONE-ELSES' WHERE id = {}", f.a));
    let (_, bucket, key, upload_id, _) = damaged(f.find_a().unwrap());
    assert_eq!(
        (bucket.as_deref(), key.as_deref(), upload_id.as_deref()),
        (Some("b"), Some("ka"), Some("SOMEONE-ELSES"))
    );
    assert_eq!(f.checkpoints_never_wrong().len(), 1);
    // Re-signing a damaged row would launder the damage.
    assert!(matches!(f.db.update_snapshot(f.a, snap(9)), Err(StateError::DamagedRecord { id, .. }) if id == f.a));
    damaged(f.find_a().unwrap());
}

#[test]
fn the_real_upload_id_of_an_edited_row_is_confirmed_by_its_macs() {
    let f = fixture();
    f.sql(&format!("UPDATE uploads SET upload_id = 'SOMEONE-ELSES' WHERE id = {}", f.a));
    damaged(f.find_a().unwrap());
    // The upload row's own MAC confirms the original id, and nothing else.
    assert!(f.db.checkpoint_confirms_upload_id(f.a, "UP-A").unwrap());
    for other in ["SOMEONE-ELSES", "UP-B", ""] {
        assert!(!f.db.checkpoint_confirms_upload_id(f.a, other).unwrap(), "{other}");
    }
    // With a second column edited too, the part rows (which bind the parent's upload id) still confirm it.
    f.sql(&format!("UPDATE uploads SET part_size = 1 WHERE id = {}", f.a));
    assert!(f.db.checkpoint_confirms_upload_id(f.a, "UP-A").unwrap());
    assert!(!f.db.checkpoint_confirms_upload_id(f.a, "UP-B").unwrap());
    // Without parts nothing is left to confirm it with.
    f.sql(&format!("DELETE FROM parts WHERE upload = {}", f.a));
    assert!(!f.db.checkpoint_confirms_upload_id(f.a, "UP-A").unwrap());
    assert!(!f.db.checkpoint_confirms_upload_id(UploadRowId(999), "UP-A").unwrap(), "no such row");
}

#[test]
fn swapped_part_numbers_are_detected() {
    let f = fixture();
    let a = f.a;
    f.sql(&format!(
        "UPDATE parts SET part_number = -1 WHERE upload = {a} AND part_number = 1;
         UPDATE parts SET part_number = 1 WHERE upload = {a} AND part_number = 2;
         UPDATE parts SET part_number = 2 WHERE upload = {a} AND part_number = -1;"
    ));
    let reason = damaged(f.find_a().unwrap()).4;
    assert!(reason.contains("part row 1"), "{reason}");
}

#[test]
fn a_part_moved_to_another_upload_is_detected() {
    let f = fixture();
    let b = f.checkpoints.keys().copied().find(|id| *id != f.a).unwrap();
    f.sql(&format!("UPDATE parts SET upload = {b} WHERE upload = {} AND part_number = 3", f.a));
    let damaged_ones = f.checkpoints_never_wrong();
    assert_eq!(damaged_ones.len(), 1);
    assert_eq!(damaged_ones[0].0, b);
    // A lost its part 3, which is safe: it is sent again.
    assert_eq!(valid(f.find_a().unwrap()).1, vec![part(1), part(2)]);
}

#[test]
fn swapped_upload_ids_are_detected() {
    let f = fixture();
    let b = f.checkpoints.keys().copied().find(|id| *id != f.a).unwrap();
    // Exchange the two upload rows' identities (and keep their parts with the numbers).
    f.sql(&format!(
        "UPDATE uploads SET id = -1 WHERE id = {a};
         UPDATE uploads SET id = {a} WHERE id = {b};
         UPDATE uploads SET id = {b} WHERE id = -1;",
        a = f.a
    ));
    assert_eq!(f.checkpoints_never_wrong().len(), 2);
}

#[test]
fn a_synced_row_copied_onto_another_key_is_detected() {
    let f = fixture();
    f.sql(&format!("INSERT INTO synced SELECT bucket, 'copied', {} FROM synced WHERE key = 's1'", &SYNCED_REST));
    assert_eq!(f.db.synced("b", "copied").unwrap(), None);
    assert_eq!(f.db.synced("b", "s1").unwrap().as_ref(), Some(&f.synced[0]));
}

/// The synced columns after bucket and key, in their physical order (object_meta was added after mac).
const SYNCED_REST: &str = "local_path, snap_size, snap_mtime_ns, snap_ctime_ns, snap_inode, snap_dev, size, crc64, etag, \
                           part_size, part_blake3, synced_at_ns, mac, object_meta";

#[test]
fn same_value_with_another_type_is_detected() {
    // INTEGER affinity turns '5' back into 5, but a blob stays a blob and an integer-valued real reads back
    // as a real: both change what is stored, so both fail.
    let f = fixture();
    f.sql("UPDATE synced SET size = CAST(size AS BLOB) WHERE key = 's1'");
    assert_eq!(f.db.synced("b", "s1").unwrap(), None);
    let f = fixture();
    f.sql(&format!("UPDATE parts SET etag = CAST(etag AS BLOB) WHERE upload = {}", f.a));
    damaged(f.find_a().unwrap());
}

#[test]
fn a_missing_or_malformed_mac_is_damage() {
    let f = fixture();
    f.sql("UPDATE synced SET mac = X'' WHERE key = 's1'; UPDATE synced SET mac = zeroblob(32) WHERE key = 's2'");
    assert_eq!(f.synced_rows_rejected(), 2);
    f.sql(&format!("UPDATE uploads SET mac = substr(mac, 1, 31) WHERE id = {}", f.a));
    damaged(f.find_a().unwrap());
}

/// Every column of every MAC'd table: an edit of it is detected, and no API ever returns a record that
/// differs from what was written.
#[test]
fn an_edit_of_any_column_is_detected() {
    for (table, cols) in schema::TABLES {
        let Some(cols) = cols else { continue };
        for col in cols.split(", ").chain(["mac"]) {
            let f = fixture();
            let target = match *table {
                "uploads" => format!("id = {}", f.a),
                "parts" => format!("upload = {} AND part_number = 2", f.a),
                "synced" => "key = 's1'".to_string(),
                "file_status" => "key = 'f1'".to_string(),
                "claims" => "key = 'c1'".to_string(),
                other => panic!("no target for {other}"),
            };
            // A different value of the same type; distinct from every other row's, so no constraint fires.
            f.sql(&format!(
                "UPDATE {table} SET {col} = CASE typeof({col})
                     WHEN 'integer' THEN {col} + 1000
                     WHEN 'text' THEN {col} || 'x'
                     WHEN 'blob' THEN {col} || X'00'
                     ELSE 1 END
                 WHERE {target}"
            ));
            let what = format!("{table}.{col}");
            match *table {
                "uploads" | "parts" => {
                    let damaged_ones = f.checkpoints_never_wrong();
                    if (*table, col) == ("parts", "upload") {
                        // The part row left for a checkpoint that does not exist: A just misses part 2.
                        assert!(damaged_ones.is_empty(), "{what}");
                        assert_eq!(valid(f.find_a().unwrap()).1, vec![part(1), part(3)], "{what}");
                    } else {
                        assert_eq!(damaged_ones.len(), 1, "{what}");
                        assert!(!matches!(f.find_a(), Some(Checkpoint::Valid { .. })), "{what}");
                    }
                }
                "synced" => assert_eq!(f.synced_rows_rejected(), 1, "{what}"),
                "file_status" => assert_eq!(f.statuses_rejected(), 1, "{what}"),
                "claims" => assert_eq!(f.claims_rejected(), 1, "{what}"),
                _ => unreachable!(),
            }
        }
    }
}

#[test]
fn damaged_status_and_claim_rows_are_replaced_not_trusted() {
    let f = fixture();
    f.sql("UPDATE file_status SET attempts = 0 WHERE key = 'f1'; UPDATE claims SET owner_pid = 1 WHERE key = 'c1'");
    // The damaged status row starts over; the damaged claim does not block a new claimant.
    assert_eq!(f.db.mark_failed(Path::new("/d/f1"), "b", "f1", "again", None).unwrap(), 1);
    f.db.claim(Path::new("/d/c"), "b", "c1", 1).unwrap().release().unwrap();
    assert_eq!(f.db.prune_stale_claims().unwrap(), 0, "c2 is held by this live process");
}

#[test]
fn a_database_without_its_key_is_recovered_at_open() {
    let f = fixture();
    f.sql("DELETE FROM meta");
    let Fixture { _dir, path, db, _held, .. } = f;
    drop(_held);
    drop(db);
    let (db, report) = StateDb::open(&path).unwrap();
    let q = report.quarantined.expect("quarantined");
    assert!(q.reason.contains("MAC key"), "{}", q.reason);
    let mut salvaged: Vec<String> = q.salvaged_uploads.into_iter().map(|s| s.upload_id).collect();
    salvaged.sort();
    assert_eq!(salvaged, ["UP-A", "UP-B"]);
    assert!(db.list_checkpoints().unwrap().is_empty());
}

#[test]
fn object_meta_set_to_null_by_an_edit_is_detected() {
    // NULL is what a row from before the column holds; a newer row MACs the column, so an edit to NULL
    // matches neither its MAC nor the older encoding.
    let f = fixture();
    assert!(f.synced[0].object_meta.is_some());
    f.sql("UPDATE synced SET object_meta = NULL WHERE key = 's1'");
    assert_eq!(f.db.synced("b", "s1").unwrap(), None);
    f.sql("UPDATE synced SET object_meta = 'mtime=1.000000000;mode=100777' WHERE key = 's2'");
    assert_eq!(f.db.synced("b", "s2").unwrap(), None);
}
