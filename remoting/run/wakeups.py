"""The appliance's idle cores poll while a run's process works through its file system.

Every file operation a remote process makes that the kernel does not answer itself wakes
threads in turn: the process blocks, FUSE wakes the supervisor's loop, which may wake the
thread that asks the client and then the thread that receives the reply, and the process is
woken in the end.  On a virtual machine a core with nothing to run halts, and waking it
costs the hypervisor's round trip: on the lab's VM a wake-up between two processes took
~25 µs where a polling core takes ~3 µs, and a cold `import torch` makes ~8,700 FUSE
operations and 1,400 requests.

So while a run's process makes file operations, its supervisor holds a CPU latency request
of 0 µs (the kernel's PM QoS: `/dev/cpu_dma_latency`, as tuned's latency-performance profile
does): idle cores poll instead of halting.  The request is let go after `QUIET` seconds
without a file operation (a training loop that reads nothing leaves the cores to sleep) and
made again at the next one; it is the kernel's, tied to the open file, so a supervisor that
dies releases it.  The cost is power and, on a shared host, the CPU time the idle vCPUs
spin: `[run] poll_idle = false` leaves the cores alone.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import trio

DEVICE = "/dev/cpu_dma_latency"  # <linux/pm_qos.h>: a write of an s32 (µs), held while open
QUIET = 1.0  # seconds without a file operation before the cores may halt again


class IdlePolling:
    """A CPU latency request of 0 held while `busy()` is called, let go when it is not for `quiet` s.

    `busy()` runs on trio's thread (each FUSE operation, the run's start) and `keep()` is the
    task that lets the request go, both on trio's clock.  Where the request cannot be made
    (not root, no such device) it is not tried again and the cores halt as before.
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        device: str = DEVICE,
        quiet: float = QUIET,
        log: Callable[..., None] | None = None,
    ) -> None:
        self.enabled, self.device, self.quiet, self.log = enabled, device, quiet, log
        self.held_times = 0  # how often the request was made
        self._fd: int | None = None
        self._last = 0.0
        self._made = trio.Event()

    @property
    def holding(self) -> bool:
        return self._fd is not None

    def busy(self) -> None:
        """A file operation now: the cores poll from here until `quiet` s after the last one."""
        self._last = trio.current_time()
        if self._fd is None and self.enabled:
            self._hold()

    def _hold(self) -> None:
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._give_up(exc)
            return
        try:
            os.write(fd, struct.pack("=i", 0))
        except OSError as exc:
            os.close(fd)
            self._give_up(exc)
            return
        self._fd = fd
        self.held_times += 1
        self._made.set()

    def _give_up(self, exc: OSError) -> None:
        self.enabled = False
        if self.log is not None:
            self.log("idle cores left to halt: no CPU latency request", device=self.device, error=str(exc))

    def stop(self) -> None:
        """Let the request go for good: what is left of the run is the supervisor's own."""
        self.enabled = False
        self.release()

    def release(self) -> None:
        """Let the cores halt again (the kernel drops the request as the file closes)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def keep(self) -> None:
        """Let the request go once no file operation came for `quiet` s; wait for it to be made again."""
        try:
            while self.enabled or self._fd is not None:
                if self._fd is None:
                    self._made = trio.Event()
                    await self._made.wait()
                    continue
                left = self._last + self.quiet - trio.current_time()
                if left > 0:
                    await trio.sleep(left)
                else:
                    self.release()
        finally:
            self.release()
