"""The local channel between radiumd and a run's supervisor: frames over a Unix socket.

A message is a list of frames (the msgpack body first, then bulk payloads), sent
as: u32 frame count, then per frame u32 length and the bytes.  radiumd speaks it
with asyncio, the supervisor (which serves FUSE through pyfuse3) with trio.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import schema as s

MAX_FRAMES = 16
MAX_FRAME = 80 << 20  # a ReadChunks reply carries up to 64 MiB

_u32 = struct.Struct("!I")
_encoder = msgspec.msgpack.Encoder()


class ChannelClosed(Exception):
    pass


def pack(msg: msgspec.Struct, extra: Sequence[bytes | bytearray | memoryview] = ()) -> bytes:
    """A message and its extra frames as one buffer: a frame count, then each frame's length and bytes."""
    return b"".join(pack_pieces(msg, extra))


def pack_pieces(
    msg: msgspec.Struct, extra: Sequence[bytes | bytearray | memoryview] = ()
) -> list[bytes | bytearray | memoryview]:
    """`pack(msg, extra)` as pieces to write one after the other, the frames uncopied."""
    head = _encoder.encode(msg)
    pieces: list[bytes | bytearray | memoryview] = [_u32.pack(1 + len(extra)) + _u32.pack(len(head)) + head]
    for f in extra:
        pieces.append(_u32.pack(memoryview(f).nbytes))
        pieces.append(f)
    return pieces


class Mps(msgspec.Struct, kw_only=True):
    """A private CUDA MPS control daemon for the run, holding it to its lease's share
    (the control program is the supervisor's setting, `Settings.mps_control`)."""

    memory_mib: dict[int, int]  # device index (as the process sees it) -> pinned memory limit
    threads: int  # active thread percentage


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """A supervisor's fixed settings: given to the fork server when radiumd starts, as root,
    from its configuration, and never by a `Job`.

    Once radiumd has dropped to its own user (daemon/privileges.py) it is not trusted with
    root: whatever it sends, a supervisor (root) makes its run's folder only in `runs_dir`,
    keeps chunks only in `store_dir`, maps a run only onto one of the `id_slots` id ranges
    delegated from `id_base`, and binds into the run only `tini`, `appliance_paths` and the
    MPS programs named here.
    """

    runs_dir: str
    store_dir: str
    store_limit: int
    id_base: int
    id_slots: int
    appliance_paths: list[str]  # appliance paths bound over the client's tree (drivers)
    tini: str
    mps_control: str | None  # the appliance's nvidia-cuda-mps-control, if it has one
    direct_host: str | None = None  # where a run's direct file channel listens (None: none)
    warm_dir: str | None = None  # the clients' warm trees (run/warmtree.py), root's; None: none
    warm_limit: int = 0  # bytes of files each client's warm tree may hold
    complete_files: bool = True  # files read in part, listed package folders: made whole (fsfill too)
    complete_at_exit: tuple[float, float] = (0.2, 1.0)  # seconds a run's end waits for them, least and most
    clients_dir: str | None = None  # the enrolled clients' keys: what a revoked client left is removed
    tenant_groups: dict[str, list[str]] = {}  # clients that share what they send (run/tenants.py)
    # Each run's cgroup (run/limits.py): memory with swap (0: what the appliance can spare),
    # processes, CPU weight.
    memory_bytes: int = 0
    memory_max_bytes: int = 0  # the most a run may ask for (0: what the appliance can spare)
    writable_bytes: int = 0  # each run's writable layer on a file system of this size (0: unbounded)
    pids_max: int = 4096
    cpu_weight: int = 100
    device_nodes: list[str] = []  # device nodes every run may open (run/devicefilter.py)
    poll_idle: bool = True  # idle cores poll while a run makes file operations (run/wakeups.py)

    ID_COUNT = 65536  # ids of one run (class attribute, not a field)


class Job(msgspec.Struct, kw_only=True):
    """What radiumd tells a supervisor about its run (the first message)."""

    run: str  # its id, a plain name: the run's folder is Settings.runs_dir/run
    client: str
    start: s.RunStart
    slot: int  # client uid/gid N runs as Settings.id_base + slot * ID_COUNT + N on the appliance
    device_env: dict[str, str]
    mps: Mps | None = None
    device_nodes: list[str] = []  # its lease's devices' nodes (character devices under /dev)

    def check(self, settings: Settings) -> None:
        """ValueError if this job asks for what the settings do not allow."""
        for what, name in (("run", self.run), ("client", self.client)):
            if not name or name.startswith(".") or any(c in name for c in "/\\\0") or len(name) > 255:
                raise ValueError(f"bad job: {what} {name!r} is not a plain name")
        if not 0 <= self.slot < settings.id_slots:
            raise ValueError(f"bad job: id slot {self.slot} outside 0-{settings.id_slots - 1}")
        for path in self.device_nodes:  # radiumd names its lease's nodes, never anything else
            if not path.startswith("/dev/") or os.path.normpath(path) != path:
                raise ValueError(f"bad job: device node {path!r} is not a path under /dev")
        if self.mps is not None and settings.mps_control is None:
            raise ValueError("bad job: an MPS share on an appliance without nvidia-cuda-mps-control")


_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
    "job": msgspec.msgpack.Decoder(Job),
    "traffic": msgspec.msgpack.Decoder(s.RunTraffic),
    "notice": msgspec.msgpack.Decoder(s.Notice),
}


def decode(kind: str, frame: bytes | bytearray | memoryview) -> Any:
    return _decoders[kind].decode(frame)


async def read_asyncio(reader) -> list[bytes]:  # type: ignore[no-untyped-def]
    """One message from an asyncio StreamReader."""
    import asyncio

    try:
        (count,) = _u32.unpack(await reader.readexactly(4))
        if count == 0 or count > MAX_FRAMES:
            raise ChannelClosed(f"bad frame count {count}")
        frames = []
        for _ in range(count):
            (size,) = _u32.unpack(await reader.readexactly(4))
            if size > MAX_FRAME:
                raise ChannelClosed(f"frame of {size} bytes")
            frames.append(await reader.readexactly(size))
        return frames
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc)) from None


class TrioReader:
    """Reads messages from a trio socket stream.

    Frames are received straight into a buffer of their size (a `bytearray`): a
    64 MiB file-content reply is copied once on its way in, not four times.
    """

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.sock = stream.socket
        self.buf = bytearray()  # received beyond what was asked for so far

    async def _fill(self, out: bytearray) -> None:
        n = len(out)
        have = min(len(self.buf), n)
        out[:have] = self.buf[:have]
        del self.buf[:have]
        view = memoryview(out)
        while have < n:
            got = await self.sock.recv_into(view[have:], n - have)
            if not got:
                raise ChannelClosed("end of stream")
            have += got

    async def _small(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.sock.recv(65536)
            if not data:
                raise ChannelClosed("end of stream")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read(self) -> list[bytearray]:
        try:
            return await self._read()
        except OSError as exc:  # reset by radiumd's end
            raise ChannelClosed(str(exc)) from None

    async def _read(self) -> list[bytearray]:
        (count,) = _u32.unpack(await self._small(4))
        if count == 0 or count > MAX_FRAMES:
            raise ChannelClosed(f"bad frame count {count}")
        frames = []
        for _ in range(count):
            (size,) = _u32.unpack(await self._small(4))
            if size > MAX_FRAME:
                raise ChannelClosed(f"frame of {size} bytes")
            frame = bytearray(size)
            await self._fill(frame)
            frames.append(frame)
        return frames
