//! Behaviour tests of [`S3Client`] against a scripted HTTP server (hyper on a real 127.0.0.1 socket), for
//! what a real server (SeaweedFS, in `tests/s3.rs`) will not do on demand: confirm a checksum other than
//! the one sent, answer an MD5 ETag that is not the body's, return 200 with an `<Error>`, echo secrets.
//! Every request the mock accepts is also checked against the SigV4 signature recomputed from what arrived
//! (decoded path and query), so the tests also show that what is signed is what is sent.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use md5::Digest as _;

use super::client::{Integrity, IntegrityMode, S3Client, S3Config};
use super::{sign, xml};
use crate::checksum::crc64nvme;
use crate::remote::retry::RetryPolicy;
use crate::remote::{
    Body, CompleteOptions, CompletedPart, Credentials, ErrorKind, FileRange, ObjectOptions, Remote, RemoteError,
};

const AK: &str = "S3TESTAKID";
const SECRET: &str = "s3-test-secret-value-0123456789";
const BUCKET: &str = "bkt";

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Recompute the signature from what arrived.
    fn verify_signature(&self) -> Result<(), String> {
        let auth = self.header("authorization").ok_or("no Authorization")?;
        let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not SigV4")?;
        let field = |name: &str| {
            rest.split(", ").find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('='))).map(str::to_string)
        };
        let credential = field("Credential").ok_or("no Credential")?;
        let signed = field("SignedHeaders").ok_or("no SignedHeaders")?;
        let signature = field("Signature").ok_or("no Signature")?;
        let scope: Vec<&str> = credential.split('/').collect();
        if scope.len() != 5 || scope[0] != AK || scope[3] != "s3" {
            return Err(format!("bad credential {credential}"));
        }
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned();
        let query: Vec<(String, String)> = self
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (decode(n), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect();
        let headers: Vec<(String, String)> =
            signed.split(';').map(|n| (n.to_string(), self.header(n).unwrap_or("").to_string())).collect();
        let payload = self.header("x-amz-content-sha256").ok_or("no x-amz-content-sha256")?;
        if payload != sign::UNSIGNED_PAYLOAD && payload != sign::sha256_hex(&self.body) {
            return Err("the signed payload hash is not the body's".into());
        }
        let (canonical, _) = sign::canonical_request(self.method.as_str(), &self.path, &query, &headers, payload);
        let timestamp = self.header("x-amz-date").ok_or("no x-amz-date")?;
        let sts = sign::string_to_sign(timestamp, &sign::scope(scope[1], scope[2], "s3"), &canonical);
        let want = sign::signature(&sign::signing_key(SECRET, scope[1], scope[2], "s3"), &sts);
        if want == signature { Ok(()) } else { Err(format!("signature mismatch; canonical request:\n{canonical}")) }
    }
}

type Handler = Arc<dyn Fn(usize, &Seen) -> Response<Full<Bytes>> + Send + Sync>;

struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// A server that reads each request whole and answers `handler(index, request)`; a request whose
    /// signature does not verify gets 403 SignatureDoesNotMatch with the reason.
    async fn start(handler: impl Fn(usize, &Seen) -> Response<Full<Bytes>> + Send + Sync + 'static) -> Mock {
        let handler: Handler = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let seen = Seen {
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().unwrap_or("").to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let n = {
                                let mut l = log.lock().unwrap();
                                l.push(seen.clone());
                                l.len() - 1
                            };
                            let answer = match seen.verify_signature() {
                                Ok(()) => handler(n, &seen),
                                Err(why) => s3_error(403, "SignatureDoesNotMatch", &why),
                            };
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Mock { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn reply(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("x-amz-request-id", "S3REQUESTID")
        .header("x-amz-id-2", "S3HOSTID")
        .header("date", crate::timefmt::rfc1123(SystemTime::now()));
    for (n, v) in headers {
        b = b.header(*n, v.as_str());
    }
    b.body(Full::new(body.into())).unwrap()
}

fn s3_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{}</Message>\
         <RequestId>S3REQUESTID</RequestId><HostId>S3HOSTID</HostId></Error>",
        quick_xml::escape::escape(message)
    );
    reply(status, &[("content-type", "application/xml".into())], body)
}

/// Accept an upload as S3 does: MD5 ETag, and the CRC-64/NVME of the received bytes when one was sent.
fn upload_ok(seen: &Seen) -> Response<Full<Bytes>> {
    let mut headers = vec![("etag", format!("\"{}\"", hex::encode(md5::Md5::digest(&seen.body))))];
    if seen.header("x-amz-checksum-crc64nvme").is_some() {
        headers.push(("x-amz-checksum-crc64nvme", xml::crc64_to_base64(crc64nvme(&seen.body))));
    }
    reply(200, &headers, "")
}

fn client(mock: &Mock, integrity: IntegrityMode) -> S3Client {
    let mut c = S3Config::new(format!("http://{}", mock.addr));
    c.credentials = Some(Credentials::new(AK, SECRET));
    c.integrity = integrity;
    c.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        deadline: Duration::from_secs(30),
    };
    c.read_timeout = Duration::from_secs(20);
    S3Client::new(c).unwrap()
}

fn bytes(data: &'static [u8]) -> Body {
    Body::Bytes(Bytes::from_static(data))
}

#[tokio::test]
async fn tricky_keys_and_queries_are_signed_as_sent() {
    let mock = Mock::start(|_, seen| upload_ok(seen)).await;
    let c = client(&mock, IntegrityMode::Crc64Nvme);
    for key in ["a b+c/%41//x", "dir/./file", "q?x#y;z=1&w", "中文/ключ", "trailing/", "~tilde_-.ok", "a\\b"] {
        c.put_object(BUCKET, key, bytes(b"0123456789"), &ObjectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }
    let seen = mock.seen();
    assert!(seen.iter().all(|s| s.header("x-amz-content-sha256") == Some("UNSIGNED-PAYLOAD")));
    assert!(seen.iter().all(|s| s.header("x-amz-checksum-crc64nvme").is_some()));
    assert!(seen.iter().all(|s| s.header("content-encoding").is_none()), "never aws-chunked");
}

#[tokio::test]
async fn signed_payloads_carry_the_body_hash() {
    let mock = Mock::start(|_, seen| upload_ok(seen)).await;
    let mut cfg = S3Config::new(format!("http://{}", mock.addr));
    cfg.credentials = Some(Credentials::new(AK, SECRET).with_session_token("session-token-value"));
    cfg.integrity = IntegrityMode::ContentMd5;
    cfg.sign_payload = true;
    let c = S3Client::new(cfg).unwrap();
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&vec![7u8; 1_500_000]).unwrap();
    let body = Body::File(FileRange { file: Arc::new(f), offset: 100, len: 1_000_000 });
    c.put_object(BUCKET, "k", body, &ObjectOptions::default()).await.unwrap();
    let s = &mock.seen()[0];
    assert_eq!(s.header("x-amz-content-sha256"), Some(sign::sha256_hex(&[7u8; 1_000_000]).as_str()));
    assert_eq!(s.header("x-amz-security-token"), Some("session-token-value"));
    let md5 = md5::Md5::digest([7u8; 1_000_000]);
    assert_eq!(s.header("content-md5").map(str::to_string), Some(base64_std(&md5)));
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn a_confirmed_checksum_that_differs_is_never_success() {
    // The server stores (and confirms) other bytes than it received: every attempt fails, nothing is Ok.
    let mock = Mock::start(|_, seen| {
        let mut h = vec![("etag", "\"00000000000000000000000000000000\"".to_string())];
        h.push(("x-amz-checksum-crc64nvme", xml::crc64_to_base64(crc64nvme(&seen.body) ^ 1)));
        reply(200, &h, "")
    })
    .await;
    let nvme = client(&mock, IntegrityMode::Crc64Nvme);
    let err = nvme.put_object(BUCKET, "k", bytes(b"payload"), &ObjectOptions::default()).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert_eq!(mock.seen().len(), 3, "retried, as a corrupted transfer would be, then given up");
    let err = nvme.upload_part(BUCKET, "k", "up", 1, bytes(b"payload")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");

    // In Content-MD5 mode, an ETag that is not the body's MD5 is the same failure.
    let md5 = client(&mock, IntegrityMode::ContentMd5);
    let err = md5.put_object(BUCKET, "k", bytes(b"payload"), &ObjectOptions::default()).await.unwrap_err();
    assert!(matches!(err.root(), RemoteError::DigestMismatch(_)), "{err}");
    assert!(err.to_string().contains("ETag (MD5)"), "{err}");
}

#[tokio::test]
async fn a_missing_confirmation_is_not_success_either() {
    // A server that ignores checksums (no echo) cannot confirm anything in CRC-64/NVME mode.
    let mock = Mock::start(|_, seen| {
        reply(200, &[("etag", format!("\"{}\"", hex::encode(md5::Md5::digest(&seen.body))))], "")
    })
    .await;
    let c = client(&mock, IntegrityMode::Crc64Nvme);
    let err = c.put_object(BUCKET, "k", bytes(b"payload"), &ObjectOptions::default()).await.unwrap_err();
    assert!(matches!(err, RemoteError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("x-amz-checksum-crc64nvme"), "{err}");
}

fn parts() -> Vec<CompletedPart> {
    let a = b"first part bytes";
    let b = b"second";
    vec![
        CompletedPart {
            part_number: 1,
            etag: format!("\"{}\"", hex::encode(md5::Md5::digest(a))),
            size: a.len() as u64,
            crc64nvme: crc64nvme(a),
            ..Default::default()
        },
        CompletedPart {
            part_number: 2,
            etag: format!("\"{}\"", hex::encode(md5::Md5::digest(b))),
            size: b.len() as u64,
            crc64nvme: crc64nvme(b),
            ..Default::default()
        },
    ]
}

fn complete_answer(etag: &str, crc: Option<u64>) -> Response<Full<Bytes>> {
    let checksum = crc
        .map(|c| {
            format!(
                "<ChecksumCRC64NVME>{}</ChecksumCRC64NVME><ChecksumType>FULL_OBJECT</ChecksumType>",
                xml::crc64_to_base64(c)
            )
        })
        .unwrap_or_default();
    reply(
        200,
        &[("content-type", "application/xml".into())],
        format!(
            "<CompleteMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key><ETag>{etag}</ETag>{checksum}</CompleteMultipartUploadResult>"
        ),
    )
}

#[tokio::test]
async fn complete_verifies_the_whole_object_in_both_modes() {
    let whole = crc64nvme(b"first part bytessecond");
    // CRC-64/NVME: the expected whole-object CRC goes to the server, and its answer must match.
    let mock = Mock::start(move |_, _| complete_answer("\"x-2\"", Some(whole))).await;
    let c = client(&mock, IntegrityMode::Crc64Nvme);
    let done = c.complete_multipart(BUCKET, "k", "up", &parts(), &CompleteOptions::default()).await.unwrap();
    assert_eq!(done.crc64nvme, Some(whole));
    let s = &mock.seen()[0];
    assert_eq!(s.header("x-amz-checksum-crc64nvme").map(str::to_string), Some(xml::crc64_to_base64(whole)));
    assert_eq!(s.header("x-amz-checksum-type"), Some("FULL_OBJECT"));
    assert!(s.header("content-md5").is_some());
    let body = String::from_utf8_lossy(&s.body).into_owned();
    assert!(
        body.contains(&format!(
            "<ChecksumCRC64NVME>{}</ChecksumCRC64NVME>",
            xml::crc64_to_base64(crc64nvme(b"second"))
        ))
    );

    let wrong = Mock::start(move |_, _| complete_answer("\"x-2\"", Some(whole ^ 1))).await;
    let err = client(&wrong, IntegrityMode::Crc64Nvme)
        .complete_multipart(BUCKET, "k", "up", &parts(), &CompleteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.root(), RemoteError::ChecksumMismatch { .. }), "{err}");

    // Content-MD5: the multipart ETag must be MD5 of the part MD5s.
    let mut concat = md5::Md5::digest(b"first part bytes").to_vec();
    concat.extend_from_slice(&md5::Md5::digest(b"second"));
    let good = format!("\"{}-2\"", hex::encode(md5::Md5::digest(&concat)));
    let good2 = good.clone();
    let mock = Mock::start(move |_, _| complete_answer(&good2, None)).await;
    let done = client(&mock, IntegrityMode::ContentMd5)
        .complete_multipart(BUCKET, "k", "up", &parts(), &CompleteOptions::default())
        .await
        .unwrap();
    assert_eq!(done.etag, good);
    assert!(!String::from_utf8_lossy(&mock.seen()[0].body).contains("Checksum"));
    let mock = Mock::start(|_, _| complete_answer("\"0123456789abcdef0123456789abcdef-2\"", None)).await;
    let err = client(&mock, IntegrityMode::ContentMd5)
        .complete_multipart(BUCKET, "k", "up", &parts(), &CompleteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.root(), RemoteError::DigestMismatch(_)), "{err}");
}

#[tokio::test]
async fn an_error_inside_a_200_is_an_error() {
    // S3 may answer Complete with 200 and then an <Error> body; a retryable code is retried.
    let mock = Mock::start(|n, _| {
        if n == 0 {
            reply(
                200,
                &[("content-type", "application/xml".into())],
                "<Error><Code>InternalError</Code><Message>later</Message></Error>",
            )
        } else {
            complete_answer("\"x-2\"", Some(crc64nvme(b"first part bytessecond")))
        }
    })
    .await;
    let c = client(&mock, IntegrityMode::Crc64Nvme);
    c.complete_multipart(BUCKET, "k", "up", &parts(), &CompleteOptions::default()).await.unwrap();
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn a_file_changed_between_prepass_and_send_is_a_local_error() {
    // 32 MiB: more than the body channel and the socket buffers hold, so the handler runs (and the file is
    // changed near its end) before the client has read those bytes.
    const LEN: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![1u8; LEN]).unwrap();
    let target = path.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let target = target.clone();
            async move {
                // Headers are in; the body is still on its way.
                let mut f = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start((LEN - 1000) as u64)).unwrap();
                f.write_all(b"changed").unwrap();
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                Ok::<_, Infallible>(upload_ok(&Seen {
                    method: Method::PUT,
                    path: String::new(),
                    query: String::new(),
                    headers: {
                        let mut h = HeaderMap::new();
                        h.insert("x-amz-checksum-crc64nvme", "x".parse().unwrap());
                        h
                    },
                    body,
                }))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    let mut cfg = S3Config::new(format!("http://{addr}"));
    cfg.credentials = Some(Credentials::new(AK, SECRET));
    cfg.integrity = IntegrityMode::Crc64Nvme;
    let c = S3Client::new(cfg).unwrap();
    let body =
        Body::File(FileRange { file: Arc::new(std::fs::File::open(&path).unwrap()), offset: 0, len: LEN as u64 });
    let err = c.upload_part(BUCKET, "k", "up", 1, body).await.unwrap_err();
    assert!(matches!(err, RemoteError::LocalRead { .. }), "{err}");
    assert!(err.to_string().contains("changed while it was being uploaded"), "{err}");
    server.abort();
}

#[tokio::test]
async fn auto_mode_falls_back_to_md5_when_checksums_are_ignored() {
    // A server that accepts anything and confirms no checksum.
    let mock = Mock::start(|_, seen| match (&seen.method, seen.query.as_str()) {
        (&Method::POST, "uploads=") | (&Method::POST, "uploads") => reply(
            200,
            &[("content-type", "application/xml".into())],
            "<InitiateMultipartUploadResult><UploadId>up1</UploadId></InitiateMultipartUploadResult>",
        ),
        (&Method::PUT, _) => reply(200, &[("etag", format!("\"{}\"", hex::encode(md5::Md5::digest(&seen.body))))], ""),
        _ => reply(204, &[], ""),
    })
    .await;
    let c = client(&mock, IntegrityMode::Auto);
    assert_eq!(c.integrity(), None);
    assert!(!c.capabilities().object_crc64nvme);
    c.put_object(BUCKET, "k", bytes(b"data"), &ObjectOptions::default()).await.unwrap();
    assert_eq!(c.integrity(), Some(Integrity::ContentMd5));
    let seen = mock.seen();
    // The probe: a wrong checksum accepted, so the probe object is deleted and MD5 chosen.
    assert_eq!(seen[0].method, Method::PUT);
    assert!(seen[0].path.starts_with("/bkt/.ossmirror-probe/"));
    assert_eq!(seen[1].method, Method::DELETE);
    assert_eq!(seen[1].path, seen[0].path);
    let put = seen.last().unwrap();
    assert_eq!(put.path, "/bkt/k");
    assert!(put.header("content-md5").is_some() && put.header("x-amz-checksum-crc64nvme").is_none());
    // Settled once: later uploads do not probe again.
    c.put_object(BUCKET, "k2", bytes(b"data"), &ObjectOptions::default()).await.unwrap();
    assert_eq!(mock.seen().len(), seen.len() + 1);
}

#[tokio::test]
async fn echoed_secrets_never_reach_errors() {
    let mock = Mock::start(|_, seen| {
        let echo = format!("{} {}", seen.header("authorization").unwrap_or(""), SECRET);
        s3_error(400, "InvalidRequest", &echo)
    })
    .await;
    let c = client(&mock, IntegrityMode::Crc64Nvme);
    let err = c.put_object(BUCKET, "k", bytes(b"x"), &ObjectOptions::default()).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "{text}");
    let sig = mock.seen()[0].header("authorization").unwrap().rsplit("Signature=").next().unwrap().to_string();
    assert!(!text.contains(&sig), "{text}");
    assert!(text.contains("S3REQUESTID") && text.contains("S3HOSTID"), "{text}");
    assert!(!format!("{c:?}").contains(SECRET));
}
