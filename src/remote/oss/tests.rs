//! Behaviour tests of [`OssClient`] against a scripted HTTP server (hyper on a real 127.0.0.1 socket).
//!
//! The mock is focused on what a real server rarely does: failing twice then succeeding, a clock 20 minutes
//! off, an HTML page where XML belongs, a CRC-64 that does not match, a server that stops reading. Where the
//! mock accepts a request it also *verifies its signature* with the shared canonicalization in `sign.rs`,
//! from the decoded path and query it received, as `ossmirror serve` will. So every test also checks that
//! what we sign is what we send.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use md5::Digest as _;

use super::client::{OssClient, OssConfig};
use super::sign::{self, SignInput, SignatureVersion};
use crate::checksum::crc64;
use crate::remote::error::TransportKind;
use crate::remote::retry::RetryPolicy;
use crate::remote::{
    Body, ByteRange, CompleteOptions, CompletedPart, Credentials, FileRange, ListObjectsRequest, ObjectOptions, Remote,
    RemoteError,
};
use crate::timefmt;

const AK: &str = "TESTAKID";
const SECRET: &str = "test-secret-value-0123456789";
const TOKEN: &str = "sts-token-value-abcdef";
const REGION: &str = "cn-hangzhou";
const BUCKET: &str = "bkt";

// ---------------------------------------------------------------------------------------------------------
// The mock server

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Raw (still encoded) path and query, exactly as on the wire.
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned()
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Path-style `/bucket/key`, decoded as a server must (`%2F` included).
    fn bucket_key(&self) -> (String, Option<String>) {
        let rest = self.path.strip_prefix('/').unwrap_or(&self.path);
        match rest.split_once('/') {
            Some((b, "")) => (decode(b), None),
            Some((b, k)) => (decode(b), Some(decode(k))),
            None => (decode(rest), None),
        }
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (decode(n), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect()
    }

    fn time(&self) -> SystemTime {
        match self.header("x-oss-date") {
            Some(t) => timefmt::parse_iso8601_basic(t).unwrap(),
            None => timefmt::parse_rfc1123(self.header("date").unwrap()).unwrap(),
        }
    }

    /// Recompute the signature from what arrived; `Err` says why it does not match.
    fn verify_signature(&self) -> Result<(), String> {
        let auth = self.header("authorization").ok_or("no Authorization header")?;
        let (bucket, key) = self.bucket_key();
        let query = self.query_pairs();
        let input = SignInput {
            method: self.method.as_str(),
            bucket: Some(&bucket),
            key: key.as_deref(),
            query: &query,
            headers: &self.headers,
        };
        if let Some(rest) = auth.strip_prefix("OSS ") {
            let (ak, sig) = rest.split_once(':').ok_or("bad V1 header")?;
            let date = self.header("date").ok_or("no Date")?;
            let want = sign::signature_v1(SECRET, &sign::string_to_sign_v1(&input, date, &[]));
            return if ak == AK && sig == want { Ok(()) } else { Err(format!("V1 signature mismatch for {key:?}")) };
        }
        let rest = auth.strip_prefix("OSS4-HMAC-SHA256 ").ok_or("unknown scheme")?;
        let mut credential = "";
        let mut signature = "";
        for piece in rest.split(',') {
            let (k, v) = piece.trim().split_once('=').ok_or("bad V4 field")?;
            match k {
                "Credential" => credential = v,
                "Signature" => signature = v,
                _ => return Err(format!("unexpected field {k}")),
            }
        }
        let fields: Vec<&str> = credential.split('/').collect();
        if fields.len() != 5 || fields[0] != AK || fields[2] != REGION || fields[3] != "oss" {
            return Err(format!("bad credential {credential}"));
        }
        if self.header("x-oss-content-sha256") != Some("UNSIGNED-PAYLOAD") {
            return Err("missing x-oss-content-sha256".into());
        }
        let timestamp = self.header("x-oss-date").ok_or("no x-oss-date")?;
        let scope = sign::scope_v4(fields[1], REGION, "oss");
        let sts = sign::string_to_sign_v4(timestamp, &scope, &sign::canonical_request_v4(&input, &[]));
        let want = sign::signature_v4(&sign::signing_key_v4(SECRET, fields[1], REGION, "oss"), &sts);
        if signature == want { Ok(()) } else { Err(format!("V4 signature mismatch for {key:?}")) }
    }
}

type BoxFut = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
type RawHandler = Arc<dyn Fn(usize, Request<Incoming>) -> BoxFut + Send + Sync>;

struct Mock {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// A server whose handler sees the raw request (streaming body) and the 0-based request index.
    async fn raw(handler: RawHandler) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(n, req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Mock { addr, count, seen: Arc::new(Mutex::new(Vec::new())), task }
    }

    /// A server that reads each whole request, records it, and answers with `handler(index, &request)`.
    async fn start<F>(handler: F) -> Mock
    where
        F: Fn(usize, &Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let handler = Arc::new(handler);
        let mut mock = Mock::raw(Arc::new(move |n, req: Request<Incoming>| {
            let handler = handler.clone();
            let log = log.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return reply(400, &[], "body cut short"),
                };
                let seen = Seen {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or("").to_string(),
                    headers: parts.headers.clone(),
                    body,
                };
                log.lock().unwrap().push(seen.clone());
                handler(n, &seen)
            })
        }))
        .await;
        mock.seen = seen;
        mock
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An answer with OSS's usual headers (request id and Date) unless the caller gives them.
fn reply(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    if !has("x-oss-request-id") {
        builder = builder.header("x-oss-request-id", "5C3D9175B6FC201293AD4890");
    }
    if !has("date") {
        builder = builder.header("date", timefmt::rfc1123(SystemTime::now()));
    }
    for (n, v) in headers {
        builder = builder.header(*n, v.as_str());
    }
    builder.body(Full::new(body.into())).unwrap()
}

fn oss_error(status: u16, code: &str, extra_headers: &[(&str, String)]) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>{code}</Code>\n  <Message>scripted {code}</Message>\n  \
         <RequestId>5C3D9175B6FC201293AD4890</RequestId>\n  <HostId>bkt.127.0.0.1</HostId>\n  <EC>0002-00000001</EC>\n</Error>\n"
    );
    // HEAD answers lose their body on the wire; OSS repeats the document in `x-oss-err` for them.
    let mut headers = vec![
        ("content-type", "application/xml".to_string()),
        ("x-oss-err", base64::engine::general_purpose::STANDARD.encode(&body)),
        ("x-oss-ec", "0002-00000001".to_string()),
    ];
    headers.extend(extra_headers.iter().cloned());
    reply(status, &headers, body)
}

/// Accept an upload the way OSS does: ETag and the CRC-64 of the received bytes.
fn upload_ok(seen: &Seen) -> Response<Full<Bytes>> {
    let etag = format!("\"{}\"", hex::encode_upper(md5::Md5::digest(&seen.body)));
    reply(200, &[("etag", etag), ("x-oss-hash-crc64ecma", crc64(&seen.body).to_string())], "")
}

/// 403 with the reason, when the signature does not verify.
fn checked(seen: &Seen, ok: impl FnOnce() -> Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    match seen.verify_signature() {
        Ok(()) => ok(),
        Err(why) => {
            let body = format!("<Error><Code>SignatureDoesNotMatch</Code><Message>{why}</Message></Error>");
            reply(403, &[("content-type", "application/xml".into())], body)
        }
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        deadline: Duration::from_secs(60),
    }
}

fn config(endpoint: &str, version: SignatureVersion) -> OssConfig {
    let mut c = OssConfig::new(endpoint);
    c.signature = version;
    c.region = Some(REGION.into());
    c.credentials = Some(Credentials::new(AK, SECRET));
    c.retry = fast_retry(4);
    c.read_timeout = Duration::from_secs(20);
    c
}

fn client(mock: &Mock, version: SignatureVersion) -> OssClient {
    OssClient::new(config(&mock.endpoint(), version)).unwrap()
}

fn bytes(data: &'static [u8]) -> Body {
    Body::Bytes(Bytes::from_static(data))
}

// ---------------------------------------------------------------------------------------------------------
// What is signed is what is sent

#[tokio::test]
async fn tricky_keys_arrive_intact_and_signed_v1_and_v4() {
    let keys = ["a b+c/%41/..//x", "dir/./file", "q?x#y;z=1&w", "中文/ключ ü", "trailing/", "~tilde_-.ok", "a\\b"];
    for version in [SignatureVersion::V1, SignatureVersion::V4] {
        let mock = Mock::start(|_, seen| checked(seen, || upload_ok(seen))).await;
        let c = client(&mock, version);
        for key in keys {
            let put = c.put_object(BUCKET, key, bytes(b"0123456789"), &ObjectOptions::default()).await;
            let put = put.unwrap_or_else(|e| panic!("{version:?} {key:?}: {e}"));
            assert_eq!(put.digest.crc64, crc64(b"0123456789"));
            assert_eq!(put.etag, "\"781E5E245D69B566979B86E28D23F2C7\"");
        }
        let received: Vec<String> = mock.seen().iter().map(|s| s.bucket_key().1.unwrap()).collect();
        assert_eq!(received, keys, "{version:?}");
        assert!(mock.seen().iter().all(|s| s.bucket_key().0 == BUCKET));
    }
}

#[tokio::test]
async fn sts_token_is_sent_and_signed() {
    let mock = Mock::start(|_, seen| checked(seen, || upload_ok(seen))).await;
    let mut cfg = config(&mock.endpoint(), SignatureVersion::V4);
    cfg.credentials = Some(Credentials::new(AK, SECRET).with_session_token(TOKEN));
    let c = OssClient::new(cfg).unwrap();
    c.put_object(BUCKET, "k", bytes(b"x"), &ObjectOptions::default()).await.unwrap();
    assert_eq!(mock.seen()[0].header("x-oss-security-token"), Some(TOKEN));
}

#[tokio::test]
async fn presigned_urls_verify_on_the_server_side() {
    let mock = Mock::start(|_, _| reply(200, &[], "")).await;
    for version in [SignatureVersion::V1, SignatureVersion::V4] {
        let c = client(&mock, version);
        let url = c.presign_url("get", BUCKET, "dir/a b+c.txt", Duration::from_secs(600)).unwrap();
        let parsed = reqwest::Url::parse(&url).unwrap();
        let seen = Seen {
            method: Method::GET,
            path: parsed.path().to_string(),
            query: parsed.query().unwrap().to_string(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let (bucket, key) = seen.bucket_key();
        assert_eq!((bucket.as_str(), key.as_deref()), (BUCKET, Some("dir/a b+c.txt")));
        let query = seen.query_pairs();
        let get = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let headers = HeaderMap::new();
        let input =
            SignInput { method: "GET", bucket: Some(BUCKET), key: key.as_deref(), query: &query, headers: &headers };
        match version {
            SignatureVersion::V1 => {
                let expires = get("Expires").unwrap();
                let want = sign::signature_v1(SECRET, &sign::string_to_sign_v1(&input, &expires, &[]));
                assert_eq!(get("Signature"), Some(want));
                assert_eq!(get("OSSAccessKeyId").as_deref(), Some(AK));
            }
            SignatureVersion::V4 => {
                assert!(url.ends_with(&format!("x-oss-signature={}", get("x-oss-signature").unwrap())), "{url}");
                let ts = get("x-oss-date").unwrap();
                let day = &ts[..8];
                let sts = sign::string_to_sign_v4(
                    &ts,
                    &sign::scope_v4(day, REGION, "oss"),
                    &sign::canonical_request_v4(&input, &[]),
                );
                let want = sign::signature_v4(&sign::signing_key_v4(SECRET, day, REGION, "oss"), &sts);
                assert_eq!(get("x-oss-signature"), Some(want));
                assert_eq!(get("x-oss-expires").as_deref(), Some("600"));
            }
        }
        // And a plain HTTP client can use it as is.
        let status = reqwest::get(&url).await.unwrap().status();
        assert_eq!(status, StatusCode::OK);
    }
    let c = client(&mock, SignatureVersion::V4);
    assert!(c.presign_url("GET", BUCKET, "k", Duration::from_secs(604_801)).is_err());
    assert!(c.presign_url("GET", "Bad_Bucket", "k", Duration::from_secs(60)).is_err());
    let anonymous = OssClient::new(OssConfig { credentials: None, ..config(&mock.endpoint(), SignatureVersion::V4) });
    let e = anonymous.unwrap().presign_url("GET", BUCKET, "k", Duration::from_secs(60)).unwrap_err();
    assert!(e.to_string().contains("OSS_ACCESS_KEY_ID"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn server_errors_are_retried_and_each_attempt_is_signed_anew() {
    // The handler moves the client's clock between attempts: a resent (stale) request would carry the old
    // time, a re-signed one carries the new time and still verifies.
    let client_cell: Arc<OnceLock<OssClient>> = Arc::default();
    let cell = client_cell.clone();
    let mock = Mock::start(move |n, seen| {
        if let Err(why) = seen.verify_signature() {
            return reply(403, &[], why);
        }
        if n < 2 {
            cell.get().unwrap().set_clock_offset_ms(((n as i64) + 1) * 120_000);
            return oss_error(503, "ServiceUnavailable", &[]);
        }
        upload_ok(seen)
    })
    .await;
    let c = client(&mock, SignatureVersion::V4);
    let _ = client_cell.set(c.clone());
    let put = c.put_object(BUCKET, "part.bin", bytes(b"hello"), &ObjectOptions::default()).await.unwrap();
    assert_eq!(put.digest.len, 5);
    assert_eq!(mock.requests(), 3);
    let seen = mock.seen();
    let times: Vec<SystemTime> = seen.iter().map(Seen::time).collect();
    // Two minutes apart each, by construction of the offsets (well beyond any scheduling noise).
    for pair in times.windows(2) {
        let step = pair[1].duration_since(pair[0]).unwrap();
        assert!(step >= Duration::from_secs(100), "attempts were not re-signed: {times:?}");
    }
    let auths: Vec<&str> = seen.iter().map(|s| s.header("authorization").unwrap()).collect();
    assert!(auths[0] != auths[1] && auths[1] != auths[2], "{auths:?}");
}

#[tokio::test]
async fn retries_stop_at_the_attempt_bound() {
    let mock = Mock::start(|_, _| oss_error(500, "InternalError", &[])).await;
    let mut cfg = config(&mock.endpoint(), SignatureVersion::V4);
    cfg.retry = fast_retry(3);
    let c = OssClient::new(cfg).unwrap();
    let err = c.head_object(BUCKET, "k").await.unwrap_err();
    assert_eq!(mock.requests(), 3);
    match &err {
        RemoteError::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert_eq!(last.code(), Some("InternalError"));
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let mock = Mock::start(|_, _| oss_error(503, "ServiceUnavailable", &[])).await;
    let mut cfg = config(&mock.endpoint(), SignatureVersion::V4);
    cfg.retry = RetryPolicy {
        max_attempts: 100_000,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(20),
        deadline: Duration::from_secs(1),
    };
    let c = OssClient::new(cfg).unwrap();
    let err = c.delete_object(BUCKET, "k").await.unwrap_err();
    // The time budget, not the attempt budget, ended it.
    let n = mock.requests();
    assert!(n < 100_000, "{n} attempts");
    assert_eq!(err.code(), Some("ServiceUnavailable"));
    if n > 1 {
        assert!(matches!(err, RemoteError::RetriesExhausted { attempts, .. } if attempts as usize == n), "{err}");
    }
}

#[tokio::test]
async fn non_retryable_errors_are_not_retried() {
    let mock = Mock::start(|_, _| oss_error(403, "AccessDenied", &[])).await;
    let c = client(&mock, SignatureVersion::V4);
    let err = c.list_objects(BUCKET, &ListObjectsRequest::default()).await.unwrap_err();
    assert_eq!(mock.requests(), 1);
    assert_eq!(err.code(), Some("AccessDenied"));
    assert!(err.to_string().contains("RequestId: 5C3D9175B6FC201293AD4890"), "{err}");
}

#[tokio::test]
async fn clock_skew_is_corrected_from_the_server_date() {
    for version in [SignatureVersion::V1, SignatureVersion::V4] {
        // The server's clock runs 20 minutes ahead of ours.
        let ahead = Duration::from_secs(20 * 60);
        let mock = Mock::start(move |_, seen| {
            let server_now = SystemTime::now() + ahead;
            let t = seen.time();
            let skew = server_now.duration_since(t).unwrap_or_else(|e| e.duration());
            if skew > Duration::from_secs(15 * 60) {
                return oss_error(403, "RequestTimeTooSkewed", &[("date", timefmt::rfc1123(server_now))]);
            }
            checked(seen, || reply(200, &[("etag", "\"E\"".into()), ("content-length", "0".into())], ""))
        })
        .await;
        let mut cfg = config(&mock.endpoint(), version);
        // Even with no retries at all, one clock correction is allowed: it fixes the request, not the luck.
        cfg.retry = RetryPolicy::none();
        let c = OssClient::new(cfg).unwrap();
        let info = c.head_object(BUCKET, "k").await.unwrap().unwrap();
        assert_eq!(info.etag, "\"E\"");
        assert_eq!(mock.requests(), 2, "{version:?}");
        let seen = mock.seen();
        let corrected = seen[1].time();
        let server_then = SystemTime::now() + ahead;
        let off = server_then.duration_since(corrected).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(5 * 60), "{version:?}: retry still skewed by {off:?}");
        let offset = c.clock_offset_ms();
        assert!(offset > 18 * 60_000 && offset < 22 * 60_000, "{offset} ms");
        if version == SignatureVersion::V4 {
            assert_ne!(seen[0].header("x-oss-date"), seen[1].header("x-oss-date"));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Answers that are not what they claim

#[tokio::test]
async fn an_html_page_is_a_bad_response_never_a_listing() {
    let page = "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>It works</body></html>";
    let mock = Mock::start(move |_, _| reply(200, &[("content-type", "text/html".into())], page)).await;
    let c = client(&mock, SignatureVersion::V4);
    let err = c.list_objects(BUCKET, &ListObjectsRequest::default()).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::BadResponse { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ListObjectsV2") && text.contains("OSS server") && text.contains("Welcome to nginx"),
        "{text}"
    );

    // The same without the content type, and garbage that is not even HTML: still never a success.
    for body in [page, "\u{0}\u{1}garbage\u{7f}", "{\"json\": true}", "<ListBucketResult><IsTruncated>maybe"] {
        let mock = Mock::start(move |_, _| reply(200, &[("content-type", "application/xml".into())], body)).await;
        let c = client(&mock, SignatureVersion::V4);
        let err = c.list_objects(BUCKET, &ListObjectsRequest::default()).await.unwrap_err();
        assert!(matches!(err.root(), RemoteError::BadResponse { .. }), "{body}: {err}");
        let err = c.initiate_multipart(BUCKET, "k", &ObjectOptions::default()).await.unwrap_err();
        assert!(matches!(err.root(), RemoteError::BadResponse { .. }), "{body}: {err}");
    }

    // A 200 HTML page to a DELETE (captive portal) is not a deletion.
    let mock = Mock::start(move |_, _| reply(200, &[("content-type", "text/html; charset=utf-8".into())], page)).await;
    let err = client(&mock, SignatureVersion::V4).delete_object(BUCKET, "k").await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::BadResponse { .. }), "{err}");
}

#[tokio::test]
async fn a_crc_that_does_not_match_the_bytes_sent_is_never_success() {
    let mock = Mock::start(|_, seen| {
        let wrong = crc64(&seen.body) ^ 1;
        reply(200, &[("etag", "\"E\"".into()), ("x-oss-hash-crc64ecma", wrong.to_string())], "")
    })
    .await;
    let c = client(&mock, SignatureVersion::V4);
    let err = c.put_object(BUCKET, "k", bytes(b"123456789"), &ObjectOptions::default()).await.unwrap_err();
    match err.root() {
        RemoteError::ChecksumMismatch { local, server, .. } => {
            assert_eq!(*local, 0x995D_C9BB_DF19_39FA);
            assert_eq!(*server, 0x995D_C9BB_DF19_39FA ^ 1);
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    // Mismatches are retried (the next attempt may go through), up to the bound.
    assert_eq!(mock.requests(), 4);

    // A file-backed part, too.
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&vec![7u8; 300_000]).unwrap();
    let body = Body::File(FileRange { file: Arc::new(f), offset: 1000, len: 200_000 });
    let err = c.upload_part(BUCKET, "k", "UPLOAD1", 2, body).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::ChecksumMismatch { .. }), "{err}");
}

#[tokio::test]
async fn an_upload_answer_without_crc_is_not_verified_success() {
    let mock = Mock::start(|_, _| reply(200, &[("etag", "\"E\"".into())], "")).await;
    let c = client(&mock, SignatureVersion::V4);
    let err = c.upload_part(BUCKET, "k", "U", 1, bytes(b"data")).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("x-oss-hash-crc64ecma"), "{err}");

    let mock =
        Mock::start(|_, _| reply(200, &[("etag", "\"E\"".into()), ("x-oss-hash-crc64ecma", "12ab".into())], "")).await;
    let err = client(&mock, SignatureVersion::V4).put_object(BUCKET, "k", bytes(b"d"), &ObjectOptions::default()).await;
    assert!(matches!(err.unwrap_err().root(), RemoteError::BadResponse { .. }));
}

#[tokio::test]
async fn a_file_that_shrinks_mid_send_is_a_local_read_error_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrinks.bin");
    let file = std::fs::File::create(&path).unwrap();
    // Sparse: 64 MiB of zeros costs no disk, and is far more than socket buffers and the body channel hold,
    // so the reader is still mid-file when the server truncates it.
    file.set_len(64 << 20).unwrap();
    let reader = Arc::new(std::fs::File::open(&path).unwrap());
    let truncate_path = path.clone();
    let mock = Mock::raw(Arc::new(move |_, req: Request<Incoming>| {
        let path = truncate_path.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let mut truncated = false;
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
                if !truncated {
                    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
                    truncated = true;
                }
            }
            reply(200, &[("etag", "\"E\"".into()), ("x-oss-hash-crc64ecma", "0".into())], "")
        })
    }))
    .await;
    let c = client(&mock, SignatureVersion::V4);
    let body = Body::File(FileRange { file: reader, offset: 0, len: 64 << 20 });
    let err = c.upload_part(BUCKET, "big", "UPLOAD1", 1, body).await.unwrap_err();
    match &err {
        RemoteError::LocalRead { op, source } => {
            assert_eq!(*op, "UploadPart");
            assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof, "{source}");
        }
        other => panic!("expected LocalRead, got {other}"),
    }
    assert_eq!(mock.requests(), 1, "a local read error must not be retried");
}

#[tokio::test]
async fn a_server_that_stops_reading_the_body_times_out() {
    let mock = Mock::raw(Arc::new(|_, _req: Request<Incoming>| {
        Box::pin(async move {
            // Hold the request without reading it; the client must give up on its own.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            reply(500, &[], "")
        })
    }))
    .await;
    let mut cfg = config(&mock.endpoint(), SignatureVersion::V4);
    cfg.retry = RetryPolicy::none();
    cfg.read_timeout = Duration::from_millis(300);
    let c = OssClient::new(cfg).unwrap();
    let f = tempfile::tempfile().unwrap();
    f.set_len(64 << 20).unwrap();
    let body = Body::File(FileRange { file: Arc::new(f), offset: 0, len: 64 << 20 });
    let err = c.upload_part(BUCKET, "k", "U", 1, body).await.unwrap_err();
    match &err {
        RemoteError::Transport { kind: TransportKind::Timeout, detail, .. } => {
            assert!(detail.contains("stopped taking the request body"), "{detail}")
        }
        other => panic!("expected a timeout, got {other}"),
    }
    // With a small body the server has everything and simply never answers.
    let err = c.put_object(BUCKET, "k", bytes(b"x"), &ObjectOptions::default()).await.unwrap_err();
    assert!(matches!(err, RemoteError::Transport { kind: TransportKind::Timeout, .. }), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
}

#[tokio::test]
async fn a_refused_connection_names_the_endpoint_and_the_fix() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = config(&format!("http://{addr}"), SignatureVersion::V4);
    cfg.retry = fast_retry(2);
    let c = OssClient::new(cfg).unwrap();
    let err = c.head_object(BUCKET, "k").await.unwrap_err();
    match err.root() {
        RemoteError::Transport { kind, endpoint, .. } => {
            assert_eq!(*kind, TransportKind::Connect);
            assert_eq!(endpoint, &format!("http://{addr}"));
        }
        other => panic!("expected Transport, got {other}"),
    }
    let text = err.to_string();
    for needle in [addr.to_string().as_str(), "--endpoint", "OSS_ENDPOINT", "HeadObject"] {
        assert!(text.contains(needle), "{needle} missing: {text}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Operations: what goes out, and how answers are read

#[tokio::test]
async fn head_and_get_objects() {
    let mock = Mock::start(|_, seen| {
        let key = seen.bucket_key().1.unwrap();
        let data = b"0123456789";
        let common = |len: usize| {
            vec![
                ("etag", "\"781E5E245D69B566979B86E28D23F2C7\"".to_string()),
                ("x-oss-hash-crc64ecma", crc64(data).to_string()),
                ("last-modified", "Tue, 20 Dec 2022 08:48:18 GMT".to_string()),
                ("content-type", "text/plain".to_string()),
                ("x-oss-meta-author", "alice".to_string()),
                ("x-oss-storage-class", "IA".to_string()),
                ("x-oss-object-type", "Normal".to_string()),
                ("content-length", len.to_string()),
            ]
        };
        match (seen.method.clone(), key.as_str()) {
            (Method::HEAD, "missing") => {
                let xml = "<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
                let err = base64::engine::general_purpose::STANDARD.encode(xml);
                reply(404, &[("x-oss-err", err)], "")
            }
            (Method::HEAD, "nobucket") => {
                let xml = "<Error><Code>NoSuchBucket</Code><Message>no bucket</Message></Error>";
                reply(404, &[("x-oss-err", base64::engine::general_purpose::STANDARD.encode(xml))], "")
            }
            (Method::HEAD, "bare404") => reply(404, &[], ""),
            (Method::HEAD, _) => reply(200, &common(10), ""),
            (Method::GET, "corrupt") => {
                let mut h = common(10);
                h[1].1 = (crc64(data) ^ 0xff).to_string();
                reply(200, &h, &data[..])
            }
            (Method::GET, _) => match seen.header("range") {
                Some("bytes=2-5") => {
                    assert_eq!(seen.header("x-oss-range-behavior"), Some("standard"));
                    let mut h = common(4);
                    h.push(("content-range", "bytes 2-5/10".into()));
                    reply(206, &h, &data[2..6])
                }
                Some("bytes=8-20") => {
                    let mut h = common(2);
                    h.push(("content-range", "bytes 8-9/10".into()));
                    reply(206, &h, &data[8..])
                }
                Some("bytes=1-3") => {
                    let mut h = common(3);
                    h.push(("content-range", "bytes 0-2/10".into()));
                    reply(206, &h, &data[0..3])
                }
                _ => reply(200, &common(10), &data[..]),
            },
            _ => reply(400, &[], ""),
        }
    })
    .await;
    let c = client(&mock, SignatureVersion::V4);
    let info = c.head_object(BUCKET, "k").await.unwrap().unwrap();
    assert_eq!(info.size, 10);
    assert_eq!(info.crc64, Some(crc64(b"0123456789")));
    assert_eq!(info.metadata, vec![("author".to_string(), "alice".to_string())]);
    assert_eq!(info.storage_class.as_deref(), Some("IA"));
    assert_eq!(info.object_type.as_deref(), Some("Normal"));
    assert_eq!(info.content_type.as_deref(), Some("text/plain"));
    assert_eq!(info.last_modified, Some(timefmt::from_unix_secs(1_671_526_098)));
    assert_eq!(c.head_object(BUCKET, "missing").await.unwrap(), None);
    assert_eq!(c.head_object(BUCKET, "bare404").await.unwrap(), None);
    let err = c.head_object(BUCKET, "nobucket").await.unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"));

    let whole = c.get_object(BUCKET, "k", None).await.unwrap();
    assert_eq!(&whole.body[..], b"0123456789");
    assert_eq!(whole.content_range, None);
    let part = c.get_object(BUCKET, "k", Some(ByteRange { first: 2, last: 5 })).await.unwrap();
    assert_eq!(&part.body[..], b"2345");
    assert_eq!(part.content_range, Some((ByteRange { first: 2, last: 5 }, 10)));
    assert_eq!(part.info.size, 10);
    let tail = c.get_object(BUCKET, "k", Some(ByteRange { first: 8, last: 20 })).await.unwrap();
    assert_eq!(&tail.body[..], b"89");
    let err = c.get_object(BUCKET, "k", Some(ByteRange { first: 1, last: 3 })).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::BadResponse { .. }), "{err}");
    let err = c.get_object(BUCKET, "corrupt", None).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::ChecksumMismatch { .. }), "{err}");
}

#[tokio::test]
async fn listing_sends_url_encoding_and_decodes_the_answer() {
    let mock = Mock::start(|_, seen| {
        checked(seen, || {
            let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult><Name>bkt</Name><Prefix>a%2F</Prefix><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<NextContinuationToken>t%2B1%2F%3D</NextContinuationToken>
<Contents><Key>a%2Fx%20y%2Bz</Key><LastModified>2022-12-20T08:48:18.000Z</LastModified><ETag>"E1"</ETag><Size>3</Size><StorageClass>Standard</StorageClass></Contents>
<CommonPrefixes><Prefix>a%2Fsub%2F</Prefix></CommonPrefixes></ListBucketResult>"#;
            reply(200, &[("content-type", "application/xml".into())], body)
        })
    })
    .await;
    let c = client(&mock, SignatureVersion::V4);
    let request = ListObjectsRequest {
        prefix: Some("a/".into()),
        delimiter: Some("/".into()),
        continuation_token: Some("t+0/=".into()),
        start_after: Some(String::new()),
        max_keys: Some(100),
    };
    let page = c.list_objects(BUCKET, &request).await.unwrap();
    assert_eq!(page.objects[0].key, "a/x y+z");
    assert_eq!(page.objects[0].size, 3);
    assert_eq!(page.common_prefixes, vec!["a/sub/"]);
    assert_eq!(page.next_continuation_token.as_deref(), Some("t+1/="));
    let seen = &mock.seen()[0];
    assert_eq!(seen.path, "/bkt/");
    assert_eq!(
        seen.query,
        "continuation-token=t%2B0%2F%3D&delimiter=%2F&encoding-type=url&list-type=2&max-keys=100&prefix=a%2F"
    );
    let err = c.list_objects(BUCKET, &ListObjectsRequest { max_keys: Some(5000), ..Default::default() }).await;
    assert!(matches!(err.unwrap_err(), RemoteError::InvalidInput { .. }));
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn batch_delete_sends_md5_and_quiet_xml() {
    let mock = Mock::start(|_, seen| {
        checked(seen, || {
            let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&seen.body));
            if seen.header("content-md5") != Some(md5.as_str()) {
                return oss_error(400, "InvalidDigest", &[]);
            }
            let body = r#"<DeleteResult><EncodingType>url</EncodingType><Error><Key>locked%2Fa%2Bb</Key><Code>AccessDenied</Code><Message>denied</Message></Error></DeleteResult>"#;
            reply(200, &[("content-type", "application/xml".into())], body)
        })
    })
    .await;
    let c = client(&mock, SignatureVersion::V1);
    let keys: Vec<String> = vec!["a&b.txt".into(), "locked/a+b".into()];
    let failures = c.delete_objects(BUCKET, &keys).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].key.as_str(), failures[0].code.as_str()), ("locked/a+b", "AccessDenied"));
    let seen = &mock.seen()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.query, "delete&encoding-type=url");
    let body = std::str::from_utf8(&seen.body).unwrap();
    assert!(body.contains("<Quiet>true</Quiet>") && body.contains("<Key>a&amp;b.txt</Key>"), "{body}");

    let too_many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let err = c.delete_objects(BUCKET, &too_many).await.unwrap_err();
    assert!(matches!(err, RemoteError::InvalidInput { .. }), "{err}");
    assert!(c.delete_objects(BUCKET, &[]).await.unwrap().is_empty());
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn multipart_lifecycle_requests() {
    let mock = Mock::start(|_, seen| {
        checked(seen, || {
            let q = seen.query_pairs();
            let has = |n: &str| q.iter().any(|(k, _)| k == n);
            let xml = |body: String| reply(200, &[("content-type", "application/xml".into())], body);
            match seen.method.clone() {
                Method::POST if has("uploads") => xml(
                    "<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>big%20file</Key><UploadId>UP123</UploadId>\
                     <EncodingType>url</EncodingType></InitiateMultipartUploadResult>"
                        .into(),
                ),
                Method::PUT if seen.header("x-oss-copy-source").is_some() && has("partNumber") => xml(
                    "<CopyPartResult><LastModified>2022-12-20T08:48:18.000Z</LastModified><ETag>\"CP\"</ETag></CopyPartResult>"
                        .into(),
                ),
                Method::PUT if seen.header("x-oss-copy-source").is_some() => {
                    let mut r = xml("<CopyObjectResult><ETag>\"CO\"</ETag></CopyObjectResult>".into());
                    r.headers_mut().insert("x-oss-hash-crc64ecma", "42".parse().unwrap());
                    r
                }
                Method::PUT if has("partNumber") => upload_ok(seen),
                Method::GET if has("uploadId") => xml(
                    "<ListPartsResult><IsTruncated>false</IsTruncated><Part><PartNumber>1</PartNumber>\
                     <ETag>\"P1\"</ETag><Size>5</Size><HashCrc64ecma>7</HashCrc64ecma></Part></ListPartsResult>"
                        .into(),
                ),
                Method::POST if has("uploadId") => {
                    let mut r = xml(
                        "<CompleteMultipartUploadResult><Key>big%20file</Key><ETag>\"X-2\"</ETag></CompleteMultipartUploadResult>"
                            .into(),
                    );
                    r.headers_mut().insert("x-oss-hash-crc64ecma", "99".parse().unwrap());
                    r
                }
                Method::DELETE if has("uploadId") => oss_error(404, "NoSuchUpload", &[]),
                Method::GET if has("uploads") => xml(
                    "<ListMultipartUploadsResult><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>\
                     <NextKeyMarker>big%20file</NextKeyMarker><NextUploadIdMarker>UP123</NextUploadIdMarker>\
                     <Upload><Key>big%20file</Key><UploadId>UP123</UploadId><Initiated>2022-12-20T08:48:18.000Z</Initiated></Upload>\
                     </ListMultipartUploadsResult>"
                        .into(),
                ),
                _ => oss_error(400, "InvalidArgument", &[]),
            }
        })
    })
    .await;
    let c = client(&mock, SignatureVersion::V4);
    let options = ObjectOptions {
        content_type: Some("application/x-tar".into()),
        metadata: vec![("Mtime".into(), "1671526098".into())],
        acl: Some("private".into()),
        storage_class: Some("IA".into()),
        forbid_overwrite: true,
        ..Default::default()
    };
    let id = c.initiate_multipart(BUCKET, "big file", &options).await.unwrap();
    assert_eq!(id, "UP123");
    let part = c.upload_part(BUCKET, "big file", &id, 1, bytes(b"hello")).await.unwrap();
    assert_eq!(part.etag, "\"5D41402ABC4B2A76B9719D911017C592\"");
    let copy = c
        .upload_part_copy(
            BUCKET,
            "big file",
            &id,
            2,
            "other-bkt",
            "src key",
            Some(ByteRange { first: 0, last: 102_399 }),
        )
        .await
        .unwrap();
    assert_eq!((copy.part_number, copy.etag.as_str(), copy.crc64), (2, "\"CP\"", None));
    let parts = crate::remote::list_all_parts(&c, BUCKET, "big file", &id).await.unwrap();
    assert_eq!((parts[0].part_number, parts[0].crc64), (1, Some(7)));
    let done = c
        .complete_multipart(
            BUCKET,
            "big file",
            &id,
            &[
                CompletedPart { part_number: 1, etag: part.etag.clone(), ..Default::default() },
                CompletedPart { part_number: 2, etag: copy.etag.clone(), ..Default::default() },
            ],
            &CompleteOptions { acl: Some("public-read".into()), forbid_overwrite: true, callback: None },
        )
        .await
        .unwrap();
    assert_eq!((done.etag.as_str(), done.crc64), ("\"X-2\"", Some(99)));
    c.abort_multipart(BUCKET, "big file", &id).await.unwrap();
    let uploads = c
        .list_multipart_uploads(
            BUCKET,
            &crate::remote::ListUploadsRequest { prefix: Some("big".into()), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(uploads.uploads[0].key, "big file");
    assert_eq!(uploads.next_markers, Some(("big file".into(), "UP123".into())));
    let copied = c.copy_object(BUCKET, "a b/src+1", "dst").await.unwrap();
    assert_eq!((copied.etag.as_str(), copied.crc64), ("\"CO\"", Some(42)));

    let seen = mock.seen();
    let init = &seen[0];
    assert_eq!(init.query, "encoding-type=url&uploads");
    assert_eq!(init.header("content-type"), Some("application/x-tar"));
    assert_eq!(init.header("x-oss-meta-mtime"), Some("1671526098"));
    assert_eq!(init.header("x-oss-storage-class"), Some("IA"));
    assert_eq!(init.header("x-oss-forbid-overwrite"), Some("true"));
    assert_eq!(init.header("x-oss-object-acl"), None, "the ACL is sent with Complete");
    assert!(!init.query.contains("sequential"));
    assert_eq!(seen[1].query, "partNumber=1&uploadId=UP123");
    assert_eq!(seen[2].header("x-oss-copy-source"), Some("/other-bkt/src%20key"));
    assert_eq!(seen[2].header("x-oss-copy-source-range"), Some("bytes=0-102399"));
    assert_eq!(seen[3].query, "encoding-type=url&uploadId=UP123");
    let complete = &seen[4];
    assert_eq!(complete.header("x-oss-object-acl"), Some("public-read"));
    let body = std::str::from_utf8(&complete.body).unwrap();
    assert!(
        body.ends_with(
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;5D41402ABC4B2A76B9719D911017C592&quot;</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>&quot;CP&quot;</ETag></Part></CompleteMultipartUpload>"
        ),
        "{body}"
    );
    assert_eq!(seen[5].method, Method::DELETE);
    assert_eq!(seen[6].query, "encoding-type=url&prefix=big&uploads");
    assert_eq!(seen[7].header("x-oss-copy-source"), Some("/bkt/a%20b/src%2B1"));

    // Checked before anything is sent.
    let before = mock.requests();
    let bad_order = [
        CompletedPart { part_number: 2, etag: "a".into(), ..Default::default() },
        CompletedPart { part_number: 1, etag: "b".into(), ..Default::default() },
    ];
    assert!(c.complete_multipart(BUCKET, "k", &id, &bad_order, &CompleteOptions::default()).await.is_err());
    assert!(c.complete_multipart(BUCKET, "k", &id, &[], &CompleteOptions::default()).await.is_err());
    assert!(c.upload_part(BUCKET, "k", &id, 10_001, bytes(b"x")).await.is_err());
    assert!(c.upload_part(BUCKET, "k", "", 1, bytes(b"x")).await.is_err());
    let bad_acl = ObjectOptions { acl: Some("world".into()), ..Default::default() };
    assert!(c.put_object(BUCKET, "k", bytes(b"x"), &bad_acl).await.is_err());
    let bad_meta = ObjectOptions { metadata: vec![("a_b".into(), "v".into())], ..Default::default() };
    assert!(c.put_object(BUCKET, "k", bytes(b"x"), &bad_meta).await.is_err());
    assert!(c.put_object("Bad_Bucket", "k", bytes(b"x"), &ObjectOptions::default()).await.is_err());
    assert!(c.put_object(BUCKET, "/abs", bytes(b"x"), &ObjectOptions::default()).await.is_err());
    assert!(c.put_object(BUCKET, "..", bytes(b"x"), &ObjectOptions::default()).await.is_err());
    assert_eq!(mock.requests(), before);
}

#[tokio::test]
async fn create_bucket_accepts_a_bucket_we_already_own() {
    let mock = Mock::start(|n, seen| {
        checked(seen, || match (n, seen.method.clone()) {
            (0, Method::PUT) => oss_error(409, "BucketAlreadyExists", &[]),
            (1, Method::GET) => {
                reply(200, &[], "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
            }
            (2, Method::PUT) => oss_error(409, "BucketAlreadyExists", &[]),
            _ => oss_error(403, "AccessDenied", &[]),
        })
    })
    .await;
    let c = client(&mock, SignatureVersion::V4);
    c.create_bucket(BUCKET).await.unwrap();
    assert_eq!(mock.seen()[0].path, "/bkt/");
    let err = c.create_bucket(BUCKET).await.unwrap_err();
    assert_eq!(err.code(), Some("BucketAlreadyExists"), "someone else's bucket stays an error: {err}");
}

// ---------------------------------------------------------------------------------------------------------
// Configuration

#[test]
fn configuration_is_validated_with_clear_errors() {
    let mut cfg = OssConfig::new("https://storage.example.com");
    cfg.signature = SignatureVersion::V4;
    let e = OssClient::new(cfg.clone()).unwrap_err().to_string();
    assert!(e.contains("--region") && e.contains("OSS_REGION"), "{e}");
    cfg.region = Some("oss-cn-beijing".into());
    assert_eq!(OssClient::new(cfg.clone()).unwrap().region(), "cn-beijing");
    cfg.region = None;
    cfg.signature = SignatureVersion::V1;
    assert!(OssClient::new(cfg).is_ok(), "V1 needs no region");

    let guessed = OssClient::new(OssConfig::new("oss-cn-shenzhen-internal.aliyuncs.com")).unwrap();
    assert_eq!(guessed.region(), "cn-shenzhen");
    assert_eq!(guessed.endpoint_display(), "https://oss-cn-shenzhen-internal.aliyuncs.com");

    let e = OssClient::new(OssConfig::new("ftp://x")).unwrap_err().to_string();
    assert!(e.contains("--endpoint"), "{e}");
    let mut cfg = OssConfig::new("http://127.0.0.1:1");
    cfg.region = Some("cn-hangzhou".into());
    cfg.credentials = Some(Credentials::new("", "x"));
    assert!(OssClient::new(cfg).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// OSS options: encryption, tags, callbacks, traffic limit

#[tokio::test]
async fn encryption_tags_callback_and_traffic_limit_are_sent_signed_where_oss_takes_them() {
    use crate::remote::{Encryption, UploadCallback};
    let mock = Mock::start(|_, seen| {
        checked(seen, || match seen.header("x-oss-callback") {
            // The callback server's answer becomes the upload's body.
            Some(_) => {
                let etag = format!("\"{}\"", hex::encode_upper(md5::Md5::digest(&seen.body)));
                let crc = crc64(&seen.body).to_string();
                reply(
                    200,
                    &[("etag", etag), ("x-oss-hash-crc64ecma", crc), ("content-type", "application/json".into())],
                    r#"{"Status":"OK"}"#,
                )
            }
            None => upload_ok(seen),
        })
    })
    .await;
    let mut cfg = config(&mock.endpoint(), SignatureVersion::V4);
    cfg.traffic_limit = Some(819_200);
    let c = OssClient::new(cfg).unwrap();
    let options = ObjectOptions {
        encryption: Some(Encryption::Kms { key_id: Some("cmk-1".into()) }),
        tags: vec![("project".into(), "a b".into())],
        callback: Some(UploadCallback {
            url: "http://127.0.0.1:1/cb".into(),
            body: "object=${object}&uid=${x:uid}".into(),
            host: None,
            json_body: false,
            vars: vec![("x:uid".into(), "42".into())],
        }),
        ..ObjectOptions::default()
    };
    let put = c.put_object(BUCKET, "k", bytes(b"0123456789"), &options).await.unwrap();
    assert_eq!(put.callback, Some(crate::remote::CallbackOutcome::Answered(r#"{"Status":"OK"}"#.into())));
    c.get_object(BUCKET, "k", None).await.unwrap_or_else(|e| panic!("GET: {e}"));
    let seen = mock.seen();
    let put = &seen[0];
    assert_eq!(put.header("x-oss-server-side-encryption"), Some("KMS"));
    assert_eq!(put.header("x-oss-server-side-encryption-key-id"), Some("cmk-1"));
    assert_eq!(put.header("x-oss-tagging"), Some("project=a%20b"));
    assert_eq!(put.header("x-oss-traffic-limit"), Some("819200"));
    let decode = |v: &str| -> serde_json::Value {
        use base64::Engine as _;
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
    };
    assert_eq!(decode(put.header("x-oss-callback").unwrap())["callbackUrl"], "http://127.0.0.1:1/cb");
    assert_eq!(decode(put.header("x-oss-callback-var").unwrap())["x:uid"], "42");
    assert_eq!(seen[1].header("x-oss-traffic-limit"), Some("819200"), "GetObject is paced too");
    assert_eq!(seen[1].header("x-oss-server-side-encryption"), None);
}

#[tokio::test]
async fn a_callback_that_failed_is_reported_and_the_upload_still_succeeds() {
    use crate::remote::UploadCallback;
    let mock = Mock::start(|_, seen| {
        checked(seen, || {
            let etag = format!("\"{}\"", hex::encode_upper(md5::Md5::digest(&seen.body)));
            let crc = crc64(&seen.body).to_string();
            let body = "<Error><Code>CallbackFailed</Code><Message>Error status : 502.</Message></Error>";
            reply(
                203,
                &[("etag", etag), ("x-oss-hash-crc64ecma", crc), ("content-type", "application/xml".into())],
                body,
            )
        })
    })
    .await;
    let c = client(&mock, SignatureVersion::V1);
    let options = ObjectOptions {
        callback: Some(UploadCallback {
            url: "http://127.0.0.1:1/cb".into(),
            body: "x".into(),
            host: None,
            json_body: false,
            vars: vec![],
        }),
        ..ObjectOptions::default()
    };
    let put = c.put_object(BUCKET, "k", bytes(b"abc"), &options).await.unwrap();
    match put.callback {
        Some(crate::remote::CallbackOutcome::Failed { message, .. }) => assert_eq!(message, "Error status : 502."),
        other => panic!("{other:?}"),
    }
    assert_eq!(mock.seen().len(), 1, "a failed callback is not a failed upload: no retry");
}
