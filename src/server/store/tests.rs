use std::fs;

use super::*;
use crate::server::lifecycle;

fn blob(store: &Store, data: &[u8]) -> NewBlob {
    let mut w = store.begin_blob().unwrap();
    let mut h = Hasher::new();
    w.write(data).unwrap();
    h.update(data);
    w.finish(h.finish()).unwrap()
}

fn read_all(store: &Store, r: &ObjectRecord) -> Vec<u8> {
    let mut out = Vec::new();
    for p in &r.manifest {
        let data = fs::read(store.blob_path(&p.blob)).unwrap();
        out.extend_from_slice(&data[p.offset as usize..(p.offset + p.len) as usize]);
    }
    out
}

fn keys(page: &ListPage) -> Vec<String> {
    page.entries
        .iter()
        .map(|e| match e {
            ListEntry::Object(o) => o.key.clone(),
            ListEntry::Prefix(p) => format!("P:{p}"),
        })
        .collect()
}

fn at<'a>(bucket: &'a str, key: &'a str) -> VersionRef<'a> {
    VersionRef { bucket, key, version: None }
}

fn ver<'a>(bucket: &'a str, key: &'a str, version: &'a str) -> VersionRef<'a> {
    VersionRef { bucket, key, version: Some(version) }
}

fn put(store: &Store, key: &str, data: &[u8], now: i64) -> ObjectRecord {
    store.put_object("b", key, blob(store, data), ObjectMeta::default(), false, now).unwrap()
}

/// `(key, version id, "M" for a delete marker or the content, latest)` for every listed version.
fn versions(store: &Store, prefix: &str) -> Vec<(String, String, String, bool)> {
    let page = store.list_versions("b", prefix, None, None, None, 1000).unwrap();
    page.entries
        .iter()
        .filter_map(|e| match e {
            VersionListEntry::Version(v) => Some((
                v.record.key.clone(),
                v.version_id().to_string(),
                if v.delete_marker { "M".to_string() } else { String::from_utf8(read_all(store, &v.record)).unwrap() },
                v.latest,
            )),
            VersionListEntry::Prefix(_) => None,
        })
        .collect()
}

/// Blob files on disk match the index: nothing leaked, nothing lost.
fn assert_blobs_consistent(store: &Store) {
    assert_eq!(store.blob_files_on_disk(), store.blob_count().unwrap());
}

#[test]
fn put_overwrite_delete_and_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    assert!(store.create_bucket("b", "private", 1).unwrap());
    assert!(!store.create_bucket("b", "private", 1).unwrap());
    let r = store.put_object("b", "k", blob(&store, b"hello"), ObjectMeta::default(), false, 1).unwrap();
    assert_eq!(r.etag, "5D41402ABC4B2A76B9719D911017C592");
    assert_eq!(r.version_id, None, "an unversioned bucket reports no version id");
    assert_eq!(read_all(&store, &r), b"hello");
    assert!(matches!(
        store.put_object("b", "k", blob(&store, b"x"), ObjectMeta::default(), true, 1),
        Err(StoreError::AlreadyExists)
    ));
    // The refused blob was removed with its NewBlob.
    assert_eq!(store.blob_files_on_disk(), 1);
    put(&store, "k", b"world", 2);
    assert_eq!(store.blob_count().unwrap(), 1);
    assert_eq!(store.blob_files_on_disk(), 1);
    let d = store.delete_object(at("b", "k"), 3).unwrap();
    assert_eq!(d, DeleteOutcome { version_id: None, delete_marker: false });
    assert!(matches!(store.head_object(at("b", "k")), Err(StoreError::NoSuchKey)));
    store.delete_object(at("b", "k"), 3).unwrap();
    assert_eq!(store.blob_files_on_disk(), 0);
    assert!(matches!(store.delete_object(at("nope", "k"), 3), Err(StoreError::NoSuchBucket)));
}

#[test]
fn pinned_blob_survives_overwrite_until_unpinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    put(&store, "k", b"one", 1);
    let (old, pin) = store.open_object(at("b", "k")).unwrap();
    put(&store, "k", b"two", 2);
    assert_eq!(read_all(&store, &old), b"one");
    drop(pin);
    assert!(!store.blob_path(&old.manifest[0].blob).exists());
}

#[test]
fn copy_shares_blobs_and_self_copy_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    put(&store, "a", b"data", 1);
    let c = store.copy_object(at("b", "a"), "b", "c", false, 2, |s| Ok(s.meta.clone())).unwrap();
    assert_eq!(c.record.etag, "8D777F385D3DFEC8815D20F7496026DC");
    store.copy_object(at("b", "a"), "b", "a", false, 3, |s| Ok(s.meta.clone())).unwrap();
    store.delete_object(at("b", "a"), 4).unwrap();
    assert_eq!(read_all(&store, &store.head_object(at("b", "c")).unwrap()), b"data");
    store.delete_object(at("b", "c"), 5).unwrap();
    assert_eq!(store.blob_files_on_disk(), 0);
}

#[test]
fn multipart_complete_validates_and_assembles_without_copying() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    let id = store.create_upload("b", "k", &ObjectMeta::default(), 1).unwrap();
    let p1 = vec![1u8; MIN_PART_SIZE as usize];
    let r1 = store.put_part("b", "k", &id, 1, PartContent::Blob(blob(&store, &p1)), 1).unwrap();
    let r2 = store.put_part("b", "k", &id, 2, PartContent::Blob(blob(&store, b"tail")), 1).unwrap();
    let r3 = store.put_part("b", "k", &id, 3, PartContent::Blob(blob(&store, b"extra")), 1).unwrap();
    assert!(matches!(store.upload("b", "other", &id), Err(StoreError::NoSuchUpload)));
    let listed = |v: &[(u32, &str)]| PartSelection::Listed(v.iter().map(|(n, e)| (*n, e.to_string())).collect());
    assert!(matches!(
        store.complete_upload("b", "k", &id, &listed(&[(2, &r2.etag), (1, &r1.etag)]), None, false, 2),
        Err(StoreError::InvalidPartOrder)
    ));
    assert!(matches!(
        store.complete_upload("b", "k", &id, &listed(&[(1, &r2.etag)]), None, false, 2),
        Err(StoreError::InvalidPart { part_number: 1, .. })
    ));
    assert!(matches!(
        store.complete_upload("b", "k", &id, &listed(&[(2, &r2.etag), (3, &r3.etag)]), None, false, 2),
        Err(StoreError::EntityTooSmall { part_number: 2, size: 4 })
    ));
    let lower = r2.etag.to_ascii_lowercase();
    let obj = store.complete_upload("b", "k", &id, &listed(&[(1, &r1.etag), (2, &lower)]), None, false, 2).unwrap();
    let mut expect = p1.clone();
    expect.extend_from_slice(b"tail");
    assert_eq!(read_all(&store, &obj), expect);
    assert_eq!(obj.crc64, Some(crate::checksum::crc64(&expect)));
    assert!(obj.etag.ends_with("-2"));
    // Part 3 was left out: its blob is gone; parts 1 and 2 now belong to the object.
    assert_eq!(store.blob_files_on_disk(), 2);
    assert!(matches!(store.abort_upload("b", "k", &id), Err(StoreError::NoSuchUpload)));
}

#[test]
fn listing_with_delimiter_markers_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    for k in ["a", "b/1", "b/2", "b/3/x", "c", "d/1", "e"] {
        put(&store, k, b"x", 1);
    }
    let p = store.list_objects("b", "", Some("/"), None, 1000).unwrap();
    assert_eq!(keys(&p), ["a", "P:b/", "c", "P:d/", "e"]);
    assert!(!p.truncated);
    let p = store.list_objects("b", "", Some("/"), None, 2).unwrap();
    assert_eq!(keys(&p), ["a", "P:b/"]);
    assert!(p.truncated);
    let p = store.list_objects("b", "", Some("/"), Some("b/"), 2).unwrap();
    assert_eq!(keys(&p), ["c", "P:d/"]);
    assert!(p.truncated);
    let p = store.list_objects("b", "b/", Some("/"), None, 10).unwrap();
    assert_eq!(keys(&p), ["b/1", "b/2", "P:b/3/"]);
    let p = store.list_objects("b", "", None, Some("b/2"), 10).unwrap();
    assert_eq!(keys(&p), ["b/3/x", "c", "d/1", "e"]);
    let p = store.list_objects("b", "", None, None, 7).unwrap();
    assert_eq!(p.entries.len(), 7);
    assert!(!p.truncated);
    let p = store.list_objects("b", "zzz", None, None, 7).unwrap();
    assert!(p.entries.is_empty() && !p.truncated);
}

#[test]
fn listing_many_keys_crosses_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    for i in 0..700 {
        put(&store, &format!("k{i:04}"), b"", 1);
    }
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let p = store.list_objects("b", "", None, after.as_deref(), 300).unwrap();
        all.extend(keys(&p));
        if !p.truncated {
            break;
        }
        after = all.last().cloned();
    }
    assert_eq!(all.len(), 700);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn sweep_removes_orphans_and_lock_excludes_a_second_server() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), false).unwrap();
        assert!(matches!(Store::open(dir.path(), false), Err(ServerError::RootLocked(_))));
        store.create_bucket("b", "private", 1).unwrap();
        let b = blob(&store, b"orphan");
        // Simulate a crash between making the blob durable and committing it.
        std::mem::forget(b);
        // And a blob still being received.
        fs::write(dir.path().join("tmp").join("0123"), b"partial").unwrap();
        assert_eq!(store.blob_files_on_disk(), 1);
    }
    let store = Store::open(dir.path(), false).unwrap();
    assert_eq!(store.blob_files_on_disk(), 0);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn slicing() {
    let m = vec![Piece { blob: "a".into(), offset: 0, len: 10 }, Piece { blob: "b".into(), offset: 5, len: 10 }];
    assert_eq!(
        slice_manifest(&m, 8, 4),
        vec![Piece { blob: "a".into(), offset: 8, len: 2 }, Piece { blob: "b".into(), offset: 5, len: 2 }]
    );
    assert_eq!(slice_manifest(&m, 10, 10), vec![Piece { blob: "b".into(), offset: 5, len: 10 }]);
    assert!(slice_manifest(&m, 20, 5).is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Versioning

#[test]
fn enabled_versioning_keeps_every_version_and_delete_writes_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    let v0 = put(&store, "k", b"zero", 1);
    assert_eq!(v0.version_id, None);
    store.set_versioning("b", Versioning::Enabled).unwrap();
    assert_eq!(store.bucket("b").unwrap().unwrap().versioning, Versioning::Enabled);
    let v1 = put(&store, "k", b"one", 2);
    let v2 = put(&store, "k", b"two", 3);
    let (id1, id2) = (v1.version_id.clone().unwrap(), v2.version_id.clone().unwrap());
    assert_eq!(id1.len(), 32);
    assert!(id1.bytes().all(|b| b.is_ascii_hexdigit()) && id1 != id2);
    assert_eq!(
        versions(&store, ""),
        [
            ("k".into(), id2.clone(), "two".into(), true),
            ("k".into(), id1.clone(), "one".into(), false),
            ("k".into(), "null".into(), "zero".into(), false)
        ]
    );
    assert_eq!(read_all(&store, &store.head_object(ver("b", "k", &id1)).unwrap()), b"one");
    assert_eq!(read_all(&store, &store.head_object(ver("b", "k", "null")).unwrap()), b"zero");
    assert!(matches!(
        store.head_object(ver("b", "k", "0000000000000099FFFFFFFFFFFFFFFF")),
        Err(StoreError::NoSuchVersion)
    ));

    // Delete without a version: a marker hides the key; the versions stay.
    let d = store.delete_object(at("b", "k"), 4).unwrap();
    assert!(d.delete_marker);
    let marker = d.version_id.unwrap();
    assert!(
        matches!(store.head_object(at("b", "k")), Err(StoreError::DeleteMarker { ref version_id, addressed: false }) if *version_id == marker)
    );
    assert!(matches!(store.head_object(ver("b", "k", &marker)), Err(StoreError::DeleteMarker { addressed: true, .. })));
    assert!(store.list_objects("b", "", None, None, 10).unwrap().entries.is_empty());
    let listed = versions(&store, "");
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0], ("k".into(), marker.clone(), "M".into(), true));
    assert!(!listed[1].3, "the old current version is noncurrent now");

    // Removing the marker brings the newest version back.
    let d = store.delete_object(ver("b", "k", &marker), 5).unwrap();
    assert_eq!(d, DeleteOutcome { version_id: Some(marker), delete_marker: true });
    assert_eq!(read_all(&store, &store.head_object(at("b", "k")).unwrap()), b"two");
    // Removing the current version promotes the previous one.
    store.delete_object(ver("b", "k", &id2), 6).unwrap();
    assert_eq!(read_all(&store, &store.head_object(at("b", "k")).unwrap()), b"one");
    // Restoring an old version is a copy onto the key.
    let restored = store.copy_object(ver("b", "k", "null"), "b", "k", false, 7, |s| Ok(s.meta.clone())).unwrap();
    assert_eq!(restored.source_version.as_deref(), Some("null"));
    assert_eq!(read_all(&store, &store.head_object(at("b", "k")).unwrap()), b"zero");
    assert_eq!(versions(&store, "").len(), 3);
    // Deleting a version that does not exist succeeds and changes nothing.
    store.delete_object(ver("b", "k", "00000000000000FF0000000000000000"), 8).unwrap();
    assert_eq!(versions(&store, "").len(), 3);
    // A bucket with history is not empty.
    for (_, id, _, _) in versions(&store, "") {
        assert!(matches!(store.delete_bucket("b"), Err(StoreError::BucketNotEmpty)));
        store.delete_object(ver("b", "k", &id), 9).unwrap();
    }
    assert_blobs_consistent(&store);
    assert_eq!(store.blob_files_on_disk(), 0);
    store.delete_bucket("b").unwrap();
}

#[test]
fn suspended_versioning_overwrites_the_null_version_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    store.set_versioning("b", Versioning::Enabled).unwrap();
    let v1 = put(&store, "k", b"one", 1).version_id.unwrap();
    store.set_versioning("b", Versioning::Suspended).unwrap();
    let n = put(&store, "k", b"null-a", 2);
    assert_eq!(n.version_id.as_deref(), Some("null"));
    put(&store, "k", b"null-b", 3);
    assert_eq!(
        versions(&store, ""),
        [("k".into(), "null".into(), "null-b".into(), true), ("k".into(), v1.clone(), "one".into(), false)],
        "the null version was replaced, the real one kept"
    );
    // A delete writes a `null` marker, replacing the `null` object.
    let d = store.delete_object(at("b", "k"), 4).unwrap();
    assert_eq!(d, DeleteOutcome { version_id: Some("null".into()), delete_marker: true });
    assert_eq!(
        versions(&store, ""),
        [("k".into(), "null".into(), "M".into(), true), ("k".into(), v1.clone(), "one".into(), false)]
    );
    // A new put replaces the null marker.
    put(&store, "k", b"null-c", 5);
    assert_eq!(
        versions(&store, ""),
        [("k".into(), "null".into(), "null-c".into(), true), ("k".into(), v1, "one".into(), false)]
    );
    // Enabled again: the null version becomes history like any other.
    store.set_versioning("b", Versioning::Enabled).unwrap();
    put(&store, "k", b"two", 6);
    assert_eq!(versions(&store, "").len(), 3);
    assert_blobs_consistent(&store);
}

#[test]
fn version_listing_pages_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    store.set_versioning("b", Versioning::Enabled).unwrap();
    for (i, k) in ["a", "b/1", "b/2", "c", "c", "c", "d"].iter().enumerate() {
        put(&store, k, format!("{k}#{i}").as_bytes(), i as i64);
    }
    store.delete_object(at("b", "d"), 10).unwrap();
    let all = versions(&store, "");
    assert_eq!(all.len(), 8);
    for max in 1..=4 {
        let (mut km, mut vm) = (None::<String>, None::<String>);
        let mut seen = Vec::new();
        loop {
            let page = store.list_versions("b", "", None, km.as_deref(), vm.as_deref(), max).unwrap();
            assert!(page.entries.len() <= max);
            for e in &page.entries {
                if let VersionListEntry::Version(v) = e {
                    seen.push((v.record.key.clone(), v.version_id().to_string()));
                }
            }
            if !page.truncated {
                break;
            }
            match page.entries.last() {
                Some(VersionListEntry::Version(v)) => {
                    km = Some(v.record.key.clone());
                    vm = Some(v.version_id().to_string());
                }
                _ => unreachable!(),
            }
        }
        let expected: Vec<(String, String)> = all.iter().map(|(k, v, _, _)| (k.clone(), v.clone())).collect();
        assert_eq!(seen, expected, "page size {max}");
    }
    // Delimiter: keys under b/ roll up; the rolled-up prefix is a resume point.
    let page = store.list_versions("b", "", Some("/"), None, None, 2).unwrap();
    assert!(matches!(&page.entries[1], VersionListEntry::Prefix(p) if p == "b/"));
    let page = store.list_versions("b", "", Some("/"), Some("b/"), None, 10).unwrap();
    assert!(matches!(&page.entries[0], VersionListEntry::Version(v) if v.record.key == "c"));
    // A marker version removed between pages: the listing resumes after where it was.
    let c_versions: Vec<String> = all.iter().filter(|(k, ..)| k == "c").map(|(_, v, ..)| v.clone()).collect();
    store.delete_object(ver("b", "c", &c_versions[1]), 11).unwrap();
    let page = store.list_versions("b", "", None, Some("c"), Some(&c_versions[1]), 10).unwrap();
    let first = match &page.entries[0] {
        VersionListEntry::Version(v) => v.version_id().to_string(),
        _ => unreachable!(),
    };
    assert_eq!(first, c_versions[2]);
}

#[test]
fn metadata_changes_in_place_per_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 1).unwrap();
    store.set_versioning("b", Versioning::Enabled).unwrap();
    let v1 = put(&store, "k", b"one", 1).version_id.unwrap();
    put(&store, "k", b"two", 2);
    store
        .update_object_meta(ver("b", "k", &v1), |m| {
            m.tagging = Some("a=1".into());
            Ok(())
        })
        .unwrap();
    assert_eq!(store.head_object(ver("b", "k", &v1)).unwrap().meta.tagging.as_deref(), Some("a=1"));
    assert_eq!(store.head_object(at("b", "k")).unwrap().meta.tagging, None, "only that version changed");
    store
        .update_object_meta(at("b", "k"), |m| {
            m.acl = "public-read".into();
            Ok(())
        })
        .unwrap();
    assert_eq!(store.head_object(at("b", "k")).unwrap().meta.acl, "public-read");
    let marker = store.delete_object(at("b", "k"), 3).unwrap().version_id.unwrap();
    assert!(matches!(
        store.update_object_meta(ver("b", "k", &marker), |_| Ok(())),
        Err(StoreError::DeleteMarker { addressed: true, .. })
    ));
}

/// A store written by schema version 1 (the first release: no versioning columns or tables) opens,
/// migrates, serves its objects as the `null` version, and takes versioning from there.
#[test]
fn a_version_1_store_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("ab{:030x}", 7);
    {
        let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).unwrap();
        conn.execute_batch(rows::SCHEMA_V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute("INSERT INTO buckets(name, created, acl) VALUES('b', 1, 'private')", []).unwrap();
        let meta = r#"{"headers":[["content-type","text/plain"],["x-oss-meta-a","1"]],"acl":"default","storage_class":"Standard","tagging":null}"#;
        let manifest = format!(r#"[{{"b":"{name}","o":0,"l":5}}]"#);
        conn.execute(
            "INSERT INTO objects(bucket, key, size, etag, crc64, mtime, otype, meta, manifest)
             VALUES('b', CAST('old' AS BLOB), 5, '5D41402ABC4B2A76B9719D911017C592', 1, 100, 'Normal', ?1, ?2)",
            rusqlite::params![meta, manifest],
        )
        .unwrap();
        conn.execute("INSERT INTO blobs(name, refs) VALUES(?1, 1)", [&name]).unwrap();
        fs::create_dir_all(dir.path().join("data/ab")).unwrap();
        fs::write(dir.path().join("data/ab").join(&name), b"hello").unwrap();
    }
    let store = Store::open(dir.path(), false).unwrap();
    let old = store.head_object(at("b", "old")).unwrap();
    assert_eq!((read_all(&store, &old), old.meta.header("x-oss-meta-a")), (b"hello".to_vec(), Some("1")));
    assert_eq!(store.bucket("b").unwrap().unwrap().versioning, Versioning::Unversioned);
    store.set_versioning("b", Versioning::Enabled).unwrap();
    let new = put(&store, "old", b"new", 200).version_id.unwrap();
    assert_eq!(
        versions(&store, ""),
        [("old".into(), new, "new".into(), true), ("old".into(), "null".into(), "hello".into(), false)]
    );
    drop(store);
    // Opening again is a no-op.
    let store = Store::open(dir.path(), false).unwrap();
    assert_eq!(versions(&store, "").len(), 2);
    assert_blobs_consistent(&store);
}

// ---------------------------------------------------------------------------------------------------------
// Lifecycle

const DAY: i64 = 86_400;

fn set_rules(store: &Store, rules: &str) {
    let xml = format!("<LifecycleConfiguration>{rules}</LifecycleConfiguration>");
    let config = lifecycle::parse(xml.as_bytes(), false).unwrap();
    store.set_lifecycle("b", Some(&config.to_json())).unwrap();
}

#[test]
fn lifecycle_pass_aborts_expires_and_keeps_what_is_not_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 0).unwrap();
    store.set_versioning("b", Versioning::Enabled).unwrap();
    set_rules(
        &store,
        "<Rule><ID>abort</ID><Prefix></Prefix><Status>Enabled</Status>\
           <AbortMultipartUpload><Days>2</Days></AbortMultipartUpload>\
           <NoncurrentVersionExpiration><NoncurrentDays>3</NoncurrentDays></NoncurrentVersionExpiration></Rule>\
         <Rule><ID>tmp</ID><Prefix>tmp/</Prefix><Status>Enabled</Status>\
           <Expiration><Days>1</Days></Expiration><Tag><Key>kind</Key><Value>scratch</Value></Tag></Rule>\
         <Rule><ID>markers</ID><Prefix>gone/</Prefix><Status>Enabled</Status>\
           <Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration></Rule>",
    );
    // Day 0, 01:00: an upload, two versions of a file, a tagged and an untagged scratch file.
    let t0 = 3600;
    let old_upload = store.create_upload("b", "big", &ObjectMeta::default(), t0).unwrap();
    put(&store, "doc", b"v1", t0);
    put(&store, "doc", b"v2", t0); // v1 noncurrent since day 0
    let scratch = ObjectMeta { tagging: Some("kind=scratch".into()), ..ObjectMeta::default() };
    store.put_object("b", "tmp/a", blob(&store, b"scratch"), scratch, false, t0).unwrap();
    put(&store, "tmp/b", b"untagged", t0);
    put(&store, "gone/x", b"x", t0);
    store.delete_object(at("b", "gone/x"), t0).unwrap();
    // Day 2: a newer upload.
    let new_upload = store.create_upload("b", "big2", &ObjectMeta::default(), 2 * DAY + 10).unwrap();

    // Day 1 00:00 is before anything is due (rounded up to day 1, plus one day = day 2).
    let r = store.lifecycle_pass(DAY).unwrap();
    assert_eq!((r.aborted_uploads, r.expired_objects, r.expired_versions), (0, 0, 0));
    // Day 2 00:00: the tagged scratch file expires (a marker hides it); the untagged one stays.
    let r = store.lifecycle_pass(2 * DAY).unwrap();
    assert_eq!((r.expired_objects, r.aborted_uploads), (1, 0));
    assert!(matches!(store.head_object(at("b", "tmp/a")), Err(StoreError::DeleteMarker { .. })));
    assert!(store.head_object(at("b", "tmp/b")).is_ok());
    // Day 3: the first upload is aborted (initiated day 0, due day 3), the second is not.
    let r = store.lifecycle_pass(3 * DAY).unwrap();
    assert_eq!(r.aborted_uploads, 1);
    assert!(matches!(store.upload("b", "big", &old_upload), Err(StoreError::NoSuchUpload)));
    assert!(store.upload("b", "big2", &new_upload).is_ok());
    // Day 4: noncurrent versions of day 0 (doc v1, gone/x's object) expire; the current doc stays. gone/x's
    // marker is then alone, and the same pass removes it.
    let r = store.lifecycle_pass(4 * DAY).unwrap();
    assert_eq!(r.expired_versions, 2);
    assert_eq!(read_all(&store, &store.head_object(at("b", "doc")).unwrap()), b"v2");
    assert_eq!(versions(&store, "doc").len(), 1);
    assert_eq!(r.removed_delete_markers, 1, "the marker left alone is removed in the same pass");
    assert!(versions(&store, "gone/").is_empty());
    // tmp/a's object version became noncurrent on day 2: due day 5.
    let r = store.lifecycle_pass(5 * DAY).unwrap();
    assert_eq!(r.expired_versions, 1);
    assert_blobs_consistent(&store);

    // Without versioning, expiration deletes.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.create_bucket("b", "private", 0).unwrap();
    set_rules(
        &store,
        "<Rule><ID>all</ID><Prefix>logs/</Prefix><Status>Enabled</Status>\
           <Expiration><CreatedBeforeDate>1970-01-03T00:00:00.000Z</CreatedBeforeDate></Expiration></Rule>",
    );
    put(&store, "logs/old", b"x", DAY);
    put(&store, "logs/new", b"x", 2 * DAY);
    put(&store, "keep", b"x", DAY);
    let r = store.lifecycle_pass(10 * DAY).unwrap();
    assert_eq!(r.expired_objects, 1);
    assert!(matches!(store.head_object(at("b", "logs/old")), Err(StoreError::NoSuchKey)));
    assert!(store.head_object(at("b", "logs/new")).is_ok() && store.head_object(at("b", "keep")).is_ok());
    assert!(versions(&store, "").iter().all(|(_, v, _, _)| v == "null"));
    assert_blobs_consistent(&store);
}
