//! [`S3Client`]: the S3 API behind the [`Remote`] trait.
//!
//! The shape is the OSS client's: every operation is a `Call` plus a parse function, run by the shared
//! retry loop ([`crate::remote::transport::with_retries`]); each attempt is signed afresh (SigV4, header
//! auth, `UNSIGNED-PAYLOAD` unless payload signing is asked for, never `aws-chunked`) and streams a fresh
//! body whose digest covers exactly the bytes of that attempt.
//!
//! # Integrity
//!
//! S3 has no CRC-64/XZ, so "never lie about sync" rests on what the server confirms, strongest first:
//!
//! - **CRC-64/NVME** ([`Integrity::Crc64Nvme`]). A checksum header must be known before the body is sent,
//!   so a file range is read once beforehand (the *pre-pass*, a SIMD CRC at memory speed, and the range is
//!   then in the page cache for the send). PutObject and UploadPart carry `x-amz-checksum-crc64nvme`; the
//!   server verifies the bytes it received against it and echoes it. The digest of the bytes actually
//!   streamed must equal the pre-pass, or the file changed in between ([`RemoteError::LocalRead`]); the echo
//!   must equal ours ([`RemoteError::ChecksumMismatch`]). Multipart uploads are created with
//!   `x-amz-checksum-algorithm: CRC64NVME` and `x-amz-checksum-type: FULL_OBJECT`; Complete sends every
//!   part's checksum and the expected whole-object CRC (the parts folded), so the server itself refuses a
//!   wrong assembly, and its answer's `ChecksumCRC64NVME` must equal ours before `Ok`. HeadObject asks for
//!   checksums (`x-amz-checksum-mode: ENABLED`).
//! - **Content-MD5** ([`Integrity::ContentMd5`]), for servers without CRC-64/NVME. The pre-pass computes
//!   the MD5; the server verifies `Content-MD5`, and the ETag of a part or plain object must be that MD5.
//!   Complete then checks the multipart ETag `hex(md5(part md5s…))-N`, computed from the (verified) part
//!   ETags, so `complete_multipart` has verified the object before it answers `Ok`. MD5 costs about 2 s of
//!   CPU per GiB, which is why it is only the fallback.
//!
//! [`IntegrityMode::Auto`] chooses once per client, at the first upload, with a probe under a temporary key
//! that is deleted afterwards: a PutObject with a *wrong* CRC-64/NVME must be refused (the server verifies,
//! not merely stores the header), one with the right value must be accepted and echoed, and a multipart
//! upload created with `CRC64NVME`/`FULL_OBJECT` must be acknowledged as such (it is aborted at once). Any
//! "no" selects Content-MD5. [`S3Client::capabilities`] follows the chosen mode: `object_crc64nvme` in
//! CRC-64/NVME mode, neither flag in Content-MD5 mode (the client then verifies Complete itself).
//!
//! Addressing is path style for IP literals and `localhost` (or when asked), virtual-hosted otherwise.
//! Nothing here logs or returns credentials; server text in errors is scrubbed of the secret, the session
//! token and the attempt's signature.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tokio::sync::OnceCell;
use tracing::Instrument as _;

use crate::checksum::{Crc64Nvme, crc64nvme_fold};
use crate::credentials::{CredentialsProvider, StaticProvider, refresh_after_refusal};
use crate::remote::body::DigestSlot;
use crate::remote::names::validate_bucket;
use crate::remote::options::{Encryption, tagging_header};
use crate::remote::oss::client::{
    MAX_DELETE_KEYS, check_key, check_single_upload_size, check_upload, content_and_metadata_headers, content_md5,
    header_value,
};
use crate::remote::oss::endpoint::{Endpoint, RequestUrl};
use crate::remote::oss::response::{self, Redactor, Reply};
use crate::remote::retry::RetryPolicy;
use crate::remote::s3::sign::{EMPTY_SHA256, Signer, UNSIGNED_PAYLOAD, uri_encode};
use crate::remote::s3::xml;
use crate::remote::throttle::Throttle;
use crate::remote::transport::{Clock, Progress, Transport, with_retries};
use crate::remote::{
    Body, ByteRange, Capabilities, CompleteOptions, CompleteResult, CompletedPart, CopyOptions, CopyPartResult,
    CopyResult, Credentials, DeleteFailure, Dialect, GetResult, ListObjectsPage, ListObjectsRequest, ListPartsPage,
    ListUploadsPage, ListUploadsRequest, ObjectInfo, ObjectOptions, PartResult, PutResult, Remote, RemoteError,
    ServiceError,
};

/// Where the endpoint flag and variable are named in messages.
pub const S3_ENDPOINT_FIX: &str = "check --endpoint or AWS_ENDPOINT_URL (e.g. https://s3.oss-cn-hangzhou.aliyuncs.com)";
/// The region signed when none is given or guessed (what S3-compatible servers accept by default).
pub const DEFAULT_REGION: &str = "us-east-1";

pub const REQUEST_ID: &str = "x-amz-request-id";
pub const HOST_ID: &str = "x-amz-id-2";
pub const CHECKSUM_CRC64NVME: &str = "x-amz-checksum-crc64nvme";

/// S3 limits user metadata to 2 KiB (names plus values).
const MAX_METADATA_BYTES: usize = 2 * 1024;
const SMALL_BODY_LIMIT: usize = 64 * 1024;
const XML_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Pre-pass read size: large sequential reads, one buffer per part in flight.
const PREPASS_CHUNK: usize = 1024 * 1024;

const ACLS: &[&str] = &["private", "public-read", "public-read-write", "authenticated-read"];

/// How uploads are verified (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IntegrityMode {
    /// Probe the server once, at the first upload: CRC-64/NVME when it verifies it, else Content-MD5.
    #[default]
    Auto,
    Crc64Nvme,
    ContentMd5,
}

impl std::str::FromStr for IntegrityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(IntegrityMode::Auto),
            "crc64nvme" | "crc64-nvme" | "nvme" => Ok(IntegrityMode::Crc64Nvme),
            "md5" | "content-md5" => Ok(IntegrityMode::ContentMd5),
            _ => Err(format!("unknown S3 integrity mode {s:?}: use auto, crc64nvme or md5")),
        }
    }
}

/// The verification a client settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integrity {
    Crc64Nvme,
    ContentMd5,
}

/// How to reach one S3-compatible endpoint.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http://127.0.0.1:8333`, `https://s3.oss-cn-hangzhou.aliyuncs.com`, or a host name (https).
    pub endpoint: String,
    /// Signing region; guessed from an OSS host name, else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// `None` sends anonymous (unsigned) requests.
    pub credentials: Option<Credentials>,
    /// When set, replaces `credentials`: read at every signing, and asked to refresh when the server refuses
    /// them.
    pub credentials_provider: Option<Arc<dyn CredentialsProvider>>,
    /// Force path-style URLs; IP and `localhost` endpoints always use them. (OSS's S3 API refuses them.)
    pub path_style: bool,
    pub integrity: IntegrityMode,
    /// Sign the SHA-256 of every body instead of `UNSIGNED-PAYLOAD` (one more hash in the pre-pass), for
    /// servers that require it.
    pub sign_payload: bool,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// The longest the server may go without taking request bytes or sending answer bytes.
    pub read_timeout: Duration,
    /// S3 documents that parts left out of Complete are discarded; SeaweedFS 4.48 does so. Unconfirmed for
    /// OSS's S3 API (the engine then restarts the upload if refused).
    pub complete_with_part_subset: bool,
    /// `--bwlimit`: paces every request body; share one across the clients of a process.
    pub throttle: Option<Arc<Throttle>>,
}

impl S3Config {
    /// Automatic integrity, unsigned payloads, default retries, 10 s connect and 60 s read timeouts.
    pub fn new(endpoint: impl Into<String>) -> Self {
        S3Config {
            endpoint: endpoint.into(),
            region: None,
            credentials: None,
            credentials_provider: None,
            path_style: false,
            integrity: IntegrityMode::Auto,
            sign_payload: false,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            complete_with_part_subset: true,
            throttle: None,
        }
    }
}

/// An S3 client. Cheap to clone (shares the connection pool, the clock offset and the integrity mode).
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    endpoint: Endpoint,
    path_style: bool,
    signer: Signer,
    credentials: Option<Arc<dyn CredentialsProvider>>,
    retry: RetryPolicy,
    clock: Clock,
    configured: IntegrityMode,
    /// The mode in use, settled at the first upload.
    integrity: OnceCell<Integrity>,
    sign_payload: bool,
    complete_with_part_subset: bool,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("S3Client")
            .field("endpoint", &i.endpoint.display())
            .field("region", &i.signer.region)
            .field("path_style", &i.path_style)
            .field("integrity", &i.integrity.get().copied().map_or(format!("{:?}", i.configured), |m| format!("{m:?}")))
            .field("access_key_id", &i.credentials.as_ref().map(|c| c.current().access_key_id.clone()))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadBody {
    Ignore,
    Xml,
    Object,
}

/// What the pre-pass learned about a body before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prehash {
    len: u64,
    crc64nvme: u64,
    md5: Option<[u8; 16]>,
    sha256: Option<[u8; 32]>,
}

/// One logical request; every attempt is built from it afresh.
struct Call<'a> {
    op: &'static str,
    method: Method,
    bucket: &'a str,
    key: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Body,
    /// The pre-pass of `body`: every attempt's streamed bytes must hash to it.
    prehash: Option<Prehash>,
    read: ReadBody,
    upload_id: Option<&'a str>,
    part: Option<u32>,
    /// One attempt only (the integrity probe's deliberately wrong checksum must not be retried).
    single_attempt: bool,
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
            prehash: None,
            read: ReadBody::Ignore,
            upload_id: None,
            part: None,
            single_attempt: false,
        }
    }

    fn query(mut self, name: &str, value: impl Into<String>) -> Self {
        self.query.push((name.to_string(), value.into()));
        self
    }

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

    fn xml_body(mut self, body: String) -> Self {
        // DeleteObjects requires Content-MD5; for the other small XML bodies it costs nothing and lets the
        // server refuse a damaged body.
        self.headers.insert("content-md5", content_md5(body.as_bytes()));
        self.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        self.body = Body::Bytes(Bytes::from(body));
        self
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Headers that shape a new object (PutObject, CreateMultipartUpload).
fn object_headers(options: &ObjectOptions) -> Result<HeaderMap, RemoteError> {
    let mut h = content_and_metadata_headers(options, "x-amz-meta-", MAX_METADATA_BYTES, "S3")?;
    match options.acl.as_deref() {
        // OSS's "default" (inherit the bucket's ACL) is what S3 does without the header.
        None | Some("default") => {}
        Some(acl) if ACLS.contains(&acl) => {
            h.insert("x-amz-acl", header_value("ACL", acl)?);
        }
        Some(acl) => {
            return Err(RemoteError::invalid_input(
                format!("unknown ACL {acl:?}"),
                format!("use default or one of {}", ACLS.join(", ")),
            ));
        }
    }
    if let Some(class) = &options.storage_class {
        h.insert("x-amz-storage-class", header_value("storage class", &s3_storage_class(class)?)?);
    }
    if options.forbid_overwrite {
        // S3's conditional write: fail with 412 when the key exists.
        h.insert(http::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
    }
    match &options.encryption {
        None => {}
        Some(Encryption::Aes256) => {
            h.insert("x-amz-server-side-encryption", HeaderValue::from_static("AES256"));
        }
        Some(Encryption::Kms { key_id }) => {
            h.insert("x-amz-server-side-encryption", HeaderValue::from_static("aws:kms"));
            if let Some(id) = key_id {
                h.insert("x-amz-server-side-encryption-aws-kms-key-id", header_value("KMS key id", id)?);
            }
        }
        Some(Encryption::Sm4) => {
            return Err(RemoteError::invalid_input(
                "SM4 server-side encryption is an OSS feature the S3 API does not have",
                "use --sse AES256 or KMS with --protocol s3",
            ));
        }
    }
    if let Some(tagging) = tagging_header(&options.tags)? {
        h.insert("x-amz-tagging", header_value("tags", &tagging)?);
    }
    if options.callback.is_some() {
        return Err(no_callbacks());
    }
    Ok(h)
}

/// Upload callbacks are an OSS feature.
fn no_callbacks() -> RemoteError {
    RemoteError::invalid_input(
        "upload callbacks are an OSS feature the S3 API does not have",
        "drop --callback-url, or use --protocol oss against an OSS endpoint",
    )
}

/// S3 storage class names; OSS's names map to the S3 class OSS documents as their counterpart.
fn s3_storage_class(class: &str) -> Result<String, RemoteError> {
    const S3: &[&str] = &[
        "STANDARD",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "GLACIER_IR",
        "DEEP_ARCHIVE",
        "REDUCED_REDUNDANCY",
    ];
    let mapped = match class {
        "Standard" => "STANDARD",
        "IA" => "STANDARD_IA",
        "Archive" => "GLACIER",
        "ColdArchive" | "DeepColdArchive" => "DEEP_ARCHIVE",
        other if S3.contains(&other) => other,
        other => {
            return Err(RemoteError::invalid_input(
                format!("unknown storage class {other:?}"),
                format!("use one of {}", S3.join(", ")),
            ));
        }
    };
    Ok(mapped.to_string())
}

/// `/bucket/key` for `x-amz-copy-source`, the key path-encoded.
fn copy_source(bucket: &str, key: &str) -> Result<HeaderValue, RemoteError> {
    header_value("copy source", &format!("/{bucket}/{}", uri_encode(key, true)))
}

fn check_range(r: &ByteRange) -> Result<(), RemoteError> {
    if r.first > r.last {
        return Err(RemoteError::invalid_input(
            format!("empty byte range {}-{}", r.first, r.last),
            "give first <= last",
        ));
    }
    Ok(())
}

/// An ETag's hex digest, unquoted and lower-cased.
fn etag_hex(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// The multipart ETag S3 computes: `hex(md5(md5(part 1) ‖ … ‖ md5(part N)))-N`, from the parts' MD5 ETags.
pub fn multipart_etag(part_etags: &[&str]) -> Option<String> {
    let mut concat = Vec::with_capacity(part_etags.len() * 16);
    for e in part_etags {
        let raw = hex::decode(etag_hex(e)).ok()?;
        if raw.len() != 16 {
            return None;
        }
        concat.extend_from_slice(&raw);
    }
    Some(format!("{}-{}", hex::encode(Md5::digest(&concat)), part_etags.len()))
}

/// The pre-pass hashes: CRC-64/NVME always, MD5 and SHA-256 when asked for.
struct PrehashState {
    len: u64,
    crc: Crc64Nvme,
    md5: Option<Md5>,
    sha256: Option<Sha256>,
}

impl PrehashState {
    fn new(md5: bool, sha256: bool) -> Self {
        PrehashState { len: 0, crc: Crc64Nvme::new(), md5: md5.then(Md5::new), sha256: sha256.then(Sha256::new) }
    }

    fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.crc.update(data);
        if let Some(m) = self.md5.as_mut() {
            m.update(data);
        }
        if let Some(s) = self.sha256.as_mut() {
            s.update(data);
        }
    }

    fn finish(self) -> Prehash {
        Prehash {
            len: self.len,
            crc64nvme: self.crc.finish(),
            md5: self.md5.map(|m| m.finalize().into()),
            sha256: self.sha256.map(|s| s.finalize().into()),
        }
    }
}

/// Read a file range once, positional reads in large chunks.
fn prehash_file(range: &crate::remote::FileRange, mut state: PrehashState) -> io::Result<Prehash> {
    let mut buf = vec![0u8; PREPASS_CHUNK.min(range.len as usize).max(1)];
    let mut pos = range.offset;
    let end = range.offset + range.len;
    while pos < end {
        let want = buf.len().min((end - pos) as usize);
        match range.file.read_at(&mut buf[..want], pos) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file ended at byte {pos} while reading {}..{end} (it shrank while uploading)",
                        range.offset
                    ),
                ));
            }
            Ok(n) => {
                state.update(&buf[..n]);
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(state.finish())
}

/// Read a body once before sending it, for the checksum headers (file ranges on the blocking pool).
async fn prehash(op: &'static str, body: &Body, md5: bool, sha256: bool) -> Result<Prehash, RemoteError> {
    let mut state = PrehashState::new(md5, sha256);
    let result = match body {
        Body::Empty => Ok(state.finish()),
        Body::Bytes(b) => {
            state.update(b);
            Ok(state.finish())
        }
        Body::File(range) => {
            let range = range.clone();
            match tokio::task::spawn_blocking(move || prehash_file(&range, state)).await {
                Ok(result) => result,
                Err(e) => Err(io::Error::other(format!("the checksum pre-pass failed: {e}"))),
            }
        }
    };
    result.map_err(|e| RemoteError::LocalRead { op, source: Arc::new(e) })
}

/// Turn a non-2xx answer (or a 200 carrying an `<Error>`) into an error.
fn service_error(
    op: &'static str,
    is_head: bool,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    redactor: &Redactor,
) -> RemoteError {
    let request_id = response::header(headers, REQUEST_ID).filter(|s| !s.is_empty()).map(str::to_string);
    let host_id = response::header(headers, HOST_ID).filter(|s| !s.is_empty()).map(str::to_string);
    let base = ServiceError {
        op,
        status: status.as_u16(),
        code: String::new(),
        message: String::new(),
        request_id: request_id.clone(),
        host_id,
        ec: None,
        server_time: response::server_time(headers),
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        if let Some(doc) = xml::parse_error(body) {
            return ServiceError {
                code: doc.code,
                message: redactor.apply(doc.message),
                request_id: doc.request_id.or(base.request_id.clone()),
                host_id: doc.host_id.or(base.host_id.clone()),
                ..base
            }
            .into();
        }
        let text = redactor.snippet(body);
        if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            return ServiceError { message: format!("the server answered with a non-S3 error page: {text}"), ..base }
                .into();
        }
        return RemoteError::BadResponse {
            op,
            detail: format!("HTTP {} with a body that is not an S3 <Error> document: {text}", status.as_u16()),
            request_id,
        };
    }
    // HEAD answers carry no body: the status is all there is (what the SDKs report, too).
    let code = match (is_head, status.as_u16()) {
        (true, 404) => "NoSuchKey",
        (true, 403) => "AccessDenied",
        (true, 412) => "PreconditionFailed",
        (true, 304) => "NotModified",
        (_, 416) => "InvalidRange",
        _ => "",
    };
    let reason = status.canonical_reason().unwrap_or("error");
    ServiceError { code: code.to_string(), message: format!("{reason} (no error details in the answer)"), ..base }
        .into()
}

/// A 200 answer whose body is an `<Error>` (S3 does this for Complete and copies that fail after the
/// status line was sent): an error, retried by its code.
fn error_in_ok(reply: &Reply) -> Option<RemoteError> {
    let doc = xml::parse_error(&reply.body)?;
    let status = match doc.code.as_str() {
        "InternalError" | "SlowDown" | "ServiceUnavailable" => 500,
        _ => 400,
    };
    Some(
        ServiceError {
            op: reply.op,
            status,
            code: doc.code,
            message: reply.redactor.apply(doc.message),
            request_id: doc.request_id.or(reply.request_id.clone()),
            host_id: doc.host_id,
            ec: None,
            server_time: None,
        }
        .into(),
    )
}

/// The `x-amz-checksum-crc64nvme` header of an answer; a malformed value is a bad answer, not "absent".
fn reply_crc64nvme(reply: &Reply) -> Result<Option<u64>, RemoteError> {
    match reply.header(CHECKSUM_CRC64NVME) {
        None => Ok(None),
        // A composite checksum (`…-N`) is not a whole-object CRC: treat as absent.
        Some(v) if v.contains('-') => Ok(None),
        Some(v) => xml::crc64_from_base64(v).map(Some).ok_or_else(|| {
            reply
                .bad(format!("{CHECKSUM_CRC64NVME} is not a Base64 CRC-64: {:?}", reply.redactor.snippet(v.as_bytes())))
        }),
    }
}

/// What HEAD and GET report about an object.
fn object_info(reply: &Reply, key: &str, size: u64) -> Result<ObjectInfo, RemoteError> {
    let etag = reply.header("etag").filter(|e| !e.is_empty()).ok_or_else(|| reply.bad("no ETag header"))?;
    let metadata = reply
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let meta = name.as_str().strip_prefix("x-amz-meta-")?;
            Some((meta.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        })
        .collect();
    let text = |name: &str| reply.header(name).filter(|s| !s.is_empty()).map(str::to_string);
    Ok(ObjectInfo {
        key: key.to_string(),
        size,
        etag: etag.to_string(),
        crc64: None,
        crc64nvme: reply_crc64nvme(reply)?,
        last_modified: reply.header("last-modified").and_then(crate::timefmt::parse_rfc1123),
        content_type: text("content-type"),
        metadata,
        storage_class: text("x-amz-storage-class"),
        object_type: None,
    })
}

impl S3Client {
    /// Validate the configuration and build the client (no request is sent).
    pub fn new(config: S3Config) -> Result<Self, RemoteError> {
        let endpoint = Endpoint::parse(&config.endpoint).map_err(|e| match e {
            RemoteError::InvalidInput { problem, .. } => {
                RemoteError::InvalidInput { problem, fix: S3_ENDPOINT_FIX.to_string() }
            }
            other => other,
        })?;
        let region = match config.region.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) if r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => r.to_string(),
            Some(r) => {
                return Err(RemoteError::invalid_input(
                    format!("invalid region {r:?}"),
                    "give a region id like us-east-1 or cn-hangzhou (--region or AWS_REGION)",
                ));
            }
            None => endpoint.guess_region().unwrap_or_else(|| DEFAULT_REGION.to_string()),
        };
        if config.retry.max_attempts == 0 {
            return Err(RemoteError::invalid_input("retry policy allows 0 attempts", "allow at least 1 attempt"));
        }
        if let Some(c) = &config.credentials {
            if c.access_key_id.trim().is_empty() || c.access_key_secret.expose().is_empty() {
                return Err(RemoteError::invalid_input(
                    "empty access key id or secret",
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the matching flags)",
                ));
            }
            if header_value("access key id", &c.access_key_id).is_err()
                || c.session_token.as_ref().is_some_and(|t| HeaderValue::from_str(t.expose()).is_err())
            {
                return Err(RemoteError::invalid_input(
                    "the access key id or session token contains characters that cannot be sent in a header",
                    "check AWS_ACCESS_KEY_ID and AWS_SESSION_TOKEN for stray spaces or line breaks",
                ));
            }
        }
        let redactor = Redactor::new(config.credentials.iter().flat_map(|c| {
            let token = c.session_token.as_ref().map(|t| t.expose().to_string());
            std::iter::once(c.access_key_secret.expose().to_string()).chain(token)
        }));
        let transport = Transport::new(
            &endpoint,
            config.connect_timeout,
            config.read_timeout,
            S3_ENDPOINT_FIX,
            redactor,
            config.throttle.clone(),
        )?;
        let integrity = OnceCell::new();
        match config.integrity {
            IntegrityMode::Auto => {}
            IntegrityMode::Crc64Nvme => {
                let _ = integrity.set(Integrity::Crc64Nvme);
            }
            IntegrityMode::ContentMd5 => {
                let _ = integrity.set(Integrity::ContentMd5);
            }
        }
        Ok(S3Client {
            inner: Arc::new(Inner {
                transport,
                path_style: config.path_style || endpoint.needs_path_style(),
                endpoint,
                signer: Signer::new(region),
                credentials: config
                    .credentials_provider
                    .or_else(|| config.credentials.map(|c| StaticProvider::shared(c, "configured access key"))),
                retry: config.retry,
                clock: Clock::default(),
                configured: config.integrity,
                integrity,
                sign_payload: config.sign_payload,
                complete_with_part_subset: config.complete_with_part_subset,
            }),
        })
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.inner.signer.region
    }

    /// Server time minus local time in milliseconds, as learned from `RequestTimeTooSkewed` answers.
    pub fn clock_offset_ms(&self) -> i64 {
        self.inner.clock.offset_ms()
    }

    /// Set the offset from the server's clock by hand (tests use it to simulate a skewed clock).
    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.inner.clock.set_offset_ms(offset_ms);
    }

    /// The integrity mode in use, once settled (configured, or probed at the first upload).
    pub fn integrity(&self) -> Option<Integrity> {
        self.inner.integrity.get().copied()
    }

    /// The integrity mode for uploads, probing the server (once, with `bucket`) in automatic mode.
    pub async fn resolve_integrity(&self, bucket: &str) -> Result<Integrity, RemoteError> {
        self.inner.integrity.get_or_try_init(|| self.probe_integrity(bucket)).await.copied()
    }

    /// The automatic-mode probe (module docs). Transport, auth and missing-bucket errors are returned (and
    /// the next upload probes again); only the server's behaviour decides the mode.
    async fn probe_integrity(&self, bucket: &str) -> Result<Integrity, RemoteError> {
        let key = format!(".ossmirror-probe/{:016x}", fastrand::u64(..));
        let data = Bytes::from_static(b"ossmirror checks which checksums this server verifies");
        let right = crate::checksum::crc64nvme(&data);
        let put = |crc: u64| {
            let mut call = Call::new("PutObject", Method::PUT, bucket, Some(key.as_str()));
            call.headers.insert(CHECKSUM_CRC64NVME, header_value("checksum", &xml::crc64_to_base64(crc))?);
            call.body = Body::Bytes(data.clone());
            call.single_attempt = true;
            Ok::<_, RemoteError>(call)
        };
        let verdict = async {
            // 1. A wrong checksum must be refused: a server that stores it anyway does not verify.
            match self.execute(put(right ^ 0x5A5A)?, |_| Ok(())).await {
                Ok(()) => return Ok(Some("the server accepted a body with a wrong x-amz-checksum-crc64nvme")),
                Err(e)
                    if matches!(e.kind(), crate::remote::ErrorKind::Integrity | crate::remote::ErrorKind::Rejected) => {
                }
                Err(e) => return Err(e),
            }
            // 2. The right one must be accepted and confirmed.
            let echoed = match self.execute(put(right)?, reply_crc64nvme).await {
                Ok(echo) => echo,
                Err(e) if e.kind() == crate::remote::ErrorKind::Rejected => {
                    return Ok(Some("the server refused x-amz-checksum-crc64nvme"));
                }
                Err(e) => return Err(e),
            };
            if echoed != Some(right) {
                return Ok(Some("the server did not confirm the CRC-64/NVME of an upload"));
            }
            // 3. Full-object CRC-64/NVME multipart uploads.
            let mut call =
                Call::new("CreateMultipartUpload", Method::POST, bucket, Some(key.as_str())).query("uploads", "");
            call.headers.insert("x-amz-checksum-algorithm", HeaderValue::from_static("CRC64NVME"));
            call.headers.insert("x-amz-checksum-type", HeaderValue::from_static("FULL_OBJECT"));
            call.read = ReadBody::Xml;
            let created = self
                .execute(call, |reply| {
                    let id = reply.xml(xml::parse_initiate)?;
                    let algorithm = reply.header("x-amz-checksum-algorithm").map(str::to_ascii_uppercase);
                    let kind = reply.header("x-amz-checksum-type").map(str::to_ascii_uppercase);
                    Ok((id, algorithm, kind))
                })
                .await;
            let (upload_id, algorithm, kind) = match created {
                Ok(c) => c,
                Err(e) if e.kind() == crate::remote::ErrorKind::Rejected => {
                    return Ok(Some("the server refused a CRC64NVME multipart upload"));
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = self.abort_multipart(bucket, &key, &upload_id).await {
                tracing::warn!(%bucket, %key, %upload_id, error = %e, "could not abort the integrity probe's upload");
            }
            if algorithm.as_deref() != Some("CRC64NVME") || kind.as_deref().is_some_and(|k| k != "FULL_OBJECT") {
                return Ok(Some("the server did not acknowledge a full-object CRC64NVME multipart upload"));
            }
            Ok(None)
        }
        .await;
        if let Err(e) = self.delete_object(bucket, &key).await {
            tracing::warn!(%bucket, %key, error = %e, "could not delete the integrity probe's object");
        }
        let mode = match verdict? {
            None => Integrity::Crc64Nvme,
            Some(why) => {
                tracing::warn!(endpoint = %self.inner.endpoint.display(), reason = why,
                    "this S3 server does not verify CRC-64/NVME; uploads are verified with Content-MD5 (about 2 s of CPU per GiB)");
                Integrity::ContentMd5
            }
        };
        tracing::info!(endpoint = %self.inner.endpoint.display(), integrity = ?mode, "S3 integrity mode settled");
        Ok(mode)
    }

    /// Run a call with retries; `parse` turns a 2xx answer into the result (its errors are retried by the
    /// same rules as the server's).
    async fn execute<T>(
        &self,
        call: Call<'_>,
        parse: impl Fn(&Reply) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        validate_bucket(call.bucket)?;
        if let Some(key) = call.key {
            check_key(key)?;
        }
        let url =
            RequestUrl::build(&self.inner.endpoint, self.inner.path_style, call.bucket, call.key, &call.query, None)?;
        let span = tracing::debug_span!(
            "s3",
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
        let policy = if call.single_attempt { RetryPolicy::none() } else { self.inner.retry.clone() };
        let (call, url, parse) = (&call, &url, &parse);
        let run = || {
            with_retries(call.op, &policy, &self.inner.clock, |attempt| async move {
                self.attempt(call, url, attempt).await.and_then(|reply| parse(&reply))
            })
        };
        let outcome = async {
            match run().await {
                // Refused temporary credentials: fetch new ones and try once more.
                Err(e) if refresh_after_refusal(self.inner.credentials.as_ref(), e.code()).await => run().await,
                outcome => outcome,
            }
        };
        outcome.instrument(span).await
    }

    /// One attempt: sign now, stream the body, read the answer, classify non-2xx answers.
    async fn attempt(&self, call: &Call<'_>, url: &RequestUrl, attempt: u32) -> Result<Reply, RemoteError> {
        let op = call.op;
        self.inner.transport.pace_in_memory(&call.body).await;
        let mut headers = call.headers.clone();
        let host = match url.url.port() {
            Some(port) => format!("{}:{port}", url.url.host_str().unwrap_or("")),
            None => url.url.host_str().unwrap_or("").to_string(),
        };
        headers.insert(http::header::HOST, header_value("host", &host)?);
        let has_body = matches!(call.method, Method::PUT | Method::POST);
        if has_body {
            // An explicit length: S3 wants Content-Length (no chunked uploads), and hyper then refuses to
            // send more or fewer bytes.
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(call.body.len()));
        }
        let payload_hash = match (self.inner.sign_payload, call.prehash.and_then(|p| p.sha256)) {
            (true, Some(sha)) => hex::encode(sha),
            (true, None) if call.body.is_empty() => EMPTY_SHA256.to_string(),
            (true, None) => {
                return Err(RemoteError::invalid_input(
                    format!("{op}: the payload to sign was not hashed"),
                    "report this bug",
                ));
            }
            (false, _) => UNSIGNED_PAYLOAD.to_string(),
        };
        let credentials = self.inner.credentials.as_ref().map(|p| p.current());
        if let Some(creds) = &credentials {
            let now = self.inner.clock.now();
            self.inner.signer.sign(
                creds,
                call.method.as_str(),
                &url.path,
                &call.query,
                &mut headers,
                &payload_hash,
                now,
            );
        }
        // This attempt's signature is a credential while it lasts.
        let signature = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split_once("Signature=").map(|(_, s)| s))
            .unwrap_or("");
        let mut redactor = self.inner.transport.redactor.with(signature);
        for secret in credentials.iter().flat_map(|c| std::iter::once(&c.access_key_secret).chain(&c.session_token)) {
            redactor = redactor.with(secret.expose());
        }

        let mut request = self.inner.transport.http.request(call.method.clone(), url.url.clone());
        let mut slot: Option<DigestSlot> = None;
        let progress = if has_body {
            let prepared = self.inner.transport.prepare_body(&call.body);
            request = request.body(prepared.body);
            slot = prepared.slot;
            prepared.progress
        } else {
            Progress::new(true)
        };
        let answer = self.inner.transport.send(request.headers(headers).send(), &progress).await;
        // A local read failure explains whatever the wire did next: report it, never retry it.
        let sent = match slot.as_ref().map(DigestSlot::take) {
            Some(Some(Err(source))) => return Err(RemoteError::LocalRead { op, source }),
            Some(Some(Ok(digest))) => Some(digest),
            Some(None) => None,
            None => call.body.digest_if_in_memory(),
        };
        if let (Some(sent), Some(pre)) = (sent, call.prehash) {
            if sent.len != pre.len || sent.crc64nvme != pre.crc64nvme {
                // The checksum headers describe other bytes than the ones that went out: the file changed
                // between the pre-pass and the send. Whatever the server did with them, this is not ours.
                return Err(RemoteError::LocalRead {
                    op,
                    source: Arc::new(io::Error::other(
                        "the file changed while it was being uploaded (the bytes sent differ from the bytes checksummed)",
                    )),
                });
            }
        }
        let response = answer.map_err(|e| self.inner.transport.send_error(op, e))?;

        let status = response.status();
        let resp_headers = response.headers().clone();
        let request_id = response::header(&resp_headers, REQUEST_ID).filter(|s| !s.is_empty()).map(str::to_string);
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
            return Err(service_error(op, call.method == Method::HEAD, status, &resp_headers, &body, &redactor));
        }
        let reply = Reply { op, status, headers: resp_headers, body, request_id, sent, redactor };
        if slot.is_some() && reply.sent.is_none() {
            return Err(reply.bad("the server answered success before it received the whole request body"));
        }
        if call.read == ReadBody::Xml {
            if let Some(e) = error_in_ok(&reply) {
                return Err(e);
            }
        }
        // A captive portal or web server answering 200 with a page must never pass for an S3 success.
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

    /// Pre-hash an upload body and add the checksum headers of `mode`.
    async fn checksummed<'a>(&self, mut call: Call<'a>, body: Body, mode: Integrity) -> Result<Call<'a>, RemoteError> {
        let pre = prehash(call.op, &body, mode == Integrity::ContentMd5, self.inner.sign_payload).await?;
        match mode {
            Integrity::Crc64Nvme => {
                call.headers
                    .insert(CHECKSUM_CRC64NVME, header_value("checksum", &xml::crc64_to_base64(pre.crc64nvme))?);
            }
            Integrity::ContentMd5 => {
                let md5 = pre.md5.unwrap_or_default();
                call.headers.insert("content-md5", header_value("Content-MD5", &b64(&md5))?);
            }
        }
        call.body = body;
        call.prehash = Some(pre);
        Ok(call)
    }

    /// Check an upload answer against the pre-pass (the streamed bytes were already checked against it);
    /// returns the ETag.
    fn verify_upload(reply: &Reply, pre: Prehash, mode: Integrity) -> Result<String, RemoteError> {
        if reply.sent.is_none() {
            return Err(reply.bad("the request body was not sent completely"));
        }
        let etag = reply.header("etag").filter(|e| !e.is_empty()).ok_or_else(|| reply.bad("no ETag header"))?;
        match mode {
            Integrity::Crc64Nvme => {
                let server = reply_crc64nvme(reply)?.ok_or_else(|| {
                    reply.bad("the answer has no x-amz-checksum-crc64nvme, so the stored bytes cannot be verified")
                })?;
                if server != pre.crc64nvme {
                    return Err(RemoteError::ChecksumMismatch {
                        op: reply.op,
                        local: pre.crc64nvme,
                        server,
                        request_id: reply.request_id.clone(),
                    });
                }
            }
            Integrity::ContentMd5 => {
                let local = hex::encode(pre.md5.unwrap_or_default());
                if etag_hex(etag) != local {
                    return Err(RemoteError::DigestMismatch(Box::new(crate::remote::error::DigestMismatch {
                        op: reply.op,
                        what: "ETag (MD5)",
                        local,
                        server: etag.to_string(),
                        request_id: reply.request_id.clone(),
                    })));
                }
            }
        }
        Ok(etag.to_string())
    }
}

#[async_trait]
impl Remote for S3Client {
    fn dialect(&self) -> Dialect {
        Dialect::S3
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            object_crc64: false,
            // Unsettled (no upload yet) reports neither: complete_multipart verifies in both modes anyway.
            object_crc64nvme: self.integrity() == Some(Integrity::Crc64Nvme),
            complete_with_part_subset: self.inner.complete_with_part_subset,
        }
    }

    fn endpoint_display(&self) -> String {
        self.inner.endpoint.display()
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), RemoteError> {
        let mut call = Call::new("CreateBucket", Method::PUT, bucket, None);
        if self.region() != DEFAULT_REGION {
            call = call.xml_body(xml::create_bucket_body(self.region()));
        }
        match self.execute(call, |_| Ok(())).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyExists") => {
                // Some servers answer this whoever owns it; if we can list it, it is ours to use.
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
        validate_bucket(bucket)?;
        check_key(key)?;
        let mode = self.resolve_integrity(bucket).await?;
        let mut call = Call::new("PutObject", Method::PUT, bucket, Some(key));
        call.headers = object_headers(options)?;
        let call = self.checksummed(call, body, mode).await?;
        let pre = call.prehash.unwrap_or(Prehash { len: 0, crc64nvme: 0, md5: None, sha256: None });
        self.execute(call, |reply| {
            let etag = Self::verify_upload(reply, pre, mode)?;
            let digest = reply.sent.ok_or_else(|| reply.bad("the request body was not sent completely"))?;
            Ok(PutResult { etag, digest, request_id: reply.request_id.clone(), callback: None })
        })
        .await
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, RemoteError> {
        let mut call = Call::new("HeadObject", Method::HEAD, bucket, Some(key));
        call.headers.insert("x-amz-checksum-mode", HeaderValue::from_static("ENABLED"));
        let result = self.execute(call, |reply| object_info(reply, key, response::content_length(reply)?)).await;
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
        match range {
            Some(r) => {
                check_range(&r)?;
                call.headers
                    .insert(http::header::RANGE, header_value("range", &format!("bytes={}-{}", r.first, r.last))?);
            }
            // A whole object comes with its checksum, which is checked here.
            None => {
                call.headers.insert("x-amz-checksum-mode", HeaderValue::from_static("ENABLED"));
            }
        }
        self.execute(call, |reply| {
            let len = reply.body.len() as u64;
            if reply.status == StatusCode::PARTIAL_CONTENT {
                let value = reply.header("content-range").ok_or_else(|| reply.bad("206 without Content-Range"))?;
                let (got, total) = response::parse_content_range(value)
                    .ok_or_else(|| reply.bad(format!("unreadable Content-Range {value:?}")))?;
                let fits = range.is_some_and(|want| got.first == want.first && got.last <= want.last);
                if !fits || got.len() != len {
                    return Err(reply.bad(format!(
                        "asked for bytes {range:?}, got Content-Range {value:?} with {len} bytes of body"
                    )));
                }
                let mut info = object_info(reply, key, total)?;
                // A checksum on a ranged answer describes the whole object, never this slice.
                info.crc64nvme = None;
                return Ok(GetResult { info, body: reply.body.clone(), content_range: Some((got, total)) });
            }
            let info = object_info(reply, key, len)?;
            if range.is_none() {
                if let Some(server) = info.crc64nvme {
                    let local = crate::checksum::crc64nvme(&reply.body);
                    if local != server {
                        return Err(RemoteError::ChecksumMismatch {
                            op: reply.op,
                            local,
                            server,
                            request_id: reply.request_id.clone(),
                        });
                    }
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
                format!("{} keys in one DeleteObjects call", keys.len()),
                "send at most 1000 keys per call",
            ));
        }
        for key in keys {
            check_key(key)?;
        }
        let mut call = Call::new("DeleteObjects", Method::POST, bucket, None)
            .query("delete", "")
            .xml_body(xml::delete_body(keys, true));
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
            call.headers = object_headers(replace)?;
            // If-None-Match means something else on a copy; a metadata change overwrites by design.
            call.headers.remove(http::header::IF_NONE_MATCH);
            call.headers.insert("x-amz-metadata-directive", HeaderValue::from_static("REPLACE"));
        }
        if let Some(etag) = &options.source_if_match {
            call.headers.insert("x-amz-copy-source-if-match", header_value("ETag", etag)?);
        }
        call.headers.insert("x-amz-copy-source", copy_source(bucket, source_key)?);
        call.read = ReadBody::Xml;
        self.execute(call, |reply| {
            let etag = reply.xml(|b| xml::parse_copy(b, "CopyObjectResult"))?;
            Ok(CopyResult { etag, crc64: None })
        })
        .await
    }

    async fn initiate_multipart(
        &self,
        bucket: &str,
        key: &str,
        options: &ObjectOptions,
    ) -> Result<String, RemoteError> {
        validate_bucket(bucket)?;
        check_key(key)?;
        let mode = self.resolve_integrity(bucket).await?;
        let mut call = Call::new("CreateMultipartUpload", Method::POST, bucket, Some(key)).query("uploads", "");
        call.headers = object_headers(options)?;
        // A conditional write is checked by Complete, not by Create.
        call.headers.remove(http::header::IF_NONE_MATCH);
        if mode == Integrity::Crc64Nvme {
            call.headers.insert("x-amz-checksum-algorithm", HeaderValue::from_static("CRC64NVME"));
            call.headers.insert("x-amz-checksum-type", HeaderValue::from_static("FULL_OBJECT"));
        }
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
        validate_bucket(bucket)?;
        check_key(key)?;
        let mode = self.resolve_integrity(bucket).await?;
        let call = Call::new("UploadPart", Method::PUT, bucket, Some(key))
            .query("partNumber", part_number.to_string())
            .query("uploadId", upload_id)
            .upload(upload_id, Some(part_number));
        let call = self.checksummed(call, body, mode).await?;
        let pre = call.prehash.unwrap_or(Prehash { len: 0, crc64nvme: 0, md5: None, sha256: None });
        self.execute(call, |reply| {
            let etag = Self::verify_upload(reply, pre, mode)?;
            let digest = reply.sent.ok_or_else(|| reply.bad("the request body was not sent completely"))?;
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
        call.headers.insert("x-amz-copy-source", copy_source(source_bucket, source_key)?);
        if let Some(r) = source_range {
            check_range(&r)?;
            call.headers
                .insert("x-amz-copy-source-range", header_value("range", &format!("bytes={}-{}", r.first, r.last))?);
        }
        call.read = ReadBody::Xml;
        self.execute(call, |reply| {
            let etag = reply.xml(|b| xml::parse_copy(b, "CopyPartResult"))?;
            Ok(CopyPartResult { part_number, etag, crc64: None })
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
        if options.callback.is_some() {
            return Err(no_callbacks());
        }
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
        validate_bucket(bucket)?;
        check_key(key)?;
        let mode = self.resolve_integrity(bucket).await?;
        let mut call = Call::new("CompleteMultipartUpload", Method::POST, bucket, Some(key))
            .query("uploadId", upload_id)
            .upload(upload_id, None)
            .xml_body(xml::complete_body(parts, mode == Integrity::Crc64Nvme));
        if let Some(acl) = options.acl.as_deref().filter(|a| *a != "default") {
            // S3 takes the ACL at Create; accepted here only as a check that it is one S3 knows.
            if !ACLS.contains(&acl) {
                return Err(RemoteError::invalid_input(
                    format!("unknown ACL {acl:?}"),
                    format!("use one of {}", ACLS.join(", ")),
                ));
            }
        }
        if options.forbid_overwrite {
            call.headers.insert(http::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        }
        call.read = ReadBody::Xml;
        match mode {
            Integrity::Crc64Nvme => {
                let expected = crc64nvme_fold(parts.iter().map(|p| (p.crc64nvme, p.size)));
                // The server checks the assembled object against this before it publishes anything.
                call.headers.insert(CHECKSUM_CRC64NVME, header_value("checksum", &xml::crc64_to_base64(expected))?);
                call.headers.insert("x-amz-checksum-type", HeaderValue::from_static("FULL_OBJECT"));
                let answer =
                    self.execute(call, |reply| Ok((reply.xml(xml::parse_complete)?, reply.request_id.clone()))).await?;
                let (done, request_id) = answer;
                let server = match done.crc64nvme {
                    Some(crc) => Some(crc),
                    None => self.head_object(bucket, key).await?.and_then(|i| i.crc64nvme),
                };
                match server {
                    Some(s) if s == expected => {}
                    Some(s) => {
                        return Err(RemoteError::ChecksumMismatch {
                            op: "CompleteMultipartUpload",
                            local: expected,
                            server: s,
                            request_id,
                        });
                    }
                    None => {
                        return Err(RemoteError::BadResponse {
                            op: "CompleteMultipartUpload",
                            detail: "the server did not report the object's CRC-64/NVME, so it cannot be verified"
                                .into(),
                            request_id,
                        });
                    }
                }
                Ok(CompleteResult {
                    etag: done.etag,
                    crc64: None,
                    crc64nvme: Some(expected),
                    request_id,
                    callback: None,
                })
            }
            Integrity::ContentMd5 => {
                let etags: Vec<&str> = parts.iter().map(|p| p.etag.as_str()).collect();
                let expected = multipart_etag(&etags).ok_or_else(|| {
                    RemoteError::invalid_input(
                        "a part's ETag is not an MD5, so the object cannot be verified with Content-MD5",
                        "use a server that reports MD5 ETags for parts (no SSE-KMS), or one that verifies CRC-64/NVME",
                    )
                })?;
                let (done, request_id) =
                    self.execute(call, |reply| Ok((reply.xml(xml::parse_complete)?, reply.request_id.clone()))).await?;
                if etag_hex(&done.etag) != expected {
                    return Err(RemoteError::DigestMismatch(Box::new(crate::remote::error::DigestMismatch {
                        op: "CompleteMultipartUpload",
                        what: "multipart ETag (MD5 of the part MD5s)",
                        local: expected,
                        server: done.etag,
                        request_id,
                    })));
                }
                Ok(CompleteResult {
                    etag: done.etag,
                    crc64: None,
                    crc64nvme: done.crc64nvme,
                    request_id,
                    callback: None,
                })
            }
        }
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
        // No `encoding-type=url`: SeaweedFS 4.48 answers `<EncodingType>url` with keys left unencoded, and
        // the keys we write are valid XML text anyway (no control characters).
        let mut call = Call::new("ListMultipartUploads", Method::GET, bucket, None)
            .query("uploads", "")
            .query_opt("prefix", request.prefix.as_deref())
            .query_opt("key-marker", request.key_marker.as_deref())
            .query_opt("upload-id-marker", request.upload_id_marker.as_deref())
            .query_opt("max-uploads", request.max_uploads);
        call.read = ReadBody::Xml;
        self.execute(call, |reply| reply.xml(xml::parse_list_uploads)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        // Two parts whose ETags SeaweedFS reported, and the object ETag it computed from them.
        let a = hex::encode(Md5::digest(b"part one"));
        let b = hex::encode(Md5::digest(b"part two"));
        let mut concat = Md5::digest(b"part one").to_vec();
        concat.extend_from_slice(&Md5::digest(b"part two"));
        let want = format!("{}-2", hex::encode(Md5::digest(&concat)));
        assert_eq!(multipart_etag(&[&format!("\"{a}\""), &b.to_uppercase()]), Some(want));
        assert_eq!(multipart_etag(&["\"not-an-md5\""]), None);
        assert_eq!(multipart_etag(&["\"abcd\""]), None);
    }

    #[test]
    fn integrity_modes_parse() {
        assert_eq!("auto".parse(), Ok(IntegrityMode::Auto));
        assert_eq!("CRC64NVME".parse(), Ok(IntegrityMode::Crc64Nvme));
        assert_eq!("md5".parse(), Ok(IntegrityMode::ContentMd5));
        assert!("sha1".parse::<IntegrityMode>().unwrap_err().contains("auto, crc64nvme or md5"));
    }

    #[test]
    fn object_headers_map_to_s3() {
        let options = ObjectOptions {
            content_type: Some("text/plain".into()),
            metadata: vec![("Author".into(), "alice".into())],
            acl: Some("public-read".into()),
            storage_class: Some("IA".into()),
            forbid_overwrite: true,
            ..Default::default()
        };
        let h = object_headers(&options).unwrap();
        assert_eq!(h["x-amz-meta-author"], "alice");
        assert_eq!(h["x-amz-acl"], "public-read");
        assert_eq!(h["x-amz-storage-class"], "STANDARD_IA");
        assert_eq!(h["if-none-match"], "*");
        let default_acl = ObjectOptions { acl: Some("default".into()), ..Default::default() };
        assert!(object_headers(&default_acl).unwrap().get("x-amz-acl").is_none());
        let bad = ObjectOptions { storage_class: Some("Cold".into()), ..Default::default() };
        assert!(object_headers(&bad).unwrap_err().to_string().contains("STANDARD_IA"));
        let big = ObjectOptions { metadata: vec![("k".into(), "v".repeat(3000))], ..Default::default() };
        assert!(object_headers(&big).unwrap_err().to_string().contains("2 KiB"));
    }

    #[test]
    fn error_answers_keep_ids_and_classify() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("RID"));
        h.insert(HOST_ID, HeaderValue::from_static("HID"));
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchUpload</Code><Message>gone</Message><RequestId>R2</RequestId></Error>";
        let e = service_error("ListParts", false, StatusCode::NOT_FOUND, &h, body, &Redactor::default());
        let s = e.service().unwrap();
        assert_eq!(
            (s.code.as_str(), s.request_id.as_deref(), s.host_id.as_deref()),
            ("NoSuchUpload", Some("R2"), Some("HID"))
        );
        assert!(e.is_no_such_upload());
        let e = service_error("HeadObject", true, StatusCode::NOT_FOUND, &h, b"", &Redactor::default());
        assert_eq!(e.code(), Some("NoSuchKey"));
        let e = service_error(
            "PutObject",
            false,
            StatusCode::BAD_GATEWAY,
            &h,
            b"<html>bad gateway</html>",
            &Redactor::default(),
        );
        assert!(e.is_retryable(), "{e}");
        let e = service_error("PutObject", false, StatusCode::NOT_FOUND, &h, b"<h1>nope</h1>", &Redactor::default());
        assert!(matches!(e, RemoteError::BadResponse { .. }), "{e}");
        let scrub = Redactor::new(["topsecret".to_string()]);
        let body = b"<Error><Code>SignatureDoesNotMatch</Code><Message>expected topsecret</Message></Error>";
        let e = service_error("PutObject", false, StatusCode::FORBIDDEN, &h, body, &scrub);
        assert!(!e.to_string().contains("topsecret") && e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }

    #[tokio::test]
    async fn prehash_matches_the_streamed_digest() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let body = Body::File(crate::remote::FileRange { file: Arc::new(f), offset: 7, len: 2_500_000 });
        let pre = prehash("UploadPart", &body, true, true).await.unwrap();
        let slice = &data[7..2_500_007];
        assert_eq!(pre.len, 2_500_000);
        assert_eq!(pre.crc64nvme, crate::checksum::crc64nvme(slice));
        assert_eq!(pre.md5, Some(Md5::digest(slice).into()));
        assert_eq!(pre.sha256.map(hex::encode), Some(crate::remote::s3::sign::sha256_hex(slice)));
        let short = Body::File(crate::remote::FileRange {
            file: match &body {
                Body::File(r) => r.file.clone(),
                _ => unreachable!(),
            },
            offset: 2_999_000,
            len: 5000,
        });
        let err = prehash("UploadPart", &short, false, false).await.unwrap_err();
        assert!(matches!(err, RemoteError::LocalRead { .. }) && err.to_string().contains("shrank"), "{err}");
        let empty = prehash("PutObject", &Body::Empty, true, false).await.unwrap();
        assert_eq!((empty.len, empty.crc64nvme), (0, 0));
        assert_eq!(empty.md5.map(hex::encode).as_deref(), Some("d41d8cd98f00b204e9800998ecf8427e"));
    }
}
