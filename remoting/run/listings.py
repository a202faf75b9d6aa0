"""Directory listings kept on the appliance across runs of one client.

A second run of an unchanged project should move almost nothing: content is in
the content store already, and so are the listings.  The appliance asks for a
directory with the digest of the listing it kept (`ReadDir.known`); when the
client finds the directory unchanged it answers with the digest alone.  The
listings themselves live in the content store (by the hash of their encoding);
this index maps a client path to (digest, content key) and is saved per client.

It also remembers which directories the last run used: the next run asks the client
to recheck all of them in its first request (`Prefetch.known`), so that a warm start
pays one round trip for them, not one per directory.  Kept listings
carry the chunk hashes learned while the files were read; a file whose listing
entry still holds (same size, times, inode) is then opened without asking.
"""

from __future__ import annotations

import logging
from pathlib import Path

import blake3
import msgspec

from .._keys import write_atomic
from .cas import ContentStore
from .fsproto import DirEntry

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()
_entries = msgspec.msgpack.Decoder(list[DirEntry])
MAX_KEPT = 200_000  # directories remembered per client
MAX_RECENT = 4_096  # directories rechecked at the start of a run


class _Saved(msgspec.Struct, array_like=True):
    index: dict[bytes, tuple[bytes, bytes]]  # path -> (listing digest, content key)
    recent: list[bytes] = []  # directories the last run used


_saved = msgspec.msgpack.Decoder(_Saved)


class KeptListings:
    def __init__(self, store: ContentStore, path: Path | None = None) -> None:
        self.store = store
        self.path = path
        self.index: dict[bytes, tuple[bytes, bytes]] = {}
        self.recent: dict[bytes, None] = {}  # directories this run used, least recently first
        self.previous: list[bytes] = []  # those of the last run
        if path is not None:
            try:
                saved = _saved.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError):
                saved = _Saved(index={})  # none yet, or damaged (or of an older layout): start afresh
            self.index, self.previous = saved.index, saved.recent

    def digest(self, path: bytes) -> bytes | None:
        kept = self.index.get(path)
        return kept[0] if kept else None

    def under(self, tops: list[bytes]) -> dict[bytes, bytes]:
        """path -> digest for kept listings at or below `tops` (and their ancestors)."""
        out = {}
        for path, (digest, _) in self.index.items():
            if any(path == t or path.startswith(t.rstrip(b"/") + b"/") or t.startswith(path) for t in tops):
                out[path] = digest
        return out

    def recently_used(self) -> dict[bytes, bytes]:
        """path -> digest for the kept listings the last run used, parents before children."""
        return {path: self.index[path][0] for path in sorted(self.previous) if path in self.index}

    def used(self, path: bytes) -> None:
        """The run used this directory's listing: recheck it first next time."""
        self.recent.pop(path, None)
        self.recent[path] = None
        while len(self.recent) > MAX_RECENT:
            self.recent.pop(next(iter(self.recent)))

    def load(self, path: bytes, used: bool = True) -> list[DirEntry] | None:
        """The kept entries of `path`; `used`: the run consults them (not only installs them ahead)."""
        kept = self.index.get(path)
        if kept is None:
            return None
        data = self.store.get(kept[1])
        if data is None:  # evicted from the store
            del self.index[path]
            return None
        try:
            entries = _entries.decode(data)
        except msgspec.DecodeError:
            del self.index[path]
            return None
        if used:
            self.used(path)
        return entries

    def keep(self, path: bytes, digest: bytes, entries: list[DirEntry], used: bool = True) -> None:
        """Keep a listing (its entries' attributes: small files' content that came with it goes
        to the content store as the listing is installed, never into a kept listing)."""
        data = _encoder.encode(
            [
                e
                if e.attr.data is None
                else DirEntry(name=e.name, attr=msgspec.structs.replace(e.attr, data=None))
                for e in entries
            ]
        )
        key = blake3.blake3(data).digest()
        self.store.put_soon(key, data)  # a cache: if the store cannot take it, the next run asks for it whole
        if len(self.index) >= MAX_KEPT and path not in self.index:
            self.index.pop(next(iter(self.index)))
        self.index[path] = (digest, key)
        if used:
            self.used(path)

    def save(self) -> None:
        if self.path is None:
            return
        saved = _Saved(index=self.index, recent=[p for p in self.recent if p in self.index])
        try:
            write_atomic(self.path, _encoder.encode(saved), 0o600)
        except OSError as exc:
            log.warning("could not save kept listings: %s", exc)
