"""Control-plane benchmark (issue 2): list-gpus, lease latency, 64 concurrent clients.

Everything runs over the two-host topology of `radium.lab.netns`: a real radiumd (the
`Appliance` of tests/support.py) in the appliance namespace, and the client side in
worker processes started inside the client namespace
(`ip netns exec <ns> python -m benchmarks.control_plane --worker MODE --spec FILE`),
each printing its results as one JSON document.  The baseline of every metric is
measured in the same run over the same link: a raw CurveZMQ DEALER/ROUTER ping-pong
with a tiny echo server in the appliance namespace (no radium code on either side).

Run it with `./dev bench` (all benchmarks) or `python -m benchmarks.control_plane`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

from benchmarks import ROOT, standalone, worker_result

PY = sys.executable
MODULE = "benchmarks.control_plane"
APPLIANCE_PORT = 7450
ECHO_PORT = 7451
FRACTION = 0.25
KEYS_SETTLE_S = 3.0

# The smallest program that does what `radium list-gpus` does on the wire: a fresh
# Python process that imports pyzmq, makes a CURVE connection and does one round trip.
COLD_PING = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
pub, sec = zmq.curve_keypair()
s.curve_serverkey, s.curve_publickey, s.curve_secretkey = sys.argv[2].encode(), pub, sec
s.linger, s.rcvtimeo = 0, 5000
s.connect(sys.argv[1])
s.send_multipart([b"h" * 12, b"b" * 24])
s.recv_multipart()
s.close()
ctx.term()
"""


# =============================================================================== helpers


def _support():
    """tests/support.py (Appliance, Client): shared with the tests, not copied."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import support

    return support


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def _curve_client(sock: zmq.Socket, server_public: str) -> None:
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_public.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.linger = 0


async def _sleep_until(when: float) -> float:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    return time.monotonic()


# ======================================================= workers (run inside a namespace)


def worker_echo_server(spec: dict) -> None:
    """The baseline's server: echo the header frame, answer a body of `reply_bytes`."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_publickey = spec["public"].encode()
    sock.curve_secretkey = spec["secret"].encode()
    sock.linger = 0
    sock.bind(spec["listen"])
    body = b"r" * spec["reply_bytes"]
    print("ready", flush=True)
    while True:
        frames = sock.recv_multipart()
        sock.send_multipart([frames[0], frames[1], body])


def worker_ping(spec: dict) -> dict:
    """Sequential raw CurveZMQ round trips from one DEALER (blocking pyzmq, no asyncio)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    _curve_client(sock, spec["server_public"])
    sock.rcvtimeo = 5000
    sock.connect(spec["endpoint"])
    frames = [b"h" * spec["header_bytes"], b"b" * spec["request_bytes"]]
    samples = []
    for i in range(spec["warmup"] + spec["n"]):
        t0 = time.perf_counter()
        sock.send_multipart(frames)
        sock.recv_multipart()
        if i >= spec["warmup"]:
            samples.append(time.perf_counter() - t0)
    sock.close()
    ctx.term()
    return {"rtt": samples}


async def worker_ping_concurrent(spec: dict) -> dict:
    """`clients` raw CurveZMQ DEALERs in one asyncio loop, each ping-ponging until stop."""
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    frames = [b"h" * spec["header_bytes"], b"b" * spec["request_bytes"]]
    socks = []
    for _ in range(spec["clients"]):
        sock = ctx.socket(zmq.DEALER)
        _curve_client(sock, spec["server_public"])
        sock.connect(spec["endpoint"])
        socks.append(sock)

    async def ping(sock) -> None:
        await sock.send_multipart(frames)
        await asyncio.wait_for(sock.recv_multipart(), 10)

    await asyncio.gather(*(ping(s) for s in socks))  # handshakes done before the clock starts
    start = await _sleep_until(spec["start_at"])
    stop = spec["start_at"] + spec["duration"]

    async def loop(sock) -> int:
        n = 0
        while time.monotonic() < stop:
            await ping(sock)
            n += 1
        return n

    counts = await asyncio.gather(*(loop(s) for s in socks))
    for sock in socks:
        sock.close()
    ctx.term()
    return {"round_trips": sum(counts), "start": start, "stop": stop}


async def _connect(bundle: str):
    from radium.remoting._config import load_client_config
    from radium.remoting.client.connection import Connection

    config = load_client_config(Path(bundle))
    return await Connection(config.appliances[0], config.keys).open()


async def worker_list_devices(spec: dict) -> dict:
    """`ListDevices` round trips over one open Connection; also the appliance's state."""
    from radium.remoting import _schema as s
    from radium.remoting import _wire as wire

    conn = await _connect(spec["bundle"])
    samples = []
    reply = None
    try:
        for i in range(spec["warmup"] + spec["n"]):
            t0 = time.perf_counter()
            reply = await conn.request(s.ListDevices(usage=False), timeout=10)
            if i >= spec["warmup"]:
                samples.append(time.perf_counter() - t0)
    finally:
        await conn.close()
    assert isinstance(reply, s.DeviceList)
    request_frames = wire.encode(s.ListDevices(usage=False), 1)
    return {
        "rtt": samples,
        "header_bytes": len(request_frames[0]),
        "request_bytes": len(request_frames[1]),
        "reply_bytes": len(wire.encode(reply, 1)[1]),
        "devices": {st.device.id: st.device.memory_bytes for st in reply.devices},
        "health": {st.device.id: st.device.health for st in reply.devices},
        "memory_allocated_bytes": sum(st.memory_allocated_bytes for st in reply.devices),
        "leases": sum(len(st.leases) for st in reply.devices),
        "queue_length": reply.queue_length,
    }


def worker_cli(spec: dict) -> dict:
    """Wall time of `radium list-gpus --json` vs a fresh process doing one CurveZMQ ping."""
    client = _support().Client(Path(spec["bundle"]), Path(spec["state"]))
    cold_argv = [PY, "-c", COLD_PING, spec["echo_endpoint"], spec["echo_public"]]
    cli, cold = [], []
    for i in range(spec["n"] + 1):  # the first of each warms the page cache
        t0 = time.perf_counter()
        out = subprocess.run(cold_argv, capture_output=True, text=True, timeout=30)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"cold ping failed: {out.stderr}")
        if i:
            cold.append(took)
        t0 = time.perf_counter()
        out = client.run("list-gpus", "--json", timeout=30)
        took = time.perf_counter() - t0
        if out.returncode != 0 or len(json.loads(out.stdout)["devices"]) != spec["devices"]:
            raise RuntimeError(f"radium list-gpus failed ({out.returncode}): {out.stdout}{out.stderr}")
        if i:
            cli.append(took)
    return {"cli": cli, "cold": cold}


async def worker_lease(spec: dict) -> dict:
    """Acquire(count=1, fraction) then Release, over one open session."""
    from radium.remoting import _schema as s
    from radium.remoting.client.session import Session

    conn = await _connect(spec["bundle"])
    session = await Session(conn).open()
    request = s.AllocationRequest(count=1, fraction=spec["fraction"])
    pairs, acquires = [], []
    try:
        for i in range(spec["warmup"] + spec["n"]):
            t0 = time.perf_counter()
            lease = await session.acquire(request, timeout=0)
            t1 = time.perf_counter()
            await session.release(lease.id)
            if i >= spec["warmup"]:
                pairs.append(time.perf_counter() - t0)
                acquires.append(t1 - t0)
    finally:
        await session.close()
        await conn.close()
    return {"pair": pairs, "acquire": acquires}


async def worker_concurrent(spec: dict) -> dict:
    """One asyncio task per client identity, each taking and releasing partial leases.

    Every grant is recorded as (device, start, end, bytes, fraction, lease id) where
    start is radiumd's grant time (`Lease.granted_at`, its monotonic clock, the same
    clock as ours on this machine) and end is when we *send* the Release: the interval
    lies inside the time radiumd counted the lease, so overlapping intervals whose
    shares sum past a device's memory would prove an overbooking.
    """
    from radium.remoting import _schema as s
    from radium.remoting._errors import NotAvailable, RadiumError
    from radium.remoting.client.session import Session

    request = s.AllocationRequest(count=1, fraction=spec["fraction"])
    timeout = spec["acquire_timeout"]
    conns = list(await asyncio.gather(*(_connect(b) for b in spec["bundles"])))
    sessions = list(await asyncio.gather(*(Session(c).open() for c in conns)))
    poll_conn = await _connect(spec["poller"]) if spec.get("poller") else None
    counts = dict.fromkeys(
        (
            "sent",
            "granted",
            "timeouts",
            "errors",
            "unanswered",
            "released",
            "release_errors",
            "session_errors",
        ),
        0,
    )
    errors: list[str] = []
    records: list[list] = []
    polls: dict[str, Any] = {"n": 0, "violations": [], "max_leases": {}, "max_fraction": {}}
    start = await _sleep_until(spec["start_at"])
    stop = spec["start_at"] + spec["duration"]
    done = asyncio.Event()

    async def client(session: Session) -> None:
        while time.monotonic() < stop and session.error is None:
            counts["sent"] += 1
            try:
                lease = await asyncio.wait_for(session.acquire(request, timeout=timeout), timeout + 15)
            except TimeoutError:
                counts["unanswered"] += 1
                continue
            except NotAvailable:
                counts["timeouts"] += 1
                continue
            except RadiumError as exc:
                counts["errors"] += 1
                errors.append(f"acquire: {exc.code}: {exc}")
                continue
            received = time.monotonic()
            counts["granted"] += 1
            if spec["hold"] > 0:
                await asyncio.sleep(spec["hold"])
            end = time.monotonic()
            part = lease.parts[0]
            records.append(
                [part.device_id, lease.granted_at, end, part.memory_bytes, part.fraction, lease.id, received]
            )
            try:
                await session.release(lease.id)
                counts["released"] += 1
            except RadiumError as exc:
                counts["release_errors"] += 1
                errors.append(f"release: {exc.code}: {exc}")

    async def poller() -> None:
        assert poll_conn is not None
        while not done.is_set():
            try:
                reply = await poll_conn.request(s.ListDevices(usage=False), timeout=10)
            except RadiumError as exc:
                polls["violations"].append(f"poll failed: {exc}")
                return
            assert isinstance(reply, s.DeviceList)
            polls["n"] += 1
            for st in reply.devices:
                d = st.device
                held = sum(h.memory_bytes for h in st.leases)
                share = sum(h.fraction for h in st.leases)
                if st.memory_allocated_bytes > d.memory_bytes or held > d.memory_bytes or share > 1 + 1e-9:
                    polls["violations"].append(
                        f"{d.id}: allocated {st.memory_allocated_bytes} held {held} of {d.memory_bytes}"
                    )
                polls["max_leases"][d.id] = max(polls["max_leases"].get(d.id, 0), len(st.leases))
                polls["max_fraction"][d.id] = max(
                    polls["max_fraction"].get(d.id, 0.0), st.memory_allocated_bytes / d.memory_bytes
                )
            await asyncio.sleep(spec["poll_interval"])

    poll_task = asyncio.create_task(poller()) if poll_conn else None
    try:
        await asyncio.gather(*(client(sess) for sess in sessions))
    finally:
        finished = time.monotonic()
        done.set()
        if poll_task is not None:
            await poll_task
            await poll_conn.close()
        for sess in sessions:
            if sess.error is not None:
                counts["session_errors"] += 1
                errors.append(f"session: {sess.error}")
        await asyncio.gather(*(sess.close() for sess in sessions), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return {
        "counts": counts,
        "errors": errors[:20],
        "records": records,
        "polls": polls,
        "start": start,
        "stop": stop,
        "finished": finished,
    }


WORKERS = {
    "echo-server": worker_echo_server,
    "ping": worker_ping,
    "ping-concurrent": worker_ping_concurrent,
    "list-devices": worker_list_devices,
    "cli": worker_cli,
    "lease": worker_lease,
    "concurrent": worker_concurrent,
}


# ================================================================ the driver (root namespace)


class Bench:
    """One run: a topology, radiumd, the echo server, and the workers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="radium-bench-"))
        self.topo = None
        self.app = None
        self.echo: subprocess.Popen | None = None
        self._specs = 0

    # --- plumbing ---------------------------------------------------------------

    def _spec(self, mode: str, spec: dict) -> Path:
        self._specs += 1
        path = self.tmp / f"{self._specs:02d}-{mode}.json"
        path.write_text(json.dumps(spec))
        return path

    def _argv(self, mode: str, spec: dict) -> list[str]:
        return [PY, "-m", MODULE, "--worker", mode, "--spec", str(self._spec(mode, spec))]

    def worker(self, mode: str, spec: dict, timeout: float = 300) -> dict:
        """Run one worker in the client namespace to completion; its JSON result."""
        out = self.topo.client.run(
            self._argv(mode, spec), cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if out.returncode != 0:
            raise RuntimeError(f"worker {mode} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
        return worker_result(out.stdout)

    def workers(self, mode: str, specs: list[dict], timeout: float) -> list[dict]:
        """Several workers at once in the client namespace."""
        procs = [
            self.topo.client.popen(
                self._argv(mode, spec), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for spec in specs
        ]
        results = []
        deadline = time.monotonic() + timeout
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0:
                raise RuntimeError(f"worker {mode} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
            results.append(worker_result(stdout))
        return results

    def log(self, text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # --- setup and teardown -------------------------------------------------------

    def setup(self) -> None:
        from radium.lab import netns

        support = _support()
        netns.cleanup_stale()
        self.topo = netns.create_topology()
        self.log(
            f"topology: {self.topo.client.name} {self.topo.client.address} <-> "
            f"{self.topo.appliance.name} {self.topo.appliance.address}, tbf {self.topo.rate}"
        )
        self.app = support.Appliance(
            self.tmp / "appliance",
            host=self.topo.appliance,
            address=self.topo.appliance.address,
            port=APPLIANCE_PORT,
        ).start()
        self.log(f"radiumd serving at {self.app.endpoint} (pid {self.app.proc.pid})")
        names = ["bench", "poller"] + [f"c{i:03d}" for i in range(self.args.clients)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            self.bundles = dict(zip(names, pool.map(self.app.enroll, names), strict=True))
        self.log(f"enrolled {len(names)} client identities")
        # radiumd re-scans its key folder on every message for 2 s after the folder last
        # changed (KeyDirectory's "racy" window): measure the steady state, after it.
        time.sleep(KEYS_SETTLE_S)

    def start_echo(self, reply_bytes: int) -> None:
        public, secret = zmq.curve_keypair()
        self.echo_public = public.decode()
        self.echo_endpoint = f"tcp://{self.topo.appliance.address}:{ECHO_PORT}"
        spec = {
            "public": self.echo_public,
            "secret": secret.decode(),
            "listen": self.echo_endpoint,
            "reply_bytes": reply_bytes,
        }
        self.echo = self.topo.appliance.popen(
            self._argv("echo-server", spec), cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        line = self.echo.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"echo server did not start (exit {self.echo.poll()})")

    def close(self) -> None:
        if self.echo is not None and self.echo.poll() is None:
            self.echo.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.echo.wait(5)
        if self.app is not None and self.app.proc is not None:
            with contextlib.suppress(Exception):
                self.app.stop()
        try:
            if self.topo is not None:
                self.topo.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- the benchmarks -------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        quick = a.quick
        r: dict[str, Any] = {}

        # 1a. ListDevices over one open Connection (also learns the message sizes).
        ld = self.worker("list-devices", {"bundle": str(self.bundles["bench"]), "n": a.n_list, "warmup": 20})
        self.devices = ld["devices"]
        r["list_devices"] = summary(ld["rtt"])
        self.log(
            f"ListDevices x{a.n_list}: median {r['list_devices']['median'] * 1e6:.0f} us "
            f"({len(self.devices)} devices, request {ld['request_bytes']} B, reply {ld['reply_bytes']} B)"
        )
        sizes = {k: ld[k] for k in ("header_bytes", "request_bytes")}

        # Baselines: the raw CurveZMQ echo server in the appliance namespace.
        self.start_echo(ld["reply_bytes"])
        echo = {"endpoint": self.echo_endpoint, "server_public": self.echo_public, **sizes}
        ping = self.worker("ping", {**echo, "n": a.n_ping, "warmup": 50})
        r["ping"] = summary(ping["rtt"])
        self.log(f"raw CurveZMQ ping x{a.n_ping}: median {r['ping']['median'] * 1e6:.0f} us")

        # 1b. The whole `radium list-gpus --json` vs a cold process doing one raw ping.
        cli = self.worker(
            "cli",
            {
                "bundle": str(self.bundles["bench"]),
                "state": str(self.tmp / "bench-state"),
                "echo_endpoint": self.echo_endpoint,
                "echo_public": self.echo_public,
                "devices": len(self.devices),
                "n": a.n_cli,
            },
        )
        r["cli"], r["cold_ping"] = summary(cli["cli"]), summary(cli["cold"])
        self.log(f"radium list-gpus --json x{a.n_cli}: median {r['cli']['median'] * 1e3:.0f} ms")

        # Baseline of 3: the same number of raw CurveZMQ clients ping-ponging at once.
        base_duration = 2.0 if quick else 5.0
        procs = min(a.client_procs, a.clients)
        start_at = time.monotonic() + 3.0
        shares = [len(range(i, a.clients, procs)) for i in range(procs)]
        pc = self.workers(
            "ping-concurrent",
            [{**echo, "clients": n, "start_at": start_at, "duration": base_duration} for n in shares],
            timeout=base_duration + 60,
        )
        late = max(p["start"] for p in pc) - start_at
        r["ping_concurrent"] = {
            "round_trips": sum(p["round_trips"] for p in pc),
            "duration": base_duration,
            "rate": sum(p["round_trips"] for p in pc) / base_duration,
            "late_start_s": late,
        }
        self.log(
            f"raw CurveZMQ, {a.clients} clients for {base_duration:g} s: "
            f"{r['ping_concurrent']['rate']:.0f} round trips/s"
        )
        self.echo.terminate()
        self.echo.wait(5)

        # 2. Acquire + Release over one open session.
        lease = self.worker(
            "lease",
            {"bundle": str(self.bundles["bench"]), "n": a.n_lease, "warmup": 20, "fraction": FRACTION},
        )
        r["lease"], r["acquire"] = summary(lease["pair"]), summary(lease["acquire"])
        self.log(f"Acquire+Release x{a.n_lease}: median {r['lease']['median'] * 1e6:.0f} us")

        # 3. Many concurrent clients taking and releasing partial leases.
        r["concurrent"] = self.concurrent(procs)
        return r

    def concurrent(self, procs: int) -> dict:
        a = self.args
        clients = [str(self.bundles[f"c{i:03d}"]) for i in range(a.clients)]
        start_at = time.monotonic() + 4.0
        specs = [
            {
                "bundles": clients[i::procs],
                "poller": str(self.bundles["poller"]) if i == 0 else None,
                "poll_interval": 0.02,
                "fraction": FRACTION,
                "acquire_timeout": a.acquire_timeout,
                "hold": a.hold_ms / 1000,
                "start_at": start_at,
                "duration": a.duration,
            }
            for i in range(procs)
        ]
        self.log(
            f"{a.clients} clients in {procs} processes for {a.duration:g} s "
            f"(fraction {FRACTION}, queue timeout {a.acquire_timeout:g} s, hold {a.hold_ms:g} ms)"
        )
        results = self.workers("concurrent", specs, timeout=a.duration + a.acquire_timeout + 90)
        stop = start_at + a.duration
        counts = {k: sum(w["counts"][k] for w in results) for k in results[0]["counts"]}
        records = [rec for w in results for rec in w["records"]]
        in_window = sum(1 for rec in records if rec[6] <= stop)
        late = max(w["start"] for w in results) - start_at
        duration = stop - max(start_at, min(w["start"] for w in results))
        overlap = check_overlaps(records, self.devices)
        polls = results[0]["polls"]
        final = self.worker("list-devices", {"bundle": str(self.bundles["bench"]), "n": 1, "warmup": 0})
        answered = counts["granted"] + counts["timeouts"] + counts["errors"]
        lost_ok = (
            counts["unanswered"] == 0
            and counts["errors"] == 0
            and counts["session_errors"] == 0
            and answered == counts["sent"]
            and counts["released"] == counts["granted"]
            and counts["release_errors"] == 0
            and final["memory_allocated_bytes"] == 0
            and final["leases"] == 0
            and final["queue_length"] == 0
        )
        doubled_ok = not (overlap["violations"] or overlap["duplicate_ids"] or overlap["bad_intervals"])
        polls_ok = polls["n"] > 0 and not polls["violations"]
        return {
            "clients": a.clients,
            "processes": procs,
            "duration": a.duration,
            "late_start_s": late,
            "grants_in_window": in_window,
            "rate": in_window / duration,
            "counts": counts,
            "errors": [e for w in results for e in w["errors"]][:20],
            "overlap": overlap,
            "polls": {k: polls[k] for k in ("n", "max_leases", "max_fraction")}
            | {"violations": polls["violations"][:20]},
            "final": {k: final[k] for k in ("memory_allocated_bytes", "leases", "queue_length")},
            "invariants": {
                "no lease lost": lost_ok,
                "none doubled (offline)": doubled_ok,
                "none doubled (polls)": polls_ok,
            },
        }


def check_overlaps(records: list[list], memory: dict[str, int]) -> dict:
    """Sweep each device's lease intervals: at no instant may their shares exceed it."""
    by_device: dict[str, list[tuple[float, int, int, float]]] = {}
    bad = 0
    for device, start, end, nbytes, fraction, _lease, received in records:
        if not start <= received <= end:
            bad += 1  # granted after we got it? clocks disagree: the check would not be sound
        events = by_device.setdefault(device, [])
        events.append((start, 1, nbytes, fraction))
        events.append((end, 0, -nbytes, -fraction))  # at equal times, ends first
    violations = 0
    peak: dict[str, dict[str, float]] = {}
    for device, events in by_device.items():
        events.sort()
        held, share = 0, 0.0
        leases = most = 0
        top = 0.0
        for _t, kind, nbytes, fraction in events:
            held += nbytes
            share += fraction
            leases += 1 if kind else -1
            if kind and (held > memory.get(device, 0) or share > 1 + 1e-9):
                violations += 1
            most, top = max(most, leases), max(top, share)
        peak[device] = {"max_concurrent_leases": most, "max_fraction": round(top, 6)}
    ids = [rec[5] for rec in records]
    return {
        "intervals": len(records),
        "violations": violations,
        "duplicate_ids": len(ids) - len(set(ids)),
        "bad_intervals": bad,
        "peak": peak,
    }


# ====================================================================== the report


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"


def report(r: dict) -> bool:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    c = r["concurrent"]
    ping, lease = r["ping"], r["lease"]
    rows = [
        (
            "ListDevices, open connection: median",
            r["list_devices"]["median"],
            ping["median"],
            "raw CurveZMQ ping-pong: median",
            _us,
        ),
        (
            "ListDevices, open connection: p99",
            r["list_devices"]["p99"],
            ping["p99"],
            "raw CurveZMQ ping-pong: p99",
            _us,
        ),
        (
            "`radium list-gpus --json` wall: median",
            r["cli"]["median"],
            r["cold_ping"]["median"],
            "new python: import zmq, connect, 1 ping",
            _us,
        ),
        (
            "Acquire(1 × 0.25) + Release: median",
            lease["median"],
            2 * ping["median"],
            "2 × raw ping-pong: median",
            _us,
        ),
        ("Acquire(1 × 0.25) + Release: p99", lease["p99"], 2 * ping["p99"], "2 × raw ping-pong: p99", _us),
        (
            f"{c['clients']} clients, 0.25 leases: grants/s",
            c["rate"],
            r["ping_concurrent"]["rate"] / 2,
            f"{c['clients']} raw clients: round trips/s ÷ 2",
            lambda v: f"{v:,.0f}/s",
        ),
    ]
    table = Table(
        title="Radium control plane, two-host topology (veth, tbf 4.75 Gbit/s); ratio = value / baseline",
        box=box.SIMPLE_HEAD,
    )
    for col, justify in (
        ("metric", "left"),
        ("value", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("baseline is", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, value, base, what, fmt in rows:
        table.add_row(name, fmt(value), fmt(base), f"{value / base:.2f}×", what)
    console.print(table)

    counts = c["counts"]
    print(
        f"concurrent: {counts['sent']} Acquire sent, {counts['granted']} granted, "
        f"{counts['timeouts']} clean timeouts, {counts['errors']} other errors, "
        f"{counts['unanswered']} unanswered; {counts['released']} released "
        f"({counts['release_errors']} release errors), {counts['session_errors']} sessions lost; "
        f"after the run: {c['final']['memory_allocated_bytes']} B allocated, "
        f"{c['final']['leases']} leases, queue {c['final']['queue_length']}"
    )
    ov, polls = c["overlap"], c["polls"]
    peaks = ", ".join(
        f"{d}: {p['max_concurrent_leases']} leases / {p['max_fraction']:.2f}" for d, p in ov["peak"].items()
    )
    print(
        f"overlap check: {ov['intervals']} lease intervals, peak per device {peaks}; "
        f"{ov['violations']} overbooked, {ov['duplicate_ids']} duplicate ids, "
        f"{ov['bad_intervals']} bad intervals"
    )
    seen = ", ".join(
        f"{d}: {polls['max_leases'][d]} leases / {polls['max_fraction'][d]:.2f}" for d in polls["max_leases"]
    )
    print(
        f"ListDevices polls during the run: {polls['n']}, "
        f"{len(polls['violations'])} with allocated > memory; peak seen {seen}"
    )
    if c["late_start_s"] > 0.5:
        print(f"note: a concurrent worker started {c['late_start_s']:.1f} s late (throughput uses its start)")
    for e in c["errors"][:5]:
        print(f"  error: {e}")
    for v in polls["violations"][:5]:
        print(f"  poll violation: {v}")
    ok = True
    for name, passed in c["invariants"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
        ok = ok and passed
    return ok


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}, {platform.platform()}"


def revision() -> str:
    """The code measured: `git describe --always --dirty` of the repository."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# ====================================================================== entry points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("control_plane")
    g.add_argument("--duration", type=float, default=None, help="seconds of the concurrent run (30)")
    g.add_argument("--quick", action="store_true", help="smoke test: 5 s concurrent run, fewer samples")
    g.add_argument("--clients", type=int, default=64, help="concurrent client identities (64)")
    g.add_argument("--client-procs", type=int, default=2, help="worker processes they share (2)")
    g.add_argument("--acquire-timeout", type=float, default=5.0, help="queue timeout of each Acquire (5)")
    g.add_argument("--hold-ms", type=float, default=0.0, help="how long each lease is held (0)")
    g.add_argument("--json", type=Path, help="also write the results (no raw samples) to this file")


def run(args: argparse.Namespace) -> int:
    from radium.lab import netns

    ok, why = netns.can_create_namespaces()
    if not ok:
        print(f"control_plane: cannot build the two-host topology: {why}", file=sys.stderr)
        return 1
    if args.clients < 1 or args.client_procs < 1:
        print("control_plane: --clients and --client-procs must be at least 1", file=sys.stderr)
        return 2
    if args.duration is None:
        args.duration = 5.0 if args.quick else 30.0
    args.n_ping = 500 if args.quick else 2000
    args.n_list = 100 if args.quick else 500
    args.n_cli = 3 if args.quick else 10
    args.n_lease = 200 if args.quick else 1000
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
    passed = report(results)
    print(f"control_plane: {results['wall_s']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    return standalone(MODULE, __doc__, WORKERS, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
