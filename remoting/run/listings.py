"""Directory listings kept on the appliance across runs of one client.

A second run of an unchanged project should move almost nothing: content is in
the content store already, and so are the listings.  The appliance asks for a
directory with the digest of the listing it kept (`ReadDir.known`); when the
client finds the directory unchanged it answers with the digest alone.  The
listings themselves live in the content store (by the hash of their encoding);
this index maps a client path to (digest, content key) and is saved per client.
"""

from __future__ import annotations

import logging
from pathlib import Path

import blake3
import msgspec

from .._keys import write_atomic
from .cas import ContentStore, StoreFull
from .fsproto import DirEntry

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()
_entries = msgspec.msgpack.Decoder(list[DirEntry])
_index = msgspec.msgpack.Decoder(dict[bytes, tuple[bytes, bytes]])
MAX_KEPT = 200_000  # directories remembered per client


class KeptListings:
    def __init__(self, store: ContentStore, path: Path | None = None) -> None:
        self.store = store
        self.path = path
        self.index: dict[bytes, tuple[bytes, bytes]] = {}
        if path is not None:
            try:
                self.index = _index.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError):
                self.index = {}  # none yet, or damaged: start afresh

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

    def load(self, path: bytes) -> list[DirEntry] | None:
        kept = self.index.get(path)
        if kept is None:
            return None
        data = self.store.get(kept[1])
        if data is None:  # evicted from the store
            del self.index[path]
            return None
        try:
            return _entries.decode(data)
        except msgspec.DecodeError:
            del self.index[path]
            return None

    def keep(self, path: bytes, digest: bytes, entries: list[DirEntry]) -> None:
        data = _encoder.encode(entries)
        key = blake3.blake3(data).digest()
        try:
            self.store.put(key, data)
        except StoreFull:
            return  # a cache: the next run asks for the whole listing
        if len(self.index) >= MAX_KEPT and path not in self.index:
            self.index.pop(next(iter(self.index)))
        self.index[path] = (digest, key)

    def save(self) -> None:
        if self.path is None:
            return
        try:
            write_atomic(self.path, _encoder.encode(self.index), 0o600)
        except OSError as exc:
            log.warning("could not save kept listings: %s", exc)
