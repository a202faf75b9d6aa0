"""The supervisor of one run on the appliance (forked for radiumd, as root, in a private mount namespace).

It builds the process's world and watches over it:

1. the client's file system, served on demand by FUSE (`fs.ClientTree`), as the
   read-only lower layer of an overlay whose upper layer catches every write; above
   FUSE, the client's warm tree (`warmtree`): what its earlier runs read, as real files;
2. the appliance's `/dev`, `/sys` and driver paths bound in, a fresh `/tmp`; the run's
   cgroup and writable layer (these two steps are world.py's: `Supervisor` is a `World`);
3. the process itself, in a user namespace that maps the client's uid/gid onto an
   unprivileged range of this run (made by the supervisor, entered with `nsenter`),
   under `unshare`: a PID namespace with tini as its init (so signals behave), chrooted
   into the overlay, in the client's cwd. The helpers run as root are named by absolute
   path, found in the system's folders: the process's environment is the client's, and its
   PATH must never choose what root runs;
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
import errno
import fcntl
import functools
import os
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from .. import schema as s
from . import channel
from .fsasks import FileAsks
from .layer import drop, spare_layer
from .limits import ENV as CGROUP_ENV
from .limits import RunCgroup
from .mps import mps_environment
from .wakeups import IdlePolling
from .warmtree import WarmTree
from .world import World, inside, log

CHUNK = 64 * 1024
WRITEBACK_CHUNK = 1 << 20
OUTPUT_WINDOW = 16 << 20
OVERLAY_ERRORS = (OSError, subprocess.CalledProcessError)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # where the helpers run as root are looked for
# Variables that make a program load or read files of their naming before it does anything
# (glibc's list of those it ignores in setuid programs, unsecvars.h, and the shells' start-up
# files), besides every LD_*: the helpers that start the process as root never see the
# client's; the program gets them back (`Supervisor._hand_back`).
LOADER_VARIABLES = frozenset(
    {
        "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
        "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR",
        "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS",
    }
)  # fmt: skip


def held_back(name: str) -> bool:
    """Whether a variable of the process's environment is kept from the helpers run as root."""
    return name.startswith("LD_") or name in LOADER_VARIABLES


@functools.cache
def system_tool(name: str) -> str:
    """The absolute path of a helper the supervisor runs as root (never looked up in the
    client's PATH, which the process's environment carries)."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        raise OSError(errno.ENOENT, f"{name} is not installed in {SYSTEM_PATH}")
    return found


class Supervisor(World):
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
        self.written: list[tuple[Path, int]] = []  # files sent back, with their sizes
        self.proc: subprocess.Popen | None = None
        # Input can arrive before the process exists: it waits here, in order.
        stdin = trio.open_memory_channel[tuple[bytes | bytearray, bool]](float("inf"))
        self.stdin_send, self.stdin_recv = stdin
        self.stats = s.RunStats()
        self.asks = FileAsks(job.run, self.send, self.stats, log)  # file requests to the client
        self.wakeups = IdlePolling(settings.poll_idle, log=log)  # idle cores poll while files are used
        self.phase_started = time.monotonic()
        self.run_dir = run_dir = Path(settings.runs_dir) / job.run
        self.lower, self.upper = run_dir / "lower", run_dir / "upper"
        self.work, self.root = run_dir / "work", run_dir / "root"
        self.warm_mount = run_dir / "warm"
        self.warm: WarmTree | None = None
        self.look_ahead: threading.Thread | None = None  # World._look_up
        self.looking_done = threading.Event()
        self.looked_ahead, self.look_ahead_s = 0, 0.0
        self.cgroup: RunCgroup | None = None
        self.id_namespace: int | None = None  # World._make_id_namespace
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

    # --- the process ---------------------------------------------------------------

    def command(self) -> list[str]:
        st = self.start
        count = self.settings.ID_COUNT
        if not (0 <= st.uid < count and 0 <= st.gid < count):
            raise ValueError(f"client uid/gid {st.uid}/{st.gid} outside the mapped range 0-{count - 1}")
        if self.userns_file not in self.mounted:  # World._make_id_namespace logged why
            raise OSError(errno.EPERM, "the run's user namespace could not be made")
        argv = [
            # If this supervisor dies, its process dies with it (pdeathsig survives exec).
            system_tool("setpriv"),
            "--pdeathsig",
            "KILL",
            "--",
            # The run's user namespace (World._make_id_namespace: ids 0..count-1 onto
            # id_base..), entered as its root: the new root is opened before (the run's folder
            # is root's, 0700) and changed to after. The working directory, the client's word,
            # only inside it (`unshare --wd`): opened from here, a symlink on its way to "/"
            # would have led to the appliance's own root.
            system_tool("nsenter"),
            f"--user={self.userns_file}",
            f"--root={self.root}",
            "--",
            system_tool("unshare"),
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            f"--wd={st.cwd}",
            f"--setuid={st.uid}",
            f"--setgid={st.gid}",
            "--",
            "/.radium/init",
            "-g",
            "--",
            *self._hand_back(),
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
                break
        else:
            return why
        if (held := self._held()) and not await self._process_sees("/bin/sh"):
            names = ", ".join(sorted(held))
            return f"the environment sets {names}: giving it to {name} takes /bin/sh, which the client lacks"
        return None

    async def _process_sees(self, path: str) -> bool:
        if any(inside(path, d) for d in self.private_dirs()):
            return False  # fresh and empty
        if any(inside(path, d) for d in ("/dev", "/sys", *self.settings.appliance_paths)):
            return os.path.exists(path)  # the appliance's own
        if self.warm is not None and self.warm.usable and self.warm.holds(os.fsencode(path)):
            return True  # a few lstat: the tree below would load /usr/bin's listing (4-7 ms)
        try:
            return await self.tree.stat_path(path, follow=True) is not None
        except (OSError, ValueError):
            return True  # in doubt, let the process try

    def _held(self) -> dict[str, str]:
        """The variables of the process's environment its helpers do not get (`held_back`;
        one whose name a shell cannot export is the program's no more either)."""
        return {k: v for k, v in self.environment().items() if held_back(k) and k.isidentifier()}

    def _hand_back(self) -> list[str]:
        """The step, in the run's world and as the client's user, that gives the program the
        variables its helpers did not get: the client's /bin/sh, only when there are some."""
        held = self._held()
        if not held:
            return []
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(held.items()))
        return ["/bin/sh", "-c", exports + 'exec "$@"', "sh"]

    def spawn_environment(self) -> dict[str, str]:
        """The environment the helpers start with: the process's, less what they must not read."""
        return {k: v for k, v in self.environment().items() if not held_back(k)}

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
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=self.spawn_environment(),
            start_new_session=True,
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
        # -I: this Python runs as root with the process's environment; PYTHONPATH and the
        # like are for the client's programs, never for it.
        take = [sys.executable, "-I", "-c", _TAKE_TERMINAL]
        self.proc = self._spawn([*take, *self.command()], slave, slave, slave)
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
                if inside(path, "/.radium") or path in self.made_for_mounts:
                    continue  # the supervisor's own: init, the MPS script and binaries
                if inside(path, "/tmp") and not (
                    inside(path, self.start.cwd) or inside(self.start.cwd, path)
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
        self.written = [(source, change.size) for change, source in changes if source is not None]
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
        # The kept listings' index names listings written by the store's writer (put_soon): the
        # client's next run, which may start as soon as it hears of this end, reads them.
        await trio.to_thread.run_sync(self.store.flush)
        self.kept.save()
        await self.send(s.WritebackEnd(run=self.job.run, changes=len(changes)))
        await self.writeback_done.wait()
        self.phase("writeback")


# Run by the appliance's Python just before `unshare`: make the terminal on stdin the
# controlling terminal of this new session, so that ^C and window changes reach the process.
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


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
            sup.wakeups.busy()  # the run's start is hand-offs from end to end, as its file operations
            nursery.start_soon(sup.wakeups.keep)
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
                if status < 128:  # not killed by a signal (^C): that end is not held up
                    await sup.finish_reading()
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
                link = sup.asks.link_times.totals()  # where the direct channel's time went
                sup.stats.content_seconds = {k: round(v, 4) for k, v in {**st.seconds, **link}.items()}
                # Files came through FUSE, or names it did not find: the warm tree may take them;
                # files it wrote are kept for the client's next run (which waits for the tree).
                await sup.leave_world(
                    claim=bool(st.ops["open"] or st.ops["readlink"] or sup.tree.absent_noted or sup.to_keep())
                )
                log("file requests", run=job.run, by_kind=dict(st.requests), fuse_ops=dict(st.ops))
            await sup.send(s.RunExit(run=job.run, status=status, detail=detail, stats=sup.stats))
            sup.wakeups.stop()  # the client has its status: the cores may halt
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
