"""The inode table of the appliance end of the file plane (`fs.ClientTree`).

Every client path gets an inode number of ours the first time it is seen and
keeps it for the life of the tree (the kernel drops mounts on a directory whose
inode changes).  Ownership is reported as the client's uid/gid plus `id_offset`
(the run's user namespace maps that range back onto the client's ids); an id
that would not fit becomes 65534 (nobody).
"""

from __future__ import annotations

import errno
import logging
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyfuse3

from radium.remoting.run.fsproto import Attr, DirListing, join

log = logging.getLogger(__name__)

TIMEOUT = 60.0  # seconds the kernel may keep entries and attributes: a run treats the client tree as stable
OVERFLOW_ID = 65534
BLKSIZE = 128 * 1024  # st_blksize: invites readers to ask for big pieces

__all__ = ["Node", "NodeTable", "TreeStats"]


@dataclass(eq=False)
class Node:
    """A client path as the tree knows it."""

    ino: int
    path: bytes
    parent: int
    attr: Attr | None = None
    children: dict[bytes, int] | None = None  # name -> inode, once the directory is listed
    missing: set[bytes] = field(default_factory=set)  # names known absent while unlisted
    absent: set[bytes] = field(default_factory=set)  # names looked up and not in its listing
    unlistable: bool = False  # ReadDir was refused (EACCES): look names up one by one
    data: bytes | None = None  # a small file's content, kept when the store could not take it
    read_end: int = 0  # where the last read ended: a read starting there is sequential
    # An ELF file (told by its first bytes, at the first read from its start): the loader maps
    # it and faults its pages in here and there, so no read of it starts a read-ahead.
    elf: bool | None = None
    entry: pyfuse3.EntryAttributes | None = None
    digest: bytes | None = None  # of the listing installed (a directory's)
    consulted: bool = False  # the process looked names up in it, or listed it
    used: bool = False  # the process looked it up by name or opened it (the warm tree adds those first)
    pushed: bool = False  # its content was put into the kernel's page cache at an open (ClientTree.open)


@dataclass
class TreeStats:
    """What a ClientTree did: FUSE operations, requests to the client, bytes fetched."""

    ops: Counter = field(default_factory=Counter)  # FUSE operations by name
    requests: Counter = field(default_factory=Counter)  # requests sent to the client, by kind
    bytes_fetched: int = 0  # content received: chunks and inline data
    chunks_fetched: int = 0
    chunk_hits: int = 0  # chunk pieces read from the store or memory
    chunk_misses: int = 0  # chunk pieces that had to be fetched
    store_full: int = 0  # chunks the store refused for lack of space (served from memory)
    # Where a cold read's time goes, seconds: readers waiting for content to arrive ("wait"),
    # verifying fetched chunks ("verify", a worker thread), storing them ("store", background).
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


def unchanged(a: Attr, b: Attr) -> bool:
    """Whether two descriptions are of the same file, unchanged (hashes and access time apart)."""
    return (a.size, a.mtime_ns, a.ctime_ns, a.ino, a.dev) == (b.size, b.mtime_ns, b.ctime_ns, b.ino, b.dev)


class NodeTable:
    """The nodes by inode number and by client path, and what the kernel is told of each."""

    def __init__(self, id_offset: int = 0, timeout: float = TIMEOUT) -> None:
        self.id_offset = id_offset
        self.timeout = timeout
        root = Node(pyfuse3.ROOT_INODE, b"/", pyfuse3.ROOT_INODE)
        self.root = root
        self.by_ino: dict[int, Node] = {root.ino: root}
        self.by_path: dict[bytes, int] = {b"/": root.ino}
        self._next_ino = root.ino + 1

    def __len__(self) -> int:
        return len(self.by_ino)

    def get(self, ino: int) -> Node:
        """The node of inode `ino`; ESTALE for one we never gave out."""
        node = self.by_ino.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def add(self, path: bytes, parent: int, attr: Attr | None) -> Node:
        """The node of client path `path` (made, with a new inode number, the first time); `attr` taken."""
        ino = self.by_path.get(path)
        if ino is None:
            ino, self._next_ino = self._next_ino, self._next_ino + 1
            self.by_path[path] = ino
            self.by_ino[ino] = Node(ino, path, parent)
        node = self.by_ino[ino]
        if attr is not None:
            self.set_attr(node, attr)
        return node

    def set_attr(self, node: Node, attr: Attr) -> None:
        """Take what the client says of a node now (a changed file drops its kept data)."""
        old = node.attr
        if old is not None and attr.chunks is None and unchanged(old, attr):
            attr.chunks = old.chunks  # a listing carries fewer details than a lookup: keep ours
        if old is not None and stat.S_IFMT(old.mode) != stat.S_IFMT(attr.mode):
            node.children, node.missing, node.absent = None, set(), set()
        if old is not None and (old.size, old.mtime_ns, old.ctime_ns) != (
            attr.size,
            attr.mtime_ns,
            attr.ctime_ns,
        ):
            node.data, node.pushed, node.elf = None, False, None  # what its content told
        node.attr, node.entry = attr, None

    def install_listing(self, node: Node, listing: DirListing) -> None:
        """A directory's entries, each a node with its attributes."""
        children = {}
        for item in listing.entries:
            name = item.name
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                log.warning("ignoring bad name %r in the listing of %r", name, node.path)
                continue
            children[name] = self.add(join(node.path, name), node.ino, item.attr).ino
        node.children, node.missing, node.absent = children, set(), set()
        node.digest = listing.digest

    def _id(self, value: int) -> int:
        mapped = value + self.id_offset
        return mapped if 0 <= mapped < 0xFFFFFFFF else OVERFLOW_ID

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """What the kernel is told of a node (kept until its attributes change)."""
        if node.entry is not None:
            return node.entry
        a = node.attr
        assert a is not None
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = e.attr_timeout = self.timeout
        e.st_mode, e.st_nlink, e.st_rdev, e.st_size = a.mode, a.nlink, a.rdev, a.size
        e.st_uid, e.st_gid = self._id(a.uid), self._id(a.gid)
        e.st_blksize = BLKSIZE
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = a.atime_ns, a.mtime_ns, a.ctime_ns
        node.entry = e
        return e

    def negative(self) -> pyfuse3.EntryAttributes:
        """The answer for a name that does not exist, which the kernel caches."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0  # a negative entry: the kernel caches the absence for entry_timeout
        e.entry_timeout = self.timeout
        return e
