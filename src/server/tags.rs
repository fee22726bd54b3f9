//! Object tags: the `x-oss-tagging` header (`k1=v1&k2=v2`, URL-encoded) and the `<Tagging>` XML of
//! Put/GetObjectTagging, validated as OSS validates them, and one canonical stored form (the header form,
//! every byte outside RFC 3986's unreserved set percent-encoded), which lifecycle tag filters read back.
//!
//! OSS's rules ([DOC: 0010-00000209, -214, -217, -218, -219]): at most 10 tags per object, unique keys,
//! keys of 1 to 128 characters and values of at most 256, made of letters, digits, spaces and `+ - = . _ :
//! /`. The pages give ECs; the code is `InvalidTag`, S3's, which OSS's API mirrors (our inference).

use super::error::OssError;
use super::request::form_decode;
use super::xml::{self, XmlWriter};
use crate::remote::oss::sign::uri_encode;

pub const MAX_TAGS: usize = 10;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;

pub type Tag = (String, String);

fn invalid_tag(ec: &'static str, message: impl Into<String>) -> OssError {
    OssError::new(http::StatusCode::BAD_REQUEST, "InvalidTag", message).with_ec(ec)
}

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, ' ' | '+' | '-' | '=' | '.' | '_' | ':' | '/')
}

fn validate(tags: &[Tag]) -> Result<(), OssError> {
    if tags.len() > MAX_TAGS {
        return Err(invalid_tag(
            "0010-00000218",
            format!("An object can have at most {MAX_TAGS} tags; {} were given.", tags.len()),
        ));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > MAX_KEY_CHARS {
            return Err(invalid_tag(
                "0010-00000209",
                format!("Tag key {k:?} must be 1 to {MAX_KEY_CHARS} characters."),
            ));
        }
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(invalid_tag(
                "0010-00000214",
                format!("The value of tag {k:?} is longer than {MAX_VALUE_CHARS} characters."),
            ));
        }
        if !k.chars().chain(v.chars()).all(allowed) {
            return Err(invalid_tag(
                "0010-00000217",
                format!(
                    "Tag {k:?}={v:?} has a character OSS does not allow (letters, digits, spaces and + - = . _ : / \
                     only)."
                ),
            ));
        }
        if tags[..i].iter().any(|(other, _)| other == k) {
            return Err(invalid_tag("0010-00000218", format!("Tag key {k:?} appears twice.")));
        }
    }
    Ok(())
}

/// Parse and validate `x-oss-tagging`.
pub fn parse_header(value: &str) -> Result<Vec<Tag>, OssError> {
    let mut tags = Vec::new();
    for pair in value.split('&').filter(|p| !p.is_empty()) {
        let mut parts = pair.split('=');
        let (k, v) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if parts.next().is_some() {
            return Err(invalid_tag(
                "0010-00000219",
                format!("x-oss-tagging must be key=value pairs joined by &; {pair:?} is not one."),
            ));
        }
        let decode =
            |s: &str| form_decode(s).ok_or_else(|| invalid_tag("0010-00000216", format!("Tag {pair:?} is not UTF-8.")));
        tags.push((decode(k)?, decode(v)?));
    }
    validate(&tags)?;
    Ok(tags)
}

/// Parse and validate a PutObjectTagging body.
pub fn parse_xml(body: &[u8]) -> Result<Vec<Tag>, OssError> {
    let root = xml::parse(body).map_err(|_| OssError::malformed_xml())?;
    if root.name != "Tagging" {
        return Err(OssError::malformed_xml());
    }
    let mut tags = Vec::new();
    if let Some(set) = root.child("TagSet") {
        for t in set.children_named("Tag") {
            let key = t.child_text("Key").ok_or_else(OssError::malformed_xml)?;
            tags.push((key.to_string(), t.child_text("Value").unwrap_or("").to_string()));
        }
    }
    validate(&tags)?;
    Ok(tags)
}

/// The stored form; `None` for no tags.
pub fn encode(tags: &[Tag]) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    let pairs: Vec<String> =
        tags.iter().map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false))).collect();
    Some(pairs.join("&"))
}

/// Tags back from the stored form (lenient: stored values were validated when they were written).
pub fn decode(stored: Option<&str>) -> Vec<Tag> {
    let Some(s) = stored else { return Vec::new() };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k).unwrap_or_default(), form_decode(v).unwrap_or_default())
        })
        .collect()
}

/// GetObjectTagging's body.
pub fn to_xml(tags: &[Tag]) -> String {
    let mut w = XmlWriter::new("Tagging");
    w.start("TagSet");
    for (k, v) in tags {
        w.start("Tag").elem("Key", k).elem("Value", v).end();
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rules() {
        let tags = parse_header("a=1&b%20c=x%2By&only").unwrap();
        assert_eq!(tags, vec![("a".into(), "1".into()), ("b c".into(), "x+y".into()), ("only".into(), String::new())]);
        let stored = encode(&tags).unwrap();
        assert_eq!(stored, "a=1&b%20c=x%2By&only=");
        assert_eq!(decode(Some(&stored)), tags);
        assert_eq!(parse_header(&stored).unwrap(), tags);
        assert!(encode(&[]).is_none());

        let eleven: String = (0..11).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
        for (bad, ec) in [
            ("aa=bb=cc", "0010-00000219"),
            (eleven.as_str(), "0010-00000218"),
            ("k=1&k=2", "0010-00000218"),
            ("k=a%3Bb", "0010-00000217"),
            ("=v", "0010-00000209"),
        ] {
            let e = parse_header(bad).unwrap_err();
            assert_eq!((e.code.as_str(), e.ec), ("InvalidTag", ec), "{bad}");
        }
        let long_key = "k".repeat(129);
        assert_eq!(parse_header(&format!("{long_key}=v")).unwrap_err().ec, "0010-00000209");
        let long_value = "v".repeat(257);
        assert_eq!(parse_header(&format!("k={long_value}")).unwrap_err().ec, "0010-00000214");
    }

    #[test]
    fn xml_round_trip() {
        let tags = vec![("owner".to_string(), "a b".to_string()), ("x".to_string(), String::new())];
        assert_eq!(parse_xml(to_xml(&tags).as_bytes()).unwrap(), tags);
        assert!(parse_xml(b"<Tagging><TagSet/></Tagging>").unwrap().is_empty());
        assert_eq!(parse_xml(b"<Nope/>").unwrap_err().code, "MalformedXML");
    }
}
