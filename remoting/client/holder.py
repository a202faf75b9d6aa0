"""The small background process that holds a `radium request-gpus` reservation.

It opens a session, acquires the lease, reports one JSON line on stdout, and
then keeps the session's heartbeat going until it is told to release
(SIGTERM, SIGINT or SIGHUP) or the session ends.  If it is killed outright the
heartbeat stops and the appliance frees the lease within its lease timeout.
The reservation is described in a state file that `radium run` and
`radium release-gpus` read.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from .. import schema as s
from .._config import load_client_config
from .._errors import RadiumError, UsageError
from .._keys import write_atomic
from .api import reserve
from .paths import state_dir


def reservation_path() -> Path:
    return state_dir() / "reservation.json"


class ReservationState(msgspec.Struct, kw_only=True):
    pid: int
    appliance: str
    address: str
    session: str
    lease: s.Lease
    started: float


def read_reservation() -> ReservationState | None:
    """The live reservation, or None; a file left by a dead holder is removed."""
    path = reservation_path()
    try:
        state = msgspec.json.decode(path.read_bytes(), type=ReservationState)
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, OSError):
        path.unlink(missing_ok=True)
        return None
    if not _is_holder(state.pid):
        path.unlink(missing_ok=True)
        return None
    return state


def _is_holder(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"radium.remoting.client.holder" in cmdline


def start_holder(
    config_path: Path, request: s.AllocationRequest, timeout: float, server: str | None
) -> ReservationState:
    """Start a holder and wait until it holds the lease (or fails)."""
    if read_reservation() is not None:
        raise UsageError("a reservation is already held; release it first with `radium release-gpus`")
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    job = {
        "config": str(config_path),
        "request": msgspec.to_builtins(request),
        "timeout": timeout,
        "server": server,
    }
    with open(directory / "holder.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radium.remoting.client.holder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # a Ctrl-C in the shell later must not reach it
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
        line = proc.stdout.readline()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    if not line:
        proc.wait()
        raise RadiumError(
            f"the reservation holder exited ({proc.returncode}); see {directory / 'holder.log'}"
        )
    answer = json.loads(line)
    if not answer["ok"]:
        proc.wait()
        from .._errors import error_from_code

        raise error_from_code(answer["code"], answer["message"])
    return msgspec.convert(answer["reservation"], ReservationState)


def stop_holder(timeout: float = 10.0) -> ReservationState | None:
    """Ask the holder to release; returns what was released, or None if nothing was held."""
    state = read_reservation()
    if state is None:
        return None
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        reservation_path().unlink(missing_ok=True)
        return state
    deadline = time.monotonic() + timeout
    while _is_holder(state.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a process we did not start: no handle to wait on
    if _is_holder(state.pid):
        os.kill(state.pid, signal.SIGKILL)  # the appliance frees the lease on its own
    reservation_path().unlink(missing_ok=True)
    return state


async def _hold(job: dict[str, Any]) -> int:
    config = load_client_config(Path(job["config"]))
    request = msgspec.convert(job["request"], s.AllocationRequest)
    try:
        reservation = await reserve(config, request, job["timeout"], job["server"])
    except RadiumError as exc:
        _answer({"ok": False, "code": exc.code, "message": exc.message})
        return exc.exit_code
    state = ReservationState(
        pid=os.getpid(),
        appliance=reservation.appliance.name,
        address=reservation.appliance.address,
        session=reservation.session.id,
        lease=reservation.lease,
        started=time.time(),
    )
    write_atomic(reservation_path(), msgspec.json.encode(state), 0o600)
    _answer({"ok": True, "reservation": msgspec.to_builtins(state)})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    ended = asyncio.create_task(reservation.session.ended.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([ended, stopped], return_when=asyncio.FIRST_COMPLETED)
    try:
        if stop.is_set():
            await reservation.release()
        else:
            print(f"radium holder: session ended: {reservation.session.error}", file=sys.stderr)
            await reservation.close()
    finally:
        current = read_reservation_raw()
        if current is not None and current.pid == os.getpid():
            reservation_path().unlink(missing_ok=True)
    return 0


def read_reservation_raw() -> ReservationState | None:
    try:
        return msgspec.json.decode(reservation_path().read_bytes(), type=ReservationState)
    except (OSError, msgspec.DecodeError):
        return None


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    # Nobody reads further: detach stdout so the parent's pipe closes.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main() -> int:
    job = json.loads(sys.stdin.read())
    return asyncio.run(_hold(job))


if __name__ == "__main__":
    sys.exit(main())
