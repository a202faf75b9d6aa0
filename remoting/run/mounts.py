"""mount(2) and umount2(2) for the supervisor, without a `mount` process per call.

A run's world takes about eight mounts; through util-linux's `mount` each cost a
fork and exec (~8 ms here), through the system call a few microseconds.  Errors
are `OSError`s naming the target.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
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


# The new mount API (Linux ≥ 5.12 for idmapped mounts), x86_64 and aarch64 share these numbers.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
CLONE_NEWUSER = 0x10000000
_libc.syscall.restype = ctypes.c_long


def _syscall(what: str, *args: object) -> int:
    result = _libc.syscall(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def user_namespace(outside: int, count: int) -> int:
    """An fd of a new user namespace mapping ids 0..count-1 onto outside..outside+count-1
    (the caller closes it; idmapped_bind's ids). Forking a supervisor costs 2-4 ms by its
    resident size: a run makes it beside its first request, off the path to its process.

    A forked child makes it and waits while we write its maps and open it; then it exits
    (the namespace lives on while the fd is open)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # only system calls here: this process has other threads
        code = 1
        try:
            os.close(go_w)  # else its read below never sees the parent's end
            if _libc.unshare(CLONE_NEWUSER) == 0:
                os.write(ready_w, b"1")
                os.read(go_r, 1)
                code = 0
        finally:
            os._exit(code)
    try:
        os.close(ready_w)
        if os.read(ready_r, 1) != b"1":
            raise OSError(0, "unshare(CLONE_NEWUSER) failed in the helper")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"0 {outside} {count}\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)  # the child reads end-of-file and exits
        os.waitpid(pid, 0)
        for fd in (ready_r, go_r):
            os.close(fd)


def idmapped_bind(source: str | os.PathLike, target: str | os.PathLike, userns: int) -> None:
    """A read-only, nosuid, nodev bind of `source` at `target` whose owners are shifted by user
    namespace `userns` (an fd of `user_namespace(outside, count)`): a file owned by N on disk
    shows as owned by outside + N (N < count), as the run's user namespace maps the client's ids
    (mount_setattr(2) MOUNT_ATTR_IDMAP)."""
    tree = -1
    try:
        tree = _syscall(
            f"open_tree {os.fspath(source)}",
            _SYS_OPEN_TREE,
            _AT_FDCWD,
            _b(source),
            _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC,
        )
        flags = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        attr = ctypes.create_string_buffer(struct.pack("QQQQ", flags, 0, 0, userns), 32)  # struct mount_attr
        what = f"mount_setattr {os.fspath(source)}"
        _syscall(what, _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, attr, 32)
        _syscall(
            f"move_mount to {os.fspath(target)}",
            _SYS_MOVE_MOUNT,
            tree,
            b"",
            _AT_FDCWD,
            _b(target),
            _MOVE_MOUNT_F_EMPTY_PATH,
        )
    finally:
        if tree >= 0:
            os.close(tree)
