"""What Alibaba's official SDK (oss2) sees of one object and of the bucket's unfinished uploads.

Used by tests/cp.rs to check what `ossmirror cp` produced, through a client that is not ours:

    OSS_ACCESS_KEY_ID=… OSS_ACCESS_KEY_SECRET=… python oss_inspect.py ENDPOINT v1|v4 BUCKET KEY

prints one JSON object:

    {"object": null | {"size", "sha256", "server_crc", "content_type", "etag", "meta", "storage_class", "acl",
                       "sse", "sse_key_id", "tags", "url"},
     "uploads": [{"key", "upload_id"}, …]}

The object is read with `enable_crc=True`, so oss2 itself checks the body against the CRC-64 the server
claims; a mismatch is an exception (exit code 1), never a silently wrong hash.
"""

import hashlib
import json
import os
import sys

import oss2

REGION = "cn-hangzhou"


def main(endpoint, sig, bucket_name, key):
    ak, sk = os.environ["OSS_ACCESS_KEY_ID"], os.environ["OSS_ACCESS_KEY_SECRET"]
    auth = oss2.Auth(ak, sk) if sig == "v1" else oss2.AuthV4(ak, sk)
    bucket = oss2.Bucket(auth, endpoint, bucket_name, region=REGION, enable_crc=True)

    obj = None
    if bucket.object_exists(key):
        head = bucket.head_object(key)
        digest = hashlib.sha256()
        size = 0
        stream = bucket.get_object(key)
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
        obj = {
            "size": size,
            "sha256": digest.hexdigest(),
            "server_crc": str(stream.server_crc),
            "content_type": head.content_type,
            "etag": head.etag,
            "meta": {k[len("x-oss-meta-"):]: v for k, v in head.headers.items() if k.lower().startswith("x-oss-meta-")},
            "storage_class": head.headers.get("x-oss-storage-class"),
            "acl": bucket.get_object_acl(key).acl,
            "sse": head.headers.get("x-oss-server-side-encryption"),
            "sse_key_id": head.headers.get("x-oss-server-side-encryption-key-id"),
            "tags": dict(bucket.get_object_tagging(key).tag_set.tagging_rule),
            # A presigned URL, so a test can also fetch the bytes with a plain HTTP GET.
            "url": bucket.sign_url("GET", key, 600),
        }
    uploads = [{"key": u.key, "upload_id": u.upload_id} for u in oss2.MultipartUploadIterator(bucket)]
    json.dump({"object": obj, "uploads": uploads}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
