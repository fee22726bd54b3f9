"""Listing: ListObjectsV2 and ListObjects (v1) with prefix, delimiter, pagination and encoding-type=url, with
oss2 (V1 and V4) and alibabacloud-oss-v2; keys come back in UTF-8 byte order."""

import alibabacloud_oss_v2 as oss
import oss2
import pytest

from conftest import AWKWARD_KEYS, oss2_auth

TREE = [
    "a.txt",
    "b/1.txt",
    "b/2.txt",
    "b/sub/3.txt",
    "b/sub/4.txt",
    "c/only.txt",
    "d.txt",
    "e/é.txt",
    "e/z.txt",
]


def utf8_sorted(keys):
    return sorted(keys, key=lambda k: k.encode())


@pytest.fixture
def tree(bucket):
    for k in TREE:
        bucket.put_object(k, k.encode())
    return bucket


def test_list_v2_everything(tree):
    keys = [o.key for o in oss2.ObjectIteratorV2(tree)]
    assert keys == utf8_sorted(TREE)


def test_list_v2_prefix_and_delimiter(tree):
    result = tree.list_objects_v2(delimiter="/")
    assert [o.key for o in result.object_list] == ["a.txt", "d.txt"]
    assert result.prefix_list == ["b/", "c/", "e/"]
    assert not result.is_truncated
    result = tree.list_objects_v2(prefix="b/", delimiter="/")
    assert [o.key for o in result.object_list] == ["b/1.txt", "b/2.txt"]
    assert result.prefix_list == ["b/sub/"]
    result = tree.list_objects_v2(prefix="b/sub/")
    assert [(o.key, o.size) for o in result.object_list] == [("b/sub/3.txt", 11), ("b/sub/4.txt", 11)]
    o = result.object_list[0]
    assert o.type == "Normal" and o.storage_class == "Standard" and o.etag and o.last_modified > 0


def test_list_v2_pagination_counts_prefixes(tree):
    pages = []
    token = ""
    while True:
        result = tree.list_objects_v2(delimiter="/", max_keys=2, continuation_token=token)
        pages.append([o.key for o in result.object_list] + result.prefix_list)
        if not result.is_truncated:
            break
        token = result.next_continuation_token
    # KeyCount caps objects and common prefixes together: a.txt, b/ | c/, d.txt | e/
    flat = [sorted(p) for p in pages]
    assert flat == [["a.txt", "b/"], ["c/", "d.txt"], ["e/"]]
    keys = [o.key for o in oss2.ObjectIteratorV2(tree, max_keys=1)]
    assert keys == utf8_sorted(TREE)


def test_list_v2_start_after_and_fetch_owner(tree):
    result = tree.list_objects_v2(start_after="b/sub/3.txt", fetch_owner=True, max_keys=3)
    assert [o.key for o in result.object_list] == ["b/sub/4.txt", "c/only.txt", "d.txt"]
    assert result.object_list[0].owner.id
    assert result.is_truncated


def test_list_v1(tree):
    keys = [o.key for o in oss2.ObjectIterator(tree, max_keys=2)]
    assert keys == utf8_sorted(TREE)
    result = tree.list_objects(prefix="b/", delimiter="/", max_keys=1)
    assert [o.key for o in result.object_list] == ["b/1.txt"]
    assert result.is_truncated and result.next_marker == "b/1.txt"
    result = tree.list_objects(prefix="", delimiter="/", marker="b/")
    assert [o.key for o in result.object_list] == ["d.txt"]
    assert result.prefix_list == ["c/", "e/"]


def test_list_awkward_keys_url_encoded(bucket, server, sig, bucket_name):
    keys = [f"awk/{k}" for k in AWKWARD_KEYS] + ["awk/ctl\x01char", "awk/new\nline"]
    for k in keys:
        bucket.put_object(k, b"x")
    # oss2 asks for encoding-type=url and decodes; the control characters only survive that way.
    listed = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="awk/", max_keys=3)]
    assert listed == utf8_sorted(keys)
    # The raw answer never carries a literal '+' or space inside a key.
    resp = bucket._do("GET", bucket.bucket_name, "", params={"list-type": "2", "prefix": "awk/", "encoding-type": "url"})
    raw = resp.read().decode()
    assert "<EncodingType>url</EncodingType>" in raw
    for k in raw.split("<Key>")[1:]:
        k = k.split("</Key>")[0]
        assert " " not in k and "+" not in k, k
    prefixes = bucket.list_objects_v2(prefix="awk/", delimiter=" ").prefix_list
    assert "awk/dir/sub " in prefixes and "awk/with " in prefixes


def test_v2_sdk_paginator_and_encoding(client, bucket_name):
    keys = [k for k in AWKWARD_KEYS if ".." not in k] + [f"page/{i:03}" for i in range(25)]
    for k in keys:
        client.put_object(oss.PutObjectRequest(bucket=bucket_name, key=k, body=b"x"))
    paginator = client.list_objects_v2_paginator()
    listed = []
    for page in paginator.iter_page(oss.ListObjectsV2Request(bucket=bucket_name, max_keys=7)):
        assert page.key_count == len(page.contents or []) + len(page.common_prefixes or [])
        listed += [o.key for o in page.contents or []]
    assert listed == utf8_sorted(keys)
    result = client.list_objects_v2(oss.ListObjectsV2Request(bucket=bucket_name, prefix="page/", delimiter="/", max_keys=1000))
    assert result.key_count == 25
    result = client.list_objects_v2(oss.ListObjectsV2Request(bucket=bucket_name, delimiter="/"))
    assert "page/" in [p.prefix for p in result.common_prefixes]


def test_list_buckets_and_missing_bucket(server, sig, bucket_name):
    service = oss2.Service(oss2_auth(sig), server.endpoint, region="cn-hangzhou")
    names = [b.name for b in oss2.BucketIterator(service)]
    assert bucket_name in names
    ghost = oss2.Bucket(oss2_auth(sig), server.endpoint, "missing-bucket-zz", region="cn-hangzhou")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        ghost.list_objects_v2()


def test_bucket_info_and_delete(server, sig, bucket_name):
    b = oss2.Bucket(oss2_auth(sig), server.endpoint, bucket_name, region="cn-hangzhou")
    info = b.get_bucket_info()
    assert info.name == bucket_name
    assert b.get_bucket_location().location == "oss-cn-hangzhou"
    b.put_object("k", b"x")
    with pytest.raises(oss2.exceptions.BucketNotEmpty):
        b.delete_bucket()
    b.delete_object("k")
    b.delete_bucket()
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        b.get_bucket_info()
