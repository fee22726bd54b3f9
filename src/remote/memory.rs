//! An in-memory [`Remote`] with OSS semantics, for fast deterministic tests of the engine and agent.
//!
//! It is faithful where the engine's correctness depends on it: ETags are the MD5 of the bytes (`"HEX-N"`
//! after Complete), CRC-64 is reported for every put, part and completed object, a part number sent again
//! replaces the earlier one, Complete checks order, ETags and the 100 KiB minimum, and file bodies are
//! streamed through [`Body::stream`] exactly as the HTTP clients do (so a file shrinking mid-read surfaces
//! as [`RemoteError::LocalRead`]).
//!
//! A request hook sees every request before it is applied and can let it through, fail it, or hold it
//! forever (a "crash" point: the test drops the upload future while the request hangs). Tests use it to
//! modify a file at an exact moment of an upload, to inject errors, and to simulate kills.
//!
//! Tests of real HTTP behaviour use `ossmirror serve` instead; this remote exists for speed and for
//! exhaustive model-based tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use md5::{Digest as _, Md5};

use super::*;
use crate::checksum::{crc64, crc64_fold};

/// What a request hook may do with a request.
#[derive(Debug)]
pub enum HookAction {
    Proceed,
    Fail(RemoteError),
    /// Never answer (until the caller drops the request).
    Hang,
}

/// A request as the hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    pub part_number: Option<u32>,
}

type Hook = Box<dyn FnMut(&RequestInfo) -> HookAction + Send>;

#[derive(Debug, Clone)]
struct StoredObject {
    data: Bytes,
    etag: String,
    crc64: u64,
    options: ObjectOptions,
    multipart: bool,
    modified: SystemTime,
}

#[derive(Debug, Clone)]
struct StoredPart {
    data: Bytes,
    etag: String,
    crc64: u64,
}

#[derive(Debug)]
struct PendingUpload {
    bucket: String,
    key: String,
    options: ObjectOptions,
    parts: BTreeMap<u32, StoredPart>,
    initiated: SystemTime,
}

#[derive(Default)]
struct World {
    buckets: BTreeMap<String, BTreeMap<String, StoredObject>>,
    uploads: HashMap<String, PendingUpload>,
    next_upload: u64,
    /// Requests applied, by operation name.
    counts: BTreeMap<&'static str, u64>,
    /// Body bytes received by UploadPart and PutObject.
    bytes_received: u64,
}

pub struct MemoryRemote {
    world: Mutex<World>,
    /// Store parts with their first byte flipped while acknowledging what was received.
    corrupt_parts: std::sync::atomic::AtomicBool,
    hook: Mutex<Option<Hook>>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for MemoryRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRemote").finish_non_exhaustive()
    }
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode_upper(Md5::digest(data))
}

fn service(op: &'static str, status: u16, code: &str, message: &str) -> RemoteError {
    ServiceError {
        op,
        status,
        code: code.into(),
        message: message.into(),
        request_id: Some("MEMORY".into()),
        host_id: Some("memory".into()),
        ec: None,
        server_time: None,
    }
    .into()
}

impl Default for MemoryRemote {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRemote {
    pub fn new() -> Self {
        Self::with_capabilities(Capabilities {
            object_crc64: true,
            object_crc64nvme: true,
            complete_with_part_subset: true,
        })
    }

    /// `complete_with_part_subset: false` makes Complete refuse a part list that leaves out uploaded parts
    /// (what real OSS may do; unconfirmed).
    pub fn with_capabilities(capabilities: Capabilities) -> Self {
        MemoryRemote {
            world: Mutex::new(World::default()),
            corrupt_parts: Default::default(),
            hook: Mutex::new(None),
            capabilities,
        }
    }

    pub fn set_hook(&self, hook: impl FnMut(&RequestInfo) -> HookAction + Send + 'static) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    /// Simulate a server that acknowledges parts but stores different bytes.
    pub fn corrupt_stored_parts(&self, on: bool) {
        self.corrupt_parts.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn clear_hook(&self) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object's bytes, for assertions.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.world().buckets.get(bucket)?.get(key).map(|o| o.data.clone())
    }

    /// Keys in a bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.world().buckets.get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }

    /// Unfinished multipart uploads (any bucket).
    pub fn pending_uploads(&self) -> usize {
        self.world().uploads.len()
    }

    /// How many requests of `op` were applied (hooked failures and hangs not included).
    pub fn count(&self, op: &str) -> u64 {
        self.world().counts.get(op).copied().unwrap_or(0)
    }

    pub fn bytes_received(&self) -> u64 {
        self.world().bytes_received
    }

    async fn gate(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        part_number: Option<u32>,
    ) -> Result<(), RemoteError> {
        let info = RequestInfo { op, bucket: bucket.into(), key: key.into(), part_number };
        let action = {
            let mut hook = self.hook.lock().unwrap_or_else(|e| e.into_inner());
            match hook.as_mut() {
                Some(h) => h(&info),
                None => HookAction::Proceed,
            }
        };
        match action {
            HookAction::Proceed => {
                *self.world().counts.entry(op).or_default() += 1;
                Ok(())
            }
            HookAction::Fail(e) => Err(e),
            HookAction::Hang => std::future::pending().await,
        }
    }

    fn bucket_exists(&self, op: &'static str, bucket: &str) -> Result<(), RemoteError> {
        if self.world().buckets.contains_key(bucket) {
            Ok(())
        } else {
            Err(service(op, 404, "NoSuchBucket", "The specified bucket does not exist."))
        }
    }

    /// Drain a body exactly as an HTTP client would stream it.
    async fn receive(op: &'static str, body: Body) -> Result<(Bytes, BodyDigest), RemoteError> {
        let (mut stream, slot) = body.stream();
        let mut buf = BytesMut::with_capacity(body.len() as usize);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => buf.extend_from_slice(&c),
                Err(_) => break,
            }
        }
        match slot.take() {
            Some(Ok(digest)) => Ok((buf.freeze(), digest)),
            Some(Err(source)) => Err(RemoteError::LocalRead { op, source }),
            None => Err(RemoteError::Transport {
                op,
                endpoint: "memory".into(),
                kind: error::TransportKind::Broken,
                detail: "body ended early".into(),
            }),
        }
    }
}

#[async_trait]
impl Remote for MemoryRemote {
    fn dialect(&self) -> Dialect {
        Dialect::Oss
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn endpoint_display(&self) -> String {
        "memory://".into()
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), RemoteError> {
        self.gate("PutBucket", bucket, "", None).await?;
        self.world().buckets.entry(bucket.to_string()).or_default();
        Ok(())
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Body,
        options: &ObjectOptions,
    ) -> Result<PutResult, RemoteError> {
        self.gate("PutObject", bucket, key, None).await?;
        self.bucket_exists("PutObject", bucket)?;
        let (data, digest) = Self::receive("PutObject", body).await?;
        let etag = format!("\"{}\"", md5_hex(&data));
        let mut w = self.world();
        w.bytes_received += data.len() as u64;
        let objects = w.buckets.entry(bucket.to_string()).or_default();
        if options.forbid_overwrite && objects.contains_key(key) {
            return Err(service("PutObject", 409, "FileAlreadyExists", "The object already exists."));
        }
        let crc = crc64(&data);
        objects.insert(
            key.to_string(),
            StoredObject {
                data,
                etag: etag.clone(),
                crc64: crc,
                options: options.clone(),
                multipart: false,
                modified: SystemTime::now(),
            },
        );
        Ok(PutResult { etag, digest, request_id: None, callback: None })
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, RemoteError> {
        self.gate("HeadObject", bucket, key, None).await?;
        self.bucket_exists("HeadObject", bucket)?;
        let w = self.world();
        Ok(w.buckets.get(bucket).and_then(|b| b.get(key)).map(|o| info_of(key, o)))
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
        self.gate("GetObject", bucket, key, None).await?;
        self.bucket_exists("GetObject", bucket)?;
        let w = self.world();
        let Some(o) = w.buckets.get(bucket).and_then(|b| b.get(key)) else {
            return Err(service("GetObject", 404, "NoSuchKey", "The specified key does not exist."));
        };
        if let Some(want) = if_match
            && want.trim_matches('"') != o.etag.trim_matches('"')
        {
            return Err(service(
                "GetObject",
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold.",
            ));
        }
        let total = o.data.len() as u64;
        let (body, content_range) = match range {
            Some(r) if r.first < total => {
                let last = r.last.min(total - 1);
                (o.data.slice(r.first as usize..=last as usize), Some((ByteRange { first: r.first, last }, total)))
            }
            _ => (o.data.clone(), None),
        };
        Ok(GetResult { info: info_of(key, o), body, content_range })
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), RemoteError> {
        self.gate("DeleteObject", bucket, key, None).await?;
        self.bucket_exists("DeleteObject", bucket)?;
        if let Some(b) = self.world().buckets.get_mut(bucket) {
            b.remove(key);
        }
        Ok(())
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<Vec<DeleteFailure>, RemoteError> {
        self.gate("DeleteMultipleObjects", bucket, "", None).await?;
        self.bucket_exists("DeleteMultipleObjects", bucket)?;
        if keys.len() > 1000 {
            return Err(RemoteError::invalid_input("more than 1000 keys in one delete", "split the batch"));
        }
        if let Some(b) = self.world().buckets.get_mut(bucket) {
            for k in keys {
                b.remove(k);
            }
        }
        Ok(Vec::new())
    }

    async fn list_objects(&self, bucket: &str, request: &ListObjectsRequest) -> Result<ListObjectsPage, RemoteError> {
        self.gate("ListObjectsV2", bucket, "", None).await?;
        self.bucket_exists("ListObjectsV2", bucket)?;
        let w = self.world();
        let objects = &w.buckets[bucket];
        let prefix = request.prefix.clone().unwrap_or_default();
        let after = request.continuation_token.clone().or(request.start_after.clone()).unwrap_or_default();
        let max = request.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut page = ListObjectsPage::default();
        let mut last_seen = None;
        for (key, o) in objects.range::<String, _>((std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded)) {
            if !key.starts_with(&prefix) {
                continue;
            }
            if let Some(d) = request.delimiter.as_deref().filter(|d| !d.is_empty()) {
                if let Some(pos) = key[prefix.len()..].find(d) {
                    let cp = key[..prefix.len() + pos + d.len()].to_string();
                    if page.common_prefixes.last() != Some(&cp) {
                        if page.objects.len() + page.common_prefixes.len() == max {
                            page.next_continuation_token = last_seen;
                            return Ok(page);
                        }
                        page.common_prefixes.push(cp);
                    }
                    last_seen = Some(key.clone());
                    continue;
                }
            }
            if page.objects.len() + page.common_prefixes.len() == max {
                page.next_continuation_token = last_seen;
                return Ok(page);
            }
            page.objects.push(ListedObject {
                key: key.clone(),
                size: o.data.len() as u64,
                etag: o.etag.clone(),
                last_modified: Some(o.modified),
                storage_class: o.options.storage_class.clone(),
            });
            last_seen = Some(key.clone());
        }
        Ok(page)
    }

    async fn copy_object(&self, bucket: &str, source_key: &str, dest_key: &str) -> Result<CopyResult, RemoteError> {
        self.gate("CopyObject", bucket, dest_key, None).await?;
        self.bucket_exists("CopyObject", bucket)?;
        let mut w = self.world();
        let b = w.buckets.get_mut(bucket).ok_or_else(|| service("CopyObject", 404, "NoSuchBucket", ""))?;
        let Some(src) = b.get(source_key).cloned() else {
            return Err(service("CopyObject", 404, "NoSuchKey", "The specified key does not exist."));
        };
        let result = CopyResult { etag: src.etag.clone(), crc64: Some(src.crc64) };
        b.insert(dest_key.to_string(), StoredObject { modified: SystemTime::now(), ..src });
        Ok(result)
    }

    async fn copy_object_with(
        &self,
        bucket: &str,
        source_key: &str,
        dest_key: &str,
        options: &CopyOptions,
    ) -> Result<CopyResult, RemoteError> {
        self.gate("CopyObject", bucket, dest_key, None).await?;
        self.bucket_exists("CopyObject", bucket)?;
        let mut w = self.world();
        let b = w.buckets.get_mut(bucket).ok_or_else(|| service("CopyObject", 404, "NoSuchBucket", ""))?;
        let Some(mut src) = b.get(source_key).cloned() else {
            return Err(service("CopyObject", 404, "NoSuchKey", "The specified key does not exist."));
        };
        if options.source_if_match.as_deref().is_some_and(|e| e.trim_matches('"') != src.etag.trim_matches('"')) {
            return Err(service("CopyObject", 412, "PreconditionFailed", "At least one of the pre-conditions failed."));
        }
        if let Some(replace) = &options.replace {
            src.options = replace.clone();
        }
        let result = CopyResult { etag: src.etag.clone(), crc64: Some(src.crc64) };
        b.insert(dest_key.to_string(), StoredObject { modified: SystemTime::now(), ..src });
        Ok(result)
    }

    async fn initiate_multipart(
        &self,
        bucket: &str,
        key: &str,
        options: &ObjectOptions,
    ) -> Result<String, RemoteError> {
        self.gate("InitiateMultipartUpload", bucket, key, None).await?;
        self.bucket_exists("InitiateMultipartUpload", bucket)?;
        let mut w = self.world();
        w.next_upload += 1;
        let id = format!("MEM{:029X}", w.next_upload);
        w.uploads.insert(
            id.clone(),
            PendingUpload {
                bucket: bucket.into(),
                key: key.into(),
                options: options.clone(),
                parts: BTreeMap::new(),
                initiated: SystemTime::now(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
    ) -> Result<PartResult, RemoteError> {
        self.gate("UploadPart", bucket, key, Some(part_number)).await?;
        if !(1..=10_000).contains(&part_number) {
            return Err(service(
                "UploadPart",
                400,
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000.",
            ));
        }
        if !self.world().uploads.contains_key(upload_id) {
            return Err(service("UploadPart", 404, "NoSuchUpload", "The specified upload does not exist."));
        }
        let (data, digest) = Self::receive("UploadPart", body).await?;
        let etag = format!("\"{}\"", md5_hex(&data));
        let mut w = self.world();
        w.bytes_received += data.len() as u64;
        let Some(upload) = w.uploads.get_mut(upload_id) else {
            return Err(service("UploadPart", 404, "NoSuchUpload", "The specified upload does not exist."));
        };
        let data = if self.corrupt_parts.load(std::sync::atomic::Ordering::Relaxed) && !data.is_empty() {
            let mut bad = data.to_vec();
            bad[0] ^= 0xFF;
            Bytes::from(bad)
        } else {
            data
        };
        let crc = crc64(&data);
        upload.parts.insert(part_number, StoredPart { data, etag: etag.clone(), crc64: crc });
        Ok(PartResult { part_number, etag, digest, request_id: None })
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
        self.gate("UploadPartCopy", bucket, key, Some(part_number)).await?;
        let mut w = self.world();
        let Some(src) = w.buckets.get(source_bucket).and_then(|b| b.get(source_key)) else {
            return Err(service("UploadPartCopy", 404, "NoSuchKey", "The specified key does not exist."));
        };
        let data = match source_range {
            Some(r) => src.data.slice(r.first as usize..=(r.last as usize).min(src.data.len().saturating_sub(1))),
            None => src.data.clone(),
        };
        let Some(upload) = w.uploads.get_mut(upload_id) else {
            return Err(service("UploadPartCopy", 404, "NoSuchUpload", "The specified upload does not exist."));
        };
        let etag = format!("\"{}\"", md5_hex(&data));
        let crc = crc64(&data);
        upload.parts.insert(part_number, StoredPart { data, etag: etag.clone(), crc64: crc });
        Ok(CopyPartResult { part_number, etag, crc64: Some(crc) })
    }

    async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number_marker: Option<u32>,
    ) -> Result<ListPartsPage, RemoteError> {
        self.gate("ListParts", bucket, key, None).await?;
        let w = self.world();
        let Some(upload) = w.uploads.get(upload_id) else {
            return Err(service("ListParts", 404, "NoSuchUpload", "The specified upload does not exist."));
        };
        const PAGE: usize = 1000;
        let start = part_number_marker.unwrap_or(0) + 1;
        let mut page = ListPartsPage::default();
        for (n, p) in upload.parts.range(start..) {
            if page.parts.len() == PAGE {
                page.next_part_number_marker = page.parts.last().map(|p: &ListedPart| p.part_number);
                break;
            }
            page.parts.push(ListedPart {
                part_number: *n,
                etag: p.etag.clone(),
                size: p.data.len() as u64,
                crc64: Some(p.crc64),
                last_modified: None,
            });
        }
        Ok(page)
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        options: &CompleteOptions,
    ) -> Result<CompleteResult, RemoteError> {
        const OP: &str = "CompleteMultipartUpload";
        self.gate(OP, bucket, key, None).await?;
        let mut w = self.world();
        let Some(upload) = w.uploads.get(upload_id) else {
            return Err(service(OP, 404, "NoSuchUpload", "The specified upload does not exist."));
        };
        if parts.is_empty() {
            return Err(service(OP, 400, "MalformedXML", "no parts"));
        }
        if parts.windows(2).any(|w| w[0].part_number >= w[1].part_number) {
            return Err(service(OP, 400, "InvalidPartOrder", "The list of parts was not in ascending order."));
        }
        if !self.capabilities.complete_with_part_subset && parts.len() != upload.parts.len() {
            return Err(service(OP, 400, "InvalidPart", "every uploaded part must be listed"));
        }
        let mut chosen = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let Some(stored) = upload.parts.get(&p.part_number) else {
                return Err(service(OP, 400, "InvalidPart", "One or more of the specified parts could not be found."));
            };
            if !stored.etag.trim_matches('"').eq_ignore_ascii_case(p.etag.trim_matches('"')) {
                return Err(service(OP, 400, "InvalidPart", "the specified entity tag does not match the part's"));
            }
            if i + 1 < parts.len() && stored.data.len() < 102_400 {
                return Err(service(
                    OP,
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size.",
                ));
            }
            chosen.push(stored.clone());
        }
        if options.forbid_overwrite && w.buckets.get(bucket).is_some_and(|b| b.contains_key(key)) {
            return Err(service(OP, 409, "FileAlreadyExists", "The object already exists."));
        }
        let mut data = BytesMut::new();
        let mut md5s = Vec::new();
        for p in &chosen {
            data.extend_from_slice(&p.data);
            md5s.extend_from_slice(&Md5::digest(&p.data));
        }
        let crc = crc64_fold(chosen.iter().map(|p| (p.crc64, p.data.len() as u64)));
        let etag = format!("\"{}-{}\"", md5_hex(&md5s), chosen.len());
        let upload = w.uploads.remove(upload_id).ok_or_else(|| service(OP, 404, "NoSuchUpload", ""))?;
        w.buckets.entry(bucket.to_string()).or_default().insert(
            key.to_string(),
            StoredObject {
                data: data.freeze(),
                etag: etag.clone(),
                crc64: crc,
                options: upload.options,
                multipart: true,
                modified: SystemTime::now(),
            },
        );
        let nvme = crate::checksum::crc64nvme(&w.buckets[bucket][key].data);
        Ok(CompleteResult { etag, crc64: Some(crc), crc64nvme: Some(nvme), request_id: None, callback: None })
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), RemoteError> {
        self.gate("AbortMultipartUpload", bucket, key, None).await?;
        self.world().uploads.remove(upload_id);
        Ok(())
    }

    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        request: &ListUploadsRequest,
    ) -> Result<ListUploadsPage, RemoteError> {
        self.gate("ListMultipartUploads", bucket, "", None).await?;
        let w = self.world();
        let prefix = request.prefix.clone().unwrap_or_default();
        let mut uploads: Vec<ListedUpload> = w
            .uploads
            .iter()
            .filter(|(_, u)| u.bucket == bucket && u.key.starts_with(&prefix))
            .map(|(id, u)| ListedUpload { key: u.key.clone(), upload_id: id.clone(), initiated: Some(u.initiated) })
            .collect();
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(ListUploadsPage { uploads, next_markers: None })
    }
}

fn info_of(key: &str, o: &StoredObject) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: o.data.len() as u64,
        etag: o.etag.clone(),
        crc64: Some(o.crc64),
        crc64nvme: Some(crate::checksum::crc64nvme(&o.data)),
        last_modified: Some(o.modified),
        content_type: o.options.content_type.clone(),
        metadata: o.options.metadata.clone(),
        storage_class: o.options.storage_class.clone(),
        object_type: Some(if o.multipart { "Multipart" } else { "Normal" }.into()),
    }
}
