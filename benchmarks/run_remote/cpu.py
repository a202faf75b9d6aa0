"""Where the CPU goes during a measurement: per-process CPU time, sampled from /proc."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path

# The processes of a run, told apart by their command line: (what to look for, what to call it).
ROLES = (
    ("radium.remoting.run.forkserver", "supervisor"),  # a run's supervisor is forked from it
    ("radium.remoting.client.agent", "client"),  # the run agent: the file server's threads
    ("radiumd", "radiumd"),
)


def role(argv: list[str]) -> str:
    """What a process of this benchmark is, by its command line."""
    line = " ".join(argv)
    return next((name for mark, name in ROLES if mark in line), "others")


def thread_label(pid: int, tid: int, comm: str) -> str:
    """A thread's name as reported: a pool's threads together, the event loops' workers together."""
    if tid == pid:
        return "main"
    if comm.startswith("radium-"):
        return re.sub(r"_\d+$", "", comm)  # radium-files_3 -> radium-files
    return "workers"  # trio's (named by their job: "_store_chunks f…") and asyncio's


class CpuSampler:
    """CPU time of every process on the machine, sampled from /proc in a thread while a command runs.

    Each sample's deltas are put in one of three groups: the training process (`python -m
    marker ...`), this benchmark's other processes (descendants of this one: radiumd, the
    supervisor, the `radium` CLI, this driver), and everything else (other users of the machine,
    kernel threads); plus "steal", the time the hypervisor gave this VM's vCPUs to others
    (/proc/stat), which slows whatever runs meanwhile.  `window(t0, t1)` sums the CPU
    seconds of the samples taken in [t0, t1].

    With `threads`, the benchmark's own processes are also sampled thread by thread
    (/proc/<pid>/task: radium names its threads for the OS, `remoting/_threads.py`), and
    `threads_window(t0, t1)` sums them by process role and thread name; what threads that
    ended between two samples used is the process's delta less its live threads'.  A process
    that appears between samples counts all its CPU (it began after the last one); what a
    process used between the last sample and its exit is not seen.
    """

    def __init__(self, marker: str, interval: float = 0.5, threads: bool = False) -> None:
        import threading

        self.marker, self.interval, self.threads = marker, interval, threads
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.thread_samples: list[tuple[float, Counter]] = []
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
    def _tasks(pid: int) -> dict[int, tuple[str, int]]:
        """tid -> (name, utime + stime in ticks) of each live thread of `pid`."""
        out = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(tid)] = (stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[11]) + int(fields[12]))
        return out

    @staticmethod
    def _steal() -> int:
        """Ticks stolen from this VM's vCPUs by the hypervisor, all vCPUs, since boot."""
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) if len(fields) > 8 else 0

    def _loop(self) -> None:
        me = os.getpid()
        prev, prev_steal = self._read(), self._steal()
        prev_tasks = {pid: self._tasks(pid) for pid in prev if self.threads and self._ours(pid, prev, me)}
        while not self._stop.wait(self.interval):
            now, cur, steal = time.time(), self._read(), self._steal()
            groups = {"train": 0.0, "bench": 0.0, "other": 0.0, "steal": (steal - prev_steal) / self.tick}
            by_thread: Counter = Counter()
            tasks: dict[int, dict[int, tuple[str, int]]] = {}
            prev_steal = steal
            for pid, (_ppid, ticks, argv) in cur.items():
                delta = ticks - prev[pid][1] if pid in prev else ticks  # a new one: all since it began
                if delta <= 0 and not self.threads:
                    continue
                ours = self._ours(pid, cur, me)
                group = "train" if argv[1:3] == ["-m", self.marker] else "bench" if ours else "other"
                groups[group] += max(delta, 0) / self.tick
                if self.threads and group == "bench" and pid != me:
                    tasks[pid] = self._tasks(pid)
                    if pid in prev_tasks or pid not in prev:  # its threads' last ticks known, or new
                        before = prev_tasks.get(pid, {})
                        self._count_threads(by_thread, role(argv), pid, delta, tasks[pid], before)
            self.samples.append((now, groups))
            self.thread_samples.append((now, by_thread))
            prev, prev_tasks = cur, tasks

    @staticmethod
    def _ours(pid: int, procs: dict[int, tuple[int, int, list[str]]], me: int) -> bool:
        """Whether `pid` descends from this driver (walking up its parents, to init at most)."""
        p, seen = pid, 0
        while p > 1 and seen < 64:
            if p == me:
                return True
            p, seen = procs.get(p, (0, 0, []))[0], seen + 1
        return False

    def _count_threads(
        self,
        into: Counter,
        kind: str,
        pid: int,
        delta: int,
        now: dict[int, tuple[str, int]],
        before: dict[int, tuple[str, int]],
    ) -> None:
        live = 0
        for tid, (comm, ticks) in now.items():
            was = before.get(tid, (comm, 0))[1]  # a thread that began since: all its CPU
            if ticks > was:
                into[(kind, thread_label(pid, tid, comm))] += (ticks - was) / self.tick
                live += ticks - was
        if delta > live:
            into[(kind, "(threads that ended)")] += (delta - live) / self.tick

    def threads_window(self, t0: float, t1: float) -> dict[str, dict[str, float]]:
        """CPU seconds of the benchmark's processes in [t0, t1]: role -> thread name -> seconds."""
        total: Counter = Counter()
        for ts, by_thread in self.thread_samples:
            if t0 + self.interval <= ts <= t1 + self.interval / 2:
                total.update(by_thread)
        out: dict[str, dict[str, float]] = {}
        for (kind, name), seconds in total.items():
            out.setdefault(kind, {})[name] = round(seconds, 3)
        return out

    def window(self, t0: float, t1: float) -> dict[str, float]:
        total = {"train": 0.0, "bench": 0.0, "other": 0.0, "steal": 0.0}
        for ts, groups in self.samples:
            if t0 + self.interval <= ts <= t1 + self.interval / 2:  # samples covering [t0, t1]
                for k, v in groups.items():
                    total[k] += v
        return total
