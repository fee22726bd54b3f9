"""Interop suite: Alibaba's official Python SDKs (oss2 and alibabacloud-oss-v2) against `ossmirror serve`.

The server is the real binary (path in $OSSMIRROR_BIN), started once per pytest process on a free loopback
port, with credentials and the control API, in a temporary root. Every test gets its own bucket, and the
control API is reset before each test so faults and clock changes never leak between tests.
"""

import hashlib
import json
import os
import subprocess
import time
import urllib.request

import alibabacloud_oss_v2 as oss
import oss2
import pytest

AK = "ossmirror-interop-ak"
SK = "ossmirror-interop-secret"
REGION = "cn-hangzhou"
START_DEADLINE = 60.0


class Server:
    """A running `ossmirror serve` process."""

    def __init__(self, tmp_path, *extra_args):
        binary = os.environ.get("OSSMIRROR_BIN")
        if not binary or not os.path.exists(binary):
            pytest.fail("OSSMIRROR_BIN must name the ossmirror binary (tests/interop.rs sets it)", pytrace=False)
        self.root = tmp_path / "root"
        addr_file = tmp_path / "address"
        self.log_path = tmp_path / "server.log"
        self._log = open(self.log_path, "wb")
        args = [
            binary, "serve",
            "--root", str(self.root),
            "--listen", "127.0.0.1:0",
            "--address-file", str(addr_file),
            "--access-key-id", AK,
            "--access-key-secret", SK,
            "--enable-control-api",
            *extra_args,
        ]
        env = dict(os.environ, OSSMIRROR_LOG=os.environ.get("OSSMIRROR_LOG", "info"), NO_COLOR="1")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_DEADLINE
        while not addr_file.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"ossmirror serve exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ossmirror serve did not start:\n{self.log()}", pytrace=False)
            time.sleep(0.02)
        self.addr = addr_file.read_text().strip()
        self.endpoint = f"http://{self.addr}"

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    # -- control API -------------------------------------------------------------------------------------

    def control(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.endpoint}/_ossmirror/{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def stats(self):
        return self.control("GET", "stats")

    def op_stats(self, op):
        return self.stats()["operations"].get(op, {"requests": 0, "body_bytes": 0, "statuses": {}})

    def script(self, *rules):
        return self.control("POST", "script", list(rules))

    def reset(self):
        self.control("POST", "reset")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clean_server(request):
    # Only tests that use a server get it reset; the reset happens before the test, so a failing test's
    # state is still there to inspect in the log.
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()
    yield


def oss2_auth(sig, ak=AK, sk=SK):
    return oss2.Auth(ak, sk) if sig == "v1" else oss2.AuthV4(ak, sk)


def oss2_bucket(server, sig, name, ak=AK, sk=SK, **kwargs):
    return oss2.Bucket(oss2_auth(sig, ak, sk), server.endpoint, name, region=REGION, enable_crc=True, **kwargs)


def v2_client(server, ak=AK, sk=SK, **overrides):
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(ak, sk)
    cfg.region = REGION
    cfg.endpoint = server.endpoint
    cfg.use_path_style = True
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return oss.Client(cfg)


@pytest.fixture(params=["v1", "v4"])
def sig(request):
    """The oss2 signature version under test."""
    return request.param


@pytest.fixture
def bucket_name(server, request):
    # Named after the test, not random: fault decisions hash the bucket name, so a test that runs with
    # random faults meets the same faults on every run.
    name = "t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:20]
    oss2_bucket(server, "v4", name).create_bucket()
    return name


@pytest.fixture
def bucket(server, sig, bucket_name):
    """An oss2.Bucket on a fresh bucket, signed with V1 or V4."""
    return oss2_bucket(server, sig, bucket_name)


@pytest.fixture
def client(server):
    """An alibabacloud_oss_v2 client (V4, path style)."""
    return v2_client(server)


AWKWARD_KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+sign.bin",
    "amp&ersand=eq?q#hash",
    "percent%20literal%2F",
    "unicode/中文/ключ/😀.dat",
    "dir/sub dir/a+b c.txt",
    "tilde~star*paren(1)!'",
    "..//double//slash/../dot",
    "trailing space ",
]
