//! Databases written by an older schema open, migrate, and keep what they recorded.

use rusqlite::Connection;

use super::*;
use crate::state::mac::MacKey;
use crate::state::schema::MIGRATIONS;

/// A schema-1 database (before `synced.object_meta`) with one synced row MAC'd as schema 1 did.
fn schema_1_db(path: &Path, row: &SyncedFile) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(MIGRATIONS[0]).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    let key: Vec<u8> = conn.query_row("SELECT value FROM meta WHERE name = 'mac_key'", [], |r| r.get(0)).unwrap();
    let key = MacKey::from_slice(&key).unwrap();
    let hashes = rows::concat_hashes(&row.part_blake3);
    let fields = rows::synced_fields(row, &hashes);
    let old = &fields[..rows::SYNCED_N - 1];
    let tag = key.mac("synced", old);
    let cols = "bucket, key, local_path, snap_size, snap_mtime_ns, snap_ctime_ns, snap_inode, snap_dev, size, \
                crc64, etag, part_size, part_blake3, synced_at_ns, mac";
    let sql = format!("INSERT INTO synced ({cols}) VALUES ({})", vec!["?"; old.len() + 1].join(", "));
    conn.execute(&sql, params_from_iter(old.iter().chain([&Field::Blob(&tag)]))).unwrap();
}

#[test]
fn synced_rows_of_schema_1_migrate_with_metadata_not_known() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let row = SyncedFile { object_meta: None, ..synced_file("b", "old", 2) };
    schema_1_db(&path, &row);
    let (db, report) = StateDb::open(&path).unwrap();
    assert!(report.quarantined.is_none());
    assert_eq!(db.synced("b", "old").unwrap(), Some(row.clone()));
    assert_eq!(db.synced_by_inode(row.snapshot.dev, row.snapshot.inode, 8).unwrap(), vec![row.clone()]);
    // Rewritten with what the object now carries, it verifies under the new encoding.
    let newer = SyncedFile { object_meta: Some("mtime=1.000000000;mode=100600".into()), ..row };
    db.complete(None, &newer).unwrap();
    drop(db);
    let (db, _) = StateDb::open(&path).unwrap();
    assert_eq!(db.synced("b", "old").unwrap(), Some(newer));
}
