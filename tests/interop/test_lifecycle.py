"""Bucket lifecycle through the official SDKs: the configuration round trip (oss2 V1/V4, alibabacloud-oss-v2),
OSS's validation errors, and the rules enforced by `serve` once its lifecycle clock is moved forward through
the control API (an incomplete upload aborted, old versions expired, tagged objects expired, lone delete
markers removed).
"""

import datetime
import os

import alibabacloud_oss_v2 as oss
import oss2
import pytest
from oss2.models import (
    AbortMultipartUpload,
    BucketLifecycle,
    BucketVersioningConfig,
    LifecycleExpiration,
    LifecycleRule,
    NoncurrentVersionExpiration,
    Tagging,
    TaggingRule,
)

DAY = 86_400


def tagging(**tags):
    rule = TaggingRule()
    for k, v in tags.items():
        rule.add(k, v)
    return Tagging(rule)


def run_lifecycle(server, advance_days):
    """Move the server's lifecycle clock forward and apply the rules; returns what the pass did."""
    return server.control("POST", "lifecycle/run", {"advance_secs": advance_days * DAY})["report"]


def test_lifecycle_round_trip(bucket):
    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        bucket.get_bucket_lifecycle()
    rules = [
        LifecycleRule("abort-uploads", "", status=LifecycleRule.ENABLED, abort_multipart_upload=AbortMultipartUpload(days=7)),
        LifecycleRule(
            "old-versions",
            "backup/",
            status=LifecycleRule.ENABLED,
            noncurrent_version_expiration=NoncurrentVersionExpiration(30),
        ),
        LifecycleRule(
            "scratch",
            "tmp/",
            status=LifecycleRule.DISABLED,
            expiration=LifecycleExpiration(created_before_date=datetime.date(2024, 1, 1)),
            tagging=tagging(kind="scratch"),
        ),
        LifecycleRule("markers", "gone/", expiration=LifecycleExpiration(expired_detete_marker=True)),
        LifecycleRule("logs", "logs/", expiration=LifecycleExpiration(days=90)),
    ]
    assert bucket.put_bucket_lifecycle(BucketLifecycle(rules)).status == 200
    got = {r.id: r for r in bucket.get_bucket_lifecycle().rules}
    assert sorted(got) == sorted(r.id for r in rules)
    assert got["abort-uploads"].abort_multipart_upload.days == 7 and got["abort-uploads"].prefix == ""
    assert got["old-versions"].noncurrent_version_expiration.noncurrent_days == 30
    assert got["scratch"].status == "Disabled"
    assert got["scratch"].expiration.created_before_date == datetime.date(2024, 1, 1)
    assert got["scratch"].tagging.tag_set.tagging_rule == {"kind": "scratch"}
    assert got["markers"].expiration.expired_detete_marker is True
    assert got["logs"].expiration.days == 90
    assert bucket.delete_bucket_lifecycle().status == 204
    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        bucket.get_bucket_lifecycle()


def test_lifecycle_validation_errors(bucket, client, bucket_name):
    def refused(rules):
        with pytest.raises(oss2.exceptions.ServerError) as e:
            bucket.put_bucket_lifecycle(BucketLifecycle(rules))
        return e.value

    e = refused([LifecycleRule(f"r{i}", f"p{i:04}/", expiration=LifecycleExpiration(days=1)) for i in range(1001)])
    assert (e.status, e.code, e.ec) == (400, "InvalidArgument", "0014-00000014")
    e = refused(
        [
            LifecycleRule("a", "logs/", expiration=LifecycleExpiration(days=30)),
            LifecycleRule("b", "logs/", abort_multipart_upload=AbortMultipartUpload(days=3)),
        ]
    )
    assert (e.code, e.ec) == ("InvalidArgument", "0014-00000085")
    e = refused(
        [
            LifecycleRule("a", "logs/", expiration=LifecycleExpiration(days=30)),
            LifecycleRule("b", "logs/app/", expiration=LifecycleExpiration(days=10)),
        ]
    )
    assert (e.code, e.ec) == ("InvalidArgument", "0014-00000084")
    e = refused([LifecycleRule("a", "x/", expiration=LifecycleExpiration(days=0))])
    assert e.code == "InvalidArgument"
    e = refused([LifecycleRule("a", "x/")])
    assert e.code == "MalformedXML"
    # Both Days and CreatedBeforeDate: oss2 never sends both, alibabacloud-oss-v2 does.
    with pytest.raises(oss.exceptions.OperationError) as e:
        client.put_bucket_lifecycle(
            oss.PutBucketLifecycleRequest(
                bucket=bucket_name,
                lifecycle_configuration=oss.LifecycleConfiguration(
                    rules=[
                        oss.LifecycleRule(
                            id="both",
                            prefix="x/",
                            status="Enabled",
                            expiration=oss.LifecycleRuleExpiration(
                                days=3, created_before_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
                            ),
                        )
                    ]
                ),
            )
        )
    se = e.value.unwrap()
    assert (se.status_code, se.code, se.ec) == (400, "InvalidArgument", "0014-00000061")
    # Storage-class transitions are not something this server can do: said so, not ignored.
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.put_bucket_lifecycle(
            BucketLifecycle(
                [LifecycleRule("t", "x/", storage_transitions=[oss2.models.StorageTransition(days=30, storage_class="IA")])]
            )
        )
    assert e.value.status == 501
    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        bucket.get_bucket_lifecycle()


def test_lifecycle_v2_round_trip(client, bucket_name):
    client.put_bucket_lifecycle(
        oss.PutBucketLifecycleRequest(
            bucket=bucket_name,
            lifecycle_configuration=oss.LifecycleConfiguration(
                rules=[
                    oss.LifecycleRule(
                        id="abort",
                        prefix="",
                        status="Enabled",
                        abort_multipart_upload=oss.LifecycleRuleAbortMultipartUpload(days=7),
                        noncurrent_version_expiration=oss.NoncurrentVersionExpiration(noncurrent_days=30),
                    )
                ]
            ),
        )
    )
    got = client.get_bucket_lifecycle(oss.GetBucketLifecycleRequest(bucket=bucket_name))
    rule = got.lifecycle_configuration.rules[0]
    assert (rule.id, rule.status, rule.abort_multipart_upload.days) == ("abort", "Enabled", 7)
    assert rule.noncurrent_version_expiration.noncurrent_days == 30
    client.delete_bucket_lifecycle(oss.DeleteBucketLifecycleRequest(bucket=bucket_name))
    with pytest.raises(oss.exceptions.OperationError) as e:
        client.get_bucket_lifecycle(oss.GetBucketLifecycleRequest(bucket=bucket_name))
    assert e.value.unwrap().code == "NoSuchLifecycle"


def test_rules_are_enforced_when_the_clock_moves(bucket, server):
    bucket.put_bucket_versioning(BucketVersioningConfig("Enabled"))
    rules = [
        LifecycleRule(
            "backup",
            "",
            abort_multipart_upload=AbortMultipartUpload(days=2),
            noncurrent_version_expiration=NoncurrentVersionExpiration(3),
        ),
        LifecycleRule("scratch", "tmp/", expiration=LifecycleExpiration(days=1), tagging=tagging(kind="scratch")),
        LifecycleRule("markers", "gone/", expiration=LifecycleExpiration(expired_detete_marker=True)),
    ]
    bucket.put_bucket_lifecycle(BucketLifecycle(rules))

    # An incomplete upload with one part, a file with an old and a current version, scratch files with and
    # without the tag, and a deleted file.
    upload = bucket.init_multipart_upload("big.bin").upload_id
    bucket.upload_part("big.bin", upload, 1, os.urandom(200_000))
    old = bucket.put_object("doc.txt", b"old").versionid
    current = bucket.put_object("doc.txt", b"current").versionid
    bucket.put_object("tmp/a", b"scratch", headers={"x-oss-tagging": "kind=scratch"})
    bucket.put_object("tmp/b", b"keep me")
    bucket.put_object("gone/x", b"x")
    bucket.delete_object("gone/x")

    # Nothing is due yet.
    report = run_lifecycle(server, 0)
    assert (report["aborted_uploads"], report["expired_objects"], report["expired_versions"]) == (0, 0, 0)
    assert [u.upload_id for u in bucket.list_multipart_uploads().upload_list] == [upload]

    # Two days on: the tagged scratch file expired behind a delete marker; the untagged one stays.
    report = run_lifecycle(server, 2)
    assert report["expired_objects"] == 1
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object("tmp/a")
    assert bucket.get_object("tmp/b").read() == b"keep me"

    # Three days: the incomplete upload is aborted (2 days after its day).
    report = run_lifecycle(server, 1)
    assert report["aborted_uploads"] == 1
    assert bucket.list_multipart_uploads().upload_list == []
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.upload_part("big.bin", upload, 2, b"late")

    # Four days: the noncurrent versions are 3 days old; the current ones stay. gone/x's delete marker is then
    # the only thing left of its key, and is removed too.
    report = run_lifecycle(server, 1)
    assert report["expired_versions"] == 2 and report["removed_delete_markers"] == 1
    listed = bucket.list_object_versions()
    assert [(v.key, v.versionid) for v in listed.versions if v.key == "doc.txt"] == [("doc.txt", current)]
    with pytest.raises(oss2.exceptions.ServerError) as e:
        bucket.get_object("doc.txt", params={"versionId": old})
    assert e.value.code == "NoSuchVersion"
    assert bucket.get_object("doc.txt").read() == b"current"
    assert not [m for m in listed.delete_marker if m.key == "gone/x"]
    # And it is all remembered across the request clock: the lifecycle clock never made signatures skewed.
    assert server.control("GET", "lifecycle")["offset_secs"] == 4 * DAY
