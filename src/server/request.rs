//! From an HTTP request to an OSS operation: addressing (which bucket and key), the decoded query, and the
//! operation the method and sub-resources name.
//!
//! Addressing (OSS-PROTOCOL.md §4): a `Host` that is an IP literal or `localhost` means path style
//! (`/bucket/key`). Otherwise, with configured base domains, `<bucket>.<base>` is virtual-hosted and any other
//! host is path style; without configured base domains, any host name with a dot is virtual-hosted and its
//! first label is the bucket (`bucket.localhost`, `bucket.oss-cn-hangzhou.aliyuncs.com`).
//!
//! The whole path is percent-decoded (`%2F` included: go-v1 and py-oss2 send `/` that way) and a literal `+`
//! stays a `+`. Query names and values are form-decoded (`+` is a space: that is how `requests` and Go's
//! `url.Values` send a space), which is also what V4's canonical query re-encodes.

use std::net::IpAddr;

use super::error::OssError;
use crate::remote::names::MAX_KEY_BYTES;

/// Decoded query parameters, in request order. An empty value stands for a bare `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, OssError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = form_decode(name).ok_or_else(invalid_uri)?;
            let value = form_decode(value).ok_or_else(invalid_uri)?;
            pairs.push((name, value));
        }
        Ok(Query(pairs))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// The first value of `name` (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, treating an empty value as absent (py-oss2 sends `prefix=` and friends).
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

fn invalid_uri() -> OssError {
    OssError::new(http::StatusCode::BAD_REQUEST, "InvalidURI", "Couldn't parse the specified URI.")
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode; `plus_is_space` for query components. A `%` not followed by two hex digits is kept
/// literally (as lenient servers do). `None` when the result is not UTF-8.
fn decode(input: &str, plus_is_space: bool) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (bytes.get(i + 1).copied().and_then(hex_val), bytes.get(i + 2).copied().and_then(hex_val)) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

pub fn form_decode(input: &str) -> Option<String> {
    decode(input, true)
}

pub fn path_decode(input: &str) -> Option<String> {
    decode(input, false)
}

/// Bucket names: 3-63 of `a-z 0-9 -`, starting and ending with a letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// OSS key rules: 1-1023 bytes of UTF-8 (already guaranteed by decoding), not starting with `/` or `\`.
pub fn check_key(key: &str) -> Result<(), OssError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(OssError::invalid_object_name("The Length of Object name must be less than 1024"));
    }
    if key.starts_with('/') || key.starts_with('\\') {
        return Err(OssError::invalid_object_name("The specified object is not valid."));
    }
    Ok(())
}

/// Which bucket and key a request addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub virtual_host: bool,
}

/// The host name without port, lower-cased; `None` for an IPv6 literal (always path style).
fn host_name(host: &str) -> Option<String> {
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    Some(name.to_ascii_lowercase())
}

/// The bucket a virtual-hosted `Host` names, if any.
fn virtual_bucket(host: Option<&str>, base_domains: &[String]) -> Option<String> {
    let name = host_name(host?)?;
    if name == "localhost" || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    if base_domains.is_empty() {
        let (label, rest) = name.split_once('.')?;
        return (!label.is_empty() && !rest.is_empty()).then(|| label.to_string());
    }
    base_domains.iter().find_map(|base| {
        let base = base.trim_start_matches('.').to_ascii_lowercase();
        name.strip_suffix(&base)?.strip_suffix('.').filter(|l| !l.is_empty()).map(str::to_string)
    })
}

/// Whether a `Host` addresses a bucket (virtual-hosted style).
pub fn is_virtual_host(host: Option<&str>, base_domains: &[String]) -> bool {
    virtual_bucket(host, base_domains).is_some()
}

/// Resolve the bucket and key of a request.
pub fn resolve_target(host: Option<&str>, raw_path: &str, base_domains: &[String]) -> Result<Target, OssError> {
    let path =
        path_decode(raw_path).ok_or_else(|| OssError::invalid_object_name("The specified object is not valid."))?;
    let path = path.strip_prefix('/').unwrap_or(&path);
    let target = match virtual_bucket(host, base_domains) {
        Some(bucket) => {
            Target { bucket: Some(bucket), key: (!path.is_empty()).then(|| path.to_string()), virtual_host: true }
        }
        None => {
            let (bucket, key) = match path.split_once('/') {
                Some((b, k)) => (b, (!k.is_empty()).then(|| k.to_string())),
                None => (path, None),
            };
            Target { bucket: (!bucket.is_empty()).then(|| bucket.to_string()), key, virtual_host: false }
        }
    };
    if let Some(b) = &target.bucket
        && !valid_bucket_name(b)
    {
        return Err(OssError::invalid_bucket_name(b));
    }
    if let Some(k) = &target.key {
        check_key(k)?;
    }
    Ok(target)
}

/// The operations the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    ListBuckets,
    PutBucket,
    DeleteBucket,
    HeadBucket,
    GetBucketInfo,
    GetBucketLocation,
    GetBucketAcl,
    PutBucketAcl,
    GetBucketVersioning,
    PutBucketVersioning,
    GetBucketLifecycle,
    PutBucketLifecycle,
    DeleteBucketLifecycle,
    ListObjects,
    ListObjectsV2,
    ListObjectVersions,
    ListMultipartUploads,
    DeleteMultipleObjects,
    PutObject,
    CopyObject,
    GetObject,
    HeadObject,
    GetObjectMeta,
    DeleteObject,
    GetObjectAcl,
    PutObjectAcl,
    GetObjectTagging,
    PutObjectTagging,
    DeleteObjectTagging,
    InitiateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    /// A request the server cannot route (bad addressing, unsupported method or sub-resource).
    Unknown,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::ListBuckets => "ListBuckets",
            Op::PutBucket => "PutBucket",
            Op::DeleteBucket => "DeleteBucket",
            Op::HeadBucket => "HeadBucket",
            Op::GetBucketInfo => "GetBucketInfo",
            Op::GetBucketLocation => "GetBucketLocation",
            Op::GetBucketAcl => "GetBucketAcl",
            Op::PutBucketAcl => "PutBucketAcl",
            Op::GetBucketVersioning => "GetBucketVersioning",
            Op::PutBucketVersioning => "PutBucketVersioning",
            Op::GetBucketLifecycle => "GetBucketLifecycle",
            Op::PutBucketLifecycle => "PutBucketLifecycle",
            Op::DeleteBucketLifecycle => "DeleteBucketLifecycle",
            Op::ListObjects => "ListObjects",
            Op::ListObjectsV2 => "ListObjectsV2",
            Op::ListObjectVersions => "ListObjectVersions",
            Op::ListMultipartUploads => "ListMultipartUploads",
            Op::DeleteMultipleObjects => "DeleteMultipleObjects",
            Op::PutObject => "PutObject",
            Op::CopyObject => "CopyObject",
            Op::GetObject => "GetObject",
            Op::HeadObject => "HeadObject",
            Op::GetObjectMeta => "GetObjectMeta",
            Op::DeleteObject => "DeleteObject",
            Op::GetObjectAcl => "GetObjectAcl",
            Op::PutObjectAcl => "PutObjectAcl",
            Op::GetObjectTagging => "GetObjectTagging",
            Op::PutObjectTagging => "PutObjectTagging",
            Op::DeleteObjectTagging => "DeleteObjectTagging",
            Op::InitiateMultipartUpload => "InitiateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::UploadPartCopy => "UploadPartCopy",
            Op::CompleteMultipartUpload => "CompleteMultipartUpload",
            Op::AbortMultipartUpload => "AbortMultipartUpload",
            Op::ListParts => "ListParts",
            Op::Unknown => "Unknown",
        }
    }
}

/// OSS sub-resources this server does not implement: answered 501 rather than mistaken for a plain
/// object or bucket request (a PUT `?tagging` must not overwrite the object with the tagging XML).
const UNSUPPORTED: &[&str] = &[
    "append",
    "asyncFetch",
    "bucketVersion",
    "cname",
    "comp",
    "cors",
    "encryption",
    "img",
    "inventory",
    "live",
    "logging",
    "policy",
    "qos",
    "referer",
    "replication",
    "requestPayment",
    "restore",
    "select",
    "stat",
    "style",
    "symlink",
    "transferAcceleration",
    "vod",
    "website",
    "worm",
    "x-oss-process",
];

/// Route a request to its operation.
pub fn route(method: &http::Method, target: &Target, query: &Query, has_copy_source: bool) -> Result<Op, OssError> {
    use http::Method;
    if let Some(name) = UNSUPPORTED.iter().find(|n| query.has(n)) {
        return Err(OssError::not_implemented(&format!("The sub-resource {name:?}")));
    }
    let op = match (&target.bucket, &target.key) {
        (None, _) => match *method {
            Method::GET => Op::ListBuckets,
            _ => return Err(OssError::method_not_allowed()),
        },
        (Some(_), None) => match *method {
            Method::GET if query.has("acl") => Op::GetBucketAcl,
            Method::GET if query.has("versioning") => Op::GetBucketVersioning,
            Method::GET if query.has("versions") => Op::ListObjectVersions,
            Method::GET if query.has("lifecycle") => Op::GetBucketLifecycle,
            Method::GET if query.has("tagging") => {
                return Err(OssError::not_implemented("Bucket tagging (?tagging on a bucket)"));
            }
            Method::GET if query.has("bucketInfo") => Op::GetBucketInfo,
            Method::GET if query.has("location") => Op::GetBucketLocation,
            Method::GET if query.has("uploads") => Op::ListMultipartUploads,
            Method::GET => match query.get("list-type") {
                Some("2") => Op::ListObjectsV2,
                Some(other) => {
                    return Err(OssError::invalid_argument_named("list-type", other, "list-type must be 2."));
                }
                None => Op::ListObjects,
            },
            Method::HEAD => Op::HeadBucket,
            Method::PUT if query.has("acl") => Op::PutBucketAcl,
            Method::PUT if query.has("versioning") => Op::PutBucketVersioning,
            Method::PUT if query.has("lifecycle") => Op::PutBucketLifecycle,
            Method::PUT | Method::DELETE if query.has("tagging") => {
                return Err(OssError::not_implemented("Bucket tagging (?tagging on a bucket)"));
            }
            Method::PUT => Op::PutBucket,
            Method::DELETE if query.has("lifecycle") => Op::DeleteBucketLifecycle,
            Method::DELETE => Op::DeleteBucket,
            Method::POST if query.has("delete") => Op::DeleteMultipleObjects,
            _ => return Err(OssError::method_not_allowed()),
        },
        (Some(_), Some(_)) => {
            let has_part = query.has("partNumber");
            let has_upload = query.has("uploadId");
            match *method {
                Method::PUT if has_part || has_upload => {
                    if !(has_part && has_upload) {
                        return Err(OssError::invalid_argument("UploadPart requires both partNumber and uploadId."));
                    }
                    if has_copy_source { Op::UploadPartCopy } else { Op::UploadPart }
                }
                Method::PUT if query.has("acl") => Op::PutObjectAcl,
                Method::PUT if query.has("tagging") => Op::PutObjectTagging,
                Method::PUT if has_copy_source => Op::CopyObject,
                Method::PUT => Op::PutObject,
                Method::GET if has_upload => Op::ListParts,
                Method::GET if query.has("acl") => Op::GetObjectAcl,
                Method::GET if query.has("tagging") => Op::GetObjectTagging,
                Method::GET => Op::GetObject,
                Method::HEAD if query.has("objectMeta") => Op::GetObjectMeta,
                Method::HEAD => Op::HeadObject,
                Method::DELETE if has_upload => Op::AbortMultipartUpload,
                Method::DELETE if query.has("tagging") => Op::DeleteObjectTagging,
                Method::DELETE => Op::DeleteObject,
                Method::POST if query.has("uploads") => Op::InitiateMultipartUpload,
                Method::POST if has_upload => Op::CompleteMultipartUpload,
                _ => return Err(OssError::method_not_allowed()),
            }
        }
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, path: &str) -> Result<Target, OssError> {
        resolve_target(Some(host), path, &[])
    }

    #[test]
    fn path_style_and_virtual_host() {
        let x = t("127.0.0.1:9000", "/bucket/dir%2Ffile%20name+x").unwrap();
        assert_eq!(x.bucket.as_deref(), Some("bucket"));
        assert_eq!(x.key.as_deref(), Some("dir/file name+x"));
        assert!(!x.virtual_host);
        let x = t("localhost", "/bucket/").unwrap();
        assert_eq!((x.bucket.as_deref(), x.key.as_deref()), (Some("bucket"), None));
        let x = t("[::1]:80", "/").unwrap();
        assert_eq!(x, Target::default());
        let x = t("bucket.localhost:9000", "/a/b").unwrap();
        assert_eq!((x.bucket.as_deref(), x.key.as_deref(), x.virtual_host), (Some("bucket"), Some("a/b"), true));
        let x = t("bucket.oss-cn-hangzhou.aliyuncs.com", "/").unwrap();
        assert_eq!((x.bucket.as_deref(), x.key.as_deref()), (Some("bucket"), None));
        let bases = vec!["oss.test".to_string()];
        let x = resolve_target(Some("oss.test:80"), "/b1x/k", &bases).unwrap();
        assert_eq!((x.bucket.as_deref(), x.key.as_deref()), (Some("b1x"), Some("k")));
        let x = resolve_target(Some("abc.oss.test"), "/k", &bases).unwrap();
        assert_eq!((x.bucket.as_deref(), x.key.as_deref()), (Some("abc"), Some("k")));
        let x = resolve_target(Some("other.host"), "/abc/k", &bases).unwrap();
        assert_eq!((x.bucket.as_deref(), x.key.as_deref()), (Some("abc"), Some("k")));
    }

    #[test]
    fn bad_names() {
        assert_eq!(t("127.0.0.1", "/B/k").unwrap_err().code, "InvalidBucketName");
        assert_eq!(t("127.0.0.1", "/bucket//k").unwrap_err().code, "InvalidObjectName");
        assert_eq!(t("127.0.0.1", "/bucket/%5Ck").unwrap_err().code, "InvalidObjectName");
        let long = format!("/bucket/{}", "k".repeat(1024));
        assert_eq!(t("127.0.0.1", &long).unwrap_err().code, "InvalidObjectName");
        assert!(t("127.0.0.1", &format!("/bucket/{}", "k".repeat(1023))).is_ok());
        assert_eq!(t("127.0.0.1", "/bucket/%FF").unwrap_err().code, "InvalidObjectName");
        // Dot segments are ordinary key characters; keys never become file paths.
        assert_eq!(t("127.0.0.1", "/bucket/../../etc/passwd").unwrap().key.as_deref(), Some("../../etc/passwd"));
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("uploads&prefix=a+b%2Bc&continuation-token=&x=%zz")).unwrap();
        assert!(q.has("uploads"));
        assert_eq!(q.get("prefix"), Some("a b+c"));
        assert_eq!(q.non_empty("continuation-token"), None);
        assert_eq!(q.get("x"), Some("%zz"));
        assert!(Query::parse(Some("a=%FF")).is_err());
    }

    #[test]
    fn routing() {
        use http::Method;
        let obj = Target { bucket: Some("b".into()), key: Some("k".into()), virtual_host: false };
        let bucket = Target { bucket: Some("b".into()), key: None, virtual_host: false };
        let q = |s: &str| Query::parse(Some(s)).unwrap();
        assert_eq!(route(&Method::PUT, &obj, &q("partNumber=1&uploadId=x"), false).unwrap(), Op::UploadPart);
        assert_eq!(route(&Method::PUT, &obj, &q("partNumber=1&uploadId=x"), true).unwrap(), Op::UploadPartCopy);
        assert_eq!(route(&Method::PUT, &obj, &q(""), true).unwrap(), Op::CopyObject);
        assert_eq!(route(&Method::PUT, &obj, &q("partNumber=1"), false).unwrap_err().code, "InvalidArgument");
        assert_eq!(route(&Method::PUT, &obj, &q("tagging"), false).unwrap(), Op::PutObjectTagging);
        assert_eq!(route(&Method::DELETE, &obj, &q("tagging&versionId=v"), false).unwrap(), Op::DeleteObjectTagging);
        assert_eq!(route(&Method::PUT, &obj, &q("symlink"), false).unwrap_err().code, "NotImplemented");
        assert_eq!(route(&Method::GET, &bucket, &q("versions&prefix="), false).unwrap(), Op::ListObjectVersions);
        assert_eq!(route(&Method::PUT, &bucket, &q("versioning"), false).unwrap(), Op::PutBucketVersioning);
        assert_eq!(route(&Method::DELETE, &bucket, &q("lifecycle"), false).unwrap(), Op::DeleteBucketLifecycle);
        assert_eq!(route(&Method::PUT, &bucket, &q("tagging"), false).unwrap_err().code, "NotImplemented");
        assert_eq!(route(&Method::GET, &bucket, &q("list-type=2&prefix="), false).unwrap(), Op::ListObjectsV2);
        assert_eq!(route(&Method::GET, &bucket, &q("prefix="), false).unwrap(), Op::ListObjects);
        assert_eq!(route(&Method::POST, &bucket, &q("delete"), false).unwrap(), Op::DeleteMultipleObjects);
        assert_eq!(route(&Method::POST, &obj, &q("uploads"), false).unwrap(), Op::InitiateMultipartUpload);
        assert_eq!(route(&Method::DELETE, &obj, &q("uploadId=u"), false).unwrap(), Op::AbortMultipartUpload);
        assert_eq!(route(&Method::PATCH, &obj, &q(""), false).unwrap_err().code, "MethodNotAllowed");
    }
}
