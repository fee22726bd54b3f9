//! One attempt's answer, and the rules that turn an answer into a typed error.
//!
//! Error answers are decoded in this order (OSS-PROTOCOL.md §5.0, §8.1): an `<Error>` body; for a bodiless
//! answer (HEAD), the Base64 `<Error>` document in `x-oss-err`; else a code derived from the status. A body
//! that is not an OSS error document is a gateway or a different kind of server: a 5xx/408/429 stays a
//! (retryable) service error, because load balancers in front of OSS answer like that, while anything else is
//! [`RemoteError::BadResponse`], whose message asks whether the endpoint is an OSS server at all.

use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::checksum::parse_crc64_header;
use crate::remote::oss::xml;
use crate::remote::{BodyDigest, ByteRange, ObjectInfo, RemoteError, ServiceError};
use crate::timefmt;

pub const REQUEST_ID: &str = "x-oss-request-id";
pub const CRC64: &str = "x-oss-hash-crc64ecma";

/// Removes secrets (the access key secret, the STS token, this attempt's signature) from text a server sent
/// back: a misbehaving server or proxy may echo the request, and its text ends up in errors and logs.
#[derive(Clone, Default)]
pub struct Redactor(Vec<String>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.0.len())
    }
}

impl Redactor {
    pub fn new<I: IntoIterator<Item = String>>(secrets: I) -> Self {
        // Very short values would redact innocent text and protect nothing.
        Redactor(secrets.into_iter().filter(|s| s.len() >= 4).collect())
    }

    pub fn with(&self, secret: &str) -> Self {
        let mut r = self.clone();
        if secret.len() >= 4 {
            r.0.push(secret.to_string());
        }
        r
    }

    /// A short one-line excerpt of `body` for an error message, with secrets removed *before* it is cut
    /// (cutting first could leave the head of a secret that no longer matches in full).
    pub fn snippet(&self, body: &[u8]) -> String {
        // Twice what `snippet` reads, so a secret straddling its window is still whole here.
        let head = &body[..body.len().min(SNIPPET_READ * 2)];
        snippet(self.apply(String::from_utf8_lossy(head).into_owned()).as_bytes())
    }

    pub fn apply(&self, text: String) -> String {
        let mut out = text;
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "<redacted>");
            }
        }
        out
    }
}

/// What one attempt got back, body read (within the limit the operation allows).
#[derive(Debug)]
pub struct Reply {
    pub op: &'static str,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub request_id: Option<String>,
    /// The digest of the complete request body this attempt sent, for operations that verify uploads.
    pub sent: Option<BodyDigest>,
    pub redactor: Redactor,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn bad(&self, detail: impl Into<String>) -> RemoteError {
        RemoteError::BadResponse {
            op: self.op,
            detail: self.redactor.apply(detail.into()),
            request_id: self.request_id.clone(),
        }
    }

    /// The `x-oss-hash-crc64ecma` header; a value that is not a decimal u64 is a bad answer, not "absent".
    pub fn crc64(&self) -> Result<Option<u64>, RemoteError> {
        match self.header(CRC64) {
            None => Ok(None),
            Some(v) => parse_crc64_header(v).map(Some).ok_or_else(|| {
                self.bad(format!("{CRC64} header is not a decimal CRC-64: {:?}", self.redactor.snippet(v.as_bytes())))
            }),
        }
    }

    /// Parse an XML body with `f`, mapping a parse failure to `BadResponse`.
    pub fn xml<T>(&self, f: impl FnOnce(&[u8]) -> Result<T, String>) -> Result<T, RemoteError> {
        f(&self.body).map_err(|why| {
            let text = self.redactor.snippet(&self.body);
            self.bad(format!("HTTP {} with an unexpected body ({why}): {text}", self.status.as_u16()))
        })
    }
}

/// A header's value as trimmed text (`None` when absent or not visible ASCII).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

pub fn request_id(headers: &HeaderMap) -> Option<String> {
    header(headers, REQUEST_ID).filter(|s| !s.is_empty()).map(str::to_string)
}

pub fn server_time(headers: &HeaderMap) -> Option<SystemTime> {
    header(headers, "date").and_then(timefmt::parse_rfc1123)
}

/// The start of a body, printable and on one line, for error messages.
/// How many bytes of a body an excerpt looks at.
const SNIPPET_READ: usize = 160 * 4;

/// A short one-line excerpt of `body`. Text from a server goes through [`Redactor::snippet`] instead.
pub fn snippet(body: &[u8]) -> String {
    const MAX: usize = 160;
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_READ)]);
    let mut out = String::with_capacity(MAX + 8);
    let mut last_space = true;
    for ch in text.chars() {
        let ch = if ch.is_control() || ch.is_whitespace() { ' ' } else { ch };
        if ch == ' ' && last_space {
            continue;
        }
        last_space = ch == ' ';
        if out.chars().count() >= MAX {
            out.push('…');
            break;
        }
        out.push(ch);
    }
    if out.trim().is_empty() { "(empty body)".to_string() } else { out.trim_end().to_string() }
}

/// The code a bodiless error answer most likely means (what the SDKs report for a bare HEAD status).
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        304 => "NotModified",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        _ => "",
    }
}

/// Turn a non-2xx answer into an error; `redactor` cleans any text the server echoed.
pub fn service_error(
    op: &'static str,
    is_head: bool,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    redactor: &Redactor,
) -> RemoteError {
    let scrub = |s: String| redactor.apply(s);
    let request_id = request_id(headers);
    let base = ServiceError {
        op,
        status: status.as_u16(),
        code: String::new(),
        message: String::new(),
        request_id: request_id.clone(),
        host_id: None,
        ec: header(headers, "x-oss-ec").filter(|s| !s.is_empty()).map(str::to_string),
        server_time: server_time(headers),
    };
    let from_doc = |doc: xml::ErrorDoc| -> RemoteError {
        ServiceError {
            code: doc.code,
            message: scrub(doc.message),
            request_id: doc.request_id.or_else(|| base.request_id.clone()),
            host_id: doc.host_id,
            ec: doc.ec.or_else(|| base.ec.clone()),
            ..base.clone()
        }
        .into()
    };

    let body_is_blank = body.iter().all(u8::is_ascii_whitespace);
    if !body_is_blank {
        if let Some(doc) = xml::parse_error(body) {
            return from_doc(doc);
        }
        let retryable_status = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
        let text = redactor.snippet(body);
        if retryable_status {
            return ServiceError { message: format!("the server answered with a non-OSS error page: {text}"), ..base }
                .into();
        }
        return RemoteError::BadResponse {
            op,
            detail: format!("HTTP {} with a body that is not an OSS <Error> document: {text}", status.as_u16()),
            request_id,
        };
    }
    // HEAD answers carry no body; OSS repeats the error document in `x-oss-err` (Base64).
    if let Some(encoded) = header(headers, "x-oss-err") {
        let doc = base64::engine::general_purpose::STANDARD.decode(encoded).ok().and_then(|xml| xml::parse_error(&xml));
        if let Some(doc) = doc {
            return from_doc(doc);
        }
    }
    let code = if is_head { code_for_status(status) } else { "" };
    let reason = status.canonical_reason().unwrap_or("error");
    ServiceError { code: code.to_string(), message: format!("{reason} (no error details in the answer)"), ..base }
        .into()
}

/// `bytes first-last/total` → the range and the object's total size.
pub fn parse_content_range(value: &str) -> Option<(ByteRange, u64)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total: u64 = total.trim().parse().ok()?;
    (first <= last && last < total).then_some((ByteRange { first, last }, total))
}

/// What HEAD and GET report about an object, from the answer's headers.
pub fn object_info(reply: &Reply, key: &str, size: u64) -> Result<ObjectInfo, RemoteError> {
    let etag = reply.header("etag").filter(|e| !e.is_empty()).ok_or_else(|| reply.bad("no ETag header"))?;
    let metadata = reply
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let meta = name.as_str().strip_prefix("x-oss-meta-")?;
            Some((meta.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        })
        .collect();
    let text = |name: &str| reply.header(name).filter(|s| !s.is_empty()).map(str::to_string);
    Ok(ObjectInfo {
        key: key.to_string(),
        size,
        etag: etag.to_string(),
        crc64: reply.crc64()?,
        crc64nvme: None,
        last_modified: reply.header("last-modified").and_then(timefmt::parse_rfc1123),
        content_type: text("content-type"),
        metadata,
        storage_class: text("x-oss-storage-class"),
        object_type: text("x-oss-object-type"),
    })
}

/// The `Content-Length` header (reqwest reports a HEAD answer's length as 0, so read the header itself).
pub fn content_length(reply: &Reply) -> Result<u64, RemoteError> {
    let value = reply.header("content-length").ok_or_else(|| reply.bad("no Content-Length header"))?;
    value.parse().map_err(|_| {
        reply.bad(format!("Content-Length is not a number: {:?}", reply.redactor.snippet(value.as_bytes())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn keep() -> Redactor {
        Redactor::default()
    }

    fn svc(e: RemoteError) -> ServiceError {
        match e {
            RemoteError::Service(s) => *s,
            other => panic!("not a service error: {other}"),
        }
    }

    #[test]
    fn head_error_from_x_oss_err() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>NoSuchBucket</Code>\n  \
                   <Message>The specified bucket does not exist.</Message>\n  <RequestId>5C3D9175B6FC201293AD4890</RequestId>\n  \
                   <HostId>nobucket.oss-cn-hangzhou.aliyuncs.com</HostId>\n  <BucketName>nobucket</BucketName>\n  \
                   <EC>0015-00000101</EC>\n</Error>\n";
        let encoded = base64::engine::general_purpose::STANDARD.encode(doc);
        let h = hdrs(&[
            ("x-oss-err", &encoded),
            ("x-oss-request-id", "5C3D9175B6FC201293AD4890"),
            ("x-oss-ec", "0015-00000101"),
            ("date", "Fri, 24 Feb 2017 03:15:40 GMT"),
        ]);
        let e = svc(service_error("HeadObject", true, StatusCode::NOT_FOUND, &h, b"", &keep()));
        assert_eq!(e.code, "NoSuchBucket");
        assert_eq!(e.message, "The specified bucket does not exist.");
        assert_eq!(e.host_id.as_deref(), Some("nobucket.oss-cn-hangzhou.aliyuncs.com"));
        assert_eq!(e.ec.as_deref(), Some("0015-00000101"));
        assert_eq!(e.server_time, timefmt::parse_rfc1123("Fri, 24 Feb 2017 03:15:40 GMT"));
    }

    #[test]
    fn head_error_without_details_is_derived_from_status() {
        let h = hdrs(&[("x-oss-request-id", "RID")]);
        let e = svc(service_error("HeadObject", true, StatusCode::NOT_FOUND, &h, b"", &keep()));
        assert_eq!((e.code.as_str(), e.status, e.request_id.as_deref()), ("NoSuchKey", 404, Some("RID")));
        // Undecodable x-oss-err falls back the same way, never panics.
        let h = hdrs(&[("x-oss-err", "%%%not base64")]);
        let e = svc(service_error("HeadObject", true, StatusCode::NOT_FOUND, &h, b"", &keep()));
        assert_eq!(e.code, "NoSuchKey");
        let e =
            svc(service_error("HeadObject", true, StatusCode::PRECONDITION_FAILED, &HeaderMap::new(), b"", &keep()));
        assert_eq!(e.code, "PreconditionFailed");
        // Other methods do not guess: a bare 404 on a GET is not necessarily NoSuchKey.
        let e = svc(service_error("GetObject", false, StatusCode::NOT_FOUND, &HeaderMap::new(), b"", &keep()));
        assert_eq!(e.code, "");
    }

    #[test]
    fn non_oss_error_bodies() {
        let html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        let e = svc(service_error("PutObject", false, StatusCode::BAD_GATEWAY, &HeaderMap::new(), html, &keep()));
        assert!(e.message.contains("502 Bad Gateway"), "{}", e.message);
        assert!(RemoteError::from(e).is_retryable());

        let e =
            service_error("PutObject", false, StatusCode::NOT_FOUND, &HeaderMap::new(), b"<h1>Not Found</h1>", &keep());
        assert!(matches!(e, RemoteError::BadResponse { .. }), "{e}");
        assert!(e.to_string().contains("OSS server"), "{e}");

        let scrub = Redactor::new(["sekrit".to_string()]);
        let e = service_error("PutObject", false, StatusCode::BAD_REQUEST, &HeaderMap::new(), b"echo sekrit", &scrub);
        assert!(!e.to_string().contains("sekrit"), "{e}");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((ByteRange { first: 0, last: 9 }, 100)));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((ByteRange { first: 5, last: 5 }, 6)));
        for bad in ["bytes 9-0/100", "bytes 0-100/100", "bytes */100", "items 0-1/2", "bytes 0-1", ""] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        let s = snippet(b"<html>\n\n  <body>   x\x00y  </body></html>");
        assert_eq!(s, "<html> <body> x y </body></html>");
        assert!(snippet(&[b'a'; 10_000]).chars().count() <= 161);
        assert_eq!(snippet(b" \n"), "(empty body)");
    }

    #[test]
    fn a_secret_across_the_excerpt_edge_leaves_no_head_behind() {
        let secret = "SECRETKEYSECRETKEYSECRETKEY";
        let r = Redactor::new([secret.to_string()]);
        for at in 140..170 {
            let body = format!("{}{secret} tail", "x".repeat(at));
            let s = r.snippet(body.as_bytes());
            assert!(!s.contains("SECR"), "at {at}: {s}");
        }
    }

    proptest::proptest! {
        // Whatever a server sends, decoding it yields an error value, never a panic.
        #[test]
        fn error_decoding_never_panics(
            status in 100u16..1000,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            err_header in "[A-Za-z0-9+/=]{0,80}",
            range in "(bytes)? ?[0-9]{0,21}-?[0-9]{0,21}/?[0-9*]{0,21}",
            is_head in proptest::bool::ANY,
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            let h = hdrs(&[("x-oss-err", &err_header), ("date", "garbage"), ("x-oss-request-id", "R")]);
            let _ = service_error("Op", is_head, status, &h, &body, &keep());
            let _ = parse_content_range(&range);
            let _ = snippet(&body);
        }
    }
}
