"""mount(2) and umount2(2) for the supervisor, without a `mount` process per call.

A run's world takes about eight mounts; through util-linux's `mount` each cost a
fork and exec (~8 ms here), through the system call a few microseconds.  Errors
are `OSError`s naming the target.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _b(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | os.PathLike | None,
    target: str | os.PathLike,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {os.fspath(target)}: {os.strerror(err)}")


def bind(source: str | os.PathLike, target: str | os.PathLike, *, recursive: bool = False,
         readonly: bool = False) -> None:  # fmt: skip
    """A bind mount; read-only takes a second call (the kernel ignores MS_RDONLY on the first)."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def tmpfs(target: str | os.PathLike, options: str = "mode=1777", flags: int = MS_NOSUID | MS_NODEV) -> None:
    mount("tmpfs", target, "tmpfs", flags, options)


def detach(target: str | os.PathLike) -> None:
    """Lazily unmount `target` and everything mounted below it (as `umount -l`)."""
    if _libc.umount2(_b(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {os.fspath(target)}: {os.strerror(err)}")


CLONE_NEWNS = 0x00020000
MS_PRIVATE = 1 << 18
_libc.unshare.argtypes = [ctypes.c_int]


def private_mount_namespace() -> None:
    """A mount namespace of this process's own, nothing propagating out (as `unshare --mount
    --propagation private`)."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
