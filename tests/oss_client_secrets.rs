//! Secrets never reach logs or errors, even when the server echoes the request back.
//!
//! This test lives in its own binary on purpose: it captures `tracing` output, and tracing caches per
//! callsite whether anyone listens. With other tests hitting the same callsites on other threads, a
//! thread-scoped subscriber can miss events; alone in a process, with a global subscriber, it cannot.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use ossmirror::remote::oss::{OssClient, OssConfig, SignatureVersion};
use ossmirror::remote::retry::RetryPolicy;
use ossmirror::remote::{Body, Credentials, ListObjectsRequest, ObjectOptions, Remote};

const AK: &str = "TESTAKID";
const SECRET: &str = "test-secret-value-0123456789";
const TOKEN: &str = "sts-token-value-abcdef";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn answer(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-oss-request-id", "5C3D9175B6FC201293AD4890")
        .header("date", httpdate::fmt_http_date(SystemTime::now()))
        .header("content-type", if body.starts_with("<html") { "text/html" } else { "application/xml" })
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A hostile server: answers every request with an error that echoes the request's headers (Authorization
/// and STS token included) or the secrets themselves. Returns the address and every Authorization seen.
async fn hostile_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let log = log.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        let echo: String =
                            parts.headers.iter().map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or(""))).collect();
                        if let Some(a) = parts.headers.get("authorization") {
                            log.lock().unwrap().push(a.to_str().unwrap().to_string());
                        }
                        let reply = match n % 3 {
                            0 => answer(400, format!("<html><pre>{echo}</pre></html>")),
                            1 => answer(503, "<Error><Code>ServiceUnavailable</Code></Error>".into()),
                            _ => answer(
                                403,
                                format!(
                                    "<Error><Code>SignatureDoesNotMatch</Code><Message>{SECRET} {TOKEN} {echo}</Message></Error>"
                                ),
                            ),
                        };
                        Ok::<_, Infallible>(reply)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();

    let (addr, authorizations) = hostile_server().await;
    let mut errors = Vec::new();
    for signature in [SignatureVersion::V1, SignatureVersion::V4] {
        let mut cfg = OssConfig::new(format!("http://{addr}"));
        cfg.signature = signature;
        cfg.region = Some("cn-hangzhou".into());
        cfg.credentials = Some(Credentials::new(AK, SECRET).with_session_token(TOKEN));
        cfg.retry = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            deadline: Duration::from_secs(60),
        };
        let c = OssClient::new(cfg).unwrap();
        let body = Body::Bytes(Bytes::from_static(b"x"));
        errors.push(c.put_object("bkt", "k", body, &ObjectOptions::default()).await.unwrap_err().to_string());
        errors.push(c.head_object("bkt", "k").await.unwrap_err().to_string());
        errors.push(c.list_objects("bkt", &ListObjectsRequest::default()).await.unwrap_err().to_string());
        errors.push(c.initiate_multipart("bkt", "k", &ObjectOptions::default()).await.unwrap_err().to_string());
        errors.push(format!("{c:?}"));
        errors.push(c.presign_url("GET", "bkt", "k", Duration::from_secs(60)).map(|_| String::new()).unwrap());
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The logs carry what an operator needs...
    for field in ["op=\"PutObject\"", "bucket=\"bkt\"", "key=\"k\"", "attempt=2", "status=503", "request_id=\"5C3D"] {
        assert!(logs.contains(field), "{field} missing from the logs:\n{logs}");
    }
    // ...and the hostile echo did reach the errors, so the redaction below is actually exercised.
    assert!(errors.iter().any(|e| e.contains("x-oss-security-token: <redacted>")), "{errors:#?}");

    let signatures: Vec<String> = authorizations
        .lock()
        .unwrap()
        .iter()
        .map(|a| match a.split_once("Signature=") {
            Some((_, v4)) => v4.to_string(),
            None => a.rsplit_once(':').unwrap().1.to_string(),
        })
        .collect();
    assert!(signatures.len() >= 8, "{signatures:?}");
    for text in errors.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        assert!(!text.contains(TOKEN), "token leaked: {text}");
        for sig in &signatures {
            assert!(!text.contains(sig.as_str()), "signature {sig} leaked: {text}");
        }
    }
}
