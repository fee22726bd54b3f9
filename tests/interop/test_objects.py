"""Objects: put / get / ranged get / head with metadata, copy, delete, batch delete, CRC checks, presigned
URLs, with oss2 (V1 and V4) and alibabacloud-oss-v2 (V4)."""

import base64
import hashlib
import os

import alibabacloud_oss_v2 as oss
import oss2
import pytest
import requests
from oss2.utils import Crc64

from conftest import AWKWARD_KEYS, oss2_bucket, v2_client


def crc64(data):
    c = Crc64()
    c.update(data)
    return c.crc


def upper_md5(data):
    return hashlib.md5(data).hexdigest().upper()


# -- oss2, V1 and V4 ------------------------------------------------------------------------------------


def test_put_get_head_with_metadata(bucket):
    data = os.urandom(300_001)
    headers = {
        "Content-Type": "application/x-test",
        "Cache-Control": "no-cache",
        "Content-Disposition": 'attachment; filename="x.bin"',
        "Content-Encoding": "identity",
        "x-oss-meta-author": "alice",
        "x-oss-meta-Mixed-Case": "Value With Spaces",
        "x-oss-storage-class": "IA",
        "x-oss-object-acl": "private",
    }
    put = bucket.put_object("dir/obj.bin", data, headers=headers)
    assert put.status == 200
    assert put.etag == upper_md5(data)
    assert put.crc == crc64(data)
    assert put.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert len(put.request_id) == 24

    got = bucket.get_object("dir/obj.bin")
    assert got.read() == data
    assert got.server_crc == crc64(data)
    assert got.content_type == "application/x-test"
    assert got.headers["Cache-Control"] == "no-cache"
    assert got.headers["Content-Disposition"] == 'attachment; filename="x.bin"'
    assert got.headers["x-oss-meta-author"] == "alice"
    assert got.headers["x-oss-meta-mixed-case"] == "Value With Spaces"
    assert got.headers["x-oss-object-type"] == "Normal"
    assert got.headers["x-oss-storage-class"] == "IA"

    head = bucket.head_object("dir/obj.bin")
    assert head.content_length == len(data)
    assert head.etag == upper_md5(data)
    assert head.server_crc == crc64(data)
    assert head.object_type == "Normal"
    assert head.headers["x-oss-meta-author"] == "alice"
    assert head.headers["Server"] == "AliyunOSS"
    assert "Date" in head.headers and "x-oss-server-time" in head.headers

    meta = bucket.get_object_meta("dir/obj.bin")
    assert meta.content_length == len(data)
    assert meta.etag == upper_md5(data)
    assert bucket.object_exists("dir/obj.bin")
    assert not bucket.object_exists("dir/missing")
    assert bucket.get_object_acl("dir/obj.bin").acl == "private"
    bucket.put_object_acl("dir/obj.bin", oss2.OBJECT_ACL_PUBLIC_READ)
    assert bucket.get_object_acl("dir/obj.bin").acl == "public-read"


def test_ranged_get(bucket):
    data = bytes(range(256)) * 40  # 10240 bytes
    bucket.put_object("r", data)
    cases = [((0, 99), data[0:100]), ((100, None), data[100:]), ((None, 50), data[-50:]), ((10240 - 1, 10240 - 1), data[-1:])]
    for byte_range, expected in cases:
        got = bucket.get_object("r", byte_range=byte_range)
        assert got.status == 206
        assert got.read() == expected
        # The CRC header on a range is the whole object's, as OSS sends it.
        assert got.server_crc == crc64(data)
        assert got.headers["Content-Range"].endswith("/10240")
    # Legacy behaviour: an unsatisfiable range returns the whole object with 200.
    got = bucket.get_object("r", byte_range=(20000, 30000))
    assert got.status == 200 and got.read() == data
    got = bucket.get_object("r", byte_range=(5, 20000))
    assert got.status == 200 and got.read() == data
    # With x-oss-range-behavior: standard, the end is clamped and a start past the end is 416.
    got = bucket.get_object("r", byte_range=(5, 20000), headers={"x-oss-range-behavior": "standard"})
    assert got.status == 206 and got.read() == data[5:]
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.get_object("r", byte_range=(20000, 30000), headers={"x-oss-range-behavior": "standard"})
    assert e.value.status == 416 and e.value.code == "InvalidRange"


def test_get_to_file_checks_crc(bucket, tmp_path):
    data = os.urandom(2_000_000)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    result = bucket.put_object_from_file("f/src.bin", str(path))
    assert result.crc == crc64(data)
    out = tmp_path / "out.bin"
    bucket.get_object_to_file("f/src.bin", str(out))
    assert out.read_bytes() == data


def test_empty_object(bucket):
    bucket.put_object("empty", b"")
    got = bucket.get_object("empty")
    assert got.read() == b""
    assert got.server_crc == 0
    assert bucket.head_object("empty").etag == upper_md5(b"")


def test_missing_objects_and_buckets(bucket, server, sig):
    with pytest.raises(oss2.exceptions.NoSuchKey) as e:
        bucket.get_object("nope/missing")
    assert e.value.status == 404 and len(e.value.request_id) == 24
    # HEAD has no body: the code arrives in x-oss-err, which oss2 decodes.
    with pytest.raises(oss2.exceptions.NotFound) as e:
        bucket.head_object("nope/missing")
    assert e.value.code == "NoSuchKey"
    ghost = oss2_bucket(server, sig, "no-such-bucket-here")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        ghost.get_object("k")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        ghost.put_object("k", b"x")


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys_round_trip(bucket, key):
    bucket.put_object(key, key.encode())
    assert bucket.get_object(key).read() == key.encode()
    assert bucket.head_object(key).content_length == len(key.encode())
    assert key in [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=key[:3])]
    bucket.delete_object(key)
    assert not bucket.object_exists(key)


def test_delete_is_idempotent(bucket):
    bucket.put_object("d", b"x")
    assert bucket.delete_object("d").status == 204
    assert bucket.delete_object("d").status == 204


def test_batch_delete(bucket):
    keys = [f"batch/{i} {AWKWARD_KEYS[i % len(AWKWARD_KEYS)]}" for i in range(30)]
    for k in keys:
        bucket.put_object(k, b"x")
    result = bucket.batch_delete_objects(keys[:20] + ["batch/never-existed"])
    assert sorted(result.deleted_keys) == sorted(keys[:20] + ["batch/never-existed"])
    left = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="batch/")]
    assert sorted(left) == sorted(keys[20:])


def test_copy_object(bucket, bucket_name):
    data = os.urandom(5000)
    src = "src dir/a+b.bin"
    bucket.put_object(src, data, headers={"x-oss-meta-origin": "src", "Content-Type": "text/x-src"})
    result = bucket.copy_object(bucket_name, src, "copy/1.bin")
    assert result.status == 200
    assert result.etag == upper_md5(data)
    got = bucket.get_object("copy/1.bin")
    assert got.read() == data
    assert got.headers["x-oss-meta-origin"] == "src"
    assert got.content_type == "text/x-src"
    # REPLACE takes the metadata from the request instead.
    bucket.copy_object(
        bucket_name,
        src,
        "copy/2.bin",
        headers={"x-oss-metadata-directive": "REPLACE", "x-oss-meta-new": "yes", "Content-Type": "text/x-new"},
    )
    head = bucket.head_object("copy/2.bin")
    assert head.headers.get("x-oss-meta-new") == "yes"
    assert "x-oss-meta-origin" not in head.headers
    assert head.content_type == "text/x-new"
    # The copy is independent of its source.
    bucket.delete_object(src)
    assert bucket.get_object("copy/1.bin").read() == data
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.copy_object(bucket_name, "missing-source", "copy/3.bin")


def test_forbid_overwrite(bucket):
    bucket.put_object("once", b"1")
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.put_object("once", b"2", headers={"x-oss-forbid-overwrite": "true"})
    assert e.value.status == 409 and e.value.code == "FileAlreadyExists"
    assert bucket.get_object("once").read() == b"1"


def test_content_md5_is_verified(bucket):
    good = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    bucket.put_object("md5", b"payload", headers={"Content-MD5": good})
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.put_object("md5", b"tampered", headers={"Content-MD5": good})
    assert e.value.status == 400 and e.value.code == "InvalidDigest"
    assert bucket.get_object("md5").read() == b"payload"


def test_chunked_upload_from_a_stream(bucket):
    data = os.urandom(700_000)

    def gen():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    # A generator body makes requests send Transfer-Encoding: chunked.
    result = bucket.put_object("chunked", gen())
    assert result.crc == crc64(data)
    assert bucket.get_object("chunked").read() == data


def test_conditional_get(bucket):
    bucket.put_object("cond", b"abc")
    etag = bucket.head_object("cond").etag
    with pytest.raises(oss2.exceptions.NotModified):
        bucket.get_object("cond", headers={"If-None-Match": f'"{etag}"'})
    with pytest.raises(oss2.exceptions.PreconditionFailed):
        bucket.get_object("cond", headers={"If-Match": '"0000"'})
    assert bucket.get_object("cond", headers={"If-Match": f'"{etag}"'}).read() == b"abc"


@pytest.mark.parametrize("key", ["presigned/a b+c.txt", "presigned/中文 & more"])
def test_presigned_urls(bucket, key):
    data = b"presigned payload"
    put_url = bucket.sign_url("PUT", key, 300, headers={"Content-Type": "text/plain"})
    r = requests.put(put_url, data=data, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    get_url = bucket.sign_url("GET", key, 300)
    r = requests.get(get_url)
    assert r.status_code == 200 and r.content == data
    # Tampering with the URL breaks the signature.
    r = requests.get(get_url.replace("presigned", "presigneX", 1))
    assert r.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in r.text


def test_expired_presigned_url(bucket, server):
    bucket.put_object("exp", b"x")
    url = bucket.sign_url("GET", "exp", 60)
    server.control("PUT", "clock", {"offset_secs": 3600})
    r = requests.get(url)
    assert r.status_code == 403
    assert "<Code>AccessDenied</Code>" in r.text and "Request has expired." in r.text


# -- alibabacloud-oss-v2 ----------------------------------------------------------------------------------


def test_v2_put_get_head_copy_delete(client, bucket_name):
    data = os.urandom(123_457)
    put = client.put_object(oss.PutObjectRequest(
        bucket=bucket_name, key="v2/a b.bin", body=data, metadata={"k": "v"}, content_type="application/x-v2"))
    assert put.status_code == 200
    assert put.etag == f'"{upper_md5(data)}"'
    assert int(put.hash_crc64) == crc64(data)

    got = client.get_object(oss.GetObjectRequest(bucket=bucket_name, key="v2/a b.bin"))
    assert got.body.read() == data
    assert got.metadata == {"k": "v"}
    assert got.content_type == "application/x-v2"

    ranged = client.get_object(oss.GetObjectRequest(bucket=bucket_name, key="v2/a b.bin", range_header="bytes=10-19"))
    assert ranged.body.read() == data[10:20]
    assert ranged.content_range == f"bytes 10-19/{len(data)}"

    head = client.head_object(oss.HeadObjectRequest(bucket=bucket_name, key="v2/a b.bin"))
    assert head.content_length == len(data)
    assert int(head.hash_crc64) == crc64(data)
    assert head.object_type == "Normal"

    copy = client.copy_object(oss.CopyObjectRequest(
        bucket=bucket_name, key="v2/copy+1", source_bucket=bucket_name, source_key="v2/a b.bin"))
    assert copy.status_code == 200
    assert client.get_object(oss.GetObjectRequest(bucket=bucket_name, key="v2/copy+1")).body.read() == data

    assert client.is_object_exist(bucket_name, "v2/copy+1")
    client.delete_object(oss.DeleteObjectRequest(bucket=bucket_name, key="v2/copy+1"))
    assert not client.is_object_exist(bucket_name, "v2/copy+1")

    with pytest.raises(oss.exceptions.OperationError) as e:
        client.head_object(oss.HeadObjectRequest(bucket=bucket_name, key="v2/missing"))
    se = e.value.unwrap()
    assert se.status_code == 404 and se.code == "NoSuchKey"


def test_v2_batch_delete_with_awkward_keys(client, bucket_name):
    keys = [k for k in AWKWARD_KEYS if ".." not in k]
    for k in keys:
        client.put_object(oss.PutObjectRequest(bucket=bucket_name, key=k, body=b"x"))
    result = client.delete_multiple_objects(oss.DeleteMultipleObjectsRequest(
        bucket=bucket_name, objects=[oss.DeleteObject(key=k) for k in keys]))
    assert sorted(o.key for o in result.deleted_objects) == sorted(keys)
    listed = client.list_objects_v2(oss.ListObjectsV2Request(bucket=bucket_name))
    assert not listed.contents


def test_v2_presign(client, bucket_name):
    client.put_object(oss.PutObjectRequest(bucket=bucket_name, key="pre/x y", body=b"v2 presigned"))
    pre = client.presign(oss.GetObjectRequest(bucket=bucket_name, key="pre/x y"))
    assert "x-oss-signature" in pre.url
    r = requests.get(pre.url)
    assert r.status_code == 200 and r.content == b"v2 presigned"
    put = client.presign(oss.PutObjectRequest(bucket=bucket_name, key="pre/put"))
    r = requests.put(put.url, data=b"uploaded", headers=put.signed_headers or {})
    assert r.status_code == 200, r.text
    assert client.get_object(oss.GetObjectRequest(bucket=bucket_name, key="pre/put")).body.read() == b"uploaded"


def test_v2_bucket_info_and_exists(client, bucket_name):
    assert client.is_bucket_exist(bucket_name)
    assert not client.is_bucket_exist("no-such-bucket-v2")
    info = client.get_bucket_info(oss.GetBucketInfoRequest(bucket=bucket_name))
    assert info.bucket_info.name == bucket_name


def test_presigned_v4_with_additional_headers(server, bucket_name):
    b = oss2_bucket(server, "v4", bucket_name)
    b.put_object("addl", b"signed headers")
    url = b.sign_url("GET", "addl", 60, headers={"x-custom": "yes"}, additional_headers=["x-custom"])
    assert "x-oss-additional-headers=x-custom" in url
    assert requests.get(url, headers={"x-custom": "yes"}).content == b"signed headers"
    r = requests.get(url, headers={"x-custom": "no"})
    assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text


def test_virtual_hosted_requests(server, sig, bucket_name):
    # A Host of <bucket>.<domain> addresses the bucket, the URL path is the key: OSS's own style, and the
    # SDKs' default for a named endpoint. The name does not resolve here, so the server doubles as the
    # HTTP proxy: requests then carry the absolute URL and the virtual Host.
    port = server.addr.rsplit(":", 1)[1]
    endpoint = f"http://oss-test.localhost:{port}"
    proxies = {"http": server.endpoint}
    b = oss2.Bucket(oss2_auth_for(sig), endpoint, bucket_name, region="cn-hangzhou", proxies=proxies)
    b.put_object("vhost/key one", b"virtual")
    assert b.get_object("vhost/key one").read() == b"virtual"
    listed = b.list_objects_v2(prefix="vhost/")
    assert [o.key for o in listed.object_list] == ["vhost/key one"]
    # Path style reaches the same object.
    assert oss2_bucket(server, sig, bucket_name).get_object("vhost/key one").read() == b"virtual"

    # alibabacloud-oss-v2 turns a string proxy_host into keys requests never matches ("http://"); a dict
    # is passed through as is.
    client = v2_client(server, endpoint=endpoint, use_path_style=False, proxy_host=proxies)
    got = client.get_object(oss.GetObjectRequest(bucket=bucket_name, key="vhost/key one"))
    assert got.body.read() == b"virtual"
    assert server.op_stats("GetObject")["requests"] == 3


def oss2_auth_for(sig):
    from conftest import oss2_auth
    return oss2_auth(sig)


def test_response_header_overrides(bucket):
    bucket.put_object("override.bin", b"x", headers={"Content-Type": "application/octet-stream"})
    got = bucket.get_object("override.bin", params={
        "response-content-type": "text/plain",
        "response-content-disposition": "attachment; filename=o.txt",
        "response-cache-control": "max-age=5",
    })
    assert got.read() == b"x"
    assert got.content_type == "text/plain"
    assert got.headers["Content-Disposition"] == "attachment; filename=o.txt"
    assert got.headers["Cache-Control"] == "max-age=5"
    # The stored headers are unchanged.
    assert bucket.head_object("override.bin").content_type == "application/octet-stream"
