//! Claims: which process is uploading which object, with progress.
//!
//! Two `ossmirror cp` runs of the same file to the same key (or an agent and a `cp`) would otherwise both
//! find the same checkpoint and upload the same parts, or each initiate an upload. A claim is a row keyed
//! by the target (bucket, key) naming the owner's pid, a random token and a heartbeat:
//!
//! 1. Before looking for a checkpoint, the uploader calls [`StateDb::claim`]. It succeeds if there is no
//!    row, or the row's owner is gone; it fails with [`StateError::Claimed`] if the owner is alive.
//! 2. While uploading it calls [`Claim::progress`] (at most about once a second: each call is a write), which
//!    is also the heartbeat. If another process took the claim over, this returns
//!    [`StateError::ClaimLost`] and the uploader must stop.
//! 3. It calls [`Claim::release`] when done (dropping the claim releases it too, best effort). After a
//!    `kill -9` the row stays, and is free for the next claimant because its pid is no longer running.
//!
//! "Gone" means the pid is not running on this host (`kill(pid, 0)` fails with `ESRCH`), or the heartbeat
//! is older than [`CLAIM_STALE_AFTER`], which covers a reused pid, a hung owner, and a process in another
//! pid namespace. An owner that stops heartbeating for that long loses its claim. The same process
//! claiming twice is refused too, which also dedupes uploads inside the agent. Time is wall-clock: a clock
//! jumping forward by more than the stale period can free a live claim (its owner then sees `ClaimLost`).
//!
//! The table doubles as "uploads in flight" for `ossmirror status` in another process:
//! [`StateDb::list_in_flight`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use super::mac::{Field, MacKey};
use super::rows::{self, Decode};
use super::schema::{CLAIM_COLS, claim_cols};
use super::{StateDb, StateError, UploadRowId};

/// A claim whose heartbeat is older than this is free even if its pid is running.
pub const CLAIM_STALE_AFTER: Duration = Duration::from_secs(300);

const N: usize = super::schema::count(CLAIM_COLS);
const SELECT: &str = concat!("SELECT ", claim_cols!(), ", mac FROM claims");
static REPLACE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| super::replace_sql("claims", CLAIM_COLS));

/// An upload in flight, as seen by any process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub bucket: String,
    pub key: String,
    pub local_path: PathBuf,
    pub owner_pid: u32,
    pub started_at: SystemTime,
    pub heartbeat_at: SystemTime,
    pub total_bytes: u64,
    pub done_bytes: u64,
    /// The checkpoint, once a multipart upload has one.
    pub upload: Option<UploadRowId>,
    /// The owner is running and heartbeating; `false`: a leftover of a process that died.
    pub live: bool,
}

/// A stored claim row.
#[derive(Debug, Clone)]
struct ClaimRow {
    bucket: String,
    key: String,
    local_path: PathBuf,
    owner_pid: u32,
    token: [u8; 16],
    started_at_ns: i64,
    heartbeat_ns: i64,
    total_bytes: u64,
    done_bytes: u64,
    upload: Option<UploadRowId>,
}

impl ClaimRow {
    fn fields(&self) -> [Field<'_>; N] {
        [
            Field::text(&self.bucket),
            Field::text(&self.key),
            Field::Blob(rows::path_bytes(&self.local_path)),
            Field::Int(i64::from(self.owner_pid)),
            Field::Blob(&self.token),
            Field::Int(self.started_at_ns),
            Field::Int(self.heartbeat_ns),
            Field::u64(self.total_bytes),
            Field::u64(self.done_bytes),
            Field::opt_int(self.upload.map(|u| u.0)),
        ]
    }

    fn write(&self, conn: &Connection, mac: &MacKey) -> rusqlite::Result<()> {
        let fields = self.fields();
        let tag = mac.mac("claims", &fields);
        conn.prepare_cached(&REPLACE)?.execute(params_from_iter(fields.iter().chain([&Field::Blob(&tag)])))?;
        Ok(())
    }

    fn live(&self, now_ns: i64) -> bool {
        let stale_ns = CLAIM_STALE_AFTER.as_nanos() as i64;
        pid_running(self.owner_pid) && now_ns.saturating_sub(self.heartbeat_ns) < stale_ns
    }

    fn in_flight(&self, now_ns: i64) -> InFlight {
        InFlight {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            local_path: self.local_path.clone(),
            owner_pid: self.owner_pid,
            started_at: rows::ns_to_time(self.started_at_ns),
            heartbeat_at: rows::ns_to_time(self.heartbeat_ns),
            total_bytes: self.total_bytes,
            done_bytes: self.done_bytes,
            upload: self.upload,
            live: self.live(now_ns),
        }
    }
}

fn read(row: &Row<'_>, mac: &MacKey) -> rusqlite::Result<Result<ClaimRow, String>> {
    let (fields, stored) = rows::raw(row, N)?;
    Ok(mac.verify("claims", &fields, stored).and_then(|()| {
        let d = Decode::new(&fields, CLAIM_COLS, 0);
        let token = d.blob(4)?;
        Ok(ClaimRow {
            bucket: d.string(0)?,
            key: d.string(1)?,
            local_path: d.path(2)?,
            owner_pid: d.u32(3)?,
            token: token.try_into().map_err(|_| "column token: wrong length".to_string())?,
            started_at_ns: d.i64(5)?,
            heartbeat_ns: d.i64(6)?,
            total_bytes: d.u64(7)?,
            done_bytes: d.u64(8)?,
            upload: d.opt_i64(9)?.map(UploadRowId),
        })
    }))
}

/// Whether `pid` names a running process on this host (signal 0 only checks; it delivers nothing).
fn pid_running(pid: u32) -> bool {
    // pid 0 and negative pids address process groups, never a single owner.
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 performs the existence and permission checks and sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists but belongs to another user.
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A held claim on `bucket/key`; see the module docs. Shareable between tasks (`&self` methods).
#[derive(Debug)]
pub struct Claim {
    db: StateDb,
    row: Mutex<ClaimRow>,
    released: AtomicBool,
}

impl StateDb {
    /// Claim the upload of `local_path` to `bucket/key` for this process.
    pub fn claim(&self, local_path: &Path, bucket: &str, key: &str, total_bytes: u64) -> Result<Claim, StateError> {
        self.claim_as(local_path, bucket, key, total_bytes, std::process::id(), rows::time_to_ns(SystemTime::now()))
    }

    /// [`StateDb::claim`] with the owner and clock given (tests simulate dead and stale owners with it).
    fn claim_as(
        &self,
        local_path: &Path,
        bucket: &str,
        key: &str,
        total_bytes: u64,
        owner_pid: u32,
        now_ns: i64,
    ) -> Result<Claim, StateError> {
        let row = ClaimRow {
            bucket: bucket.to_string(),
            key: key.to_string(),
            local_path: local_path.to_path_buf(),
            owner_pid,
            token: fastrand::u128(..).to_le_bytes(),
            started_at_ns: now_ns,
            heartbeat_ns: now_ns,
            total_bytes,
            done_bytes: 0,
            upload: None,
        };
        self.run(|conn, mac| {
            // IMMEDIATE: check and take in one write transaction, so two claimants cannot both win.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = tx
                .prepare_cached(&format!("{SELECT} WHERE bucket = ?1 AND key = ?2"))?
                .query_row(params![bucket, key], |r| read(r, mac))
                .optional()?;
            match existing {
                Some(Ok(held)) if held.live(now_ns) => {
                    return Err(super::Op::State(StateError::Claimed {
                        path: self.err_path(),
                        bucket: bucket.to_string(),
                        key: key.to_string(),
                        owner_pid: held.owner_pid,
                    }));
                }
                Some(Ok(stale)) => {
                    tracing::info!(bucket, key, owner_pid = stale.owner_pid, "taking over a claim whose owner is gone")
                }
                // A damaged claim says nothing trustworthy about an owner: treat it as free.
                Some(Err(reason)) => tracing::warn!(bucket, key, reason, "replacing a damaged claim record"),
                None => {}
            }
            row.write(&tx, mac)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(Claim { db: self.clone(), row: Mutex::new(row), released: AtomicBool::new(false) })
    }

    /// Every claim, live or left over, for `status` (claims are few: at most the uploads in flight plus
    /// leftovers of dead processes, which [`StateDb::prune_stale_claims`] removes).
    pub fn list_in_flight(&self) -> Result<Vec<InFlight>, StateError> {
        let now = rows::time_to_ns(SystemTime::now());
        self.run(|conn, mac| {
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY bucket, key"))?;
            let mut rs = stmt.query([])?;
            while let Some(row) = rs.next()? {
                match read(row, mac)? {
                    Ok(c) => out.push(c.in_flight(now)),
                    Err(reason) => tracing::debug!(reason, "skipping a damaged claim record"),
                }
            }
            Ok(out)
        })
    }

    /// Delete the claims whose owners are gone (and damaged ones); returns how many. The agent calls this at
    /// start-up so `status` does not show the leftovers of crashed processes.
    pub fn prune_stale_claims(&self) -> Result<usize, StateError> {
        let now = rows::time_to_ns(SystemTime::now());
        self.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Keys as stored (whatever their type), so that even a damaged row is matched exactly.
            let mut doomed: Vec<(Value, Value)> = Vec::new();
            {
                let mut stmt = tx.prepare_cached(SELECT)?;
                let mut rs = stmt.query([])?;
                while let Some(row) = rs.next()? {
                    let stale = match read(row, mac)? {
                        Ok(c) => !c.live(now),
                        Err(_) => true,
                    };
                    if stale {
                        doomed.push((row.get(0)?, row.get(1)?));
                    }
                }
            }
            {
                let mut del = tx.prepare_cached("DELETE FROM claims WHERE bucket = ?1 AND key = ?2")?;
                for (bucket, key) in &doomed {
                    del.execute(params![bucket, key])?;
                }
            }
            tx.commit()?;
            Ok(doomed.len())
        })
    }
}

impl Claim {
    pub fn bucket(&self) -> String {
        self.lock().bucket.clone()
    }

    pub fn key(&self) -> String {
        self.lock().key.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimRow> {
        self.row.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Heartbeat and report progress. Fails with [`StateError::ClaimLost`] if the claim was taken over.
    pub fn progress(&self, done_bytes: u64) -> Result<(), StateError> {
        self.update(|r| r.done_bytes = done_bytes)
    }

    /// Note the checkpoint once the multipart upload has one (heartbeats too).
    pub fn attach_upload(&self, id: UploadRowId) -> Result<(), StateError> {
        self.update(|r| r.upload = Some(id))
    }

    /// The file's size changed (it was modified mid-upload; heartbeats too).
    pub fn set_total_bytes(&self, total_bytes: u64) -> Result<(), StateError> {
        self.update(|r| r.total_bytes = total_bytes)
    }

    fn update(&self, change: impl FnOnce(&mut ClaimRow)) -> Result<(), StateError> {
        let mut row = self.lock();
        let mut next = row.clone();
        change(&mut next);
        next.heartbeat_ns = rows::time_to_ns(SystemTime::now()).max(row.heartbeat_ns);
        self.db.run(|conn, mac| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !still_ours(&tx, &next)? {
                return Err(super::Op::State(self.lost(&next)));
            }
            next.write(&tx, mac)?;
            tx.commit()?;
            Ok(())
        })?;
        *row = next;
        Ok(())
    }

    fn lost(&self, row: &ClaimRow) -> StateError {
        StateError::ClaimLost { path: self.db.err_path(), bucket: row.bucket.clone(), key: row.key.clone() }
    }

    /// Give the claim up. Fails with [`StateError::ClaimLost`] if another process had taken it over (then
    /// its row is left alone).
    pub fn release(self) -> Result<(), StateError> {
        self.release_inner()
    }

    fn release_inner(&self) -> Result<(), StateError> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let row = self.lock().clone();
        let deleted = self.db.run(|conn, _| {
            Ok(conn
                .prepare_cached("DELETE FROM claims WHERE bucket = ?1 AND key = ?2 AND token = ?3")?
                .execute(params![row.bucket, row.key, &row.token[..]])?)
        })?;
        if deleted == 0 { Err(self.lost(&row)) } else { Ok(()) }
    }
}

/// The row for the claim's target still carries our token (nobody took it over).
fn still_ours(conn: &Connection, row: &ClaimRow) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM claims WHERE bucket = ?1 AND key = ?2 AND token = ?3")?
        .query_row(params![row.bucket, row.key, &row.token[..]], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            tracing::debug!(error = %e, "releasing a dropped claim");
        }
    }
}

#[cfg(test)]
impl StateDb {
    pub(super) fn claim_for_test(
        &self,
        local_path: &Path,
        bucket: &str,
        key: &str,
        owner_pid: u32,
        now: SystemTime,
    ) -> Result<Claim, StateError> {
        self.claim_as(local_path, bucket, key, 0, owner_pid, rows::time_to_ns(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_liveness() {
        assert!(pid_running(std::process::id()));
        assert!(!pid_running(0));
        assert!(!pid_running(u32::MAX));
        // Above the kernel's pid_max (at most 2^22 on Linux): never a running process.
        assert!(!pid_running(i32::MAX as u32));
    }
}
