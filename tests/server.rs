//! `ossmirror serve` as a process: crash safety (SIGKILL mid-PUT, at exact commit points, and at random
//! moments under load), malformed and hostile requests, fault-injection determinism and exact stats, and
//! graceful shutdown. The SDK-level behaviour is in the interop suite (tests/interop).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{RawResponse, ServeOptions, ServerProcess, http};
use md5::{Digest as _, Md5};

const MIN_PART: usize = 102_400;

fn md5_upper(data: &[u8]) -> String {
    hex::encode_upper(Md5::digest(data))
}

fn content_md5(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

/// Deterministic content for a name, so a reader can check any object it finds.
fn content(name: &str, size: usize) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.u8(..)).collect()
}

fn req(server: &ServerProcess, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
    http(server.addr(), method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}\nserver log:\n{}", server.log()))
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open).skip(1).filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string())).collect()
}

fn initiate(server: &ServerProcess, path: &str) -> String {
    let r = req(server, "POST", &format!("{path}?uploads"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    xml_values(&r.text(), "UploadId").remove(0)
}

fn upload_part(server: &ServerProcess, path: &str, upload_id: &str, n: u32, data: &[u8]) -> String {
    let r = req(server, "PUT", &format!("{path}?partNumber={n}&uploadId={upload_id}"), &[], data);
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("ETag").unwrap_or_default().trim_matches('"').to_string()
}

fn complete_body(parts: &[(u32, String)]) -> String {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (n, etag) in parts {
        body.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>\"{etag}\"</ETag></Part>"));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

fn files_under(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir).into_iter().filter_map(Result::ok).filter(|e| e.file_type().is_file()).count()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// -------------------------------------------------------------------------------------------------------
// Crash safety

#[test]
fn sigkill_during_a_large_put_leaves_no_trace() {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt").fsync(true));
    let keep = content("keep", 300_000);
    assert_eq!(req(&server, "PUT", "/bkt/keep", &[], &keep).status, 200);

    let addr = server.addr();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let total = 64usize << 20;
        write!(s, "PUT /bkt/big HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {total}\r\n\r\n")?;
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..40 {
            s.write_all(&chunk)?;
        }
        // Hold the request open until the server dies.
        let mut sink = Vec::new();
        s.read_to_end(&mut sink)?;
        Ok(())
    });
    wait_until("the server consumed 32 MiB of the body", || {
        server.stats().operations.get("PutObject").is_some_and(|op| op.body_bytes >= 32 << 20)
    });
    let server = server.kill_and_restart();
    let _ = writer.join();

    let r = req(&server, "GET", "/bkt/big", &[], b"");
    assert_eq!((r.status, r.oss_code().as_deref()), (404, Some("NoSuchKey")));
    let r = req(&server, "GET", "/bkt/keep", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body == keep);
    assert_eq!(files_under(&server.root().join("tmp")), 0, "the partial body was swept");
    assert_eq!(files_under(&server.root().join("data")), 1, "only the committed object's blob remains");
}

/// Kill the server at an exact point of a commit (it SIGKILLs itself there), restart, check the state.
fn crash_at(point: &str) -> (ServerProcess, String, Vec<u8>, Vec<u8>) {
    crash_at_in(point, false)
}

fn crash_at_in(point: &str, versioned: bool) -> (ServerProcess, String, Vec<u8>, Vec<u8>) {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt").env("OSSMIRROR_SERVE_CRASH_AT", point));
    if versioned {
        enable_versioning(&server, "bkt");
    }
    let old = content("old", 1000);
    assert_eq!(req(&server, "PUT", "/bkt/obj", &[], &old).status, 200);
    let upload_id = initiate(&server, "/bkt/obj");
    let (p1, p2) = (content("p1", MIN_PART), content("p2", 10));
    let e1 = upload_part(&server, "/bkt/obj", &upload_id, 1, &p1);
    let e2 = upload_part(&server, "/bkt/obj", &upload_id, 2, &p2);
    let body = complete_body(&[(1, e1), (2, e2)]);
    let answer = http(server.addr(), "POST", &format!("/bkt/obj?uploadId={upload_id}"), &[], body.as_bytes());
    assert!(answer.is_err(), "the server should have died at {point}: {answer:?}");
    let mut server = server;
    wait_until("the server process exited", || !server.is_running());
    let server = server.restart_with(|o| o.env.clear());
    let mut new = p1;
    new.extend_from_slice(&p2);
    (server, upload_id, old, new)
}

#[test]
fn crash_before_complete_commits_keeps_the_upload_and_the_old_object() {
    let (server, upload_id, old, new) = crash_at("complete_before_commit");
    let r = req(&server, "GET", "/bkt/obj", &[], b"");
    assert!(r.status == 200 && r.body == old, "the old object is intact");
    let r = req(&server, "GET", &format!("/bkt/obj?uploadId={upload_id}"), &[], b"");
    assert_eq!(r.status, 200);
    let etags = xml_values(&r.text(), "ETag");
    assert_eq!(etags.len(), 2, "both parts survived: {}", r.text());
    let parts: Vec<(u32, String)> =
        etags.iter().enumerate().map(|(i, e)| (i as u32 + 1, e.trim_matches('"').into())).collect();
    let r = req(&server, "POST", &format!("/bkt/obj?uploadId={upload_id}"), &[], complete_body(&parts).as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = req(&server, "GET", "/bkt/obj", &[], b"");
    assert!(r.body == new);
    assert_eq!(files_under(&server.root().join("data")), 2, "the old object's blob was released");
}

#[test]
fn crash_after_complete_commits_serves_the_whole_new_object() {
    let (server, upload_id, _old, new) = crash_at("complete_after_commit");
    let r = req(&server, "GET", "/bkt/obj", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body == new);
    assert_eq!(r.header("x-oss-object-type"), Some("Multipart"));
    let r = req(&server, "GET", &format!("/bkt/obj?uploadId={upload_id}"), &[], b"");
    assert_eq!(r.oss_code().as_deref(), Some("NoSuchUpload"));
    // The old object's blob, left when the process died before unlinking it, was swept at start.
    assert_eq!(files_under(&server.root().join("data")), 2);
}

#[test]
fn crash_between_durable_data_and_commit_keeps_the_old_object() {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    let old = content("old", 5000);
    assert_eq!(req(&server, "PUT", "/bkt/obj", &[], &old).status, 200);
    let mut server = server.restart_with(|o| o.env.push(("OSSMIRROR_SERVE_CRASH_AT".into(), "blob_durable".into())));
    assert!(http(server.addr(), "PUT", "/bkt/obj", &[], &content("new", 7000)).is_err());
    wait_until("the server process exited", || !server.is_running());
    let server = server.restart_with(|o| o.env.clear());
    let r = req(&server, "GET", "/bkt/obj", &[], b"");
    assert!(r.status == 200 && r.body == old);
    assert_eq!(files_under(&server.root().join("data")), 1, "the uncommitted blob was swept");
}

fn enable_versioning(server: &ServerProcess, bucket: &str) {
    let body = "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>";
    let r = req(server, "PUT", &format!("/{bucket}/?versioning"), &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// One entry of ListObjectVersions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedVersion {
    key: String,
    version_id: String,
    delete_marker: bool,
    latest: bool,
}

/// Every version and delete marker of a bucket, page by page, in listing order.
fn list_versions(server: &ServerProcess, bucket: &str, page_size: usize) -> Vec<ListedVersion> {
    let (mut key_marker, mut version_marker) = (String::new(), String::new());
    let mut out = Vec::new();
    loop {
        let target = format!(
            "/{bucket}/?versions&max-keys={page_size}&encoding-type=url&key-marker={}&version-id-marker={version_marker}",
            common_url_encode(&key_marker)
        );
        let r = req(server, "GET", &target, &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let xml = r.text();
        // Entries in document order: <Version> and <DeleteMarker> interleave.
        let mut rest = xml.as_str();
        while let Some(start) = rest.find("<Version>").into_iter().chain(rest.find("<DeleteMarker>")).min() {
            let marker = rest[start..].starts_with("<DeleteMarker>");
            let close = if marker { "</DeleteMarker>" } else { "</Version>" };
            let end = rest[start..].find(close).expect("closed entry") + start;
            let entry = &rest[start..end];
            let value = |tag: &str| xml_values(entry, tag).pop().unwrap_or_default();
            out.push(ListedVersion {
                key: percent_decode(&value("Key")),
                version_id: value("VersionId"),
                delete_marker: marker,
                latest: value("IsLatest") == "true",
            });
            rest = &rest[end..];
        }
        if xml_values(&xml, "IsTruncated") != ["true"] {
            return out;
        }
        key_marker = percent_decode(&xml_values(&xml, "NextKeyMarker").pop().unwrap_or_default());
        version_marker = xml_values(&xml, "NextVersionIdMarker").pop().unwrap_or_default();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 key")
}

#[test]
fn crash_around_a_versioned_complete_keeps_history_consistent() {
    let (server, upload_id, old, new) = crash_at_in("complete_before_commit", true);
    let r = req(&server, "GET", "/bkt/obj", &[], b"");
    assert!(r.status == 200 && r.body == old, "the old version is still current");
    let versions = list_versions(&server, "bkt", 1000);
    assert_eq!(versions.len(), 1, "no version was added: {versions:?}");
    let r = req(&server, "GET", &format!("/bkt/obj?uploadId={upload_id}"), &[], b"");
    assert_eq!(xml_values(&r.text(), "ETag").len(), 2, "the upload and its parts survived");

    let (server, _, old, new_after) = crash_at_in("complete_after_commit", true);
    assert_eq!(new_after, new);
    let versions = list_versions(&server, "bkt", 1000);
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions[0].latest && !versions[1].latest);
    let r = req(&server, "GET", "/bkt/obj", &[], b"");
    assert!(r.body == new && r.header("x-oss-version-id") == Some(versions[0].version_id.as_str()));
    let r = req(&server, "GET", &format!("/bkt/obj?versionId={}", versions[1].version_id), &[], b"");
    assert!(r.status == 200 && r.body == old, "the replaced version is history, whole");
    // The old version's blob is referenced by the history row: nothing was swept that is still needed.
    assert_eq!(files_under(&server.root().join("data")), 3);
}

#[test]
fn crash_while_a_version_moves_to_history_changes_nothing() {
    let mut server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    enable_versioning(&server, "bkt");
    let old = content("v-old", 4000);
    let r = req(&server, "PUT", "/bkt/obj", &[], &old);
    assert_eq!(r.status, 200);
    let old_version = r.header("x-oss-version-id").expect("a version id").to_string();
    let check = |server: &ServerProcess| {
        let r = req(server, "GET", "/bkt/obj", &[], b"");
        assert!(r.status == 200 && r.body == old);
        assert_eq!(r.header("x-oss-version-id"), Some(old_version.as_str()));
        let versions = list_versions(server, "bkt", 1000);
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert_eq!(files_under(&server.root().join("data")), 1, "the uncommitted blob was swept");
    };
    // An overwrite (the old version would become history), then a delete (a marker would be written).
    for (method, body) in [("PUT", content("v-new", 7000)), ("DELETE", Vec::new())] {
        let mut dying =
            server.restart_with(|o| o.env.push(("OSSMIRROR_SERVE_CRASH_AT".into(), "version_before_commit".into())));
        assert!(http(dying.addr(), method, "/bkt/obj", &[], &body).is_err(), "{method}: the server should have died");
        wait_until("the server process exited", || !dying.is_running());
        server = dying.restart_with(|o| o.env.clear());
        check(&server);
    }
}

#[test]
fn sigkill_at_arbitrary_moments_never_serves_a_torn_object() {
    let mut server = ServerProcess::start(ServeOptions::new().bucket("bkt").fsync(true));
    let mut rng = fastrand::Rng::with_seed(2024);
    for round in 0..4 {
        let addr = server.addr();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..3u32 {
            let stop = stop.clone();
            workers.push(std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let name = format!("r{round}-w{w}-{i}");
                    if i % 3 == 0 {
                        // Multipart: three parts, completed.
                        let path = format!("/bkt/{name}");
                        let Ok(r) = http(addr, "POST", &format!("{path}?uploads"), &[], b"") else { return };
                        let Some(id) = xml_values(&String::from_utf8_lossy(&r.body), "UploadId").pop() else { return };
                        let mut parts = Vec::new();
                        for n in 1..=3u32 {
                            let data = content(&format!("{name}#{n}"), if n < 3 { MIN_PART } else { 777 });
                            let target = format!("{path}?partNumber={n}&uploadId={id}");
                            let Ok(r) = http(addr, "PUT", &target, &[], &data) else { return };
                            parts.push((n, r.header("ETag").unwrap_or_default().trim_matches('"').to_string()));
                        }
                        let body = complete_body(&parts);
                        if http(addr, "POST", &format!("{path}?uploadId={id}"), &[], body.as_bytes()).is_err() {
                            return;
                        }
                    } else {
                        let size = [0usize, 1000, 300_000, 3 << 20][(i % 4) as usize];
                        if http(addr, "PUT", &format!("/bkt/{name}"), &[], &content(&name, size)).is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..700)));
        server = server.kill_and_restart();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }

        // Every listed object reads back whole.
        let mut token = String::new();
        let mut checked = 0;
        loop {
            let target = format!("/bkt/?list-type=2&max-keys=1000&continuation-token={token}");
            let listing = req(&server, "GET", &target, &[], b"").text();
            for key in xml_values(&listing, "Key") {
                let r = req(&server, "GET", &format!("/bkt/{key}"), &[], b"");
                assert_eq!(r.status, 200, "{key}");
                let expected: Vec<u8> = if r.header("x-oss-object-type") == Some("Multipart") {
                    (1..=3).flat_map(|n| content(&format!("{key}#{n}"), if n < 3 { MIN_PART } else { 777 })).collect()
                } else {
                    content(&key, r.body.len())
                };
                assert!(r.body == expected, "object {key} is torn ({} bytes)", r.body.len());
                assert_eq!(r.header("Content-Length"), Some(r.body.len().to_string().as_str()));
                checked += 1;
            }
            match xml_values(&listing, "NextContinuationToken").pop() {
                Some(t) => token = t,
                None => break,
            }
        }
        // Every surviving part of an unfinished upload is intact too.
        let uploads = req(&server, "GET", "/bkt/?uploads", &[], b"").text();
        for (key, id) in xml_values(&uploads, "Key").into_iter().zip(xml_values(&uploads, "UploadId")) {
            let parts = req(&server, "GET", &format!("/bkt/{key}?uploadId={id}"), &[], b"").text();
            for (n, etag) in xml_values(&parts, "PartNumber").into_iter().zip(xml_values(&parts, "ETag")) {
                let size = if n == "3" { 777 } else { MIN_PART };
                assert_eq!(etag.trim_matches('"'), md5_upper(&content(&format!("{key}#{n}"), size)), "{key} part {n}");
            }
        }
        assert_eq!(files_under(&server.root().join("tmp")), 0);
        eprintln!("round {round}: {checked} objects verified after SIGKILL");
    }
}

/// The versioned twin of the test above: writers overwrite and delete a few shared keys (PUT, multipart,
/// DELETE writing delete markers) while the server is SIGKILLed; afterwards every listed version reads back
/// whole (its content is a function of the `x-oss-meta-name` it carries), each key has exactly one latest
/// entry, and a plain GET serves exactly that entry.
#[test]
fn sigkill_at_arbitrary_moments_never_tears_a_versioned_bucket() {
    let mut server = ServerProcess::start(ServeOptions::new().bucket("bkt").fsync(true));
    enable_versioning(&server, "bkt");
    let mut rng = fastrand::Rng::with_seed(2025);
    let mut verified = 0;
    for round in 0..3 {
        let addr = server.addr();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..3u32 {
            let stop = stop.clone();
            workers.push(std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let name = format!("r{round}-w{w}-{i}");
                    let path = format!("/bkt/k{}", (w + i) % 4);
                    let meta = [("x-oss-meta-name", name.as_str())];
                    let ok = match i % 5 {
                        0 => http(addr, "DELETE", &path, &[], b"").is_ok(),
                        1 => (|| {
                            let r = http(addr, "POST", &format!("{path}?uploads"), &meta, b"").ok()?;
                            let id = xml_values(&String::from_utf8_lossy(&r.body), "UploadId").pop()?;
                            let mut parts = Vec::new();
                            for n in 1..=3u32 {
                                let data = content(&format!("{name}#{n}"), if n < 3 { MIN_PART } else { 777 });
                                let r = http(addr, "PUT", &format!("{path}?partNumber={n}&uploadId={id}"), &[], &data)
                                    .ok()?;
                                parts.push((n, r.header("ETag")?.trim_matches('"').to_string()));
                            }
                            let body = complete_body(&parts);
                            http(addr, "POST", &format!("{path}?uploadId={id}"), &[], body.as_bytes()).ok()
                        })()
                        .is_some(),
                        _ => {
                            let size = [1000usize, 300_000, 0][(i % 3) as usize];
                            http(addr, "PUT", &path, &meta, &content(&name, size)).is_ok()
                        }
                    };
                    if !ok {
                        return;
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..600)));
        server = server.kill_and_restart();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }

        // Small pages, so resuming from key and version markers is exercised too.
        let versions = list_versions(&server, "bkt", 7);
        assert_eq!(versions, list_versions(&server, "bkt", 1000), "paged and whole listings agree");
        let mut keys: Vec<&str> = versions.iter().map(|v| v.key.as_str()).collect();
        keys.dedup();
        for key in keys {
            let mine: Vec<&ListedVersion> = versions.iter().filter(|v| v.key == key).collect();
            assert_eq!(mine.iter().filter(|v| v.latest).count(), 1, "{key}: one latest entry: {mine:?}");
            assert!(mine[0].latest, "{key}: the latest entry comes first");
            for v in mine.iter().filter(|v| !v.delete_marker) {
                let r = req(&server, "GET", &format!("/bkt/{key}?versionId={}", v.version_id), &[], b"");
                assert_eq!(r.status, 200, "{key} {}", v.version_id);
                let name = r.header("x-oss-meta-name").expect("every version was written with its name").to_string();
                let expected: Vec<u8> = if r.header("x-oss-object-type") == Some("Multipart") {
                    (1..=3).flat_map(|n| content(&format!("{name}#{n}"), if n < 3 { MIN_PART } else { 777 })).collect()
                } else {
                    content(&name, r.body.len())
                };
                assert!(r.body == expected, "{key} version {} ({name}) is torn", v.version_id);
                verified += 1;
            }
            let r = req(&server, "GET", &format!("/bkt/{key}"), &[], b"");
            if mine[0].delete_marker {
                assert_eq!((r.status, r.header("x-oss-delete-marker")), (404, Some("true")), "{key}");
            } else {
                assert_eq!(r.status, 200, "{key}");
            }
            assert_eq!(r.header("x-oss-version-id"), Some(mine[0].version_id.as_str()), "{key}: GET serves the latest");
        }
        assert_eq!(files_under(&server.root().join("tmp")), 0);
        eprintln!("round {round}: {} versions listed after SIGKILL", versions.len());
    }
    assert!(verified > 0, "the writers got some versions in");
}

// -------------------------------------------------------------------------------------------------------
// Malformed and hostile requests

#[test]
fn malformed_requests_get_oss_errors_and_the_server_stays_up() {
    let mut server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    assert_eq!(req(&server, "PUT", "/bkt/k", &[], b"0123456789").status, 200);
    let upload_id = initiate(&server, "/bkt/mp");
    let long_key = format!("/bkt/{}", "k".repeat(1024));
    let many_keys = {
        let mut body = String::from("<Delete><Quiet>true</Quiet>");
        for i in 0..1001 {
            body.push_str(&format!("<Object><Key>k{i}</Key></Object>"));
        }
        body.push_str("</Delete>");
        body
    };
    let delete_md5 = content_md5(many_keys.as_bytes());
    let complete_target = format!("/bkt/mp?uploadId={upload_id}");
    // (method, target, headers, body, expected status, expected code)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", "/B/k".into(), vec![], vec![], 400, "InvalidBucketName"),
        ("GET", "/bkt/%FF%FE".into(), vec![], vec![], 400, "InvalidObjectName"),
        ("PUT", long_key, vec![], b"x".to_vec(), 400, "InvalidObjectName"),
        ("PUT", "/bkt/%5Cwin".into(), vec![], b"x".to_vec(), 400, "InvalidObjectName"),
        ("PUT", "/bkt/k?partNumber=99999999999999999999&uploadId=x".into(), vec![], b"x".to_vec(), 400, "InvalidArgument"),
        ("PUT", "/bkt/k?partNumber=0&uploadId=x".into(), vec![], b"x".to_vec(), 400, "InvalidArgument"),
        ("PUT", "/bkt/k?partNumber=10001&uploadId=x".into(), vec![], b"x".to_vec(), 400, "InvalidArgument"),
        ("PUT", "/bkt/k?partNumber=1&uploadId=nope".into(), vec![], b"x".to_vec(), 404, "NoSuchUpload"),
        ("PUT", "/bkt/k?partNumber=1".into(), vec![], b"x".to_vec(), 400, "InvalidArgument"),
        ("POST", complete_target.clone(), vec![], b"<<<not xml".to_vec(), 400, "MalformedXML"),
        ("POST", complete_target.clone(), vec![], b"<Wrong/>".to_vec(), 400, "MalformedXML"),
        (
            "POST",
            complete_target.clone(),
            vec![],
            b"<CompleteMultipartUpload><Part><PartNumber>99999999999</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>".to_vec(),
            400,
            "MalformedXML",
        ),
        ("POST", complete_target.clone(), vec![("x-oss-complete-all", "yes")], b"<x/>".to_vec(), 400, "InvalidArgument"),
        ("POST", complete_target, vec![("x-oss-complete-all", "maybe")], vec![], 400, "InvalidArgument"),
        ("POST", "/bkt/?delete".into(), vec![], b"<Delete><Object><Key>k</Key></Object></Delete>".to_vec(), 400, "MissingArgument"),
        ("POST", "/bkt/?delete".into(), vec![("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")], b"<Delete/>".to_vec(), 400, "InvalidDigest"),
        ("POST", "/bkt/?delete".into(), vec![("Content-MD5", &delete_md5)], many_keys.clone().into_bytes(), 400, "MalformedXML"),
        ("GET", "/bkt/?list-type=2&max-keys=-1".into(), vec![], vec![], 400, "InvalidArgument"),
        ("GET", "/bkt/?list-type=2&max-keys=1001".into(), vec![], vec![], 400, "InvalidArgument"),
        ("GET", "/bkt/?list-type=2&continuation-token=zz".into(), vec![], vec![], 400, "InvalidArgument"),
        ("GET", "/bkt/?list-type=3".into(), vec![], vec![], 400, "InvalidArgument"),
        ("GET", "/bkt/?list-type=2&encoding-type=base64".into(), vec![], vec![], 400, "InvalidArgument"),
        ("PUT", "/bkt/k".into(), vec![("Content-MD5", "garbage")], b"x".to_vec(), 400, "InvalidDigest"),
        ("PUT", "/bkt/k".into(), vec![("x-oss-forbid-overwrite", "maybe")], b"x".to_vec(), 400, "InvalidArgument"),
        ("PUT", "/bkt/k".into(), vec![("x-oss-object-acl", "everyone")], b"x".to_vec(), 400, "InvalidArgument"),
        ("PUT", "/bkt/k".into(), vec![("x-oss-storage-class", "Glacier")], b"x".to_vec(), 400, "InvalidArgument"),
        ("PUT", "/bkt/c".into(), vec![("x-oss-copy-source", "nonsense")], vec![], 400, "InvalidArgument"),
        ("PUT", "/bkt/c".into(), vec![("x-oss-copy-source", "/bkt/missing")], vec![], 404, "NoSuchKey"),
        ("PUT", "/bkt/c".into(), vec![("x-oss-copy-source", "/bkt/k"), ("x-oss-metadata-directive", "MOVE")], vec![], 400, "InvalidArgument"),
        ("PUT", "/nobucket/k".into(), vec![], b"x".to_vec(), 404, "NoSuchBucket"),
        ("PATCH", "/bkt/k".into(), vec![], vec![], 405, "MethodNotAllowed"),
        ("PUT", "/bkt/k?symlink".into(), vec![], b"x".to_vec(), 501, "NotImplemented"),
        ("DELETE", "/bkt/k?uploadId=nope".into(), vec![], vec![], 404, "NoSuchUpload"),
        ("GET", "/bkt/k?uploadId=nope&max-parts=banana".into(), vec![], vec![], 400, "InvalidArgument"),
        ("GET", "/bkt/k".into(), vec![("x-oss-range-behavior", "standard"), ("Range", "bytes=50-60")], vec![], 416, "InvalidRange"),
    ];
    for (method, target, headers, body, status, code) in &cases {
        let r = req(&server, method, target, headers, body);
        assert_eq!((r.status, r.oss_code().as_deref()), (*status, Some(*code)), "{method} {target}: {}", r.text());
        assert_eq!(r.header("x-oss-request-id").map(str::len), Some(24), "{method} {target}");
        assert!(r.header("Date").is_some() && r.header("x-oss-server-time").is_some());
    }

    // Absurd ranges are ignored the way OSS ignores them: the whole object, 200.
    for range in ["bytes=99999999999999999999999-1", "bytes=-0", "bytes=5-2", "bytes=abc", "bytes=1-2-3", "items=0-1"] {
        let r = req(&server, "GET", "/bkt/k", &[("Range", range)], b"");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]), "{range}");
    }
    let r = req(&server, "GET", "/bkt/k", &[("Range", "bytes=-3")], b"");
    assert_eq!((r.status, r.body.as_slice(), r.header("Content-Range")), (206, &b"789"[..], Some("bytes 7-9/10")));

    // HEAD errors: no body, the error in x-oss-err.
    let r = req(&server, "HEAD", "/bkt/missing", &[], b"");
    assert_eq!((r.status, r.body.len(), r.oss_code().as_deref()), (404, 0, Some("NoSuchKey")));
    assert!(r.header("x-oss-ec").is_some());

    // Malformed HTTP: a broken chunked body, a garbage request line, a lying Content-Length.
    let broken_chunked =
        b"PUT /bkt/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    if let Ok(r) = common::send_raw(server.addr(), broken_chunked) {
        assert!(r.status >= 400, "{r:?}");
    }
    let _ = common::send_raw(server.addr(), b"HELLO WORLD\r\n\r\n");
    let short = b"PUT /bkt/short HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a little";
    if let Ok(r) = common::send_raw_then_close(server.addr(), short) {
        assert_eq!((r.status, r.oss_code().as_deref()), (400, Some("IncompleteBody")));
    }
    let r = req(&server, "GET", "/bkt/short", &[], b"");
    assert_eq!(r.status, 404, "a short body never becomes an object");

    // Control characters and odd bytes in metadata are not fatal either.
    let r = req(&server, "PUT", "/bkt/ctl%01key", &[("x-oss-meta-x", "caf\u{e9}")], b"x");
    assert_eq!(r.status, 200);

    assert!(server.is_running(), "the server survived:\n{}", server.log());
    assert_eq!(req(&server, "GET", "/bkt/k", &[], b"").body, b"0123456789");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn path_traversal_keys_are_just_keys() {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    let root_parent = server.root().parent().expect("root has a parent").to_path_buf();
    for (target, key) in [
        ("/bkt/../../escape-one", "../../escape-one"),
        ("/bkt/..%2F..%2Fescape-two", "../../escape-two"),
        ("/bkt/%2E%2E/%2E%2E/escape-three", "../../escape-three"),
        ("/bkt/dir/../../../../../../tmp/escape-four", "dir/../../../../../../tmp/escape-four"),
    ] {
        let r = req(&server, "PUT", target, &[], key.as_bytes());
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        let r = req(&server, "GET", target, &[], b"");
        assert_eq!(r.body, key.as_bytes(), "{target}");
        let listing = req(&server, "GET", "/bkt/?list-type=2&encoding-type=url", &[], b"").text();
        assert!(listing.contains(&common_url_encode(key)), "{key} listed in {listing}");
    }
    for name in ["escape-one", "escape-two", "escape-three"] {
        assert!(!root_parent.join(name).exists());
        assert!(!root_parent.parent().map(|p| p.join(name).exists()).unwrap_or(false));
    }
    assert!(!Path::new("/tmp/escape-four").exists());
    // Nothing outside data/ and tmp/ holds object bytes: the data files are named by id.
    for entry in walkdir::WalkDir::new(server.root()).into_iter().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.contains("escape"), "a key became a path: {}", entry.path().display());
    }
}

fn common_url_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn malformed_authentication_is_answered_not_fatal() {
    let mut server = ServerProcess::start(ServeOptions::new().credentials("AK", "SK").bucket("bkt"));
    let date = ossmirror::timefmt::rfc1123(std::time::SystemTime::now());
    // (target, headers, expected status, expected code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/bkt/k", vec![], 403, "AccessDenied"),
        ("/bkt/k", vec![("Authorization", "OSS")], 400, "InvalidArgument"),
        ("/bkt/k", vec![("Authorization", "OSS :")], 400, "InvalidArgument"),
        ("/bkt/k", vec![("Authorization", "OSS2 AccessKeyId:AK,Signature:x")], 400, "InvalidArgument"),
        ("/bkt/k", vec![("Authorization", "OSS4-HMAC-SHA256 Credential=a/b,Signature=c")], 400, "InvalidArgument"),
        (
            "/bkt/k",
            vec![(
                "Authorization",
                "OSS4-HMAC-SHA256 Credential=AK/20240101/cn-hangzhou/oss/aliyun_v4_request,AdditionalHeaders=,Signature=00",
            )],
            400,
            "InvalidArgument",
        ),
        ("/bkt/k", vec![("Authorization", "OSS AK:c2ln")], 403, "AccessDenied"),
        ("/bkt/k", vec![("Authorization", "OSS AK:c2ln"), ("Date", "yesterday")], 403, "AccessDenied"),
        ("/bkt/k", vec![("Authorization", "OSS AK:c2lnbmF0dXJl"), ("Date", &date)], 403, "SignatureDoesNotMatch"),
        ("/bkt/k", vec![("Authorization", "OSS OTHER:c2lnbmF0dXJl"), ("Date", &date)], 403, "InvalidAccessKeyId"),
        (
            "/bkt/k",
            vec![("Authorization", "OSS AK:x"), ("Date", "Mon, 01 Jan 2001 00:00:00 GMT")],
            403,
            "SignatureDoesNotMatch",
        ),
        ("/bkt/k?OSSAccessKeyId=AK&Expires=soon&Signature=x", vec![], 400, "InvalidArgument"),
        ("/bkt/k?OSSAccessKeyId=AK&Expires=1&Signature=x", vec![], 403, "SignatureDoesNotMatch"),
        ("/bkt/k?x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-expires=99999999", vec![], 400, "InvalidArgument"),
        ("/bkt/k?x-oss-signature-version=AWS4&x-oss-signature=x", vec![], 400, "InvalidArgument"),
    ];
    for (target, headers, status, code) in &cases {
        let r = req(&server, "GET", target, headers, b"");
        assert_eq!((r.status, r.oss_code().as_deref()), (*status, Some(*code)), "{target} {headers:?}: {}", r.text());
        let r = req(&server, "HEAD", target, headers, b"");
        assert_eq!(
            (r.status, r.oss_code().as_deref(), r.body.len()),
            (*status, Some(*code), 0),
            "HEAD {target} {headers:?}"
        );
    }
    let r = req(&server, "GET", "/bkt/k", &[("Authorization", "OSS AK:c2lnbmF0dXJl"), ("Date", &date)], b"");
    assert!(r.text().contains("<StringToSign>GET\n\n\n"), "{}", r.text());
    assert!(server.is_running());
}

// -------------------------------------------------------------------------------------------------------
// Faults and stats

fn error_pattern(seed: u64) -> (Vec<u16>, u64) {
    let server = ServerProcess::start(
        ServeOptions::new()
            .bucket("bkt")
            .arg("--fault-error-rate")
            .arg("0.5")
            .arg("--fault-seed")
            .arg(seed.to_string()),
    );
    let statuses: Vec<u16> = (0..40).map(|i| req(&server, "PUT", &format!("/bkt/k{i}"), &[], b"data").status).collect();
    let stats = server.stats();
    let failed = statuses.iter().filter(|s| **s >= 500).count() as u64;
    assert_eq!(stats.faults.errors, failed);
    assert_eq!(stats.operations["PutObject"].requests, 40);
    assert_eq!(stats.operations["PutObject"].body_bytes, 160, "bodies are read even when the answer is a fault");
    (statuses, failed)
}

#[test]
fn fault_injection_repeats_with_the_same_seed() {
    let (a, failed) = error_pattern(42);
    let (b, _) = error_pattern(42);
    let (c, _) = error_pattern(43);
    assert_eq!(a, b, "the same seed gives the same faults");
    assert_ne!(a, c, "another seed gives other faults");
    assert!(failed > 0 && failed < 40);
    assert!(a.iter().all(|s| [200, 500, 503].contains(s)));
}

/// An RST shows as ECONNRESET on read (or EPIPE if it arrived while we were still writing); an orderly
/// close (FIN) would show as an answer cut short instead.
fn assert_reset(err: &std::io::Error) {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    assert!(matches!(err.kind(), ConnectionReset | BrokenPipe), "expected a reset, got {err:?}");
}

#[test]
fn a_reset_fault_is_a_real_rst_after_exactly_k_bytes() {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    server.script(serde_json::json!({"op": "PutObject", "reset": {"after_bytes": 1000}}));
    let err = http(server.addr(), "PUT", "/bkt/reset", &[], &vec![1u8; 5000]).expect_err("the connection is reset");
    assert_reset(&err);
    let stats = server.stats();
    let put = &stats.operations["PutObject"];
    assert_eq!(put.body_bytes, 1000);
    assert_eq!(put.statuses.get("reset"), Some(&1));
    assert_eq!(put.injected_resets, 1);
    assert_eq!(req(&server, "GET", "/bkt/reset", &[], b"").status, 404);

    // Random resets from the command line, on every body-carrying request.
    let server = server.restart_with(|o| {
        o.extra_args = ["--fault-reset-rate", "1", "--fault-reset-after", "2K"].map(String::from).to_vec();
    });
    let err = http(server.addr(), "PUT", "/bkt/reset", &[], &vec![1u8; 10_000]).expect_err("reset");
    assert_reset(&err);
    assert_eq!(server.stats().operations["PutObject"].body_bytes, 2048);
    // Requests without a body are not reset.
    assert_eq!(req(&server, "GET", "/bkt/?list-type=2", &[], b"").status, 200);
}

#[test]
fn scripted_errors_before_and_after_acting() {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    server.script(serde_json::json!([
        {"op": "PutObject", "key": "before", "error": {"status": 503, "code": "ServiceUnavailable"}},
        {"op": "PutObject", "key": "after", "error": {"status": 500, "code": "InternalError", "after": true}},
        {"op": "GetObject", "times": 2, "error": {"status": 429, "code": "TooManyRequests", "message": "slow down"}}
    ]));
    let r = req(&server, "PUT", "/bkt/before", &[], b"x");
    assert_eq!((r.status, r.oss_code().as_deref()), (503, Some("ServiceUnavailable")));
    let r = req(&server, "PUT", "/bkt/after", &[], b"x");
    assert_eq!((r.status, r.oss_code().as_deref()), (500, Some("InternalError")));
    assert!(req(&server, "HEAD", "/bkt/before", &[], b"").status == 404, "not stored");
    assert!(req(&server, "HEAD", "/bkt/after", &[], b"").status == 200, "stored, although the answer was lost");
    for _ in 0..2 {
        let r = req(&server, "GET", "/bkt/after", &[], b"");
        assert_eq!(r.status, 429);
        assert!(r.text().contains("<Message>slow down</Message>"));
    }
    assert_eq!(req(&server, "GET", "/bkt/after", &[], b"").status, 200);
    let stats = server.stats();
    assert_eq!(stats.faults.errors, 4);
    assert_eq!(stats.operations["GetObject"].statuses.get("429"), Some(&2));
    server.reset();
    assert_eq!(server.stats().requests, 0);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    assert_eq!(req(&server, "PUT", "/bkt/k", &[], b"x").status, 200);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    // The data directory is released: a new server can open it.
    let server = server.restart_with(|_| {});
    assert_eq!(req(&server, "GET", "/bkt/k", &[], b"").body, b"x");
}

/// A page size of 0 must not produce a "truncated" page whose marker cannot advance: clients would loop.
#[test]
fn zero_page_sizes_still_make_progress() {
    let server = ServerProcess::start(ServeOptions::new().bucket("bkt"));
    let upload_id = initiate(&server, "/bkt/paged");
    for n in 1..=3 {
        upload_part(&server, "/bkt/paged", &upload_id, n, &content("paged", 10));
    }
    let r = req(&server, "GET", &format!("/bkt/paged?uploadId={upload_id}&max-parts=0"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(xml_values(&r.text(), "PartNumber"), ["1"], "one part per page at least");
    assert_eq!(xml_values(&r.text(), "NextPartNumberMarker"), ["1"]);
    for key in ["a", "b"] {
        assert_eq!(req(&server, "PUT", &format!("/bkt/{key}"), &[], b"x").status, 200);
    }
    let r = req(&server, "GET", "/bkt/?list-type=2&max-keys=0", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(xml_values(&r.text(), "Key"), ["a"]);
    assert_eq!(xml_values(&r.text(), "IsTruncated"), ["true"]);
    assert_eq!(xml_values(&r.text(), "NextContinuationToken").len(), 1);
}
