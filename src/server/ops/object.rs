//! Objects: PutObject (with upload callbacks), GetObject / HeadObject / GetObjectMeta (ranges,
//! conditions, versions), DeleteObject and DeleteMultipleObjects (delete markers and versions), CopyObject
//! (from a version, metadata and tagging directives), and the ACL and tagging sub-resources.

use md5::{Digest as _, Md5};

use super::*;
use crate::server::body::{receive_blob, stream_pieces};
use crate::server::request::{check_key, form_decode, valid_bucket_name};
use crate::server::store::{DeleteOutcome, VersionRef, slice_manifest};
use crate::server::xml;

const MAX_DELETE_KEYS: usize = 1000;

pub(super) async fn put_object(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let forbid = forbid_overwrite(ctx)?;
    let meta = meta_from_headers(ctx)?;
    let expected_md5 = content_md5(ctx)?;
    check_traffic_limit(ctx)?;
    let callback = request_callback(ctx)?;
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
    tracing::info!(size = record.size, version_id = record.version_id.as_deref(), "object stored");
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::ETAG, quoted(&record.etag))
        .header("x-oss-hash-crc64ecma", record.crc64.unwrap_or(0).to_string())
        .header("content-md5", base64::engine::general_purpose::STANDARD.encode(md5));
    let builder = with_sse(with_version(builder, record.version_id.as_deref()), &record.meta);
    answer_upload(shared, ctx, builder, (None, String::new()), callback, &record).await
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

/// The headers of a GET/HEAD answer (and, `meta_only`, of GetObjectMeta).
fn object_headers(mut b: http::response::Builder, o: &ObjectRecord, meta_only: bool) -> http::response::Builder {
    b = b
        .header(header::ETAG, quoted(&o.etag))
        .header(header::LAST_MODIFIED, timefmt::rfc1123(timefmt::from_unix_secs(o.mtime)));
    // The whole object's CRC, on ranged answers too: every SDK skips the check on a range, and a resumable
    // download compares its combined range CRCs with this value (OSS-PROTOCOL.md §7.2).
    if let Some(crc) = o.crc64 {
        b = b.header("x-oss-hash-crc64ecma", crc.to_string());
    }
    b = with_version(b, o.version_id.as_deref());
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
    let tag_count = tags::decode(o.meta.tagging.as_deref()).len();
    if tag_count > 0 {
        b = b.header("x-oss-tagging-count", tag_count.to_string());
    }
    for (name, value) in &o.meta.headers {
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
            b = b.header(name.as_str(), v);
        }
    }
    b
}

/// GetObject, HeadObject and GetObjectMeta, of the current version or of `versionId`.
pub(super) async fn get_object(shared: &Shared, ctx: &Ctx) -> OpResult {
    let is_get = ctx.op == Op::GetObject;
    let version = version_param(ctx)?;
    if is_get {
        check_traffic_limit(ctx)?;
    }
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    let (record, pin) = if is_get {
        let (r, pin) =
            blocking(move || store.open_object(VersionRef { bucket: &bucket, key: &key, version: version.as_deref() }))
                .await?;
        (r, Some(pin))
    } else {
        (
            blocking(move || store.head_object(VersionRef { bucket: &bucket, key: &key, version: version.as_deref() }))
                .await?,
            None,
        )
    };
    if let Err(e) = Conditions::from_ctx(ctx, "").check(&record.etag, record.mtime) {
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

/// The `x-oss-delete-marker` / `x-oss-version-id` of a delete.
fn with_outcome(mut b: http::response::Builder, d: &DeleteOutcome) -> http::response::Builder {
    if d.delete_marker {
        b = b.header("x-oss-delete-marker", "true");
    }
    with_version(b, d.version_id.as_deref())
}

pub(super) async fn delete_object(shared: &Shared, ctx: &Ctx) -> OpResult {
    let version = version_param(ctx)?;
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let outcome = blocking(move || {
        store.delete_object(VersionRef { bucket: &bucket, key: &key, version: version.as_deref() }, now)
    })
    .await?;
    with_outcome(Response::builder().status(StatusCode::NO_CONTENT), &outcome)
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .map_err(|_| OssError::internal())
}

/// DeleteMultipleObjects, with `<VersionId>` per object. The verbose answer reports, per entry, the
/// version removed or the delete marker written (`DeleteMarker`, `DeleteMarkerVersionId`), as S3 and
/// oss2's `BatchDeleteObjectVersionResult` read them.
pub(super) async fn delete_multiple(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
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
    let mut items: Vec<(String, Option<String>)> = Vec::new();
    for obj in root.children_named("Object") {
        let key = match obj.child_text("Key") {
            Some(k) if !k.is_empty() => {
                check_key(k)?;
                k.to_string()
            }
            _ => return Err(OssError::malformed_xml().with_ec("0016-00000613")),
        };
        let version = obj.child_text("VersionId").map(str::trim).map(check_version_id).transpose()?;
        items.push((key, version));
    }
    if items.is_empty() {
        return Err(OssError::malformed_xml().with_ec("0016-00000615"));
    }
    if items.len() > MAX_DELETE_KEYS {
        return Err(OssError::malformed_xml()
            .with("Reason", format!("At most {MAX_DELETE_KEYS} objects can be deleted per request.")));
    }
    let (store, bucket, now, list) = (shared.store.clone(), ctx.bucket().to_string(), ctx.now_secs(), items.clone());
    let outcomes = blocking(move || {
        let refs: Vec<(&str, Option<&str>)> = list.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        store.delete_objects(&bucket, &refs, now)
    })
    .await?;
    if quiet {
        return empty_status(StatusCode::OK);
    }
    let mut w = XmlWriter::new("DeleteResult");
    if url {
        w.elem("EncodingType", "url");
    }
    // Like S3, a key that did not exist is reported as deleted (UNCONFIRMED for OSS).
    let mut seen = std::collections::HashSet::new();
    for ((key, version), outcome) in items.iter().zip(&outcomes) {
        if !seen.insert((key, version)) {
            continue;
        }
        w.start("Deleted").elem("Key", &enc(key, url));
        match (version, outcome.delete_marker) {
            // A version named: it is gone; it was a delete marker if the outcome says so.
            (Some(v), marker) => {
                w.elem("VersionId", v);
                if marker {
                    w.elem("DeleteMarker", "true").elem("DeleteMarkerVersionId", v);
                }
            }
            // No version: a delete marker was written, or (unversioned) the object removed.
            (None, true) => {
                w.elem("DeleteMarker", "true")
                    .elem("DeleteMarkerVersionId", outcome.version_id.as_deref().unwrap_or(""));
            }
            (None, false) => {}
        }
        w.end();
    }
    xml_ok(w.finish())
}

/// `x-oss-copy-source: /bucket/key[?versionId=…]`, form-decoded (go-v1 sends a space as `+`).
pub(super) fn copy_source(ctx: &Ctx) -> Result<(String, String, Option<String>), OssError> {
    let raw = ctx.header("x-oss-copy-source").unwrap_or("");
    let bad = || {
        OssError::invalid_argument_named(
            "x-oss-copy-source",
            raw,
            "Copy Source must mention the source bucket and key: /sourcebucket/sourcekey.",
        )
    };
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let decoded = form_decode(path).ok_or_else(bad)?;
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
    let (bucket, key) = decoded.split_once('/').ok_or_else(bad)?;
    if !valid_bucket_name(bucket) || key.is_empty() {
        return Err(bad());
    }
    check_key(key)?;
    let version = match query {
        None => None,
        Some(q) => match q.strip_prefix("versionId=") {
            Some(v) => Some(check_version_id(&form_decode(v).ok_or_else(bad)?)?),
            None => return Err(bad()),
        },
    };
    Ok((bucket.to_string(), key.to_string(), version))
}

/// The source of a copy, read inside the copy's transaction: a delete marker there is a 404 (current) or,
/// named by version, a 400 (S3 answers InvalidRequest; OSS's code is InvalidArgument).
pub(super) fn copy_source_error(e: OssError, bucket: &str, key: &str, version: Option<&str>) -> OssError {
    match (e.code.as_str(), e.status) {
        ("NoSuchKey", _) => OssError::no_such_key(key),
        ("NoSuchBucket", _) => OssError::no_such_bucket(bucket),
        ("NoSuchVersion", _) => OssError::no_such_version(key, version.unwrap_or("")),
        ("MethodNotAllowed", _) => OssError::invalid_argument_named(
            "x-oss-copy-source",
            version.unwrap_or(""),
            "The source version is a delete marker and cannot be copied.",
        ),
        _ => e,
    }
}

/// CopyObject. `x-oss-metadata-directive: REPLACE` takes content headers and user metadata from the
/// request (onto the same key, that is a metadata-only change: the data is shared, not copied); `COPY`
/// keeps the source's, except encryption, which always comes from the request (OSS-PROTOCOL.md §5.7).
/// `x-oss-tagging-directive: Replace` takes the tags from `x-oss-tagging`, `Copy` keeps the source's.
pub(super) async fn copy_object(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (src_bucket, src_key, src_version) = copy_source(ctx)?;
    let forbid = forbid_overwrite(ctx)?;
    check_traffic_limit(ctx)?;
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
    let replace_tags = match ctx.header("x-oss-tagging-directive") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("Copy") => false,
        Some(v) if v.eq_ignore_ascii_case("Replace") => true,
        Some(v) => {
            return Err(OssError::invalid_argument_named(
                "x-oss-tagging-directive",
                v,
                "x-oss-tagging-directive must be Copy or Replace.",
            ));
        }
    };
    let new_meta = meta_from_headers(ctx)?;
    let acl = object_acl(ctx)?;
    let class = storage_class(ctx)?;
    // Conditions are evaluated inside the storage transaction, against the exact source being copied.
    let cond = Conditions::from_ctx(ctx, "x-oss-copy-source-");
    let (store, dst_bucket, dst_key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let (sb, sk, sv) = (src_bucket.clone(), src_key.clone(), src_version.clone());
    let outcome = blocking(move || {
        let src = VersionRef { bucket: &sb, key: &sk, version: sv.as_deref() };
        store.copy_object(src, &dst_bucket, &dst_key, forbid, now, |source| {
            cond.check(&source.etag, source.mtime)?;
            let mut meta = if replace {
                new_meta.clone()
            } else {
                let mut m = source.meta.clone();
                m.headers.retain(|(n, _)| !SSE_HEADERS.contains(&n.as_str()));
                m.headers.extend(new_meta.headers.iter().filter(|(n, _)| SSE_HEADERS.contains(&n.as_str())).cloned());
                m
            };
            meta.tagging = if replace_tags { new_meta.tagging.clone() } else { source.meta.tagging.clone() };
            meta.acl = acl.unwrap_or_else(|| "default".into());
            meta.storage_class = class.unwrap_or_else(|| source.meta.storage_class.clone());
            Ok(meta)
        })
    })
    .await
    .map_err(|e| copy_source_error(e, &src_bucket, &src_key, src_version.as_deref()))?;
    let record = &outcome.record;
    tracing::info!(version_id = record.version_id.as_deref(), "object copied");
    let mut w = XmlWriter::new("CopyObjectResult");
    w.elem("LastModified", &timefmt::xml_date(timefmt::from_unix_secs(record.mtime)))
        .elem("ETag", &quoted(&record.etag));
    let xml = w.finish();
    // The ETag also travels as a header: oss2 reads a copy's ETag from there.
    let mut b = Response::builder().status(StatusCode::OK).header(header::ETAG, quoted(&record.etag));
    if let Some(crc) = record.crc64 {
        b = b.header("x-oss-hash-crc64ecma", crc.to_string());
    }
    if let Some(v) = &outcome.source_version {
        b = b.header("x-oss-copy-source-version-id", v.as_str());
    }
    b = with_sse(with_version(b, record.version_id.as_deref()), &record.meta);
    b.header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

pub(super) async fn get_object_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let version = version_param(ctx)?;
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    let record =
        blocking(move || store.head_object(VersionRef { bucket: &bucket, key: &key, version: version.as_deref() }))
            .await?;
    let mut w = XmlWriter::new("AccessControlPolicy");
    owner(&mut w);
    w.start("AccessControlList").elem("Grant", &record.meta.acl).end();
    let xml = w.finish();
    with_version(Response::builder().status(StatusCode::OK), record.version_id.as_deref())
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

/// Change one version's metadata in place and answer with its version id.
async fn update_meta(
    shared: &Shared,
    ctx: &Ctx,
    status: StatusCode,
    change: impl FnOnce(&mut ObjectMeta) -> Result<(), OssError> + Send + 'static,
) -> OpResult {
    let version = version_param(ctx)?;
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    let record = blocking(move || {
        store.update_object_meta(VersionRef { bucket: &bucket, key: &key, version: version.as_deref() }, change)
    })
    .await?;
    with_version(Response::builder().status(status), record.version_id.as_deref())
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .map_err(|_| OssError::internal())
}

pub(super) async fn put_object_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let acl = valid_acl("x-oss-object-acl", ctx.header("x-oss-object-acl").unwrap_or(""), true)?;
    update_meta(shared, ctx, StatusCode::OK, move |m| {
        m.acl = acl;
        Ok(())
    })
    .await
}

pub(super) async fn get_object_tagging(shared: &Shared, ctx: &Ctx) -> OpResult {
    let version = version_param(ctx)?;
    let (store, bucket, key) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string());
    let record =
        blocking(move || store.head_object(VersionRef { bucket: &bucket, key: &key, version: version.as_deref() }))
            .await?;
    let xml = tags::to_xml(&tags::decode(record.meta.tagging.as_deref()));
    with_version(Response::builder().status(StatusCode::OK), record.version_id.as_deref())
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

pub(super) async fn put_object_tagging(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let data = read_checked_body(ctx, body).await?;
    let stored = tags::encode(&tags::parse_xml(&data)?);
    update_meta(shared, ctx, StatusCode::OK, move |m| {
        m.tagging = stored;
        Ok(())
    })
    .await
}

pub(super) async fn delete_object_tagging(shared: &Shared, ctx: &Ctx) -> OpResult {
    update_meta(shared, ctx, StatusCode::NO_CONTENT, |m| {
        m.tagging = None;
        Ok(())
    })
    .await
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
}
