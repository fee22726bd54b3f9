"""Write objects with Alibaba's official SDK (oss2), for tests/restore.rs: the objects a restore reads back
are planted by a client that is not ours, including keys our own client would refuse to write.

    OSS_ACCESS_KEY_ID=… OSS_ACCESS_KEY_SECRET=… python oss_put.py ENDPOINT BUCKET < OBJECTS.json

OBJECTS.json is a list of {"key", "file": PATH | "text": STR, "meta": {NAME: VALUE} (sent as x-oss-meta-NAME),
"storage_class": CLASS}. Prints {"KEY": ETAG, …}.
"""

import json
import os
import sys

import oss2

REGION = "cn-hangzhou"


def main(endpoint, bucket_name):
    ak, sk = os.environ["OSS_ACCESS_KEY_ID"], os.environ["OSS_ACCESS_KEY_SECRET"]
    bucket = oss2.Bucket(oss2.AuthV4(ak, sk), endpoint, bucket_name, region=REGION, enable_crc=True)
    etags = {}
    for obj in json.load(sys.stdin):
        headers = {f"x-oss-meta-{k}": v for k, v in obj.get("meta", {}).items()}
        if "storage_class" in obj:
            headers["x-oss-storage-class"] = obj["storage_class"]
        if "file" in obj:
            with open(obj["file"], "rb") as f:
                data = f.read()
        else:
            data = obj.get("text", "").encode()
        etags[obj["key"]] = bucket.put_object(obj["key"], data, headers=headers).etag
    print(json.dumps(etags))


if __name__ == "__main__":
    main(*sys.argv[1:3])
