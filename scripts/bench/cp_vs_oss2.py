#!/usr/bin/env python3
"""Benchmark: `ossmirror cp` against Alibaba's `oss2.resumable_upload`: same file, same server, same settings.

How to run (the venv comes from ./scripts/test, or `python3 -m venv .venv && .venv/bin/pip install -r
tests/requirements.txt`):

    .venv/bin/python scripts/bench/cp_vs_oss2.py                  # 1 GiB file, 5 rounds
    .venv/bin/python scripts/bench/cp_vs_oss2.py --size 256M --rounds 3 --no-build

What it does: builds ossmirror with --release; starts the release `ossmirror serve` (--no-fsync, V4
credentials) on a free loopback port; writes one random file; then, every round, uploads it once with
`ossmirror cp` and once with `oss2.resumable_upload` (both 8 MiB parts, 4 threads, a fresh checkpoint store
each; the order alternates between rounds), checks each object's size and CRC-64 on the server, and deletes
it. Each client is its own child process (forked from a small launcher, so that peak RSS is its own),
measured with wait4(2): wall time, CPU seconds (user + sys of that process only), peak RSS. The server's CPU per upload is shown too (same server for both). Prints the medians,
the ratios ossmirror/oss2 and the targets: wall <= 0.5x, CPU <= 0.1x, ossmirror RSS <= 64 MiB.

Data lives in /dev/shm when it exists (the disk stays out of the measurement), else in the temp directory;
--workdir chooses. Exit code 0 when every upload verified, whether or not the targets are met.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import oss2
from oss2.utils import Crc64

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AK = "bench-access-key"
SK = "bench-secret-key"
REGION = "cn-hangzhou"
BUCKET = "bench"
MIB = 1 << 20

# Forks and execs one client and reports its wait4(2) usage. A child's ru_maxrss includes the size of the
# image it was forked from (Linux keeps the pre-exec high-water mark), so clients are forked from this small
# `python -S` process rather than from the benchmark itself; its floor is measured and printed.
LAUNCHER = r"""
import os, sys, time
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
wall = time.monotonic() - start
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {wall} {ru.ru_utime + ru.ru_stime} {ru.ru_maxrss / 1024}")
"""

# Runs in its own process, so that its CPU and memory are measured alone (and import time counts, as it
# does for any command a user runs).
OSS2_CLIENT = r"""
import os, sys, oss2
endpoint, bucket_name, key, path, store, part, threads = sys.argv[1:]
auth = oss2.AuthV4(os.environ["OSS_ACCESS_KEY_ID"], os.environ["OSS_ACCESS_KEY_SECRET"])
bucket = oss2.Bucket(auth, endpoint, bucket_name, region="cn-hangzhou")
oss2.resumable_upload(bucket, key, path, store=oss2.ResumableStore(root=store),
                      multipart_threshold=int(part), part_size=int(part), num_threads=int(threads))
"""


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def release_binary(build):
    if build:
        print("building ossmirror --release …", flush=True)
        subprocess.run(["cargo", "build", "--release", "--bin", "ossmirror"], cwd=REPO, check=True)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                                     check=True, capture_output=True).stdout)
    binary = os.path.join(meta["target_directory"], "release", "ossmirror")
    if not os.path.exists(binary):
        sys.exit(f"{binary} does not exist: run without --no-build")
    return binary


class Server:
    def __init__(self, binary, workdir):
        addr_file = os.path.join(workdir, "address")
        self.log = open(os.path.join(workdir, "server.log"), "wb")
        env = dict(os.environ, OSSMIRROR_SERVE_SECRET=SK, OSSMIRROR_LOG="warn", NO_COLOR="1")
        self.proc = subprocess.Popen(
            [binary, "serve", "--root", os.path.join(workdir, "root"), "--listen", "127.0.0.1:0",
             "--address-file", addr_file, "--access-key-id", AK, "--no-fsync", "--bucket", BUCKET],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not os.path.exists(addr_file) or not open(addr_file).read().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ossmirror serve did not start; see {self.log.name}")
            time.sleep(0.02)
        self.endpoint = "http://" + open(addr_file).read().strip()

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def write_random_file(path, size):
    crc = Crc64()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 64 * MIB))
            crc.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return crc.crc


def measure(argv, env, log_path, server):
    """Run one client process to completion: (wall s, CPU s, peak RSS MiB, server CPU s)."""
    server_before = server.cpu_seconds()
    usage_path = log_path + ".usage"
    with open(log_path, "wb") as log:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, usage_path, *argv], stdout=log,
                       stderr=subprocess.STDOUT, env=env, check=True)
    code, wall, cpu, rss = open(usage_path).read().split()
    if int(code) != 0:
        sys.exit(f"{argv[0]} failed with {code}; see {log_path}:\n{open(log_path).read()[-3000:]}")
    return float(wall), float(cpu), float(rss), server.cpu_seconds() - server_before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="file size (default 1G)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--part-size", default="8M")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    args = ap.parse_args()
    size, part = parse_size(args.size), parse_size(args.part_size)

    binary = release_binary(not args.no_build)
    workdir = tempfile.mkdtemp(prefix="ossmirror-bench-", dir=args.workdir)
    server = Server(binary, workdir)
    try:
        run(args, binary, workdir, server, size, part)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(args, binary, workdir, server, size, part):
    path = os.path.join(workdir, "data.bin")
    print(f"writing {size / MIB:.0f} MiB of random data to {path} …", flush=True)
    crc = write_random_file(path, size)
    bucket = oss2.Bucket(oss2.AuthV4(AK, SK), server.endpoint, BUCKET, region=REGION)
    env = dict(os.environ, OSS_ACCESS_KEY_ID=AK, OSS_ACCESS_KEY_SECRET=SK, NO_COLOR="1", OSSMIRROR_LOG="warn")

    def ossmirror(n):
        key = f"ossmirror-{n}"
        argv = [binary, "cp", path, f"oss://{BUCKET}/{key}", "--endpoint", server.endpoint, "--region", REGION,
                "--part-size", str(part), "--threads", str(args.threads), "--no-progress",
                "--checkpoint-db", os.path.join(workdir, f"ckpt-{key}", "cp.db")]
        return key, argv

    def oss2_upload(n):
        key = f"oss2-{n}"
        store = os.path.join(workdir, f"ckpt-{key}")
        os.makedirs(store)
        argv = [sys.executable, "-c", OSS2_CLIENT, server.endpoint, BUCKET, key, path, store, str(part),
                str(args.threads)]
        return key, argv

    clients = {"ossmirror cp": ossmirror, "oss2.resumable_upload": oss2_upload}
    results = {name: [] for name in clients}
    floor = measure(["/bin/true"], env, os.path.join(workdir, "floor.log"), server)[2]
    load_before = os.getloadavg()
    for n in range(args.rounds):
        order = list(clients) if n % 2 == 0 else list(reversed(clients))
        for name in order:
            key, argv = clients[name](n)
            row = measure(argv, env, os.path.join(workdir, f"{key}.log"), server)
            head = bucket.head_object(key)
            if head.content_length != size or head.server_crc != crc:
                sys.exit(f"{name}: object {key} has size {head.content_length}, CRC-64 {head.server_crc}; "
                         f"expected {size}, {crc}")
            bucket.delete_object(key)
            results[name].append(row)
            print(f"round {n + 1} {name:22} wall {row[0]:6.2f} s  cpu {row[1]:6.2f} s  rss {row[2]:7.1f} MiB  "
                  f"server cpu {row[3]:6.2f} s", flush=True)
    report(args, size, part, results, load_before, floor)


def report(args, size, part, results, load_before, floor):
    med = {name: [statistics.median(r[i] for r in rows) for i in range(4)] for name, rows in results.items()}
    ours, theirs = med["ossmirror cp"], med["oss2.resumable_upload"]
    print()
    print(f"{size / MIB:.0f} MiB file, {part / MIB:g} MiB parts, {args.threads} threads, {args.rounds} rounds "
          f"(medians); {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; oss2 {oss2.__version__}, Python {sys.version.split()[0]}")
    print(f"{'':22} {'ossmirror cp':>13} {'oss2':>13} {'ratio':>8}   target")
    rows = [
        ("wall time (s)", 0, "<= 0.5x", lambda r, o: r <= 0.5),
        ("client CPU (s)", 1, "<= 0.1x", lambda r, o: r <= 0.1),
        ("peak RSS (MiB)", 2, "ossmirror <= 64 MiB", lambda r, o: o <= 64),
        ("server CPU (s)", 3, "", None),
    ]
    for label, i, target, met in rows:
        ratio = ours[i] / theirs[i] if theirs[i] else float("nan")
        verdict = "" if met is None else ("met" if met(ratio, ours[i]) else "MISSED")
        print(f"{label:22} {ours[i]:13.2f} {theirs[i]:13.2f} {ratio:8.3f}   {target} {verdict}")
    print(f"{'throughput (MiB/s)':22} {size / MIB / ours[0]:13.0f} {size / MIB / theirs[0]:13.0f}")
    print(f"(peak RSS measurement floor: {floor:.1f} MiB, what /bin/true reports through the same launcher)")


if __name__ == "__main__":
    main()
