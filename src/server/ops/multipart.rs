//! Multipart uploads: initiate, parts (received or copied from an object version), ListParts, Complete
//! (with upload callbacks; the assembled object is a new version where versioning is on) and Abort.

use md5::{Digest as _, Md5};

use super::object::{copy_source, copy_source_error};
use super::*;
use crate::server::body::{digest_pieces, receive_blob};
use crate::server::error::ServerError;
use crate::server::store::{PartContent, PartSelection, VersionRef, Versioning, slice_manifest};
use crate::server::xml;

const MAX_PART_NUMBER: u32 = 10_000;

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

pub(super) async fn initiate(shared: &Shared, ctx: &Ctx) -> OpResult {
    let url = url_encoding(ctx)?;
    let forbid = forbid_overwrite(ctx)?;
    let meta = meta_from_headers(ctx)?;
    let (store, bucket, key, now) =
        (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), ctx.now_secs());
    let stored = meta.clone();
    let upload_id = blocking(move || {
        // x-oss-forbid-overwrite is ignored once a bucket has versioning, as at Complete.
        let unversioned = store.bucket(&bucket)?.is_some_and(|b| b.versioning == Versioning::Unversioned);
        if forbid && unversioned {
            match store.head_object(VersionRef { bucket: &bucket, key: &key, version: None }) {
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
    let xml = w.finish();
    with_sse(Response::builder().status(StatusCode::OK), &stored)
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

async fn check_upload(shared: &Shared, ctx: &Ctx) -> Result<String, OssError> {
    let id = upload_id(ctx)?;
    let (store, bucket, key, i) = (shared.store.clone(), ctx.bucket().to_string(), ctx.key().to_string(), id.clone());
    blocking(move || store.upload(&bucket, &key, &i)).await?;
    Ok(id)
}

pub(super) async fn upload_part(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let number = part_number(ctx)?;
    let expected_md5 = content_md5(ctx)?;
    check_traffic_limit(ctx)?;
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

pub(super) async fn upload_part_copy(shared: &Shared, ctx: &Ctx) -> OpResult {
    let number = part_number(ctx)?;
    let (src_bucket, src_key, src_version) = copy_source(ctx)?;
    check_traffic_limit(ctx)?;
    let id = check_upload(shared, ctx).await?;
    let (store, sb, sk, sv) = (shared.store.clone(), src_bucket.clone(), src_key.clone(), src_version.clone());
    let (src, pin) = blocking(move || store.open_object(VersionRef { bucket: &sb, key: &sk, version: sv.as_deref() }))
        .await
        .map_err(|e| copy_source_error(e, &src_bucket, &src_key, src_version.as_deref()))?;
    Conditions::from_ctx(ctx, "x-oss-copy-source-").check(&src.etag, src.mtime)?;
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
            .map_err(|e| StoreError::Server(ServerError::io("read a copy source", e)))?;
        store.put_part(&bucket, &key, &id, number, PartContent::Copy { manifest, size: len, md5, crc64 }, now)
    })
    .await?;
    let mut w = XmlWriter::new("CopyPartResult");
    w.elem("LastModified", &timefmt::xml_date(timefmt::from_unix_secs(part.mtime))).elem("ETag", &quoted(&part.etag));
    let xml = w.finish();
    let mut b = Response::builder().status(StatusCode::OK);
    if let Some(v) = &src.version_id {
        b = b.header("x-oss-copy-source-version-id", v.as_str());
    }
    b.header(header::ETAG, quoted(&part.etag))
        .header("x-oss-hash-crc64ecma", part.crc64.to_string())
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, xml.len().to_string())
        .body(body::full(xml))
        .map_err(|_| OssError::internal())
}

pub(super) async fn list_parts(shared: &Shared, ctx: &Ctx) -> OpResult {
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

pub(super) async fn complete(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let url = url_encoding(ctx)?;
    let id = upload_id(ctx)?;
    let forbid = forbid_overwrite(ctx)?;
    let acl = object_acl(ctx)?;
    let callback = request_callback(ctx)?;
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
    b = with_sse(
        with_version(b.header(header::ETAG, quoted(&record.etag)), record.version_id.as_deref()),
        &record.meta,
    );
    answer_upload(shared, ctx, b, (Some("application/xml"), xml), callback, &record).await
}

pub(super) async fn abort(shared: &Shared, ctx: &Ctx) -> OpResult {
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
    fn etags_from_complete_bodies() {
        assert_eq!(clean_etag(" \"ABC\" "), "ABC");
        assert_eq!(clean_etag("abc"), "abc");
    }
}
