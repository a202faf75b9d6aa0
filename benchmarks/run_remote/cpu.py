"""Where the CPU goes during a measurement: per-process CPU time, sampled from /proc."""

from __future__ import annotations

import os
import time
from pathlib import Path


class CpuSampler:
    """CPU time of every process on the machine, sampled from /proc in a thread while a command runs.

    Each sample's deltas are put in one of three groups: the training process (`python -m
    marker ...`), this benchmark's other processes (descendants of this one: radiumd, the
    supervisor, the `radium` CLI, this driver), and everything else (other users of the machine,
    kernel threads); plus "steal", the time the hypervisor gave this VM's vCPUs to others
    (/proc/stat), which slows whatever runs meanwhile.  `window(t0, t1)` sums the CPU
    seconds of the samples taken in [t0, t1].
    """

    def __init__(self, marker: str, interval: float = 0.5) -> None:
        import threading

        self.marker, self.interval = marker, interval
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, dict[str, float]]] = []
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
    def _steal() -> int:
        """Ticks stolen from this VM's vCPUs by the hypervisor, all vCPUs, since boot."""
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) if len(fields) > 8 else 0

    def _loop(self) -> None:
        me = os.getpid()
        prev, prev_steal = self._read(), self._steal()
        while not self._stop.wait(self.interval):
            now, cur, steal = time.time(), self._read(), self._steal()
            groups = {"train": 0.0, "bench": 0.0, "other": 0.0, "steal": (steal - prev_steal) / self.tick}
            prev_steal = steal
            for pid, (_ppid, ticks, argv) in cur.items():
                delta = ticks - prev[pid][1] if pid in prev else 0
                if delta <= 0:
                    continue
                ours, p, seen = False, pid, 0
                while p > 1 and seen < 64:  # walk up to this driver, or to init
                    if p == me:
                        ours = True
                        break
                    p, seen = cur.get(p, (0, 0, []))[0], seen + 1
                group = "train" if argv[1:3] == ["-m", self.marker] else "bench" if ours else "other"
                groups[group] += delta / self.tick
            self.samples.append((now, groups))
            prev = cur

    def window(self, t0: float, t1: float) -> dict[str, float]:
        total = {"train": 0.0, "bench": 0.0, "other": 0.0, "steal": 0.0}
        for ts, groups in self.samples:
            if t0 + self.interval <= ts <= t1 + self.interval / 2:  # samples covering [t0, t1]
                for k, v in groups.items():
                    total[k] += v
        return total
