//! Opening and `stat`ing paths *below* a root without following a symbolic link in any component.
//!
//! The agent mirrors one tree. A path inside it names a file only if every directory on the way is a real
//! directory of the tree: if `x/` is replaced by a symlink to `/root/secret`, then `x/key.pem` is *not* a
//! file of the tree any more, however `open("root/x/key.pem")` resolves it. A plain `open` with `O_NOFOLLOW`
//! checks only the last component, which is how an unprivileged user who owns a watched subdirectory could
//! make an agent running as root upload a root-only file. So every open and every `stat` the agent does on
//! its own behalf goes through here:
//!
//! - with `openat2(2)` (Linux 5.6+): one call, `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` from a descriptor of
//!   the root, so the kernel refuses any symlink, any `..` escape and any magic link on the way;
//! - where the kernel or a seccomp filter refuses `openat2`, component by component: `openat(dir, name,
//!   O_DIRECTORY | O_NOFOLLOW)` for each directory, then the last name with `O_NOFOLLOW`.
//!
//! Errors keep the kernel's meaning: `ELOOP` when a symlink is on the way (or is the file itself, for
//! [`open`]), `ENOTDIR` when something on the way is not a directory, `ENOENT` when a name is missing.
//! [`is_gone`] says which of them mean "nothing of the tree is at this path any more".
//!
//! With `--follow-symlinks` the user asked for the opposite, and none of this is used.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `openat2` turned out to be unavailable, so the fallback is used without asking again.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Open the regular file (or whatever is there) at `rel` below `root` for reading, refusing a symlink in
/// any component, the last one included. `extra_flags` are added to `O_RDONLY | O_CLOEXEC | O_NOFOLLOW`
/// (the engine adds `O_NONBLOCK`, so a FIFO never blocks the open).
pub fn open(root: &Path, rel: &Path, extra_flags: libc::c_int) -> io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | extra_flags;
    resolve(root, rel, flags).map(File::from)
}

/// `lstat` of `rel` below `root`: the metadata of what is at that path itself (a symlink at the last
/// component is reported as a symlink), refusing with `ELOOP` a symlink in any directory above it.
pub fn symlink_metadata(root: &Path, rel: &Path) -> io::Result<Metadata> {
    // O_PATH | O_NOFOLLOW on a trailing symlink yields a descriptor of the link itself, also under
    // RESOLVE_NO_SYMLINKS; fstat on an O_PATH descriptor works since Linux 3.6.
    let fd = resolve(root, rel, libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW)?;
    File::from(fd).metadata()
}

/// Whether an error from [`open`] or [`symlink_metadata`] means that nothing of the tree is at the path:
/// it is missing, something above it is no longer a directory, or a directory above it became a symlink.
/// (A path that exists but cannot be read proves nothing and is not gone.)
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP))
}

fn resolve(root: &Path, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let names = components(rel)?;
    let root_fd = open_dir_path(root)?;
    if names.is_empty() {
        // The root itself: reopen it with the flags asked for.
        return openat(&root_fd, c".", flags);
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_beneath(&root_fd, rel, flags) {
            Err(e) if openat2_unavailable(&e) => {
                tracing::debug!(error = %e, "openat2 is not available; resolving paths component by component");
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    walk(root_fd, &names, flags)
}

/// The names of `rel`, which must be a plain relative path (no `..`, no root, no prefix).
fn components(rel: &Path) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => names.push(c_string(name.as_bytes())?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a path below the watched directory", rel.display()),
                ));
            }
        }
    }
    Ok(names)
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

/// A descriptor of the root directory (following a symlink at the root itself: the agent resolved the
/// root once, at start, and watches what it resolved to).
fn open_dir_path(root: &Path) -> io::Result<OwnedFd> {
    let path = c_string(root.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the result is checked before it is wrapped.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    wrap(fd)
}

fn openat(dir: &OwnedFd, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: a live directory descriptor and a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0) };
        match wrap(fd) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn wrap(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn openat2_beneath(root: &OwnedFd, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = c_string(rel.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; zeroed is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: a live descriptor, a NUL-terminated path, and `how` with its exact size, as openat2(2) asks.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match wrap(fd as libc::c_int) {
            // openat2 reports a retryable race with the rename of a path component as EAGAIN.
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::EAGAIN) => continue,
            other => return other,
        }
    }
}

/// The kernel has no `openat2` (before 5.6), or a sandbox's seccomp filter refuses it.
fn openat2_unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
}

/// The fallback: each directory with `O_DIRECTORY | O_NOFOLLOW` (a symlink there fails with `ELOOP` or
/// `ENOTDIR`), then the last name with the caller's flags (which include `O_NOFOLLOW`).
fn walk(root: OwnedFd, names: &[CString], flags: libc::c_int) -> io::Result<OwnedFd> {
    let (last, dirs) = names.split_last().expect("resolve handles the empty path");
    let mut dir = root;
    for name in dirs {
        dir =
            openat(&dir, name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC).map_err(|e| {
                match e.raw_os_error() {
                    // O_PATH | O_NOFOLLOW opens a symlink itself, which O_DIRECTORY then refuses as ENOTDIR:
                    // say ELOOP, as openat2 does, so callers see one meaning for "a symlink on the way".
                    Some(libc::ENOTDIR) if is_symlink_at(&dir, name) => io::Error::from_raw_os_error(libc::ELOOP),
                    _ => e,
                }
            })?;
    }
    openat(&dir, last, flags)
}

fn is_symlink_at(dir: &OwnedFd, name: &std::ffi::CStr) -> bool {
    // SAFETY: zeroed stat is a valid out-parameter; a live descriptor and a NUL-terminated name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    rc == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFLNK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// Run `check` once through openat2 and once through the component walk.
    fn both_ways(check: impl Fn()) {
        NO_OPENAT2.store(false, Ordering::Relaxed);
        check();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        check();
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    fn errno(r: io::Result<impl std::fmt::Debug>) -> i32 {
        r.expect_err("expected an error").raw_os_error().expect("an OS error")
    }

    #[test]
    fn a_symlink_anywhere_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b/f"), b"inside").unwrap();
        std::fs::write(outside.join("secret"), b"outside").unwrap();
        symlink(&outside, root.join("a/link")).unwrap();
        symlink(outside.join("secret"), root.join("a/b/flink")).unwrap();
        std::fs::write(root.join("a/file"), b"not a dir").unwrap();
        both_ways(|| {
            let mut s = String::new();
            open(&root, Path::new("a/b/f"), 0).unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, "inside");
            // A symlinked directory on the way: refused, whatever it points to.
            assert_eq!(errno(open(&root, Path::new("a/link/secret"), 0)), libc::ELOOP);
            assert_eq!(errno(symlink_metadata(&root, Path::new("a/link/secret"))), libc::ELOOP);
            // A symlink as the last component: open refuses it, lstat describes the link itself.
            assert_eq!(errno(open(&root, Path::new("a/b/flink"), 0)), libc::ELOOP);
            assert!(symlink_metadata(&root, Path::new("a/b/flink")).unwrap().file_type().is_symlink());
            // Something on the way that is not a directory, and a missing name.
            assert_eq!(errno(symlink_metadata(&root, Path::new("a/file/x"))), libc::ENOTDIR);
            assert_eq!(errno(symlink_metadata(&root, Path::new("a/nope"))), libc::ENOENT);
            for gone in ["a/link/secret", "a/file/x", "a/nope"] {
                assert!(is_gone(&symlink_metadata(&root, Path::new(gone)).unwrap_err()), "{gone}");
            }
            // The root itself, and directories, can be looked at.
            assert!(symlink_metadata(&root, Path::new("")).unwrap().is_dir());
            assert!(symlink_metadata(&root, Path::new("a/b")).unwrap().is_dir());
        });
    }

    #[test]
    fn paths_that_leave_the_root_are_refused_before_any_system_call() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "a/../../x", "/etc/passwd"] {
            let e = symlink_metadata(dir.path(), Path::new(bad)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert!(!is_gone(&e), "{bad}");
        }
    }

    #[test]
    fn a_root_reached_through_a_symlink_still_works() {
        // The agent canonicalizes the root, but a symlink *at* the root is the user's choice, not the tree's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), b"x").unwrap();
        symlink(dir.path().join("real"), dir.path().join("via")).unwrap();
        both_ways(|| {
            assert_eq!(symlink_metadata(&dir.path().join("via"), Path::new("f")).unwrap().len(), 1);
        });
    }
}
