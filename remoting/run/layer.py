"""A run's writable layer on a file system of its own, of a bounded size.

The overlay's upper layer catches everything a run writes.  On the appliance's state disk
it was unbounded: one run writing without end filled the disk for the store, the warm
trees and every other run.  So each run's upper layer lives on a file system of its own:
a sparse image file (it takes only what is written) formatted ext4 and mounted through a
loop device.  A run that fills it gets ENOSPC itself; nothing else is touched.

Nothing is left behind whatever happens: the image is unlinked as soon as the loop device
holds it, the loop device clears itself when its mount goes (`LO_FLAGS_AUTOCLEAR`), and the
mount lives in the supervisor's private mount namespace, which goes with the supervisor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import subprocess
from pathlib import Path

from . import mounts

log = logging.getLogger(__name__)

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
_CONFIG = struct.Struct("=II40x12xI64x64x32x16x64x")  # struct loop_config: fd, block_size, info.lo_flags


def bounded_layer(target: Path, image: Path, size: int) -> None:
    """Mount a fresh ext4 file system of `size` bytes at `target` (`image`: a scratch path
    for its backing file, removed here)."""
    fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        # No journal (a run's layer is thrown away after a crash), no reserved blocks.
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1,nodiscard",
             str(image)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        loop, dev = _attach(fd)
        try:
            mounts.mount(loop, target, "ext4", mounts.MS_NOSUID | mounts.MS_NODEV, None)
        finally:
            os.close(dev)  # the mount holds the device now; autoclear acts when it goes
    finally:
        os.close(fd)
        image.unlink(missing_ok=True)


def spare_layer(layers: Path, size: int) -> Path | None:
    """A layer made by a spare supervisor while it waits for its job (so that a run's start
    does not pay the ~8 ms), at `<layers>/<pid>` (root's); None when off or not possible."""
    if not size:
        return None
    folder = layers / str(os.getpid())
    try:
        layers.mkdir(mode=0o700, exist_ok=True)
        for left in layers.iterdir():  # mount points of supervisors killed while they waited
            if left.name.isdigit() and not os.path.exists(f"/proc/{left.name}"):
                drop(left)
        folder.mkdir(mode=0o700)
        bounded_layer(folder, folder.with_suffix(".img"), size)
        return folder
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("no writable layer made ahead: %s", exc)
        drop(folder)
        return None


def take(spare: Path, target: Path) -> None:
    """Move a layer made ahead to the run's folder."""
    mounts.mount(spare, target, None, mounts.MS_MOVE)
    spare.rmdir()


def drop(spare: Path) -> None:
    """A layer made ahead that no run took: unmounted (its loop device clears itself), its folder gone."""
    with contextlib.suppress(OSError):
        mounts.detach(spare)
    with contextlib.suppress(OSError):
        spare.rmdir()


def _attach(backing: int) -> tuple[str, int]:
    """A free loop device configured on `backing` (its path, and an fd that keeps it until
    the caller has mounted it), clearing itself when no longer used."""
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(8):  # another process may take the free device first
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{number}"
            dev = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(dev, LOOP_CONFIGURE, _CONFIG.pack(backing, 0, LO_FLAGS_AUTOCLEAR))
                return path, dev
            except OSError as exc:
                os.close(dev)
                if exc.errno != errno.EBUSY:  # taken meanwhile
                    raise
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(control)
