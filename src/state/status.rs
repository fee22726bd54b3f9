//! Per-file status: files queued (pending) and files that failed, with attempts and the last error.
//!
//! Keyed by (bucket, key), like the synced index, so that [`StateDb::complete`] clears a file's status in
//! the same transaction that records it synced. Rows are MAC'd like every other record; a damaged row is
//! treated as absent (the worst outcome is a lost attempt count), never as a reason to skip a file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use super::mac::{Field, MacKey};
use super::rows::{self, Decode};
use super::schema::{STATUS_COLS, status_cols};
use super::{StateDb, StateError};

/// Longest error message kept (bytes); longer ones are cut at a character boundary.
pub const MAX_ERROR_LEN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Seen and waiting to be uploaded.
    Pending,
    /// The last attempt failed; `retry_at` says when to try again.
    Failed,
}

impl FileState {
    fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<FileState> {
        match s {
            "pending" => Some(FileState::Pending),
            "failed" => Some(FileState::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub bucket: String,
    pub key: String,
    pub local_path: PathBuf,
    pub state: FileState,
    /// Failed attempts so far (kept when the file is queued again, cleared when it is synced).
    pub attempts: u32,
    pub last_error: Option<String>,
    pub updated_at: SystemTime,
    pub retry_at: Option<SystemTime>,
}

const N: usize = super::schema::count(STATUS_COLS);
const SELECT: &str = concat!("SELECT ", status_cols!(), ", mac FROM file_status");
static REPLACE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| super::replace_sql("file_status", STATUS_COLS));

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn read(row: &Row<'_>, mac: &MacKey) -> rusqlite::Result<Result<FileStatus, String>> {
    let (fields, stored) = rows::raw(row, N)?;
    Ok(mac.verify("file_status", &fields, stored).and_then(|()| {
        let d = Decode::new(&fields, STATUS_COLS, 0);
        let state = d.str(3)?;
        Ok(FileStatus {
            bucket: d.string(0)?,
            key: d.string(1)?,
            local_path: d.path(2)?,
            state: FileState::parse(state).ok_or_else(|| format!("unknown state {state:?}"))?,
            attempts: d.u32(4)?,
            last_error: d.opt_string(5)?,
            updated_at: rows::ns_to_time(d.i64(6)?),
            retry_at: d.opt_i64(7)?.map(rows::ns_to_time),
        })
    }))
}

fn write(conn: &rusqlite::Connection, mac: &MacKey, s: &FileStatus) -> rusqlite::Result<()> {
    let fields = [
        Field::text(&s.bucket),
        Field::text(&s.key),
        Field::Blob(rows::path_bytes(&s.local_path)),
        Field::text(s.state.as_str()),
        Field::Int(i64::from(s.attempts)),
        Field::opt_text(s.last_error.as_deref()),
        Field::Int(rows::time_to_ns(s.updated_at)),
        Field::opt_int(s.retry_at.map(rows::time_to_ns)),
    ];
    let tag = mac.mac("file_status", &fields);
    conn.prepare_cached(&REPLACE)?.execute(params_from_iter(fields.iter().chain([&Field::Blob(&tag)])))?;
    Ok(())
}

/// The current row, or `None` if absent or damaged (a damaged row is simply overwritten).
fn current(conn: &rusqlite::Connection, mac: &MacKey, bucket: &str, key: &str) -> rusqlite::Result<Option<FileStatus>> {
    let read = conn
        .prepare_cached(&format!("{SELECT} WHERE bucket = ?1 AND key = ?2"))?
        .query_row(params![bucket, key], |r| read(r, mac))
        .optional()?;
    Ok(match read {
        Some(Ok(s)) => Some(s),
        Some(Err(reason)) => {
            tracing::warn!(bucket, key, reason, "state database: damaged status record, starting it over");
            None
        }
        None => None,
    })
}

impl StateDb {
    /// Mark files pending (queued), in one transaction. A failed file keeps its attempts and last error.
    pub fn mark_pending<'a, I>(&self, files: I) -> Result<(), StateError>
    where
        I: IntoIterator<Item = (&'a Path, &'a str, &'a str)>,
    {
        let now = SystemTime::now();
        self.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (local_path, bucket, key) in files {
                let prior = current(&tx, mac, bucket, key)?;
                let status = FileStatus {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    local_path: local_path.to_path_buf(),
                    state: FileState::Pending,
                    attempts: prior.as_ref().map_or(0, |p| p.attempts),
                    last_error: prior.and_then(|p| p.last_error),
                    updated_at: now,
                    retry_at: None,
                };
                write(&tx, mac, &status)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Record a failed attempt; returns the number of attempts so far. `error` is cut to [`MAX_ERROR_LEN`]
    /// bytes (it must not contain secrets: error types in this crate never do).
    pub fn mark_failed(
        &self,
        local_path: &Path,
        bucket: &str,
        key: &str,
        error: &str,
        retry_at: Option<SystemTime>,
    ) -> Result<u32, StateError> {
        self.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let attempts = current(&tx, mac, bucket, key)?.map_or(0, |p| p.attempts).saturating_add(1);
            let status = FileStatus {
                bucket: bucket.to_string(),
                key: key.to_string(),
                local_path: local_path.to_path_buf(),
                state: FileState::Failed,
                attempts,
                last_error: Some(truncate(error, MAX_ERROR_LEN).to_string()),
                updated_at: SystemTime::now(),
                retry_at,
            };
            write(&tx, mac, &status)?;
            tx.commit()?;
            Ok(attempts)
        })
    }

    /// Forget a file's status (it was excluded or deleted; `complete` clears it by itself).
    pub fn clear_status(&self, bucket: &str, key: &str) -> Result<(), StateError> {
        self.run(|conn, _| {
            conn.prepare_cached("DELETE FROM file_status WHERE bucket = ?1 AND key = ?2")?
                .execute(params![bucket, key])?;
            Ok(())
        })
    }

    /// The status of `bucket/key`; `None` if none or damaged.
    pub fn file_status(&self, bucket: &str, key: &str) -> Result<Option<FileStatus>, StateError> {
        self.run(|conn, mac| Ok(current(conn, mac, bucket, key)?))
    }

    /// Up to `limit` files in `state`, ordered by (bucket, key), after `after` (exclusive). Damaged rows
    /// are skipped.
    pub fn list_status(
        &self,
        state: FileState,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<FileStatus>, StateError> {
        let (op, (bucket, key)) = match after {
            Some(a) => (">", a),
            None => (">=", ("", "")),
        };
        let sql = format!("{SELECT} WHERE state = ?1 AND (bucket, key) {op} (?2, ?3) ORDER BY bucket, key LIMIT ?4");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(|conn, mac| {
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rs = stmt.query(params![state.as_str(), bucket, key, limit])?;
            while let Some(row) = rs.next()? {
                match read(row, mac)? {
                    Ok(s) => out.push(s),
                    Err(reason) => tracing::warn!(reason, "state database: skipping a damaged status record"),
                }
            }
            Ok(out)
        })
    }
}

/// The `meta` row holding the running agent's self-description (JSON), read by `ossmirror status`.
const AGENT_INFO: &str = "agent_info";

impl StateDb {
    /// Publish the agent's self-description for `ossmirror status` in another process. Informational only
    /// (nothing is decided from it), so it lives in `meta`, outside the MAC'd records.
    pub fn set_agent_info(&self, json: &str) -> Result<(), StateError> {
        self.run(|conn, _| {
            conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
                .execute(params![AGENT_INFO, json.as_bytes()])?;
            Ok(())
        })
    }

    pub fn agent_info(&self) -> Result<Option<String>, StateError> {
        self.run(|conn, _| {
            let value: Option<Vec<u8>> = conn
                .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row(params![AGENT_INFO], |r| r.get(0))
                .optional()?;
            Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
