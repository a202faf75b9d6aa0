"""`radium run` benchmark (issue 3, "Performance"): warm start, cold transfer, steady state.

Everything runs over the two-host topology of `radium.lab.netns` (a client and an
appliance network namespace joined by a veth pair shaped with tbf to 4.75 Gbit/s), with a
real radiumd (the `Appliance` of tests/support.py) in the appliance namespace and every
client command started inside the client namespace.  Three measurements, each against a
baseline taken in the same run:

1. warm start: `radium run -- python3 -c pass` in an unchanged project (a private tmpfs
   only the client's mount namespace sees), median of the runs after two warm-ups, minus
   the same command run locally; and the cold first run (fresh appliance, fresh client
   state).  `--stats` gives the bytes moved and the supervisor's phases; radiumd's log
   (lease granted, run started/ended) splits the rest of the wall time.
2. cold transfer: a process reading a 1 GiB tree (64 files × 16 MiB of random data on the
   client's private tmpfs) through `radium run` against a freshly started appliance (new
   state directory: an empty content store), in MB/s against iperf3 over the same link.
3. steady state: a PyTorch (CPU) ResNet-20 training loop (benchmarks/resnet.py) run
   locally and through `radium run` with the client's own venv python, alternately (ABBA
   order: by default 4 pairs of runs, each 10 warm-up steps then 25 timed ones); images/s
   remote over local, pooled over the timed steps.  Skipped, with a note, when torch is
   not installed (`pip install torch==2.13.0`, the `bench` extra).

Run it with `./dev bench` (all benchmarks) or `python -m benchmarks.run_remote`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import ROOT, standalone, worker_result

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
    r"file requests (\d+), bytes fetched (\d+), cache hits (\d+), misses (\d+), "
    r"written back (\d+), output (\d+); ?(.*)$"
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
            keys = ("fs_requests", "bytes_fetched", "cache_hits", "cache_misses", "written_back", "output")
            out: dict[str, Any] = dict(zip(keys, map(int, m.groups()[:6]), strict=True))
            out["phases"] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)s", m.group(7))}
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


WORKERS = {
    "starts": worker_starts,
    "cold": worker_cold,
    "curve-sink": worker_curve_sink,
    "curve-source": worker_curve_source,
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


class CpuSampler:
    """CPU time of every process on the machine, sampled from /proc in a thread while a command runs.

    Each sample's deltas are put in one of three groups: the training process (`python -m
    marker ...`), this benchmark's other processes (descendants of this one: radiumd, the
    supervisor, the `radium` CLI, this driver), and everything else (other users of the machine,
    kernel threads); plus "steal", the time the hypervisor gave this VM's vCPUs to others
    (/proc/stat), which slows whatever runs meanwhile.  `window(t0, t1)` sums the CPU
    seconds of the samples taken in [t0, t1].
    """

    def __init__(self, marker: str, interval: float = 0.5) -> None:
        import threading

        self.marker, self.interval = marker, interval
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _read() -> dict[int, tuple[int, int, list[str]]]:
        """pid -> (ppid, utime + stime in ticks, argv)."""
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
                argv = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), argv)
        return out

    @staticmethod
    def _steal() -> int:
        """Ticks stolen from this VM's vCPUs by the hypervisor, all vCPUs, since boot."""
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) if len(fields) > 8 else 0

    def _loop(self) -> None:
        me = os.getpid()
        prev, prev_steal = self._read(), self._steal()
        while not self._stop.wait(self.interval):
            now, cur, steal = time.time(), self._read(), self._steal()
            groups = {"train": 0.0, "bench": 0.0, "other": 0.0, "steal": (steal - prev_steal) / self.tick}
            prev_steal = steal
            for pid, (_ppid, ticks, argv) in cur.items():
                delta = ticks - prev[pid][1] if pid in prev else 0
                if delta <= 0:
                    continue
                ours, p, seen = False, pid, 0
                while p > 1 and seen < 64:  # walk up to this driver, or to init
                    if p == me:
                        ours = True
                        break
                    p, seen = cur.get(p, (0, 0, []))[0], seen + 1
                group = "train" if argv[1:3] == ["-m", self.marker] else "bench" if ours else "other"
                groups[group] += delta / self.tick
            self.samples.append((now, groups))
            prev = cur

    def window(self, t0: float, t1: float) -> dict[str, float]:
        total = {"train": 0.0, "bench": 0.0, "other": 0.0, "steal": 0.0}
        for ts, groups in self.samples:
            if t0 + self.interval <= ts <= t1 + self.interval / 2:  # samples covering [t0, t1]
                for k, v in groups.items():
                    total[k] += v
        return total


# ================================================================ the driver (root namespace)


class Bench:
    """One run: a topology, radiumd (fresh for the cold transfer), and the workers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="radium-bench-run-"))
        self.topo: Any = None
        self.app: Any = None
        self.apps: list[Any] = []
        self.children: list[subprocess.Popen] = []
        self._specs = 0

    # --- plumbing ---------------------------------------------------------------

    def log(self, text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _spec(self, mode: str, spec: dict) -> Path:
        self._specs += 1
        path = self.tmp / f"{self._specs:02d}-{mode}.json"
        path.write_text(json.dumps(spec))
        return path

    def _argv(self, mode: str, spec: dict) -> list[str]:
        return [PY, "-m", MODULE, "--worker", mode, "--spec", str(self._spec(mode, spec))]

    def hidden_worker(self, mode: str, spec: dict, mount: str, size: str, timeout: float) -> dict:
        """A worker in the client namespace and a private mount namespace with a tmpfs at `mount`."""
        script = (
            f"set -e\nmkdir -p {mount}\nmount -t tmpfs -o size={size} tmpfs {mount}\n"
            f"cd {shlex.quote(str(ROOT))}\nexec {shlex.join(self._argv(mode, spec))}\n"
        )
        argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]
        out = self.topo.client.run(argv, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"worker {mode} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
        return worker_result(out.stdout)

    def client_env(self, client: Any) -> dict[str, str]:
        """The environment of every client command: a system PATH, no bytecode writes."""
        env = dict(client.env(), PATH=STD_PATH, PYTHONDONTWRITEBYTECODE="1")
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        return env

    # --- setup and teardown -------------------------------------------------------

    def setup(self) -> None:
        from radium.lab import netns

        netns.cleanup_stale()
        self.topo = netns.create_topology()
        self.log(
            f"topology: {self.topo.client.name} {self.topo.client.address} <-> "
            f"{self.topo.appliance.name} {self.topo.appliance.address}, tbf {self.topo.rate}"
        )

    def start_appliance(self, name: str) -> Any:
        """A radiumd with a fresh state directory (an empty content store) and a fresh client."""
        from benchmarks.control_plane import _support

        support = _support()
        if self.app is not None:
            self.app.stop()
        t = time.perf_counter()
        self.app = support.Appliance(
            self.tmp / name,
            name=name,
            host=self.topo.appliance,
            address=self.topo.appliance.address,
            port=APPLIANCE_PORT,
        ).start()
        self.apps.append(self.app)
        client = support.Client(
            self.app.enroll("bench"), self.tmp / f"client-state-{name}", host=self.topo.client
        )
        self.log(
            f"radiumd {name} serving at {self.app.endpoint} ({time.perf_counter() - t:.1f} s), "
            "client enrolled"
        )
        time.sleep(KEYS_SETTLE_S)
        return client

    def close(self) -> None:
        from benchmarks.control_plane import _support

        _support().stop_run_agents(str(self.tmp))  # the client's run agents (their state is in tmp)
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.poll() is None:
                proc.kill()
        for app in self.apps:
            if app.proc is not None:
                with contextlib.suppress(Exception):
                    app.stop("KILL" if app.proc.poll() is None else "TERM")
        try:
            if self.topo is not None:
                self.topo.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for point in (PROJECT, DATA):  # the empty mount points the private tmpfs covered
                with contextlib.suppress(OSError):
                    os.rmdir(point)

    # --- baselines of the link -------------------------------------------------------

    def iperf(self) -> dict:
        a = self.topo.appliance.address
        server = self.topo.appliance.popen(
            ["iperf3", "-s", "-B", a, "-p", str(IPERF_PORT), "-1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.children.append(server)
        try:
            for _ in range(50):  # until it listens (a probe connection would end a -1 server)
                probe = self.topo.appliance.run(
                    ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], capture_output=True, text=True
                )
                if probe.stdout.strip():
                    break
                time.sleep(0.1)
            out = self.topo.client.run(
                [
                    "iperf3",
                    "-c",
                    a,
                    "-p",
                    str(IPERF_PORT),
                    "-t",
                    str(self.args.iperf_seconds),
                    "-O",
                    "1",
                    "-J",
                ],
                capture_output=True,
                text=True,
                timeout=self.args.iperf_seconds + 30,
            )
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
            if server.poll() is None:
                server.kill()
        if out.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        end = json.loads(out.stdout)["end"]
        return {
            "received_MBps": end["sum_received"]["bits_per_second"] / 8 / MB,
            "sent_MBps": end["sum_sent"]["bits_per_second"] / 8 / MB,
            "retransmits": end["sum_sent"].get("retransmits"),
            "seconds": self.args.iperf_seconds,
        }

    def zmq_stream(self, curve: bool) -> dict:
        """Raw (Curve)ZMQ PUSH→PULL of 1 MiB messages across the link: the transport alone, no radium."""
        import zmq

        public, secret = zmq.curve_keypair() if curve else (b"", b"")
        endpoint = f"tcp://{self.topo.appliance.address}:{CURVE_PORT}"
        count = self.args.curve_mib
        sink = self.topo.appliance.popen(
            self._argv(
                "curve-sink",
                {"public": public.decode(), "secret": secret.decode(), "listen": endpoint, "count": count},
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.children.append(sink)
        if sink.stdout.readline().strip() != "ready":
            raise RuntimeError("ZMQ sink did not start")
        src = self.topo.client.run(
            self._argv(
                "curve-source",
                {"server": public.decode(), "endpoint": endpoint, "size": 1 << 20, "count": count},
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if src.returncode != 0:
            raise RuntimeError(f"ZMQ source failed: {src.stderr[-2000:]}")
        stdout, _ = sink.communicate(timeout=60)
        r = worker_result(stdout)
        return {"MBps": r["bytes"] / r["seconds"] / MB, "bytes": r["bytes"], "seconds": r["seconds"]}

    def import_times(self) -> dict:
        """Process start + imports of the CLI (client) and of the supervisor (appliance): median of 3;
        and how fast one core hashes 1 MiB chunks (BLAKE3, as the file plane does)."""
        from radium.remoting.run import fsproto

        def median_wall(host: Any, code: str) -> float:
            walls = []
            for _ in range(3):
                t = time.perf_counter()
                out = host.run([PY, "-c", code], capture_output=True, cwd=ROOT)
                walls.append(time.perf_counter() - t)
                if out.returncode != 0:
                    raise RuntimeError(f"{code!r} failed: {out.stderr[-2000:]}")
            return statistics.median(walls)

        chunk = os.urandom(1 << 20)
        t = time.perf_counter()
        for _ in range(128):
            fsproto.chunk_hash(chunk)
        hash_mbps = 128 * len(chunk) / (time.perf_counter() - t) / MB
        return {
            "blake3_MBps": hash_mbps,
            "python_pass": median_wall(self.topo.client, "pass"),
            "cli": median_wall(self.topo.client, "import radium.remoting.cli, radium.remoting.client.run"),
            "supervisor": median_wall(self.topo.appliance, "import radium.remoting.run.supervisor"),
        }

    # --- the benchmarks -------------------------------------------------------------

    def timeline(self, run: dict) -> dict[str, float]:
        """radiumd's log events of one `radium run` (its run and lease ids), as seconds from its start."""
        lines = list(self.app.lines)
        started = [
            e for e in lines if e.get("event") == "run started" and run["t0"] <= e.get("ts", 0) <= run["t1"]
        ]
        marks: dict[str, float] = {"exit": run["t1"] - run["t0"]}
        if len(started) != 1:
            return marks
        run_id, lease_id = started[0].get("run"), started[0].get("lease")
        for e in lines:
            name = e.get("event")
            if (name == "run started" and e.get("run") == run_id) or (
                name == "run ended" and e.get("run") == run_id
            ):
                marks[name] = e["ts"] - run["t0"]
            elif name in ("lease granted", "lease released") and e.get("lease") == lease_id:
                marks.setdefault(name, e["ts"] - run["t0"])
        return marks

    def starts(self, client: Any) -> dict:
        a = self.args
        spec = {
            "project": PROJECT,
            "env": self.client_env(client),
            "command": START_COMMAND,
            "n": a.run_starts,
            "warmup": a.run_start_warmups,
        }
        r = self.hidden_worker("starts", spec, PROJECT, "64m", timeout=600)
        for run in r["remote"]:
            run["timeline"] = self.timeline(run)
        warm = r["remote"][1 + a.run_start_warmups :]
        local = r["local"][1 + a.run_start_warmups :]
        out = {
            "cold": r["remote"][0],
            "warmups": r["remote"][1 : 1 + a.run_start_warmups],
            "warm": warm,
            "warm_median": statistics.median(x["wall"] for x in warm),
            "local_median": statistics.median(local),
            "local": r["local"],
        }
        out["overhead"] = out["warm_median"] - out["local_median"]
        self.log(
            f"start: cold {out['cold']['wall']:.3f} s, warm median {out['warm_median']:.3f} s, "
            f"local median {out['local_median']:.3f} s: overhead {out['overhead']:.3f} s"
        )
        return out

    def resnet(self, client: Any) -> dict:
        a = self.args
        env = self.client_env(client)
        argv = [PY, "-m", "benchmarks.resnet", "--steps", str(a.run_steps), "--batch", str(a.run_batch),
                "--warmup", "10"]  # fmt: skip
        rounds: list[dict] = []
        for i in range(a.run_rounds):
            pair = {}
            for where in ("local", "remote") if i % 2 == 0 else ("remote", "local"):  # ABBA order
                cmd = argv if where == "local" else [RADIUM, "run", "--stats", "--", *argv]
                with CpuSampler("benchmarks.resnet") as cpu:
                    r = timed(
                        self.topo.client.command(cmd), self.topo.client.name, cwd=ROOT, env=env, timeout=900
                    )
                _check(r, f"ResNet-20 {where}")
                r["result"] = res = json.loads(r["stdout"].strip().splitlines()[-1])
                r["cpu"] = cpu.window(res["timed_start_unix"], res["timed_start_unix"] + res["timed_wall_s"])
                del r["stdout"], r["stderr"]
                pair[where] = r
                self.log(
                    f"ResNet-20 round {i + 1} {where}: {r['result']['images_per_s']:.1f} images/s "
                    f"(import {r['result']['import_s']:.1f} s, wall {r['wall']:.1f} s)"
                )
            rounds.append(pair)

        def pooled(where: str) -> float:
            images = sum(p[where]["result"]["steps"] * p[where]["result"]["batch"] for p in rounds)
            return images / sum(p[where]["result"]["timed_wall_s"] for p in rounds)

        def by_median_step(where: str) -> float:
            steps = [s for p in rounds for s in p[where]["result"]["step_s"]]
            return a.run_batch / statistics.median(steps)

        return {
            "rounds": rounds,
            "local": pooled("local"),
            "remote": pooled("remote"),
            "local_median_step": by_median_step("local"),
            "remote_median_step": by_median_step("remote"),
            "ratios": [
                p["remote"]["result"]["images_per_s"] / p["local"]["result"]["images_per_s"] for p in rounds
            ],
        }

    def cold(self, client: Any) -> dict:
        a = self.args
        spec = {
            "data": DATA,
            "files": a.run_files,
            "file_bytes": a.run_file_mib << 20,
            "env": self.client_env(client),
        }
        size = f"{(a.run_files * a.run_file_mib) + 64}m"
        r = self.hidden_worker("cold", spec, DATA, size, timeout=900)
        for run in r["runs"].values():
            if run.get("stats"):
                run["timeline"] = self.timeline(run)
        total = a.run_files * (a.run_file_mib << 20)
        for name, run in r["runs"].items():
            rd = run["reader"]
            if rd["bytes"] != total:
                raise RuntimeError(f"{name} read {rd['bytes']} bytes, expected {total}")
            run["reader_MBps"] = rd["bytes"] / rd["seconds"] / MB
            run["wall_MBps"] = rd["bytes"] / run["wall"] / MB
            self.log(
                f"1 GiB tree, {name}: {run['reader_MBps']:.0f} MB/s in the process, "
                f"{run['wall_MBps']:.0f} MB/s over the whole run ({run['wall']:.1f} s)"
            )
        r["bytes"] = total
        return r

    def run(self) -> dict:
        a = self.args
        r: dict[str, Any] = {}
        r["iperf"] = self.iperf()
        self.log(f"iperf3 client -> appliance: {r['iperf']['received_MBps']:.0f} MB/s")
        r["curve"] = self.zmq_stream(curve=True)
        self.log(f"raw CurveZMQ stream client -> appliance: {r['curve']['MBps']:.0f} MB/s")
        r["plain"] = self.zmq_stream(curve=False)
        self.log(f"raw ZMQ stream (no encryption) client -> appliance: {r['plain']['MBps']:.0f} MB/s")
        r["imports"] = self.import_times()
        r["stages"] = stage_costs(self.tmp)

        client = self.start_appliance("app1")
        r["starts"] = self.starts(client)
        if a.torch:
            r["resnet"] = self.resnet(client)

        # A new radiumd with a new state directory: its content store is empty.
        client = self.start_appliance("app2")
        r["cold"] = self.cold(client)
        return r


# ====================================================================== the report


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def _mbps(v: float) -> str:
    return f"{v:,.0f} MB/s"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _moved(run: dict) -> str:
    st = run.get("stats") or {}
    return (
        f"{st.get('fs_requests', 0)} file requests, fetched {_bytes(st.get('bytes_fetched', 0))}, "
        f"chunk hits/misses {st.get('cache_hits', 0)}/{st.get('cache_misses', 0)}, "
        f"on the wire {_bytes(run['wire_tx'])} out / {_bytes(run['wire_rx'])} in"
    )


def breakdown(run: dict) -> dict[str, float]:
    """One run's wall time in consecutive pieces, from radiumd's log and the supervisor's phases."""
    tl, ph = run.get("timeline", {}), (run.get("stats") or {}).get("phases", {})
    if not all(k in tl for k in ("lease granted", "run started", "lease released")):
        return {}
    out = {
        "client start+connect+lease": tl["lease granted"],
        "RunStart+spawn": tl["run started"] - tl["lease granted"],
        "supervisor start-up": tl["lease released"] - tl["run started"] - sum(ph.values()),
        "prefetch": ph.get("prefetch", 0.0),
        "mount": ph.get("mount", 0.0),
        "process": ph.get("run", 0.0),
        "write-back": ph.get("writeback", 0.0),
        "release+client exit": tl["exit"] - tl["lease released"],
    }
    if "run ended" in tl:
        out["(after: supervisor teardown)"] = tl["run ended"] - tl["lease released"]
    return out


def _pieces(parts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in parts.items()) or "(no timeline)"


def report(r: dict, args: argparse.Namespace) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 130)
    st, iperf = r["starts"], r["iperf"]["received_MBps"]
    curve, plain = r["curve"]["MBps"], r["plain"]["MBps"]
    cold = r["cold"]["runs"]
    gib = r["cold"]["bytes"] / (1 << 30)
    tree = f"{args.run_files} × {args.run_file_mib} MiB"

    def verdict(ok: bool, text: str) -> str:
        return f"{text} {'met' if ok else 'MISSED'}"

    rows: list[tuple[str, str, str, str, str]] = [
        (
            f"warm start `python3 -c pass`: median of {len(st['warm'])}",
            _s(st["warm_median"]),
            _s(st["local_median"]),
            f"{st['warm_median'] / st['local_median']:.1f}×",
            verdict(st["overhead"] <= 0.3, f"overhead {st['overhead']:.3f} s ≤ 0.3 s:"),
        ),
        (
            "cold first run (fresh appliance and client state)",
            _s(st["cold"]["wall"]),
            _s(st["local_median"]),
            f"{st['cold']['wall'] / st['local_median']:.1f}×",
            f"overhead {st['cold']['wall'] - st['local_median']:.3f} s (report)",
        ),
        (
            f"cold read {gib:g} GiB ({tree}), in the process",
            _mbps(cold["cold"]["reader_MBps"]),
            _mbps(iperf),
            f"{cold['cold']['reader_MBps'] / iperf:.2f}",
            verdict(cold["cold"]["reader_MBps"] / iperf >= 0.9, "≥ 0.90 of iperf3:"),
        ),
        (
            f"cold read {gib:g} GiB, whole `radium run` wall",
            _mbps(cold["cold"]["wall_MBps"]),
            _mbps(iperf),
            f"{cold['cold']['wall_MBps'] / iperf:.2f}",
            "(report)",
        ),
        (
            f"warm re-read {gib:g} GiB (content in the store)",
            _mbps(cold["warm"]["reader_MBps"]),
            _mbps(iperf),
            f"{cold['warm']['reader_MBps'] / iperf:.2f}",
            "(report)",
        ),
        ("raw CurveZMQ stream, no radium", _mbps(curve), _mbps(iperf), f"{curve / iperf:.2f}", "(context)"),
        ("raw ZMQ stream, unencrypted", _mbps(plain), _mbps(iperf), f"{plain / iperf:.2f}", "(context)"),
    ]
    if "resnet" in r:
        rn = r["resnet"]
        rows.append(
            (
                f"ResNet-20 train, batch {args.run_batch}: images/s",
                f"{rn['remote']:.1f}/s",
                f"{rn['local']:.1f}/s",
                f"{rn['remote'] / rn['local']:.3f}",
                verdict(rn["remote"] / rn["local"] >= 0.98, "≥ 0.98:"),
            )
        )
        rows.append(
            (
                "ResNet-20 train: batch / median step",
                f"{rn['remote_median_step']:.1f}/s",
                f"{rn['local_median_step']:.1f}/s",
                f"{rn['remote_median_step'] / rn['local_median_step']:.3f}",
                "(report: robust to stalls)",
            )
        )
    else:
        rows.append(("ResNet-20 train: images/s", "skipped", "-", "-", "torch is not installed (see note)"))
    table = Table(
        title="radium run, two-host topology (veth, tbf 4.75 Gbit/s); ratio = value / baseline",
        box=box.SIMPLE_HEAD,
    )
    for col, justify in (("metric", "left"), ("value", "right"), ("baseline", "right"), ("ratio", "right"),
                         ("target", "left")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(
        "baselines: starts = the same command run locally in the client namespace (median); transfer = "
        f"iperf3 client -> appliance, one TCP stream, {r['iperf']['seconds']} s"
        + (
            "; images/s = the same loop run locally, alternating with the remote runs"
            if "resnet" in r
            else ""
        )
    )
    print(f"cold first run: {_moved(st['cold'])}")
    print(f"  wall {st['cold']['wall']:.3f} s = {_pieces(breakdown(st['cold']))}")
    parts = [breakdown(x) for x in st["warm"]]
    keys = [k for k in parts[0] if all(k in p for p in parts)] if parts and parts[0] else []
    median_parts = {k: statistics.median(p[k] for p in parts) for k in keys}
    mid = st["warm"][len(st["warm"]) // 2]
    print(f"warm runs: {_moved(mid)} (a typical one)")
    print(f"  wall {st['warm_median']:.3f} s (median) = medians of {_pieces(median_parts)}")
    print("  walls " + " ".join(f"{x['wall']:.3f}" for x in st["warm"]))
    im = r["imports"]
    print(
        "process start + imports (median of 3, through ip netns exec): "
        f"python -c pass {im['python_pass']:.3f} s, CLI modules {im['cli']:.3f} s, "
        f"supervisor modules {im['supervisor']:.3f} s; BLAKE3 on one core: {im['blake3_MBps']:,.0f} MB/s"
    )
    sc = r["stages"]
    print(
        "one core per step of a cold chunk (measured alone): client hash on lookup "
        f"{sc['client_lookup_hash']:,.0f} MB/s, client ReadChunks answer "
        f"{sc['client_read_chunks']:,.0f} MB/s, "
        f"appliance decode+verify+store {sc['appliance_verify_store']:,.0f} MB/s; "
        f"CurveZMQ stream {curve:,.0f} MB/s; FUSE read from the store (warm re-read) "
        f"{cold['warm']['reader_MBps']:,.0f} MB/s"
    )
    c = cold["cold"]
    per_file = c["reader"]["per_file"]
    print(f"cold read: {_moved(c)}")
    print(f"  wall {c['wall']:.3f} s = {_pieces(breakdown(c))}")
    print(
        f"  per file: first {per_file[0]:.3f} s, median {statistics.median(per_file):.3f} s, "
        f"max {max(per_file):.3f} s; the same reader locally on the tmpfs: "
        f"{cold['local']['reader_MBps']:,.0f} MB/s; making the tree took {r['cold']['made_s']:.1f} s"
    )
    print(f"warm re-read: {_moved(cold['warm'])}")
    print(f"  wall {cold['warm']['wall']:.3f} s = {_pieces(breakdown(cold['warm']))}")
    if "resnet" in r:
        rn = r["resnet"]
        for i, p in enumerate(rn["rounds"]):
            lo, rem = p["local"]["result"], p["remote"]["result"]
            print(
                f"ResNet-20 round {i + 1}: local {lo['images_per_s']:.1f}/s, "
                f"remote {rem['images_per_s']:.1f}/s "
                f"(ratio {rn['ratios'][i]:.3f}; {lo['steps']} timed steps after {lo['warmup']} warm-up, "
                f"{lo['threads']} threads, {lo['parameters']:,} parameters); import torch: "
                f"local {lo['import_s']:.2f} s, remote {rem['import_s']:.2f} s; "
                f"remote run: {_moved(p['remote'])}"
            )
            for where in ("local", "remote"):
                cpu, wall = p[where]["cpu"], p[where]["result"]["timed_wall_s"]
                cores = os.cpu_count() or 1
                print(
                    f"  CPU during the {where} timed loop ({wall:.1f} s; {cores * wall:.1f} CPU-s "
                    f"on {cores} cores): "
                    f"training {cpu['train']:.1f} s, this benchmark's other processes {cpu['bench']:.2f} s, "
                    f"the rest of the machine {cpu['other']:.2f} s; stolen by the hypervisor "
                    f"{cpu.get('steal', 0.0):.2f} s"
                )
    else:
        print(
            "ResNet-20 skipped: torch is not installed in this venv; `.venv/bin/pip install torch==2.13.0` "
            "(the `bench` extra) to run it"
        )
    print(f"run_remote: {r['wall_s']:.0f} s in all")


# ====================================================================== entry points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run_remote")
    if "--quick" not in parser._option_string_actions:  # control_plane's --quick serves both
        g.add_argument("--quick", action="store_true", help="smoke test: fewer runs, a smaller tree")
    g.add_argument("--run-starts", type=int, default=None, help="timed warm starts (10)")
    g.add_argument("--run-start-warmups", type=int, default=2, help="warm-up runs after the cold one (2)")
    g.add_argument("--run-files", type=int, default=None, help="files of the cold tree (64)")
    g.add_argument("--run-file-mib", type=int, default=16, help="MiB per file of the cold tree (16)")
    g.add_argument("--run-steps", type=int, default=None, help="timed ResNet-20 steps per run (25)")
    g.add_argument("--run-batch", type=int, default=64, help="ResNet-20 batch size (64)")
    g.add_argument(
        "--run-rounds", type=int, default=None, help="local+remote ResNet-20 run pairs, in ABBA order (4)"
    )
    g.add_argument("--run-json", type=Path, help="also write the results to this file")


def run(args: argparse.Namespace) -> int:
    from benchmarks.control_plane import machine, revision
    from radium.lab import netns

    ok, why = netns.can_create_namespaces()
    if not ok:
        print(f"run_remote: cannot build the two-host topology: {why}", file=sys.stderr)
        return 1
    if shutil.which("iperf3") is None:
        print("run_remote: iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 1
    quick = getattr(args, "quick", False)
    args.run_starts = args.run_starts or (3 if quick else 10)
    args.run_files = args.run_files or (16 if quick else 64)
    args.run_steps = args.run_steps or (10 if quick else 25)
    args.run_rounds = args.run_rounds or (1 if quick else 4)
    args.iperf_seconds = 2 if quick else 4
    args.curve_mib = 256 if quick else 768
    args.torch = importlib.util.find_spec("torch") is not None
    started = time.monotonic()
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"  {when}; {machine()}; radium {revision()}", flush=True)
    bench = Bench(args)
    try:
        bench.setup()
        results = bench.run()
    finally:
        bench.close()
    results["date"], results["machine"], results["revision"] = when, machine(), revision()
    results["wall_s"] = time.monotonic() - started
    report(results, args)
    if args.run_json:
        args.run_json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(MODULE, __doc__, WORKERS, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
