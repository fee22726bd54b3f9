//! `ossmirror ls oss://BUCKET/[PREFIX]`: objects with size, mtime, storage class and key.
//!
//! The mtime is the file's, from the object's `mtime` metadata (what the agent and rclone write), else the
//! object's Last-Modified; reading the metadata costs one HEAD per object (16 in flight), so a listing of
//! many objects takes a while. Without `--recursive` the listing uses the delimiter `/` and shows the
//! folders one level down as `PRE name/`. `--json`: one JSON object per line, `{"key", "size", "mtime"
//! (Unix seconds with nanoseconds, as in the metadata), "mtime_source": "metadata" | "last_modified",
//! "storage_class", "etag"}` or `{"prefix": "dir/"}`.

use std::process::ExitCode;

use futures_util::StreamExt;
use ossmirror::cli::LsArgs;
use ossmirror::remote::{ListObjectsRequest, ListedObject, Remote};
use ossmirror::restore::meta::{FileMeta, format_mtime, split_time, to_system_time};
use serde::Serialize;

use super::UsageError;

const HEADS_IN_FLIGHT: usize = 16;

#[derive(Serialize)]
struct Entry<'a> {
    key: &'a str,
    size: u64,
    mtime: Option<String>,
    mtime_source: &'static str,
    storage_class: Option<&'a str>,
    etag: &'a str,
}

pub(super) fn parse_location(location: &str) -> Result<(String, String), UsageError> {
    let rest = location
        .strip_prefix("oss://")
        .or_else(|| location.strip_prefix("s3://"))
        .ok_or_else(|| UsageError(format!("{location:?} must look like oss://BUCKET/[PREFIX]")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(UsageError(format!("{location:?} has no bucket: use oss://BUCKET/[PREFIX]")));
    }
    ossmirror::remote::names::validate_bucket(bucket).map_err(|e| UsageError(e.to_string()))?;
    Ok((bucket.to_string(), prefix.to_string()))
}

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let (bucket, prefix) = parse_location(&args.location)?;
    let connected = super::restore::connect(&args.remote, args.config.as_deref(), "ls", &bucket, None).await?;
    let result = list(&*connected.remote, &bucket, &prefix, args.recursive, args.json).await;
    connected.shutdown().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn list(remote: &dyn Remote, bucket: &str, prefix: &str, recursive: bool, json: bool) -> anyhow::Result<()> {
    let mut request = ListObjectsRequest {
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        delimiter: (!recursive).then(|| "/".to_string()),
        max_keys: Some(1000),
        ..Default::default()
    };
    loop {
        let page = remote
            .list_objects(bucket, &request)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("listing oss://{bucket}/{prefix}")))?;
        for p in &page.common_prefixes {
            if json {
                println!("{}", serde_json::json!({ "prefix": p }));
            } else {
                println!("{:>29}  {:>12}  {:<12} {p}", "", "PRE", "");
            }
        }
        let heads = futures_util::stream::iter(page.objects)
            .map(|o| async move {
                let head = remote.head_object(bucket, &o.key).await;
                (o, head)
            })
            .buffered(HEADS_IN_FLIGHT);
        futures_util::pin_mut!(heads);
        while let Some((o, head)) = heads.next().await {
            let head = head.map_err(|e| anyhow::Error::new(e).context(format!("reading the metadata of {}", o.key)))?;
            print_object(&o, head.as_ref(), json);
        }
        match page.next_continuation_token {
            Some(t) if request.continuation_token.as_deref() != Some(t.as_str()) => {
                request.continuation_token = Some(t)
            }
            Some(_) => anyhow::bail!("listing oss://{bucket}/{prefix}: the continuation token did not advance"),
            None => return Ok(()),
        }
    }
}

fn print_object(o: &ListedObject, head: Option<&ossmirror::remote::ObjectInfo>, json: bool) {
    let meta = head.map(|h| FileMeta::from_metadata(&h.metadata)).unwrap_or_default();
    let (mtime, source) = match meta.mtime {
        Some((s, ns)) => (Some(to_system_time(s, ns)), "metadata"),
        None => (o.last_modified, "last_modified"),
    };
    let class = o.storage_class.as_deref().or(head.and_then(|h| h.storage_class.as_deref()));
    if json {
        let entry = Entry {
            key: &o.key,
            size: o.size,
            mtime: mtime.map(format_mtime),
            mtime_source: source,
            storage_class: class,
            etag: o.etag.trim_matches('"'),
        };
        if let Ok(line) = serde_json::to_string(&entry) {
            println!("{line}");
        }
        return;
    }
    let when = mtime.map_or_else(|| "-".to_string(), iso_ns);
    println!("{when:>29}  {:>12}  {:<12} {}", o.size, class.unwrap_or("-"), o.key);
}

/// `2023-11-14T22:13:20.123456789Z`.
fn iso_ns(t: std::time::SystemTime) -> String {
    let (secs, nanos) = split_time(t);
    let day = ossmirror::timefmt::xml_date(to_system_time(secs, 0));
    format!("{}.{nanos:09}Z", &day[..19])
}
