"""Applying a run's changes on the client: every file lands whole or not at all.

Changes arrive in the order the appliance walked its overlay's upper layer
(parents before children).  A file's content is written to a temporary file in
its destination folder and renamed over the destination when its last chunk
arrives, so a reader, or a crash, never sees half a file.  Directory times are
set last, deepest first, since creating entries in a folder changes its time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import schema as s
from .._errors import ProtocolError


def check_client_path(path: str) -> str:
    """A path from the appliance must be absolute and normal: no '..', no NUL, no '//'."""
    if (
        not path.startswith("/")
        or path.startswith("//")  # normpath keeps a leading '//' (POSIX leaves its meaning open)
        or "\0" in path
        or os.path.normpath(path) != path
        or path == "/"
    ):
        raise ProtocolError(f"refused a write-back path from the appliance: {path!r}")
    if any(part == ".." for part in path.split("/")):
        raise ProtocolError(f"refused a write-back path from the appliance: {path!r}")
    return path


@dataclass
class _Pending:
    change: s.Change
    tmp: str
    file: BinaryIO
    written: int = 0


@dataclass
class Applier:
    root: Path = Path("/")  # tests may apply under another root
    files: dict[str, _Pending] = field(default_factory=dict)
    dir_times: list[tuple[str, int]] = field(default_factory=list)
    applied: int = 0
    errors: list[str] = field(default_factory=list)

    def _local(self, path: str) -> Path:
        return self.root / check_client_path(path).lstrip("/")

    def change(self, change: s.Change) -> None:
        target = self._local(change.path)
        try:
            if change.kind == "delete":
                _remove(target)
            elif change.kind == "dir":
                if change.opaque and target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()
                target.mkdir(parents=True, exist_ok=True)
                _try(os.chmod, target, change.mode)
                self.dir_times.append((str(target), change.mtime_ns))
            elif change.kind == "symlink":
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = _temp_name(target)
                os.symlink(change.target, tmp)
                _replace(tmp, target)
                _try(os.utime, target, ns=(change.mtime_ns, change.mtime_ns), follow_symlinks=False)
            elif change.kind == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:40]}.radium-", dir=target.parent)
                os.fchmod(fd, change.mode & 0o7777)
                self.files[change.path] = _Pending(change, tmp, os.fdopen(fd, "wb"))
                if change.size == 0:
                    self._complete(change.path)
                return
            self.applied += 1
        except OSError as exc:
            self.errors.append(f"{change.path}: {exc.strerror or exc}")

    def data(self, path: str, offset: int, data: bytes, last: bool) -> None:
        pending = self.files.get(path)
        if pending is None:
            return  # its creation failed and was recorded
        try:
            if offset != pending.written:
                raise ProtocolError(f"write-back of {path} out of order")
            pending.file.write(data)
            pending.written += len(data)
            if last:
                self._complete(path)
        except OSError as exc:
            self.errors.append(f"{path}: {exc.strerror or exc}")
            self._discard(path)

    def _complete(self, path: str) -> None:
        pending = self.files.pop(path)
        pending.file.flush()
        os.fsync(pending.file.fileno())
        pending.file.close()
        change = pending.change
        os.utime(pending.tmp, ns=(change.mtime_ns, change.mtime_ns))
        target = self._local(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        _replace(pending.tmp, target)
        self.applied += 1

    def _discard(self, path: str) -> None:
        pending = self.files.pop(path, None)
        if pending is not None:
            pending.file.close()
            Path(pending.tmp).unlink(missing_ok=True)

    def finish(self) -> None:
        """End of the write-back: no half file stays behind; folder times set."""
        for path in list(self.files):
            self.errors.append(f"{path}: content incomplete")
            self._discard(path)
        for target, mtime_ns in sorted(self.dir_times, key=lambda t: -t[0].count("/")):
            _try(os.utime, target, ns=(mtime_ns, mtime_ns))

    def abort(self) -> None:
        """The run ended mid-write-back (appliance gone): drop every temporary file."""
        for path in list(self.files):
            self._discard(path)


def _temp_name(target: Path) -> str:
    return str(target.parent / f".{target.name[:40]}.radium-{os.urandom(4).hex()}")


def _replace(tmp: str, target: Path) -> None:
    os.replace(tmp, target)


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def _try(func, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Mode and times on folders the user does not own are best effort."""
    try:
        func(*args, **kwargs)
    except (PermissionError, FileNotFoundError):
        pass
