#!/usr/bin/env python3
"""Benchmark of the way back: `ossmirror cp oss://…` and `ossmirror restore` against their peers.

How to run (the venv comes from ./scripts/test; it provides oss2, weed and rclone):

    .venv/bin/python scripts/bench/restore.py                       # both figures, 3 rounds
    .venv/bin/python scripts/bench/restore.py --only a --size 256M --rounds 5 --no-build
    .venv/bin/python scripts/bench/restore.py --only b --files 2000

  (a) one random object (--size, default 1 GiB) on the release `ossmirror serve --no-fsync`, downloaded by
      `ossmirror cp oss://bench/KEY FILE` and by `oss2.resumable_download` (both 8 MiB parts, 4 threads, a
      fresh checkpoint each; order alternating). Each download's SHA-256 is compared with the original's.
      Targets: wall <= 0.5x oss2, CPU <= 0.25x, ossmirror RSS <= 64 MiB.
  (b) --files objects of --file-size bytes (default 10,000 x 4 KiB) on SeaweedFS (S3 dialect), uploaded
      once by rclone, then restored into a fresh directory by `ossmirror restore --protocol s3 --jobs 16` and
      by `rclone copy sw:B/P DIR --transfers 16`. Each result is compared byte for byte with the source
      tree. Target: files/s >= 1.5x rclone.

Clients are measured as in cp_vs_oss2.py and s3_vs_rclone.py (whose helpers this imports): each its own
process forked from a small launcher, wait4(2) for wall, CPU (user + sys) and peak RSS. Data lives in
/dev/shm when it exists. Exit code 0 when every download verified, whether or not the targets are met.
"""

import argparse
import filecmp
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cp_vs_oss2 as oc  # noqa: E402
import s3_vs_rclone as sr  # noqa: E402

MIB = 1 << 20

OSS2_DOWNLOAD = r"""
import os, sys, oss2
endpoint, bucket_name, key, path, store, part, threads = sys.argv[1:]
auth = oss2.AuthV4(os.environ["OSS_ACCESS_KEY_ID"], os.environ["OSS_ACCESS_KEY_SECRET"])
bucket = oss2.Bucket(auth, endpoint, bucket_name, region="cn-hangzhou")
oss2.resumable_download(bucket, key, path, store=oss2.ResumableDownloadStore(root=store),
                        multiget_threshold=int(part), part_size=int(part), num_threads=int(threads))
"""


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def bench_a(args, binary, workdir):
    size, part = oc.parse_size(args.size), oc.parse_size(args.part_size)
    server = oc.Server(binary, workdir)
    try:
        src = os.path.join(workdir, "data.bin")
        print(f"(a) writing {size / MIB:.0f} MiB of random data and uploading it …", flush=True)
        oc.write_random_file(src, size)
        want = sha256_of(src)
        env = dict(os.environ, OSS_ACCESS_KEY_ID=oc.AK, OSS_ACCESS_KEY_SECRET=oc.SK, NO_COLOR="1",
                   OSSMIRROR_LOG="warn", XDG_STATE_HOME=os.path.join(workdir, "state"))
        subprocess.run([binary, "cp", src, f"oss://{oc.BUCKET}/obj", "--endpoint", server.endpoint, "--region",
                        oc.REGION, "--no-progress", "--no-checkpoint"], env=env, check=True, capture_output=True)
        os.remove(src)  # keep /dev/shm use to the object and one download

        def ossmirror(n):
            dest = os.path.join(workdir, f"ossmirror-{n}.bin")
            return dest, [binary, "cp", f"oss://{oc.BUCKET}/obj", dest, "--endpoint", server.endpoint, "--region",
                          oc.REGION, "--part-size", str(part), "--threads", str(args.threads), "--no-progress",
                          "--checkpoint-db", os.path.join(workdir, f"ckpt-{n}", "download.db")]

        def oss2_download(n):
            dest = os.path.join(workdir, f"oss2-{n}.bin")
            store = os.path.join(workdir, f"ckpt-oss2-{n}")
            os.makedirs(store)
            return dest, [sys.executable, "-c", OSS2_DOWNLOAD, server.endpoint, oc.BUCKET, "obj", dest, store,
                          str(part), str(args.threads)]

        clients = {"ossmirror cp oss://": ossmirror, "oss2.resumable_download": oss2_download}
        results = {name: [] for name in clients}
        for n in range(args.rounds):
            order = list(clients) if n % 2 == 0 else list(reversed(clients))
            for name in order:
                dest, argv = clients[name](n)
                row = oc.measure(argv, env, dest + ".log", server)
                got = sha256_of(dest)
                if got != want:
                    sys.exit(f"{name}: {dest} has SHA-256 {got}, expected {want}")
                os.remove(dest)
                results[name].append(row)
                sr.print_row(n, name, row)
        sr.report(f"(a) {size / MIB:.0f} MiB object from ossmirror serve, {part / MIB:g} MiB parts, {args.threads} "
                  f"threads, {args.rounds} rounds (medians)", list(clients), results, lambda o, t: [
                      ("wall time (s)", lambda m: m[0], "<= 0.5x", lambda r: r <= 0.5),
                      ("client CPU (s)", lambda m: m[1], "<= 0.25x", lambda r: r <= 0.25),
                      ("peak RSS (MiB)", lambda m: m[2], "ossmirror <= 64", lambda r: o[2] <= 64),
                      ("server CPU (s)", lambda m: m[3], "", None),
                  ])
    finally:
        server.stop()


def bench_b(args, binary, workdir):
    weed, rclone = sr.venv_tool("weed", args.venv), sr.venv_tool("rclone", args.venv)
    sw = sr.Seaweed(weed, rclone, args.server_dir)
    try:
        files, fsize = args.files, oc.parse_size(args.file_size)
        tree = os.path.join(workdir, "tree")
        print(f"\n(b) {files:,} files of {fsize} B: uploading them with rclone …", flush=True)
        sr.make_tree(tree, files, fsize)
        sw.run_rclone("copy", tree, f"sw:{sr.BUCKET}/src", "--transfers", "16")
        env = dict(os.environ, AWS_ACCESS_KEY_ID=sr.AK, AWS_SECRET_ACCESS_KEY=sr.SK, AWS_REGION=sr.REGION,
                   NO_COLOR="1", OSSMIRROR_LOG="warn", XDG_STATE_HOME=os.path.join(workdir, "state-b"))

        def ossmirror(n):
            dest = os.path.join(workdir, f"b-ossmirror-{n}")
            return dest, [binary, "restore", "--bucket", sr.BUCKET, "--prefix", "src", "--to", dest, "--protocol",
                          "s3", "--endpoint", sw.endpoint, "--region", sr.REGION, "--jobs", str(args.jobs)]

        def rclone_copy(n):
            dest = os.path.join(workdir, f"b-rclone-{n}")
            return dest, sw.rclone_cmd("copy", f"sw:{sr.BUCKET}/src", dest, "--transfers", str(args.transfers))

        clients = {"ossmirror restore": (ossmirror, env), "rclone copy": (rclone_copy, sw.rclone_env)}
        results = {name: [] for name in clients}
        for n in range(args.rounds):
            order = list(clients) if n % 2 == 0 else list(reversed(clients))
            for name in order:
                make, client_env = clients[name]
                dest, argv = make(n)
                row = sr.measure(argv, client_env, dest + ".log", sw)
                cmp = filecmp.dircmp(tree, dest)
                bad = []

                def walk(c):
                    bad.extend(c.left_only + c.right_only + c.diff_files + c.funny_files)
                    for sub in c.subdirs.values():
                        walk(sub)
                walk(cmp)
                # dircmp compares by stat first: compare every file's bytes too.
                for d in sorted(os.listdir(tree)):
                    _, mismatch, errors = filecmp.cmpfiles(os.path.join(tree, d), os.path.join(dest, d),
                                                           os.listdir(os.path.join(tree, d)), shallow=False)
                    bad.extend(mismatch + errors)
                if bad:
                    sys.exit(f"{name}: {dest} differs from {tree}: {bad[:10]}")
                shutil.rmtree(dest)
                results[name].append(row)
                sr.print_row(n, name, row, f"  {files / row[0]:7.0f} files/s  (verified: {files} equal files)")
        sr.report(f"(b) {files:,} objects of {fsize} B from SeaweedFS, ossmirror --jobs {args.jobs}, rclone "
                  f"--transfers {args.transfers}, {args.rounds} rounds (medians)", list(clients), results,
                  lambda o, t: [
                      ("files/s", lambda m: files / m[0], ">= 1.5x", lambda r: r >= 1.5),
                      ("wall time (s)", lambda m: m[0], "", None),
                      ("client CPU (s)", lambda m: m[1], "", None),
                      ("peak RSS (MiB)", lambda m: m[2], "", None),
                      ("server CPU (s)", lambda m: m[3], "", None),
                  ])
    finally:
        sw.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="a,b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--part-size", default="8M")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--file-size", default="4K")
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--transfers", type=int, default=16)
    ap.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--server-dir", default=None)
    ap.add_argument("--venv", default=os.environ.get("OSSMIRROR_TEST_VENV", os.path.join(sr.REPO, ".venv")))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    binary = oc.release_binary(not args.no_build)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    load_before = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="ossmirror-bench-restore-", dir=args.workdir)
    try:
        only = [f.strip() for f in args.only.split(",")]
        if "a" in only:
            bench_a(args, binary, workdir)
        if "b" in only:
            bench_b(args, binary, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"every download verified")


if __name__ == "__main__":
    main()
