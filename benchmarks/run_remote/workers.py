"""The run benchmark's constants, the helpers that time a command, and its workers: what runs inside a
network namespace (`python -m benchmarks.run_remote --worker MODE --spec FILE`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable
BIN = Path(sys.executable).parent
RADIUM = str(BIN / "radium")
MODULE = "benchmarks.run_remote"
APPLIANCE_PORT = 7460
IPERF_PORT = 5211
CURVE_PORT = 7461
KEYS_SETTLE_S = 3.0  # radiumd re-scans its key folder on each message for 2 s after an enrolment
PROJECT = "/srv/radium-bench-project"  # the warm-start project, on a tmpfs only the client sees
DATA = "/srv/radium-bench-data"  # the cold-transfer tree, likewise
# The commands run with a plain system PATH: `python3` is Debian's /usr/bin/python3, not a
# pyenv shim (a bash script that would add its own start-up cost and file traffic).
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_COMMAND = ["python3", "-c", "pass"]
MB = 1e6

STATS_RE = re.compile(
    r"file requests (\d+) \((\d+) direct\), FUSE operations (\d+), warm tree files (\d+), "
    r"bytes fetched (\d+), cache hits (\d+), misses (\d+), written back (\d+), output (\d+); ?(.*)$"
)

TIMES_RE = re.compile(
    r"time in file content on the appliance: (.*); answering file requests here: (.*)$", re.M
)

READER = """\
import json, os, sys, time
root = sys.argv[1]
buf = memoryview(bytearray(1 << 20))
total = files = 0
per_file = []
t0 = time.perf_counter()
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
        t = time.perf_counter()
        with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                total += n
        files += 1
        per_file.append(time.perf_counter() - t)
seconds = time.perf_counter() - t0
print(json.dumps({"bytes": total, "files": files, "seconds": seconds, "per_file": per_file}))
"""


# =============================================================================== helpers


def parse_stats(stderr: str) -> dict[str, Any] | None:
    """The `radium run --stats` line, as numbers."""
    for line in reversed(stderr.splitlines()):
        m = STATS_RE.search(line)
        if m:
            keys = (
                "fs_requests",
                "fs_direct",
                "fuse_ops",
                "warm_files",
                "bytes_fetched",
                "cache_hits",
                "cache_misses",
                "written_back",
                "output",
            )
            out: dict[str, Any] = dict(zip(keys, map(int, m.groups()[:9]), strict=True))
            out["phases"] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)s", m.group(10))}
            times = TIMES_RE.search(stderr)
            if times:
                out["content_seconds"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", times[1])}
                out["file_seconds"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", times[2])}
            return out
    return None


def wire_counters(netns: str | None = None) -> dict[str, int]:
    """Bytes sent and received on a namespace's veth (all interfaces but lo): this one's, or `netns`'s."""
    tx = rx = 0
    if netns is not None:
        out = subprocess.run(["ip", "-n", netns, "-j", "-s", "link", "show"], capture_output=True, text=True)
        for link in json.loads(out.stdout or "[]"):
            if link.get("ifname") != "lo" and "stats64" in link:
                tx += link["stats64"]["tx"]["bytes"]
                rx += link["stats64"]["rx"]["bytes"]
        return {"tx": tx, "rx": rx}
    for dev in os.listdir("/sys/class/net"):
        if dev == "lo":
            continue
        base = Path("/sys/class/net") / dev / "statistics"
        with contextlib.suppress(OSError):
            tx += int((base / "tx_bytes").read_text())
            rx += int((base / "rx_bytes").read_text())
    return {"tx": tx, "rx": rx}


def timed(argv: list[str], netns: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run a command to completion: its wall time, wall-clock ends, exit code, output, bytes on the wire."""
    w0 = wire_counters(netns)
    t0, c0 = time.time(), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - c0
    t1 = time.time()
    w1 = wire_counters(netns)
    return {
        "wall": wall,
        "t0": t0,
        "t1": t1,
        "rc": out.returncode,
        "stdout": out.stdout,
        "stderr": out.stderr,
        "stats": parse_stats(out.stderr),
        "wire_tx": w1["tx"] - w0["tx"],
        "wire_rx": w1["rx"] - w0["rx"],
    }


def _check(result: dict, what: str) -> None:
    """A non-zero exit fails the benchmark: every command here must succeed, remote or local.

    (Runs longer than 10 s used to end with 137 although the process finished: the supervisor's
    parent-death signal was tied to a trio worker thread; fixed in ce3194b.)
    """
    if result["rc"] != 0:
        raise RuntimeError(f"{what} failed (exit {result['rc']}):\n{result['stderr'][-3000:]}")


# ======================================================= workers (run inside a namespace)


def worker_starts(spec: dict) -> dict:
    """In the client's private mount namespace: warm/cold start of `radium run` vs local."""
    project = Path(spec["project"])
    (project / "pkg").mkdir()
    for i in range(20):
        (project / "pkg" / f"mod{i:02d}.py").write_text(f"VALUE = {i}\n" * 50)
    (project / "pkg" / "__init__.py").write_text("")
    (project / "main.py").write_text("import pkg\nprint('project')\n")
    (project / "data.bin").write_bytes(os.urandom(1 << 20))
    env, cmd = spec["env"], spec["command"]
    remote, local = [], []
    for _ in range(1 + spec["warmup"] + spec["n"]):
        r = timed([RADIUM, "run", "--stats", "--", *cmd], cwd=project, env=env, timeout=120)
        _check(r, "radium run")
        remote.append(r)
        lo = timed(cmd, cwd=project, env=env, timeout=60)
        _check(lo, "local run")
        local.append(lo["wall"])
    for r in remote:
        del r["stdout"], r["stderr"]
    return {"remote": remote, "local": local}


MANY_READER = """\
import os, sys, time
t = time.perf_counter()
total = files = 0
for dirpath, dirnames, filenames in os.walk(sys.argv[1]):
    for name in filenames:
        with open(os.path.join(dirpath, name), "rb") as f:
            total += len(f.read())
        files += 1
print(files, total, time.perf_counter() - t)
"""


def worker_many(spec: dict) -> dict:
    """In the client's private mount namespace: a project of many small files, all read; the first
    run through `radium run` cold, then warm ones, each followed by the same reader run locally,
    and locally through a fresh overlay mount (the layering of a run's world, without radium)."""
    project = Path(spec["project"])
    rng = __import__("random").Random(1)
    for i in range(spec["files"]):
        d = project / "tree" / f"d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i:05d}.py").write_bytes(os.urandom(rng.randrange(200, 8192)))
    (project / "read.py").write_text(MANY_READER)
    env, argv = spec["env"], ["python3", "read.py", "tree"]
    layers = Path(tempfile.mkdtemp(prefix="radium-bench-overlay-"))
    remote, local, overlaid, again = [], [], [], []
    for _ in range(1 + spec["n"]):
        r = timed([RADIUM, "run", "--stats", "--", *argv], cwd=project, env=env, timeout=300)
        _check(r, "radium run")
        lo = timed(argv, cwd=project, env=env, timeout=120)
        _check(lo, "local run")
        if r["stdout"].split()[:2] != lo["stdout"].split()[:2]:
            raise RuntimeError(f"the remote reader saw {r['stdout']!r}, the local one {lo['stdout']!r}")
        r["read_s"], lo["read_s"] = float(r["stdout"].split()[2]), float(lo["stdout"].split()[2])
        del r["stdout"], r["stderr"], lo["stdout"], lo["stderr"]
        remote.append(r)
        local.append(lo)
        for d in ("upper", "work", "merged"):
            shutil.rmtree(layers / d, ignore_errors=True)
            (layers / d).mkdir()
        options = f"lowerdir={project},upperdir={layers}/upper,workdir={layers}/work,xino=on"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, layers / "merged"], check=True)
        try:
            ov = timed(argv, cwd=layers / "merged", env=env, timeout=120)
            ov2 = timed(argv, cwd=layers / "merged", env=env, timeout=120)  # its dentries and inodes made
        finally:
            subprocess.run(["umount", layers / "merged"], check=True)
        _check(ov, "local run through an overlay")
        _check(ov2, "local run through an overlay, again")
        overlaid.append(float(ov["stdout"].split()[2]))
        again.append(float(ov2["stdout"].split()[2]))
    shutil.rmtree(layers)
    return {"remote": remote, "local": local, "overlaid": overlaid, "overlaid_again": again}


def worker_cold(spec: dict) -> dict:
    """In the client's private mount namespace: a 1 GiB tree read through `radium run`."""
    import numpy as np

    data = Path(spec["data"])
    tree = data / "tree"
    t = time.perf_counter()
    per_dir = max(1, spec["files"] // 8)
    rng = np.random.default_rng()  # random content (nothing to deduplicate), faster than os.urandom
    for i in range(spec["files"]):
        d = tree / f"d{i // per_dir:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03d}.bin").write_bytes(rng.bytes(spec["file_bytes"]))
    made = time.perf_counter() - t
    (data / "read.py").write_text(READER)
    env = spec["env"]
    argv = ["python3", str(data / "read.py"), str(tree)]
    runs = {}
    runs["local"] = timed(argv, cwd=data, env=env, timeout=300)
    for name in ("cold", "warm"):
        runs[name] = timed([RADIUM, "run", "--stats", "--", *argv], cwd=data, env=env, timeout=600)
    for name, r in runs.items():
        _check(r, f"{name} read")
        r["reader"] = json.loads(r["stdout"].strip().splitlines()[-1])
        del r["stdout"], r["stderr"]
    return {"made_s": made, "runs": runs}


def worker_curve_sink(spec: dict) -> dict:
    """Receive `count` (Curve)ZMQ messages; time from the first to the last."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    if spec["public"]:
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = spec["public"].encode(), spec["secret"].encode()
    sock.linger = 0
    sock.rcvhwm = 16
    sock.bind(spec["listen"])
    print("ready", flush=True)
    first = sock.recv(copy=False)
    t0 = time.perf_counter()
    total = len(first)
    for _ in range(spec["count"] - 1):
        total += len(sock.recv(copy=False))
    seconds = time.perf_counter() - t0
    return {"bytes": total - len(first), "seconds": seconds}


def worker_curve_source(spec: dict) -> dict:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    if spec["server"]:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            spec["server"].encode(),
            public,
            secret,
        )
    sock.sndhwm = 16
    sock.linger = -1
    sock.connect(spec["endpoint"])
    block = os.urandom(spec["size"])
    for _ in range(spec["count"]):
        sock.send(block, copy=False)
    sock.close()
    ctx.term()
    return {}


def worker_direct_sink(spec: dict) -> dict:
    """The direct file channel's supervisor end alone: offer, accept, receive `count` messages of
    4 × 1 MiB (as ReadChunks replies come); time from the first to the last."""
    from radium.remoting.run import direct

    offer = direct.Offer(spec["host"])
    print(offer.port, offer.key.hex(), flush=True)
    link = offer.accept()
    if link is None:
        raise RuntimeError("nobody connected")
    first = sum(map(len, link.receive()[1]))
    t0 = time.perf_counter()
    total = 0
    for _ in range(spec["count"] - 1):
        total += sum(map(len, link.receive()[1]))
    seconds = time.perf_counter() - t0
    link.close()
    return {"bytes": total, "seconds": seconds, "first": first}


def worker_direct_source(spec: dict) -> dict:
    """The client end: connect, send the messages from 4 threads (as the client's pool answers)."""
    import threading

    from radium.remoting.run import direct

    link = direct.connect(spec["host"], spec["port"], bytes.fromhex(spec["key"]))
    chunks = [os.urandom(1 << 20) for _ in range(4)]
    counts = [spec["count"] // 4 + (i < spec["count"] % 4) for i in range(4)]
    threads = [
        threading.Thread(target=lambda n: [link.send(1, [b"reply", *chunks]) for _ in range(n)], args=(n,))
        for n in counts
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    link.close()
    return {}


WORKERS = {
    "starts": worker_starts,
    "cold": worker_cold,
    "many": worker_many,
    "curve-sink": worker_curve_sink,
    "curve-source": worker_curve_source,
    "direct-sink": worker_direct_sink,
    "direct-source": worker_direct_source,
}


def stage_costs(folder: Path, mib: int = 64) -> dict[str, float]:
    """One core's speed (MB/s) at each CPU step a cold chunk takes, measured alone, in this process.

    client: hash a file on lookup (BLAKE3), answer ReadChunks of 8 × 1 MiB (read, hash again for
    its "delivered" set, encode); appliance: decode the reply, verify each chunk's hash and write
    it into a ContentStore (as the supervisor does).  Encryption is measured by the CurveZMQ stream.
    """
    from radium.remoting.run import fsproto
    from radium.remoting.run.cas import ContentStore
    from radium.remoting.run.files import FileServer

    size = mib << 20
    path = folder / "stage.bin"
    path.write_bytes(os.urandom(size))
    try:
        server = FileServer(root="/", serve_mounts=[str(folder)], cwd=str(folder))
        name = os.fsencode(str(path))
        t = time.perf_counter()
        attr = server.handle(fsproto.Lookup(path=name, content=True))
        lookup = time.perf_counter() - t
        assert isinstance(attr, fsproto.Attr) and attr.chunks is not None
        digests = iter(attr.chunks)  # the supervisor knows them from the lookup: put() verifies
        bodies = []
        t = time.perf_counter()
        for first in range(0, mib, 8):
            reply = server.handle(
                fsproto.ReadChunks(path=name, indexes=list(range(first, min(mib, first + 8))))
            )
            bodies.append(fsproto.encode(reply))
        answer = time.perf_counter() - t
        store = ContentStore(folder / "cas", 4 * size)
        t = time.perf_counter()
        for body in bodies:
            chunks = fsproto.decode_reply(body)
            assert isinstance(chunks, fsproto.Chunks)
            for data in chunks.data:
                store.put(next(digests), data)
        stored = time.perf_counter() - t
    finally:
        path.unlink(missing_ok=True)
        shutil.rmtree(folder / "cas", ignore_errors=True)
    return {
        "client_lookup_hash": size / lookup / MB,
        "client_read_chunks": size / answer / MB,
        "appliance_verify_store": size / stored / MB,
    }
