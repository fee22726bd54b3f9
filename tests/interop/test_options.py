"""OSS options a server user reaches for, through the official SDKs: upload callbacks (against a loopback
HTTP server this test starts), server-side encryption headers, object tags, the traffic limit, metadata on
every upload path and metadata-only copies, conditional GETs on full and ranged reads, and ListBuckets
paging.
"""

import base64
import datetime
import email.utils
import http.server
import json
import os
import threading

import alibabacloud_oss_v2 as oss
import oss2
import pytest
from oss2.models import PartInfo, Tagging, TaggingRule
from oss2.utils import Crc64

from conftest import oss2_auth

MIN_PART = 102_400


def crc64(data):
    c = Crc64()
    c.update(data)
    return c.crc


def b64json(value):
    return base64.b64encode(json.dumps(value).encode()).decode()


class CallbackServer:
    """A loopback HTTP server that records the callbacks it receives and answers as told."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.answer = b'{"Status":"OK"}'
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append({"path": self.path, "headers": headers, "body": body.decode()})
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.answer)))
                self.end_headers()
                self.wfile.write(outer.answer)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def callback_server():
    s = CallbackServer()
    yield s
    s.close()


def callback_headers(url, body, body_type=None, host=None, **custom):
    config = {"callbackUrl": url, "callbackBody": body}
    if body_type:
        config["callbackBodyType"] = body_type
    if host:
        config["callbackHost"] = host
    headers = {"x-oss-callback": b64json(config)}
    if custom:
        headers["x-oss-callback-var"] = b64json(custom)
    return headers


# -- upload callbacks --------------------------------------------------------------------------------------


def test_callbacks_on_put_and_complete(bucket, bucket_name, callback_server):
    cb = callback_server
    data = b"callback payload"
    headers = callback_headers(
        cb.url,
        "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}&var=${x:var}",
        host="app.example.test",
        **{"x:var": "a value&more"},
    )
    headers["Content-Type"] = "text/plain"
    result = bucket.put_object("cb/one two.txt", data, headers=headers)
    assert result.status == 200
    assert json.loads(result.resp.read()) == {"Status": "OK"}, "the callback's answer is the response body"
    assert result.etag and result.crc == crc64(data)
    assert len(cb.requests) == 1
    got = cb.requests[0]
    assert got["path"] == "/notify" and got["headers"]["host"] == "app.example.test"
    assert got["headers"]["content-type"] == "application/x-www-form-urlencoded"
    fields = dict(p.split("=", 1) for p in got["body"].split("&"))
    assert fields["bucket"] == bucket_name and fields["object"] == "cb%2Fone%20two.txt"
    assert fields["etag"] == result.etag and fields["size"] == str(len(data)) and fields["mimeType"] == "text%2Fplain"
    assert fields["var"] == "a%20value%26more"

    # CompleteMultipartUpload with a JSON body.
    upload = bucket.init_multipart_upload("cb/multi.bin").upload_id
    p1, p2 = os.urandom(MIN_PART), os.urandom(10)
    parts = [PartInfo(1, bucket.upload_part("cb/multi.bin", upload, 1, p1).etag)]
    parts.append(PartInfo(2, bucket.upload_part("cb/multi.bin", upload, 2, p2).etag))
    json_body = '{"object":${object},"size":${size},"crc":${crc64}}'
    cb.answer = b'{"saved":true}'
    done = bucket.complete_multipart_upload(
        "cb/multi.bin", upload, parts, headers=callback_headers(cb.url, json_body, "application/json")
    )
    assert done.status == 200 and json.loads(done.resp.read()) == {"saved": True}
    sent = json.loads(cb.requests[1]["body"])
    assert sent == {"object": "cb/multi.bin", "size": len(p1 + p2), "crc": str(crc64(p1 + p2))}
    assert cb.requests[1]["headers"]["content-type"] == "application/json"
    assert bucket.get_object("cb/multi.bin").read() == p1 + p2


def test_failed_callbacks_answer_203_and_keep_the_object(bucket, callback_server):
    cb = callback_server
    cb.status = 500
    r = bucket.put_object("cb/failed", b"stored anyway", headers=callback_headers(cb.url, "o=${object}"))
    assert r.status == 203
    body = r.resp.read().decode()
    assert "<Code>CallbackFailed</Code>" in body and "Error status : 500." in body
    assert bucket.get_object("cb/failed").read() == b"stored anyway"

    # An answer that is not JSON fails too.
    cb.status, cb.answer = 200, b"not json"
    r = bucket.put_object("cb/not-json", b"x", headers=callback_headers(cb.url, "o=${object}"))
    assert r.status == 203 and "not valid json" in r.resp.read().decode()

    # Nobody listening.
    dead = f"http://127.0.0.1:{cb.httpd.server_address[1]}/x"
    cb.close()
    r = bucket.put_object("cb/nobody", b"x", headers=callback_headers(dead, "o=${object}"))
    assert r.status == 203 and "can not connect" in r.resp.read().decode()

    # A callback off this machine is refused without being sent (serve runs without --allow-remote-callbacks).
    r = bucket.put_object("cb/remote", b"x", headers=callback_headers("http://192.0.2.1/cb", "o=${object}"))
    assert r.status == 203 and "loopback" in r.resp.read().decode()
    assert bucket.object_exists("cb/remote")


def test_invalid_callback_parameters_store_nothing(bucket):
    for header in ["not base64 at all!", b64json({"callbackBody": "x"}), b64json({"callbackUrl": "127.0.0.1:1"})]:
        with pytest.raises(oss2.exceptions.ServerError) as e:
            bucket.put_object("cb/invalid", b"x", headers={"x-oss-callback": header})
        assert (e.value.status, e.value.code) == (400, "InvalidArgument")
    assert not bucket.object_exists("cb/invalid")


def test_callback_with_sdk_v2(client, bucket_name, callback_server):
    callback_server.answer = b'{"v2":"yes"}'
    r = client.put_object(
        oss.PutObjectRequest(
            bucket=bucket_name,
            key="cb/v2.txt",
            body=b"v2 data",
            callback=b64json({"callbackUrl": callback_server.url, "callbackBody": "key=${object}&v=${x:who}"}),
            callback_var=b64json({"x:who": "v2"}),
        )
    )
    assert r.status_code == 200 and json.loads(r.callback_result) == {"v2": "yes"}
    assert callback_server.requests[0]["body"] == "key=cb%2Fv2.txt&v=v2"


# -- server-side encryption, tags, traffic limit -----------------------------------------------------------


def test_sse_headers_are_stored_and_returned(bucket, bucket_name):
    kms = {"x-oss-server-side-encryption": "KMS", "x-oss-server-side-encryption-key-id": "key-1234"}
    r = bucket.put_object("sse/kms", b"secret", headers=kms)
    assert r.headers["x-oss-server-side-encryption"] == "KMS"
    assert r.headers["x-oss-server-side-encryption-key-id"] == "key-1234"
    head = bucket.head_object("sse/kms")
    assert head.headers["x-oss-server-side-encryption"] == "KMS"
    assert head.headers["x-oss-server-side-encryption-key-id"] == "key-1234"
    got = bucket.get_object("sse/kms")
    assert got.read() == b"secret" and got.headers["x-oss-server-side-encryption"] == "KMS"

    sm4 = {"x-oss-server-side-encryption": "KMS", "x-oss-server-side-data-encryption": "SM4"}
    bucket.put_object("sse/sm4", b"x", headers=sm4)
    assert bucket.head_object("sse/sm4").headers["x-oss-server-side-data-encryption"] == "SM4"

    init = bucket.init_multipart_upload("sse/multi", headers={"x-oss-server-side-encryption": "AES256"})
    assert init.headers["x-oss-server-side-encryption"] == "AES256"
    etag = bucket.upload_part("sse/multi", init.upload_id, 1, b"part").etag
    done = bucket.complete_multipart_upload("sse/multi", init.upload_id, [PartInfo(1, etag)])
    assert done.headers["x-oss-server-side-encryption"] == "AES256"
    assert bucket.head_object("sse/multi").headers["x-oss-server-side-encryption"] == "AES256"

    # A copy takes its encryption from the copy request, never from the source (COPY directive).
    bucket.copy_object(bucket_name, "sse/kms", "sse/copy-plain")
    assert "x-oss-server-side-encryption" not in bucket.head_object("sse/copy-plain").headers
    c = bucket.copy_object(bucket_name, "sse/kms", "sse/copy-sm4", headers={"x-oss-server-side-encryption": "SM4"})
    assert c.headers["x-oss-server-side-encryption"] == "SM4"
    assert bucket.head_object("sse/copy-sm4").headers["x-oss-server-side-encryption"] == "SM4"

    for headers, code in [
        ({"x-oss-server-side-encryption": "DES"}, "InvalidEncryptionAlgorithmError"),
        ({"x-oss-server-side-encryption": "AES256", "x-oss-server-side-encryption-key-id": "k"}, "InvalidArgument"),
        ({"x-oss-server-side-encryption": "KMS", "x-oss-server-side-data-encryption": "AES"}, "InvalidArgument"),
    ]:
        with pytest.raises(oss2.exceptions.ServerError) as e:
            bucket.put_object("sse/bad", b"x", headers=headers)
        assert (e.value.status, e.value.code) == (400, code)
    assert not bucket.object_exists("sse/bad")


def test_object_tags(bucket, bucket_name):
    r = bucket.put_object("tags/a", b"x", headers={"x-oss-tagging": "owner=ops&tier=cold%20data"})
    assert r.status == 200
    head = bucket.head_object("tags/a")
    assert head.headers["x-oss-tagging-count"] == "2"
    assert bucket.get_object_tagging("tags/a").tag_set.tagging_rule == {"owner": "ops", "tier": "cold data"}
    rule = TaggingRule()
    rule.add("only", "one")
    bucket.put_object_tagging("tags/a", Tagging(rule))
    assert bucket.get_object_tagging("tags/a").tag_set.tagging_rule == {"only": "one"}
    assert bucket.head_object("tags/a").headers["x-oss-tagging-count"] == "1"
    # Copies keep the source's tags, or take the request's with the Replace directive.
    bucket.copy_object(bucket_name, "tags/a", "tags/copy")
    assert bucket.get_object_tagging("tags/copy").tag_set.tagging_rule == {"only": "one"}
    bucket.copy_object(
        bucket_name, "tags/a", "tags/replaced", headers={"x-oss-tagging-directive": "Replace", "x-oss-tagging": "n=1"}
    )
    assert bucket.get_object_tagging("tags/replaced").tag_set.tagging_rule == {"n": "1"}
    # Multipart uploads carry the tags of their initiation.
    up = bucket.init_multipart_upload("tags/multi", headers={"x-oss-tagging": "m=p"}).upload_id
    bucket.complete_multipart_upload("tags/multi", up, [PartInfo(1, bucket.upload_part("tags/multi", up, 1, b"p").etag)])
    assert bucket.get_object_tagging("tags/multi").tag_set.tagging_rule == {"m": "p"}
    assert bucket.delete_object_tagging("tags/a").status == 204
    assert bucket.get_object_tagging("tags/a").tag_set.tagging_rule == {}
    assert "x-oss-tagging-count" not in bucket.head_object("tags/a").headers

    eleven = "&".join(f"k{i}=v" for i in range(11))
    for bad in [eleven, "a=b=c", "k=semi;colon", "k=1&k=2"]:
        with pytest.raises(oss2.exceptions.ServerError) as e:
            bucket.put_object("tags/bad", b"x", headers={"x-oss-tagging": bad})
        assert (e.value.status, e.value.code) == (400, "InvalidTag"), bad
    assert not bucket.object_exists("tags/bad")


def test_tags_per_version(bucket):
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig("Enabled"))
    v1 = bucket.put_object("tv", b"1", headers={"x-oss-tagging": "rev=1"}).versionid
    bucket.put_object("tv", b"2", headers={"x-oss-tagging": "rev=2"})
    assert bucket.get_object_tagging("tv", params={"versionId": v1}).tag_set.tagging_rule == {"rev": "1"}
    assert bucket.get_object_tagging("tv").tag_set.tagging_rule == {"rev": "2"}
    bucket.delete_object_tagging("tv", params={"versionId": v1})
    assert bucket.get_object_tagging("tv", params={"versionId": v1}).tag_set.tagging_rule == {}
    assert bucket.get_object_tagging("tv").tag_set.tagging_rule == {"rev": "2"}


def test_traffic_limit_is_validated(bucket):
    ok = {"x-oss-traffic-limit": "245760"}
    assert bucket.put_object("tl", b"x" * 1000, headers=ok).status == 200
    assert bucket.get_object("tl", headers={"x-oss-traffic-limit": "838860800"}).read() == b"x" * 1000
    for bad in ["1000", "838860801", "fast"]:
        with pytest.raises(oss2.exceptions.ServerError) as e:
            bucket.put_object("tl2", b"x", headers={"x-oss-traffic-limit": bad})
        assert (e.value.status, e.value.code) == (400, "InvalidArgument")
    assert not bucket.object_exists("tl2")


# -- metadata, metadata-only copies, conditional reads -----------------------------------------------------


def test_user_metadata_round_trips_on_every_upload_path(bucket, bucket_name, client):
    meta = {"x-oss-meta-mtime": "1700000000.123456789", "x-oss-meta-mode": "0640"}
    bucket.put_object("m/put", b"p", headers=meta)
    up = bucket.init_multipart_upload("m/multi", headers=meta).upload_id
    bucket.complete_multipart_upload("m/multi", up, [PartInfo(1, bucket.upload_part("m/multi", up, 1, b"m").etag)])
    bucket.copy_object(bucket_name, "m/put", "m/copy")
    bucket.copy_object(
        bucket_name, "m/put", "m/replace", headers={"x-oss-metadata-directive": "REPLACE", "x-oss-meta-mode": "0755"}
    )
    for key, expected in [("m/put", meta), ("m/multi", meta), ("m/copy", meta), ("m/replace", {"x-oss-meta-mode": "0755"})]:
        head = bucket.head_object(key)
        got = {k.lower(): v for k, v in head.headers.items() if k.lower().startswith("x-oss-meta-")}
        assert got == expected, key
    v2 = client.head_object(oss.HeadObjectRequest(bucket=bucket_name, key="m/multi"))
    assert v2.metadata == {"mtime": "1700000000.123456789", "mode": "0640"}


def test_metadata_only_change_copies_onto_itself_without_touching_data(bucket, bucket_name, server):
    data = os.urandom(300_000)
    put = bucket.put_object("self/f.bin", data, headers={"x-oss-meta-mode": "0644", "Content-Type": "text/old"})

    def blob_files():
        return sorted(p.name for p in (server.root / "data").rglob("*") if p.is_file())

    before = blob_files()
    server.control("POST", "stats/reset")
    bucket.update_object_meta("self/f.bin", {"x-oss-meta-mode": "0600", "Content-Type": "text/new"})
    head = bucket.head_object("self/f.bin")
    assert head.headers["x-oss-meta-mode"] == "0600" and head.content_type == "text/new"
    assert head.etag == put.etag and head.server_crc == crc64(data)
    assert bucket.get_object("self/f.bin").read() == data
    assert blob_files() == before, "no data file was written or removed"
    copy = server.op_stats("CopyObject")
    assert copy["requests"] == 1 and copy["body_bytes"] == 0


def http_date(offset_secs):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_secs)
    return email.utils.format_datetime(t, usegmt=True)


@pytest.mark.parametrize("byte_range", [None, (100, 199)])
def test_conditional_gets(bucket, byte_range):
    data = os.urandom(1000)
    etag = bucket.put_object("cond", data).etag
    expected = data if byte_range is None else data[100:200]
    status = 200 if byte_range is None else 206

    def get(**headers):
        return bucket.get_object("cond", byte_range=byte_range, headers=headers)

    for headers in [
        {"If-Match": f'"{etag}"'},
        {"If-None-Match": '"0000"'},
        {"If-Modified-Since": http_date(-3600)},
        {"If-Unmodified-Since": http_date(3600)},
        # RFC 7232 precedence: a matching If-Match wins over a failing If-Unmodified-Since.
        {"If-Match": f'"{etag}"', "If-Unmodified-Since": http_date(-3600)},
    ]:
        got = get(**headers)
        assert got.status == status and got.read() == expected, headers
        # The CRC header is the whole object's, on a range too.
        assert got.server_crc == crc64(data)
    for headers in [{"If-Match": '"0000"'}, {"If-Unmodified-Since": http_date(-3600)}]:
        with pytest.raises(oss2.exceptions.PreconditionFailed):
            get(**headers)
    for headers in [
        {"If-None-Match": f'"{etag}"'},
        {"If-Modified-Since": http_date(3600)},
        # A non-matching If-None-Match wins over a "not modified" If-Modified-Since.
    ]:
        with pytest.raises(oss2.exceptions.NotModified):
            get(**headers)
    got = get(**{"If-None-Match": '"0000"', "If-Modified-Since": http_date(3600)})
    assert got.status == status


# -- ListBuckets -------------------------------------------------------------------------------------------


def test_list_buckets_honours_prefix_marker_and_max_keys(server, bucket_name, client):
    names = [f"lb-{bucket_name[2:12]}-{i}" for i in range(5)]
    service = oss2.Service(oss2_auth("v4"), server.endpoint, region="cn-hangzhou")
    for n in names:
        oss2.Bucket(oss2_auth("v4"), server.endpoint, n, region="cn-hangzhou").create_bucket()
    prefix = names[0][:-1]
    page = service.list_buckets(prefix=prefix, max_keys=2)
    assert [b.name for b in page.buckets] == names[:2] and page.is_truncated and page.next_marker == names[1]
    page = service.list_buckets(prefix=prefix, marker=page.next_marker, max_keys=2)
    assert [b.name for b in page.buckets] == names[2:4]
    assert [b.name for b in oss2.BucketIterator(service, prefix=prefix, max_keys=2)] == names
    page = service.list_buckets(prefix=prefix, marker=names[3])
    assert [b.name for b in page.buckets] == names[4:] and not page.is_truncated
    listed = []
    for p in client.list_buckets_paginator(limit=2).iter_page(oss.ListBucketsRequest(prefix=prefix)):
        listed += [b.name for b in p.buckets]
    assert listed == names
