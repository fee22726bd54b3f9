"""Everything Alibaba's official SDK (oss2) sees in a bucket: every object's size and SHA-256, and the
unfinished multipart uploads. Used by tests/reliability.rs to check convergence through a client that is
not ours:

    OSS_ACCESS_KEY_ID=… OSS_ACCESS_KEY_SECRET=… python oss_tree.py ENDPOINT BUCKET

prints one JSON object: {"objects": {key: {"size": n, "sha256": hex}}, "uploads": [{"key", "upload_id"}]}.

Objects are read with `enable_crc=True`, so oss2 checks each body against the CRC-64 the server claims; a
mismatch is an exception (exit code 1), never a silently wrong hash.
"""

import hashlib
import json
import os
import sys

import oss2


def main(endpoint, bucket_name):
    auth = oss2.AuthV4(os.environ["OSS_ACCESS_KEY_ID"], os.environ["OSS_ACCESS_KEY_SECRET"])
    bucket = oss2.Bucket(auth, endpoint, bucket_name, region="cn-hangzhou", enable_crc=True)
    objects = {}
    for info in oss2.ObjectIteratorV2(bucket, max_keys=1000):
        digest = hashlib.sha256()
        size = 0
        stream = bucket.get_object(info.key)
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
        objects[info.key] = {"size": size, "sha256": digest.hexdigest()}
    uploads = [{"key": u.key, "upload_id": u.upload_id} for u in oss2.MultipartUploadIterator(bucket)]
    json.dump({"objects": objects, "uploads": uploads}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
