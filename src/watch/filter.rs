//! Which paths are never mirrored: `--exclude` globs, the default ignore list, and the agent's own files.
//!
//! # Matching rules
//! Patterns are [globset] globs matched against the path relative to the watched root, with `/` between
//! components, on the raw bytes of the name (so they work on names that are not UTF-8):
//! - `*`, `?` and `[...]` never cross a `/`; `**` does (`a/**/b`, `logs/**`).
//! - A pattern **without** `/` matches a name at any depth: `*.log` excludes `a.log` and `x/y/a.log`
//!   (it is matched as `**/*.log`).
//! - A pattern **with** `/` is anchored at the root: `build/out` excludes `build/out` only, not
//!   `src/build/out`. A leading `/` is allowed and means the same (`/build`).
//! - A pattern ending in `/` matches directories only: `cache/` excludes every directory named `cache`.
//! - An excluded directory excludes everything under it; the scanner does not descend into it.
//! - Matching is case-sensitive, like Linux file names. `\` escapes a special character (`\*`).
//!
//! # Default ignore list
//! [`DEFAULT_IGNORES`] holds the temporary and lock files that editors, browsers and office suites create
//! next to real files. Mirroring them is at best noise and at worst an upload of a half-written file that
//! is deleted a second later. It is on by default; [`FilterConfig::default_ignores`] = false turns it off.
//!
//! # The agent's own files
//! [`FilterConfig::own_paths`] names files the agent writes itself (its state database, its lock file, the
//! embedded store) in case they live inside the watched tree. They are recognised by **identity**, not by
//! path: an entry is the agent's own when its name is one of those files' names (or a companion: SQLite's
//! `-wal`, `-shm`, `-journal`, the `.lock` and `.damaged` files, quarantined `.corrupt-*` / `.orphan-*`
//! copies, the `.NAME.new-*` file a database is built in) *and* the directory holding it is the same
//! directory (device and inode) as the one holding the agent's file. So the state directory is found
//! however the tree reaches it (a symlinked `$HOME`, a bind mount), and a user's file that merely has the
//! same name elsewhere is not touched. A directory that is the agent's own (the embedded store) excludes
//! everything under it. Uploading a database while writing it would never settle and would trigger itself
//! forever; uploading a lock file is noise.
//!
//! Names are compared first; the directory is looked at only for a name that matches, so the check costs
//! nothing on the millions of other files.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Temporary, swap and lock files that are never worth mirroring (see the module docs for the rules).
pub const DEFAULT_IGNORES: &[&str] = &[
    // Generic temporaries and partial downloads.
    "*.tmp",
    "*.part",
    "*.crdownload", // Chrome, Edge
    "*.crswap",     // Chrome's File System Access API writes here, then renames
    // vim: swap files, and the probe file it creates to test whether it may write in a directory.
    "*.swp",
    "*.swo",
    "*.swx",
    "4913",
    // Backup files (vim, emacs, nano …) and emacs lock and auto-save files.
    "*~",
    ".#*",
    "#*#",
    // GNOME (gedit, GIO) atomic-save temporaries.
    ".goutputstream-*",
    // KDE Kate swap files.
    "*.kate-swp",
    // LibreOffice and Microsoft Office lock files.
    ".~lock.*#",
    "~$*",
    // macOS Finder metadata (copied trees often carry it).
    ".DS_Store",
];

/// Files that accompany one of the agent's files: SQLite's rollback journal, WAL and shared memory, and the
/// state module's lock file and damage marker.
const SIDE_FILES: &[&str] = &["-wal", "-shm", "-journal", ".lock", ".damaged"];
/// Prefixes (after the file's name) of copies the state module moves aside.
const ASIDE_COPIES: &[&str] = &[".corrupt-", ".orphan-"];

#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// Apply [`DEFAULT_IGNORES`].
    pub default_ignores: bool,
    /// The agent's own files and directories (absolute, or relative to the current directory); wherever
    /// the tree reaches them, they are excluded with their companions (see the module docs).
    pub own_paths: Vec<PathBuf>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig { excludes: Vec::new(), default_ignores: true, own_paths: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid --exclude pattern {pattern:?}: {source}")]
    BadGlob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
}

/// Compiled exclusion rules. Cheap to share (`Arc<Filter>`).
#[derive(Debug, Clone)]
pub struct Filter {
    /// Patterns matching files and directories.
    any: GlobSet,
    /// Patterns (written with a trailing `/`) matching directories only.
    dirs: GlobSet,
    /// The agent's own files.
    own: Vec<OwnFile>,
    /// The watched root, to look at the directory of an entry whose name matches an own file.
    root: PathBuf,
}

/// One of the agent's own files: its name, and the (device, inode) of the directory that holds it.
#[derive(Debug, Clone)]
struct OwnFile {
    name: Vec<u8>,
    dir: (u64, u64),
}

impl OwnFile {
    /// `name` is this file or one of its companions.
    fn names(&self, name: &[u8]) -> bool {
        let own = self.name.as_slice();
        let Some(rest) = name.strip_prefix(own) else {
            // `.NAME.new-PID`, where a fresh database is built before it is renamed into place.
            return name.strip_prefix(b".").and_then(|r| r.strip_prefix(own)).is_some_and(|r| r.starts_with(b".new-"));
        };
        rest.is_empty()
            || SIDE_FILES.iter().any(|s| rest == s.as_bytes())
            || ASIDE_COPIES.iter().any(|s| rest.starts_with(s.as_bytes()))
    }
}

fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl Filter {
    /// Rules for a tree rooted at `root` (used only to place [`FilterConfig::own_paths`]).
    pub fn new(root: &Path, cfg: &FilterConfig) -> Result<Self, FilterError> {
        let mut any = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        let defaults = if cfg.default_ignores { DEFAULT_IGNORES } else { &[] };
        let patterns = defaults.iter().copied().chain(cfg.excludes.iter().map(String::as_str));
        for pattern in patterns {
            let (glob, dir_only) = translate(pattern);
            let compiled = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| FilterError::BadGlob { pattern: pattern.to_string(), source })?;
            if dir_only {
                dirs.add(compiled);
            } else {
                any.add(compiled);
            }
        }
        let bad = |source| FilterError::BadGlob { pattern: "(combined set)".into(), source };
        let own = cfg
            .own_paths
            .iter()
            .filter_map(|p| {
                let abs = std::path::absolute(p).ok()?;
                // A file the agent has not created yet still has a directory that exists (the state
                // directory is made before the filter); a path without one can never be in the tree.
                let dir = dir_id(abs.parent()?)?;
                Some(OwnFile { name: abs.file_name()?.as_bytes().to_vec(), dir })
            })
            .collect();
        Ok(Filter { any: any.build().map_err(bad)?, dirs: dirs.build().map_err(bad)?, own, root: root.to_path_buf() })
    }

    /// A filter that excludes nothing.
    pub fn none() -> Self {
        Filter { any: GlobSet::empty(), dirs: GlobSet::empty(), own: Vec::new(), root: PathBuf::new() }
    }

    /// Whether the entry `rel` itself matches a rule (its ancestors are not looked at: the scanner has
    /// already decided to descend into them).
    pub fn excludes(&self, rel: &Path, is_dir: bool) -> bool {
        if rel.as_os_str().is_empty() {
            return false; // never the root
        }
        self.any.is_match(rel) || (is_dir && self.dirs.is_match(rel)) || self.is_own(rel)
    }

    /// Whether `rel` or any directory above it is excluded: for paths that arrive one by one from the
    /// watcher, where nobody has walked the ancestors.
    pub fn excludes_path(&self, rel: &Path, is_dir: bool) -> bool {
        let mut ancestors = rel.ancestors();
        ancestors.next(); // `rel` itself, checked last with its own kind
        // `ancestors()` ends with "" (the root), which `excludes` never excludes.
        ancestors.any(|a| self.excludes(a, true)) || self.excludes(rel, is_dir)
    }

    /// `rel` itself is one of the agent's files (see the module docs): its name matches, and its directory
    /// is the directory that holds that file.
    fn is_own(&self, rel: &Path) -> bool {
        let Some(name) = rel.file_name() else { return false };
        let matching: Vec<&OwnFile> = self.own.iter().filter(|o| o.names(name.as_bytes())).collect();
        if matching.is_empty() {
            return false;
        }
        let parent = rel.parent().map(|p| self.root.join(p)).unwrap_or_else(|| self.root.clone());
        dir_id(&parent).is_some_and(|id| matching.iter().any(|o| o.dir == id))
    }
}

/// Our pattern syntax → a globset pattern, and whether it matches directories only.
fn translate(pattern: &str) -> (String, bool) {
    let (body, dir_only) = match pattern.strip_suffix('/') {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let glob = if let Some(anchored) = body.strip_prefix('/') {
        anchored.to_string()
    } else if body.contains('/') {
        body.to_string()
    } else {
        format!("**/{body}")
    };
    (glob, dir_only)
}

/// A `PathBuf` from raw bytes (test and caller convenience for names that are not UTF-8).
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(excludes: &[&str], defaults: bool) -> Filter {
        let cfg = FilterConfig {
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            default_ignores: defaults,
            own_paths: vec![],
        };
        Filter::new(Path::new("/root"), &cfg).unwrap()
    }

    #[test]
    fn patterns_without_slash_match_at_any_depth() {
        let f = filter(&["*.log"], false);
        assert!(f.excludes(Path::new("a.log"), false));
        assert!(f.excludes(Path::new("x/y/a.log"), false));
        assert!(!f.excludes(Path::new("a.log.gz"), false));
        assert!(!f.excludes(Path::new("log"), false));
    }

    #[test]
    fn patterns_with_slash_are_anchored_and_star_stays_in_one_component() {
        let f = filter(&["build/out", "/top", "docs/*.pdf", "logs/**"], false);
        assert!(f.excludes(Path::new("build/out"), true));
        assert!(!f.excludes(Path::new("src/build/out"), true));
        assert!(f.excludes(Path::new("top"), false));
        assert!(!f.excludes(Path::new("a/top"), false));
        assert!(f.excludes(Path::new("docs/a.pdf"), false));
        assert!(!f.excludes(Path::new("docs/sub/a.pdf"), false), "* must not cross /");
        assert!(f.excludes(Path::new("logs/a/b/c"), false));
    }

    #[test]
    fn trailing_slash_means_directories_only() {
        let f = filter(&["cache/"], false);
        assert!(f.excludes(Path::new("a/cache"), true));
        assert!(!f.excludes(Path::new("a/cache"), false));
        assert!(f.excludes_path(Path::new("a/cache/file"), false));
    }

    #[test]
    fn excluded_ancestor_excludes_descendants() {
        let f = filter(&["node_modules", "/build"], false);
        assert!(f.excludes_path(Path::new("web/node_modules/x/y.js"), false));
        assert!(f.excludes_path(Path::new("build/a.o"), false));
        assert!(!f.excludes_path(Path::new("src/build/a.o"), false));
        assert!(!f.excludes_path(Path::new(""), true), "the root is never excluded");
    }

    #[test]
    fn default_list_catches_editor_and_browser_temporaries() {
        let f = filter(&[], true);
        for name in [
            "a.tmp",
            "d/.file.txt.swp",
            ".file.txt.swx",
            "file.txt~",
            ".#file.txt",
            "#file.txt#",
            "4913",
            "sub/4913",
            ".~lock.report.odt#",
            "movie.mkv.part",
            "setup.exe.crdownload",
            ".DS_Store",
            "x/.goutputstream-ABC123",
            "~$report.docx",
        ] {
            assert!(f.excludes_path(Path::new(name), false), "{name} should be ignored");
        }
        for name in ["file.txt", "tmp", "notes.md", "4914", "a#b", "swp"] {
            assert!(!f.excludes_path(Path::new(name), false), "{name} should be kept");
        }
        // And the list can be switched off.
        assert!(!filter(&[], false).excludes(Path::new("a.tmp"), false));
    }

    #[test]
    fn non_utf8_names_are_matched_on_bytes() {
        let f = filter(&["*.bin"], false);
        assert!(f.excludes(&path_from_bytes(b"dir/\xff\xfe.bin"), false));
        assert!(!f.excludes(&path_from_bytes(b"dir/\xff\xfe.txt"), false));
    }

    #[test]
    fn own_files_and_their_companions_are_excluded_by_the_identity_of_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        let state = real.join(".local/state/ossmirror");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(real.join("other")).unwrap();
        // The tree reaches the state directory through a symlink (a symlinked $HOME): paths differ, the
        // directory is the same.
        let root = tmp.path().join("home");
        std::os::unix::fs::symlink(&real, &root).unwrap();
        let cfg = FilterConfig {
            excludes: vec![],
            default_ignores: false,
            own_paths: vec![state.join("b-d-1.db"), state.join("b-d-1.agent.lock"), state.join("b-d-1.store")],
        };
        let f = Filter::new(&real, &cfg).unwrap();
        let at = |name: &str| PathBuf::from(".local/state/ossmirror").join(name);
        for own in [
            "b-d-1.db",
            "b-d-1.db-wal",
            "b-d-1.db-shm",
            "b-d-1.db-journal",
            "b-d-1.db.lock",
            "b-d-1.db.damaged",
            "b-d-1.db.corrupt-1700000000",
            ".b-d-1.db.new-42",
            "b-d-1.agent.lock",
        ] {
            assert!(f.excludes_path(&at(own), false), "{own} is the agent's");
        }
        assert!(f.excludes_path(&at("b-d-1.store/data/ab/blob"), false), "the embedded store's contents");
        for kept in ["b-d-1.db.bak", "b-d-1.dbx", "notes.txt"] {
            assert!(!f.excludes_path(&at(kept), false), "{kept} is not the agent's");
        }
        assert!(!f.excludes_path(Path::new("other/b-d-1.db"), false), "same name, another directory");
        // Watched through the symlinked path, the same files are recognised.
        let via_link = Filter::new(&root, &cfg).unwrap();
        assert!(via_link.excludes_path(&at("b-d-1.db-wal"), false));
        assert!(via_link.excludes_path(&at("b-d-1.db.lock"), false));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let cfg = FilterConfig { excludes: vec!["a[".into()], default_ignores: false, own_paths: vec![] };
        let err = Filter::new(Path::new("/r"), &cfg).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
    }
}
