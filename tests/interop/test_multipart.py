"""Multipart uploads: the full cycle, part overwrite, abort, ListParts / ListMultipartUploads pagination,
UploadPartCopy, and CompleteMultipartUpload's validation, with oss2 (V1 and V4) and alibabacloud-oss-v2."""

import hashlib
import os

import alibabacloud_oss_v2 as oss
import oss2
import pytest
from oss2.models import PartInfo
from oss2.utils import Crc64

MIN_PART = 102_400


def crc64(data):
    c = Crc64()
    c.update(data)
    return c.crc


def multipart_etag(parts):
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest().upper()
    return f"{digest}-{len(parts)}"


def upload_parts(bucket, key, upload_id, datas, start=1):
    infos = []
    for n, d in enumerate(datas, start):
        r = bucket.upload_part(key, upload_id, n, d)
        assert r.etag == hashlib.md5(d).hexdigest().upper()
        assert r.crc == crc64(d)
        infos.append(PartInfo(n, r.etag, size=len(d), part_crc=r.crc))
    return infos


def test_full_cycle(bucket):
    key = "mp/big file+1.bin"
    datas = [os.urandom(MIN_PART + 5), os.urandom(MIN_PART * 2), os.urandom(777)]
    init = bucket.init_multipart_upload(key, headers={"Content-Type": "application/x-mp", "x-oss-meta-m": "1"})
    upload_id = init.upload_id
    infos = upload_parts(bucket, key, upload_id, datas)

    listed = bucket.list_parts(key, upload_id)
    assert [(p.part_number, p.size, p.etag) for p in listed.parts] == [(i.part_number, i.size, i.etag) for i in infos]
    assert not listed.is_truncated
    uploads = [u for u in oss2.MultipartUploadIterator(bucket, prefix="mp/")]
    assert [(u.key, u.upload_id) for u in uploads] == [(key, upload_id)]

    # enable_crc: oss2 combines the part CRCs and compares them with the server's answer.
    result = bucket.complete_multipart_upload(key, upload_id, infos)
    whole = b"".join(datas)
    assert result.crc == crc64(whole)
    assert result.etag == multipart_etag(datas)

    got = bucket.get_object(key)
    assert got.read() == whole
    assert got.headers["x-oss-object-type"] == "Multipart"
    assert got.content_type == "application/x-mp"
    assert got.headers["x-oss-meta-m"] == "1"
    assert bucket.get_object(key, byte_range=(MIN_PART, MIN_PART + 9)).read() == whole[MIN_PART:MIN_PART + 10]
    assert list(oss2.MultipartUploadIterator(bucket, prefix="mp/")) == []
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.complete_multipart_upload(key, upload_id, infos)


def test_part_overwrite_and_pagination(bucket):
    key = "mp/overwrite"
    upload_id = bucket.init_multipart_upload(key).upload_id
    upload_parts(bucket, key, upload_id, [b"a" * 10 for _ in range(5)])
    new = os.urandom(MIN_PART)
    upload_parts(bucket, key, upload_id, [new], start=2)
    parts = list(oss2.PartIterator(bucket, key, upload_id, max_parts=2))
    assert [p.part_number for p in parts] == [1, 2, 3, 4, 5]
    assert parts[1].size == MIN_PART and parts[1].etag == hashlib.md5(new).hexdigest().upper()
    # oss2 AuthV4 cannot sign integer query values (it iterates over them), so pass strings.
    page = bucket.list_parts(key, upload_id, marker="2", max_parts="2")
    assert [p.part_number for p in page.parts] == [3, 4]
    assert page.is_truncated and page.next_marker == "4"
    bucket.abort_multipart_upload(key, upload_id)


def test_abort(bucket):
    key = "mp/aborted"
    upload_id = bucket.init_multipart_upload(key).upload_id
    upload_parts(bucket, key, upload_id, [b"x" * 1000])
    assert bucket.abort_multipart_upload(key, upload_id).status == 204
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.list_parts(key, upload_id)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.abort_multipart_upload(key, upload_id)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.upload_part(key, upload_id, 1, b"late")
    assert not bucket.object_exists(key)


def test_upload_id_is_bound_to_its_key(bucket):
    upload_id = bucket.init_multipart_upload("mp/one").upload_id
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.upload_part("mp/other", upload_id, 1, b"x")
    bucket.abort_multipart_upload("mp/one", upload_id)


def test_complete_validation(bucket):
    key = "mp/validate"
    upload_id = bucket.init_multipart_upload(key).upload_id
    small = upload_parts(bucket, key, upload_id, [b"s" * 100, b"t" * 100])
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.complete_multipart_upload(key, upload_id, small)
    assert e.value.code == "EntityTooSmall" and e.value.status == 400

    bad_etag = [PartInfo(1, "0" * 32), small[1]]
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.complete_multipart_upload(key, upload_id, bad_etag)
    assert e.value.code == "InvalidPart"

    missing = [PartInfo(7, small[0].etag)]
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.complete_multipart_upload(key, upload_id, missing)
    assert e.value.code == "InvalidPart"

    # oss2 sorts parts itself; send a descending list by hand.
    body = (
        "<CompleteMultipartUpload>"
        f"<Part><PartNumber>2</PartNumber><ETag>\"{small[1].etag}\"</ETag></Part>"
        f"<Part><PartNumber>1</PartNumber><ETag>\"{small[0].etag}\"</ETag></Part>"
        "</CompleteMultipartUpload>"
    )
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket._do("POST", bucket.bucket_name, key, params={"uploadId": upload_id}, data=body)
    assert e.value.code == "InvalidPartOrder"

    for garbage in ["not xml", "<CompleteMultipartUpload></CompleteMultipartUpload>",
                    "<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>"]:
        with pytest.raises(oss2.exceptions.ServerError) as e:
            bucket._do("POST", bucket.bucket_name, key, params={"uploadId": upload_id}, data=garbage)
        assert e.value.code == "MalformedXML", garbage
    # The upload is still there after every refusal.
    assert len(bucket.list_parts(key, upload_id).parts) == 2
    bucket.abort_multipart_upload(key, upload_id)


def test_complete_tolerates_etag_spellings(bucket):
    key = "mp/spellings"
    upload_id = bucket.init_multipart_upload(key).upload_id
    datas = [os.urandom(MIN_PART), os.urandom(MIN_PART), os.urandom(10)]
    infos = upload_parts(bucket, key, upload_id, datas)
    body = (
        "<CompleteMultipartUpload>"
        f"<Part><PartNumber>1</PartNumber><ETag>&quot;{infos[0].etag}&quot;</ETag></Part>"
        f"<Part><PartNumber>2</PartNumber><ETag>&#34;{infos[1].etag.lower()}&#34;</ETag></Part>"
        f"<Part><PartNumber>3</PartNumber><ETag>{infos[2].etag}</ETag></Part>"
        "</CompleteMultipartUpload>"
    )
    resp = bucket._do("POST", bucket.bucket_name, key, params={"uploadId": upload_id}, data=body)
    assert resp.status == 200
    assert bucket.get_object(key).read() == b"".join(datas)


def test_complete_with_a_subset_of_parts(bucket):
    # S3 semantics: parts left out of Complete are discarded (UNCONFIRMED on real OSS).
    key = "mp/subset"
    upload_id = bucket.init_multipart_upload(key).upload_id
    datas = [os.urandom(MIN_PART), os.urandom(MIN_PART), os.urandom(50)]
    infos = upload_parts(bucket, key, upload_id, datas)
    bucket.complete_multipart_upload(key, upload_id, [infos[0], infos[2]])
    assert bucket.get_object(key).read() == datas[0] + datas[2]


def test_complete_all_and_forbid_overwrite(bucket):
    key = "mp/complete-all"
    upload_id = bucket.init_multipart_upload(key).upload_id
    datas = [os.urandom(MIN_PART), os.urandom(3)]
    upload_parts(bucket, key, upload_id, datas)
    result = bucket.complete_multipart_upload(key, upload_id, None, headers={"x-oss-complete-all": "yes"})
    assert result.status == 200
    assert result.crc == crc64(b"".join(datas))
    assert bucket.get_object(key).read() == b"".join(datas)

    second = bucket.init_multipart_upload(key).upload_id
    upload_parts(bucket, key, second, [b"z"])
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.complete_multipart_upload(key, second, None,
                                         headers={"x-oss-complete-all": "yes", "x-oss-forbid-overwrite": "true"})
    assert e.value.status == 409 and e.value.code == "FileAlreadyExists"
    assert bucket.get_object(key).read() == b"".join(datas)
    bucket.abort_multipart_upload(key, second)


def test_upload_part_copy(bucket, bucket_name):
    src = os.urandom(MIN_PART * 3)
    bucket.put_object("mp/src", src)
    key = "mp/assembled"
    upload_id = bucket.init_multipart_upload(key).upload_id
    r1 = bucket.upload_part_copy(bucket_name, "mp/src", (MIN_PART, 2 * MIN_PART - 1), key, upload_id, 1)
    r2 = bucket.upload_part_copy(bucket_name, "mp/src", (0, MIN_PART - 1), key, upload_id, 2)
    r3 = bucket.upload_part(key, upload_id, 3, b"tail")
    assert r1.etag == hashlib.md5(src[MIN_PART:2 * MIN_PART]).hexdigest().upper()
    # The source may change or vanish: the parts keep their bytes.
    bucket.delete_object("mp/src")
    bucket.complete_multipart_upload(key, upload_id, [PartInfo(1, r1.etag), PartInfo(2, r2.etag), PartInfo(3, r3.etag)])
    assert bucket.get_object(key).read() == src[MIN_PART:2 * MIN_PART] + src[:MIN_PART] + b"tail"


def test_list_multipart_uploads(bucket):
    ids = {}
    for key in ["u/a", "u/a", "u/b", "u/dir/c", "v/d"]:
        ids.setdefault(key, []).append(bucket.init_multipart_upload(key).upload_id)
    all_uploads = [(u.key, u.upload_id) for u in oss2.MultipartUploadIterator(bucket, prefix="u/", max_uploads=1)]
    expected = [("u/a", i) for i in ids["u/a"]] + [("u/b", ids["u/b"][0]), ("u/dir/c", ids["u/dir/c"][0])]
    assert all_uploads == expected
    result = bucket.list_multipart_uploads(prefix="u/", delimiter="/")
    assert [u.key for u in result.upload_list] == ["u/a", "u/a", "u/b"]
    assert result.prefix_list == ["u/dir/"]
    page = bucket.list_multipart_uploads(prefix="u/", max_uploads=1)
    assert page.is_truncated and page.next_key_marker == "u/a" and page.next_upload_id_marker == ids["u/a"][0]
    rest = bucket.list_multipart_uploads(prefix="u/", key_marker="u/a", upload_id_marker=ids["u/a"][0])
    assert [u.upload_id for u in rest.upload_list][:1] == [ids["u/a"][1]]
    initiated = result.upload_list[0].initiation_date
    assert initiated > 0
    for key, uploads in ids.items():
        for upload_id in uploads:
            bucket.abort_multipart_upload(key, upload_id)
    assert list(oss2.MultipartUploadIterator(bucket)) == []


def test_v2_multipart(client, bucket_name):
    key = "v2mp/with space & plus+.bin"
    datas = [os.urandom(MIN_PART), os.urandom(MIN_PART + 1), os.urandom(99)]
    init = client.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(bucket=bucket_name, key=key))
    assert init.key == key
    parts = []
    for n, d in enumerate(datas, 1):
        r = client.upload_part(oss.UploadPartRequest(bucket=bucket_name, key=key, upload_id=init.upload_id,
                                                     part_number=n, body=d))
        assert int(r.hash_crc64) == crc64(d)
        parts.append(oss.UploadPart(part_number=n, etag=r.etag))
    listed = []
    for page in client.list_parts_paginator().iter_page(
            oss.ListPartsRequest(bucket=bucket_name, key=key, upload_id=init.upload_id, max_parts=2)):
        listed += [(p.part_number, p.size, int(p.hash_crc64)) for p in page.parts]
    assert listed == [(n, len(d), crc64(d)) for n, d in enumerate(datas, 1)]
    uploads = []
    for page in client.list_multipart_uploads_paginator().iter_page(
            oss.ListMultipartUploadsRequest(bucket=bucket_name, max_uploads=1)):
        uploads += [(u.key, u.upload_id) for u in page.uploads or []]
    assert uploads == [(key, init.upload_id)]
    done = client.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
        bucket=bucket_name, key=key, upload_id=init.upload_id,
        complete_multipart_upload=oss.CompleteMultipartUpload(parts=parts)))
    assert done.key == key
    assert done.etag == f'"{multipart_etag(datas)}"'
    assert int(done.hash_crc64) == crc64(b"".join(datas))
    assert client.get_object(oss.GetObjectRequest(bucket=bucket_name, key=key)).body.read() == b"".join(datas)

    aborted = client.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(bucket=bucket_name, key="v2mp/x"))
    client.abort_multipart_upload(oss.AbortMultipartUploadRequest(bucket=bucket_name, key="v2mp/x",
                                                                  upload_id=aborted.upload_id))
    with pytest.raises(oss.exceptions.OperationError) as e:
        client.abort_multipart_upload(oss.AbortMultipartUploadRequest(bucket=bucket_name, key="v2mp/x",
                                                                      upload_id=aborted.upload_id))
    assert e.value.unwrap().code == "NoSuchUpload"
