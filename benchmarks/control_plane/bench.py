"""The control-plane benchmark's driver, in the root namespace: the topology, radiumd, the workers."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

from benchmarks import ROOT, tests_support, worker_argv, worker_result

from .workers import APPLIANCE_PORT, ECHO_PORT, FRACTION, KEYS_SETTLE_S, MODULE, summary


class Bench:
    """One run: a topology, radiumd, the echo server, and the workers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="radium-bench-"))
        self.topo = None
        self.app = None
        self.echo: subprocess.Popen | None = None

    # --- plumbing ---------------------------------------------------------------

    def _argv(self, mode: str, spec: dict) -> list[str]:
        return worker_argv(MODULE, self.tmp, mode, spec)

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

        support = tests_support()
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
