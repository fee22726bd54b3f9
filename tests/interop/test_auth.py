"""Authentication as the SDKs surface it: wrong secret, unknown key, anonymous, malformed Authorization,
clock skew, presigned URLs, and STS session tokens (including an expired one), for V1 and V4."""

import alibabacloud_oss_v2 as oss
import oss2
import pytest
import requests

from conftest import AK, REGION, SK, Server, oss2_auth, oss2_bucket, v2_client

TOKEN = "STS.interop-session-token"


def test_wrong_secret(server, sig, bucket_name):
    b = oss2_bucket(server, sig, bucket_name, sk="not-the-secret")
    with pytest.raises(oss2.exceptions.ServerError) as e:
        b.put_object("k", b"x")
    assert e.value.status == 403 and e.value.code == "SignatureDoesNotMatch"
    assert "StringToSign" in e.value.details
    # On HEAD the error arrives in x-oss-err.
    with pytest.raises(oss2.exceptions.ServerError) as e:
        b.head_object("k")
    assert e.value.status == 403 and e.value.code == "SignatureDoesNotMatch"


def test_unknown_access_key(server, sig, bucket_name):
    b = oss2_bucket(server, sig, bucket_name, ak="NoSuchAccessKey")
    with pytest.raises(oss2.exceptions.ServerError) as e:
        b.get_object("k")
    assert e.value.status == 403 and e.value.code == "InvalidAccessKeyId"


def test_anonymous(server, bucket_name):
    b = oss2.Bucket(oss2.AnonymousAuth(), server.endpoint, bucket_name)
    with pytest.raises(oss2.exceptions.AccessDenied):
        b.get_object("k")
    r = requests.put(f"{server.endpoint}/{bucket_name}/k", data=b"x")
    assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text
    assert r.headers["x-oss-request-id"] and r.headers["Date"] and r.headers["Server"] == "AliyunOSS"


@pytest.mark.parametrize("authorization", [
    "OSS nocolon",
    "OSS4-HMAC-SHA256 Credential=bad",
    "OSS4-HMAC-SHA256 Credential=ak/20240101/cn-hangzhou/oss/aliyun_v4_request",
    "Basic dXNlcjpwYXNz",
])
def test_malformed_authorization(server, bucket_name, authorization):
    r = requests.get(f"{server.endpoint}/{bucket_name}/k", headers={"Authorization": authorization})
    assert r.status_code == 400 and "<Code>InvalidArgument</Code>" in r.text


def test_v2_sdk_errors(server, bucket_name):
    for ak, sk, code in [(AK, "wrong", "SignatureDoesNotMatch"), ("NoSuchAccessKey", SK, "InvalidAccessKeyId")]:
        client = v2_client(server, ak=ak, sk=sk)
        with pytest.raises(oss.exceptions.OperationError) as e:
            client.put_object(oss.PutObjectRequest(bucket=bucket_name, key="k", body=b"x"))
        se = e.value.unwrap()
        assert se.status_code == 403 and se.code == code
        assert se.request_id


def test_clock_skew(server, sig, bucket_name):
    b = oss2_bucket(server, sig, bucket_name)
    server.control("PUT", "clock", {"offset_secs": 3600})
    # oss2 has no retry: it reports the skew.
    with pytest.raises(oss2.exceptions.ServerError) as e:
        b.put_object("skew", b"x")
    assert e.value.status == 403 and e.value.code == "RequestTimeTooSkewed"
    server.control("PUT", "clock", {"offset_secs": 10 * 60})
    b.put_object("skew", b"within fifteen minutes")


def test_v2_sdk_retries_clock_skew(server, bucket_name):
    # alibabacloud-oss-v2 1.4.1 classes RequestTimeTooSkewed as retryable but does not correct its clock
    # (the hook is a stub), so it tries three times and surfaces the error.
    server.control("PUT", "clock", {"offset_secs": -7200})
    client = v2_client(server)
    with pytest.raises(oss.exceptions.OperationError) as e:
        client.put_object(oss.PutObjectRequest(bucket=bucket_name, key="skew", body=b"x"))
    assert e.value.unwrap().code == "RequestTimeTooSkewed"
    assert server.op_stats("PutObject")["statuses"] == {"403": 3}


@pytest.fixture(scope="module")
def sts_server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("sts"), "--session-token", TOKEN, "--bucket", "sts-bucket")
    yield s
    s.stop()


def sts_bucket(sts_server, sig, token):
    version = oss2.AUTH_VERSION_1 if sig == "v1" else oss2.AUTH_VERSION_4
    auth = oss2.StsAuth(AK, SK, token, auth_version=version)
    return oss2.Bucket(auth, sts_server.endpoint, "sts-bucket", region=REGION)


def test_session_token(sts_server, sig):
    sts_server.reset()
    good = sts_bucket(sts_server, sig, TOKEN)
    good.put_object(f"sts-{sig}", b"token ok")
    assert good.get_object(f"sts-{sig}").read() == b"token ok"
    url = good.sign_url("GET", f"sts-{sig}", 60)
    assert requests.get(url).content == b"token ok"

    with pytest.raises(oss2.exceptions.ServerError) as e:
        sts_bucket(sts_server, sig, "STS.wrong").get_object(f"sts-{sig}")
    assert e.value.status == 403 and e.value.code == "InvalidSecurityToken"
    with pytest.raises(oss2.exceptions.ServerError) as e:
        oss2.Bucket(oss2_auth(sig), sts_server.endpoint, "sts-bucket", region=REGION).get_object(f"sts-{sig}")
    assert e.value.code == "InvalidSecurityToken"

    sts_server.control("PUT", "token", {"expired": True})
    with pytest.raises(oss2.exceptions.ServerError) as e:
        good.get_object(f"sts-{sig}")
    assert e.value.status == 403 and e.value.code == "SecurityTokenExpired"
    assert requests.get(url).status_code == 403


def test_session_token_v2_sdk(sts_server):
    sts_server.reset()
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(AK, SK, TOKEN)
    cfg.region = REGION
    cfg.endpoint = sts_server.endpoint
    cfg.use_path_style = True
    client = oss.Client(cfg)
    client.put_object(oss.PutObjectRequest(bucket="sts-bucket", key="v2", body=b"x"))
    pre = client.presign(oss.GetObjectRequest(bucket="sts-bucket", key="v2"))
    assert "x-oss-security-token" in pre.url
    assert requests.get(pre.url).content == b"x"
