#!/usr/bin/env python3
"""Benchmark of the ossmirror agent against a local `ossmirror serve --no-fsync` on loopback.

Usage (after ./scripts/test created .venv; only the standard library is needed, so any python3 works):

    .venv/bin/python scripts/bench/agent.py [--workdir DIR] [--only a,b,c,d] [--keep] [--no-build]
        [--files-a 10000] [--size-a 4096] [--latency-files 100] [--settle 100ms]
        [--files-c 100000] [--files-d 1000000]

It builds the release binary and the `bench_index` example (cargo build --release), starts one server,
and measures, each figure on its own tree, prefix and state database:

  (a) initial sync: N files of SIZE bytes with `--once` — files/s, wall, client CPU s, peak RSS;
  (b) latency from a file's close() to its object answering HEAD on the server, writing files one at a
      time while the agent runs with a short --settle (reported; the figure is also shown minus it);
  (c) idle rescan: `--once` again over an already-synced tree of --files-c files (the first sync of that
      tree is reported too) — wall, CPU, peak RSS;
  (e) the remote check on the --files-c objects of (c) (run it with c): a running, idle agent with a short
      --remote-check-interval; the CPU of the agent and of the server between two checks (nothing else runs),
      the check's own duration and ListObjects requests (from `status --json`).
  (d) memory with --files-d tracked files: the tree is --files-d *empty* files (cheap in blocks, one inode
      each; checked against `df -i` first), and the index rows are written by the `bench_index` example
      (the same rows the agent writes after an upload: key, snapshot, CRC-64, BLAKE3), not by uploading
      a million objects. Then the agent's `--once` over it (peak RSS, wall) and a running agent after its
      initial scan (steady RSS). Target: peak RSS <= 150 MB.

Client figures come from wait4() of the agent process alone (CPU = user + system, RSS = ru_maxrss) or
from /proc/PID/status (VmRSS, VmHWM) for a running agent; the server's CPU is reported beside them, since
both share the machine. The load average is printed at the start and the end: on a shared machine,
compare figures only with the load they were taken under.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUCKET = "bench"
PROFILE = "release"
AK, SK = "BENCHAK", "BENCHSK"


def log(msg):
    print(msg, flush=True)


def parse_duration_s(text):
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    return float(text)


def load():
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def build():
    log("building the release binary and the bench_index example ...")
    subprocess.run(["cargo", "build", "--release", "--bin", "ossmirror", "--example", "bench_index"], cwd=REPO, check=True)


def proc_cpu_s(pid):
    """user + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_mem_mb(pid):
    """(VmRSS, VmHWM) in MB of a live process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                out[name] = int(value.split()[0]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


class Server:
    def __init__(self, binary, work):
        self.root = work / "server"
        addr_file = work / "server.addr"
        self.log_path = work / "server.log"
        env = dict(os.environ, OSSMIRROR_LOG="warn")
        # No credentials on the server: it accepts any request, so this script can HEAD without signing.
        # The agent still signs every request (that cost is part of its figures).
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--root", str(self.root), "--listen", "127.0.0.1:0", "--address-file",
             str(addr_file), "--no-fsync", "--bucket", BUCKET],
            stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                host, port = addr_file.read_text().strip().rsplit(":", 1)
                self.addr = (host, int(port))
                break
            except (FileNotFoundError, ValueError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server did not start:\n{self.log_path.read_text()}")
                time.sleep(0.02)
        self.endpoint = f"http://{self.addr[0]}:{self.addr[1]}"
        self.conn = http.client.HTTPConnection(*self.addr, timeout=30)

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid)

    def exists(self, key):
        self.conn.request("HEAD", f"/{BUCKET}/{key}")
        r = self.conn.getresponse()
        r.read()
        return r.status == 200

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


class Bench:
    def __init__(self, args, work, binary, server):
        self.args, self.work, self.binary, self.server = args, work, binary, server
        self.env = dict(os.environ, OSS_ACCESS_KEY_ID=AK, OSS_ACCESS_KEY_SECRET=SK, OSS_REGION="cn-hangzhou",
                        OSSMIRROR_LOG="warn", XDG_STATE_HOME=str(work / "state"))

    def agent_cmd(self, name, extra=()):
        return [str(self.binary), "--watch", str(self.work / name), "--bucket", BUCKET, "--prefix", f"{name}/",
                "--endpoint", self.server.endpoint, "--state-db", str(self.work / f"{name}.db"), *extra]

    def run_once(self, name, extra=()):
        """`--once` on tree `name`: wall, client CPU, peak RSS (wait4), server CPU."""
        log_file = open(self.work / f"{name}-once.log", "a")
        server_cpu = self.server.cpu_s()
        t0 = time.monotonic()
        p = subprocess.Popen(self.agent_cmd(name, ["--once", "--settle", self.args.settle, *extra]),
                             stdout=log_file, stderr=subprocess.STDOUT, env=self.env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            sys.exit(f"agent --once on {name} exited {code}; see {self.work / f'{name}-once.log'}")
        return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
                "server_cpu_s": self.server.cpu_s() - server_cpu}

    def status(self, name):
        out = subprocess.run([str(self.binary), "status", "--json", "--state-db", str(self.work / f"{name}.db")],
                             capture_output=True, env=self.env)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def start_agent(self, name, extra=()):
        log_file = open(self.work / f"{name}-agent.log", "a")
        p = subprocess.Popen(self.agent_cmd(name, ["--settle", self.args.settle, *extra]), stdout=log_file,
                             stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 3600
        while True:
            s = self.status(name)
            if s and s["agent"]["state"] == "running" and s["agent"]["initial_scan_done"] \
                    and s["counts"]["queued"] == 0 and s["counts"]["running"] == 0:
                return p
            if p.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the agent on {name} did not settle; see {self.work / f'{name}-agent.log'}")
            time.sleep(0.2)

    @staticmethod
    def stop_agent(p):
        p.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(p.pid, 0)
        return ru

    def make_tree(self, name, files, size, per_dir=1000):
        root = self.work / name
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for i in range(files):
            d = root / f"d{i // per_dir:04d}"
            if i % per_dir == 0:
                d.mkdir(exist_ok=True)
            fd = os.open(d / f"f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            if size:
                os.write(fd, os.urandom(size))
            os.close(fd)
        log(f"  made {files:,} files of {size} B under {root} in {time.monotonic() - t0:.1f} s")
        return root

    # -- the figures ------------------------------------------------------------------------------------------

    def a(self):
        n, size = self.args.files_a, self.args.size_a
        log(f"\n(a) initial sync of {n:,} x {size} B files with --once (--settle {self.args.settle})")
        self.make_tree("a", n, size, per_dir=100)
        r = self.run_once("a")
        log(f"  {n / r['wall_s']:.0f} files/s; wall {r['wall_s']:.2f} s; client CPU {r['cpu_s']:.2f} s; "
            f"peak RSS {r['peak_rss_mb']:.1f} MB; server CPU {r['server_cpu_s']:.2f} s")
        return r

    def b(self):
        n, settle = self.args.latency_files, parse_duration_s(self.args.settle)
        log(f"\n(b) close-to-visible latency, {n} files of 4 KiB one at a time, --settle {self.args.settle}")
        (self.work / "b").mkdir(exist_ok=True)
        p = self.start_agent("b")
        lat = []
        for i in range(n):
            path = self.work / "b" / f"f{i:05d}"
            with open(path, "wb") as f:
                f.write(os.urandom(4096))
            closed = time.monotonic()
            deadline = closed + 120
            while not self.server.exists(f"b/f{i:05d}"):
                if time.monotonic() > deadline:
                    sys.exit(f"b/f{i:05d} never became visible")
                time.sleep(0.002)
            lat.append(time.monotonic() - closed)
        rss, hwm = proc_mem_mb(p.pid)
        self.stop_agent(p)
        lat.sort()
        p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        log(f"  p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms "
            f"(minus the {settle * 1000:.0f} ms settle window: p50 {(p50 - settle) * 1000:.0f} ms, "
            f"p99 {(p99 - settle) * 1000:.0f} ms); agent RSS {rss:.1f} MB (peak {hwm:.1f} MB)")
        return {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "max_ms": lat[-1] * 1000, "settle_ms": settle * 1000,
                "rss_mb": rss}

    def c(self):
        n = self.args.files_c
        log(f"\n(c) idle rescan of {n:,} unchanged files (--once on an already-synced tree)")
        self.make_tree("c", n, 1024)
        first = self.run_once("c")
        log(f"  first sync: {n / first['wall_s']:.0f} files/s; wall {first['wall_s']:.1f} s; client CPU "
            f"{first['cpu_s']:.1f} s; peak RSS {first['peak_rss_mb']:.1f} MB; server CPU {first['server_cpu_s']:.1f} s")
        again = self.run_once("c")
        log(f"  idle rescan: wall {again['wall_s']:.2f} s ({n / again['wall_s']:.0f} files/s); client CPU "
            f"{again['cpu_s']:.2f} s; peak RSS {again['peak_rss_mb']:.1f} MB; server CPU {again['server_cpu_s']:.2f} s")
        return {"first": first, "idle": again}

    def e(self):
        n = self.args.files_c
        log(f"\n(e) the remote check over {n:,} objects (idle agent, periodic check every 20 s)")
        if not (self.work / "c").is_dir():
            sys.exit("(e) needs the tree and objects of (c): run --only c,e")
        p = self.start_agent("c", ["--remote-check-interval", "20s"])
        deadline = time.monotonic() + 600
        while not ((self.status("c") or {}).get("remote_check") or {}).get("finished_at"):
            if time.monotonic() > deadline:
                sys.exit("(e) the check at start did not finish within 10 minutes")
            time.sleep(0.2)
        first = self.status("c")["remote_check"]
        cpu0, scpu0 = proc_cpu_s(p.pid), self.server.cpu_s()
        while True:
            check = (self.status("c") or {}).get("remote_check") or {}
            if check.get("finished_at", 0) > first.get("finished_at", 0) and check.get("error") is None:
                break
            if time.monotonic() > deadline:
                sys.exit("(e) no periodic check finished within 10 minutes")
            time.sleep(0.5)
        cpu, scpu = proc_cpu_s(p.pid) - cpu0, self.server.cpu_s() - scpu0
        rss, hwm = proc_mem_mb(p.pid)
        self.stop_agent(p)
        log(f"  {check['objects']:,} objects, {check['requests']} ListObjects requests, {check['millis'] / 1000:.2f} s; "
            f"agent CPU {cpu:.2f} s and server CPU {scpu:.2f} s between two checks (an idle agent: nothing else ran); "
            f"differences {check['missing'] + check['changed']}, unknown {check['unknown']}; agent RSS {rss:.1f} MB "
            f"(peak {hwm:.1f} MB)")
        return {"check": check, "agent_cpu_s": cpu, "server_cpu_s": scpu, "rss_mb": rss}

    def d(self):
        n = self.args.files_d
        log(f"\n(d) memory with {n:,} tracked files")
        st = os.statvfs(self.work)
        need = n + n // 1000 + 10_000
        if st.f_favail < need * 2:
            sys.exit(f"(d) needs about {need:,} free inodes with a margin; {self.work} has {st.f_favail:,} (df -i)")
        self.make_tree("d", n, 0)
        t0 = time.monotonic()
        example = target_dir() / PROFILE / "examples" / "bench_index"
        # The remote the agent will bind the database to (agent::setup::remote_identity): an index that
        # names no remote, or another one, is re-proven from scratch by the agent.
        host, port = self.server.endpoint.split("://", 1)[1].split(":")
        remote = f"oss http://{host}:{port} bucket={BUCKET} prefix=d/"
        subprocess.run([str(example), str(self.work / "d.db"), str(self.work / "d"), BUCKET, "d/", remote],
                       check=True, env=self.env)
        log(f"  index of {n:,} synced rows written by bench_index in {time.monotonic() - t0:.1f} s; "
            f"database {os.path.getsize(self.work / 'd.db') / 1e6:.0f} MB")
        once = self.run_once("d")
        log(f"  --once over {n:,} tracked files: wall {once['wall_s']:.1f} s; client CPU {once['cpu_s']:.1f} s; "
            f"peak RSS {once['peak_rss_mb']:.1f} MB (target <= 150 MB)")
        p = self.start_agent("d")
        rss, hwm = proc_mem_mb(p.pid)
        time.sleep(5)
        rss_later, hwm = proc_mem_mb(p.pid)
        self.stop_agent(p)
        log(f"  running agent after its initial scan: RSS {rss:.1f} MB, 5 s later {rss_later:.1f} MB; "
            f"peak {hwm:.1f} MB")
        return {"once": once, "running_rss_mb": rss_later, "running_peak_mb": hwm}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="where trees, databases and the server's data go [a temp dir]")
    ap.add_argument("--only", default="a,b,c,d", help="figures to run, e.g. a,b")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-build", action="store_true", help="use the built binaries as they are")
    ap.add_argument("--profile", default="release", help="cargo profile directory to run from (debug for a smoke run)")
    ap.add_argument("--files-a", type=int, default=10_000)
    ap.add_argument("--size-a", type=int, default=4096)
    ap.add_argument("--latency-files", type=int, default=100)
    ap.add_argument("--settle", default="100ms")
    ap.add_argument("--files-c", type=int, default=100_000)
    ap.add_argument("--files-d", type=int, default=1_000_000)
    args = ap.parse_args()

    if not args.no_build:
        build()
    global PROFILE
    PROFILE = args.profile
    binary = target_dir() / PROFILE / "ossmirror"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ossmirror-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"ossmirror agent benchmark; {load()}; work directory {work}")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
    log(f"{version}; {binary}")
    server = Server(binary, work)
    results = {"load_start": os.getloadavg()}
    try:
        bench = Bench(args, work, binary, server)
        for figure in args.only.split(","):
            results[figure] = getattr(bench, figure.strip())()
    finally:
        server.stop()
        results["load_end"] = os.getloadavg()
        log(f"\n{load()} at the end")
        (work / "results.json").write_text(json.dumps(results, indent=2))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"results and logs kept in {work}")


if __name__ == "__main__":
    main()
