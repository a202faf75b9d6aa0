"""The control-plane benchmark's constants, helpers and workers: what runs inside a network namespace
(`python -m benchmarks.control_plane --worker MODE --spec FILE`), each printing one JSON result."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from benchmarks import tests_support

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
    from radium.remoting import load_client_config
    from radium.remoting.client.connection import Connection

    config = load_client_config(Path(bundle))
    return await Connection(config.appliances[0], config.keys).open()


async def worker_list_devices(spec: dict) -> dict:
    """`ListDevices` round trips over one open Connection; also the appliance's state."""
    from radium.remoting import schema as s
    from radium.remoting import wire

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
    client = tests_support().Client(Path(spec["bundle"]), Path(spec["state"]))
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
    from radium.remoting import schema as s
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
    from radium.remoting import NotAvailable, RadiumError
    from radium.remoting import schema as s
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
