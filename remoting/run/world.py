"""A run's world on the appliance: its folder, its layers and mounts, its cgroup and the
client's warm tree — built before the process starts, taken apart after it ends.

The first half of a run's supervisor (run/supervisor.py: `Supervisor` is a `World`; the
channel, the process and the write-back are the other half).  In order:

1. the run's folder (root's), its writable layer on a file system of its own
   (run/layer.py) and its cgroup (run/limits.py), made beside the first request;
2. the first request: the client's listings of what the run will need, and the recheck
   of the client's warm tree (run/warmtree.py), which is pruned to agree with them;
3. the client's tree served by FUSE (run/fs.py), the warm tree above it, the overlay with
   the writable layer on top; tini, the appliance's `/dev`, `/sys` and lent paths bound in,
   fresh scratch folders;
4. at the end: the world detached before the client hears of the exit (the warm tree left
   for the client's next run, or claimed to add what this run read), then taken apart.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from .. import _threads
from .. import schema as s
from ..output import mib
from . import channel, devicefilter, mounts
from .cas import ContentStore, StoreFull
from .fs import ClientTree
from .fsasks import FileAsks
from .fsfill import FILL_RUN_BYTES
from .fsmount import mount_and_serve, unmount
from .fsproto import CHUNK_SIZE, INLINE_MAX, chunk_hash
from .layer import bounded_layer, drop, take
from .limits import Limits, RunCgroup, ensure_mounted, memory_ceiling
from .listings import KeptListings
from .mps import MPS_START
from .tenants import OwnedChunks, tenant_of
from .wakeups import IdlePolling
from .warmtree import WarmTree

PREFETCH_ENTRIES = 20_000
# What a run wrote and sent back is kept in the content store for its client's next runs (a
# checkpoint, a cache they read again), up to this many bytes and seconds after the run.
KEEP_WRITTEN = 256 << 20
KEEP_BUDGET = 1.0
# A short process leaves no quiet time to fetch the files it read in part (fscontent.py): the
# end of its run waits for that, a quarter of the process's own time, within the bounds of
# Settings.complete_at_exit ([run] complete_at_exit).
COMPLETE_AT_EXIT_SHARE = 0.25
LOOK_AHEAD_FILES = 50_000  # the most warm files looked up through a run's new overlay as it starts
LOOK_AHEAD_S = 0.5  # and for how long at most
WARM_WAIT = 2.0  # seconds a run waits for another run of its client to finish changing the warm tree


def log(message: str, **fields: object) -> None:
    """JSON lines on stderr, which radiumd's log collects."""
    entry = {"ts": round(time.time(), 6), "level": "info", "event": message, **fields}
    sys.stderr.write(msgspec.json.encode(entry).decode() + "\n")


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class World:
    """The world-building half of a run's `Supervisor`, which sets these in its constructor."""

    job: channel.Job
    settings: channel.Settings
    start: s.RunStart
    stats: s.RunStats
    asks: FileAsks
    wakeups: IdlePolling  # idle cores polling while the process makes file operations
    id_base: int
    phase_started: float
    spare_layer: Path | None  # the writable layer, made while the supervisor waited
    run_dir: Path
    lower: Path  # FUSE: the client's tree
    upper: Path  # the overlay's upper layer and work folder (on the run's own file system)
    work: Path
    root: Path  # the overlay: the process's /
    warm_mount: Path
    warm: WarmTree | None
    look_ahead: threading.Thread | None
    looking_done: threading.Event
    looked_ahead: int  # files found
    look_ahead_s: float
    cgroup: RunCgroup | None
    id_namespace: int | None  # an fd of the run's user namespace, until the warm tree is mounted through it
    made_for_mounts: set[str]  # upper paths made for mount points; never written back
    mounted: list[Path]
    store: ContentStore
    kept: KeptListings
    owned: OwnedChunks
    tree: ClientTree
    written: list[tuple[Path, int]]  # the files the write-back sent, in the upper layer, and their sizes

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
                await self._make_id_namespace()
            finally:
                side_done.set()

        nursery.start_soon(side)
        await self._ask_first(nursery)
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

    async def _ask_first(self, nursery: trio.Nursery) -> None:
        store_dir = Path(self.settings.store_dir)
        # The store's index is read beside the first request (3-5 ms for a few thousand
        # chunks), whose reply is installed into it.
        self.store = ContentStore(store_dir, self.settings.store_limit, scan=False, opened=False)
        opened = trio.Event()
        failed: list[OSError] = []

        async def open_store() -> None:
            try:
                await trio.to_thread.run_sync(self.store.open)
            except OSError as exc:  # raised here, on the run's own path, as before
                failed.append(exc)
            finally:
                opened.set()

        nursery.start_soon(open_store)
        try:
            await self._ask_first_with(store_dir, opened.wait)
        finally:
            with trio.CancelScope(shield=True):
                await opened.wait()  # never left opening behind
        if failed:
            raise failed[0]

    async def _ask_first_with(self, store_dir: Path, store_ready: Callable[[], Awaitable[object]]) -> None:
        self.kept = KeptListings(self.store, store_dir / "listings" / f"{self.job.client}.idx")
        tenant = tenant_of(self.job.client, self.settings.tenant_groups)
        self.owned = OwnedChunks(store_dir / "tenants" / f"{tenant}.chunks")
        self.tree = ClientTree(
            self.asks.fetch, self.store, id_offset=self.id_base, kept=self.kept, owned=self.owned
        )
        self.tree.on_operation = self.wakeups.busy
        if not self.settings.complete_files:
            self.tree.contents.complete_budget = 0
        self.warm = await self._open_warm()
        if self.warm is not None and self.settings.complete_files:
            self.tree.filler.budget = FILL_RUN_BYTES  # made whole for the warm tree only
        warm_dirs = self.warm.known() if self.warm is not None else {}
        if self.start.prefetch or self.kept.previous or warm_dirs:  # one round trip, not one per directory
            # The warm tree's folders are rechecked by the digests kept now (a later run may have
            # kept a newer listing than the one the warm tree agrees with: then it is pruned).
            also = {p: self.kept.digest(p) or d for p, d in warm_dirs.items()}
            try:
                await self.tree.prefetch(
                    self.start.prefetch, max_entries=PREFETCH_ENTRIES, also=also, ready=store_ready
                )
            except (OSError, ValueError) as exc:
                log("prefetch failed", run=self.job.run, error=str(exc))
            self.phase("prefetch")

    async def _mount_world(self, nursery: trio.Nursery) -> None:
        await nursery.start(mount_and_serve, self.tree, str(self.lower))
        self.mounted.append(self.lower)
        lowers = str(self.lower)
        if self.warm is not None and await self._mount_warm():
            lowers = f"{self.warm_mount}:{self.lower}"
        else:
            self.tree.filler.budget = 0  # no warm tree this run: nothing to make folders whole for
        self._drop_id_namespace()  # the process enters it by its file
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
        # redirect_dir=follow: a folder of the warm tree below an opaque one is merged with
        # FUSE's through its redirect (warmtree.py), whatever the kernel's default.
        options = f"lowerdir={lowers},upperdir={self.upper},workdir={self.work},xino=on,redirect_dir=follow"
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
        if self.warm is not None and self.warm.usable:
            paths = self.warm.complete_files(LOOK_AHEAD_FILES, first=os.fsencode(self.start.cwd))
            if paths:
                self.look_ahead = _threads.Thread(
                    target=self._look_up, args=(paths,), name="radium-look-ahead", daemon=True
                )
                self.look_ahead.start()

    def _look_up(self, paths: list[bytes]) -> None:
        """Look the warm tree's complete folders' files up through the run's overlay while the
        process starts: a fresh overlay makes a dentry and an inode of its own for each file
        at its first lookup, and then the process finds them made (docs/run.md, "Looked up
        ahead": a walk of 10,000 files through a fresh overlay took 1.7x the local walk, the
        same walk again 1.3x). On the other core, at most LOOK_AHEAD_S; only what the overlay
        serves without FUSE, but for the folders above them."""
        root = os.fsencode(self.root)
        started = time.monotonic()
        for i, path in enumerate(paths):
            if self.looking_done.is_set() or (i % 256 == 0 and time.monotonic() > started + LOOK_AHEAD_S):
                break
            with contextlib.suppress(OSError):
                os.lstat(root + path)
                self.looked_ahead += 1
        self.look_ahead_s = time.monotonic() - started

    async def _stop_looking(self) -> None:
        """Before the world is taken apart (a lookup may be waiting on FUSE, served by this thread)."""
        self.looking_done.set()
        if self.look_ahead is not None:
            await trio.to_thread.run_sync(self.look_ahead.join)
            self.look_ahead = None
            log(
                "warm files looked up ahead",
                run=self.job.run,
                files=self.looked_ahead,
                seconds=round(self.look_ahead_s, 3),
            )

    @property
    def userns_file(self) -> Path:
        """The run's user namespace, bound on a file of its folder (root's, 0700) for `nsenter`."""
        return self.run_dir / "userns"

    async def _make_id_namespace(self) -> None:
        """The run's user namespace (ids 0..ID_COUNT-1 onto the run's id range), made beside
        the first request (forking this process for it takes 2-4 ms): the process enters it
        (Supervisor.command), and the warm tree is mounted through it (its owners shifted onto
        the run's ids). Kept on a file of the run's folder; the fd until the warm tree is mounted."""
        st = self.settings
        try:
            fd = await trio.to_thread.run_sync(mounts.user_namespace, self.id_base, st.ID_COUNT)
        except OSError as exc:  # the process cannot start: said when it is spawned
            log("no user namespace for the run", run=self.job.run, error=str(exc))
            return
        self.id_namespace = fd
        try:
            self.userns_file.touch(mode=0o600)
            mounts.bind(f"/proc/self/fd/{fd}", self.userns_file)
            self.mounted.append(self.userns_file)
        except OSError as exc:
            log("user namespace not kept", run=self.job.run, error=str(exc))

    def _drop_id_namespace(self) -> None:
        if self.id_namespace is not None:
            os.close(self.id_namespace)
            self.id_namespace = None

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
            if self.id_namespace is None:
                raise OSError(errno.EINVAL, "no user namespace to map its owners")
            if await trio.to_thread.run_sync(warm.reconcile, tree.confirmed, tree.entries_ahead):
                self.warm_mount.mkdir(mode=0o755)
                await self._mount(
                    self.warm_mount, mounts.idmapped_bind, warm.files, self.warm_mount, self.id_namespace
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
        if inside(self.start.cwd, "/tmp"):
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

    async def finish_reading(self) -> None:
        """The process exited: the files it read in part, being fetched whole when readers were
        quiet (run/fscontent.py), are fetched now, before the client hears of the end, for a
        quarter of the process's own time (within Settings.complete_at_exit, by default 0.2-1 s);
        its next runs then find them in the warm tree rather than faulting them in through FUSE
        again."""
        if not hasattr(self, "tree") or not self.tree.contents.completing:
            return
        low, high = self.settings.complete_at_exit
        seconds = min(high, max(low, COMPLETE_AT_EXIT_SHARE * self.stats.phases.get("run", 0.0)))
        await self.tree.contents.finish(seconds)
        self.phase("complete")

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
        await self._stop_looking()
        if self.root in self.mounted:
            with contextlib.suppress(OSError):
                await trio.to_thread.run_sync(mounts.detach, self.root)  # and all below it
        for mounted in (self.warm_mount, self.userns_file):
            if mounted in self.mounted:
                with contextlib.suppress(OSError):
                    mounts.detach(mounted)
        self.mounted = [m for m in self.mounted if m not in (self.root, self.warm_mount, self.userns_file)]

    async def teardown(self) -> None:
        self.asks.close()
        if hasattr(self, "store"):
            if self.to_keep():  # before the writable layer goes
                await trio.to_thread.run_sync(self._keep_written)
            if hasattr(self, "owned"):
                self.owned.save()
        await self._detach_world()
        self._drop_id_namespace()  # a run that never got as far as mounting the tree
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
        if hasattr(self, "store"):
            # Last: the client's next run may be waiting for the warm tree (WARM_WAIT); what was
            # put since the write-back's flush (Supervisor.write_back) is written now.
            await trio.to_thread.run_sync(self.store.flush)
            try:
                self.store.save_index()  # for the next run to start from (no scan)
            except OSError as exc:
                log("could not save the content store's index", run=self.job.run, error=str(exc))

    def to_keep(self) -> list[tuple[Path, int]]:
        """The written files `_keep_written` keeps, smallest first: not the small ones (a client
        sends those whole with their attributes anyway)."""
        return sorted((w for w in self.written if w[1] > INLINE_MAX), key=lambda w: w[1])

    def _keep_written(self) -> None:
        """Keep what the run wrote and sent back in the content store as its tenant's, so that
        the client's next run reading it is served it here instead of fetching it back; bounded
        by KEEP_WRITTEN bytes and KEEP_BUDGET seconds, at low priority; a failure (a full
        store) costs only a later fetch."""
        os.setpriority(os.PRIO_PROCESS, 0, 10)  # this thread only
        deadline, kept = time.monotonic() + KEEP_BUDGET, 0
        try:
            for source, size in self.to_keep():
                if kept + size > KEEP_WRITTEN or time.monotonic() > deadline:
                    break
                with open(source, "rb") as f:
                    while data := f.read(CHUNK_SIZE):
                        digest = chunk_hash(data)
                        self.store.put(digest, data, verified=True)  # nothing written if it is there
                        self.owned.add(digest)
                kept += size
        except (OSError, StoreFull) as exc:
            log("written files not kept", run=self.job.run, error=str(exc))

    def _grow_warm(self) -> None:
        assert self.warm is not None
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 10)  # this thread only (Linux: a thread is a process here)
            started = time.monotonic()
            added = self.warm.grow(self.tree.nodes, self.tree.contents, later=self.tree.filler.fetched)
            if added:
                took = round(time.monotonic() - started, 3)
                size = self.warm.index.size
                log("warm tree grown", run=self.job.run, files=added, bytes=size, seconds=took)
        except OSError as exc:
            log("warm tree not grown", run=self.job.run, error=str(exc))
        finally:
            self.warm.close()
