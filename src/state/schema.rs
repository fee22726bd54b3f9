//! Schema and migrations.
//!
//! `PRAGMA user_version` is the schema version: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`,
//! and all pending migrations run in one IMMEDIATE transaction (`user_version` lives in page 1, so it
//! commits or rolls back with them). A database with a version above [`LATEST`] was written by a newer
//! ossmirror and is refused rather than guessed at. `PRAGMA application_id` marks the file as ours, so a
//! `--state-db` that points at some other program's SQLite file is refused instead of being "recovered".
//!
//! Every table but `meta` has a `mac` column; the other columns of each table are listed once, in the
//! `*_COLS` constants, which are used both to build the SQL and, by [`check`], to prove at open that the
//! table has exactly those columns plus `mac`: no column can exist that the MAC does not cover.

use rusqlite::Connection;

/// "OSMR": `PRAGMA application_id` of an ossmirror state database.
pub(crate) const APPLICATION_ID: i32 = 0x4f53_4d52;

/// Schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

macro_rules! upload_cols {
    () => {
        "id, local_path, bucket, key, upload_id, part_size, snap_size, snap_mtime_ns, snap_ctime_ns, snap_inode, \
         snap_dev, options_fingerprint, created_at_ns"
    };
}
macro_rules! part_cols {
    () => {
        "upload, part_number, size, etag, crc64, blake3"
    };
}
macro_rules! synced_cols {
    () => {
        "bucket, key, local_path, snap_size, snap_mtime_ns, snap_ctime_ns, snap_inode, snap_dev, size, crc64, \
         etag, part_size, part_blake3, synced_at_ns, object_meta"
    };
}
macro_rules! status_cols {
    () => {
        "bucket, key, local_path, state, attempts, last_error, updated_at_ns, retry_at_ns"
    };
}
macro_rules! claim_cols {
    () => {
        "bucket, key, local_path, owner_pid, token, started_at_ns, heartbeat_ns, total_bytes, done_bytes, upload"
    };
}
pub(crate) use {claim_cols, part_cols, status_cols, synced_cols, upload_cols};

pub(crate) const UPLOAD_COLS: &str = upload_cols!();
pub(crate) const PART_COLS: &str = part_cols!();
pub(crate) const SYNCED_COLS: &str = synced_cols!();
pub(crate) const STATUS_COLS: &str = status_cols!();
pub(crate) const CLAIM_COLS: &str = claim_cols!();

/// Number of columns in a `*_COLS` list.
pub(crate) const fn count(cols: &str) -> usize {
    let b = cols.as_bytes();
    let mut n = 1;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Every table with its MAC'd columns (`None`: `meta`, which holds the key itself and is not MAC'd).
pub(crate) const TABLES: &[(&str, Option<&str>)] = &[
    ("meta", None),
    ("uploads", Some(UPLOAD_COLS)),
    ("parts", Some(PART_COLS)),
    ("synced", Some(SYNCED_COLS)),
    ("file_status", Some(STATUS_COLS)),
    ("claims", Some(CLAIM_COLS)),
];

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    //
    // u64 values (sizes, CRC-64s, inodes, devices) are stored as the i64 with the same bits; local paths are
    // raw OsStr bytes (BLOB) so that non-UTF-8 names round-trip; times are i64 nanoseconds since the epoch.
    // uploads.id is AUTOINCREMENT so an id is never reused: a process still holding the id of a deleted
    // checkpoint cannot write parts into a newer, unrelated one.
    "PRAGMA application_id = 1330859346;

     CREATE TABLE meta (
         name  TEXT PRIMARY KEY NOT NULL,
         value BLOB NOT NULL
     ) WITHOUT ROWID;
     -- SQLite's randomblob() draws from a ChaCha20 generator seeded by the OS.
     INSERT INTO meta (name, value) VALUES ('mac_key', randomblob(32));

     CREATE TABLE uploads (
         id                  INTEGER PRIMARY KEY AUTOINCREMENT,
         local_path          BLOB NOT NULL,
         bucket              TEXT NOT NULL,
         key                 TEXT NOT NULL,
         upload_id           TEXT NOT NULL,
         part_size           INTEGER NOT NULL,
         snap_size           INTEGER NOT NULL,
         snap_mtime_ns       INTEGER NOT NULL,
         snap_ctime_ns       INTEGER NOT NULL,
         snap_inode          INTEGER NOT NULL,
         snap_dev            INTEGER NOT NULL,
         options_fingerprint TEXT NOT NULL,
         created_at_ns       INTEGER NOT NULL,
         mac                 BLOB NOT NULL,
         UNIQUE (local_path, bucket, key)
     );

     CREATE TABLE parts (
         upload      INTEGER NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
         part_number INTEGER NOT NULL,
         size        INTEGER NOT NULL,
         etag        TEXT NOT NULL,
         crc64       INTEGER NOT NULL,
         blake3      BLOB NOT NULL,
         mac         BLOB NOT NULL,
         PRIMARY KEY (upload, part_number)
     ) WITHOUT ROWID;

     -- Rows can be large (32 bytes per part hash), so this keeps a rowid rather than being WITHOUT ROWID.
     CREATE TABLE synced (
         bucket        TEXT NOT NULL,
         key           TEXT NOT NULL,
         local_path    BLOB NOT NULL,
         snap_size     INTEGER NOT NULL,
         snap_mtime_ns INTEGER NOT NULL,
         snap_ctime_ns INTEGER NOT NULL,
         snap_inode    INTEGER NOT NULL,
         snap_dev      INTEGER NOT NULL,
         size          INTEGER NOT NULL,
         crc64         INTEGER NOT NULL,
         etag          TEXT NOT NULL,
         part_size     INTEGER NOT NULL,
         part_blake3   BLOB NOT NULL,
         synced_at_ns  INTEGER NOT NULL,
         mac           BLOB NOT NULL,
         UNIQUE (bucket, key)
     );
     CREATE INDEX synced_by_content ON synced (size, crc64);
     CREATE INDEX synced_by_inode ON synced (snap_dev, snap_inode);

     CREATE TABLE file_status (
         bucket        TEXT NOT NULL,
         key           TEXT NOT NULL,
         local_path    BLOB NOT NULL,
         state         TEXT NOT NULL,
         attempts      INTEGER NOT NULL,
         last_error    TEXT,
         updated_at_ns INTEGER NOT NULL,
         retry_at_ns   INTEGER,
         mac           BLOB NOT NULL,
         PRIMARY KEY (bucket, key)
     ) WITHOUT ROWID;
     CREATE INDEX file_status_by_state ON file_status (state, bucket, key);

     CREATE TABLE claims (
         bucket        TEXT NOT NULL,
         key           TEXT NOT NULL,
         local_path    BLOB NOT NULL,
         owner_pid     INTEGER NOT NULL,
         token         BLOB NOT NULL,
         started_at_ns INTEGER NOT NULL,
         heartbeat_ns  INTEGER NOT NULL,
         total_bytes   INTEGER NOT NULL,
         done_bytes    INTEGER NOT NULL,
         upload        INTEGER,
         mac           BLOB NOT NULL,
         PRIMARY KEY (bucket, key)
     ) WITHOUT ROWID;",
    // 2: synced.object_meta, the file metadata the object carries (`FileMeta::encode`: mtime, mode, and
    // uid/gid as root), so a touch or chmod is applied server-side exactly when the object disagrees. NULL:
    // not known (a row written before this column): such an object is valid as it is and gets its metadata
    // at the file's next metadata-only change. SQLite appends the column after `mac` (`check` compares the
    // columns as a set); old rows keep their MAC, which `state::read_synced` verifies over the columns it
    // was made of when object_meta is NULL.
    "ALTER TABLE synced ADD COLUMN object_meta TEXT;",
];

/// Outcome of [`migrate`].
pub(crate) enum Migrated {
    Ok,
    TooNew(i64),
}

/// Bring the schema to [`LATEST`] in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<Migrated> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Read under the write lock: another process may have migrated between our open and now.
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > LATEST {
        return Ok(Migrated::TooNew(version));
    }
    let start = usize::try_from(version).unwrap_or(0);
    for sql in &MIGRATIONS[start..] {
        tx.execute_batch(sql)?;
    }
    if version != LATEST {
        tx.pragma_update(None, "user_version", LATEST)?;
    }
    tx.commit()?;
    Ok(Migrated::Ok)
}

/// Check that the schema is the one this build wrote and return the MAC key; `Err` describes what is wrong
/// (a missing table, an unexpected column, a missing or malformed key), which the caller treats as damage.
pub(crate) fn check(conn: &Connection) -> rusqlite::Result<Result<super::mac::MacKey, String>> {
    for (table, cols) in TABLES {
        let mut found = Vec::new();
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
        let mut rows = stmt.query([table])?;
        while let Some(row) = rows.next()? {
            found.push(row.get::<_, String>(0)?);
        }
        let mut expected: Vec<&str> = match cols {
            Some(cols) => cols.split(", ").chain(["mac"]).collect(),
            None => vec!["name", "value"],
        };
        // As sets: a migration can only append a column (after `mac`); every statement names its columns.
        found.sort();
        expected.sort();
        if found.is_empty() {
            return Ok(Err(format!("table {table} is missing")));
        }
        if found != expected {
            return Ok(Err(format!(
                "table {table} has columns ({}), expected ({})",
                found.join(", "),
                expected.join(", ")
            )));
        }
    }
    let key: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE name = 'mac_key'", [], |r| {
            Ok(match r.get_ref(0)? {
                rusqlite::types::ValueRef::Blob(b) => Some(b.to_vec()),
                _ => None,
            })
        })
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    Ok(key
        .as_deref()
        .and_then(super::mac::MacKey::from_slice)
        .ok_or_else(|| "the MAC key is missing or malformed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_id_literal_matches() {
        // The migration spells the id as a decimal literal (PRAGMA does not take parameters).
        assert!(MIGRATIONS[0].contains(&format!("application_id = {APPLICATION_ID};")));
    }

    #[test]
    fn fresh_schema_checks_out() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert!(matches!(migrate(&mut conn).unwrap(), Migrated::Ok));
        assert!(check(&conn).unwrap().is_ok());
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, LATEST);
        // Idempotent.
        assert!(matches!(migrate(&mut conn).unwrap(), Migrated::Ok));
        assert_eq!(count(UPLOAD_COLS), 13);
        assert_eq!(count(PART_COLS), 6);
    }

    #[test]
    fn a_column_outside_the_mac_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch("ALTER TABLE parts ADD COLUMN sneaky TEXT").unwrap();
        let err = check(&conn).unwrap().unwrap_err();
        assert!(err.contains("parts"), "{err}");
    }
}
