//! Helpers for the watch tests: special files, paths the kernel cannot open, and waiting with a timeout.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous bound for anything the tests wait for; a hang becomes a failure, never a stalled run.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("test paths have no NUL")
}

pub fn mkfifo(path: &Path) {
    let rc = unsafe { libc::mkfifo(cstr(path).as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

/// A character device node (needs CAP_MKNOD); `Err` says why not.
pub fn mknod_char(path: &Path) -> std::io::Result<()> {
    let dev = libc::makedev(1, 3); // the same device as /dev/null
    let rc = unsafe { libc::mknod(cstr(path).as_ptr(), libc::S_IFCHR | 0o600, dev) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

pub fn is_root_user() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// For a test about what an unprivileged user meets (permission bits do not stop root): `true` when the
/// caller should do the work here (it runs unprivileged), `false` when it ran as root and has just run
/// `test` (its full name) again as the user `nobody` through setpriv, from a copy of this test binary that
/// `nobody` can execute, and checked that the run passed that very test.
pub fn run_unprivileged(test: &str) -> bool {
    if !is_root_user() {
        return true;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("tests");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", test, "--test-threads", "1"])
        .env("TMPDIR", "/tmp")
        .output()
        .expect("run setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("test {test} ... ok")) && stdout.contains("1 passed"),
        "the unprivileged run of {test} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Create `levels` nested directories of 200-byte names under `base`, and a file `leaf` at the bottom,
/// using `*at` calls so that no single path the test passes to the kernel is too long. Returns the
/// relative path of the top directory and of the leaf. With enough levels, the full path is longer than
/// PATH_MAX and cannot be opened by path: an unreadable entry that permission bits cannot produce when the
/// tests run as root.
pub fn make_too_deep(base: &Path, levels: usize) -> (PathBuf, PathBuf) {
    let name = "d".repeat(200);
    let cname = CString::new(name.clone()).unwrap();
    let leaf = CString::new("leaf").unwrap();
    let mut rel = PathBuf::new();
    unsafe {
        let mut fd = libc::open(cstr(base).as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC);
        assert!(fd >= 0, "open {}: {}", base.display(), std::io::Error::last_os_error());
        for _ in 0..levels {
            assert_eq!(libc::mkdirat(fd, cname.as_ptr(), 0o755), 0, "mkdirat: {}", std::io::Error::last_os_error());
            let next = libc::openat(fd, cname.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(next >= 0, "openat: {}", std::io::Error::last_os_error());
            libc::close(fd);
            fd = next;
            rel.push(&name);
        }
        let f = libc::openat(fd, leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
        assert!(f >= 0, "create leaf: {}", std::io::Error::last_os_error());
        libc::close(f);
        libc::close(fd);
    }
    let top = PathBuf::from(&name);
    (top, rel.join("leaf"))
}

/// Run a blocking closure on a thread and fail (instead of hanging) if it does not finish in time.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?} (hung?)"))
}

/// Install a tracing subscriber once so failing tests show the module's logs (`RUST_LOG=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Mount a fresh tmpfs on `path` (needs CAP_SYS_ADMIN).
pub fn mount_tmpfs(path: &Path) -> std::io::Result<()> {
    let source = CString::new("ossmirror-test").unwrap();
    let fstype = CString::new("tmpfs").unwrap();
    let rc = unsafe { libc::mount(source.as_ptr(), cstr(path).as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Unmount `path`, lazily if it is busy.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let c = cstr(path);
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts everything still mounted on its path when dropped (a failing test must not leave mounts).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        while unmount(&self.0).is_ok() {}
    }
}
