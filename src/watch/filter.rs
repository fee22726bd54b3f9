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
//! [`FilterConfig::own_paths`] names files the agent writes itself (its state database, its logs) in case
//! they live inside the watched tree: each one, its SQLite side files (`-wal`, `-shm`, `-journal`) and, for
//! a directory, everything under it, are excluded. Uploading a database while writing it would never settle
//! and would trigger itself forever.

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

/// SQLite files that accompany a database (rollback journal, WAL, shared memory).
const SQLITE_SIDE_FILES: &[&str] = &["-wal", "-shm", "-journal"];

#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// Apply [`DEFAULT_IGNORES`].
    pub default_ignores: bool,
    /// The agent's own files (absolute, or relative to the current directory); those inside the watched
    /// root are excluded with their SQLite side files.
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
    /// The agent's own files, relative to the root.
    own: Vec<PathBuf>,
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
        let root_abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let own = cfg
            .own_paths
            .iter()
            .filter_map(|p| {
                let abs = std::path::absolute(p).ok()?;
                let rel = abs.strip_prefix(&root_abs).ok()?;
                (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
            })
            .collect();
        Ok(Filter { any: any.build().map_err(bad)?, dirs: dirs.build().map_err(bad)?, own })
    }

    /// A filter that excludes nothing.
    pub fn none() -> Self {
        Filter { any: GlobSet::empty(), dirs: GlobSet::empty(), own: Vec::new() }
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

    fn is_own(&self, rel: &Path) -> bool {
        self.own.iter().any(|own| {
            if rel.starts_with(own) {
                return true;
            }
            // `state.db-wal` and friends: same parent, name = own name + suffix.
            let (Some(name), Some(own_name)) = (rel.file_name(), own.file_name()) else { return false };
            rel.parent() == own.parent()
                && SQLITE_SIDE_FILES.iter().any(|suffix| {
                    let mut side = own_name.as_bytes().to_vec();
                    side.extend_from_slice(suffix.as_bytes());
                    name.as_bytes() == side.as_slice()
                })
        })
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
    fn own_files_and_their_sqlite_side_files_are_excluded() {
        let cfg = FilterConfig {
            excludes: vec![],
            default_ignores: false,
            own_paths: vec![PathBuf::from("/root/.ossmirror/state.db"), PathBuf::from("/elsewhere/x.db")],
        };
        let f = Filter::new(Path::new("/root"), &cfg).unwrap();
        assert!(f.excludes_path(Path::new(".ossmirror/state.db"), false));
        assert!(f.excludes_path(Path::new(".ossmirror/state.db-wal"), false));
        assert!(f.excludes_path(Path::new(".ossmirror/state.db-shm"), false));
        assert!(f.excludes_path(Path::new(".ossmirror/state.db-journal"), false));
        assert!(!f.excludes_path(Path::new(".ossmirror/state.db.bak"), false));
        assert!(!f.excludes_path(Path::new(".ossmirror/other"), false));
        assert!(!f.excludes_path(Path::new("x.db"), false), "own files outside the root do not matter");

        let cfg = FilterConfig { own_paths: vec![PathBuf::from("/root/.state")], ..cfg };
        let f = Filter::new(Path::new("/root"), &cfg).unwrap();
        assert!(f.excludes_path(Path::new(".state/anything/below"), false));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let cfg = FilterConfig { excludes: vec!["a[".into()], default_ignores: false, own_paths: vec![] };
        let err = Filter::new(Path::new("/r"), &cfg).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
    }
}
