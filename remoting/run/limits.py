"""A run's share of the appliance, held by the kernel: a cgroup of its own.

Without one, a run allocating more memory than the appliance has, or a fork bomb, takes
the appliance and every other tenant's runs down with it.  As batch schedulers confine
jobs (Slurm's task/cgroup, HTCondor), each run gets a cgroup with

- a memory ceiling, swap counted with it (`memory.memsw.limit_in_bytes` on v1,
  `memory.swap.max = 0` on v2): at the ceiling the kernel's OOM killer ends a process of
  that run, and nothing else; the supervisor reads the cgroup's OOM count and tells the
  user which limit ended the run;
- a pids limit: a fork bomb gets EAGAIN at it;
- a CPU weight (`cpu.shares` on v1, `cpu.weight` on v2): runs share the cores evenly;
- its device nodes: the basic ones, its lease's and the operator's, no other
  (run/devicefilter.py: the `devices` controller on v1, an eBPF filter on v2).

`RunCgroup` is the one small interface over both hierarchies: cgroup v1 (one hierarchy per
controller, as on this lab's machines: tested whole) and v2 (one unified hierarchy, as the
appliance image boots under systemd: radiumd's unit delegates its subtree, radiumd moves itself
into a leaf of it at start (`settle_v2`), runs' cgroups go beside that leaf; the image test
checks a run's placement there).  A run's process enters its cgroup before it starts
(`enter_command`: a shell writes its own pid into the cgroup, then execs the run's
command), so every process it makes is confined from the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import devicefilter, mounts

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "devices")
ENV = "RADIUM_CGROUP_PROCS"  # what the entering shell reads (and unsets)


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes, swap included
    pids: int
    cpu_weight: int  # 1-10000; 100 is an equal share
    devices: tuple[devicefilter.Rule, ...] = devicefilter.BASIC  # what it may open


def spare_memory(reserve_fraction: float = 0.1, reserve_min: int = 512 << 20) -> int:
    """What the appliance can spare a run: its memory less a reserve for itself."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    return max(64 << 20, total - max(reserve_min, int(total * reserve_fraction)))


def memory_ceiling(asked: int, default: int, most: int) -> int:
    """A run's memory limit: what it asked for, else the operator's default per run, never
    more than the operator's most (0: none) nor than the appliance can spare."""
    spare = spare_memory()
    cap = min(most or spare, spare)
    return min(asked or default or cap, cap)


def _own(controller: str | None) -> str:
    """This process's cgroup path in a hierarchy (v1: a controller's; v2: None)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers.split(",") == [""] if controller is None else controller in controllers.split(","):
            return path
    raise OSError(f"no cgroup of {controller or 'the unified hierarchy'} for this process")


def version(root: Path = ROOT) -> int | None:
    """2 for a unified hierarchy, 1 for controllers mounted apart, None without cgroups."""
    if (root / "cgroup.controllers").exists():
        return 2
    if all((root / c).is_dir() for c in V1_CONTROLLERS):
        return 1
    return None


def ensure_mounted(root: Path = ROOT) -> None:
    """Where this mount namespace lacks the cgroup hierarchies the system has (`ip netns exec`
    mounts a fresh /sys: the lab's appliances), mount them here as init has them.  Only in a
    supervisor's private mount namespace: nothing outside it sees these mounts."""
    if version(root) is not None:
        return
    wanted = []
    for line in Path("/proc/1/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, (fstype, _source, options) = before.split(), after.split()[:3]
        if fstype in ("cgroup", "cgroup2") and _under(fields[4], str(root)):
            kept = [o for o in options.split(",") if o not in ("rw", "ro")]
            wanted.append((fstype, fields[4], ",".join(kept)))
    if not wanted:
        return
    if any(target != str(root) for _, target, _ in wanted):
        mounts.tmpfs(root, "mode=755")
    for fstype, target, options in wanted:
        os.makedirs(target, exist_ok=True)
        mounts.mount(fstype, target, fstype, mounts.MS_NOSUID | mounts.MS_NODEV, options or None)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


class RunCgroup:
    """One run's cgroup (its folders, one per v1 controller or one on v2)."""

    def __init__(self, run: str, limits: Limits, root: Path = ROOT) -> None:
        self.run, self.limits = run, limits
        self.version = version(root)
        if self.version is None:
            raise OSError(f"no cgroups at {root} with {', '.join(V1_CONTROLLERS)}")
        self.folders: list[Path] = []
        try:
            if self.version == 1:
                self._make_v1(root)
            else:
                self._make_v2(root)
        except OSError:
            self.remove()
            raise

    def _made(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.folders.append(folder)
        _sweep(folder.parent, keep=folder)
        return folder

    def _make_v1(self, root: Path) -> None:
        m = self._made(root / "memory" / _own("memory").lstrip("/") / "radium-runs" / self.run)
        (m / "memory.limit_in_bytes").write_text(str(self.limits.memory))
        if (m / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: swap counts too
            (m / "memory.memsw.limit_in_bytes").write_text(str(self.limits.memory))
        p = self._made(root / "pids" / _own("pids").lstrip("/") / "radium-runs" / self.run)
        (p / "pids.max").write_text(str(self.limits.pids))
        c = self._made(root / "cpu" / _own("cpu").lstrip("/") / "radium-runs" / self.run)
        (c / "cpu.shares").write_text(str(max(2, self.limits.cpu_weight * 1024 // 100)))
        d = self._made(root / "devices" / _own("devices").lstrip("/") / "radium-runs" / self.run)
        devicefilter.apply_v1(d, list(self.limits.devices))

    def _make_v2(self, root: Path) -> None:
        # radiumd's unit (Delegate=yes) owns its subtree; radiumd moved itself into its "daemon"
        # leaf (settle_v2), so runs go beside it, in <unit>/radium-runs/<run>.
        base = _v2_base(root)
        base.mkdir(exist_ok=True)
        for folder in (base.parent, base):
            for controller in ("memory", "pids", "cpu"):
                try:
                    (folder / "cgroup.subtree_control").write_text(f"+{controller}")
                except OSError:
                    if controller != "cpu":  # the CPU weight is a nicety; memory and pids are not
                        raise
        g = self._made(base / self.run)
        (g / "memory.max").write_text(str(self.limits.memory))
        if (g / "memory.swap.max").exists():  # swap counted with memory: none beyond it
            (g / "memory.swap.max").write_text("0")
        (g / "pids.max").write_text(str(self.limits.pids))
        if (g / "cpu.weight").exists():
            (g / "cpu.weight").write_text(str(self.limits.cpu_weight))
        devicefilter.attach_v2(g, list(self.limits.devices))

    def prime(self) -> None:
        """Pay now, beside the run's first request, what the process's entry would pay: the
        kernel's first cgroup migration after a quiet spell waits for an RCU grace period
        (10-25 ms here), later ones within a short while do not.  This thread enters the
        run's memory cgroup and leaves it again (v1 moves threads one by one)."""
        if self.version != 1:
            return
        tid = str(threading.get_native_id())
        memory = self.folders[0]
        home = memory.parent.parent  # the supervisor's own memory cgroup
        with contextlib.suppress(OSError):
            (memory / "tasks").write_text(tid)
            (home / "tasks").write_text(tid)

    @property
    def procs(self) -> list[str]:
        """The files a process writes its pid to, to enter this cgroup."""
        return [str(f / "cgroup.procs") for f in self.folders]

    def enter_command(self, argv: list[str]) -> list[str]:
        """`argv`, run inside this cgroup from its first instruction (the files are in ENV)."""
        script = f'for f in ${ENV}; do echo $$ > "$f" || exit 125; done; unset {ENV}; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *argv]

    def oom_kills(self) -> int:
        """Processes of this run the kernel ended at its memory limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for folder in self.folders:
            with contextlib.suppress(OSError):
                for line in (folder / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def remove(self) -> None:
        """Remove the folders (the run's processes are gone with its PID namespace; a dying
        one may hold a folder a moment longer)."""
        for folder in reversed(self.folders):
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: a process still leaving
                    time.sleep(0.01)
            else:
                log.warning("could not remove cgroup %s", folder)
        self.folders = []


def _v2_base(root: Path) -> Path:
    """Where runs' cgroups go on v2: beside the daemon's leaf, in its unit's cgroup."""
    own = root / _own(None).lstrip("/")
    return (own.parent if own.name == DAEMON_LEAF else own) / "radium-runs"


DAEMON_LEAF = "daemon"


def settle_v2(root: Path = ROOT) -> None:
    """On cgroup v2, radiumd (root, at its start) moves itself into a leaf of its unit's cgroup
    (systemd's `Delegate=yes` gives the unit its subtree): a cgroup with processes of its own
    cannot give its children controllers, and the runs' cgroups are to be its children."""
    if version(root) != 2:
        return
    with contextlib.suppress(OSError):
        own = root / _own(None).lstrip("/")
        if own == root or own.name == DAEMON_LEAF:
            return
        leaf = own / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))


STALE_AFTER = 60.0  # seconds an empty run cgroup may stay before a later run removes it


def _sweep(parent: Path, keep: Path) -> None:
    """Remove run cgroups left empty for a while (a supervisor killed while its processes were
    still leaving, so that neither it nor the fork server could).  Never a young one: a run
    side by side makes its cgroup a moment before its process enters it."""
    now = time.time()
    with contextlib.suppress(OSError):
        for folder in parent.iterdir():
            if folder == keep or not folder.name.startswith("R-") or not folder.is_dir():
                continue
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > STALE_AFTER and not (folder / "cgroup.procs").read_text():
                    folder.rmdir()


def remove_left(run: str, root: Path = ROOT) -> None:
    """Remove a run's cgroup folders if its supervisor left them (killed before its teardown).
    Called by the fork server, a sibling of the supervisors: the same cgroups above them."""
    with contextlib.suppress(OSError):
        ensure_mounted(root)
        v = version(root)
        if v == 1:
            folders = [root / c / _own(c).lstrip("/") / "radium-runs" / run for c in V1_CONTROLLERS]
        elif v == 2:
            folders = [_v2_base(root) / run]
        else:
            return
        for folder in folders:
            with contextlib.suppress(FileNotFoundError):
                folder.rmdir()
