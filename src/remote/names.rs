//! Bucket-name and object-key rules, checked before any request so a bad name fails with a clear message
//! instead of a server error.
//!
//! Bucket: 3 to 63 characters of `a-z 0-9 -`, starting and ending with a letter or digit.
//! Key: 1 to 1023 bytes of UTF-8, not starting with `/` or `\`. We also refuse control characters, which
//! XML 1.0 cannot carry and which no file name we mirror should produce.

use super::RemoteError;

pub const MAX_KEY_BYTES: usize = 1023;

pub fn validate_bucket(bucket: &str) -> Result<(), RemoteError> {
    let fix = "bucket names are 3-63 characters of lowercase letters, digits and '-', \
               starting and ending with a letter or digit";
    let len_ok = (3..=63).contains(&bucket.len());
    let chars_ok = bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = bucket.bytes().next().is_some_and(|b| b != b'-') && bucket.bytes().last().is_some_and(|b| b != b'-');
    if len_ok && chars_ok && ends_ok {
        Ok(())
    } else {
        Err(RemoteError::invalid_input(format!("invalid bucket name {bucket:?}"), fix))
    }
}

pub fn validate_key(key: &str) -> Result<(), RemoteError> {
    let problem = |why: &str| format!("invalid object key {:?}: {why}", shorten(key));
    if key.is_empty() {
        return Err(RemoteError::invalid_input(problem("empty"), "give a non-empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RemoteError::invalid_input(
            problem(&format!("{} bytes long", key.len())),
            "OSS keys are at most 1023 bytes of UTF-8; use a shorter path or --prefix",
        ));
    }
    if key.starts_with('/') || key.starts_with('\\') {
        return Err(RemoteError::invalid_input(problem("starts with '/' or '\\'"), "drop the leading slash"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(RemoteError::invalid_input(
            problem("contains a control character"),
            "rename the file: OSS keys travel in XML, which cannot carry control characters",
        ));
    }
    Ok(())
}

fn shorten(key: &str) -> String {
    if key.len() <= 80 {
        return key.to_string();
    }
    let mut end = 60;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &key[..end], key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        for ok in ["abc", "my-bucket-1", "a1b", &"a".repeat(63)] {
            assert!(validate_bucket(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b", "a.b", "", &"a".repeat(64)] {
            let e = validate_bucket(bad).unwrap_err().to_string();
            assert!(e.contains("3-63"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys() {
        for ok in ["a", "dir/file.txt", "with space+plus&amp%", "中文/ключ", &"k".repeat(1023)] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/abs", "\\win", "tab\there", &"k".repeat(1024)] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
        let e = validate_key(&"k".repeat(2000)).unwrap_err().to_string();
        assert!(e.contains("2000 bytes") && e.contains("1023"), "{e}");
    }
}
