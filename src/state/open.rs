//! Opening the database file: creation with private modes, inspection, and recovery of a damaged file.
//!
//! **Creation** is atomic: a new database is built complete (schema, MAC key, WAL mode) in a temporary
//! sibling created 0600, then renamed into place. So a file at the database path is either a database we
//! finished creating or something else, and a zero-length file is damage, never "a crash while creating".
//! SQLite creates `-wal` and `-shm` with the main file's permission bits (it copies `st_mode` and fchmods,
//! so the umask does not matter), which makes them 0600 too. Missing parent directories are created 0700.
//!
//! **Inspection** ([`inspect`]) classifies an existing path as healthy, damaged, or an error that says
//! nothing about the file (permissions, disk full, locks), which is returned and never "recovered":
//! damaged means not a regular file; empty; SQLite says `NOTADB` or `CORRUPT`; `PRAGMA quick_check` is not
//! `ok`; the schema is not the one we wrote; the MAC key is missing; or a `.damaged` marker left by a
//! handle that hit SQLite corruption at run time (quick_check does not compare indexes with their tables,
//! so run-time corruption is remembered rather than re-detected). A file that is a healthy SQLite database
//! but not ours ([`StateError::Foreign`]) or from a newer ossmirror ([`StateError::TooNew`]) is refused
//! and left alone.
//!
//! **Recovery** moves the damaged file aside to `<name>.corrupt-<unix-time>` (its `-wal`, `-shm` and
//! `-journal` first, so that a stale WAL can never be replayed into the fresh database), reads what upload
//! ids it can from the moved copy ([`salvage`]: read-only, bounded in rows and time, never panics), and
//! creates a fresh database.
//!
//! **Locking.** Two processes may open the same database (the agent and `status`, or two `cp`s). Every
//! handle holds a shared `flock` on `<name>.lock` for its lifetime; creating and recovering take it
//! exclusively. So a process never moves a database out from under another one that has it open (it
//! reports [`StateError::Corrupt`] instead), and two processes starting together cannot both create or
//! both recover. The lock file is separate from the database because SQLite's own POSIX locks are
//! per-process and would be released by closing any other descriptor of the database file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::mac::MacKey;
use super::schema::{self, APPLICATION_ID, LATEST, Migrated};
use super::{OpenReport, Quarantine, SalvagedUpload, StateError};

/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `open` waits for another process that is creating or recovering the database.
const LOCK_WAIT: Duration = Duration::from_secs(15);
/// How long a damaged database waits for other processes to close it before giving up on recovery.
const RECOVER_LOCK_WAIT: Duration = Duration::from_secs(2);
/// Upper bounds for reading upload ids out of a damaged file.
const SALVAGE_TIME: Duration = Duration::from_secs(5);
const SALVAGE_MAX_ROWS: usize = 100_000;

/// What a successful file open hands to `StateDb`.
pub(crate) struct Opened {
    pub conn: Connection,
    pub key: MacKey,
    pub lock: Option<LockFile>,
    pub report: OpenReport,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |source| StateError::Sqlite { path: path.to_path_buf(), source }
}

/// `SQLITE_CORRUPT` or `SQLITE_NOTADB` (any extended code).
pub(crate) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

/// `path` with `suffix` appended to its last component (`state.db` + `-wal`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

pub(crate) fn lock_path(db: &Path) -> PathBuf {
    with_suffix(db, ".lock")
}

pub(crate) fn marker_path(db: &Path) -> PathBuf {
    with_suffix(db, ".damaged")
}

/// SQLite's companion files, in the order they must be moved (before the main file).
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

fn exists(path: &Path) -> bool {
    // symlink_metadata: a dangling symlink still occupies the name.
    fs::symlink_metadata(path).is_ok()
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---- the lock file ----------------------------------------------------------------------------------------

/// A `flock` on `<db>.lock`, held shared for a handle's lifetime and exclusively while creating or
/// recovering. Dropping the file releases the lock.
#[derive(Debug)]
pub(crate) struct LockFile {
    file: File,
}

impl LockFile {
    fn open(path: &Path, create: bool) -> io::Result<LockFile> {
        let file = if create {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
            private_mode(&file)?;
            file
        } else {
            OpenOptions::new().read(true).open(path)?
        };
        Ok(LockFile { file })
    }

    /// Take (or convert to) `op` (`LOCK_SH` / `LOCK_EX`) without blocking; `false` if another holds it.
    /// A failed conversion leaves no lock held: flock(2) drops the old lock before trying the new one.
    fn try_lock(&self, op: libc::c_int) -> io::Result<bool> {
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(self.file.as_raw_fd(), op | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(false),
                _ => return Err(err),
            }
        }
    }

    /// Poll for `op` until `deadline` (polling rather than a blocking flock, so a wedged holder costs a
    /// bounded wait and a clear error instead of a hang).
    fn lock_until(&self, op: libc::c_int, deadline: Instant) -> io::Result<bool> {
        loop {
            if self.try_lock(op)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Force 0600 whatever the umask (umask only clears bits, but a umask like 0o277 would also clear ours).
fn private_mode(file: &File) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o600))
}

// ---- creation ---------------------------------------------------------------------------------------------

/// Create the missing ancestors of `path`, each 0700 (existing directories are left as they are).
pub(crate) fn ensure_parent(path: &Path) -> Result<(), StateError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut missing = Vec::new();
    let mut cur = Some(parent);
    while let Some(dir) = cur.filter(|d| !d.as_os_str().is_empty() && !exists(d)) {
        missing.push(dir);
        cur = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
    Ok(())
}

fn remove_with_companions(path: &Path) {
    for p in std::iter::once(path.to_path_buf()).chain(COMPANIONS.iter().map(|s| with_suffix(path, s))) {
        let _ = fs::remove_file(p);
    }
}

fn sync_dir(path: &Path) {
    // Makes the rename durable. Best effort: some file systems refuse fsync on a directory.
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Build a complete database next to `path` and rename it into place. Caller holds the exclusive lock and
/// has checked that nothing is at `path`.
fn create_fresh(path: &Path) -> Result<(), StateError> {
    // Companions without a main file belong to a database that no longer exists; SQLite would replay such
    // a WAL into the new file, so move them out of the way (aside, not deleted: they are someone's data).
    let leftovers: Vec<&str> = COMPANIONS.iter().copied().filter(|s| exists(&with_suffix(path, s))).collect();
    if !leftovers.is_empty() {
        let aside = aside_name(path, "orphan");
        for s in leftovers {
            fs::rename(with_suffix(path, s), with_suffix(&aside, s)).map_err(io_err(path))?;
        }
        tracing::warn!(path = %path.display(), moved_to = %aside.display(), "state database: moved away leftover SQLite files that had no database");
    }

    let file_name = path.file_name().ok_or_else(|| {
        io_err(path)(io::Error::new(io::ErrorKind::InvalidInput, "the state database path has no file name"))
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".new-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    remove_with_companions(&tmp);

    let result = (|| {
        let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
        private_mode(&f).map_err(io_err(&tmp))?;
        drop(f);
        let mut conn =
            Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sql_err(&tmp))?;
        // Schema in rollback-journal mode (commits go straight to the file), then switch to WAL, which is
        // a flag in the header: nothing is left in a WAL when the connection closes.
        match schema::migrate(&mut conn).map_err(sql_err(&tmp))? {
            Migrated::Ok => {}
            Migrated::TooNew(found) => return Err(StateError::TooNew { path: tmp.clone(), found, known: LATEST }),
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql_err(&tmp))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state database: the file system does not support WAL");
        }
        conn.close().map_err(|(_, e)| sql_err(&tmp)(e))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
        for s in COMPANIONS {
            let _ = fs::remove_file(with_suffix(&tmp, s));
        }
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(path);
        Ok(())
    })();
    if result.is_err() {
        remove_with_companions(&tmp);
    }
    result
}

// ---- inspection -------------------------------------------------------------------------------------------

pub(crate) enum Inspect {
    Healthy(Connection, MacKey),
    Damaged(String),
}

/// Connection settings for normal use.
pub(crate) fn configure(conn: &Connection, path: &Path) -> Result<(), StateError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err(path))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql_err(path))?;
    conn.pragma_update(None, "foreign_keys", true).map_err(sql_err(path))?;
    Ok(())
}

/// Classify the file at `path` (see the module docs). Errors are conditions that say nothing about the
/// file's health and must not lead to recovery.
pub(crate) fn inspect(path: &Path) -> Result<Inspect, StateError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        // Checked before SQLite sees it: opening a FIFO would block forever.
        return Ok(Inspect::Damaged(format!("the path is {what}")));
    }
    if meta.len() == 0 {
        return Ok(Inspect::Damaged("the file is empty".into()));
    }
    if let Ok(detail) = fs::read_to_string(marker_path(path)) {
        return Ok(Inspect::Damaged(format!("SQLite reported corruption while it was in use: {}", detail.trim())));
    }
    tighten_modes(path, &meta);

    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql_err(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err(path))?;
    // Until the file is known to be healthy, closing must not checkpoint the WAL into it: the WAL goes
    // aside with a damaged file, intact, for salvage.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(sql_err(path))?;
    match inspect_conn(conn, path) {
        Ok(r) => Ok(r),
        Err(StateError::Sqlite { source, .. }) if is_corruption(&source) => Ok(Inspect::Damaged(source.to_string())),
        Err(e) => Err(e),
    }
}

fn inspect_conn(mut conn: Connection, path: &Path) -> Result<Inspect, StateError> {
    let sql = sql_err(path);
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(&sql)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&sql)?;
    if app_id != APPLICATION_ID {
        let tables: Vec<String> = {
            let mut stmt = conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").map_err(&sql)?;
            stmt.query_map([], |r| r.get(0)).map_err(&sql)?.collect::<Result<_, _>>().map_err(&sql)?
        };
        let ours = ["meta", "uploads", "parts"].iter().all(|t| tables.iter().any(|n| n == t));
        if ours {
            return Ok(Inspect::Damaged(format!("the header's application id is {app_id:#x}")));
        }
        if app_id != 0 || version != 0 || !tables.is_empty() {
            return Err(StateError::Foreign {
                path: path.to_path_buf(),
                detail: format!("application id {app_id:#x}, schema version {version}, {} tables", tables.len()),
            });
        }
        // An empty SQLite database (someone ran `sqlite3 state.db ''`): initialize it in place below.
    }
    if version > LATEST {
        return Err(StateError::TooNew { path: path.to_path_buf(), found: version, known: LATEST });
    }
    if app_id == APPLICATION_ID && version < 1 {
        // create_fresh sets both in one transaction: ours with no schema version is a damaged header
        // (migrating it would try to create tables that exist).
        return Ok(Inspect::Damaged(format!("the header's schema version is {version}")));
    }
    if let Some(problems) = quick_check(&conn).map_err(&sql)? {
        return Ok(Inspect::Damaged(format!("quick_check: {problems}")));
    }
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).map_err(&sql)?;
    configure(&conn, path)?;
    match schema::migrate(&mut conn).map_err(&sql)? {
        Migrated::Ok => {}
        Migrated::TooNew(found) => return Err(StateError::TooNew { path: path.to_path_buf(), found, known: LATEST }),
    }
    match schema::check(&conn).map_err(&sql)? {
        Ok(key) => {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false).map_err(&sql)?;
            Ok(Inspect::Healthy(conn, key))
        }
        Err(problem) => Ok(Inspect::Damaged(problem)),
    }
}

/// `None` if `PRAGMA quick_check` says `ok`, else its first few complaints.
fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
    let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(if lines.len() == 1 && lines[0] == "ok" { None } else { Some(lines.join("; ")) })
}

/// An existing database readable by group or others (created by an older build, or copied) is made
/// private, with its companions; failure is only a warning (the file may belong to someone else).
fn tighten_modes(path: &Path, meta: &fs::Metadata) {
    if meta.permissions().mode() & 0o077 == 0 {
        return;
    }
    for p in std::iter::once(path.to_path_buf()).chain(COMPANIONS.iter().map(|s| with_suffix(path, s))) {
        if let Err(e) = fs::set_permissions(&p, fs::Permissions::from_mode(0o600)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "state database: cannot make the file private (0600)");
            }
        }
    }
}

// ---- recovery ---------------------------------------------------------------------------------------------

/// `<name>.<label>-<unix-time>`, with `-N` added if that name (or its `-wal`) is taken.
fn aside_name(path: &Path, label: &str) -> PathBuf {
    let base = with_suffix(path, &format!(".{label}-{}", unix_secs()));
    let mut candidate = base.clone();
    let mut n = 1u32;
    while exists(&candidate) || COMPANIONS.iter().any(|s| exists(&with_suffix(&candidate, s))) {
        candidate = with_suffix(&base, &format!("-{n}"));
        n += 1;
    }
    candidate
}

/// Move the damaged database aside and salvage upload ids from it. Caller holds the exclusive lock.
fn quarantine(path: &Path, reason: String) -> Result<Quarantine, StateError> {
    let moved_to = aside_name(path, "corrupt");
    // Companions first: if we die half-way, a main file without its WAL is merely old; a WAL left
    // behind next to a fresh database would be replayed into it. (create_fresh also moves such leftovers.)
    for s in COMPANIONS {
        let from = with_suffix(path, s);
        if exists(&from) {
            fs::rename(&from, with_suffix(&moved_to, s)).map_err(io_err(&from))?;
        }
    }
    fs::rename(path, &moved_to).map_err(io_err(path))?;
    sync_dir(path);
    let _ = fs::remove_file(marker_path(path));
    let salvaged_uploads = match fs::symlink_metadata(&moved_to) {
        Ok(m) if m.is_file() && m.len() > 0 => salvage(&moved_to),
        _ => Vec::new(),
    };
    tracing::warn!(
        path = %path.display(),
        moved_to = %moved_to.display(),
        reason = %reason,
        salvaged_uploads = salvaged_uploads.len(),
        "state database was damaged: moved it aside and started a fresh one; uploads it recorded will be \
         aborted on the server and files re-verified"
    );
    Ok(Quarantine { moved_to, reason, salvaged_uploads })
}

/// Best-effort (bucket, key, upload_id) triples from a damaged file. Read-only (SQLite may create a `-shm`
/// index next to it, nothing else), at most [`SALVAGE_MAX_ROWS`] rows and [`SALVAGE_TIME`] (a watchdog
/// interrupts SQLite), and any failure, even a panic, just ends the salvage with what it has.
pub(crate) fn salvage(db: &Path) -> Vec<SalvagedUpload> {
    let mut found = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| salvage_into(db, &mut found)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(path = %db.display(), error = %e, "salvage stopped"),
        Err(_) => tracing::warn!(path = %db.display(), "salvage panicked; keeping what it had read"),
    }
    found
}

fn salvage_into(db: &Path, found: &mut Vec<SalvagedUpload>) -> rusqlite::Result<()> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    let interrupt = conn.get_interrupt_handle();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(SALVAGE_TIME) {
            interrupt.interrupt();
        }
    });
    let result = (|| {
        // Without this SQLite refuses the whole schema when any table's root page is past the end of a
        // truncated file, even though the uploads table (an early page) is intact. Read-only: no writes.
        conn.execute_batch("PRAGMA writable_schema = ON")?;
        let mut stmt = conn.prepare("SELECT bucket, key, upload_id FROM uploads")?;
        let mut rows = stmt.query([])?;
        // A row error (a damaged page part-way) ends the scan; rows already read are kept.
        while let Some(row) = rows.next()? {
            if found.len() >= SALVAGE_MAX_ROWS {
                break;
            }
            let text = |i: usize| match row.get_ref(i) {
                Ok(rusqlite::types::ValueRef::Text(t)) => std::str::from_utf8(t).ok().map(str::to_owned),
                _ => None,
            };
            if let (Some(bucket), Some(key), Some(upload_id)) = (text(0), text(1), text(2)) {
                let s = SalvagedUpload { bucket, key, upload_id };
                if !s.bucket.is_empty() && !s.upload_id.is_empty() {
                    found.push(s);
                }
            }
        }
        Ok(())
    })();
    drop(done_tx);
    let _ = watchdog.join();
    // A damaged b-tree can yield a row twice; aborting twice is harmless, but report each upload once.
    found.sort_by(|a, b| (&a.bucket, &a.key, &a.upload_id).cmp(&(&b.bucket, &b.key, &b.upload_id)));
    found.dedup();
    result
}

// ---- entry points -----------------------------------------------------------------------------------------

/// Open (creating or recovering) the database at `path` for reading and writing.
pub(crate) fn open(path: &Path) -> Result<Opened, StateError> {
    ensure_parent(path)?;
    let lock = LockFile::open(&lock_path(path), true).map_err(io_err(path))?;
    // Another process may replace the file (recover it) while we wait to do the same; then look again.
    for _ in 0..3 {
        if let Some((conn, key, report)) = open_once(path, &lock)? {
            return Ok(Opened { conn, key, lock: Some(lock), report });
        }
    }
    Err(StateError::Locked { path: path.to_path_buf() })
}

/// (device, inode) of the file at `path`: tells whether another process replaced it.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// One attempt at [`open`]; `None` if another process replaced the damaged file while we waited.
fn open_once(path: &Path, lock: &LockFile) -> Result<Option<(Connection, MacKey, OpenReport)>, StateError> {
    let locked = || StateError::Locked { path: path.to_path_buf() };
    let deadline = Instant::now() + LOCK_WAIT;
    // Create under the exclusive lock, so two processes starting together cannot both create; a process
    // that loses the race sees the file appear and opens it.
    loop {
        if exists(path) {
            break;
        }
        if lock.try_lock(libc::LOCK_EX).map_err(io_err(path))? {
            if !exists(path) {
                create_fresh(path)?;
            }
            break;
        }
        if Instant::now() >= deadline {
            return Err(locked());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !lock.lock_until(libc::LOCK_SH, deadline).map_err(io_err(path))? {
        return Err(locked());
    }

    let seen = identity(path);
    let reason = match inspect(path)? {
        Inspect::Healthy(conn, key) => return Ok(Some((conn, key, OpenReport::default()))),
        Inspect::Damaged(reason) => reason,
    };

    // Recover only if no other handle has the file open: moving it out from under a running agent would
    // split the state in two.
    let deadline = Instant::now() + RECOVER_LOCK_WAIT;
    loop {
        if lock.try_lock(libc::LOCK_EX).map_err(io_err(path))? {
            break;
        }
        if identity(path) != seen {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{reason}; another process has it open, so it was left in place"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Look again under the exclusive lock: another process may have recovered it in the meantime.
    let (conn, key, report) = match inspect(path)? {
        Inspect::Healthy(conn, key) => (conn, key, OpenReport::default()),
        Inspect::Damaged(reason) => {
            let q = quarantine(path, reason)?;
            create_fresh(path)?;
            match inspect(path)? {
                Inspect::Healthy(conn, key) => (conn, key, OpenReport { quarantined: Some(q) }),
                Inspect::Damaged(again) => {
                    return Err(StateError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!("the freshly created database is damaged too ({again})"),
                    });
                }
            }
        }
    };
    if !lock.lock_until(libc::LOCK_SH, Instant::now() + LOCK_WAIT).map_err(io_err(path))? {
        return Err(locked());
    }
    Ok(Some((conn, key, report)))
}

/// Open an existing database without creating, migrating or recovering anything (the `status` command,
/// which must never move a database out from under the agent).
pub(crate) fn open_read_only(path: &Path) -> Result<Opened, StateError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() || meta.len() == 0 {
        return Err(StateError::Corrupt { path: path.to_path_buf(), detail: "not a database file".into() });
    }
    // A reader that cannot take the lock (a read-only directory, another user) still reads: the lock
    // only protects against recovery, which a reader never does.
    let lock = LockFile::open(&lock_path(path), false)
        .ok()
        .filter(|l| l.lock_until(libc::LOCK_SH, Instant::now() + LOCK_WAIT).unwrap_or(false));
    let sql = sql_err(path);
    let corrupt = |e: rusqlite::Error| {
        if is_corruption(&e) {
            StateError::Corrupt { path: path.to_path_buf(), detail: e.to_string() }
        } else {
            sql_err(path)(e)
        }
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(&corrupt)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&sql)?;
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(&corrupt)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&corrupt)?;
    if app_id != APPLICATION_ID {
        return Err(StateError::Foreign { path: path.to_path_buf(), detail: format!("application id {app_id:#x}") });
    }
    if version > LATEST {
        return Err(StateError::TooNew { path: path.to_path_buf(), found: version, known: LATEST });
    }
    if version < LATEST {
        return Err(StateError::TooOld { path: path.to_path_buf(), found: version, known: LATEST });
    }
    let key = schema::check(&conn)
        .map_err(&corrupt)?
        .map_err(|detail| StateError::Corrupt { path: path.to_path_buf(), detail })?;
    Ok(Opened { conn, key, lock, report: OpenReport::default() })
}

/// A private in-memory database.
pub(crate) fn open_in_memory() -> Result<Opened, StateError> {
    let path = Path::new(":memory:");
    let mut conn = Connection::open_in_memory().map_err(sql_err(path))?;
    configure(&conn, path)?;
    if let Migrated::TooNew(found) = schema::migrate(&mut conn).map_err(sql_err(path))? {
        return Err(StateError::TooNew { path: path.to_path_buf(), found, known: LATEST });
    }
    let key = schema::check(&conn)
        .map_err(sql_err(path))?
        .map_err(|detail| StateError::Corrupt { path: path.to_path_buf(), detail })?;
    Ok(Opened { conn, key, lock: None, report: OpenReport::default() })
}

/// Remember that SQLite reported corruption at run time, so the next `open` recovers the file even if
/// `quick_check` would pass. Best effort.
pub(crate) fn mark_damaged(path: &Path, detail: &str) {
    let marker = marker_path(path);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&marker)
        .and_then(|mut f| f.write_all(detail.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %marker.display(), error = %e, "cannot write the damage marker");
    }
}
