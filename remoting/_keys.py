"""CURVE key pairs and the directories of authorised keys.

Keys are stored in ZeroMQ's certificate format (readable with
`zmq.auth.load_certificate`); secret keys are always written 0600, atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._errors import ConfigError, UsageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(name: str, what: str = "name") -> str:
    """Names become file names: keep them plain."""
    if not NAME_RE.fullmatch(name):  # not .match: "$" would let a trailing newline in
        raise UsageError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 63, starting with a letter or digit)"
        )
    return name


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write a file so that readers see the old content or the new, never half.

    The file is created with `mode` from the start (no window where a secret is
    world-readable), flushed to disk, then renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass(frozen=True)
class KeyPair:
    public: str  # Z85, 40 characters
    secret: str | None = None

    @classmethod
    def generate(cls) -> KeyPair:
        import zmq  # where used, here and below: a supervisor imports this module and needs no zmq

        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())


def _certificate(name: str, public: str, secret: str | None) -> str:
    lines = [
        "#   ZeroMQ CURVE certificate written by radium",
        "metadata",
        f'    name = "{name}"',
        "curve",
        f'    public-key = "{public}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


def save_public_key(path: Path, name: str, public: str) -> None:
    write_atomic(path, _certificate(name, public, None), mode=0o644)


def save_keypair(path: Path, name: str, pair: KeyPair) -> None:
    """Save a key pair: `path` gets the public key, `path` + `_secret` both, 0600."""
    save_public_key(path, name, pair.public)
    write_atomic(Path(str(path) + "_secret"), _certificate(name, pair.public, pair.secret), 0o600)


def load_keypair(path: Path) -> KeyPair:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read key: {exc}") from None
    return KeyPair(public.decode(), secret.decode() if secret else None)


def load_or_create_server_keys(state_dir: Path, name: str) -> KeyPair:
    """The appliance's key pair, created on first start and kept 0600."""
    path = Path(state_dir) / "server.key"
    secret = Path(str(path) + "_secret")
    if not secret.exists():
        save_keypair(path, name, KeyPair.generate())
    return load_keypair(secret)


def is_z85_key(text: str) -> bool:
    if len(text) != 40:
        return False
    import zmq.utils.z85

    try:
        return len(zmq.utils.z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError):
        return False


class KeyDirectory:
    """A directory of authorised public keys, one `NAME.key` file each.

    It is re-read whenever the directory changes, so adding or removing a file
    takes effect without a restart.  Lookups are by Z85 public key.  A change is
    seen from the key files' names, inodes, sizes and times, not the directory's
    time alone: that is too coarse on many kernels to see two changes in a row.
    """

    def __init__(self, path: Path, role: str) -> None:
        self.path = Path(path)
        self.role = role
        self._stamp: object = None
        self._folder_mtime: int | None = -1
        self._by_key: dict[str, str] = {}
        self.on_removed: Callable[[], None] | None = None  # called when a key is seen gone

    def _listing(self) -> tuple[tuple[str, int, int, int], ...] | None:
        try:
            with os.scandir(self.path) as entries:
                stats = []
                for e in entries:
                    if e.name.endswith(".key"):
                        try:
                            st = e.stat()
                        except FileNotFoundError:
                            continue
                        stats.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return tuple(sorted(stats))

    def _refresh(self) -> None:
        # The hot path (every message) is one stat of the folder.  Only when the
        # folder changed, or changed so recently that a second change could share
        # its timestamp, are the key files themselves looked at.
        try:
            folder_mtime: int | None = self.path.stat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            folder_mtime = None
        racy = folder_mtime is not None and time.time_ns() - folder_mtime < 2_000_000_000
        if folder_mtime == self._folder_mtime and not racy:
            return
        self._folder_mtime = folder_mtime
        stamp = self._listing()
        if stamp == self._stamp:
            return
        by_key: dict[str, str] = {}
        import zmq.auth

        if stamp is not None:
            for f in sorted(self.path.glob("*.key")):
                try:
                    public, _ = zmq.auth.load_certificate(str(f))
                except (OSError, ValueError):
                    continue  # a half-copied or foreign file is not a key
                by_key[public.decode()] = f.stem
        gone = set(self._by_key.values()) - set(by_key.values())
        self._by_key = by_key
        self._stamp = stamp
        if gone and self.on_removed is not None:
            self.on_removed()

    def name_of(self, public: str) -> str | None:
        self._refresh()
        return self._by_key.get(public)

    def names(self) -> dict[str, str]:
        """name -> public key."""
        self._refresh()
        return {n: k for k, n in self._by_key.items()}

    def add(self, name: str, public: str) -> None:
        check_name(name)
        save_public_key(self.path / f"{name}.key", name, public)

    def remove(self, name: str) -> bool:
        check_name(name)
        try:
            (self.path / f"{name}.key").unlink()
        except FileNotFoundError:
            return False
        self._refresh()  # seen gone at once (on_removed), not at the next lookup
        return True
