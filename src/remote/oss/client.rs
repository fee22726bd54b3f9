//! [`OssClient`]: the OSS REST API behind the [`Remote`] trait.
//!
//! Every operation is a `Call` (method, bucket, key, decoded query, headers, body) plus a parse function,
//! run by one retry loop (`OssClient::execute`). Each attempt is built from scratch: signed at the current
//! time (plus the clock offset learned from a `RequestTimeTooSkewed` answer), with a fresh body stream whose
//! digest covers exactly the bytes of that attempt. The parse function runs inside the loop, so an answer
//! that is wrong in content (a CRC-64 that does not match what we sent, an HTML page where XML belongs) is
//! retried like a 503, and a local read error (the file changed) stops at once.
//!
//! Timeouts are about *progress*, not totals: a 5 GB part on a slow link may take an hour, and that is fine
//! as long as the server keeps taking bytes. A request fails when the server stops reading the body, or does
//! not answer, or stops sending the answer, for `read_timeout` (reqwest's own read timeout would count from
//! the start of the request, so it is not used).
//!
//! Nothing here logs or returns credentials: the signer writes the `Authorization` header and nothing reads
//! it back; server text that ends up in errors is scrubbed of the secret, the STS token and the
//! attempt's signature.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use md5::{Digest as _, Md5};
use tracing::Instrument as _;

use crate::credentials::{CredentialsProvider, StaticProvider, refresh_after_refusal};
use crate::remote::body::DigestSlot;
use crate::remote::names::{validate_bucket, validate_key};
use crate::remote::options::{CallbackOutcome, Encryption, UploadCallback, tagging_header};
use crate::remote::oss::endpoint::{ENDPOINT_FIX, Endpoint, RequestUrl};
use crate::remote::oss::response::{self, Redactor, Reply};
use crate::remote::oss::sign::{SignatureVersion, Signer, uri_encode};
use crate::remote::oss::xml;
use crate::remote::retry::RetryPolicy;
use crate::remote::throttle::Throttle;
use crate::remote::transport::{Clock, Progress, Transport, with_retries};
use crate::remote::{
    Body, ByteRange, Capabilities, CompleteOptions, CompleteResult, CompletedPart, CopyOptions, CopyPartResult,
    CopyResult, Credentials, DeleteFailure, Dialect, GetResult, ListObjectsPage, ListObjectsRequest, ListPartsPage,
    ListUploadsPage, ListUploadsRequest, ObjectInfo, ObjectOptions, PartResult, PutResult, Remote, RemoteError,
};
use crate::timefmt;

/// Largest single PutObject / UploadPart body OSS accepts (5 GiB).
pub const MAX_SINGLE_UPLOAD: u64 = 5 * 1024 * 1024 * 1024;
/// Keys per DeleteMultipleObjects call.
pub const MAX_DELETE_KEYS: usize = 1000;
/// Longest V4 presigned URL lifetime (7 days).
pub const MAX_PRESIGN_V4: Duration = Duration::from_secs(604_800);
/// User metadata limit (names plus values).
const MAX_METADATA_BYTES: usize = 8 * 1024;
/// How much of an error body or an unexpected 2xx body we read: enough for any `<Error>` document.
const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// A listing of 1000 long keys is a few MB; anything far beyond is not an OSS answer.
const XML_BODY_LIMIT: usize = 64 * 1024 * 1024;

const ACLS: &[&str] = &["default", "private", "public-read", "public-read-write"];
const STORAGE_CLASSES: &[&str] = &["Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive"];

/// How to reach one OSS endpoint.
#[derive(Debug, Clone)]
pub struct OssConfig {
    /// `http://127.0.0.1:9000`, `https://oss-cn-hangzhou.aliyuncs.com`, or a host name (https).
    pub endpoint: String,
    /// Region id for V4 (`cn-hangzhou`); guessed from `oss-<region>[-internal].aliyuncs.com` when absent.
    pub region: Option<String>,
    pub signature: SignatureVersion,
    /// `None` sends anonymous (unsigned) requests, for public buckets.
    pub credentials: Option<Credentials>,
    /// When set, replaces `credentials`: read at every signing, so refreshed temporary credentials are used
    /// at once, and asked to refresh when the server refuses them.
    pub credentials_provider: Option<Arc<dyn CredentialsProvider>>,
    /// Force path-style URLs (`host/bucket/key`); IP and `localhost` endpoints always use them.
    pub path_style: bool,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// The longest the server may go without taking request bytes or sending answer bytes.
    pub read_timeout: Duration,
    /// Whether this server is known to accept a Complete that leaves out uploaded parts (unconfirmed on
    /// OSS, so off by default; see OSS-PROTOCOL.md §9.4).
    pub complete_with_part_subset: bool,
    /// `--bwlimit`: paces every request body; share one across the clients of a process.
    pub throttle: Option<Arc<Throttle>>,
    /// `--traffic-limit`: `x-oss-traffic-limit` (bit/s) on every PutObject, UploadPart and GetObject, so
    /// the server paces them (checked against OSS's range by [`crate::remote::options::traffic_limit_bits`]).
    pub traffic_limit: Option<u64>,
}

impl OssConfig {
    /// V4, no credentials, default retries, 10 s connect and 60 s read timeouts.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OssConfig {
            endpoint: endpoint.into(),
            region: None,
            signature: SignatureVersion::V4,
            credentials: None,
            credentials_provider: None,
            path_style: false,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            complete_with_part_subset: false,
            throttle: None,
            traffic_limit: None,
        }
    }
}

/// An OSS client. Cheap to clone (shares the connection pool and the learned clock offset).
#[derive(Clone)]
pub struct OssClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    endpoint: Endpoint,
    path_style: bool,
    signer: Signer,
    credentials: Option<Arc<dyn CredentialsProvider>>,
    retry: RetryPolicy,
    capabilities: Capabilities,
    clock: Clock,
    traffic_limit: Option<HeaderValue>,
}

impl std::fmt::Debug for OssClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("OssClient")
            .field("endpoint", &i.endpoint.display())
            .field("signature", &i.signer.version)
            .field("region", &i.signer.region)
            .field("path_style", &i.path_style)
            .field("access_key_id", &i.credentials.as_ref().map(|c| c.current().access_key_id.clone()))
            .finish_non_exhaustive()
    }
}

/// How much of a 2xx answer's body an operation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadBody {
    /// No body expected; read a little (so the connection can be reused) and ignore it.
    Ignore,
    /// An XML document.
    Xml,
    /// Object data (GetObject), up to `usize::MAX`.
    Object,
}

/// One logical request; every attempt is built from it afresh.
struct Call<'a> {
    op: &'static str,
    method: Method,
    bucket: &'a str,
    key: Option<&'a str>,
    /// Decoded names and values; an empty value is sent as a bare name.
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Body,
    /// Verify the upload: the parse function gets the digest of the bytes sent.
    verify_body: bool,
    read: ReadBody,
    upload_id: Option<&'a str>,
    part: Option<u32>,
}

impl<'a> Call<'a> {
    fn new(op: &'static str, method: Method, bucket: &'a str, key: Option<&'a str>) -> Self {
        Call {
            op,
            method,
            bucket,
            key,
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: Body::Empty,
            verify_body: false,
            read: ReadBody::Ignore,
            upload_id: None,
            part: None,
        }
    }

    fn query(mut self, name: &str, value: impl Into<String>) -> Self {
        self.query.push((name.to_string(), value.into()));
        self
    }

    /// Add a parameter only when it has a value (OSS treats an empty value as absent anyway).
    fn query_opt(self, name: &str, value: Option<impl ToString>) -> Self {
        match value.map(|v| v.to_string()).filter(|v| !v.is_empty()) {
            Some(v) => self.query(name, v),
            None => self,
        }
    }

    fn upload(mut self, upload_id: &'a str, part: Option<u32>) -> Self {
        self.upload_id = Some(upload_id);
        self.part = part;
        self
    }
}

pub(crate) fn header_value(what: &str, value: &str) -> Result<HeaderValue, RemoteError> {
    HeaderValue::from_str(value).map_err(|_| {
        RemoteError::invalid_input(
            format!("{what} {value:?} cannot be sent as an HTTP header"),
            "use printable ASCII only (no line breaks or non-ASCII characters)",
        )
    })
}

pub(crate) fn content_md5(body: &[u8]) -> HeaderValue {
    let b64 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
    // Base64 is always a valid header value.
    HeaderValue::from_str(&b64).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn xml_body(call: Call<'_>, body: String) -> Call<'_> {
    let mut call = call;
    call.headers.insert("content-md5", content_md5(body.as_bytes()));
    call.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    call.body = Body::Bytes(Bytes::from(body));
    call
}

/// Content headers and user metadata of a new object, the same in both dialects but for the metadata
/// header prefix (`x-oss-meta-` / `x-amz-meta-`) and the size limit of the service (`service` names it).
pub(crate) fn content_and_metadata_headers(
    options: &ObjectOptions,
    meta_prefix: &str,
    max_metadata_bytes: usize,
    service: &str,
) -> Result<HeaderMap, RemoteError> {
    let mut h = HeaderMap::new();
    let standard = [
        (http::header::CONTENT_TYPE, "content type", &options.content_type),
        (http::header::CACHE_CONTROL, "Cache-Control", &options.cache_control),
        (http::header::CONTENT_DISPOSITION, "Content-Disposition", &options.content_disposition),
        (http::header::CONTENT_ENCODING, "Content-Encoding", &options.content_encoding),
    ];
    for (name, what, value) in standard {
        if let Some(v) = value {
            h.insert(name, header_value(what, v)?);
        }
    }
    let mut total = 0;
    for (name, value) in &options.metadata {
        let lower = name.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(RemoteError::invalid_input(
                format!("invalid metadata name {name:?}"),
                "metadata names may contain only letters, digits and '-'",
            ));
        }
        // Metadata headers are signed, and signatures normalize spaces; a server would store them otherwise.
        if value.trim() != value || value.contains("  ") {
            return Err(RemoteError::invalid_input(
                format!("metadata {name:?} has leading, trailing or repeated spaces"),
                "trim the value",
            ));
        }
        let header = HeaderName::from_bytes(format!("{meta_prefix}{lower}").as_bytes()).map_err(|_| {
            RemoteError::invalid_input(format!("invalid metadata name {name:?}"), "use letters and '-'")
        })?;
        if h.contains_key(&header) {
            return Err(RemoteError::invalid_input(
                format!("metadata {name:?} given twice (names are case-insensitive)"),
                "give each metadata name once",
            ));
        }
        total += lower.len() + value.len();
        h.insert(header, header_value(&format!("metadata {name:?}"), value)?);
    }
    if total > max_metadata_bytes {
        return Err(RemoteError::invalid_input(
            format!("user metadata is {total} bytes"),
            format!("{service} allows at most {} KiB of metadata names and values in total", max_metadata_bytes / 1024),
        ));
    }
    Ok(h)
}

/// The headers that shape a new object (PutObject, InitiateMultipartUpload).
fn object_headers(options: &ObjectOptions, include_acl: bool) -> Result<HeaderMap, RemoteError> {
    let mut h = content_and_metadata_headers(options, "x-oss-meta-", MAX_METADATA_BYTES, "OSS")?;
    if let Some(acl) = options.acl.as_deref().filter(|_| include_acl) {
        h.insert("x-oss-object-acl", checked_acl(acl)?);
    }
    if let Some(class) = &options.storage_class {
        if !STORAGE_CLASSES.contains(&class.as_str()) {
            return Err(RemoteError::invalid_input(
                format!("unknown storage class {class:?}"),
                format!("use one of {}", STORAGE_CLASSES.join(", ")),
            ));
        }
        h.insert("x-oss-storage-class", header_value("storage class", class)?);
    }
    if options.forbid_overwrite {
        h.insert("x-oss-forbid-overwrite", HeaderValue::from_static("true"));
    }
    match &options.encryption {
        None => {}
        Some(Encryption::Aes256) => {
            h.insert("x-oss-server-side-encryption", HeaderValue::from_static("AES256"));
        }
        Some(Encryption::Sm4) => {
            h.insert("x-oss-server-side-encryption", HeaderValue::from_static("SM4"));
        }
        Some(Encryption::Kms { key_id }) => {
            h.insert("x-oss-server-side-encryption", HeaderValue::from_static("KMS"));
            if let Some(id) = key_id {
                h.insert("x-oss-server-side-encryption-key-id", header_value("KMS key id", id)?);
            }
        }
    }
    if let Some(tagging) = tagging_header(&options.tags)? {
        h.insert("x-oss-tagging", header_value("tags", &tagging)?);
    }
    Ok(h)
}

/// `x-oss-callback` (and `x-oss-callback-var`) for an upload that asks for a callback.
fn insert_callback(headers: &mut HeaderMap, callback: Option<&UploadCallback>) -> Result<(), RemoteError> {
    if let Some(cb) = callback {
        let (spec, vars) = cb.header_values();
        headers.insert("x-oss-callback", header_value("callback", &spec)?);
        if let Some(vars) = vars {
            headers.insert("x-oss-callback-var", header_value("callback variables", &vars)?);
        }
    }
    Ok(())
}

/// With a callback, a 2xx upload answer's body is the callback server's answer (200) or OSS's
/// CallbackFailed error (203); the object is stored either way.
fn callback_outcome(reply: &Reply, asked: bool) -> Option<CallbackOutcome> {
    if !asked {
        return None;
    }
    if reply.status.as_u16() == 203 {
        let message = crate::remote::xml::parse(&reply.body)
            .ok()
            .and_then(|e| e.text_of("Message").map(str::to_string))
            .unwrap_or_else(|| reply.redactor.snippet(&reply.body));
        return Some(CallbackOutcome::Failed { message, request_id: reply.request_id.clone() });
    }
    Some(CallbackOutcome::Answered(String::from_utf8_lossy(&reply.body).into_owned()))
}

fn checked_acl(acl: &str) -> Result<HeaderValue, RemoteError> {
    if !ACLS.contains(&acl) {
        return Err(RemoteError::invalid_input(
            format!("unknown ACL {acl:?}"),
            format!("use one of {}", ACLS.join(", ")),
        ));
    }
    header_value("ACL", acl)
}

pub(crate) fn check_key(key: &str) -> Result<(), RemoteError> {
    validate_key(key)?;
    if key == "." || key == ".." {
        // URL normalization resolves these segments away: the request would address something else.
        return Err(RemoteError::invalid_input(
            format!("object key {key:?} cannot be addressed in a URL"),
            "rename the file: keys that are exactly \".\" or \"..\" are not supported",
        ));
    }
    Ok(())
}

pub(crate) fn check_upload(upload_id: &str, part_number: Option<u32>) -> Result<(), RemoteError> {
    if upload_id.trim().is_empty() {
        return Err(RemoteError::invalid_input("empty upload id", "pass the id InitiateMultipartUpload returned"));
    }
    if let Some(n) = part_number {
        if !(1..=10_000).contains(&n) {
            return Err(RemoteError::invalid_input(format!("part number {n} is out of range"), "use 1 to 10000"));
        }
    }
    Ok(())
}

pub(crate) fn check_single_upload_size(op: &str, len: u64) -> Result<(), RemoteError> {
    if len > MAX_SINGLE_UPLOAD {
        return Err(RemoteError::invalid_input(
            format!("{op} body of {len} bytes is over the 5 GiB limit"),
            "use a multipart upload with smaller parts",
        ));
    }
    Ok(())
}

/// `x-oss-copy-source: /bucket/key`, the key path-encoded (servers form-decode it; we never send a raw `+`).
fn copy_source(bucket: &str, key: &str) -> Result<HeaderValue, RemoteError> {
    header_value("copy source", &format!("/{bucket}/{}", uri_encode(key, true)))
}

// ---------------------------------------------------------------------------------------------------------

impl OssClient {
    /// Validate the configuration and build the client (no request is sent).
    pub fn new(config: OssConfig) -> Result<Self, RemoteError> {
        let endpoint = Endpoint::parse(&config.endpoint)?;
        let region = match config.signature {
            SignatureVersion::V1 => config.region.clone().unwrap_or_default(),
            SignatureVersion::V4 => resolve_region(&endpoint, config.region.as_deref())?,
        };
        if config.retry.max_attempts == 0 {
            return Err(RemoteError::invalid_input("retry policy allows 0 attempts", "allow at least 1 attempt"));
        }
        if let Some(c) = &config.credentials {
            if c.access_key_id.trim().is_empty() || c.access_key_secret.expose().is_empty() {
                return Err(RemoteError::invalid_input(
                    "empty access key id or secret",
                    "set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET (or the matching flags)",
                ));
            }
            if header_value("access key id", &c.access_key_id).is_err()
                || c.session_token.as_ref().is_some_and(|t| HeaderValue::from_str(t.expose()).is_err())
            {
                return Err(RemoteError::invalid_input(
                    "the access key id or session token contains characters that cannot be sent in a header",
                    "check OSS_ACCESS_KEY_ID and OSS_SESSION_TOKEN for stray spaces or line breaks",
                ));
            }
        }
        let path_style = config.path_style || endpoint.needs_path_style();
        let redactor = Redactor::new(config.credentials.iter().flat_map(|c| {
            let token = c.session_token.as_ref().map(|t| t.expose().to_string());
            std::iter::once(c.access_key_secret.expose().to_string()).chain(token)
        }));
        let transport = Transport::new(
            &endpoint,
            config.connect_timeout,
            config.read_timeout,
            ENDPOINT_FIX,
            redactor,
            config.throttle.clone(),
        )?;
        Ok(OssClient {
            inner: Arc::new(Inner {
                transport,
                endpoint,
                path_style,
                signer: Signer::new(config.signature, region),
                credentials: config
                    .credentials_provider
                    .or_else(|| config.credentials.map(|c| StaticProvider::shared(c, "configured access key"))),
                retry: config.retry,
                capabilities: Capabilities {
                    object_crc64: true,
                    object_crc64nvme: false,
                    complete_with_part_subset: config.complete_with_part_subset,
                },
                clock: Clock::default(),
                traffic_limit: config.traffic_limit.map(HeaderValue::from),
            }),
        })
    }

    /// The V4 region in use (empty for V1 without a region).
    pub fn region(&self) -> &str {
        &self.inner.signer.region
    }

    /// Server time minus local time in milliseconds (positive: the server is ahead), as learned from
    /// `RequestTimeTooSkewed` answers; 0 until then.
    pub fn clock_offset_ms(&self) -> i64 {
        self.inner.clock.offset_ms()
    }

    /// Set the offset from the server's clock by hand, e.g. from a known time source (tests use it too).
    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.inner.clock.set_offset_ms(offset_ms);
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// A presigned URL for `method` on `bucket/key`, valid for `expires` from now (server time, as far as we
    /// know it). The user of the URL must send no `Content-Type`/`Content-MD5`/`x-oss-*` headers, since none
    /// were signed.
    pub fn presign_url(&self, method: &str, bucket: &str, key: &str, expires: Duration) -> Result<String, RemoteError> {
        validate_bucket(bucket)?;
        check_key(key)?;
        let credentials = self.inner.credentials.as_ref().map(|p| p.current()).ok_or_else(|| {
            RemoteError::invalid_input(
                "presigning needs credentials",
                "set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET (or the matching flags)",
            )
        })?;
        let method = method.trim().to_ascii_uppercase();
        if !matches!(method.as_str(), "GET" | "PUT" | "HEAD" | "DELETE" | "POST") {
            return Err(RemoteError::invalid_input(
                format!("cannot presign method {method:?}"),
                "use GET, PUT, HEAD, DELETE or POST",
            ));
        }
        if expires.as_secs() == 0 {
            return Err(RemoteError::invalid_input(
                "a presigned URL lifetime under one second",
                "give a lifetime of at least 1s",
            ));
        }
        if self.inner.signer.version == SignatureVersion::V4 && expires > MAX_PRESIGN_V4 {
            return Err(RemoteError::invalid_input(
                format!("a V4 presigned URL cannot live {}s", expires.as_secs()),
                "OSS limits V4 presigned URLs to 7 days (604800s)",
            ));
        }
        let mut query = Vec::new();
        let headers = HeaderMap::new();
        self.inner.signer.presign(
            &credentials,
            &method,
            Some(bucket),
            Some(key),
            &mut query,
            &headers,
            &[],
            self.now(),
            expires,
        );
        // The V4 signature is not part of the canonical query; put it last, as the SDKs do.
        let signature = query.iter().position(|(n, _)| n == "x-oss-signature").map(|i| query.remove(i));
        let extra = signature.map(|(n, v)| format!("{n}={}", uri_encode(&v, false)));
        let url = RequestUrl::build(
            &self.inner.endpoint,
            self.inner.path_style,
            bucket,
            Some(key),
            &query,
            extra.as_deref(),
        )?;
        Ok(url.url.to_string())
    }

    /// Run a call with retries. `parse` turns a 2xx answer into the result; its errors are retried by the
    /// same rules as the server's.
    async fn execute<T>(
        &self,
        mut call: Call<'_>,
        parse: impl Fn(&Reply) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        if let Some(limit) = &self.inner.traffic_limit
            && matches!(call.op, "PutObject" | "UploadPart" | "GetObject")
        {
            call.headers.insert("x-oss-traffic-limit", limit.clone());
        }
        validate_bucket(call.bucket)?;
        if let Some(key) = call.key {
            check_key(key)?;
        }
        let url =
            RequestUrl::build(&self.inner.endpoint, self.inner.path_style, call.bucket, call.key, &call.query, None)?;
        let span = tracing::debug_span!(
            "oss",
            op = call.op,
            bucket = call.bucket,
            key = tracing::field::Empty,
            upload_id = tracing::field::Empty,
            part = tracing::field::Empty,
        );
        if let Some(k) = call.key {
            span.record("key", k);
        }
        if let Some(u) = call.upload_id {
            span.record("upload_id", u);
        }
        if let Some(p) = call.part {
            span.record("part", p);
        }
        self.retry_loop(&call, &url, parse).instrument(span).await
    }

    async fn retry_loop<T>(
        &self,
        call: &Call<'_>,
        url: &RequestUrl,
        parse: impl Fn(&Reply) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let run = || {
            with_retries(call.op, &self.inner.retry, &self.inner.clock, |attempt| {
                let parse = &parse;
                async move { self.attempt(call, url, attempt).await.and_then(|reply| parse(&reply)) }
            })
        };
        match run().await {
            // Refused temporary credentials: fetch new ones and try once more.
            Err(e) if refresh_after_refusal(self.inner.credentials.as_ref(), e.code()).await => run().await,
            outcome => outcome,
        }
    }

    /// One attempt: sign now, stream the body, read the answer, classify non-2xx answers.
    async fn attempt(&self, call: &Call<'_>, url: &RequestUrl, attempt: u32) -> Result<Reply, RemoteError> {
        let op = call.op;
        self.inner.transport.pace_in_memory(&call.body).await;
        let mut headers = call.headers.clone();
        let now = self.now();
        let credentials = self.inner.credentials.as_ref().map(|p| p.current());
        match &credentials {
            Some(creds) => self.inner.signer.sign_headers(
                creds,
                call.method.as_str(),
                Some(call.bucket),
                call.key,
                &call.query,
                &mut headers,
                now,
            ),
            None => {
                headers.insert(http::header::DATE, header_value("date", &timefmt::rfc1123(now))?);
            }
        }

        // This attempt's signature is not a secret for long, but it is a credential while it lasts.
        let signature = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| match a.split_once("Signature=") {
                Some((_, v4)) => Some(v4),
                None => a.rsplit_once(':').map(|(_, v1)| v1),
            })
            .unwrap_or("");
        let mut redactor = self.inner.transport.redactor.with(signature);
        for secret in credentials.iter().flat_map(|c| std::iter::once(&c.access_key_secret).chain(&c.session_token)) {
            redactor = redactor.with(secret.expose());
        }

        let mut request = self.inner.transport.http.request(call.method.clone(), url.url.clone());
        let mut slot: Option<DigestSlot> = None;
        let progress;
        if matches!(call.method, Method::PUT | Method::POST) {
            // An explicit length: OSS wants Content-Length, and hyper then refuses to send more or fewer bytes.
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(call.body.len()));
            let prepared = self.inner.transport.prepare_body(&call.body);
            request = request.body(prepared.body);
            slot = prepared.slot;
            progress = prepared.progress;
        } else {
            progress = Progress::new(true);
        }
        let request = request.headers(headers);

        let answer = self.inner.transport.send(request.send(), &progress).await;
        // A local read failure explains whatever the wire did next: report it, never retry it.
        let sent = match slot.as_ref().map(DigestSlot::take) {
            Some(Some(Err(source))) => return Err(RemoteError::LocalRead { op, source }),
            Some(Some(Ok(digest))) => Some(digest),
            Some(None) => None,
            None if call.verify_body => call.body.digest_if_in_memory(),
            None => None,
        };
        let response = answer.map_err(|e| self.inner.transport.send_error(op, e))?;

        let status = response.status();
        let resp_headers = response.headers().clone();
        let request_id = response::request_id(&resp_headers);
        let limit = match (status.is_success(), call.read) {
            (true, ReadBody::Object) => usize::MAX,
            (true, ReadBody::Xml) => XML_BODY_LIMIT,
            _ => SMALL_BODY_LIMIT,
        };
        let strict = status.is_success() && call.read != ReadBody::Ignore;
        let body = self.inner.transport.read_body(op, response, limit, strict, request_id.clone()).await;
        tracing::debug!(attempt, status = status.as_u16(), request_id = request_id.as_deref().unwrap_or(""), "answer");
        let body = body?;

        if !status.is_success() {
            let is_head = call.method == Method::HEAD;
            return Err(response::service_error(op, is_head, status, &resp_headers, &body, &redactor));
        }
        let reply = Reply { op, status, headers: resp_headers, body, request_id, sent, redactor };
        if slot.is_some() && reply.sent.is_none() {
            return Err(reply.bad("the server answered success before it received the whole request body"));
        }
        // A captive portal or web server answering 200 with a page must never pass for an OSS success.
        if call.read != ReadBody::Object && call.method != Method::HEAD {
            if let Some(ct) = reply.header("content-type") {
                if ct.to_ascii_lowercase().starts_with("text/html") {
                    return Err(reply.bad(format!(
                        "HTTP {} with an HTML page: {}",
                        status.as_u16(),
                        reply.redactor.snippet(&reply.body)
                    )));
                }
            }
        }
        Ok(reply)
    }

    /// Check an upload answer against the bytes sent; returns the ETag and the digest.
    fn verify_upload(reply: &Reply) -> Result<(String, crate::remote::BodyDigest), RemoteError> {
        let digest = reply.sent.ok_or_else(|| reply.bad("the request body was not sent completely"))?;
        let server = reply.crc64()?.ok_or_else(|| {
            reply.bad("the answer has no x-oss-hash-crc64ecma header, so the stored bytes cannot be verified")
        })?;
        if server != digest.crc64 {
            return Err(RemoteError::ChecksumMismatch {
                op: reply.op,
                local: digest.crc64,
                server,
                request_id: reply.request_id.clone(),
            });
        }
        let etag = reply.header("etag").filter(|e| !e.is_empty()).ok_or_else(|| reply.bad("no ETag header"))?;
        Ok((etag.to_string(), digest))
    }
}

fn resolve_region(endpoint: &Endpoint, given: Option<&str>) -> Result<String, RemoteError> {
    if let Some(r) = given.map(str::trim).filter(|r| !r.is_empty()) {
        // A region id never starts with `oss-`; that is the endpoint label (§12 trap 2). Take what was meant.
        let r = r.strip_prefix("oss-").unwrap_or(r);
        if !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(RemoteError::invalid_input(
                format!("invalid region {r:?}"),
                "give a region id like cn-hangzhou",
            ));
        }
        return Ok(r.to_string());
    }
    endpoint.guess_region().ok_or_else(|| {
        RemoteError::invalid_input(
            format!(
                "signature V4 needs the region of {}, and it cannot be guessed from the host name",
                endpoint.display()
            ),
            "pass --region or set OSS_REGION (e.g. cn-hangzhou), or use --signature v1",
        )
    })
}

#[async_trait]
impl Remote for OssClient {
    fn dialect(&self) -> Dialect {
        Dialect::Oss
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities
    }

    fn endpoint_display(&self) -> String {
        self.inner.endpoint.display()
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), RemoteError> {
        let call = Call::new("PutBucket", Method::PUT, bucket, None);
        match self.execute(call, |_| Ok(())).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyExists") => {
                // OSS answers the same code whoever owns the bucket; if we can list it, it is ours to use.
                let probe = ListObjectsRequest { max_keys: Some(1), ..Default::default() };
                match self.list_objects(bucket, &probe).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Body,
        options: &ObjectOptions,
    ) -> Result<PutResult, RemoteError> {
        check_single_upload_size("PutObject", body.len())?;
        let mut call = Call::new("PutObject", Method::PUT, bucket, Some(key));
        call.headers = object_headers(options, true)?;
        insert_callback(&mut call.headers, options.callback.as_ref())?;
        if options.callback.is_some() {
            // The callback server's answer (up to 3 MB) comes back as the body.
            call.read = ReadBody::Xml;
        }
        call.body = body;
        call.verify_body = true;
        let asked = options.callback.is_some();
        self.execute(call, |reply| {
            let (etag, digest) = Self::verify_upload(reply)?;
            let callback = callback_outcome(reply, asked);
            Ok(PutResult { etag, digest, request_id: reply.request_id.clone(), callback })
        })
        .await
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, RemoteError> {
        let call = Call::new("HeadObject", Method::HEAD, bucket, Some(key));
        let result =
            self.execute(call, |reply| response::object_info(reply, key, response::content_length(reply)?)).await;
        match result {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<GetResult, RemoteError> {
        self.get_object_if_match(bucket, key, range, None).await
    }

    async fn get_object_if_match(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        if_match: Option<&str>,
    ) -> Result<GetResult, RemoteError> {
        let mut call = Call::new("GetObject", Method::GET, bucket, Some(key));
        call.read = ReadBody::Object;
        if let Some(etag) = if_match {
            call.headers.insert(http::header::IF_MATCH, header_value("if-match", &crate::remote::quote_etag(etag))?);
        }
        if let Some(r) = range {
            if r.first > r.last {
                return Err(RemoteError::invalid_input(
                    format!("empty byte range {}-{}", r.first, r.last),
                    "give first <= last",
                ));
            }
            call.headers.insert(http::header::RANGE, header_value("range", &format!("bytes={}-{}", r.first, r.last))?);
            // Standard behaviour: a range past the end is an error (416), not silently the whole object.
            call.headers.insert("x-oss-range-behavior", HeaderValue::from_static("standard"));
        }
        self.execute(call, |reply| {
            let len = reply.body.len() as u64;
            if reply.status == StatusCode::PARTIAL_CONTENT {
                let value = reply.header("content-range").ok_or_else(|| reply.bad("206 without Content-Range"))?;
                let (got, total) = response::parse_content_range(value)
                    .ok_or_else(|| reply.bad(format!("unreadable Content-Range {value:?}")))?;
                // OSS may shorten a range that runs past the end, never move or widen it.
                let fits = range.is_some_and(|want| got.first == want.first && got.last <= want.last);
                if !fits || got.len() != len {
                    return Err(reply.bad(format!(
                        "asked for bytes {range:?}, got Content-Range {value:?} with {len} bytes of body"
                    )));
                }
                let info = response::object_info(reply, key, total)?;
                return Ok(GetResult { info, body: reply.body.clone(), content_range: Some((got, total)) });
            }
            let info = response::object_info(reply, key, len)?;
            // A whole object comes with its CRC-64: check it here (ranged answers carry the whole object's CRC).
            if let Some(server) = info.crc64 {
                let local = crate::checksum::crc64(&reply.body);
                if local != server {
                    return Err(RemoteError::ChecksumMismatch {
                        op: reply.op,
                        local,
                        server,
                        request_id: reply.request_id.clone(),
                    });
                }
            }
            Ok(GetResult { info, body: reply.body.clone(), content_range: None })
        })
        .await
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), RemoteError> {
        let call = Call::new("DeleteObject", Method::DELETE, bucket, Some(key));
        match self.execute(call, |_| Ok(())).await {
            Err(e) if e.code() == Some("NoSuchKey") => Ok(()),
            other => other,
        }
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<Vec<DeleteFailure>, RemoteError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if keys.len() > MAX_DELETE_KEYS {
            return Err(RemoteError::invalid_input(
                format!("{} keys in one DeleteMultipleObjects call", keys.len()),
                "send at most 1000 keys per call",
            ));
        }
        for key in keys {
            check_key(key)?;
        }
        let call = Call::new("DeleteMultipleObjects", Method::POST, bucket, None)
            .query("delete", "")
            .query("encoding-type", "url");
        let mut call = xml_body(call, xml::delete_body(keys, true));
        call.read = ReadBody::Xml;
        self.execute(call, |reply| reply.xml(xml::parse_delete_result)).await
    }

    async fn list_objects(&self, bucket: &str, request: &ListObjectsRequest) -> Result<ListObjectsPage, RemoteError> {
        if let Some(n) = request.max_keys {
            if !(1..=1000).contains(&n) {
                return Err(RemoteError::invalid_input(format!("max-keys {n}"), "use 1 to 1000"));
            }
        }
        let mut call = Call::new("ListObjectsV2", Method::GET, bucket, None)
            .query("list-type", "2")
            .query("encoding-type", "url")
            .query_opt("prefix", request.prefix.as_deref())
            .query_opt("delimiter", request.delimiter.as_deref())
            .query_opt("continuation-token", request.continuation_token.as_deref())
            .query_opt("start-after", request.start_after.as_deref())
            .query_opt("max-keys", request.max_keys);
        call.read = ReadBody::Xml;
        self.execute(call, |reply| reply.xml(xml::parse_list_objects)).await
    }

    async fn copy_object(&self, bucket: &str, source_key: &str, dest_key: &str) -> Result<CopyResult, RemoteError> {
        self.copy_object_with(bucket, source_key, dest_key, &CopyOptions::default()).await
    }

    async fn copy_object_with(
        &self,
        bucket: &str,
        source_key: &str,
        dest_key: &str,
        options: &CopyOptions,
    ) -> Result<CopyResult, RemoteError> {
        check_key(source_key)?;
        let mut call = Call::new("CopyObject", Method::PUT, bucket, Some(dest_key));
        if let Some(replace) = &options.replace {
            call.headers = object_headers(replace, true)?;
            call.headers.insert("x-oss-metadata-directive", HeaderValue::from_static("REPLACE"));
        }
        if let Some(etag) = &options.source_if_match {
            call.headers.insert("x-oss-copy-source-if-match", header_value("ETag", etag)?);
        }
        call.headers.insert("x-oss-copy-source", copy_source(bucket, source_key)?);
        call.read = ReadBody::Xml;
        self.execute(call, |reply| {
            let etag = reply.xml(|b| xml::parse_copy(b, "CopyObjectResult"))?;
            Ok(CopyResult { etag, crc64: reply.crc64()? })
        })
        .await
    }

    async fn initiate_multipart(
        &self,
        bucket: &str,
        key: &str,
        options: &ObjectOptions,
    ) -> Result<String, RemoteError> {
        // The ACL goes with Complete (as the SDKs send it); never `sequential`, which forbids re-sending parts.
        let mut call = Call::new("InitiateMultipartUpload", Method::POST, bucket, Some(key))
            .query("uploads", "")
            .query("encoding-type", "url");
        call.headers = object_headers(options, false)?;
        call.read = ReadBody::Xml;
        self.execute(call, |reply| reply.xml(xml::parse_initiate)).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
    ) -> Result<PartResult, RemoteError> {
        check_upload(upload_id, Some(part_number))?;
        check_single_upload_size("UploadPart", body.len())?;
        let mut call = Call::new("UploadPart", Method::PUT, bucket, Some(key))
            .query("partNumber", part_number.to_string())
            .query("uploadId", upload_id)
            .upload(upload_id, Some(part_number));
        call.body = body;
        call.verify_body = true;
        self.execute(call, |reply| {
            let (etag, digest) = Self::verify_upload(reply)?;
            Ok(PartResult { part_number, etag, digest, request_id: reply.request_id.clone() })
        })
        .await
    }

    async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_bucket: &str,
        source_key: &str,
        source_range: Option<ByteRange>,
    ) -> Result<CopyPartResult, RemoteError> {
        check_upload(upload_id, Some(part_number))?;
        validate_bucket(source_bucket)?;
        check_key(source_key)?;
        let mut call = Call::new("UploadPartCopy", Method::PUT, bucket, Some(key))
            .query("partNumber", part_number.to_string())
            .query("uploadId", upload_id)
            .upload(upload_id, Some(part_number));
        call.headers.insert("x-oss-copy-source", copy_source(source_bucket, source_key)?);
        if let Some(r) = source_range {
            if r.first > r.last {
                return Err(RemoteError::invalid_input(
                    format!("empty byte range {}-{}", r.first, r.last),
                    "give first <= last",
                ));
            }
            call.headers
                .insert("x-oss-copy-source-range", header_value("range", &format!("bytes={}-{}", r.first, r.last))?);
        }
        call.read = ReadBody::Xml;
        self.execute(call, |reply| {
            let etag = reply.xml(|b| xml::parse_copy(b, "CopyPartResult"))?;
            Ok(CopyPartResult { part_number, etag, crc64: reply.crc64()? })
        })
        .await
    }

    async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number_marker: Option<u32>,
    ) -> Result<ListPartsPage, RemoteError> {
        check_upload(upload_id, None)?;
        let mut call = Call::new("ListParts", Method::GET, bucket, Some(key))
            .query("uploadId", upload_id)
            .query("encoding-type", "url")
            .query_opt("part-number-marker", part_number_marker)
            .upload(upload_id, None);
        call.read = ReadBody::Xml;
        self.execute(call, |reply| reply.xml(xml::parse_list_parts)).await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        options: &CompleteOptions,
    ) -> Result<CompleteResult, RemoteError> {
        check_upload(upload_id, None)?;
        if parts.is_empty() {
            return Err(RemoteError::invalid_input(
                "CompleteMultipartUpload with no parts",
                "upload empty or small files with PutObject",
            ));
        }
        for pair in parts.windows(2) {
            if pair[0].part_number >= pair[1].part_number {
                return Err(RemoteError::invalid_input(
                    format!("parts {} and {} are not in ascending order", pair[0].part_number, pair[1].part_number),
                    "list the parts sorted by part number, each once",
                ));
            }
        }
        for p in parts {
            check_upload(upload_id, Some(p.part_number))?;
        }
        let call = Call::new("CompleteMultipartUpload", Method::POST, bucket, Some(key))
            .query("uploadId", upload_id)
            .query("encoding-type", "url")
            .upload(upload_id, None);
        let mut call = xml_body(call, xml::complete_body(parts));
        if let Some(acl) = &options.acl {
            call.headers.insert("x-oss-object-acl", checked_acl(acl)?);
        }
        if options.forbid_overwrite {
            call.headers.insert("x-oss-forbid-overwrite", HeaderValue::from_static("true"));
        }
        insert_callback(&mut call.headers, options.callback.as_ref())?;
        call.read = ReadBody::Xml;
        let asked = options.callback.is_some();
        self.execute(call, |reply| {
            // With a callback the body is the callback's answer: the ETag comes from the header.
            let etag = match asked {
                false => reply.xml(xml::parse_complete)?,
                true => reply
                    .header("etag")
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| reply.bad("a Complete with a callback answered without an ETag header"))?,
            };
            Ok(CompleteResult {
                etag,
                crc64: reply.crc64()?,
                crc64nvme: None,
                request_id: reply.request_id.clone(),
                callback: callback_outcome(reply, asked),
            })
        })
        .await
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), RemoteError> {
        check_upload(upload_id, None)?;
        let call = Call::new("AbortMultipartUpload", Method::DELETE, bucket, Some(key))
            .query("uploadId", upload_id)
            .upload(upload_id, None);
        match self.execute(call, |_| Ok(())).await {
            Err(e) if e.is_no_such_upload() => Ok(()),
            other => other,
        }
    }

    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        request: &ListUploadsRequest,
    ) -> Result<ListUploadsPage, RemoteError> {
        if let Some(n) = request.max_uploads {
            if !(1..=1000).contains(&n) {
                return Err(RemoteError::invalid_input(format!("max-uploads {n}"), "use 1 to 1000"));
            }
        }
        let mut call = Call::new("ListMultipartUploads", Method::GET, bucket, None)
            .query("uploads", "")
            .query("encoding-type", "url")
            .query_opt("prefix", request.prefix.as_deref())
            .query_opt("key-marker", request.key_marker.as_deref())
            .query_opt("upload-id-marker", request.upload_id_marker.as_deref())
            .query_opt("max-uploads", request.max_uploads);
        call.read = ReadBody::Xml;
        self.execute(call, |reply| reply.xml(xml::parse_list_uploads)).await
    }
}
