//! Which object keys may become local paths. A restore never writes outside its target directory, so a
//! key is refused (and reported) unless the part after the prefix is a plain relative path of normal names.

use std::path::PathBuf;

/// Why a key cannot be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it contains a backslash, which some tools read as a path separator")]
    Backslash,
    #[error("it starts with '/' (after the prefix): an absolute path")]
    LeadingSlash,
    #[error("it has an empty path segment ('//')")]
    EmptySegment,
    #[error("it has a '.' or '..' segment, which could point outside the target directory")]
    DotSegment,
    #[error("it is not under the prefix")]
    OutsidePrefix,
}

/// What a key under `prefix` (normalized: empty or ending in `/`) maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPath {
    /// A file at this path relative to the target directory.
    File(PathBuf),
    /// A "directory marker" (a key ending in `/`, or the prefix itself): nothing to write.
    Marker,
}

/// The inverse of the agent's mapping (`watch::object_key`): `prefix + components joined with '/'`.
pub fn local_path(prefix: &str, key: &str) -> Result<KeyPath, KeyRefusal> {
    let rest = key.strip_prefix(prefix).ok_or(KeyRefusal::OutsidePrefix)?;
    if rest.contains('\0') {
        return Err(KeyRefusal::Nul);
    }
    if rest.contains('\\') {
        return Err(KeyRefusal::Backslash);
    }
    if rest.starts_with('/') {
        return Err(KeyRefusal::LeadingSlash);
    }
    if rest.is_empty() {
        return Ok(KeyPath::Marker);
    }
    let body = rest.strip_suffix('/').unwrap_or(rest);
    for segment in body.split('/') {
        if segment.is_empty() {
            return Err(KeyRefusal::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(KeyRefusal::DotSegment);
        }
    }
    if rest.ends_with('/') {
        return Ok(KeyPath::Marker);
    }
    Ok(KeyPath::File(PathBuf::from(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Component;

    #[test]
    fn plain_keys_map_to_relative_paths() {
        assert_eq!(local_path("", "a/b.txt"), Ok(KeyPath::File("a/b.txt".into())));
        assert_eq!(local_path("p/", "p/x y/ü.txt"), Ok(KeyPath::File("x y/ü.txt".into())));
        assert_eq!(local_path("p/", "p/...hidden"), Ok(KeyPath::File("...hidden".into())));
        assert_eq!(local_path("p/", "p/dir/"), Ok(KeyPath::Marker));
        assert_eq!(local_path("p/", "p/"), Ok(KeyPath::Marker));
    }

    #[test]
    fn escaping_keys_are_refused() {
        let cases = [
            ("../etc/passwd", KeyRefusal::DotSegment),
            ("a/../../x", KeyRefusal::DotSegment),
            ("a/./x", KeyRefusal::DotSegment),
            ("..", KeyRefusal::DotSegment),
            ("../", KeyRefusal::DotSegment),
            ("/etc/passwd", KeyRefusal::LeadingSlash),
            ("a//b", KeyRefusal::EmptySegment),
            ("a//", KeyRefusal::EmptySegment),
            ("a\\..\\b", KeyRefusal::Backslash),
            ("a\0b", KeyRefusal::Nul),
        ];
        for (key, why) in cases {
            assert_eq!(local_path("", key), Err(why), "{key:?}");
        }
        assert_eq!(local_path("p/", "p//x"), Err(KeyRefusal::LeadingSlash));
        assert_eq!(local_path("p/", "q/x"), Err(KeyRefusal::OutsidePrefix));
    }

    /// Whatever the key, an accepted path is relative and made of normal names only.
    #[test]
    fn accepted_paths_never_leave_the_target() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = ['a', '.', '/', '\\', '\0', 'b', ' '];
        for _ in 0..20_000 {
            let len = rng.usize(0..10);
            let key: String = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            if let Ok(KeyPath::File(p)) = local_path("", &key) {
                assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{key:?} -> {p:?}");
                assert!(!p.as_os_str().is_empty());
            }
        }
    }
}
