//! Listings: ListObjects (v1), ListObjectsV2, ListObjectVersions and ListMultipartUploads.

use super::*;
use crate::server::store::{ListEntry, UploadEntry, VersionListEntry};

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
pub(super) async fn list_objects(shared: &Shared, ctx: &Ctx, v2: bool) -> OpResult {
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

pub(super) async fn list_uploads(shared: &Shared, ctx: &Ctx) -> OpResult {
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

/// ListObjectVersions (`GET /?versions`): `<ListVersionsResult>` with `<Version>` and `<DeleteMarker>`
/// entries in key order, newest first within a key, as oss2 and alibabacloud-oss-v2 parse it.
pub(super) async fn list_versions(shared: &Shared, ctx: &Ctx) -> OpResult {
    let url = url_encoding(ctx)?;
    let prefix = ctx.query.non_empty("prefix").unwrap_or("").to_string();
    let delimiter = ctx.query.non_empty("delimiter").map(str::to_string);
    let key_marker = ctx.query.non_empty("key-marker").map(str::to_string);
    // A version-id marker means something only with a key marker (as for ListMultipartUploads).
    let version_marker = match key_marker.as_ref().and(ctx.query.non_empty("version-id-marker")) {
        Some(v) => Some(check_version_id(v)?),
        None => None,
    };
    let max = page_size(ctx, "max-keys", 100)?;
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    let (p, d, km, vm) = (prefix.clone(), delimiter.clone(), key_marker.clone(), version_marker.clone());
    let page =
        blocking(move || store.list_versions(&bucket, &p, d.as_deref(), km.as_deref(), vm.as_deref(), max)).await?;

    let mut w = XmlWriter::new("ListVersionsResult");
    w.elem("Name", ctx.bucket())
        .elem("Prefix", &enc(&prefix, url))
        .elem("KeyMarker", &enc(key_marker.as_deref().unwrap_or(""), url))
        .elem("VersionIdMarker", version_marker.as_deref().unwrap_or(""))
        .elem("MaxKeys", &max.to_string())
        .elem("Delimiter", &enc(delimiter.as_deref().unwrap_or(""), url))
        .elem("IsTruncated", if page.truncated { "true" } else { "false" });
    if page.truncated {
        let (next_key, next_version) = match page.entries.last() {
            Some(VersionListEntry::Version(v)) => (v.record.key.clone(), v.version_id().to_string()),
            Some(VersionListEntry::Prefix(p)) => (p.clone(), String::new()),
            None => (String::new(), String::new()),
        };
        w.elem("NextKeyMarker", &enc(&next_key, url)).elem("NextVersionIdMarker", &next_version);
    }
    if url {
        w.elem("EncodingType", "url");
    }
    for e in &page.entries {
        let VersionListEntry::Version(v) = e else { continue };
        let r = &v.record;
        let modified = timefmt::xml_date(timefmt::from_unix_secs(r.mtime));
        if v.delete_marker {
            w.start("DeleteMarker")
                .elem("Key", &enc(&r.key, url))
                .elem("VersionId", v.version_id())
                .elem("IsLatest", if v.latest { "true" } else { "false" })
                .elem("LastModified", &modified);
        } else {
            w.start("Version")
                .elem("Key", &enc(&r.key, url))
                .elem("VersionId", v.version_id())
                .elem("IsLatest", if v.latest { "true" } else { "false" })
                .elem("LastModified", &modified)
                .elem("ETag", &quoted(&r.etag))
                .elem("Type", &r.object_type)
                .elem("Size", &r.size.to_string())
                .elem("StorageClass", &r.meta.storage_class);
        }
        owner(&mut w);
        w.end();
    }
    for e in &page.entries {
        if let VersionListEntry::Prefix(p) = e {
            w.start("CommonPrefixes").elem("Prefix", &enc(p, url)).end();
        }
    }
    xml_ok(w.finish())
}
