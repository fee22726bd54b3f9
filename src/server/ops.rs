//! The OSS operations: request headers and bodies in, storage calls, OSS-shaped answers out.
//!
//! Storage calls are blocking (SQLite, fsync) and run on tokio's blocking pool through [`blocking`].
//! Validation that needs no data (part numbers, headers, bucket and upload existence) happens before a body
//! is read, so a doomed upload costs no disk writes.

use std::collections::HashSet;

use base64::Engine as _;
use http::{HeaderValue, Response, StatusCode, header};
use md5::{Digest as _, Md5};

use super::body::{self, Body, RequestBody, digest_pieces, receive_blob, stream_pieces};
use super::context::{Ctx, Shared};
use super::error::OssError;
use super::request::{Op, check_key, form_decode, valid_bucket_name};
use super::store::{
    ListEntry, ObjectMeta, ObjectRecord, PartContent, PartSelection, Store, StoreError, UploadEntry, slice_manifest,
};
use super::xml::{self, XmlWriter};
use crate::remote::oss::sign::uri_encode;
use crate::timefmt;

/// OSS's single-request upload limit (PutObject, UploadPart).
pub const MAX_UPLOAD: u64 = 5 * 1024 * 1024 * 1024;
const MAX_XML_BODY: usize = 8 << 20;
const MAX_DELETE_KEYS: usize = 1000;
const MAX_PART_NUMBER: u32 = 10_000;
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
fn named(e: OssError, ctx: &Ctx) -> OssError {
    match e.code.as_str() {
        "NoSuchBucket" if e.extra.is_empty() => OssError::no_such_bucket(ctx.bucket()),
        "NoSuchKey" if e.extra.is_empty() => OssError::no_such_key(ctx.key()),
        "NoSuchUpload" if e.extra.iter().all(|(_, v)| v.is_empty()) => {
            OssError::no_such_upload(ctx.query.get("uploadId").unwrap_or(""))
        }
        _ => e,
    }
}

pub async fn dispatch(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let result = match ctx.op {
        Op::ListBuckets => list_buckets(shared, ctx).await,
        Op::PutBucket => put_bucket(shared, ctx).await,
        Op::DeleteBucket => delete_bucket(shared, ctx).await,
        Op::HeadBucket => head_bucket(shared, ctx).await,
        Op::GetBucketInfo => get_bucket_info(shared, ctx).await,
        Op::GetBucketLocation => get_bucket_location(shared, ctx).await,
        Op::GetBucketAcl => get_bucket_acl(shared, ctx).await,
        Op::PutBucketAcl => put_bucket_acl(shared, ctx).await,
        Op::ListObjects => list_objects(shared, ctx, false).await,
        Op::ListObjectsV2 => list_objects(shared, ctx, true).await,
        Op::ListMultipartUploads => list_uploads(shared, ctx).await,
        Op::DeleteMultipleObjects => delete_multiple(shared, ctx, body).await,
        Op::PutObject => put_object(shared, ctx, body).await,
        Op::CopyObject => copy_object(shared, ctx).await,
        Op::GetObject | Op::HeadObject | Op::GetObjectMeta => get_object(shared, ctx).await,
        Op::DeleteObject => delete_object(shared, ctx).await,
        Op::GetObjectAcl => get_object_acl(shared, ctx).await,
        Op::PutObjectAcl => put_object_acl(shared, ctx).await,
        Op::InitiateMultipartUpload => initiate(shared, ctx).await,
        Op::UploadPart => upload_part(shared, ctx, body).await,
        Op::UploadPartCopy => upload_part_copy(shared, ctx).await,
        Op::CompleteMultipartUpload => complete(shared, ctx, body).await,
        Op::AbortMultipartUpload => abort(shared, ctx).await,
        Op::ListParts => list_parts(shared, ctx).await,
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
    Ok(ObjectMeta {
        headers,
        acl: object_acl(ctx)?.unwrap_or_else(|| "default".into()),
        storage_class: storage_class(ctx)?.unwrap_or_else(|| "Standard".into()),
        tagging: ctx.header("x-oss-tagging").map(str::to_string),
    })
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

fn part_number(ctx: &Ctx) -> Result<u32, OssError> {
    let raw = ctx.query.get("partNumber").unwrap_or("");
    raw.parse::<u32>().ok().filter(|n| (1..=MAX_PART_NUMBER).contains(n)).ok_or_else(|| {
        OssError::invalid_argument_named(
            "partNumber",
            raw,
            "Part number must be an integer between 1 and 10000, inclusive.",
        )
    })
}

fn upload_id(ctx: &Ctx) -> Result<String, OssError> {
    match ctx.query.get("uploadId") {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(OssError::no_such_upload("")),
    }
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

/// Evaluate If-Match / If-None-Match / If-Modified-Since / If-Unmodified-Since (or their copy-source forms).
fn check_conditions(ctx: &Ctx, prefix: &str, etag: &str, mtime: i64, none_match_is_304: bool) -> Result<(), OssError> {
    let matches = |list: &str| {
        list.split(',').map(|t| t.trim().trim_matches('"')).any(|t| t == "*" || t.eq_ignore_ascii_case(etag))
    };
    let date =
        |name: &str| ctx.header(&format!("{prefix}{name}")).and_then(timefmt::parse_rfc1123).map(timefmt::unix_secs);
    if let Some(list) = ctx.header(&format!("{prefix}if-match"))
        && !matches(list)
    {
        return Err(OssError::precondition_failed("If-Match"));
    }
    if let Some(t) = date("if-unmodified-since")
        && mtime > t
    {
        return Err(OssError::precondition_failed("If-Unmodified-Since"));
    }
    let not_modified = |cond: &str| {
        if none_match_is_304 { OssError::not_modified() } else { OssError::precondition_failed(cond) }
    };
    if let Some(list) = ctx.header(&format!("{prefix}if-none-match"))
        && matches(list)
    {
        return Err(not_modified("If-None-Match"));
    }
    if let Some(t) = date("if-modified-since")
        && mtime <= t
    {
        return Err(not_modified("If-Modified-Since"));
    }
    Ok(())
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

// ---------------------------------------------------------------------------------------------------------
// Service and buckets

async fn list_buckets(shared: &Shared, ctx: &Ctx) -> OpResult {
    let store = shared.store.clone();
    let buckets = blocking(move || store.list_buckets()).await?;
    let mut w = XmlWriter::new("ListAllMyBucketsResult");
    owner(&mut w);
    w.start("Buckets");
    for b in buckets {
        w.start("Bucket")
            .elem("CreationDate", &timefmt::xml_date(timefmt::from_unix_secs(b.created)))
            .elem("ExtranetEndpoint", &ctx.host)
            .elem("IntranetEndpoint", &ctx.host)
            .elem("Location", &location(shared))
            .elem("Name", &b.name)
            .elem("Region", &shared.region)
            .elem("StorageClass", "Standard")
            .end();
    }
    w.end();
    xml_ok(w.finish())
}

async fn put_bucket(shared: &Shared, ctx: &Ctx) -> OpResult {
    let acl = match ctx.header("x-oss-acl") {
        Some(v) => valid_acl("x-oss-acl", v, false)?,
        None => "private".to_string(),
    };
    let (store, bucket, now) = (shared.store.clone(), ctx.bucket().to_string(), ctx.now_secs());
    // Creating a bucket this server already has is accepted: there is a single owner.
    blocking(move || store.create_bucket(&bucket, &acl, now)).await?;
    empty_status(StatusCode::OK)
}

async fn delete_bucket(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.delete_bucket(&bucket)).await?;
    empty_status(StatusCode::NO_CONTENT)
}

async fn head_bucket(shared: &Shared, ctx: &Ctx) -> OpResult {
    require_bucket(&shared.store, ctx.bucket()).await?;
    empty_status(StatusCode::OK)
}

async fn bucket_record(shared: &Shared, ctx: &Ctx) -> Result<super::store::BucketRecord, OssError> {
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.bucket(&bucket)).await?.ok_or_else(|| OssError::no_such_bucket(ctx.bucket()))
}

async fn get_bucket_info(shared: &Shared, ctx: &Ctx) -> OpResult {
    let b = bucket_record(shared, ctx).await?;
    let mut w = XmlWriter::new("BucketInfo");
    w.start("Bucket")
        .elem("AccessMonitor", "Disabled")
        .elem("CreationDate", &timefmt::xml_date(timefmt::from_unix_secs(b.created)))
        .elem("ExtranetEndpoint", &ctx.host)
        .elem("IntranetEndpoint", &ctx.host)
        .elem("Location", &location(shared))
        .elem("StorageClass", "Standard")
        .elem("TransferAcceleration", "Disabled")
        .elem("CrossRegionReplication", "Disabled")
        .elem("DataRedundancyType", "LRS")
        .elem("Name", &b.name)
        .elem("ResourceGroupId", "rg-default")
        .elem("Comment", "")
        .elem("Versioning", "");
    owner(&mut w);
    w.start("AccessControlList").elem("Grant", &b.acl).end();
    w.start("ServerSideEncryptionRule").elem("SSEAlgorithm", "None").end();
    w.start("BucketPolicy").elem("LogBucket", "").elem("LogPrefix", "").end();
    xml_ok(w.finish())
}

async fn get_bucket_location(shared: &Shared, ctx: &Ctx) -> OpResult {
    bucket_record(shared, ctx).await?;
    // `<LocationConstraint>oss-cn-hangzhou</LocationConstraint>`: a root with text only.
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint>{}</LocationConstraint>",
        xml::escape(&location(shared))
    );
    xml_ok(xml)
}

fn acl_policy(grant: &str) -> String {
    let mut w = XmlWriter::new("AccessControlPolicy");
    owner(&mut w);
    w.start("AccessControlList").elem("Grant", grant).end();
    w.finish()
}

async fn get_bucket_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let b = bucket_record(shared, ctx).await?;
    xml_ok(acl_policy(&b.acl))
}

async fn put_bucket_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let acl = valid_acl("x-oss-acl", ctx.header("x-oss-acl").unwrap_or(""), false)?;
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.set_bucket_acl(&bucket, &acl)).await?;
    empty_status(StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------------------
// Listing

fn contents(w: &mut XmlWriter, o: &ObjectRecord, url: bool, with_owner: bool) {
    w.start("Contents")
        .elem("Key", &enc(&o.key, url))
        .elem("LastModified", &timefmt::xml_date(timefmt::from_unix_secs(o.mtime)))
        .elem("ETag", &quoted(&o.etag))
        .elem("Type", &o.object_type)
        .elem("Size", &o.size.to_string())
        .elem("StorageClass", &o.meta.storage_class);
    if with_owner {
        owner(w);
    }
    w.end();
}

/// ListObjects (v1) and ListObjectsV2. The v2 continuation token is the hex of the last entry returned,
/// opaque to clients and free of characters that need escaping.
async fn list_objects(shared: &Shared, ctx: &Ctx, v2: bool) -> OpResult {
    let url = url_encoding(ctx)?;
    let prefix = ctx.query.non_empty("prefix").unwrap_or("").to_string();
    let delimiter = ctx.query.non_empty("delimiter").map(str::to_string);
    let max = page_size(ctx, "max-keys", 100)?;
    let token = ctx.query.non_empty("continuation-token");
    let start_after = ctx.query.non_empty("start-after");
    let marker = ctx.query.non_empty("marker");
    let after: Option<String> = if v2 {
        match token {
            Some(t) => Some(hex::decode(t).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
                OssError::invalid_argument_named("continuation-token", t, "Invalid continuation token.")
            })?),
            None => start_after.map(str::to_string),
        }
    } else {
        marker.map(str::to_string)
    };
    let fetch_owner = match ctx.query.non_empty("fetch-owner") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(OssError::invalid_argument_named("fetch-owner", v, "fetch-owner must be true or false."));
        }
    };

    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    let (p, d, a) = (prefix.clone(), delimiter.clone(), after.clone());
    let page = blocking(move || store.list_objects(&bucket, &p, d.as_deref(), a.as_deref(), max)).await?;

    let last = page.entries.last().map(|e| match e {
        ListEntry::Object(o) => o.key.clone(),
        ListEntry::Prefix(p) => p.clone(),
    });
    let mut w = XmlWriter::new("ListBucketResult");
    w.elem("Name", ctx.bucket()).elem("Prefix", &enc(&prefix, url));
    if v2 {
        if let Some(t) = token {
            w.elem("ContinuationToken", &enc(t, url));
        }
        if let Some(s) = start_after {
            w.elem("StartAfter", &enc(s, url));
        }
    } else {
        w.elem("Marker", &enc(marker.unwrap_or(""), url));
    }
    w.elem("MaxKeys", &max.to_string()).elem("Delimiter", &enc(delimiter.as_deref().unwrap_or(""), url));
    if url {
        w.elem("EncodingType", "url");
    }
    w.elem("IsTruncated", if page.truncated { "true" } else { "false" });
    if page.truncated
        && let Some(last) = &last
    {
        if v2 {
            w.elem("NextContinuationToken", &hex::encode(last.as_bytes()));
        } else {
            w.elem("NextMarker", &enc(last, url));
        }
    }
    if v2 {
        w.elem("KeyCount", &page.entries.len().to_string());
    }
    for e in &page.entries {
        if let ListEntry::Object(o) = e {
            contents(&mut w, o, url, !v2 || fetch_owner);
        }
    }
    for e in &page.entries {
        if let ListEntry::Prefix(p) = e {
            w.start("CommonPrefixes").elem("Prefix", &enc(p, url)).end();
        }
    }
    xml_ok(w.finish())
}

async fn list_uploads(shared: &Shared, ctx: &Ctx) -> OpResult {
    let url = url_encoding(ctx)?;
    let prefix = ctx.query.non_empty("prefix").unwrap_or("").to_string();
    let delimiter = ctx.query.non_empty("delimiter").map(str::to_string);
    let key_marker = ctx.query.non_empty("key-marker").map(str::to_string);
    // The upload-id marker only means something with a key marker.
    let upload_id_marker = key_marker.as_ref().and(ctx.query.non_empty("upload-id-marker")).map(str::to_string);
    let max = page_size(ctx, "max-uploads", 1000)?;

    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    let (p, d, km, um) = (prefix.clone(), delimiter.clone(), key_marker.clone(), upload_id_marker.clone());
    let page =
        blocking(move || store.list_uploads(&bucket, &p, d.as_deref(), km.as_deref(), um.as_deref(), max)).await?;

    let mut w = XmlWriter::new("ListMultipartUploadsResult");
    w.elem("Bucket", ctx.bucket())
        .elem("KeyMarker", &enc(key_marker.as_deref().unwrap_or(""), url))
        .elem("UploadIdMarker", upload_id_marker.as_deref().unwrap_or(""));
    let (next_key, next_id) = match page.entries.last() {
        Some(UploadEntry::Upload(u)) if page.truncated => (u.key.clone(), u.upload_id.clone()),
        Some(UploadEntry::Prefix(p)) if page.truncated => (p.clone(), String::new()),
        _ => (String::new(), String::new()),
    };
    w.elem("NextKeyMarker", &enc(&next_key, url))
        .elem("NextUploadIdMarker", &next_id)
        .elem("Delimiter", &enc(delimiter.as_deref().unwrap_or(""), url))
        .elem("Prefix", &enc(&prefix, url))
        .elem("MaxUploads", &max.to_string())
        .elem("IsTruncated", if page.truncated { "true" } else { "false" });
    if url {
        w.elem("EncodingType", "url");
    }
    for e in &page.entries {
        if let UploadEntry::Upload(u) = e {
            w.start("Upload")
                .elem("Key", &enc(&u.key, url))
                .elem("UploadId", &u.upload_id)
                .elem("StorageClass", &u.meta.storage_class)
                .elem("Initiated", &timefmt::xml_date(timefmt::from_unix_secs(u.initiated)))
                .end();
        }
    }
    for e in &page.entries {
        if let UploadEntry::Prefix(p) = e {
            w.start("CommonPrefixes").elem("Prefix", &enc(p, url)).end();
        }
    }
    xml_ok(w.finish())
}

// ---------------------------------------------------------------------------------------------------------
// Objects

async fn put_object(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let forbid = forbid_overwrite(ctx)?;
    let meta = meta_from_headers(ctx)?;
    let expected_md5 = content_md5(ctx)?;
    if declared_length(ctx).is_some_and(|n| n > MAX_UPLOAD) {
        return Err(OssError::entity_too_large("5 GB"));
    }
    require_bucket(&shared.store, ctx.bucket()).await?;
    let blob = receive_blob(&shared.store, body, MAX_UPLOAD).await?;
    check_md5(expected_md5, &blob.md5)?;
    let md5 = blob.md5;
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let record = blocking(move || store.put_object(&bucket, &key, blob, meta, forbid, now)).await?;
    tracing::info!(size = record.size, "object stored");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::ETAG, quoted(&record.etag))
        .header("x-oss-hash-crc64ecma", record.crc64.unwrap_or(0).to_string())
        .header("content-md5", base64::engine::general_purpose::STANDARD.encode(md5))
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .map_err(|_| OssError::internal())
}

/// Parse `bytes=…` against `size`: `Ok(Some((first, last)))` for a 206, `Ok(None)` for the whole object
/// (legacy OSS ignores an invalid range), `Err` only under `x-oss-range-behavior: standard`.
fn parse_range(spec: &str, size: u64, standard: bool) -> Result<Option<(u64, u64)>, OssError> {
    let Some(ranges) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    // OSS serves only the first of several ranges.
    let first = ranges.split(',').next().unwrap_or("").trim();
    let Some((a, b)) = first.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let unsatisfiable = || if standard { Err(OssError::invalid_range()) } else { Ok(None) };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ok(None),
        (true, false) => {
            let Some(n) = num(b) else { return Ok(None) };
            if n == 0 || size == 0 {
                return unsatisfiable();
            }
            if n > size {
                return if standard { Ok(Some((0, size - 1))) } else { Ok(None) };
            }
            Ok(Some((size - n, size - 1)))
        }
        (false, true) => {
            let Some(first) = num(a) else { return Ok(None) };
            if first >= size {
                return unsatisfiable();
            }
            Ok(Some((first, size - 1)))
        }
        (false, false) => {
            let (Some(first), Some(last)) = (num(a), num(b)) else { return Ok(None) };
            if first > last {
                return Ok(None);
            }
            if first >= size {
                return unsatisfiable();
            }
            if last >= size {
                return if standard { Ok(Some((first, size - 1))) } else { Ok(None) };
            }
            Ok(Some((first, last)))
        }
    }
}

fn object_headers(mut b: http::response::Builder, o: &ObjectRecord, meta_only: bool) -> http::response::Builder {
    b = b
        .header(header::ETAG, quoted(&o.etag))
        .header(header::LAST_MODIFIED, timefmt::rfc1123(timefmt::from_unix_secs(o.mtime)));
    if let Some(crc) = o.crc64 {
        b = b.header("x-oss-hash-crc64ecma", crc.to_string());
    }
    if meta_only {
        return b;
    }
    b = b
        .header("x-oss-object-type", &o.object_type)
        .header("x-oss-storage-class", &o.meta.storage_class)
        .header(header::ACCEPT_RANGES, "bytes");
    if o.object_type == "Normal"
        && let Ok(md5) = hex::decode(&o.etag)
        && md5.len() == 16
    {
        b = b.header("content-md5", base64::engine::general_purpose::STANDARD.encode(md5));
    }
    if let Some(t) = &o.meta.tagging {
        b = b.header("x-oss-tagging-count", t.split('&').filter(|p| !p.is_empty()).count().to_string());
    }
    for (name, value) in &o.meta.headers {
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
            b = b.header(name.as_str(), v);
        }
    }
    b
}

/// GetObject, HeadObject and GetObjectMeta.
async fn get_object(shared: &Shared, ctx: &Ctx) -> OpResult {
    let is_get = ctx.op == Op::GetObject;
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    let (record, pin) = if is_get {
        let (r, pin) = blocking(move || store.open_object(&bucket, &key)).await?;
        (r, Some(pin))
    } else {
        (blocking(move || store.head_object(&bucket, &key)).await?, None)
    };
    let conditional = check_conditions(ctx, "", &record.etag, record.mtime, true);
    if let Err(e) = conditional {
        if e.status == StatusCode::NOT_MODIFIED {
            return object_headers(Response::builder().status(StatusCode::NOT_MODIFIED), &record, true)
                .header(header::CONTENT_LENGTH, "0")
                .body(body::empty())
                .map_err(|_| OssError::internal());
        }
        return Err(e);
    }
    let meta_only = ctx.op == Op::GetObjectMeta;
    let mut range = None;
    if is_get && let Some(spec) = ctx.header("range") {
        let standard = ctx.header("x-oss-range-behavior").is_some_and(|v| v.eq_ignore_ascii_case("standard"));
        range = parse_range(spec, record.size, standard)?;
    }
    let mut builder = object_headers(Response::builder(), &record, meta_only);
    if is_get {
        // response-* parameters override the stored headers on a GET.
        for (param, name) in [
            ("response-content-type", "content-type"),
            ("response-content-language", "content-language"),
            ("response-expires", "expires"),
            ("response-cache-control", "cache-control"),
            ("response-content-disposition", "content-disposition"),
            ("response-content-encoding", "content-encoding"),
        ] {
            if let Some(v) = ctx.query.non_empty(param)
                && let Ok(v) = HeaderValue::from_str(v)
                && let Some(h) = builder.headers_mut()
            {
                h.insert(name, v);
            }
        }
    }
    let (status, first, len) = match range {
        Some((first, last)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{}", record.size));
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        None => (StatusCode::OK, 0, record.size),
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, len.to_string());
    let resp_body = match pin {
        Some(pin) if len > 0 => stream_pieces(shared.store.clone(), slice_manifest(&record.manifest, first, len), pin),
        _ => body::empty(),
    };
    builder.body(resp_body).map_err(|_| OssError::internal())
}

async fn delete_object(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    blocking(move || store.delete_object(&bucket, &key)).await?;
    empty_status(StatusCode::NO_CONTENT)
}

async fn delete_multiple(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let url = url_encoding(ctx)?;
    let Some(expected) = content_md5(ctx)? else {
        return Err(OssError::new(StatusCode::BAD_REQUEST, "MissingArgument", "Missing required header: Content-MD5.")
            .with_ec("0016-00000606"));
    };
    require_bucket(&shared.store, ctx.bucket()).await?;
    let data = body.read_to_vec(MAX_XML_BODY).await?;
    let actual: [u8; 16] = Md5::digest(&data).into();
    check_md5(Some(expected), &actual)?;
    let root = xml::parse(&data).map_err(|_| OssError::malformed_xml())?;
    if root.name != "Delete" {
        return Err(OssError::malformed_xml());
    }
    let quiet = match root.child_text("Quiet").map(str::trim) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(OssError::malformed_xml().with_ec("0016-00000610")),
    };
    let mut keys = Vec::new();
    for obj in root.children_named("Object") {
        match obj.child_text("Key") {
            Some(k) if !k.is_empty() => {
                check_key(k)?;
                keys.push(k.to_string());
            }
            _ => return Err(OssError::malformed_xml().with_ec("0016-00000613")),
        }
    }
    if keys.is_empty() {
        return Err(OssError::malformed_xml().with_ec("0016-00000615"));
    }
    if keys.len() > MAX_DELETE_KEYS {
        return Err(OssError::malformed_xml()
            .with("Reason", format!("At most {MAX_DELETE_KEYS} objects can be deleted per request.")));
    }
    let (store, bucket, ks) = (shared.store.clone(), ctx.bucket().to_string(), keys.clone());
    blocking(move || store.delete_objects(&bucket, &ks)).await?;
    if quiet {
        return empty_status(StatusCode::OK);
    }
    let mut w = XmlWriter::new("DeleteResult");
    if url {
        w.elem("EncodingType", "url");
    }
    // Like S3, a key that did not exist is reported as deleted (UNCONFIRMED for OSS).
    let mut seen = HashSet::new();
    for k in &keys {
        if seen.insert(k) {
            w.start("Deleted").elem("Key", &enc(k, url)).end();
        }
    }
    xml_ok(w.finish())
}

/// `x-oss-copy-source: /bucket/key[?versionId=…]`, form-decoded (go-v1 sends a space as `+`).
fn copy_source(ctx: &Ctx) -> Result<(String, String), OssError> {
    let raw = ctx.header("x-oss-copy-source").unwrap_or("");
    let bad = || {
        OssError::invalid_argument_named(
            "x-oss-copy-source",
            raw,
            "Copy Source must mention the source bucket and key: /sourcebucket/sourcekey.",
        )
    };
    let path = raw.split_once('?').map(|(p, _)| p).unwrap_or(raw);
    let decoded = form_decode(path).ok_or_else(bad)?;
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
    let (bucket, key) = decoded.split_once('/').ok_or_else(bad)?;
    if !valid_bucket_name(bucket) || key.is_empty() {
        return Err(bad());
    }
    check_key(key)?;
    Ok((bucket.to_string(), key.to_string()))
}

async fn copy_object(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (src_bucket, src_key) = copy_source(ctx)?;
    let forbid = forbid_overwrite(ctx)?;
    let replace = match ctx.header("x-oss-metadata-directive") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("COPY") => false,
        Some(v) if v.eq_ignore_ascii_case("REPLACE") => true,
        Some(v) => {
            return Err(OssError::invalid_argument_named(
                "x-oss-metadata-directive",
                v,
                "x-oss-metadata-directive must be COPY or REPLACE.",
            ));
        }
    };
    let new_meta = meta_from_headers(ctx)?;
    let acl = object_acl(ctx)?;
    let class = storage_class(ctx)?;
    // Conditions are evaluated inside the storage transaction, against the exact source being copied.
    let cond = CopyConditions::from_ctx(ctx);
    let (store, dst_bucket, dst_key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let (sb, sk) = (src_bucket.clone(), src_key.clone());
    let record = blocking(move || {
        store.copy_object(&sb, &sk, &dst_bucket, &dst_key, forbid, now, |src| {
            cond.check(&src.etag, src.mtime)?;
            let mut meta = if replace { new_meta } else { src.meta.clone() };
            meta.acl = acl.unwrap_or_else(|| "default".into());
            if let Some(c) = class {
                meta.storage_class = c;
            }
            Ok(meta)
        })
    })
    .await
    .map_err(|e| match e.code.as_str() {
        "NoSuchKey" if e.extra.is_empty() => OssError::no_such_key(&src_key),
        "NoSuchBucket" if e.extra.is_empty() => OssError::no_such_bucket(&src_bucket),
        _ => e,
    })?;
    let mut w = XmlWriter::new("CopyObjectResult");
    w.elem("LastModified", &timefmt::xml_date(timefmt::from_unix_secs(record.mtime)))
        .elem("ETag", &quoted(&record.etag));
    let xml = w.finish();
    // The ETag also travels as a header: oss2 reads a copy's ETag from there.
    let mut b = Response::builder().status(StatusCode::OK).header(header::ETAG, quoted(&record.etag));
    if let Some(crc) = record.crc64 {
        b = b.header("x-oss-hash-crc64ecma", crc.to_string());
    }
    b.header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

/// The `x-oss-copy-source-if-*` headers, captured so they can be checked inside a blocking call.
struct CopyConditions {
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<i64>,
    if_unmodified_since: Option<i64>,
}

impl CopyConditions {
    fn from_ctx(ctx: &Ctx) -> Self {
        let date = |n: &str| ctx.header(n).and_then(timefmt::parse_rfc1123).map(timefmt::unix_secs);
        CopyConditions {
            if_match: ctx.header("x-oss-copy-source-if-match").map(str::to_string),
            if_none_match: ctx.header("x-oss-copy-source-if-none-match").map(str::to_string),
            if_modified_since: date("x-oss-copy-source-if-modified-since"),
            if_unmodified_since: date("x-oss-copy-source-if-unmodified-since"),
        }
    }

    fn check(&self, etag: &str, mtime: i64) -> Result<(), OssError> {
        let matches = |list: &str| {
            list.split(',').map(|t| t.trim().trim_matches('"')).any(|t| t == "*" || t.eq_ignore_ascii_case(etag))
        };
        if self.if_match.as_deref().is_some_and(|l| !matches(l)) {
            return Err(OssError::precondition_failed("x-oss-copy-source-if-match"));
        }
        if self.if_unmodified_since.is_some_and(|t| mtime > t) {
            return Err(OssError::precondition_failed("x-oss-copy-source-if-unmodified-since"));
        }
        if self.if_none_match.as_deref().is_some_and(matches) {
            return Err(OssError::not_modified());
        }
        if self.if_modified_since.is_some_and(|t| mtime <= t) {
            return Err(OssError::not_modified());
        }
        Ok(())
    }
}

async fn get_object_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    let record = blocking(move || store.head_object(&bucket, &key)).await?;
    xml_ok(acl_policy(&record.meta.acl))
}

async fn put_object_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let acl = valid_acl("x-oss-object-acl", ctx.header("x-oss-object-acl").unwrap_or(""), true)?;
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    blocking(move || store.set_object_acl(&bucket, &key, &acl)).await?;
    empty_status(StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------------------
// Multipart

async fn initiate(shared: &Shared, ctx: &Ctx) -> OpResult {
    let url = url_encoding(ctx)?;
    let forbid = forbid_overwrite(ctx)?;
    let meta = meta_from_headers(ctx)?;
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let upload_id = blocking(move || {
        if forbid {
            match store.head_object(&bucket, &key) {
                Ok(_) => return Err(StoreError::AlreadyExists),
                Err(StoreError::NoSuchKey) => {}
                Err(e) => return Err(e),
            }
        }
        store.create_upload(&bucket, &key, &meta, now)
    })
    .await?;
    tracing::info!(upload_id = %upload_id, "multipart upload initiated");
    let mut w = XmlWriter::new("InitiateMultipartUploadResult");
    w.elem("Bucket", ctx.bucket()).elem("Key", &enc(ctx.key(), url)).elem("UploadId", &upload_id);
    if url {
        w.elem("EncodingType", "url");
    }
    xml_ok(w.finish())
}

async fn check_upload(shared: &Shared, ctx: &Ctx) -> Result<String, OssError> {
    let id = upload_id(ctx)?;
    let (store, bucket, key, i) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), id.clone());
    blocking(move || store.upload(&bucket, &key, &i)).await?;
    Ok(id)
}

async fn upload_part(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let number = part_number(ctx)?;
    let expected_md5 = content_md5(ctx)?;
    if declared_length(ctx).is_some_and(|n| n > MAX_UPLOAD) {
        return Err(OssError::entity_too_large("5 GB"));
    }
    let id = check_upload(shared, ctx).await?;
    let blob = receive_blob(&shared.store, body, MAX_UPLOAD).await?;
    check_md5(expected_md5, &blob.md5)?;
    let md5 = blob.md5;
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let part = blocking(move || store.put_part(&bucket, &key, &id, number, PartContent::Blob(blob), now)).await?;
    tracing::info!(size = part.size, "part stored");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::ETAG, quoted(&part.etag))
        .header("x-oss-hash-crc64ecma", part.crc64.to_string())
        .header("content-md5", base64::engine::general_purpose::STANDARD.encode(md5))
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .map_err(|_| OssError::internal())
}

/// `x-oss-copy-source-range: bytes=first-last` (inclusive, within the source).
fn copy_range(ctx: &Ctx, size: u64) -> Result<(u64, u64), OssError> {
    let Some(spec) = ctx.header("x-oss-copy-source-range") else { return Ok((0, size)) };
    let bad =
        || OssError::invalid_argument_named("x-oss-copy-source-range", spec, "The x-oss-copy-source-range is invalid.");
    let (a, b) = spec.strip_prefix("bytes=").and_then(|r| r.split_once('-')).ok_or_else(bad)?;
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last: u64 = b.trim().parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(bad());
    }
    Ok((first, last - first + 1))
}

async fn upload_part_copy(shared: &Shared, ctx: &Ctx) -> OpResult {
    let number = part_number(ctx)?;
    let (src_bucket, src_key) = copy_source(ctx)?;
    let id = check_upload(shared, ctx).await?;
    let (store, sb, sk) = (shared.store.clone(), src_bucket.clone(), src_key.clone());
    let (src, pin) = blocking(move || store.open_object(&sb, &sk)).await.map_err(|e| match e.code.as_str() {
        "NoSuchKey" => OssError::no_such_key(&src_key),
        "NoSuchBucket" => OssError::no_such_bucket(&src_bucket),
        _ => e,
    })?;
    CopyConditions::from_ctx(ctx).check(&src.etag, src.mtime)?;
    let (first, len) = copy_range(ctx, src.size)?;
    if len > MAX_UPLOAD {
        return Err(OssError::entity_too_large("5 GB"));
    }
    let manifest = slice_manifest(&src.manifest, first, len);
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let part = blocking(move || {
        // The source's blobs stay pinned until the part holds its own references.
        let _pin = pin;
        let (md5, crc64) = digest_pieces(&store, &manifest)
            .map_err(|e| StoreError::Server(super::error::ServerError::io("read a copy source", e)))?;
        store.put_part(&bucket, &key, &id, number, PartContent::Copy { manifest, size: len, md5, crc64 }, now)
    })
    .await?;
    let mut w = XmlWriter::new("CopyPartResult");
    w.elem("LastModified", &timefmt::xml_date(timefmt::from_unix_secs(part.mtime))).elem("ETag", &quoted(&part.etag));
    let xml = w.finish();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::ETAG, quoted(&part.etag))
        .header("x-oss-hash-crc64ecma", part.crc64.to_string())
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

async fn list_parts(shared: &Shared, ctx: &Ctx) -> OpResult {
    let url = url_encoding(ctx)?;
    let id = upload_id(ctx)?;
    let max = page_size(ctx, "max-parts", 1000)?;
    let marker = int_param(ctx, "part-number-marker", 0, u32::MAX as usize)? as u32;
    let (store, bucket, key, i) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), id.clone());
    let (upload, parts, truncated) = blocking(move || store.list_parts(&bucket, &key, &i, marker, max)).await?;
    let mut w = XmlWriter::new("ListPartsResult");
    w.elem("Bucket", ctx.bucket())
        .elem("Key", &enc(ctx.key(), url))
        .elem("UploadId", &id)
        .elem("PartNumberMarker", &marker.to_string())
        .elem("NextPartNumberMarker", &parts.last().map_or(marker, |p| p.part_number).to_string())
        .elem("MaxParts", &max.to_string())
        .elem("IsTruncated", if truncated { "true" } else { "false" });
    if url {
        w.elem("EncodingType", "url");
    }
    w.elem("StorageClass", &upload.meta.storage_class);
    for p in &parts {
        w.start("Part")
            .elem("PartNumber", &p.part_number.to_string())
            .elem("LastModified", &timefmt::xml_date(timefmt::from_unix_secs(p.mtime)))
            .elem("ETag", &quoted(&p.etag))
            .elem("HashCrc64ecma", &p.crc64.to_string())
            .elem("Size", &p.size.to_string())
            .end();
    }
    xml_ok(w.finish())
}

/// An ETag from a Complete body: surrounding whitespace and quotes dropped (entities were resolved by the
/// parser, so `&quot;` and `&#34;` arrive as `"`).
fn clean_etag(s: &str) -> String {
    s.trim().trim_matches('"').trim().to_string()
}

async fn complete(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let url = url_encoding(ctx)?;
    let id = upload_id(ctx)?;
    let forbid = forbid_overwrite(ctx)?;
    let acl = object_acl(ctx)?;
    let complete_all = match ctx.header("x-oss-complete-all") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("yes") => true,
        Some(v) => {
            return Err(OssError::invalid_argument_named("x-oss-complete-all", v, "x-oss-complete-all must be yes."));
        }
    };
    let expected_md5 = content_md5(ctx)?;
    let data = body.read_to_vec(MAX_XML_BODY).await?;
    let actual: [u8; 16] = Md5::digest(&data).into();
    check_md5(expected_md5, &actual)?;
    let selection = if complete_all {
        if !data.iter().all(u8::is_ascii_whitespace) {
            return Err(OssError::invalid_argument("The body must be empty when x-oss-complete-all is specified."));
        }
        PartSelection::All
    } else {
        let root = xml::parse(&data).map_err(|_| OssError::malformed_xml())?;
        if root.name != "CompleteMultipartUpload" {
            return Err(OssError::malformed_xml());
        }
        let mut list = Vec::new();
        for part in root.children_named("Part") {
            let number = part.child_text("PartNumber").and_then(|n| n.trim().parse::<u32>().ok());
            let etag = part.child_text("ETag").map(clean_etag);
            match (number, etag) {
                (Some(n), Some(e)) => list.push((n, e)),
                _ => return Err(OssError::malformed_xml()),
            }
        }
        if list.is_empty() {
            return Err(OssError::malformed_xml());
        }
        PartSelection::Listed(list)
    };
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let i = id.clone();
    let record =
        blocking(move || store.complete_upload(&bucket, &key, &i, &selection, acl.as_deref(), forbid, now)).await?;
    tracing::info!(size = record.size, etag = %record.etag, "multipart upload completed");
    let location = if ctx.target.virtual_host {
        format!("http://{}/{}", ctx.host, ctx.key())
    } else {
        format!("http://{}/{}/{}", ctx.host, ctx.bucket(), ctx.key())
    };
    let mut w = XmlWriter::new("CompleteMultipartUploadResult");
    if url {
        w.elem("EncodingType", "url");
    }
    // Location is not among the fields encoding-type=url encodes.
    w.elem("Location", &location)
        .elem("Bucket", ctx.bucket())
        .elem("Key", &enc(ctx.key(), url))
        .elem("ETag", &quoted(&record.etag));
    let xml = w.finish();
    let mut b = Response::builder().status(StatusCode::OK);
    if let Some(crc) = record.crc64 {
        b = b.header("x-oss-hash-crc64ecma", crc.to_string());
    }
    b.header(header::ETAG, quoted(&record.etag))
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

async fn abort(shared: &Shared, ctx: &Ctx) -> OpResult {
    let id = upload_id(ctx)?;
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    blocking(move || store.abort_upload(&bucket, &key, &id)).await?;
    tracing::info!("multipart upload aborted");
    empty_status(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_legacy_and_standard() {
        let r = |s: &str| parse_range(s, 1000, false).unwrap();
        assert_eq!(r("bytes=0-499"), Some((0, 499)));
        assert_eq!(r("bytes=500-"), Some((500, 999)));
        assert_eq!(r("bytes=-500"), Some((500, 999)));
        assert_eq!(r("bytes=0-"), Some((0, 999)));
        assert_eq!(r("bytes=0-499,600-700"), Some((0, 499)));
        for invalid in [
            "byte=0-499",
            "bytes=0-1000",
            "bytes=1000-2000",
            "bytes=1000-",
            "bytes=-2000",
            "bytes=5-1",
            "bytes=x-y",
            "bytes=-",
            "bytes=18446744073709551616-",
        ] {
            assert_eq!(r(invalid), None, "{invalid}");
        }
        let s = |x: &str| parse_range(x, 1000, true);
        assert_eq!(s("bytes=500-2000").unwrap(), Some((500, 999)));
        assert_eq!(s("bytes=1000-2000").unwrap_err().code, "InvalidRange");
        assert_eq!(s("bytes=-2000").unwrap(), Some((0, 999)));
        assert_eq!(parse_range("bytes=0-0", 0, false).unwrap(), None);
    }

    #[test]
    fn etags_from_complete_bodies() {
        assert_eq!(clean_etag(" \"ABC\" "), "ABC");
        assert_eq!(clean_etag("abc"), "abc");
    }
}
