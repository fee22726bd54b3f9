"""Bucket versioning through the official SDKs: oss2 (V1 and V4) and alibabacloud-oss-v2 (V4).

Put twice, list the versions, read the old one, delete (a delete marker), restore a version with a copy,
delete versions in a batch, suspended buckets and the `null` version, pagination of ListObjectVersions,
multipart uploads creating versions, and the error codes of bad version ids.
"""

import os

import alibabacloud_oss_v2 as oss
import oss2
import pytest
from oss2.models import BatchDeleteObjectVersion, BatchDeleteObjectVersionList, BucketVersioningConfig

from conftest import AWKWARD_KEYS

MIN_PART = 102_400


def enable(bucket, status="Enabled"):
    bucket.put_bucket_versioning(BucketVersioningConfig(status))


def all_versions(bucket, prefix="", max_keys=1000, delimiter=""):
    """Every (key, version id, is delete marker, is latest), page by page, in listing order per page."""
    out, prefixes = [], []
    key_marker, version_marker = "", ""
    while True:
        page = bucket.list_object_versions(
            prefix=prefix, delimiter=delimiter, key_marker=key_marker, versionid_marker=version_marker, max_keys=max_keys
        )
        assert len(page.versions) + len(page.delete_marker) + len(page.common_prefix) <= max_keys
        entries = [(v.key, v.versionid, False, v.is_latest) for v in page.versions]
        entries += [(m.key, m.versionid, True, m.is_latest) for m in page.delete_marker]
        out += entries
        prefixes += page.common_prefix
        if not page.is_truncated:
            return out, prefixes
        key_marker, version_marker = page.next_key_marker, page.next_versionid_marker


def test_put_twice_list_get_old_delete_restore(bucket, bucket_name):
    key = "docs/report v1+final.txt"
    assert bucket.get_bucket_versioning().status is None
    enable(bucket)
    assert bucket.get_bucket_versioning().status == "Enabled"

    one, two = b"first version", b"second version, longer"
    r1 = bucket.put_object(key, one, headers={"x-oss-meta-rev": "1"})
    r2 = bucket.put_object(key, two, headers={"x-oss-meta-rev": "2"})
    v1, v2 = r1.versionid, r2.versionid
    assert v1 and v2 and v1 != v2 and len(v1) == 32 and v1.isalnum()

    listed = bucket.list_object_versions(prefix="docs/")
    assert [(v.key, v.versionid, v.is_latest) for v in listed.versions] == [(key, v2, True), (key, v1, False)]
    assert listed.delete_marker == [] and not listed.is_truncated
    old = listed.versions[1]
    assert (old.size, old.etag, old.storage_class, old.type) == (len(one), r1.etag, "Standard", "Normal")
    assert old.owner.id and old.last_modified > 0

    # The old version, by id, with its own metadata.
    got = bucket.get_object(key, params={"versionId": v1})
    assert got.read() == one
    assert got.headers["x-oss-version-id"] == v1 and got.headers["x-oss-meta-rev"] == "1"
    assert bucket.head_object(key, params={"versionId": v1}).content_length == len(one)
    assert bucket.get_object(key).headers["x-oss-version-id"] == v2

    # Delete without a version: a delete marker hides the key, the versions stay.
    d = bucket.delete_object(key)
    assert d.status == 204 and d.delete_marker is True
    marker = d.versionid
    assert marker and marker not in (v1, v2)
    with pytest.raises(oss2.exceptions.NoSuchKey) as e:
        bucket.get_object(key)
    assert e.value.headers["x-oss-delete-marker"] == "true" and e.value.headers["x-oss-version-id"] == marker
    # A delete marker named by version has no data: 405, as S3 answers.
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.get_object(key, params={"versionId": marker})
    assert e.value.status == 405 and e.value.headers["x-oss-delete-marker"] == "true"
    assert key not in [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="docs/")]
    versions, _ = all_versions(bucket, prefix="docs/")
    assert versions == [(key, v2, False, False), (key, v1, False, False), (key, marker, True, True)]

    # Restore the first version by copying it onto the key: a new version with the old bytes.
    restored = bucket.copy_object(bucket_name, key, key, params={"versionId": v1})
    assert restored.versionid not in (v1, v2, marker)
    assert restored.headers["x-oss-copy-source-version-id"] == v1
    got = bucket.get_object(key)
    assert got.read() == one and got.headers["x-oss-meta-rev"] == "1"

    # Removing the newest version by id makes the next one current again (here: the delete marker).
    bucket.delete_object(key, params={"versionId": restored.versionid})
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object(key)
    d = bucket.delete_object(key, params={"versionId": marker})
    assert d.delete_marker is True and d.versionid == marker
    assert bucket.get_object(key).read() == two, "removing the marker undeletes the key"


def test_bad_and_missing_version_ids(bucket):
    enable(bucket)
    bucket.put_object("k", b"x")
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.get_object("k", params={"versionId": "0" * 32})
    assert (e.value.status, e.value.code) == (404, "NoSuchVersion")
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.get_object("k", params={"versionId": "not-a-version!"})
    assert (e.value.status, e.value.code, e.value.ec) == (400, "InvalidArgument", "0012-00000202")
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.head_object("k", params={"versionId": "0" * 32})
    assert e.value.status == 404 and e.value.code == "NoSuchVersion"
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.copy_object(bucket.bucket_name, "k", "k2", params={"versionId": "0" * 32})
    assert e.value.code == "NoSuchVersion"
    # Deleting a version that does not exist succeeds, as deleting a missing key does.
    assert bucket.delete_object("k", params={"versionId": "0" * 32}).status == 204
    assert bucket.get_object("k").read() == b"x"


def test_batch_delete_with_versions(bucket):
    enable(bucket)
    keys = AWKWARD_KEYS[:4]
    first = {k: bucket.put_object(k, b"1").versionid for k in keys}
    second = {k: bucket.put_object(k, b"2").versionid for k in keys}
    # One request: two exact versions, two plain keys (delete markers).
    request = [BatchDeleteObjectVersion(keys[0], first[keys[0]]), BatchDeleteObjectVersion(keys[1], second[keys[1]])]
    request += [BatchDeleteObjectVersion(keys[2]), BatchDeleteObjectVersion(keys[3])]
    result = bucket.delete_object_versions(BatchDeleteObjectVersionList(request))
    by_key = {r.key: r for r in result.delete_versions}
    assert by_key[keys[0]].versionid == first[keys[0]] and not by_key[keys[0]].delete_marker
    assert by_key[keys[1]].versionid == second[keys[1]] and not by_key[keys[1]].delete_marker
    for k in keys[2:]:
        assert by_key[k].delete_marker is True and by_key[k].delete_marker_versionid
    assert bucket.get_object(keys[0]).read() == b"2"
    assert bucket.get_object(keys[1]).read() == b"1", "the older version became current"
    for k in keys[2:]:
        with pytest.raises(oss2.exceptions.NoSuchKey):
            bucket.get_object(k)
    # Removing the markers by version in a batch brings the keys back.
    markers = [BatchDeleteObjectVersion(k, by_key[k].delete_marker_versionid) for k in keys[2:]]
    result = bucket.delete_object_versions(BatchDeleteObjectVersionList(markers))
    assert all(r.delete_marker for r in result.delete_versions)
    for k in keys[2:]:
        assert bucket.get_object(k).read() == b"2"


def test_suspended_versioning_uses_the_null_version(bucket):
    bucket.put_object("k", b"before")  # written before versioning: becomes the null version
    enable(bucket)
    real = bucket.put_object("k", b"enabled").versionid
    enable(bucket, "Suspended")
    assert bucket.get_bucket_versioning().status == "Suspended"
    r = bucket.put_object("k", b"suspended-1")
    assert r.versionid == "null"
    bucket.put_object("k", b"suspended-2")
    versions, _ = all_versions(bucket)
    # The null version written before versioning was replaced by the suspended writes, in place.
    assert versions == [("k", "null", False, True), ("k", real, False, False)]
    assert bucket.get_object("k", params={"versionId": "null"}).read() == b"suspended-2"
    d = bucket.delete_object("k")
    assert d.delete_marker is True and d.versionid == "null"
    versions, _ = all_versions(bucket)
    assert versions == [("k", real, False, False), ("k", "null", True, True)]
    assert bucket.get_object("k", params={"versionId": real}).read() == b"enabled"


def test_listing_versions_in_pages_with_prefixes(bucket):
    enable(bucket)
    put_order = {}
    for name in ["a", "dir/x", "dir/y", "m+n", "z"]:
        put_order[name] = [bucket.put_object(name, f"{name}{i}".encode()).versionid for i in range(3)]
    marker = bucket.delete_object("z").versionid
    whole, _ = all_versions(bucket)
    assert len(whole) == 16
    # oss2 returns Versions and DeleteMarkers in two lists, so compare the sets, and the order of each
    # key's versions: newest first.
    for size in (1, 2, 5, 1000):
        paged, _ = all_versions(bucket, max_keys=size)
        assert sorted(paged) == sorted(whole) and len(paged) == 16, f"max_keys={size}"
        for name, ids in put_order.items():
            assert [v for k, v, m, _ in paged if k == name and not m] == ids[::-1], f"{name}, max_keys={size}"
    # Latest flags: one per key, the marker for z.
    latest = sorted((k, v) for k, v, _, is_latest in whole if is_latest)
    assert latest == sorted([(n, ids[-1]) for n, ids in put_order.items() if n != "z"] + [("z", marker)])
    top, prefixes = all_versions(bucket, delimiter="/", max_keys=2)
    assert sorted(top) == sorted(e for e in whole if not e[0].startswith("dir/")) and prefixes == ["dir/"]


def test_multipart_upload_creates_a_version(bucket):
    enable(bucket)
    first = bucket.put_object("big", b"small first").versionid
    upload = bucket.init_multipart_upload("big", headers={"x-oss-meta-kind": "multipart"}).upload_id
    p1, p2 = os.urandom(MIN_PART), os.urandom(1000)
    parts = [
        oss2.models.PartInfo(1, bucket.upload_part("big", upload, 1, p1).etag),
        oss2.models.PartInfo(2, bucket.upload_part("big", upload, 2, p2).etag),
    ]
    done = bucket.complete_multipart_upload("big", upload, parts)
    assert done.versionid and done.versionid != first
    got = bucket.get_object("big")
    assert got.read() == p1 + p2 and got.headers["x-oss-meta-kind"] == "multipart"
    assert bucket.get_object("big", params={"versionId": first}).read() == b"small first"
    versions, _ = all_versions(bucket)
    assert [v[1] for v in versions] == [done.versionid, first]


def test_versioning_with_sdk_v2(client, bucket_name):
    c = client
    c.put_bucket_versioning(
        oss.PutBucketVersioningRequest(
            bucket=bucket_name, versioning_configuration=oss.VersioningConfiguration(status="Enabled")
        )
    )
    got = c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket=bucket_name))
    assert got.version_status == "Enabled"
    key = "v2/obj with space"
    r1 = c.put_object(oss.PutObjectRequest(bucket=bucket_name, key=key, body=b"one"))
    r2 = c.put_object(oss.PutObjectRequest(bucket=bucket_name, key=key, body=b"two"))
    assert r1.version_id and r2.version_id and r1.version_id != r2.version_id

    listed = c.list_object_versions(oss.ListObjectVersionsRequest(bucket=bucket_name, prefix="v2/"))
    assert [(v.key, v.version_id, v.is_latest) for v in listed.version] == [
        (key, r2.version_id, True),
        (key, r1.version_id, False),
    ]
    old = c.get_object(oss.GetObjectRequest(bucket=bucket_name, key=key, version_id=r1.version_id))
    assert old.body.read() == b"one" and old.version_id == r1.version_id

    d = c.delete_object(oss.DeleteObjectRequest(bucket=bucket_name, key=key))
    assert d.delete_marker is True and d.version_id
    listed = c.list_object_versions(oss.ListObjectVersionsRequest(bucket=bucket_name, prefix="v2/"))
    assert [(m.key, m.version_id, m.is_latest) for m in listed.delete_marker] == [(key, d.version_id, True)]

    copied = c.copy_object(
        oss.CopyObjectRequest(
            bucket=bucket_name, key=key, source_bucket=bucket_name, source_key=key, source_version_id=r1.version_id
        )
    )
    assert copied.source_version_id == r1.version_id and copied.version_id
    assert c.get_object(oss.GetObjectRequest(bucket=bucket_name, key=key)).body.read() == b"one"

    result = c.delete_multiple_objects(
        oss.DeleteMultipleObjectsRequest(
            bucket=bucket_name,
            objects=[
                oss.DeleteObject(key=key, version_id=r2.version_id),
                oss.DeleteObject(key=key, version_id=d.version_id),
                oss.DeleteObject(key="v2/other"),
            ],
        )
    )
    deleted = {(x.key, x.version_id): x for x in result.deleted_objects}
    assert deleted[(key, r2.version_id)].delete_marker in (None, False)
    assert deleted[(key, d.version_id)].delete_marker is True
    other = [x for x in result.deleted_objects if x.key == "v2/other"][0]
    assert other.delete_marker is True and other.delete_marker_version_id
    left = c.list_object_versions(oss.ListObjectVersionsRequest(bucket=bucket_name, prefix="v2/"))
    assert sorted(v.version_id for v in left.version) == sorted([r1.version_id, copied.version_id])
    with pytest.raises(oss.exceptions.OperationError) as e:
        c.get_object(oss.GetObjectRequest(bucket=bucket_name, key=key, version_id="0" * 32))
    assert e.value.unwrap().code == "NoSuchVersion"
