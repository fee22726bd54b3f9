//! The object-store interface the engine and agent are written against.
//!
//! [`Remote`] is dialect-neutral: `remote/oss` implements it over the OSS REST API (V1 or V4 signing), and
//! `remote/s3` over the S3 API. Every call names its bucket, key and (for parts) part number explicitly, so a
//! failed part is rebuilt from its file range and re-signed, never replayed from a stale request.
//!
//! Integrity is part of the contract, not an option: an implementation of [`Remote::put_object`] and
//! [`Remote::upload_part`] computes the checksum of the bytes it actually sent ([`BodyDigest`]) and returns an
//! error when the server confirms different bytes. The engine builds its "never lie about sync" check on the
//! digests returned here.

pub mod body;
pub mod credentials;
pub mod error;
pub mod memory;
pub mod names;
pub mod options;
pub mod oss;
pub mod retry;
pub mod s3;
pub mod throttle;
pub(crate) mod transport;
pub mod xml;

use std::time::SystemTime;

use async_trait::async_trait;

pub use body::{Body, BodyDigest, FileRange};
pub use credentials::{Credentials, Secret};
pub use error::{ErrorKind, RemoteError, ServiceError};
pub use options::{CallbackOutcome, Encryption, UploadCallback};
pub use throttle::Throttle;

/// Which wire protocol a remote speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Oss,
    S3,
}

/// What a remote can confirm about stored bytes; the engine picks its final check from this.
///
/// The engine requires the whole object's checksum to equal the parts it sent, combined: CRC-64/XZ when
/// `object_crc64`, else CRC-64/NVME when `object_crc64nvme`. A remote with neither must verify the completed
/// object itself (for example against the parts' MD5 ETags) before `complete_multipart` answers `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The server reports the whole object's CRC-64/XZ (OSS `x-oss-hash-crc64ecma`) on Complete and HEAD.
    pub object_crc64: bool,
    /// The server reports the whole object's CRC-64/NVME (S3 full-object `x-amz-checksum-crc64nvme`).
    pub object_crc64nvme: bool,
    /// Completing with a subset of the uploaded parts is known to work on this server.
    pub complete_with_part_subset: bool,
}

/// Options that shape a new object (PutObject and InitiateMultipartUpload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectOptions {
    pub content_type: Option<String>,
    /// User metadata, names without the `x-oss-meta-` / `x-amz-meta-` prefix.
    pub metadata: Vec<(String, String)>,
    /// Canned ACL: `default`, `private`, `public-read`, `public-read-write`.
    pub acl: Option<String>,
    /// `Standard`, `IA`, `Archive`, `ColdArchive`, `DeepColdArchive`.
    pub storage_class: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    /// Fail with 409 FileAlreadyExists instead of replacing an existing object.
    pub forbid_overwrite: bool,
    /// Server-side encryption (`--sse`).
    pub encryption: Option<Encryption>,
    /// Object tags (`--tag k=v`).
    pub tags: Vec<(String, String)>,
    /// OSS upload callback, sent with PutObject (a multipart upload sends it with Complete).
    pub callback: Option<UploadCallback>,
}

/// The server's answer to a PutObject whose CRC-64 already matched the bytes sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub etag: String,
    /// Digest of the bytes that were sent and confirmed.
    pub digest: BodyDigest,
    pub request_id: Option<String>,
    /// The callback's outcome, when the upload asked for one.
    pub callback: Option<CallbackOutcome>,
}

/// The server's answer to an UploadPart whose CRC-64 already matched the bytes sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartResult {
    pub part_number: u32,
    pub etag: String,
    pub digest: BodyDigest,
    pub request_id: Option<String>,
}

/// An UploadPartCopy result: copies carry no guaranteed CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPartResult {
    pub part_number: u32,
    pub etag: String,
    pub crc64: Option<u64>,
}

/// What HeadObject reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// Whole-object CRC-64/XZ, when the server has one (copies and old objects may not).
    pub crc64: Option<u64>,
    /// Whole-object CRC-64/NVME, when an S3 server reports one.
    pub crc64nvme: Option<u64>,
    pub last_modified: Option<SystemTime>,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub storage_class: Option<String>,
    /// `Normal`, `Multipart`, `Appendable`, `Symlink`.
    pub object_type: Option<String>,
}

/// A byte range, inclusive of both ends, as HTTP `Range: bytes=first-last` means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    /// The range covering `len` bytes from `offset`; `None` when `len` is zero.
    pub fn from_offset_len(offset: u64, len: u64) -> Option<Self> {
        (len > 0).then(|| ByteRange { first: offset, last: offset + len - 1 })
    }
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A GetObject response with its body already read into memory (tests and verification use ranges).
#[derive(Debug, Clone)]
pub struct GetResult {
    pub info: ObjectInfo,
    pub body: bytes::Bytes,
    /// Set for a 206 answer: `bytes first-last/total`.
    pub content_range: Option<(ByteRange, u64)>,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub storage_class: Option<String>,
}

/// ListObjectsV2 parameters; `None` means "not sent".
#[derive(Debug, Clone, Default)]
pub struct ListObjectsRequest {
    pub prefix: Option<String>,
    pub delimiter: Option<String>,
    pub continuation_token: Option<String>,
    pub start_after: Option<String>,
    pub max_keys: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct ListObjectsPage {
    pub objects: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    /// Present when the listing is truncated; pass it back as `continuation_token`.
    pub next_continuation_token: Option<String>,
}

/// A part as ListParts reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
    pub crc64: Option<u64>,
    pub last_modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Default)]
pub struct ListPartsPage {
    pub parts: Vec<ListedPart>,
    /// Present when truncated; pass back as the next `part_number_marker`.
    pub next_part_number_marker: Option<u32>,
}

/// A multipart upload as ListMultipartUploads reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

#[derive(Debug, Clone, Default)]
pub struct ListUploadsRequest {
    pub prefix: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    pub max_uploads: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct ListUploadsPage {
    pub uploads: Vec<ListedUpload>,
    /// Present when truncated: `(next_key_marker, next_upload_id_marker)`.
    pub next_markers: Option<(String, String)>,
}

/// One `<Part>` of a CompleteMultipartUpload body, with what the engine knows of its bytes (a dialect
/// sends what its protocol needs: OSS only number and ETag, S3 also the part checksum).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompletedPart {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
    pub crc64: u64,
    pub crc64nvme: u64,
}

/// Options for CompleteMultipartUpload (OSS takes the ACL here, as the SDKs send it).
#[derive(Debug, Clone, Default)]
pub struct CompleteOptions {
    pub acl: Option<String>,
    pub forbid_overwrite: bool,
    pub callback: Option<UploadCallback>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteResult {
    pub etag: String,
    /// Whole-object CRC-64/XZ, when the server reports one.
    pub crc64: Option<u64>,
    /// Whole-object CRC-64/NVME, when an S3 server reports one.
    pub crc64nvme: Option<u64>,
    pub request_id: Option<String>,
    /// The callback's outcome, when the Complete asked for one.
    pub callback: Option<CallbackOutcome>,
}

/// How CopyObject treats the destination's metadata and the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `Some`: metadata directive REPLACE, the destination gets these content headers and user metadata
    /// instead of the source's (onto the same key, a metadata-only change). `None`: COPY keeps the source's.
    pub replace: Option<ObjectOptions>,
    /// Copy only while the source still has this ETag (`x-oss-copy-source-if-match`); 412 otherwise.
    pub source_if_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    pub etag: String,
    pub crc64: Option<u64>,
}

/// A key that DeleteMultipleObjects could not delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// Object-store operations, dialect-neutral. All methods re-sign on every retry.
#[async_trait]
pub trait Remote: Send + Sync + std::fmt::Debug {
    fn dialect(&self) -> Dialect;
    fn capabilities(&self) -> Capabilities;
    /// Where requests go, for logs and messages (never contains credentials).
    fn endpoint_display(&self) -> String;

    async fn create_bucket(&self, bucket: &str) -> Result<(), RemoteError>;

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Body,
        options: &ObjectOptions,
    ) -> Result<PutResult, RemoteError>;

    /// `Ok(None)` when the object does not exist.
    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, RemoteError>;

    async fn get_object(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<GetResult, RemoteError>;

    /// GetObject pinned to an ETag: with `if_match`, the server answers `412 PreconditionFailed` instead of
    /// the bytes of an object that was replaced (downloads send it on every range). The default serves only
    /// unconditional requests, so a wrapper that does not forward this cannot silently drop the condition.
    async fn get_object_if_match(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        if_match: Option<&str>,
    ) -> Result<GetResult, RemoteError> {
        match if_match {
            None => self.get_object(bucket, key, range).await,
            Some(_) => Err(RemoteError::invalid_input(
                format!("{} cannot send conditional GETs (If-Match)", self.endpoint_display()),
                "use the oss or s3 dialect",
            )),
        }
    }

    /// Succeeds when the key does not exist (OSS answers 204 either way).
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), RemoteError>;

    /// At most 1000 keys per call; returns the keys that failed.
    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<Vec<DeleteFailure>, RemoteError>;

    async fn list_objects(&self, bucket: &str, request: &ListObjectsRequest) -> Result<ListObjectsPage, RemoteError>;

    /// Server-side copy within one bucket, keeping metadata.
    async fn copy_object(&self, bucket: &str, source_key: &str, dest_key: &str) -> Result<CopyResult, RemoteError>;

    /// CopyObject with a metadata directive and a source condition (see [`CopyOptions`]); sources up to
    /// 1 GiB on OSS (larger ones: [`set_metadata`] copies part by part).
    async fn copy_object_with(
        &self,
        bucket: &str,
        source_key: &str,
        dest_key: &str,
        options: &CopyOptions,
    ) -> Result<CopyResult, RemoteError>;

    /// Returns the new upload id. Never in OSS `sequential` mode (it forbids re-sending a part number).
    async fn initiate_multipart(&self, bucket: &str, key: &str, options: &ObjectOptions)
    -> Result<String, RemoteError>;

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
    ) -> Result<PartResult, RemoteError>;

    #[allow(clippy::too_many_arguments)]
    async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_bucket: &str,
        source_key: &str,
        source_range: Option<ByteRange>,
    ) -> Result<CopyPartResult, RemoteError>;

    /// One page of ListParts: parts numbered above `part_number_marker`.
    async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number_marker: Option<u32>,
    ) -> Result<ListPartsPage, RemoteError>;

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        options: &CompleteOptions,
    ) -> Result<CompleteResult, RemoteError>;

    /// Succeeds when the upload is already gone (NoSuchUpload): the goal, no upload, holds.
    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), RemoteError>;

    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        request: &ListUploadsRequest,
    ) -> Result<ListUploadsPage, RemoteError>;
}

/// An ETag as a conditional header carries it: in double quotes (listings and HEAD may give it bare).
pub(crate) fn quote_etag(etag: &str) -> String {
    let bare = etag.trim_matches('"');
    format!("\"{bare}\"")
}

/// OSS CopyObject handles sources up to 1 GiB; larger ones are copied part by part (UploadPartCopy).
pub const MAX_COPY_OBJECT: u64 = 1 << 30;
/// Part size for copying large objects part by part (UploadPartCopy allows up to 5 GiB).
pub const COPY_PART: u64 = 1 << 30;

/// Give the object `key` (of `size` bytes, ETag `etag`) the content headers and user metadata of `options`,
/// server-side: CopyObject onto itself with the REPLACE directive, only while the object still has `etag`
/// (someone else's newer object is never relabelled as ours). Above [`MAX_COPY_OBJECT`] a multipart copy
/// onto itself initiated with `options` (the object is replaced only at Complete). Returns the new ETag;
/// the bytes are the same, so the CRC-64 is too.
pub async fn set_metadata(
    remote: &dyn Remote,
    bucket: &str,
    key: &str,
    size: u64,
    etag: &str,
    options: &ObjectOptions,
) -> Result<CopyResult, RemoteError> {
    if size <= MAX_COPY_OBJECT {
        let copy = CopyOptions { replace: Some(options.clone()), source_if_match: Some(etag.to_string()) };
        return remote.copy_object_with(bucket, key, key, &copy).await;
    }
    // UploadPartCopy here takes no condition: check the ETag first (the window is one request wide).
    match remote.head_object(bucket, key).await? {
        Some(info) if info.etag.trim_matches('"') == etag.trim_matches('"') && info.size == size => {}
        _ => {
            return Err(ServiceError {
                op: "CopyObject",
                status: 412,
                code: "PreconditionFailed".into(),
                message: format!("{key} is no longer the object that was uploaded"),
                request_id: None,
                host_id: None,
                ec: None,
                server_time: None,
            }
            .into());
        }
    }
    copy_in_parts(remote, bucket, key, key, size, options).await
}

/// Multipart copy of `source_key` (of `size` bytes) to `dest_key`, initiated with `options`; aborted on any
/// failure (no orphaned upload).
pub async fn copy_in_parts(
    remote: &dyn Remote,
    bucket: &str,
    source_key: &str,
    dest_key: &str,
    size: u64,
    options: &ObjectOptions,
) -> Result<CopyResult, RemoteError> {
    let upload_id = remote.initiate_multipart(bucket, dest_key, options).await?;
    let result = async {
        let mut parts = Vec::new();
        let count = size.div_ceil(COPY_PART);
        for n in 1..=count {
            let range = ByteRange::from_offset_len((n - 1) * COPY_PART, COPY_PART.min(size - (n - 1) * COPY_PART));
            let part =
                remote.upload_part_copy(bucket, dest_key, &upload_id, n as u32, bucket, source_key, range).await?;
            parts.push(CompletedPart { part_number: n as u32, etag: part.etag, ..Default::default() });
        }
        remote.complete_multipart(bucket, dest_key, &upload_id, &parts, &Default::default()).await
    }
    .await;
    match result {
        Ok(done) => Ok(CopyResult { etag: done.etag, crc64: done.crc64 }),
        Err(e) => {
            if let Err(abort) = remote.abort_multipart(bucket, dest_key, &upload_id).await {
                tracing::warn!(key = %dest_key, %upload_id, error = %abort, "could not abort a failed multipart copy");
            }
            Err(e)
        }
    }
}

/// More pages than any legal listing has (10,000 parts or a million uploads at 1000 per page): a server
/// that keeps answering "truncated" past this is broken, not busy.
const MAX_PAGES: usize = 100_000;

fn pagination_error(op: &'static str, detail: &str) -> RemoteError {
    RemoteError::BadResponse { op, detail: detail.into(), request_id: None }
}

/// Every part of an upload, following ListParts pagination to the end.
pub async fn list_all_parts(
    remote: &dyn Remote,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<Vec<ListedPart>, RemoteError> {
    let mut parts = Vec::new();
    let mut marker: Option<u32> = None;
    for _ in 0..MAX_PAGES {
        let page = remote.list_parts(bucket, key, upload_id, marker).await?;
        parts.extend(page.parts);
        match page.next_part_number_marker {
            // Markers must strictly increase: one that stands still or goes back (even alternating) would
            // loop forever while the list grows.
            Some(next) if marker.is_none_or(|m| next > m) => marker = Some(next),
            Some(_) => return Err(pagination_error("ListParts", "pagination marker did not advance")),
            None => return Ok(parts),
        }
    }
    Err(pagination_error("ListParts", "too many pages"))
}

fn markers_advance(request: &ListUploadsRequest, key: &str, upload_id: &str) -> bool {
    match (&request.key_marker, &request.upload_id_marker) {
        (Some(k), Some(u)) => (key, upload_id) > (k.as_str(), u.as_str()),
        (Some(k), None) => key > k.as_str(),
        _ => true,
    }
}

/// Every unfinished multipart upload under `prefix`, following pagination to the end.
pub async fn list_all_uploads(
    remote: &dyn Remote,
    bucket: &str,
    prefix: Option<&str>,
) -> Result<Vec<ListedUpload>, RemoteError> {
    let mut uploads = Vec::new();
    let mut request = ListUploadsRequest { prefix: prefix.map(str::to_string), ..Default::default() };
    for _ in 0..MAX_PAGES {
        let page = remote.list_multipart_uploads(bucket, &request).await?;
        uploads.extend(page.uploads);
        match page.next_markers {
            // (key, upload id) markers must strictly increase, as the listing is ordered by them.
            Some((k, u)) if markers_advance(&request, &k, &u) => {
                request.key_marker = Some(k);
                request.upload_id_marker = Some(u);
            }
            Some(_) => return Err(pagination_error("ListMultipartUploads", "pagination markers did not advance")),
            None => return Ok(uploads),
        }
    }
    Err(pagination_error("ListMultipartUploads", "too many pages"))
}

#[cfg(test)]
mod pagination_tests {
    use super::memory::MemoryRemote;
    use super::*;

    /// A remote whose ListParts alternates its marker (5, 3, 5, 3, …): the walk must stop with an error,
    /// not loop forever growing its list.
    #[derive(Debug)]
    struct Oscillating(MemoryRemote);

    #[async_trait]
    impl Remote for Oscillating {
        fn dialect(&self) -> Dialect {
            self.0.dialect()
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        fn endpoint_display(&self) -> String {
            self.0.endpoint_display()
        }
        async fn create_bucket(&self, b: &str) -> Result<(), RemoteError> {
            self.0.create_bucket(b).await
        }
        async fn put_object(&self, b: &str, k: &str, body: Body, o: &ObjectOptions) -> Result<PutResult, RemoteError> {
            self.0.put_object(b, k, body, o).await
        }
        async fn head_object(&self, b: &str, k: &str) -> Result<Option<ObjectInfo>, RemoteError> {
            self.0.head_object(b, k).await
        }
        async fn get_object(&self, b: &str, k: &str, r: Option<ByteRange>) -> Result<GetResult, RemoteError> {
            self.0.get_object(b, k, r).await
        }
        async fn delete_object(&self, b: &str, k: &str) -> Result<(), RemoteError> {
            self.0.delete_object(b, k).await
        }
        async fn delete_objects(&self, b: &str, k: &[String]) -> Result<Vec<DeleteFailure>, RemoteError> {
            self.0.delete_objects(b, k).await
        }
        async fn list_objects(&self, b: &str, r: &ListObjectsRequest) -> Result<ListObjectsPage, RemoteError> {
            self.0.list_objects(b, r).await
        }
        async fn copy_object(&self, b: &str, s: &str, d: &str) -> Result<CopyResult, RemoteError> {
            self.0.copy_object(b, s, d).await
        }
        async fn copy_object_with(
            &self,
            b: &str,
            s: &str,
            d: &str,
            o: &CopyOptions,
        ) -> Result<CopyResult, RemoteError> {
            self.0.copy_object_with(b, s, d, o).await
        }
        async fn initiate_multipart(&self, b: &str, k: &str, o: &ObjectOptions) -> Result<String, RemoteError> {
            self.0.initiate_multipart(b, k, o).await
        }
        async fn upload_part(&self, b: &str, k: &str, u: &str, n: u32, body: Body) -> Result<PartResult, RemoteError> {
            self.0.upload_part(b, k, u, n, body).await
        }
        async fn upload_part_copy(
            &self,
            b: &str,
            k: &str,
            u: &str,
            n: u32,
            sb: &str,
            sk: &str,
            r: Option<ByteRange>,
        ) -> Result<CopyPartResult, RemoteError> {
            self.0.upload_part_copy(b, k, u, n, sb, sk, r).await
        }
        async fn list_parts(
            &self,
            _: &str,
            _: &str,
            _: &str,
            marker: Option<u32>,
        ) -> Result<ListPartsPage, RemoteError> {
            let next = if marker == Some(5) { 3 } else { 5 };
            Ok(ListPartsPage { parts: Vec::new(), next_part_number_marker: Some(next) })
        }
        async fn complete_multipart(
            &self,
            b: &str,
            k: &str,
            u: &str,
            p: &[CompletedPart],
            o: &CompleteOptions,
        ) -> Result<CompleteResult, RemoteError> {
            self.0.complete_multipart(b, k, u, p, o).await
        }
        async fn abort_multipart(&self, b: &str, k: &str, u: &str) -> Result<(), RemoteError> {
            self.0.abort_multipart(b, k, u).await
        }
        async fn list_multipart_uploads(
            &self,
            _: &str,
            r: &ListUploadsRequest,
        ) -> Result<ListUploadsPage, RemoteError> {
            let next = if r.key_marker.as_deref() == Some("b") { "a" } else { "b" };
            Ok(ListUploadsPage { uploads: Vec::new(), next_markers: Some((next.into(), "u".into())) })
        }
    }

    #[tokio::test]
    async fn oscillating_markers_end_the_walk() {
        let r = Oscillating(MemoryRemote::new());
        let e = list_all_parts(&r, "b", "k", "u").await.unwrap_err();
        assert!(e.to_string().contains("did not advance"), "{e}");
        let e = list_all_uploads(&r, "b", None).await.unwrap_err();
        assert!(e.to_string().contains("did not advance"), "{e}");
    }
}
