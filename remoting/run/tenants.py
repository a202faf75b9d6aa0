"""Which chunks of the shared content store a tenant may be served.

The store keeps a chunk once, whichever client sent it, and a client names the
chunks of its files by hash.  Served by hash alone, a client that names a hash it
never sent — a modified client, or one that guessed a known file's hash — would be
handed another tenant's content, and the store's answers would tell it what others
have.  So a run is served a stored chunk only if its tenant sent that chunk itself:
`OwnedChunks` is the tenant's record (the hashes of every chunk its clients sent and
the appliance verified); any other chunk is asked of the client and verified, as a
cold one, so a liar gets nothing, and the appliance behaves the same whether or not
it holds the chunk.  The saving that matters stays: one client's second run moves
nothing.

A tenant is a client, or a group of clients the operator declares one
(`[run] tenant_groups`, sharing what they send).  The record lives beside the store
(`tenants/<tenant>.chunks`, 32 bytes a hash, appended to at each run's end) and is
read on first use, not at every start: a warm run rarely asks for a chunk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .._keys import write_atomic

log = logging.getLogger(__name__)
DIGEST = 32


def tenant_of(client: str, groups: dict[str, list[str]]) -> str:
    """The tenant a client belongs to: its group's (`group:NAME`), else its own."""
    for name, members in sorted(groups.items()):
        if client in members:
            return f"group:{name}"
    return client


class OwnedChunks:
    """The chunks one tenant has sent (`path`: its record; None keeps it in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known: set[bytes] | None = None
        self._new: list[bytes] = []
        self._on_disk = 0  # records in the file, duplicates included

    def _load(self) -> set[bytes]:
        if self._known is None:
            data = b""
            if self.path is not None:
                try:
                    data = self.path.read_bytes()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot read %s: %s (its chunks are fetched again)", self.path, exc)
            usable = len(data) - len(data) % DIGEST  # a torn last record is dropped
            self._on_disk = usable // DIGEST
            self._known = {data[i : i + DIGEST] for i in range(0, usable, DIGEST)}
        return self._known

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._load()

    def add(self, digest: bytes) -> None:
        """The tenant sent this chunk (and it was verified)."""
        known = self._load()
        if digest not in known:
            known.add(digest)
            self._new.append(digest)

    def save(self) -> None:
        """Append what this run added (rewrite the file when it is mostly repeats)."""
        if self.path is None or not self._new:
            return
        known = self._load()
        try:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            if self._on_disk > 2 * len(known) + 1024:  # runs side by side appended the same hashes
                write_atomic(self.path, b"".join(sorted(known)), 0o600)
                self._on_disk = len(known)
            else:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, b"".join(self._new))
                finally:
                    os.close(fd)
                self._on_disk += len(self._new)
            self._new.clear()
        except OSError as exc:  # a later run fetches those chunks again: nothing is wrong, only slower
            log.warning("could not save %s: %s", self.path, exc)
