"""Mounting a `ClientTree`, and taking a mount away when its server is gone.

pyfuse3 holds one mount per process: `mount_and_serve` mounts, serves until
cancelled (or `pyfuse3.terminate()`), then unmounts.  Nothing here stats the
mount point (from the serving process that would deadlock): what is needed about
it is read from /proc/self/mountinfo.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable

import pyfuse3
import trio

from radium.remoting.run.files import read_mountinfo
from radium.remoting.run.fs import ClientTree

log = logging.getLogger(__name__)

MOUNT_OPTIONS = frozenset({"fsname=radium", "subtype=radium", "allow_other", "default_permissions", "ro"})

__all__ = ["MOUNT_OPTIONS", "is_mounted", "mount_and_serve", "unmount"]


def _mount_device(mountpoint: bytes) -> str | None:
    """The "major:minor" of the file system mounted at `mountpoint`, from the mount table (no stat)."""
    found = [m.device for m in read_mountinfo() if m.mount_point == mountpoint]
    return found[-1] if found else None


def _set_read_ahead(mountpoint: bytes, kb: int) -> None:
    """Let the kernel read ahead `kb` at a time: 1 MiB requests read big files about twice as fast."""
    device = _mount_device(mountpoint)
    if device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as exc:
        log.info("cannot set read_ahead_kb of %r: %s", mountpoint, exc)


def _resolve_beside(mountpoint: str | os.PathLike) -> bytes:
    """The real path of `mountpoint`, resolving its parent only: the mount itself is never stat'ed."""
    path = os.path.abspath(os.fsencode(mountpoint))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_mounted(mountpoint: str | os.PathLike) -> bool:
    """Whether something is mounted at `mountpoint`, from the mount table (never stats it)."""
    path = _resolve_beside(mountpoint)
    return any(m.mount_point == path for m in read_mountinfo())


async def mount_and_serve(
    tree: ClientTree,
    mountpoint: str | os.PathLike,
    ready: Callable[[], object] | None = None,
    *,
    read_ahead_kb: int = 1024,
    debug: bool = False,
    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount `tree` at `mountpoint` and serve it until cancelled or `pyfuse3.terminate()`; then unmount.

    `ready()` is called (and `task_status.started()`, for `nursery.start`) once
    the mount exists.  One mount per process: pyfuse3 keeps global state.
    """
    # Resolved before mounting, and without the last component: afterwards, that would stat the
    # mount from its own server.
    point = _resolve_beside(mountpoint)
    options = set(MOUNT_OPTIONS)
    if debug:
        options.add("debug")
    if read_ahead_kb:
        # Not now: the kernel's INIT handshake, answered inside main(), would cap it at 128 KiB again.
        tree.after_init = lambda: _set_read_ahead(point, read_ahead_kb)
    pyfuse3.init(tree, os.fsdecode(point), options)
    try:
        async with trio.open_nursery() as background:
            tree.contents.background = background  # read-ahead fetches
            if ready is not None:
                ready()
            task_status.started()
            await pyfuse3.main()
            background.cancel_scope.cancel()
    finally:
        tree.contents.background = None
        pyfuse3.close(unmount=True)


def unmount(mountpoint: str | os.PathLike) -> bool:
    """Unmount a FUSE mount left behind (its server died or hangs); True when nothing is mounted there.

    Tries `fusermount3 -u`, then a lazy `umount -l`; never stats the mount point.
    """
    if not is_mounted(mountpoint):
        return True
    for argv in (["fusermount3", "-u", "-z", os.fspath(mountpoint)], ["umount", "-l", os.fspath(mountpoint)]):
        try:
            subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not is_mounted(mountpoint):
            return True
    return not is_mounted(mountpoint)
