"""The supervisor of one run on the appliance (forked for radiumd, as root, in a private mount namespace).

It builds the process's world and watches over it:

1. the client's file system, served on demand by FUSE (`fs.ClientTree`), as the
   read-only lower layer of an overlay whose upper layer catches every write; above
   FUSE, the client's warm tree (`warmtree`): what its earlier runs read, as real files;
2. the appliance's `/dev`, `/sys` and driver paths bound in, a fresh `/tmp`;
3. the process itself, under `unshare`: a user namespace that maps the client's
   uid/gid onto an unprivileged range of this run, a PID namespace with tini as
   its init (so signals behave), chrooted into the overlay, in the client's cwd;
4. its standard streams and signals, relayed through radiumd, with output
   credit-limited so that a slow client slows the process instead of losing data;
5. at exit, the upper layer's changes, sent back to the client to be applied
   atomically, and only then the exit status.

If radiumd goes away (the channel closes) the process is killed and everything
unmounted.  radiumd's `Job` says which run and whose; where it lives, which ids it
gets and what is bound into it come from the supervisor's own `Settings` (see
channel.py), since radiumd may run unprivileged and is then not trusted with root.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from .. import schema as s
from ..output import mib
from . import channel, devicefilter, mounts
from .cas import ContentStore
from .fs import ClientTree
from .fsasks import FileAsks
from .fsmount import mount_and_serve, unmount
from .layer import bounded_layer, drop, spare_layer, take
from .limits import ENV as CGROUP_ENV
from .limits import Limits, RunCgroup, ensure_mounted, memory_ceiling
from .listings import KeptListings
from .tenants import OwnedChunks, tenant_of
from .warmtree import WarmTree

CHUNK = 64 * 1024
WRITEBACK_CHUNK = 1 << 20
OUTPUT_WINDOW = 16 << 20
PREFETCH_ENTRIES = 20_000
WARM_WAIT = 2.0  # seconds a run waits for another run of its client to finish changing the warm tree
OVERLAY_ERRORS = (OSError, subprocess.CalledProcessError)


def log(message: str, **fields: object) -> None:
    """JSON lines on stderr, which radiumd's log collects."""
    entry = {"ts": round(time.time(), 6), "level": "info", "event": message, **fields}
    sys.stderr.write(msgspec.json.encode(entry).decode() + "\n")


class Supervisor:
    def __init__(
        self,
        job: channel.Job,
        settings: channel.Settings,
        stream: trio.SocketStream,
        reader: channel.TrioReader,
        layer: Path | None = None,
    ) -> None:
        job.check(settings)
        self.job = job
        self.spare_layer = layer  # the writable layer, made while this supervisor waited
        self.settings = settings
        self.id_base = settings.id_base + job.slot * settings.ID_COUNT
        self.start = job.start
        self.stream = stream
        self.reader = reader
        self.send_lock = trio.Lock()
        self.credit = OUTPUT_WINDOW
        self.credit_changed = trio.Event()
        self.writeback_done = trio.Event()
        self.writeback_result: s.WritebackAck | None = None
        self.proc: subprocess.Popen | None = None
        # Input can arrive before the process exists: it waits here, in order.
        stdin = trio.open_memory_channel[tuple[bytes | bytearray, bool]](float("inf"))
        self.stdin_send, self.stdin_recv = stdin
        self.stats = s.RunStats()
        self.asks = FileAsks(job.run, self.send, self.stats, log)  # file requests to the client
        self.phase_started = time.monotonic()
        self.run_dir = run_dir = Path(settings.runs_dir) / job.run
        self.lower, self.upper = run_dir / "lower", run_dir / "upper"
        self.work, self.root = run_dir / "work", run_dir / "root"
        self.warm_mount = run_dir / "warm"
        self.warm: WarmTree | None = None
        self.cgroup: RunCgroup | None = None
        self.made_for_mounts: set[str] = set()  # upper paths we created; never written back
        self.mounted: list[Path] = []

    # --- the channel -----------------------------------------------------------

    async def send(self, msg: msgspec.Struct, extra: Sequence[bytes | bytearray | memoryview] = ()) -> None:
        async with self.send_lock:
            await self.stream.send_all(channel.pack(msg, extra))

    async def take_credit(self, size: int) -> None:
        """Wait until the window has room for a message of `size` bytes (s.credit_cost), take it."""
        cost = s.credit_cost(size)
        while self.credit < cost:
            await self.credit_changed.wait()
        self.credit -= cost

    async def read_loop(self, cancel: trio.CancelScope) -> None:
        try:
            while True:
                frames = await self.reader.read()
                try:
                    msg = channel.decode("traffic", frames[0])
                except msgspec.DecodeError:
                    continue
                await self.on_traffic(msg, frames[1:])
        except (channel.ChannelClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            log("supervisor channel closed: ending the run", run=self.job.run)
            self.kill(signal.SIGKILL)
            cancel.cancel()

    async def on_traffic(self, msg: msgspec.Struct, extra: Sequence[bytearray]) -> None:
        if isinstance(msg, s.FsAnswer):
            self.asks.answered(msg.id, extra)
        elif isinstance(msg, s.RunInput):
            self.stdin_send.send_nowait((extra[0] if extra else b"", msg.eof))
        elif isinstance(msg, s.RunSignal):
            if msg.signal in (
                signal.SIGINT,
                signal.SIGTERM,
                signal.SIGHUP,
                signal.SIGKILL,
                signal.SIGQUIT,
                signal.SIGUSR1,
                signal.SIGUSR2,
                signal.SIGWINCH,
                signal.SIGCONT,
                signal.SIGTSTP,
            ):
                self.kill(msg.signal)
        elif isinstance(msg, s.RunResize):
            try:
                self.resize(msg.rows, msg.cols)
            except OSError:
                pass  # the terminal is already gone
        elif isinstance(msg, s.RunCredit):
            self.credit += max(0, msg.bytes)
            self.credit_changed.set()
            self.credit_changed = trio.Event()
        elif isinstance(msg, s.WritebackAck):
            self.writeback_result = msg
            self.writeback_done.set()

    # --- building the world ----------------------------------------------------

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.stats.phases[name] = round(now - self.phase_started, 4)
        self.phase_started = now

    async def prepare(self, nursery: trio.Nursery) -> None:
        self.run_dir.mkdir(mode=0o700)  # root's: never one radiumd made, nor a name used before
        for d in (self.lower, self.root):
            d.mkdir(mode=0o755, exist_ok=True)
        # The writable layer and the cgroup are made beside the first request (neither raises).
        side_done = trio.Event()

        async def side() -> None:
            try:
                await self._make_writable_layer()
                await self._make_cgroup()
            finally:
                side_done.set()

        nursery.start_soon(side)
        await self._ask_first()
        await side_done.wait()
        await self._mount_world(nursery)

    async def _make_writable_layer(self) -> None:
        """The upper and work folders, on a file system of the run's own of a bounded size
        (run/layer.py; `writable_bytes` 0: on the appliance's disk, unbounded)."""
        size = self.settings.writable_bytes
        if size:
            layer = self.run_dir / "layer"
            try:
                layer.mkdir(mode=0o755)
                if self.spare_layer is not None:
                    spare, self.spare_layer = self.spare_layer, None
                    take(spare, layer)
                else:
                    await trio.to_thread.run_sync(bounded_layer, layer, self.run_dir / "layer.img", size)
                self.mounted.append(layer)
                self.upper, self.work = layer / "upper", layer / "work"
            except (OSError, subprocess.SubprocessError) as exc:  # no mkfs.ext4, no loop devices
                log("writable layer unbounded: no file system of its own", run=self.job.run, error=str(exc))
        for d in (self.upper, self.work):
            d.mkdir(mode=0o755, exist_ok=True)

    async def _ask_first(self) -> None:
        store_dir = Path(self.settings.store_dir)
        self.store = ContentStore(store_dir, self.settings.store_limit, scan=False)
        self.kept = KeptListings(self.store, store_dir / "listings" / f"{self.job.client}.idx")
        tenant = tenant_of(self.job.client, self.settings.tenant_groups)
        self.owned = OwnedChunks(store_dir / "tenants" / f"{tenant}.chunks")
        self.tree = ClientTree(
            self.asks.fetch, self.store, id_offset=self.id_base, kept=self.kept, owned=self.owned
        )
        self.warm = await self._open_warm()
        warm_dirs = self.warm.known() if self.warm is not None else {}
        if self.start.prefetch or self.kept.previous or warm_dirs:  # one round trip, not one per directory
            # The warm tree's folders are rechecked by the digests kept now (a later run may have
            # kept a newer listing than the one the warm tree agrees with: then it is pruned).
            also = {p: self.kept.digest(p) or d for p, d in warm_dirs.items()}
            try:
                await self.tree.prefetch(self.start.prefetch, max_entries=PREFETCH_ENTRIES, also=also)
            except (OSError, ValueError) as exc:
                log("prefetch failed", run=self.job.run, error=str(exc))
            self.phase("prefetch")

    async def _mount_world(self, nursery: trio.Nursery) -> None:
        await nursery.start(mount_and_serve, self.tree, str(self.lower))
        self.mounted.append(self.lower)
        lowers = str(self.lower)
        if self.warm is not None and await self._mount_warm():
            lowers = f"{self.warm_mount}:{self.lower}"
        # The init, and mount points for what the appliance lends, are made in the
        # upper layer before the overlay is mounted; they are never written back.
        await self._make_in_upper("/.radium", directory=True)
        await self._make_in_upper("/.radium/init", directory=False)
        mps_binds = self._prepare_mps()
        binds = [p for p in self.settings.appliance_paths if os.path.exists(p)]
        for path in binds:
            if await self.tree.stat_path(path) is None:
                await self._make_in_upper(path, directory=os.path.isdir(path))
        # xino=on: the layers are two file systems (FUSE, the run's disk); without it a
        # directory's inode number in a listing (d_ino) is not the one stat gives.
        options = f"lowerdir={lowers},upperdir={self.upper},workdir={self.work},xino=on"
        await self._mount(self.root, mounts.mount, "overlay", self.root, "overlay", 0, options)
        init = self.root / ".radium/init"
        await self._mount(init, mounts.bind, self.settings.tini, init)
        for source, inside in mps_binds:
            target = self.root / inside.lstrip("/")
            await self._mount(target, mounts.bind, source, target, readonly=True)
        for path in ("/dev", "/sys"):
            if await self._client_has_dir(path):
                target = self.root / path.lstrip("/")
                await self._mount(target, mounts.bind, path, target, recursive=True)
        for path in self.private_dirs():
            # /dev/shm is the appliance's /dev by then, /tmp the client's.
            exists = os.path.isdir(path) if path == "/dev/shm" else await self._client_has_dir(path)
            if exists:
                target = self.root / path.lstrip("/")
                await self._mount(target, mounts.tmpfs, target)
        for path in binds:
            target = self.root / path.lstrip("/")
            await self._mount(target, mounts.bind, path, target, readonly=True)
        self.phase("mount")

    async def _make_cgroup(self) -> None:
        self.cgroup = await trio.to_thread.run_sync(self._new_cgroup)

    def _new_cgroup(self) -> RunCgroup | None:
        """The run's cgroup (run/limits.py); None, logged, where the appliance has no usable cgroups."""
        st = self.settings
        memory = memory_ceiling(self.job.start.memory, st.memory_bytes, st.memory_max_bytes)
        lent, not_nodes = devicefilter.rules_for(st.device_nodes)
        leased, not_leased = devicefilter.rules_for(self.job.device_nodes)
        leased = [rule for rule in leased if rule.kind == "c"]  # a GPU's nodes: never a disk
        if not_nodes or not_leased:
            log("not device nodes: not lent to the run", run=self.job.run, paths=not_nodes + not_leased)
        devices = (*devicefilter.BASIC, *lent, *leased)
        limits = Limits(memory=memory, pids=st.pids_max, cpu_weight=st.cpu_weight, devices=devices)
        try:
            ensure_mounted()
            cgroup = RunCgroup(self.job.run, limits)
            cgroup.prime()
            return cgroup
        except (OSError, ValueError) as exc:
            log("run not confined: no cgroup", run=self.job.run, error=str(exc))
            return None

    def limit_report(self) -> str:
        """Which limit ended processes of the run, for the user ("" if none did)."""
        if self.cgroup is None or not (killed := self.cgroup.oom_kills()):
            return ""
        limit = mib(self.cgroup.limits.memory)
        return (
            f"out of memory: the run's limit is {limit} (swap included); the kernel ended "
            f"{killed} of its processes there"
        )

    async def _open_warm(self) -> WarmTree | None:
        """The client's warm tree, shared with its other runs; None when off or busy too long."""
        st = self.settings
        if st.warm_dir is None or st.warm_limit <= 0:
            return None
        warm = WarmTree(Path(st.warm_dir) / self.job.client, st.warm_limit)
        deadline = trio.current_time() + WARM_WAIT
        try:
            while not warm.share():  # another run is changing it (its end adds what it read)
                if trio.current_time() > deadline:
                    log("warm tree busy: this run goes without", run=self.job.run)
                    warm.close()
                    return None
                await trio.sleep(0.01)
        except OSError as exc:
            log("warm tree unavailable", run=self.job.run, error=str(exc))
            warm.close()
            return None
        return warm

    async def _mount_warm(self) -> bool:
        """Bring the warm tree in line with the client's answers and mount it for the run's ids."""
        warm = self.warm
        assert warm is not None
        try:
            tree = self.tree
            if await trio.to_thread.run_sync(warm.reconcile, tree.confirmed, tree.entries_ahead):
                self.warm_mount.mkdir(mode=0o755)
                await self._mount(
                    self.warm_mount,
                    mounts.idmapped_bind,
                    warm.files,
                    self.warm_mount,
                    self.id_base,
                    self.settings.ID_COUNT,
                )
                self.stats.warm_files = warm.index.files
                return True
        except OSError as exc:  # e.g. a kernel without idmapped mounts: FUSE serves it all
            log("warm tree not mounted", run=self.job.run, error=str(exc))
            warm.close()
            self.warm = None
        return False

    def private_dirs(self) -> list[str]:
        """Scratch folders the run gets fresh and empty, and that are thrown away.

        Not /tmp when the client works inside it: then the client's /tmp is served
        (the working directory must be there), and only what is written under the
        working directory comes back.
        """
        if _inside(self.start.cwd, "/tmp"):
            return ["/dev/shm"]
        return ["/tmp", "/dev/shm"]

    async def _client_has_dir(self, path: str) -> bool:
        attr = await self.tree.stat_path(path, follow=True)
        return attr is not None and stat.S_ISDIR(attr.mode)

    async def _make_in_upper(self, path: str, directory: bool) -> None:
        # Never look at the client's tree through the mount from here: this thread
        # serves it (a deadlock); ask the tree itself.
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            rel = "/" + "/".join(parts[:i])
            target = self.upper / rel.lstrip("/")
            is_dir = directory or i < len(parts)
            if os.path.lexists(target):
                continue
            if is_dir:
                target.mkdir(mode=0o755)
                attr = await self.tree.stat_path(rel)
                if attr is not None and stat.S_ISDIR(attr.mode):
                    # It exists on the client: keep its mode and time, and changes
                    # below it are real changes.
                    os.chmod(target, stat.S_IMODE(attr.mode))
                    os.utime(target, ns=(attr.atime_ns, attr.mtime_ns))
                    continue
            else:
                target.touch(mode=0o755)
            self.made_for_mounts.add(rel)

    def _prepare_mps(self) -> list[tuple[str, str]]:
        """For a partial NVIDIA lease: the script that starts the run's MPS daemon, and the
        appliance's MPS binaries to bind in as (appliance path, path in the run)."""
        control = self.settings.mps_control
        if self.job.mps is None or control is None:
            return []
        folder = self.upper / ".radium" / "bin"
        folder.mkdir(mode=0o755, exist_ok=True)
        binds = []
        for source in (control, os.path.join(os.path.dirname(control), "nvidia-cuda-mps-server")):
            if os.path.exists(source):
                (folder / os.path.basename(source)).touch(mode=0o755)
                binds.append((source, f"/.radium/bin/{os.path.basename(source)}"))
        script = self.upper / ".radium" / "mps"
        script.write_text(MPS_START)
        script.chmod(0o755)
        return binds

    async def _mount(self, target: Path, how: Callable[..., None], *args: Any, **kw: Any) -> None:
        """`how(*args, **kw)` mounts something at `target`."""
        # In a thread: the kernel resolves paths inside the overlay by asking our
        # FUSE server, which is this thread's trio loop.
        await trio.to_thread.run_sync(functools.partial(how, *args, **kw))
        self.mounted.append(target)

    async def leave_world(self, claim: bool) -> None:
        """The process is gone: take its world apart and, before the client hears of the end,
        let the client's next run have the warm tree — claimed, when this run has files to add
        to it (the next run then waits for that), else released."""
        await self._detach_world()
        self.owned.save()  # before the client may start its next run, which reads it
        if self.warm is not None and not (claim and self.warm.claim()):
            self.warm.close()
            self.warm = None

    async def _detach_world(self) -> None:
        # Nothing here may touch the mounts' contents: a stat would ask FUSE, maybe no longer served.
        if self.root in self.mounted:
            with contextlib.suppress(OSError):
                await trio.to_thread.run_sync(mounts.detach, self.root)  # and all below it
        if self.warm_mount in self.mounted:
            with contextlib.suppress(OSError):
                mounts.detach(self.warm_mount)
        self.mounted = [m for m in self.mounted if m not in (self.root, self.warm_mount)]

    async def teardown(self) -> None:
        self.asks.close()
        if hasattr(self, "store"):
            try:
                self.store.save_index()  # for the next run to start from (no scan)
            except OSError as exc:
                log("could not save the content store's index", run=self.job.run, error=str(exc))
            if hasattr(self, "owned"):
                self.owned.save()
        await self._detach_world()
        unmount(str(self.lower))
        if self.spare_layer is not None:  # the run never got as far as taking it
            drop(self.spare_layer)
        if self.run_dir / "layer" in self.mounted:
            with contextlib.suppress(OSError):
                mounts.detach(self.run_dir / "layer")  # its loop device clears itself
        if self.cgroup is not None:
            await trio.to_thread.run_sync(self.cgroup.remove)
        if self.warm is not None and hasattr(self, "tree"):
            # The client has its exit status: add what this run read, at low priority.
            await trio.to_thread.run_sync(self._grow_warm)

    def _grow_warm(self) -> None:
        assert self.warm is not None
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 10)  # this thread only (Linux: a thread is a process here)
            started = time.monotonic()
            added = self.warm.grow(self.tree.nodes, self.tree.contents)
            if added:
                took = round(time.monotonic() - started, 3)
                size = self.warm.index.size
                log("warm tree grown", run=self.job.run, files=added, bytes=size, seconds=took)
        except OSError as exc:
            log("warm tree not grown", run=self.job.run, error=str(exc))
        finally:
            self.warm.close()

    # --- the process ---------------------------------------------------------------

    def command(self) -> list[str]:
        st = self.start
        base, count = self.id_base, self.settings.ID_COUNT
        if not (0 <= st.uid < count and 0 <= st.gid < count):
            raise ValueError(f"client uid/gid {st.uid}/{st.gid} outside the mapped range 0-{count - 1}")
        argv = [
            # If this supervisor dies, its process dies with it (pdeathsig survives exec).
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            "--user",
            f"--map-users={base},0,{count}",
            f"--map-groups={base},0,{count}",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            f"--root={self.root}",
            f"--wd={st.cwd}",
            f"--setuid={st.uid}",
            f"--setgid={st.gid}",
            "--",
            "/.radium/init",
            "-g",
            "--",
            *(["/bin/sh", "/.radium/mps"] if self.job.mps else []),
            *st.argv,
        ]
        return argv if self.cgroup is None else self.cgroup.enter_command(argv)

    async def missing_command(self) -> str | None:
        """Why the process's program cannot be found in its world, or None.

        As a shell does before it runs anything (then exit 127): look the program up
        in the process's PATH, in the process's view (the client's tree, the
        appliance's /dev, /sys and lent paths, empty scratch folders).
        """
        name, cwd = self.start.argv[0], self.start.cwd
        if "/" in name:
            candidates = [os.path.join(cwd, name)]
            why = f"{name}: No such file or directory"
        else:
            path = self.start.env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
            candidates = [os.path.join(cwd, folder, name) for folder in path.split(":")]
            why = f"{name}: command not found"
        for candidate in candidates:
            if await self._process_sees(os.path.normpath(candidate)):
                return None
        return why

    async def _process_sees(self, path: str) -> bool:
        if any(_inside(path, d) for d in self.private_dirs()):
            return False  # fresh and empty
        if any(_inside(path, d) for d in ("/dev", "/sys", *self.settings.appliance_paths)):
            return os.path.exists(path)  # the appliance's own
        try:
            return await self.tree.stat_path(path, follow=True) is not None
        except (OSError, ValueError):
            return True  # in doubt, let the process try

    def environment(self) -> dict[str, str]:
        env = dict(self.start.env)
        env.update(self.job.device_env)
        env["RADIUM_RUN"] = self.job.run
        if self.cgroup is not None:
            env[CGROUP_ENV] = " ".join(self.cgroup.procs)  # read, then unset, by the entering shell
        if self.job.mps is not None:
            env.update(mps_environment(self.job.mps))
        return env

    def kill(self, sig: int) -> None:
        """Signal the process's group through its init (tini), or end it all."""
        if self.proc is None or self.proc.returncode is not None:
            return
        target = self._init_pid()
        try:
            os.kill(target or self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _init_pid(self) -> int | None:
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    async def feed_stdin(self, stdin: trio.abc.SendStream) -> None:
        try:
            async for data, eof in self.stdin_recv:
                if data:
                    await stdin.send_all(data)
                if eof:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the process closed its stdin; what it did not read is dropped
        finally:
            with trio.CancelScope(shield=True):
                await stdin.aclose()

    async def pump(self, stream: trio.abc.ReceiveStream, fd: int) -> None:
        while True:
            try:
                data = await stream.receive_some(CHUNK)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return  # EIO (trio: BrokenResourceError): the terminal's last holder closed it
            if not data:
                return
            await self.take_credit(len(data))
            self.stats.output_bytes += len(data)
            await self.send(s.RunOutput(run=self.job.run, fd=fd), [data])

    def _spawn(self, argv: list[str], stdin: Any, stdout: Any, stderr: Any) -> subprocess.Popen:
        """Start the process from this (the main) thread, never a worker thread.

        `setpriv --pdeathsig` ties the process's life to the thread that forked it:
        trio's open_process forks in a worker thread that it retires when idle (after
        10 s), which would kill a longer run.  Forking here takes a few milliseconds.
        """
        return subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, env=self.environment(), start_new_session=True
        )

    async def _wait(self) -> int:
        assert self.proc is not None
        return await trio.to_thread.run_sync(self.proc.wait, abandon_on_cancel=True)

    async def run_process(self) -> int:
        if self.start.tty:
            return await self._run_on_terminal()
        self.proc = self._spawn(self.command(), subprocess.PIPE, subprocess.PIPE, subprocess.PIPE)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        stdin = trio.lowlevel.FdStream(os.dup(self.proc.stdin.fileno()))
        stdout = trio.lowlevel.FdStream(os.dup(self.proc.stdout.fileno()))
        stderr = trio.lowlevel.FdStream(os.dup(self.proc.stderr.fileno()))
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()
        async with trio.open_nursery() as pumps:
            pumps.start_soon(self.pump, stdout, 1)
            pumps.start_soon(self.pump, stderr, 2)
            feeder = trio.CancelScope()

            async def feed() -> None:
                with feeder:
                    await self.feed_stdin(stdin)

            pumps.start_soon(feed)
            status = await self._wait()
            feeder.cancel()  # the process is gone: nobody reads its input any more
        self.phase("run")
        return status if status >= 0 else 128 - status

    async def _run_on_terminal(self) -> int:
        """The client has a terminal: the process gets a pseudo-terminal of its own."""
        master, slave = os.openpty()
        self.master = master
        self.resize(self.start.rows, self.start.cols)
        self.proc = self._spawn([sys.executable, "-c", _TAKE_TERMINAL, *self.command()], slave, slave, slave)
        os.close(slave)
        terminal = trio.lowlevel.FdStream(os.dup(master))
        drained = trio.Event()

        async def output() -> None:
            await self.pump(terminal, 1)
            drained.set()

        async with trio.open_nursery() as pumps:
            pumps.start_soon(output)
            pumps.start_soon(self.feed_stdin, terminal)
            status = await self._wait()
            # Whatever the process wrote last may still be in the terminal: the pump reads it
            # all and ends at EIO, once no process holds the terminal.  Bounded: a process
            # left in the background may still hold it.
            with trio.move_on_after(2):
                await drained.wait()
            pumps.cancel_scope.cancel()
        os.close(master)
        self.phase("run")
        return status if status >= 0 else 128 - status

    def resize(self, rows: int, cols: int) -> None:
        master = getattr(self, "master", None)
        if master is not None:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # --- write-back ------------------------------------------------------------------

    def changes(self) -> list[tuple[s.Change, Path | None]]:
        """What the process changed under client paths, from the overlay's upper layer."""
        out: list[tuple[s.Change, Path | None]] = []
        for top, dirs, files in os.walk(self.upper):
            rel_top = "/" + os.path.relpath(top, self.upper) if top != str(self.upper) else "/"
            for name in sorted(dirs + files):
                full = Path(top) / name
                path = rel_top.rstrip("/") + "/" + name
                if _inside(path, "/.radium") or path in self.made_for_mounts:
                    continue  # the supervisor's own: init, the MPS script and binaries
                if _inside(path, "/tmp") and not (
                    _inside(path, self.start.cwd) or _inside(self.start.cwd, path)
                ):
                    continue  # the client's /tmp was served for the working directory's sake only
                st = os.lstat(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    out.append((s.Change(kind="delete", path=path), None))
                elif stat.S_ISDIR(st.st_mode):
                    out.append(
                        (
                            s.Change(
                                kind="dir",
                                path=path,
                                mode=stat.S_IMODE(st.st_mode),
                                mtime_ns=st.st_mtime_ns,
                                opaque=_opaque(full),
                            ),
                            None,
                        )
                    )
                elif stat.S_ISLNK(st.st_mode):
                    out.append(
                        (
                            s.Change(
                                kind="symlink", path=path, target=os.readlink(full), mtime_ns=st.st_mtime_ns
                            ),
                            None,
                        )
                    )
                elif stat.S_ISREG(st.st_mode):
                    out.append(
                        (
                            s.Change(
                                kind="file",
                                path=path,
                                mode=stat.S_IMODE(st.st_mode),
                                mtime_ns=st.st_mtime_ns,
                                size=st.st_size,
                            ),
                            full,
                        )
                    )
            dirs[:] = [
                d
                for d in dirs
                if (rel_top.rstrip("/") + "/" + d) != "/.radium"
                and not stat.S_ISCHR(os.lstat(Path(top) / d).st_mode)
            ]
        return out

    async def write_back(self) -> None:
        changes = self.changes()
        for change, source in changes:
            await self.take_credit(0)
            await self.send(s.Writeback(run=self.job.run, change=change))
            if source is None:
                continue
            with open(source, "rb") as f:
                offset = 0
                while True:
                    data = f.read(WRITEBACK_CHUNK)
                    last = f.tell() >= change.size or not data
                    await self.take_credit(len(data))
                    self.stats.bytes_written_back += len(data)
                    await self.send(
                        s.WritebackData(run=self.job.run, path=change.path, offset=offset, last=last), [data]
                    )
                    offset += len(data)
                    if last:
                        break
        self.tree.keep_learned()
        self.kept.save()
        await self.send(s.WritebackEnd(run=self.job.run, changes=len(changes)))
        await self.writeback_done.wait()
        self.phase("writeback")


# The run's own CUDA MPS control daemon (see docs/run.md, "Partial NVIDIA devices"): started
# inside the run, as its user, before the process; it and its server end with the run's PID
# namespace.  The defaults set here bind every client of this daemon, the process included.
MPS_DIR = "/dev/shm/.radium-mps"  # private to the run, thrown away with it
MPS_START = """\
# Radium: start this run's CUDA MPS daemon with its lease's limits, then the process.
set -e
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
PATH=/.radium/bin:$PATH nvidia-cuda-mps-control -d
control() { echo "$1" | PATH=/.radium/bin:$PATH nvidia-cuda-mps-control >/dev/null; }
control "set_default_active_thread_percentage $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
IFS=,
for limit in $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT; do
  control "set_default_device_pinned_mem_limit ${limit%%=*} ${limit#*=}"
done
unset IFS
set +e
exec "$@"
"""


def mps_environment(mps: channel.Mps) -> dict[str, str]:
    """What the process (and the MPS daemon started before it) is given for a partial lease."""
    return {
        "CUDA_MPS_PIPE_DIRECTORY": f"{MPS_DIR}/pipe",
        "CUDA_MPS_LOG_DIRECTORY": f"{MPS_DIR}/log",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(mps.threads),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": ",".join(
            f"{index}={mib}M" for index, mib in sorted(mps.memory_mib.items())
        ),
    }


# Run by the appliance's Python just before `unshare`: make the terminal on stdin the
# controlling terminal of this new session, so that ^C and window changes reach the process.
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _opaque(path: Path) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _normal_priority() -> None:
    """Niceness 0 for every thread of this process (on Linux, niceness is per thread)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(task), 0)


async def supervise(fd: int, settings: channel.Settings) -> int:
    sock = socket.socket(fileno=fd)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    reader = channel.TrioReader(stream)
    layers = Path(settings.runs_dir).with_name("layers")  # beside the runs' folders, root's alike
    layer = await trio.to_thread.run_sync(spare_layer, layers, settings.writable_bytes)
    try:
        job = channel.decode("job", (await reader.read())[0])
        _normal_priority()  # a spare waited at a low one
        sup = Supervisor(job, settings, stream, reader, layer)
    except channel.ChannelClosed:
        if layer is not None:
            drop(layer)
        return 0  # a spare that radiumd no longer needs
    except (msgspec.ValidationError, ValueError) as exc:  # or what the settings do not allow
        log("bad job from radiumd", error=str(exc))
        if layer is not None:
            drop(layer)
        return 2
    status, detail = 255, ""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.read_loop, nursery.cancel_scope)
            if settings.direct_host is not None:
                nursery.start_soon(sup.asks.offer_direct, settings.direct_host, nursery)
            try:
                await sup.prepare(nursery)
                missing = await sup.missing_command()
                if missing is None:
                    status = await sup.run_process()
                    detail = sup.limit_report()
                else:
                    status, detail = 127, missing  # as a shell: nothing runs
                await sup.write_back()
                result = sup.writeback_result
                if result is not None and not result.ok:
                    detail = f"writing back to the client failed: {result.error}"
            except OVERLAY_ERRORS as exc:
                detail = f"the appliance could not set up the run: {exc}"
                log("run setup failed", run=job.run, error=str(exc))
            except ValueError as exc:
                detail = str(exc)
            sup.stats.cache_hits, sup.stats.cache_misses = (
                sup.tree.cache_counts() if hasattr(sup, "tree") else (0, 0)
            )
            if hasattr(sup, "tree"):
                st = sup.tree.stats
                sup.stats.fuse_ops = sum(st.ops.values())
                sup.stats.content_seconds = {k: round(v, 4) for k, v in st.seconds.items()}
                # Files came through FUSE, or names it did not find: the warm tree may take them.
                await sup.leave_world(
                    claim=bool(st.ops["open"] or st.ops["readlink"] or sup.tree.absent_noted)
                )
                log("file requests", run=job.run, by_kind=dict(st.requests), fuse_ops=dict(st.ops))
            await sup.send(s.RunExit(run=job.run, status=status, detail=detail, stats=sup.stats))
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await sup.teardown()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="radium-supervisor")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--settings", required=True, help="channel.Settings as JSON")
    args = parser.parse_args()
    return trio.run(supervise, args.fd, msgspec.json.decode(args.settings, type=channel.Settings))


if __name__ == "__main__":
    sys.exit(main())
