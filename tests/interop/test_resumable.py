"""Resumable uploads interrupted by the server's fault injection and resumed: oss2.resumable_upload (V1 and
V4) and alibabacloud-oss-v2's uploader with a checkpoint. The control API's stats show exactly what the
resume cost (how many UploadPart requests and body bytes)."""

import os
import time

import alibabacloud_oss_v2 as oss
import oss2
import pytest
import requests
from oss2.utils import Crc64

from conftest import v2_client

PART = 102_400
PARTS = 12
TAIL = 4321


def crc64(data):
    c = Crc64()
    c.update(data)
    return c.crc


@pytest.fixture
def big_file(tmp_path):
    data = os.urandom(PART * PARTS + TAIL)  # 13 parts, the last one short
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def oss2_resumable(bucket, key, path, store_dir, threads=1):
    return oss2.resumable_upload(
        bucket, key, str(path),
        store=oss2.ResumableStore(root=str(store_dir)),
        multipart_threshold=PART, part_size=PART, num_threads=threads,
    )


def test_oss2_resumable_upload_after_a_server_error(bucket, server, big_file, tmp_path):
    path, data = big_file
    key = "resume/error.bin"
    server.script({"op": "UploadPart", "part_number": 5, "error": {"status": 500, "code": "InternalError"}})
    with pytest.raises(oss2.exceptions.ServerError) as e:
        oss2_resumable(bucket, key, path, tmp_path / "store")
    assert e.value.status == 500 and e.value.code == "InternalError"
    first = server.op_stats("UploadPart")
    assert first["requests"] == 5
    assert first["statuses"] == {"200": 4, "500": 1}
    assert not bucket.object_exists(key)

    server.control("POST", "stats/reset")
    oss2_resumable(bucket, key, path, tmp_path / "store")
    again = server.stats()["operations"]
    # Parts 1-4 were reused from ListParts: only 5..13 were sent again, and no new upload was started.
    assert again["UploadPart"]["requests"] == 13 - 4
    assert again["UploadPart"]["body_bytes"] == len(data) - 4 * PART
    assert "InitiateMultipartUpload" not in again
    assert again["ListParts"]["requests"] >= 1
    got = bucket.get_object(key)
    assert got.read() == data
    assert got.server_crc == crc64(data)
    assert list(oss2.MultipartUploadIterator(bucket)) == []


def test_oss2_resumable_upload_after_a_connection_reset(bucket, server, big_file, tmp_path):
    path, data = big_file
    key = "resume/reset.bin"
    server.script({"op": "UploadPart", "part_number": 3, "reset": {"after_bytes": 50_000}})
    with pytest.raises(oss2.exceptions.RequestError):
        oss2_resumable(bucket, key, path, tmp_path / "store")
    first = server.stats()
    # Exactly two whole parts and 50,000 bytes of the third reached the server.
    assert first["operations"]["UploadPart"]["body_bytes"] == 2 * PART + 50_000
    assert first["operations"]["UploadPart"]["statuses"] == {"200": 2, "reset": 1}
    assert first["faults"]["resets"] == 1

    server.control("POST", "stats/reset")
    oss2_resumable(bucket, key, path, tmp_path / "store")
    again = server.op_stats("UploadPart")
    assert again["requests"] == 13 - 2
    assert bucket.get_object(key).read() == data


def test_oss2_resumable_upload_with_threads_and_random_faults(bucket, server, big_file, tmp_path):
    path, data = big_file
    key = "resume/threads.bin"
    server.control("PUT", "faults", {"error_rate": 0.3, "seed": 11})
    attempts = 0
    while True:
        attempts += 1
        try:
            oss2_resumable(bucket, key, path, tmp_path / "store", threads=3)
            break
        except (oss2.exceptions.ServerError, oss2.exceptions.RequestError):
            assert attempts < 50, "a 30% error rate should not need 50 runs"
    stats = server.stats()
    injected = stats["faults"]["errors"]
    answered_5xx = sum(n for op in stats["operations"].values() for s, n in op["statuses"].items() if s.startswith("5"))
    assert injected == answered_5xx > 0
    server.control("PUT", "faults", {"error_rate": 0})
    assert bucket.get_object(key).read() == data


def test_v2_uploader_checkpoint_resume(server, bucket_name, big_file, tmp_path):
    path, data = big_file
    key = "resume/v2 uploader.bin"
    checkpoint_dir = tmp_path / "cp"
    checkpoint_dir.mkdir()
    client = v2_client(server)
    uploader = client.uploader(part_size=PART, parallel_num=1, enable_checkpoint=True,
                               checkpoint_dir=str(checkpoint_dir) + "/")
    # The SDK retries 5xx three times: fail part 4 on every attempt.
    server.script({"op": "UploadPart", "part_number": 4, "times": 3,
                   "error": {"status": 503, "code": "ServiceUnavailable"}})
    with pytest.raises(Exception):
        uploader.upload_file(oss.PutObjectRequest(bucket=bucket_name, key=key), filepath=str(path))
    assert server.op_stats("UploadPart")["statuses"] == {"200": 3, "503": 3}
    assert os.listdir(checkpoint_dir), "the uploader should have left a checkpoint"

    server.control("POST", "stats/reset")
    result = uploader.upload_file(oss.PutObjectRequest(bucket=bucket_name, key=key), filepath=str(path))
    # The SDK combined the CRCs of the listed parts and the new ones and checked them against Complete.
    assert int(result.hash_crc64) == crc64(data)
    again = server.stats()["operations"]
    assert again["UploadPart"]["requests"] == 13 - 3
    assert again["UploadPart"]["body_bytes"] == len(data) - 3 * PART
    assert "InitiateMultipartUpload" not in again
    assert not os.listdir(checkpoint_dir), "the checkpoint is removed after success"
    got = client.get_object(oss.GetObjectRequest(bucket=bucket_name, key=key))
    assert got.body.read() == data


def test_v2_uploader_rides_out_resets_and_errors(server, bucket_name, big_file):
    path, data = big_file
    key = "resume/v2 faults.bin"
    server.control("PUT", "faults", {"error_rate": 0.15, "reset_rate": 0.15, "reset_after": 30_000, "seed": 5})
    client = v2_client(server, retry_max_attempts=10)
    uploader = client.uploader(part_size=PART, parallel_num=3)
    result = uploader.upload_file(oss.PutObjectRequest(bucket=bucket_name, key=key), filepath=str(path))
    assert int(result.hash_crc64) == crc64(data)
    stats = server.stats()
    assert stats["faults"]["errors"] + stats["faults"]["resets"] > 0
    server.control("PUT", "faults", {"error_rate": 0, "reset_rate": 0})
    assert client.get_object(oss.GetObjectRequest(bucket=bucket_name, key=key)).body.read() == data


def test_outage_drop_mode(bucket, server):
    bucket.put_object("outage", b"x")
    server.control("PUT", "down", {"mode": "drop"})
    with pytest.raises(oss2.exceptions.RequestError):
        bucket.get_object("outage")
    server.control("PUT", "down", {"mode": "up"})
    assert bucket.get_object("outage").read() == b"x"
    assert server.stats()["faults"]["down_drops"] == 1


def test_outage_refuse_mode(bucket, server):
    bucket.put_object("outage", b"x")
    server.control("PUT", "down", {"mode": "refuse", "duration_ms": 5000})
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{server.endpoint}/", timeout=5)
    # The server listens again on the same port once the outage ends.
    deadline = time.monotonic() + 60
    while True:
        try:
            server.control("GET", "health")
            break
        except OSError:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.1)
    assert bucket.get_object("outage").read() == b"x"
    assert server.stats()["faults"]["down_connections"] == 0
