//! The OSS operations: request headers and bodies in, storage calls, OSS-shaped answers out.
//!
//! One file per family: [`bucket`] (service, buckets, versioning and lifecycle configuration), [`listing`]
//! (objects, versions, uploads), [`object`] (put, get, copy, delete, ACL, tags, with upload callbacks) and
//! [`multipart`]. This module holds the dispatch, the mapping of storage errors to OSS errors, and the
//! request helpers the families share.
//!
//! Storage calls are blocking (SQLite, fsync) and run on tokio's blocking pool through [`blocking`].
//! Validation that needs no data (part numbers, headers, bucket and upload existence) happens before a body
//! is read, so a doomed upload costs no disk writes.

mod bucket;
mod listing;
mod multipart;
mod object;

use base64::Engine as _;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{self, Body, RequestBody};
use super::callback::{self, Callback};
use super::context::{Ctx, Shared};
use super::error::OssError;
use super::request::Op;
use super::store::{ObjectMeta, ObjectRecord, Store, StoreError};
use super::tags;
use super::xml::XmlWriter;
use crate::remote::oss::sign::uri_encode;
use crate::timefmt;

/// OSS's single-request upload limit (PutObject, UploadPart).
pub const MAX_UPLOAD: u64 = 5 * 1024 * 1024 * 1024;
const MAX_XML_BODY: usize = 8 << 20;
const MAX_USER_META: usize = 8 * 1024;
/// The owner every bucket and object reports.
const OWNER_ID: &str = "1000000000000000";
const OWNER_NAME: &str = "ossmirror";

type OpResult = Result<Response<Body>, OssError>;

/// Run a storage call on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, OssError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(store_error),
        Err(_) => Err(OssError::internal()),
    }
}

fn store_error(e: StoreError) -> OssError {
    match e {
        StoreError::NoSuchBucket => {
            OssError::new(StatusCode::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist.")
        }
        StoreError::NoSuchKey => OssError::new(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."),
        StoreError::NoSuchVersion => {
            OssError::new(StatusCode::NOT_FOUND, "NoSuchVersion", "The specified version does not exist.")
                .with_ec("0012-00000203")
        }
        StoreError::DeleteMarker { version_id, addressed: false } => OssError::deleted_by_marker("", &version_id),
        StoreError::DeleteMarker { version_id, addressed: true } => OssError::version_is_delete_marker(&version_id),
        StoreError::NoSuchUpload => OssError::no_such_upload(""),
        StoreError::AlreadyExists => OssError::file_already_exists(),
        StoreError::BucketNotEmpty => {
            OssError::new(StatusCode::CONFLICT, "BucketNotEmpty", "The bucket you tried to delete is not empty.")
        }
        StoreError::InvalidPart { part_number, etag } => OssError::new(
            StatusCode::BAD_REQUEST,
            "InvalidPart",
            "One or more of the specified parts could not be found or the specified entity tag might not have \
             matched the part's entity tag.",
        )
        .with("PartNumber", part_number.to_string())
        .with("ETag", etag),
        StoreError::InvalidPartOrder => OssError::new(
            StatusCode::BAD_REQUEST,
            "InvalidPartOrder",
            "The list of parts was not in ascending order. Parts list must specified in order by part number.",
        ),
        StoreError::EntityTooSmall { part_number, size } => OssError::new(
            StatusCode::BAD_REQUEST,
            "EntityTooSmall",
            "Your proposed upload smaller than the minimum allowed size.",
        )
        .with_ec("0042-00000213")
        .with("PartNumber", part_number.to_string())
        .with("ProposedSize", size.to_string())
        .with("MinSizeAllowed", super::store::MIN_PART_SIZE.to_string()),
        StoreError::Rejected(e) => e,
        StoreError::Server(e) => e.into(),
    }
}

/// Fill in the names store errors do not carry.
fn named(mut e: OssError, ctx: &Ctx) -> OssError {
    let version = ctx.query.get("versionId").unwrap_or("");
    let renamed = match e.code.as_str() {
        "NoSuchBucket" if e.extra.is_empty() => OssError::no_such_bucket(ctx.bucket()),
        "NoSuchKey" if e.extra.iter().all(|(_, v)| v.is_empty()) => OssError::no_such_key(ctx.key()),
        "NoSuchVersion" if e.extra.is_empty() => OssError::no_such_version(ctx.key(), version),
        "NoSuchUpload" if e.extra.iter().all(|(_, v)| v.is_empty()) => {
            OssError::no_such_upload(ctx.query.get("uploadId").unwrap_or(""))
        }
        _ => return e,
    };
    let headers = std::mem::take(&mut e.headers);
    OssError { headers, ..renamed }
}

pub async fn dispatch(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let result = match ctx.op {
        Op::ListBuckets => bucket::list_buckets(shared, ctx).await,
        Op::PutBucket => bucket::put_bucket(shared, ctx).await,
        Op::DeleteBucket => bucket::delete_bucket(shared, ctx).await,
        Op::HeadBucket => bucket::head_bucket(shared, ctx).await,
        Op::GetBucketInfo => bucket::get_bucket_info(shared, ctx).await,
        Op::GetBucketLocation => bucket::get_bucket_location(shared, ctx).await,
        Op::GetBucketAcl => bucket::get_bucket_acl(shared, ctx).await,
        Op::PutBucketAcl => bucket::put_bucket_acl(shared, ctx).await,
        Op::GetBucketVersioning => bucket::get_bucket_versioning(shared, ctx).await,
        Op::PutBucketVersioning => bucket::put_bucket_versioning(shared, ctx, body).await,
        Op::GetBucketLifecycle => bucket::get_bucket_lifecycle(shared, ctx).await,
        Op::PutBucketLifecycle => bucket::put_bucket_lifecycle(shared, ctx, body).await,
        Op::DeleteBucketLifecycle => bucket::delete_bucket_lifecycle(shared, ctx).await,
        Op::ListObjects => listing::list_objects(shared, ctx, false).await,
        Op::ListObjectsV2 => listing::list_objects(shared, ctx, true).await,
        Op::ListObjectVersions => listing::list_versions(shared, ctx).await,
        Op::ListMultipartUploads => listing::list_uploads(shared, ctx).await,
        Op::DeleteMultipleObjects => object::delete_multiple(shared, ctx, body).await,
        Op::PutObject => object::put_object(shared, ctx, body).await,
        Op::CopyObject => object::copy_object(shared, ctx).await,
        Op::GetObject | Op::HeadObject | Op::GetObjectMeta => object::get_object(shared, ctx).await,
        Op::DeleteObject => object::delete_object(shared, ctx).await,
        Op::GetObjectAcl => object::get_object_acl(shared, ctx).await,
        Op::PutObjectAcl => object::put_object_acl(shared, ctx).await,
        Op::GetObjectTagging => object::get_object_tagging(shared, ctx).await,
        Op::PutObjectTagging => object::put_object_tagging(shared, ctx, body).await,
        Op::DeleteObjectTagging => object::delete_object_tagging(shared, ctx).await,
        Op::InitiateMultipartUpload => multipart::initiate(shared, ctx).await,
        Op::UploadPart => multipart::upload_part(shared, ctx, body).await,
        Op::UploadPartCopy => multipart::upload_part_copy(shared, ctx).await,
        Op::CompleteMultipartUpload => multipart::complete(shared, ctx, body).await,
        Op::AbortMultipartUpload => multipart::abort(shared, ctx).await,
        Op::ListParts => multipart::list_parts(shared, ctx).await,
        Op::Unknown => Err(OssError::method_not_allowed()),
    };
    result.map_err(|e| named(e, ctx))
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

fn xml_ok(xml: String) -> OpResult {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

fn empty_status(status: StatusCode) -> OpResult {
    Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .map_err(|_| OssError::internal())
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

fn header_bytes_to_string(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// Whether the request asked for `encoding-type=url`; any other value is an error.
fn url_encoding(ctx: &Ctx) -> Result<bool, OssError> {
    match ctx.query.non_empty("encoding-type") {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("url") => Ok(true),
        Some(v) => Err(OssError::invalid_argument_named("encoding-type", v, "The encoding-type must be url.")),
    }
}

/// A listed field under `encoding-type=url`: everything outside unreserved characters and `/` is
/// percent-encoded, so no literal `+` or space ever appears (decoders disagree about `+`).
fn enc(s: &str, url: bool) -> String {
    if url { uri_encode(s, true) } else { s.to_string() }
}

fn forbid_overwrite(ctx: &Ctx) -> Result<bool, OssError> {
    match ctx.header("x-oss-forbid-overwrite") {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(OssError::invalid_argument_named(
            "x-oss-forbid-overwrite",
            v,
            "x-oss-forbid-overwrite must be true or false.",
        )),
    }
}

fn valid_acl(name: &str, v: &str, allow_default: bool) -> Result<String, OssError> {
    match v {
        "private" | "public-read" | "public-read-write" => Ok(v.to_string()),
        "default" if allow_default => Ok(v.to_string()),
        _ => Err(OssError::invalid_argument_named(name, v, "no such acl")),
    }
}

fn object_acl(ctx: &Ctx) -> Result<Option<String>, OssError> {
    ctx.header("x-oss-object-acl").map(|v| valid_acl("x-oss-object-acl", v, true)).transpose()
}

fn storage_class(ctx: &Ctx) -> Result<Option<String>, OssError> {
    let Some(v) = ctx.header("x-oss-storage-class") else { return Ok(None) };
    const CLASSES: [&str; 5] = ["Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive"];
    CLASSES
        .iter()
        .find(|c| c.eq_ignore_ascii_case(v))
        .map(|c| Some(c.to_string()))
        .ok_or_else(|| OssError::invalid_argument_named("x-oss-storage-class", v, "Invalid storage class."))
}

/// Headers stored with an object and returned verbatim on GET/HEAD.
const STORED_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
    "x-oss-server-side-encryption",
    "x-oss-server-side-encryption-key-id",
    "x-oss-server-side-data-encryption",
];

/// Object metadata from PutObject / InitiateMultipartUpload / CopyObject(REPLACE) headers.
fn meta_from_headers(ctx: &Ctx) -> Result<ObjectMeta, OssError> {
    let mut headers = Vec::new();
    let mut user_bytes = 0usize;
    for name in STORED_HEADERS {
        if let Some(v) = ctx.headers.get(*name) {
            headers.push((name.to_string(), header_bytes_to_string(v)));
        }
    }
    if !headers.iter().any(|(n, _)| n == "content-type") {
        headers.push(("content-type".into(), "application/octet-stream".into()));
    }
    let mut metas: Vec<(String, String)> = ctx
        .headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-oss-meta-"))
        .map(|(n, v)| (n.as_str().to_string(), header_bytes_to_string(v)))
        .collect();
    metas.sort();
    for (n, v) in &metas {
        user_bytes += n.len() - "x-oss-meta-".len() + v.len();
    }
    if user_bytes > MAX_USER_META {
        return Err(OssError::invalid_argument("Your metadata headers exceed the maximum allowed metadata size.")
            .with_ec("0011-00000002"));
    }
    headers.extend(metas);
    check_sse(ctx)?;
    Ok(ObjectMeta {
        headers,
        acl: object_acl(ctx)?.unwrap_or_else(|| "default".into()),
        storage_class: storage_class(ctx)?.unwrap_or_else(|| "Standard".into()),
        tagging: request_tags(ctx)?,
    })
}

/// A configuration body (XML), checked against its `Content-MD5` when the client sent one.
async fn read_checked_body(ctx: &Ctx, body: &mut RequestBody) -> Result<Vec<u8>, OssError> {
    use md5::{Digest as _, Md5};
    let expected = content_md5(ctx)?;
    let data = body.read_to_vec(MAX_XML_BODY).await?;
    let actual: [u8; 16] = Md5::digest(&data).into();
    check_md5(expected, &actual)?;
    Ok(data)
}

/// `x-oss-tagging`, validated, in the stored form.
fn request_tags(ctx: &Ctx) -> Result<Option<String>, OssError> {
    match ctx.header("x-oss-tagging") {
        Some(v) => Ok(tags::encode(&tags::parse_header(v)?)),
        None => Ok(None),
    }
}

/// The binary MD5 the client announced, if any.
fn content_md5(ctx: &Ctx) -> Result<Option<[u8; 16]>, OssError> {
    let Some(v) = ctx.header("content-md5") else { return Ok(None) };
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .map(Some)
        .ok_or_else(OssError::invalid_digest)
}

fn check_md5(expected: Option<[u8; 16]>, actual: &[u8; 16]) -> Result<(), OssError> {
    match expected {
        Some(e) if &e != actual => Err(OssError::invalid_digest()),
        _ => Ok(()),
    }
}

fn declared_length(ctx: &Ctx) -> Option<u64> {
    ctx.header("content-length").and_then(|v| v.parse().ok())
}

/// Integer parameter: absent or empty means `default`; `0..=max` accepted.
fn int_param(ctx: &Ctx, name: &str, default: usize, max: usize) -> Result<usize, OssError> {
    match ctx.query.non_empty(name) {
        None => Ok(default),
        Some(v) => {
            v.parse::<usize>().ok().filter(|n| *n <= max).ok_or_else(|| {
                OssError::invalid_argument_named(name, v, format!("{name} must be between 0 and {max}."))
            })
        }
    }
}

/// A listing page size (`max-keys`, `max-parts`, `max-uploads`): at most 1000, and at least 1 — a page of
/// zero entries marked truncated has no marker to continue from, and clients would loop on it.
fn page_size(ctx: &Ctx, name: &str, default: usize) -> Result<usize, OssError> {
    int_param(ctx, name, default, 1000).map(|n| n.max(1))
}

/// The conditional headers of a GET/HEAD (`If-Match` …) or of a copy source (`x-oss-copy-source-if-match`
/// …), captured so they can be checked inside a storage transaction against the exact version used.
///
/// Precedence as RFC 7232 §6 (and S3) define it: `If-Unmodified-Since` counts only without `If-Match`,
/// `If-Modified-Since` only without `If-None-Match`. A failed match is 412; a "not modified" is 304 (OSS
/// answers 304 for the copy-source forms too, OSS-PROTOCOL.md §5.7).
struct Conditions {
    prefix: &'static str,
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<i64>,
    if_unmodified_since: Option<i64>,
}

impl Conditions {
    fn from_ctx(ctx: &Ctx, prefix: &'static str) -> Self {
        let text = |n: &str| ctx.header(&format!("{prefix}{n}")).map(str::to_string);
        let date =
            |n: &str| ctx.header(&format!("{prefix}{n}")).and_then(timefmt::parse_rfc1123).map(timefmt::unix_secs);
        Conditions {
            prefix,
            if_match: text("if-match"),
            if_none_match: text("if-none-match"),
            if_modified_since: date("if-modified-since"),
            if_unmodified_since: date("if-unmodified-since"),
        }
    }

    fn check(&self, etag: &str, mtime: i64) -> Result<(), OssError> {
        let matches = |list: &str| {
            list.split(',').map(|t| t.trim().trim_matches('"')).any(|t| t == "*" || t.eq_ignore_ascii_case(etag))
        };
        let name = |n: &str| {
            if self.prefix.is_empty() { n.to_string() } else { format!("{}{}", self.prefix, n.to_ascii_lowercase()) }
        };
        match &self.if_match {
            Some(list) if !matches(list) => return Err(OssError::precondition_failed(&name("If-Match"))),
            Some(_) => {}
            None => {
                if self.if_unmodified_since.is_some_and(|t| mtime > t) {
                    return Err(OssError::precondition_failed(&name("If-Unmodified-Since")));
                }
            }
        }
        match &self.if_none_match {
            Some(list) if matches(list) => return Err(OssError::not_modified()),
            Some(_) => {}
            None => {
                if self.if_modified_since.is_some_and(|t| mtime <= t) {
                    return Err(OssError::not_modified());
                }
            }
        }
        Ok(())
    }
}

/// The `versionId` parameter: absent, or letters and digits ([DOC: 0012-00000201, 0012-00000202]).
fn version_param(ctx: &Ctx) -> Result<Option<String>, OssError> {
    match ctx.query.get("versionId") {
        None => Ok(None),
        Some(v) => check_version_id(v).map(Some),
    }
}

fn check_version_id(v: &str) -> Result<String, OssError> {
    if v.is_empty() {
        return Err(OssError::invalid_argument_named("versionId", v, "The versionId must not be empty.")
            .with_ec("0012-00000201"));
    }
    if v.len() > 255 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(OssError::invalid_argument_named(
            "versionId",
            v,
            "Invalid version id specified: a version id has letters and digits only.",
        )
        .with_ec("0012-00000202"));
    }
    Ok(v.to_string())
}

/// `x-oss-version-id`, when the bucket reports versions.
fn with_version(b: http::response::Builder, version_id: Option<&str>) -> http::response::Builder {
    match version_id {
        Some(v) => b.header("x-oss-version-id", v),
        None => b,
    }
}

/// The server-side encryption headers stored with an object, echoed in the answers of the requests that
/// set them (PutObject, InitiateMultipartUpload, CompleteMultipartUpload, CopyObject).
fn with_sse(mut b: http::response::Builder, meta: &ObjectMeta) -> http::response::Builder {
    for name in SSE_HEADERS {
        if let Some(v) = meta.header(name)
            && let Ok(v) = HeaderValue::from_str(v)
        {
            b = b.header(*name, v);
        }
    }
    b
}

const SSE_HEADERS: &[&str] =
    &["x-oss-server-side-encryption", "x-oss-server-side-encryption-key-id", "x-oss-server-side-data-encryption"];

/// Validate the encryption headers as OSS does: `AES256`, `KMS` or `SM4`; a key id and `SM4` data
/// encryption only with `KMS` ([DOC: PutObject]; `InvalidEncryptionAlgorithmError` is OSS's code for an
/// unknown algorithm).
fn check_sse(ctx: &Ctx) -> Result<(), OssError> {
    let algorithm = ctx.header("x-oss-server-side-encryption");
    if let Some(a) = algorithm
        && !matches!(a, "AES256" | "KMS" | "SM4")
    {
        return Err(OssError::new(
            StatusCode::BAD_REQUEST,
            "InvalidEncryptionAlgorithmError",
            "The Encryption request you specified is not valid. Supported value: AES256/KMS/SM4.",
        )
        .with("ArgumentName", "x-oss-server-side-encryption")
        .with("ArgumentValue", a.to_string()));
    }
    for name in ["x-oss-server-side-encryption-key-id", "x-oss-server-side-data-encryption"] {
        if let Some(v) = ctx.header(name)
            && algorithm != Some("KMS")
        {
            return Err(OssError::invalid_argument_named(
                name,
                v,
                format!("{name} can only be used with x-oss-server-side-encryption: KMS."),
            ));
        }
    }
    if let Some(v) = ctx.header("x-oss-server-side-data-encryption")
        && v != "SM4"
    {
        return Err(OssError::invalid_argument_named(
            "x-oss-server-side-data-encryption",
            v,
            "x-oss-server-side-data-encryption must be SM4.",
        ));
    }
    Ok(())
}

/// `x-oss-traffic-limit` (header, or query parameter of a presigned URL): bits per second, 245760
/// (30 KB/s) to 838860800 (100 MB/s) as OSS documents it. Accepted and validated; the server does not
/// throttle.
fn check_traffic_limit(ctx: &Ctx) -> Result<(), OssError> {
    const MIN: u64 = 245_760;
    const MAX: u64 = 838_860_800;
    let Some(v) = ctx.header("x-oss-traffic-limit").or_else(|| ctx.query.get("x-oss-traffic-limit")) else {
        return Ok(());
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(()),
        _ => Err(OssError::invalid_argument_named(
            "x-oss-traffic-limit",
            v,
            format!("x-oss-traffic-limit must be an integer from {MIN} to {MAX} (bit/s)."),
        )),
    }
}

/// The upload callback a PutObject or CompleteMultipartUpload asks for, validated before anything is
/// stored.
fn request_callback(ctx: &Ctx) -> Result<Option<Callback>, OssError> {
    let callback = ctx.header("x-oss-callback").or_else(|| ctx.query.get("callback"));
    let vars = ctx.header("x-oss-callback-var").or_else(|| ctx.query.get("callback-var"));
    Callback::from_request(callback, vars)
}

/// Finish an upload's answer: without a callback, `builder` with `body`; with one, perform it and answer
/// 200 with the callback server's JSON, or 203 CallbackFailed (the object is stored either way).
async fn answer_upload(
    shared: &Shared,
    ctx: &Ctx,
    builder: http::response::Builder,
    body: (Option<&'static str>, String),
    callback: Option<Callback>,
    record: &ObjectRecord,
) -> OpResult {
    let (content_type, text) = body;
    let Some(callback) = callback else {
        let mut b = builder.header(header::CONTENT_LENGTH, text.len().to_string());
        if let Some(t) = content_type {
            b = b.header(header::CONTENT_TYPE, t);
        }
        return b
            .body(if text.is_empty() { body::empty() } else { body::full(text) })
            .map_err(|_| OssError::internal());
    };
    let md5 = (record.object_type == "Normal")
        .then(|| hex::decode(&record.etag).ok())
        .flatten()
        .map(|d| base64::engine::general_purpose::STANDARD.encode(d));
    let client_ip = ctx.peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let uploaded = callback::Uploaded {
        bucket: ctx.bucket(),
        key: ctx.key(),
        etag: &record.etag,
        size: record.size,
        mime_type: record.meta.header("content-type").unwrap_or(""),
        crc64: record.crc64,
        content_md5: md5.as_deref(),
        request_id: &ctx.request_id,
        operation: ctx.op.name(),
        client_ip: &client_ip,
    };
    match callback.perform(&shared.callback_client, &uploaded, shared.allow_remote_callbacks).await {
        callback::Outcome::Answered(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, json.len().to_string())
            .body(body::full(json))
            .map_err(|_| OssError::internal()),
        callback::Outcome::Failed(message) => {
            let e = OssError::new(StatusCode::NON_AUTHORITATIVE_INFORMATION, "CallbackFailed", message);
            let xml = e.to_xml(&ctx.request_id, &ctx.host);
            builder
                .status(StatusCode::NON_AUTHORITATIVE_INFORMATION)
                .header("x-oss-ec", e.ec)
                .header(header::CONTENT_TYPE, "application/xml")
                .header(header::CONTENT_LENGTH, xml.len().to_string())
                .body(body::full(xml))
                .map_err(|_| OssError::internal())
        }
    }
}

async fn require_bucket(store: &Store, bucket: &str) -> Result<(), OssError> {
    let (s, b) = (store.clone(), bucket.to_string());
    match blocking(move || s.bucket(&b)).await? {
        Some(_) => Ok(()),
        None => Err(OssError::no_such_bucket(bucket)),
    }
}

fn owner(w: &mut XmlWriter) {
    w.start("Owner").elem("ID", OWNER_ID).elem("DisplayName", OWNER_NAME).end();
}

fn location(shared: &Shared) -> String {
    format!("oss-{}", shared.region)
}
