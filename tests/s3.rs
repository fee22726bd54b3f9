//! The S3 dialect against SeaweedFS, a real distributed S3 store nobody here wrote.
//!
//! Every test shares one SeaweedFS instance (started on first use, see `common::seaweed`) and works in its
//! own bucket. Objects are read back through the client under test *and* independently through rclone.
//!
//! Crash and change scenarios wrap the real client in [`Hooked`], a failure-injecting `Remote`: it can hang
//! the k-th UploadPart (the test then drops the upload future, as kill -9 would stop it) or modify the file
//! at the moment a part is requested, so the scenarios are exact without timing assumptions.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::seaweed::{self, Seaweed};
use md5::Digest as _;
use ossmirror::engine::{Engine, EngineConfig, EngineError, EngineStats, UploadSpec};
use ossmirror::remote::retry::RetryPolicy;
use ossmirror::remote::s3::{Integrity, IntegrityMode, S3Client, S3Config};
use ossmirror::remote::{
    Body, ByteRange, Capabilities, CompleteOptions, CompleteResult, CompletedPart, CopyPartResult, CopyResult,
    Credentials, DeleteFailure, Dialect, ErrorKind, FileRange, GetResult, ListObjectsPage, ListObjectsRequest,
    ListPartsPage, ListUploadsPage, ListUploadsRequest, ObjectInfo, ObjectOptions, PartResult, PutResult, Remote,
    RemoteError, list_all_parts, list_all_uploads,
};
use ossmirror::state::StateDb;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
/// S3's (and SeaweedFS's) smallest part but the last.
const PART: u64 = 5 * MIB;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn config(sw: &Seaweed, integrity: IntegrityMode) -> S3Config {
    let (ak, sk) = sw.credentials();
    let mut c = S3Config::new(sw.endpoint());
    c.credentials = Some(Credentials::new(ak, sk));
    c.integrity = integrity;
    // Quick retries: a test that provokes errors should not wait minutes.
    c.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        deadline: Duration::from_secs(60),
    };
    c
}

fn client(sw: &Seaweed, integrity: IntegrityMode) -> S3Client {
    S3Client::new(config(sw, integrity)).expect("valid S3 config")
}

/// A fresh bucket, created through the client under test.
async fn bucket(sw: &Seaweed, c: &S3Client, hint: &str) -> String {
    let b = sw.unique_bucket(hint);
    c.create_bucket(&b).await.expect("create bucket");
    b
}

fn file_with(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn range(path: &Path, offset: u64, len: u64) -> Body {
    Body::File(FileRange { file: Arc::new(std::fs::File::open(path).unwrap()), offset, len })
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5::Md5::digest(data))
}

/// The object's bytes as rclone reads them (an independent S3 client).
fn rclone_cat(sw: &Seaweed, bucket: &str, key: &str) -> Vec<u8> {
    sw.rclone_ok(&["cat", &format!("sw:{bucket}/{key}")])
}

// ---------------------------------------------------------------------------------------------------------
// Objects

#[tokio::test]
async fn objects_round_trip_with_crc64nvme() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Auto);
    let b = bucket(sw, &c, "objects").await;
    assert_eq!(c.resolve_integrity(&b).await.unwrap(), Integrity::Crc64Nvme, "SeaweedFS 4.48 verifies CRC-64/NVME");
    assert!(c.capabilities().object_crc64nvme && !c.capabilities().object_crc64);
    assert_eq!(c.dialect(), Dialect::S3);
    // The probe cleaned up after itself.
    let probe = ListObjectsRequest { prefix: Some(".ossmirror-probe/".into()), ..Default::default() };
    assert!(c.list_objects(&b, &probe).await.unwrap().objects.is_empty());
    assert!(list_all_uploads(&c, &b, None).await.unwrap().is_empty());

    let content = data(300_000, 1);
    let options = ObjectOptions {
        content_type: Some("text/plain".into()),
        metadata: vec![("Author".into(), "alice".into())],
        ..Default::default()
    };
    let put = c.put_object(&b, "dir/a b+c.txt", Body::Bytes(Bytes::from(content.clone())), &options).await.unwrap();
    assert_eq!(put.digest.len, 300_000);
    assert_eq!(put.digest.crc64nvme, ossmirror::checksum::crc64nvme(&content));
    assert!(put.request_id.is_some());

    let info = c.head_object(&b, "dir/a b+c.txt").await.unwrap().expect("exists");
    assert_eq!(info.size, 300_000);
    assert_eq!(info.crc64nvme, Some(put.digest.crc64nvme), "HEAD reports the CRC-64/NVME");
    assert_eq!(info.content_type.as_deref(), Some("text/plain"));
    assert_eq!(info.metadata, vec![("author".to_string(), "alice".to_string())]);

    let got = c.get_object(&b, "dir/a b+c.txt", None).await.unwrap();
    assert_eq!(got.body.as_ref(), &content[..]);
    let part = c.get_object(&b, "dir/a b+c.txt", Some(ByteRange { first: 10, last: 99 })).await.unwrap();
    assert_eq!(part.body.as_ref(), &content[10..100]);
    assert_eq!(part.content_range, Some((ByteRange { first: 10, last: 99 }, 300_000)));
    assert_eq!(rclone_cat(sw, &b, "dir/a b+c.txt"), content, "rclone reads the same bytes");

    // A file range, streamed.
    let dir = tempfile::tempdir().unwrap();
    let big = data(3 * MIB as usize, 2);
    let path = file_with(dir.path(), "f", &big);
    let put = c.put_object(&b, "from-file", range(&path, 1000, 2 * MIB), &ObjectOptions::default()).await.unwrap();
    assert_eq!(put.digest.crc64nvme, ossmirror::checksum::crc64nvme(&big[1000..1000 + 2 * MIB as usize]));
    assert_eq!(rclone_cat(sw, &b, "from-file"), &big[1000..1000 + 2 * MIB as usize]);

    // Empty objects, overwrite, delete (twice: deleting nothing succeeds).
    c.put_object(&b, "empty", Body::Empty, &ObjectOptions::default()).await.unwrap();
    assert_eq!(c.head_object(&b, "empty").await.unwrap().unwrap().size, 0);
    c.put_object(&b, "empty", Body::Bytes(Bytes::from_static(b"now full")), &ObjectOptions::default()).await.unwrap();
    assert_eq!(c.get_object(&b, "empty", None).await.unwrap().body.as_ref(), b"now full");
    c.delete_object(&b, "empty").await.unwrap();
    c.delete_object(&b, "empty").await.unwrap();
    assert!(c.head_object(&b, "empty").await.unwrap().is_none());
}

#[tokio::test]
async fn listing_decodes_keys_and_pages() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Auto);
    let b = bucket(sw, &c, "listing").await;
    let keys = ["d/a b+c.txt", "d/x&y<z>'\"", "d/sub/1", "d/sub/2", "d/中文 ключ", "d/%41%2F", "top"];
    for k in keys {
        c.put_object(&b, k, Body::Bytes(Bytes::from(k.as_bytes().to_vec())), &ObjectOptions::default()).await.unwrap();
    }
    let all = c.list_objects(&b, &ListObjectsRequest::default()).await.unwrap();
    let mut listed: Vec<&str> = all.objects.iter().map(|o| o.key.as_str()).collect();
    listed.sort();
    let mut want = keys.to_vec();
    want.sort();
    assert_eq!(listed, want, "keys come back exactly (url-encoded on the wire, decoded here)");
    assert!(all.objects.iter().all(|o| o.size > 0 && !o.etag.is_empty() && o.last_modified.is_some()));

    let delimited = ListObjectsRequest { prefix: Some("d/".into()), delimiter: Some("/".into()), ..Default::default() };
    let page = c.list_objects(&b, &delimited).await.unwrap();
    assert_eq!(page.common_prefixes, vec!["d/sub/".to_string()]);
    assert_eq!(page.objects.len(), 4);

    // Pagination: two at a time, the continuation token passed back verbatim.
    let mut request = ListObjectsRequest { prefix: Some("d/".into()), max_keys: Some(2), ..Default::default() };
    let mut paged = Vec::new();
    loop {
        let page = c.list_objects(&b, &request).await.unwrap();
        assert!(page.objects.len() <= 2);
        paged.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_continuation_token {
            Some(t) => request.continuation_token = Some(t),
            None => break,
        }
    }
    let mut want_d: Vec<String> = keys.iter().filter(|k| k.starts_with("d/")).map(|k| k.to_string()).collect();
    want_d.sort();
    assert_eq!(paged, want_d, "every key once, in order");
    let after = ListObjectsRequest { start_after: Some("d/sub/1".into()), ..Default::default() };
    let page = c.list_objects(&b, &after).await.unwrap();
    assert!(page.objects.iter().all(|o| o.key.as_str() > "d/sub/1"));

    // DeleteObjects (Content-MD5, as S3 requires), a missing key included.
    let doomed: Vec<String> = vec!["d/sub/1".into(), "d/sub/2".into(), "never-existed".into()];
    assert!(c.delete_objects(&b, &doomed).await.unwrap().is_empty());
    // (Not the common prefix: SeaweedFS removes the emptied directory in the background.)
    let sub = ListObjectsRequest { prefix: Some("d/sub/".into()), ..Default::default() };
    assert!(c.list_objects(&b, &sub).await.unwrap().objects.is_empty());
    assert!(c.head_object(&b, "d/sub/1").await.unwrap().is_none());
}

#[tokio::test]
async fn copies_within_a_bucket() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Auto);
    let b = bucket(sw, &c, "copies").await;
    let content = data(6 * MIB as usize, 3);
    c.put_object(&b, "src key", Body::Bytes(Bytes::from(content.clone())), &ObjectOptions::default()).await.unwrap();
    let copied = c.copy_object(&b, "src key", "dst/copy").await.unwrap();
    assert!(!copied.etag.is_empty());
    assert_eq!(c.get_object(&b, "dst/copy", None).await.unwrap().body.as_ref(), &content[..]);

    // UploadPartCopy: a multipart object assembled from ranges of the source.
    let id = c.initiate_multipart(&b, "assembled", &ObjectOptions::default()).await.unwrap();
    let p1 = c
        .upload_part_copy(&b, "assembled", &id, 1, &b, "src key", Some(ByteRange { first: 0, last: PART - 1 }))
        .await
        .unwrap();
    let p2 = c
        .upload_part_copy(&b, "assembled", &id, 2, &b, "src key", Some(ByteRange { first: PART, last: 6 * MIB - 1 }))
        .await
        .unwrap();
    let listed = list_all_parts(&c, &b, "assembled", &id).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.size).collect::<Vec<_>>(), vec![PART, MIB]);
    // A copied part carries no CRC we computed: give Complete the CRCs of the bytes we know it holds.
    let parts = vec![
        CompletedPart {
            part_number: 1,
            etag: p1.etag,
            size: PART,
            crc64nvme: ossmirror::checksum::crc64nvme(&content[..PART as usize]),
            ..Default::default()
        },
        CompletedPart {
            part_number: 2,
            etag: p2.etag,
            size: MIB,
            crc64nvme: ossmirror::checksum::crc64nvme(&content[PART as usize..]),
            ..Default::default()
        },
    ];
    let done = c.complete_multipart(&b, "assembled", &id, &parts, &CompleteOptions::default()).await.unwrap();
    assert_eq!(done.crc64nvme, Some(ossmirror::checksum::crc64nvme(&content)));
    assert_eq!(rclone_cat(sw, &b, "assembled"), content);
}

// ---------------------------------------------------------------------------------------------------------
// Multipart, both integrity modes

async fn multipart_round_trip(integrity: IntegrityMode) -> (S3Client, String, Vec<u8>, CompleteResult) {
    let sw = seaweed::shared();
    let c = client(sw, integrity);
    let b = bucket(sw, &c, "multipart").await;
    let dir = tempfile::tempdir().unwrap();
    let content = data((2 * PART + 12345) as usize, 4);
    let path = file_with(dir.path(), "big", &content);
    let id = c.initiate_multipart(&b, "big object", &ObjectOptions::default()).await.unwrap();
    let mut parts = Vec::new();
    for (n, (offset, len)) in [(0, PART), (PART, PART), (2 * PART, 12345)].into_iter().enumerate() {
        let n = n as u32 + 1;
        let r = c.upload_part(&b, "big object", &id, n, range(&path, offset, len)).await.unwrap();
        assert_eq!(r.digest.len, len);
        let slice = &content[offset as usize..(offset + len) as usize];
        assert_eq!(r.digest.crc64nvme, ossmirror::checksum::crc64nvme(slice));
        if integrity == IntegrityMode::ContentMd5 {
            assert_eq!(r.etag.trim_matches('"'), md5_hex(slice), "a part's ETag is its MD5");
        }
        parts.push(CompletedPart {
            part_number: n,
            etag: r.etag,
            size: len,
            crc64: r.digest.crc64,
            crc64nvme: r.digest.crc64nvme,
        });
    }
    let listed = list_all_parts(&c, &b, "big object", &id).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed.iter().map(|p| p.etag.as_str()).collect::<Vec<_>>(),
        parts.iter().map(|p| p.etag.as_str()).collect::<Vec<_>>()
    );
    let uploads = list_all_uploads(&c, &b, Some("big")).await.unwrap();
    assert_eq!(
        uploads.iter().map(|u| (u.key.as_str(), u.upload_id.as_str())).collect::<Vec<_>>(),
        vec![("big object", id.as_str())]
    );
    let done = c.complete_multipart(&b, "big object", &id, &parts, &CompleteOptions::default()).await.unwrap();
    assert!(done.etag.ends_with("-3\""), "{}", done.etag);
    assert_eq!(c.get_object(&b, "big object", None).await.unwrap().body.as_ref(), &content[..]);
    assert_eq!(rclone_cat(sw, &b, "big object"), content);
    (c, b, content, done)
}

#[tokio::test]
async fn multipart_with_full_object_crc64nvme() {
    let (c, b, content, done) = multipart_round_trip(IntegrityMode::Crc64Nvme).await;
    let whole = ossmirror::checksum::crc64nvme(&content);
    assert_eq!(done.crc64nvme, Some(whole), "Complete returns the full-object CRC-64/NVME");
    assert_eq!(c.head_object(&b, "big object").await.unwrap().unwrap().crc64nvme, Some(whole));
}

#[tokio::test]
async fn multipart_with_content_md5() {
    let (c, b, content, done) = multipart_round_trip(IntegrityMode::ContentMd5).await;
    assert_eq!(c.integrity(), Some(Integrity::ContentMd5));
    assert!(!c.capabilities().object_crc64nvme && !c.capabilities().object_crc64, "Complete verifies itself");
    // The multipart ETag is MD5 of the part MD5s, as the client checked before answering Ok.
    let mut concat = Vec::new();
    for chunk in [&content[..PART as usize], &content[PART as usize..2 * PART as usize], &content[2 * PART as usize..]]
    {
        concat.extend_from_slice(&md5::Md5::digest(chunk));
    }
    assert_eq!(done.etag.trim_matches('"'), format!("{}-3", md5_hex(&concat)));
    assert_eq!(c.head_object(&b, "big object").await.unwrap().unwrap().size, content.len() as u64);
}

#[tokio::test]
async fn complete_refuses_parts_with_wrong_checksums() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Crc64Nvme);
    let b = bucket(sw, &c, "wrongcrc").await;
    let content = data((PART + 100) as usize, 5);
    let id = c.initiate_multipart(&b, "k", &ObjectOptions::default()).await.unwrap();
    let p1 = c.upload_part(&b, "k", &id, 1, Body::Bytes(Bytes::from(content[..PART as usize].to_vec()))).await.unwrap();
    let p2 = c.upload_part(&b, "k", &id, 2, Body::Bytes(Bytes::from(content[PART as usize..].to_vec()))).await.unwrap();
    let part = |r: &PartResult, size: u64, crc64nvme: u64| CompletedPart {
        part_number: r.part_number,
        etag: r.etag.clone(),
        size,
        crc64: r.digest.crc64,
        crc64nvme,
    };
    // Claim other bytes for part 2 than were sent: the server refuses, nothing is published.
    let wrong = vec![part(&p1, PART, p1.digest.crc64nvme), part(&p2, 100, p2.digest.crc64nvme ^ 1)];
    let err = c.complete_multipart(&b, "k", &id, &wrong, &CompleteOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(err.code(), Some("BadDigest"), "{err}");
    assert!(c.head_object(&b, "k").await.unwrap().is_none(), "no object was published");
    // The upload survives a refused Complete; the right parts complete it.
    let right = vec![part(&p1, PART, p1.digest.crc64nvme), part(&p2, 100, p2.digest.crc64nvme)];
    let done = c.complete_multipart(&b, "k", &id, &right, &CompleteOptions::default()).await.unwrap();
    assert_eq!(done.crc64nvme, Some(ossmirror::checksum::crc64nvme(&content)));
}

/// A body whose declared checksum does not match its bytes never succeeds: signed by hand (the client
/// itself cannot be made to declare a wrong checksum), SeaweedFS refuses it, and nothing is stored.
#[tokio::test]
async fn a_declared_checksum_that_does_not_match_is_refused() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Crc64Nvme);
    let b = bucket(sw, &c, "baddecl").await;
    let body = b"the bytes on the wire".to_vec();
    let (ak, sk) = sw.credentials();
    let url = format!("{}/{b}/bad", sw.endpoint());
    let host = sw.endpoint().trim_start_matches("http://").to_string();
    for (header, value) in [
        ("x-amz-checksum-crc64nvme", base64_u64(ossmirror::checksum::crc64nvme(b"other bytes"))),
        ("content-md5", base64_bytes(&md5::Md5::digest(b"other bytes"))),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", host.parse().unwrap());
        headers.insert(header, value.parse().unwrap());
        headers.insert("content-length", body.len().into());
        ossmirror::remote::s3::sign::Signer::new("us-east-1").sign(
            &Credentials::new(ak, sk),
            "PUT",
            &format!("/{b}/bad"),
            &[],
            &mut headers,
            "UNSIGNED-PAYLOAD",
            std::time::SystemTime::now(),
        );
        let resp = reqwest::Client::new().put(&url).headers(headers).body(body.clone()).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{header}");
        assert!(resp.text().await.unwrap().contains("<Code>BadDigest</Code>"), "{header}");
        assert!(c.head_object(&b, "bad").await.unwrap().is_none(), "{header}: nothing stored");
    }
}

fn base64_u64(v: u64) -> String {
    base64_bytes(&v.to_be_bytes())
}

fn base64_bytes(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

// ---------------------------------------------------------------------------------------------------------
// Errors

#[tokio::test]
async fn error_classes() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Auto);
    let b = bucket(sw, &c, "errors").await;

    let mut wrong_secret = config(sw, IntegrityMode::Crc64Nvme);
    wrong_secret.credentials = Some(Credentials::new(seaweed::ACCESS_KEY, "not-the-secret-at-all"));
    let e = S3Client::new(wrong_secret).unwrap().list_objects(&b, &ListObjectsRequest::default()).await.unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Auth, Some("SignatureDoesNotMatch")), "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "the hint names the variable: {e}");
    assert!(!e.to_string().contains("not-the-secret-at-all"));

    let mut unknown = config(sw, IntegrityMode::Crc64Nvme);
    unknown.credentials = Some(Credentials::new("NOSUCHKEYID", "whatever-secret"));
    let e = S3Client::new(unknown).unwrap().list_objects(&b, &ListObjectsRequest::default()).await.unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Auth, Some("InvalidAccessKeyId")), "{e}");

    let missing = sw.unique_bucket("missing");
    let e = c.list_objects(&missing, &ListObjectsRequest::default()).await.unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::NotFound, Some("NoSuchBucket")), "{e}");
    let e = c
        .put_object(&missing, "k", Body::Bytes(Bytes::from_static(b"x")), &ObjectOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let e = c.get_object(&b, "no/such/key", None).await.unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::NotFound, Some("NoSuchKey")), "{e}");
    assert!(e.service().unwrap().request_id.is_some(), "errors keep the request id");
    assert!(c.head_object(&b, "no/such/key").await.unwrap().is_none());

    let e = c.list_parts(&b, "k", "no-such-upload-id", None).await.unwrap_err();
    assert!(e.is_no_such_upload(), "{e}");
    let e = c.upload_part(&b, "k", "no-such-upload-id", 1, Body::Bytes(Bytes::from_static(b"x"))).await.unwrap_err();
    assert!(e.is_no_such_upload(), "{e}");
    c.abort_multipart(&b, "k", "no-such-upload-id").await.expect("aborting a missing upload is Ok");

    let id = c.initiate_multipart(&b, "k", &ObjectOptions::default()).await.unwrap();
    c.abort_multipart(&b, "k", &id).await.unwrap();
    c.abort_multipart(&b, "k", &id).await.unwrap();
    assert!(list_all_uploads(&c, &b, None).await.unwrap().is_empty());

    // Nothing listens: a transport error naming the S3 endpoint variable.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut dead = config(sw, IntegrityMode::Crc64Nvme);
    dead.endpoint = format!("http://127.0.0.1:{port}");
    dead.retry = RetryPolicy::none();
    let e = S3Client::new(dead).unwrap().head_object(&b, "k").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("AWS_ENDPOINT_URL"), "{e}");
    // Bad input never reaches the server.
    assert_eq!(c.head_object("Bad_Bucket", "k").await.unwrap_err().kind(), ErrorKind::Input);
    assert_eq!(c.head_object(&b, "/abs").await.unwrap_err().kind(), ErrorKind::Input);
}

#[tokio::test]
async fn clock_skew_is_corrected() {
    let sw = seaweed::shared();
    let c = client(sw, IntegrityMode::Crc64Nvme);
    let b = bucket(sw, &c, "skew").await;
    // Pretend our clock is an hour behind the server; the first answer (RequestTimeTooSkewed) fixes it.
    c.set_clock_offset_ms(-3_600_000);
    let result = c.list_objects(&b, &ListObjectsRequest::default()).await;
    match result {
        Ok(_) => assert!(c.clock_offset_ms().abs() < 600_000, "offset corrected to {}", c.clock_offset_ms()),
        // A server that answers skew without a Date header cannot be corrected; it must say why.
        Err(e) => assert_eq!(e.code(), Some("RequestTimeTooSkewed"), "{e}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The engine against SeaweedFS

/// What [`Hooked`] does when a request is made.
enum Action {
    Proceed,
    /// Never answer (the test drops the future).
    Hang,
}

type Hook = Box<dyn Fn(&'static str, Option<u32>) -> Action + Send + Sync>;

/// A failure-injecting remote around the real client: every call is delegated, after the hook had its say.
struct Hooked {
    inner: S3Client,
    hook: Mutex<Option<Hook>>,
    reached: tokio::sync::Notify,
    counts: Mutex<std::collections::HashMap<&'static str, u32>>,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").field("inner", &self.inner).finish()
    }
}

impl Hooked {
    fn new(inner: S3Client) -> Arc<Self> {
        Arc::new(Hooked {
            inner,
            hook: Mutex::new(None),
            reached: tokio::sync::Notify::new(),
            counts: Mutex::default(),
        })
    }

    fn set(&self, hook: impl Fn(&'static str, Option<u32>) -> Action + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }

    fn clear(&self) {
        *self.hook.lock().unwrap() = None;
    }

    fn count(&self, op: &str) -> u32 {
        self.counts.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    async fn gate(&self, op: &'static str, part: Option<u32>) {
        *self.counts.lock().unwrap().entry(op).or_default() += 1;
        let action = self.hook.lock().unwrap().as_ref().map_or(Action::Proceed, |h| h(op, part));
        if let Action::Hang = action {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Remote for Hooked {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn endpoint_display(&self) -> String {
        self.inner.endpoint_display()
    }
    async fn create_bucket(&self, bucket: &str) -> Result<(), RemoteError> {
        self.gate("CreateBucket", None).await;
        self.inner.create_bucket(bucket).await
    }
    async fn put_object(&self, b: &str, k: &str, body: Body, o: &ObjectOptions) -> Result<PutResult, RemoteError> {
        self.gate("PutObject", None).await;
        self.inner.put_object(b, k, body, o).await
    }
    async fn head_object(&self, b: &str, k: &str) -> Result<Option<ObjectInfo>, RemoteError> {
        self.gate("HeadObject", None).await;
        self.inner.head_object(b, k).await
    }
    async fn get_object(&self, b: &str, k: &str, r: Option<ByteRange>) -> Result<GetResult, RemoteError> {
        self.gate("GetObject", None).await;
        self.inner.get_object(b, k, r).await
    }
    async fn delete_object(&self, b: &str, k: &str) -> Result<(), RemoteError> {
        self.gate("DeleteObject", None).await;
        self.inner.delete_object(b, k).await
    }
    async fn delete_objects(&self, b: &str, keys: &[String]) -> Result<Vec<DeleteFailure>, RemoteError> {
        self.gate("DeleteObjects", None).await;
        self.inner.delete_objects(b, keys).await
    }
    async fn list_objects(&self, b: &str, r: &ListObjectsRequest) -> Result<ListObjectsPage, RemoteError> {
        self.gate("ListObjectsV2", None).await;
        self.inner.list_objects(b, r).await
    }
    async fn copy_object(&self, b: &str, s: &str, d: &str) -> Result<CopyResult, RemoteError> {
        self.gate("CopyObject", None).await;
        self.inner.copy_object(b, s, d).await
    }
    async fn copy_object_with(
        &self,
        b: &str,
        s: &str,
        d: &str,
        o: &ossmirror::remote::CopyOptions,
    ) -> Result<CopyResult, RemoteError> {
        self.gate("CopyObject", None).await;
        self.inner.copy_object_with(b, s, d, o).await
    }
    async fn initiate_multipart(&self, b: &str, k: &str, o: &ObjectOptions) -> Result<String, RemoteError> {
        self.gate("CreateMultipartUpload", None).await;
        self.inner.initiate_multipart(b, k, o).await
    }
    async fn upload_part(&self, b: &str, k: &str, id: &str, n: u32, body: Body) -> Result<PartResult, RemoteError> {
        self.gate("UploadPart", Some(n)).await;
        self.inner.upload_part(b, k, id, n, body).await
    }
    async fn upload_part_copy(
        &self,
        b: &str,
        k: &str,
        id: &str,
        n: u32,
        sb: &str,
        sk: &str,
        r: Option<ByteRange>,
    ) -> Result<CopyPartResult, RemoteError> {
        self.gate("UploadPartCopy", Some(n)).await;
        self.inner.upload_part_copy(b, k, id, n, sb, sk, r).await
    }
    async fn list_parts(&self, b: &str, k: &str, id: &str, m: Option<u32>) -> Result<ListPartsPage, RemoteError> {
        self.gate("ListParts", None).await;
        self.inner.list_parts(b, k, id, m).await
    }
    async fn complete_multipart(
        &self,
        b: &str,
        k: &str,
        id: &str,
        parts: &[CompletedPart],
        o: &CompleteOptions,
    ) -> Result<CompleteResult, RemoteError> {
        self.gate("CompleteMultipartUpload", None).await;
        self.inner.complete_multipart(b, k, id, parts, o).await
    }
    async fn abort_multipart(&self, b: &str, k: &str, id: &str) -> Result<(), RemoteError> {
        self.gate("AbortMultipartUpload", None).await;
        self.inner.abort_multipart(b, k, id).await
    }
    async fn list_multipart_uploads(&self, b: &str, r: &ListUploadsRequest) -> Result<ListUploadsPage, RemoteError> {
        self.gate("ListMultipartUploads", None).await;
        self.inner.list_multipart_uploads(b, r).await
    }
}

struct Bed {
    sw: &'static Seaweed,
    dir: tempfile::TempDir,
    remote: Arc<Hooked>,
    state: StateDb,
    bucket: String,
}

impl Bed {
    async fn new(hint: &str, integrity: IntegrityMode) -> Bed {
        let sw = seaweed::shared();
        let c = client(sw, integrity);
        let bucket = bucket(sw, &c, hint).await;
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = StateDb::open(&dir.path().join("state.db")).unwrap();
        Bed { sw, dir, remote: Hooked::new(c), state, bucket }
    }

    fn engine(&self) -> Engine {
        let config = EngineConfig {
            part_size: PART,
            threads: 2,
            multipart_threshold: PART,
            racy_window: Duration::from_millis(50),
            ..EngineConfig::default()
        };
        Engine::new(self.remote.clone(), self.state.clone(), config).unwrap()
    }

    fn spec(&self, path: &Path, key: &str) -> UploadSpec {
        UploadSpec {
            path: path.to_path_buf(),
            bucket: self.bucket.clone(),
            key: key.into(),
            options: ObjectOptions::default(),
        }
    }

    async fn object(&self, key: &str) -> Vec<u8> {
        self.remote.inner.get_object(&self.bucket, key, None).await.unwrap().body.to_vec()
    }

    async fn pending_uploads(&self) -> usize {
        list_all_uploads(&self.remote.inner, &self.bucket, None).await.unwrap().len()
    }
}

async fn upload(engine: &Engine, spec: &UploadSpec) -> Result<ossmirror::engine::UploadOutcome, EngineError> {
    engine.upload(spec, None, &CancellationToken::new()).await
}

#[tokio::test]
async fn engine_uploads_small_and_multipart_files() {
    for integrity in [IntegrityMode::Auto, IntegrityMode::ContentMd5] {
        let bed = Bed::new("engine", integrity).await;
        let small = data(100_000, 10);
        let small_path = file_with(bed.dir.path(), "small", &small);
        let out = upload(&bed.engine(), &bed.spec(&small_path, "small")).await.unwrap();
        assert_eq!(out.crc64, ossmirror::checksum::crc64(&small));
        assert_eq!(bed.object("small").await, small);

        let big = data((3 * PART + 4321) as usize, 11);
        let big_path = file_with(bed.dir.path(), "big", &big);
        let engine = bed.engine();
        let out = upload(&engine, &bed.spec(&big_path, "dir/big file")).await.unwrap();
        assert_eq!((out.parts_sent, out.parts_reused, out.passes), (4, 0, 1), "{integrity:?}");
        assert_eq!(bed.object("dir/big file").await, big, "{integrity:?}");
        assert_eq!(bed.pending_uploads().await, 0);
        assert!(bed.state.synced(&bed.bucket, "dir/big file").unwrap().is_some());
        // rclone agrees, byte for byte, on the whole tree (downloading, since multipart ETags are no MD5).
        let local = bed.dir.path().join("tree");
        std::fs::create_dir_all(local.join("dir")).unwrap();
        std::fs::write(local.join("small"), &small).unwrap();
        std::fs::write(local.join("dir/big file"), &big).unwrap();
        bed.sw.rclone_ok(&["check", "--download", "--one-way", local.to_str().unwrap(), &format!("sw:{}", bed.bucket)]);
    }
}

#[tokio::test]
async fn engine_resumes_after_a_crash_sending_only_missing_parts() {
    let bed = Bed::new("resume", IntegrityMode::Auto).await;
    let content = data((4 * PART + 99) as usize, 12);
    let path = file_with(bed.dir.path(), "big", &content);
    let spec = bed.spec(&path, "resumed");
    // Crash while the 4th part request is in flight.
    let seen = AtomicU32::new(0);
    bed.remote.set(move |op, _| {
        if op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) + 1 == 4 {
            return Action::Hang;
        }
        Action::Proceed
    });
    let engine = bed.engine();
    tokio::select! {
        r = upload(&engine, &spec) => panic!("the upload should hang at the crash point: {r:?}"),
        _ = bed.remote.reached.notified() => {}
    }
    drop(engine);
    bed.remote.clear();
    assert_eq!(bed.pending_uploads().await, 1, "the server-side upload is still there");

    let engine = bed.engine();
    let out = upload(&engine, &spec).await.unwrap();
    assert!(out.resumed);
    // Parts 1-3 were acknowledged before the crash (threads = 2: the hang is the 4th request, so 3 were
    // answered or in flight; only acknowledged ones are reused).
    assert!(out.parts_reused >= 2 && out.parts_reused + out.parts_sent == 5, "{out:?}");
    assert_eq!(bed.remote.count("CreateMultipartUpload"), 1, "same upload id");
    assert_eq!(bed.object("resumed").await, content);
    assert_eq!(rclone_cat(bed.sw, &bed.bucket, "resumed"), content);
    assert_eq!(bed.pending_uploads().await, 0);
}

#[tokio::test]
async fn engine_resends_only_the_part_modified_mid_upload() {
    let bed = Bed::new("modify", IntegrityMode::Auto).await;
    let mut content = data((4 * PART) as usize, 13);
    let path = file_with(bed.dir.path(), "big", &content);
    let target = path.clone();
    // When part 4 is requested, overwrite bytes inside part 2 (already sent).
    let seen = AtomicU32::new(0);
    bed.remote.set(move |op, _| {
        if op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 3 {
            let mut f = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
            f.seek(SeekFrom::Start(PART + 100)).unwrap();
            f.write_all(b"CHANGED!").unwrap();
        }
        Action::Proceed
    });
    let engine = Engine::new(
        bed.remote.clone(),
        bed.state.clone(),
        EngineConfig {
            part_size: PART,
            threads: 1,
            multipart_threshold: PART,
            racy_window: Duration::from_millis(50),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let out = upload(&engine, &bed.spec(&path, "modified")).await.unwrap();
    content[(PART + 100) as usize..(PART + 108) as usize].copy_from_slice(b"CHANGED!");
    assert_eq!(out.passes, 2);
    assert_eq!(EngineStats::get(&engine.stats().parts_resent), 1, "only part 2 was sent again");
    assert_eq!(bed.remote.count("CreateMultipartUpload"), 1);
    assert_eq!(bed.object("modified").await, content, "the object is the final file");
    assert_eq!(rclone_cat(bed.sw, &bed.bucket, "modified"), content);
}

#[tokio::test]
async fn engine_leaves_out_parts_past_a_truncation() {
    let bed = Bed::new("truncate", IntegrityMode::Auto).await;
    let content = data((4 * PART) as usize, 14);
    let path = file_with(bed.dir.path(), "big", &content);
    let target = path.clone();
    let seen = AtomicU32::new(0);
    bed.remote.set(move |op, _| {
        if op == "UploadPart" && seen.fetch_add(1, Ordering::SeqCst) == 3 {
            std::fs::OpenOptions::new().write(true).open(&target).unwrap().set_len(2 * PART + 7).unwrap();
        }
        Action::Proceed
    });
    let engine = Engine::new(
        bed.remote.clone(),
        bed.state.clone(),
        EngineConfig { part_size: PART, threads: 1, racy_window: Duration::from_millis(50), ..EngineConfig::default() },
    )
    .unwrap();
    upload(&engine, &bed.spec(&path, "shrunk")).await.unwrap();
    assert_eq!(bed.object("shrunk").await, &content[..(2 * PART + 7) as usize]);
    assert_eq!(bed.remote.count("CreateMultipartUpload"), 1, "SeaweedFS accepts a Complete with a part subset");
    assert_eq!(bed.pending_uploads().await, 0);
}

// ---------------------------------------------------------------------------------------------------------
// `ossmirror cp --protocol s3` as a process

#[test]
fn cp_uploads_over_s3_end_to_end() {
    let sw = seaweed::shared();
    let bucket = sw.unique_bucket("cp");
    sw.rclone_ok(&["mkdir", &format!("sw:{bucket}")]);
    let dir = tempfile::tempdir().unwrap();
    let content = data((2 * PART + 333) as usize, 15);
    let path = file_with(dir.path(), "payload.bin", &content);
    let (ak, sk) = sw.credentials();
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(common::binary());
        cmd.arg("cp")
            .arg(&path)
            .arg(format!("s3://{bucket}/up/"))
            .args(["--protocol", "s3", "--part-size", "5M", "--no-progress"])
            .arg("--checkpoint-db")
            .arg(dir.path().join("cp.db"))
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk)
            .env("AWS_ENDPOINT_URL", sw.endpoint())
            .env_remove("OSS_ENDPOINT")
            .env("NO_COLOR", "1");
        cmd.output().expect("run ossmirror cp")
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cp failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("3 parts sent") && stdout.contains(&format!("s3://{bucket}/up/payload.bin")), "{stdout}");
    assert!(!stderr.contains(sk) && !stdout.contains(sk), "the secret never shows");
    assert_eq!(rclone_cat(sw, &bucket, "up/payload.bin"), content);

    // The Content-MD5 fallback, chosen by flag, also ends verified.
    let out = run(&["--s3-integrity", "md5"]);
    assert!(out.status.success(), "cp (md5) failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rclone_cat(sw, &bucket, "up/payload.bin"), content);

    // A wrong secret is a clear failure, not a hang, and exits non-zero.
    let mut cmd = Command::new(common::binary());
    let out = cmd
        .arg("cp")
        .arg(&path)
        .arg(format!("s3://{bucket}/x"))
        .args(["--protocol", "s3", "--no-checkpoint", "--no-progress"])
        .env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
        .env("AWS_ENDPOINT_URL", sw.endpoint())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(!stderr.contains("definitely-wrong-secret"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------
// The agent (`ossmirror --watch … --protocol s3 --once`) as a process

/// Every object under `bucket` with its content, read back through rclone (not through our client).
fn remote_tree(sw: &Seaweed, bucket: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let listing = String::from_utf8(sw.rclone_ok(&["lsf", "-R", "--files-only", &format!("sw:{bucket}")])).unwrap();
    listing.lines().map(|key| (key.to_string(), rclone_cat(sw, bucket, key))).collect()
}

#[test]
fn the_agent_mirrors_renames_and_deletes_over_s3() {
    let sw = seaweed::shared();
    let bucket = sw.unique_bucket("agent");
    sw.rclone_ok(&["mkdir", &format!("sw:{bucket}")]);
    let state = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    std::fs::create_dir_all(root.join("docs/deep")).unwrap();
    let big = data((2 * PART + 4321) as usize, 21);
    file_with(root, "big.bin", &big);
    for i in 0..20u64 {
        file_with(&root.join("docs"), &format!("note {i}.txt"), &data(100 + i as usize * 37, i));
    }
    file_with(&root.join("docs/deep"), "ünïcode + & %.txt", b"odd names work too");
    file_with(root, "empty", b"");
    let (ak, sk) = sw.credentials();
    let run = || {
        let out = Command::new(common::binary())
            .args(["--watch"])
            .arg(root)
            .args(["--bucket", &bucket, "--protocol", "s3", "--once", "--delete", "--settle", "100ms"])
            .args(["--part-size", "5M", "--log-format", "json"])
            .arg("--state-db")
            .arg(state.path().join("agent.db"))
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk)
            .env("AWS_ENDPOINT_URL", sw.endpoint())
            .env_remove("OSS_ENDPOINT")
            .output()
            .expect("run the agent");
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the agent failed:\n{log}");
        assert!(!log.contains(sk), "the secret never shows");
        log
    };
    let local = |root: &Path| -> std::collections::BTreeMap<String, Vec<u8>> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
                (rel, std::fs::read(e.path()).unwrap())
            })
            .collect()
    };

    let log = run();
    assert!(log.contains("\"uploaded"), "the first run uploads:\n{log}");
    assert_eq!(remote_tree(sw, &bucket), local(root), "the first run mirrors the tree");

    std::fs::rename(root.join("docs"), root.join("papers")).unwrap();
    std::fs::remove_file(root.join("empty")).unwrap();
    file_with(root, "big.bin", &data((PART + 99) as usize, 22));
    let log = run();
    assert_eq!(remote_tree(sw, &bucket), local(root), "renames, deletions and a rewrite are mirrored");
    assert!(log.contains("copied server-side instead of uploading"), "renamed files are copied server-side:\n{log}");
    assert!(!log.contains("server-side copy did not work out"), "{log}");

    let log = run();
    assert!(!log.contains("\"uploaded"), "a third run has nothing to upload:\n{log}");
    assert_eq!(remote_tree(sw, &bucket), local(root));
}
