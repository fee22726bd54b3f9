//! Relative paths and the object keys they map to.
//!
//! Everything in `watch` names files by their path *relative to the watched root*, as raw bytes
//! (`PathBuf`): Linux file names are byte strings and may be invalid UTF-8, so nothing here converts them
//! lossily. The root itself is the empty path.
//!
//! An object key is `prefix + components joined with '/'`. The prefix is used verbatim (the config layer
//! decides whether it ends in `/`). A name that cannot become an OSS key is a typed [`KeyError`] that shows
//! the path escaped, so the agent can report it instead of silently skipping the file:
//! - not valid UTF-8 (OSS keys are UTF-8);
//! - contains a control character (newline, tab, DEL, C1 controls…): legal on Linux, but it breaks XML
//!   listings, logs and most tools that read the bucket back;
//! - longer than 1023 bytes (OSS's limit), counted with the prefix;
//! - starts with `/` or `\` (OSS rejects those; only possible through the prefix).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// OSS's limit on the length of an object key, in bytes.
pub const MAX_KEY_BYTES: usize = 1023;

/// Why a relative path cannot become an object key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot upload {path}: the name is not valid UTF-8 (invalid bytes shown as \\xNN); rename it")]
    InvalidUtf8 { path: String },
    #[error("cannot upload {path}: the name contains the control character {ch}; rename it")]
    ControlChar { path: String, ch: String },
    #[error("cannot upload {path}: the object key would be {len} bytes, over OSS's limit of {MAX_KEY_BYTES}")]
    TooLong { path: String, len: usize },
    #[error("cannot upload {path}: an object key may not start with '/' or '\\' (check --prefix)")]
    InvalidStart { path: String },
    #[error("cannot upload {path}: not a plain relative path")]
    NotRelative { path: String },
    #[error("the root directory itself has no object key")]
    Empty,
}

/// The object key for `rel` (a path relative to the watched root) under `prefix`.
pub fn object_key(prefix: &str, rel: &Path) -> Result<String, KeyError> {
    let mut key = String::with_capacity(prefix.len() + rel.as_os_str().len());
    key.push_str(prefix);
    let mut any = false;
    for comp in rel.components() {
        let name = match comp {
            Component::Normal(name) => name,
            // `Path::components` already drops interior `.`; a leading one is harmless.
            Component::CurDir => continue,
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(KeyError::NotRelative { path: escape_path(rel) });
            }
        };
        let name =
            std::str::from_utf8(name.as_bytes()).map_err(|_| KeyError::InvalidUtf8 { path: escape_path(rel) })?;
        if any {
            key.push('/');
        }
        key.push_str(name);
        any = true;
    }
    if !any {
        return Err(KeyError::Empty);
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(KeyError::ControlChar { path: escape_path(rel), ch: c.escape_default().to_string() });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { path: escape_path(rel), len: key.len() });
    }
    if key.starts_with('/') || key.starts_with('\\') {
        return Err(KeyError::InvalidStart { path: escape_path(rel) });
    }
    Ok(key)
}

/// The relative path an object key under `prefix` stands for (the inverse of [`object_key`]); `None` for a
/// key outside the prefix, a "directory marker" ending in `/`, or one with empty or dot components, which
/// no local file maps to.
pub fn rel_path_of_key(prefix: &str, key: &str) -> Option<PathBuf> {
    let rest = key.strip_prefix(prefix)?;
    if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return None;
    }
    Some(PathBuf::from(rest))
}

/// A path for humans and logs: valid UTF-8 as is, invalid bytes as `\xNN`, control characters and
/// backslashes escaped, so two different names never print the same and a terminal is never confused.
pub fn escape_path(path: &Path) -> String {
    Escaped(path.as_os_str()).to_string()
}

/// [`escape_path`] as a `Display` value, for `tracing` fields (`path = %Escaped(...)`) without allocating.
pub struct Escaped<'a>(pub &'a OsStr);

impl<'a> Escaped<'a> {
    pub fn path(p: &'a Path) -> Self {
        Escaped(p.as_os_str())
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        if self.0.is_empty() {
            return f.write_char('.'); // the root, in logs
        }
        for chunk in self.0.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() || c == '\\' {
                    for e in c.escape_default() {
                        f.write_char(e)?;
                    }
                } else {
                    f.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02X}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    fn raw(bytes: &[u8]) -> PathBuf {
        PathBuf::from(OsString::from_vec(bytes.to_vec()))
    }

    #[test]
    fn plain_and_special_characters_map_verbatim() {
        assert_eq!(object_key("", Path::new("a.txt")).unwrap(), "a.txt");
        assert_eq!(object_key("backup/", Path::new("dir/sub/a b.txt")).unwrap(), "backup/dir/sub/a b.txt");
        // Characters that need URL-encoding on the wire are fine in a key: encoding is the signer's job.
        assert_eq!(object_key("p/", Path::new("x+y&z%20=?#.bin")).unwrap(), "p/x+y&z%20=?#.bin");
        assert_eq!(object_key("", Path::new("日本語/файл/😀.txt")).unwrap(), "日本語/файл/😀.txt");
        // The prefix is verbatim: no separator is invented.
        assert_eq!(object_key("pre", Path::new("f")).unwrap(), "pref");
        // `./a` and `a` are the same file.
        assert_eq!(object_key("", Path::new("./a/./b")).unwrap(), "a/b");
    }

    #[test]
    fn invalid_utf8_is_a_typed_error_with_the_bytes_shown() {
        let err = object_key("", &raw(b"dir/bad\xff\xfename.txt")).unwrap_err();
        assert_eq!(err, KeyError::InvalidUtf8 { path: "dir/bad\\xFF\\xFEname.txt".into() });
        assert!(err.to_string().contains("dir/bad\\xFF\\xFEname.txt"), "{err}");
    }

    #[test]
    fn control_characters_are_refused() {
        let err = object_key("", Path::new("a\nb")).unwrap_err();
        assert_eq!(err, KeyError::ControlChar { path: "a\\nb".into(), ch: "\\n".into() });
        assert!(matches!(object_key("", Path::new("a\u{7f}")), Err(KeyError::ControlChar { .. })));
        assert!(matches!(object_key("", Path::new("tab\there")), Err(KeyError::ControlChar { .. })));
        assert!(matches!(object_key("", Path::new("c1\u{85}")), Err(KeyError::ControlChar { .. })));
    }

    #[test]
    fn length_limit_counts_bytes_including_the_prefix() {
        let name = "a".repeat(MAX_KEY_BYTES);
        assert_eq!(object_key("", Path::new(&name)).unwrap().len(), MAX_KEY_BYTES);
        let err = object_key("p/", Path::new(&name)).unwrap_err();
        assert!(matches!(err, KeyError::TooLong { len: 1025, .. }), "{err:?}");
        // Multi-byte characters count as bytes, not characters: 342 × 3 = 1026.
        let wide = "語".repeat(342);
        assert!(matches!(object_key("", Path::new(&wide)), Err(KeyError::TooLong { len: 1026, .. })));
    }

    #[test]
    fn non_relative_and_empty_paths_are_refused() {
        assert!(matches!(object_key("", Path::new("/etc/passwd")), Err(KeyError::NotRelative { .. })));
        assert!(matches!(object_key("", Path::new("a/../b")), Err(KeyError::NotRelative { .. })));
        assert_eq!(object_key("p/", Path::new("")), Err(KeyError::Empty));
        assert!(matches!(object_key("/abs/", Path::new("f")), Err(KeyError::InvalidStart { .. })));
        assert!(matches!(object_key("\\x", Path::new("f")), Err(KeyError::InvalidStart { .. })));
    }

    #[test]
    fn keys_map_back_to_paths() {
        assert_eq!(rel_path_of_key("p/", "p/a/b c+d.txt"), Some(PathBuf::from("a/b c+d.txt")));
        assert_eq!(rel_path_of_key("p/", "q/a"), None);
        assert_eq!(rel_path_of_key("p/", "p/dir/"), None);
        assert_eq!(rel_path_of_key("p/", "p/a//b"), None);
        assert_eq!(rel_path_of_key("p/", "p/../x"), None);
        for rel in ["x", "a/b/c", "sp ace/+&%"] {
            let key = object_key("pre/", Path::new(rel)).unwrap();
            assert_eq!(rel_path_of_key("pre/", &key).unwrap(), Path::new(rel));
        }
    }

    #[test]
    fn escaping_is_unambiguous() {
        assert_eq!(escape_path(Path::new("a\\xFF")), "a\\\\xFF");
        assert_eq!(escape_path(&raw(b"a\xff")), "a\\xFF");
        assert_ne!(escape_path(Path::new("a\\xFF")), escape_path(&raw(b"a\xff")));
        assert_eq!(escape_path(Path::new("é ok")), "é ok");
    }
}
