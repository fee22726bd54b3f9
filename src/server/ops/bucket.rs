//! The service and buckets: ListBuckets, bucket create/delete/info/ACL, and the bucket configurations
//! (versioning, lifecycle).

use super::*;
use crate::server::lifecycle;
use crate::server::store::{BucketRecord, Versioning};
use crate::server::xml;

/// ListBuckets (GetService) with `prefix`, `marker` (names strictly after it) and `max-keys` (default 100,
/// at most 1000). `Prefix`, `Marker` and `MaxKeys` are echoed when the request named any of them, and
/// `IsTruncated` / `NextMarker` tell the next page, as oss2's `BucketIterator` reads them.
pub(super) async fn list_buckets(shared: &Shared, ctx: &Ctx) -> OpResult {
    let prefix = ctx.query.non_empty("prefix").unwrap_or("").to_string();
    let marker = ctx.query.non_empty("marker").unwrap_or("").to_string();
    let max = page_size(ctx, "max-keys", 100)?;
    let paged = ["prefix", "marker", "max-keys"].iter().any(|p| ctx.query.has(p));
    let store = shared.store.clone();
    let all = blocking(move || store.list_buckets()).await?;
    let mut selected: Vec<BucketRecord> =
        all.into_iter().filter(|b| b.name.starts_with(&prefix) && b.name.as_str() > marker.as_str()).collect();
    let truncated = selected.len() > max;
    selected.truncate(max);
    let mut w = XmlWriter::new("ListAllMyBucketsResult");
    if paged {
        w.elem("Prefix", &prefix).elem("Marker", &marker).elem("MaxKeys", &max.to_string());
    }
    if paged || truncated {
        w.elem("IsTruncated", if truncated { "true" } else { "false" });
    }
    if truncated && let Some(last) = selected.last() {
        w.elem("NextMarker", &last.name);
    }
    owner(&mut w);
    w.start("Buckets");
    for b in selected {
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

pub(super) async fn put_bucket(shared: &Shared, ctx: &Ctx) -> OpResult {
    let acl = match ctx.header("x-oss-acl") {
        Some(v) => valid_acl("x-oss-acl", v, false)?,
        None => "private".to_string(),
    };
    let (store, bucket, now) = (shared.store.clone(), ctx.bucket().to_string(), ctx.now_secs());
    // Creating a bucket this server already has is accepted: there is a single owner.
    blocking(move || store.create_bucket(&bucket, &acl, now)).await?;
    empty_status(StatusCode::OK)
}

pub(super) async fn delete_bucket(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.delete_bucket(&bucket)).await?;
    empty_status(StatusCode::NO_CONTENT)
}

pub(super) async fn head_bucket(shared: &Shared, ctx: &Ctx) -> OpResult {
    require_bucket(&shared.store, ctx.bucket()).await?;
    empty_status(StatusCode::OK)
}

async fn bucket_record(shared: &Shared, ctx: &Ctx) -> Result<BucketRecord, OssError> {
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.bucket(&bucket)).await?.ok_or_else(|| OssError::no_such_bucket(ctx.bucket()))
}

pub(super) async fn get_bucket_info(shared: &Shared, ctx: &Ctx) -> OpResult {
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
        .elem("Versioning", b.versioning.status().unwrap_or(""));
    owner(&mut w);
    w.start("AccessControlList").elem("Grant", &b.acl).end();
    w.start("ServerSideEncryptionRule").elem("SSEAlgorithm", "None").end();
    w.start("BucketPolicy").elem("LogBucket", "").elem("LogPrefix", "").end();
    xml_ok(w.finish())
}

pub(super) async fn get_bucket_location(shared: &Shared, ctx: &Ctx) -> OpResult {
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

pub(super) async fn get_bucket_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let b = bucket_record(shared, ctx).await?;
    xml_ok(acl_policy(&b.acl))
}

pub(super) async fn put_bucket_acl(shared: &Shared, ctx: &Ctx) -> OpResult {
    let acl = valid_acl("x-oss-acl", ctx.header("x-oss-acl").unwrap_or(""), false)?;
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.set_bucket_acl(&bucket, &acl)).await?;
    empty_status(StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------------------
// Versioning

pub(super) async fn get_bucket_versioning(shared: &Shared, ctx: &Ctx) -> OpResult {
    let b = bucket_record(shared, ctx).await?;
    let mut w = XmlWriter::new("VersioningConfiguration");
    if let Some(status) = b.versioning.status() {
        w.elem("Status", status);
    }
    xml_ok(w.finish())
}

/// `<VersioningConfiguration><Status>Enabled|Suspended</Status></VersioningConfiguration>`.
pub(super) async fn put_bucket_versioning(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let data = read_checked_body(ctx, body).await?;
    let root = xml::parse(&data).map_err(|_| OssError::malformed_xml())?;
    if root.name != "VersioningConfiguration" {
        return Err(OssError::malformed_xml());
    }
    let versioning = match root.child_text("Status").map(str::trim) {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        Some(other) => {
            return Err(OssError::invalid_argument_named(
                "Status",
                other,
                "The versioning Status must be Enabled or Suspended.",
            ));
        }
        None => return Err(OssError::malformed_xml()),
    };
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.set_versioning(&bucket, versioning)).await?;
    tracing::info!(status = ?versioning, "bucket versioning changed");
    empty_status(StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------------------
// Lifecycle

pub(super) async fn put_bucket_lifecycle(shared: &Shared, ctx: &Ctx, body: &mut RequestBody) -> OpResult {
    let data = read_checked_body(ctx, body).await?;
    let allow_overlap = ctx.header("x-oss-allow-same-action-overlap").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let config = lifecycle::parse(&data, allow_overlap)?;
    let (store, bucket, stored) = (shared.store.clone(), ctx.bucket().to_string(), config.to_json());
    blocking(move || store.set_lifecycle(&bucket, Some(&stored))).await?;
    tracing::info!(rules = config.rules.len(), "bucket lifecycle set");
    empty_status(StatusCode::OK)
}

pub(super) async fn get_bucket_lifecycle(shared: &Shared, ctx: &Ctx) -> OpResult {
    let b = bucket_record(shared, ctx).await?;
    let Some(stored) = b.lifecycle else { return Err(OssError::no_such_lifecycle(ctx.bucket())) };
    let config = lifecycle::Configuration::from_json(&stored).map_err(|e| {
        tracing::error!(error = %e, "stored lifecycle configuration is damaged");
        OssError::internal()
    })?;
    xml_ok(config.to_xml())
}

pub(super) async fn delete_bucket_lifecycle(shared: &Shared, ctx: &Ctx) -> OpResult {
    let (store, bucket) = (shared.store.clone(), ctx.bucket().to_string());
    blocking(move || store.set_lifecycle(&bucket, None)).await?;
    empty_status(StatusCode::NO_CONTENT)
}
