//! Which remote a state database describes.
//!
//! An index row says "this object holds these bytes", which is only true of one bucket on one server. So
//! the database records the remote it describes (`meta.remote`, written by the agent: protocol, endpoint or
//! embedded store, bucket, prefix), and a database opened against another remote, or one that never said
//! (written by an older build), keeps nothing it cannot prove there: [`StateDb::bind_remote`] forgets
//! every synced row, checkpoint, claim and file status in one transaction, and the agent then re-proves
//! each file against the new remote (an object with the same size and CRC-64 is adopted, anything else is
//! uploaded). Checkpoints name upload ids of the old server, which cannot be aborted from here: they are
//! returned so the caller can say so.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{StateDb, StateError};

/// The `meta` row naming the remote.
const REMOTE: &str = "remote";

/// What [`StateDb::bind_remote`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The database already describes this remote.
    Same,
    /// An empty database, now bound to the remote.
    New,
    /// The database described another remote (`previous`), or did not say which (`None`): everything it
    /// knew was forgotten.
    Rebound { previous: Option<String>, forgotten_files: u64, abandoned_uploads: Vec<AbandonedUpload> },
}

/// A checkpoint of the previous remote, whose server-side upload is left there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedUpload {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

impl StateDb {
    /// The remote this database describes, if it says.
    pub fn remote_identity(&self) -> Result<Option<String>, StateError> {
        self.run(|conn, _| {
            let value: Option<Vec<u8>> = conn
                .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row(params![REMOTE], |r| r.get(0))
                .optional()?;
            Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
    }

    /// Make this database describe `identity`, forgetting everything it recorded about another remote (see
    /// the module docs). Blocking: call it from a blocking thread.
    pub fn bind_remote(&self, identity: &str) -> Result<Binding, StateError> {
        self.run(|conn, _| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let previous: Option<String> = tx
                .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row(params![REMOTE], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            if previous.as_deref() == Some(identity) {
                return Ok(Binding::Same);
            }
            let count = |table: &str| -> rusqlite::Result<u64> {
                tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).map(|n| n as u64)
            };
            let (files, uploads, statuses) = (count("synced")?, count("uploads")?, count("file_status")?);
            let empty = previous.is_none() && files == 0 && uploads == 0 && statuses == 0;
            let mut abandoned = Vec::new();
            if !empty {
                // Read as stored, MACs unchecked: this is only for the message, nothing is aborted from it.
                let mut stmt = tx.prepare("SELECT bucket, key, upload_id FROM uploads")?;
                let rows = stmt.query_map([], |r| {
                    let text = |i: usize| {
                        r.get_ref(i).map(|v| String::from_utf8_lossy(v.as_bytes().unwrap_or(&[])).into_owned())
                    };
                    Ok(AbandonedUpload { bucket: text(0)?, key: text(1)?, upload_id: text(2)? })
                })?;
                for row in rows {
                    abandoned.push(row?);
                }
                drop(stmt);
                for table in ["parts", "uploads", "synced", "file_status", "claims"] {
                    tx.execute(&format!("DELETE FROM {table}"), [])?;
                }
            }
            tx.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
                .execute(params![REMOTE, identity.as_bytes()])?;
            tx.commit()?;
            Ok(if empty {
                Binding::New
            } else {
                Binding::Rebound { previous, forgotten_files: files, abandoned_uploads: abandoned }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::FileSnapshot;
    use crate::state::SyncedFile;
    use std::path::PathBuf;
    use std::time::SystemTime;

    fn synced(key: &str) -> SyncedFile {
        SyncedFile {
            bucket: "b".into(),
            key: key.into(),
            local_path: PathBuf::from(format!("/data/{key}")),
            snapshot: FileSnapshot { size: 3, mtime_ns: 1, ctime_ns: 2, inode: 3, dev: 4 },
            size: 3,
            crc64: 7,
            etag: "\"e\"".into(),
            part_size: 3,
            part_blake3: vec![[0; 32]],
            synced_at: SystemTime::now(),
            object_meta: None,
        }
    }

    #[test]
    fn a_database_is_trusted_only_for_the_remote_it_names() {
        let db = StateDb::open_in_memory().unwrap();
        assert_eq!(db.remote_identity().unwrap(), None);
        assert_eq!(db.bind_remote("oss https://a:443 bucket=b prefix=").unwrap(), Binding::New);
        db.complete(None, &synced("k1")).unwrap();
        assert_eq!(db.bind_remote("oss https://a:443 bucket=b prefix=").unwrap(), Binding::Same);
        assert!(db.synced("b", "k1").unwrap().is_some(), "the same remote keeps its index");

        match db.bind_remote("oss https://other:443 bucket=b prefix=").unwrap() {
            Binding::Rebound { previous, forgotten_files, abandoned_uploads } => {
                assert_eq!(previous.as_deref(), Some("oss https://a:443 bucket=b prefix="));
                assert_eq!(forgotten_files, 1);
                assert!(abandoned_uploads.is_empty());
            }
            other => panic!("expected a rebind, got {other:?}"),
        }
        assert!(db.synced("b", "k1").unwrap().is_none(), "nothing of the other remote is trusted");
        assert_eq!(db.remote_identity().unwrap().as_deref(), Some("oss https://other:443 bucket=b prefix="));
    }

    #[test]
    fn a_database_that_never_named_its_remote_is_not_trusted_either() {
        // An index written by a build that did not record the remote (or with the row lost).
        let db = StateDb::open_in_memory().unwrap();
        db.complete(None, &synced("k1")).unwrap();
        assert!(matches!(
            db.bind_remote("embedded /s bucket=b prefix=").unwrap(),
            Binding::Rebound { previous: None, forgotten_files: 1, .. }
        ));
        assert_eq!(db.counts().unwrap().synced_files, 0);
    }
}
