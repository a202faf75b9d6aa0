"""The appliance end of the file plane: the client's tree as a read-only FUSE file system.

`ClientTree(fetch, store)` is a pyfuse3 file system (it runs on trio) that shows
the client's whole tree, asking the client through `await fetch(request) -> reply`
(the `fsproto` messages) only for what it does not know yet:

- every client path gets an inode number of ours the first time it is seen and
  keeps it for the life of the tree (the kernel drops mounts on a directory whose
  inode changes);
- a lookup lists the whole parent directory in one round trip (entries with their
  attributes), so siblings cost nothing; absent names are answered as negative
  entries, cached by the kernel and by us;
- attributes, listings and symlink targets, once known, are answered from memory:
  the client tree is taken as stable for the run (60 s kernel timeouts, keep_cache);
- content comes from the `ContentStore` by chunk hash; missing chunks are fetched
  with ReadChunks, consecutive ones in one request (and ahead of a sequential
  reader), and stored; small files come whole with their attributes on open.

If the client's file changed since its hashes were sent, the data does not match
them: the tree asks for the attributes again and retries once, then fails with EIO.

Ownership is reported as the client's uid/gid plus `id_offset` (the run's user
namespace maps that range back onto the client's ids); an id that would not fit
becomes 65534 (nobody).

pyfuse3 holds one mount per process: `mount_and_serve` mounts, serves until
cancelled (or `pyfuse3.terminate()`), then unmounts.  The handlers never stat the
mount point (that would deadlock): anything the serving thread needs about it is
read from /proc/self/mountinfo.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import pyfuse3
import trio

from radium.remoting.run.cas import ContentStore, HashMismatch, StoreFull
from radium.remoting.run.files import read_mountinfo
from radium.remoting.run.fsproto import (
    CHUNK_SIZE,
    MAX_CHUNKS_PER_REQUEST,
    Attr,
    BadPath,
    Chunks,
    DirEntry,
    DirListing,
    FsError,
    FsReply,
    FsRequest,
    LinkTarget,
    Lookup,
    Prefetch,
    ReadChunks,
    ReadDir,
    ReadLink,
    Tree,
    check_path,
    chunk_count,
    join,
    listing_digest,
)
from radium.remoting.run.listings import KeptListings

log = logging.getLogger(__name__)

Fetch = Callable[[FsRequest], Awaitable[FsReply]]

TIMEOUT = 60.0  # seconds the kernel may keep entries and attributes: a run treats the client tree as stable
MOUNT_OPTIONS = frozenset({"fsname=radium", "subtype=radium", "allow_other", "default_permissions", "ro"})
OVERFLOW_ID = 65534
BLKSIZE = 128 * 1024  # st_blksize: invites readers to ask for big pieces
RECENT_CHUNKS = 16  # fetched chunks kept in memory for reads the store could not serve (store full)


@dataclass(eq=False)
class _Node:
    ino: int
    path: bytes
    parent: int
    attr: Attr | None = None
    children: dict[bytes, int] | None = None  # name -> inode, once the directory is listed
    missing: set[bytes] = field(default_factory=set)  # names known absent while unlisted
    unlistable: bool = False  # ReadDir was refused (EACCES): look names up one by one
    data: bytes | None = None  # a small file's content, kept when the store could not take it
    read_end: int = 0  # where the last read ended: a read starting there is sequential
    entry: pyfuse3.EntryAttributes | None = None
    digest: bytes | None = None  # of the listing installed (a directory's)
    consulted: bool = False  # the process looked names up in it, or listed it


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


class _Changed(Exception):
    """The client's file no longer matches the hashes we hold."""


class ClientTree(pyfuse3.Operations):
    """The client's tree, read-only, fetched on demand through `fetch` into `store`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        fetch: Fetch,
        store: ContentStore,
        *,
        id_offset: int = 0,
        timeout: float = TIMEOUT,
        batch_chunks: int = 4,
        ahead_chunks: int = 32,
        kept: KeptListings | None = None,
    ) -> None:
        super().__init__()
        self._fetch = fetch
        self.kept = kept
        self.store = store
        self.id_offset = id_offset
        self.timeout = timeout
        self.batch_chunks = max(1, min(batch_chunks, MAX_CHUNKS_PER_REQUEST))
        self.ahead_chunks = max(0, ahead_chunks)
        # Where read-ahead fetches run; set by mount_and_serve while it serves.
        self.background: trio.Nursery | None = None
        root = _Node(pyfuse3.ROOT_INODE, b"/", pyfuse3.ROOT_INODE)
        self._nodes: dict[int, _Node] = {root.ino: root}
        self._by_path: dict[bytes, int] = {b"/": root.ino}
        self._next_ino = root.ino + 1
        self._inflight: dict[object, trio.Event] = {}
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self.stats = TreeStats()
        self._learned: set[int] = set()  # directories with files whose hashes this run learned
        # Listings sent ahead (Prefetch), by path, until the process reaches them: a listing,
        # or the digest of the kept one the client said still holds.
        self._ahead: dict[bytes, DirListing | bytes] = {}
        # Run once the kernel has finished its INIT handshake, i.e. at the first request after it.
        self.after_init: Callable[[], object] | None = None

    def _op(self, name: str) -> None:
        self.stats.ops[name] += 1
        if self.after_init is not None:
            hook, self.after_init = self.after_init, None
            hook()

    # --- asking the client --------------------------------------------------------

    async def _ask(self, request: FsRequest, expect: type) -> FsReply:
        self.stats.requests[type(request).__name__] += 1
        try:
            reply = await self._fetch(request)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # transport trouble: the process sees an I/O error, not a hang
            log.warning("file request %s failed: %s", type(request).__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if isinstance(reply, FsError):
            raise pyfuse3.FUSEError(reply.errno or errno.EIO)
        if not isinstance(reply, expect):
            log.warning("expected %s, got %s", expect.__name__, type(reply).__name__)
            raise pyfuse3.FUSEError(errno.EIO)
        return reply

    async def _once(self, key: object, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` unless another task is running it for `key`; then just wait for that one.

        Callers check again afterwards: if the other task failed, they try themselves.
        """
        event = self._inflight.get(key)
        if event is not None:
            await event.wait()
            return
        event = self._inflight[key] = trio.Event()
        try:
            await work()
        finally:
            del self._inflight[key]
            event.set()

    # --- the inode table ------------------------------------------------------------

    def _node(self, ino: int) -> _Node:
        node = self._nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _node_for(self, path: bytes, parent: int, attr: Attr | None) -> _Node:
        ino = self._by_path.get(path)
        if ino is None:
            ino, self._next_ino = self._next_ino, self._next_ino + 1
            self._by_path[path] = ino
            self._nodes[ino] = _Node(ino, path, parent)
        node = self._nodes[ino]
        if attr is not None:
            self._set_attr(node, attr)
        return node

    def _set_attr(self, node: _Node, attr: Attr) -> None:
        old = node.attr
        if (
            old is not None
            and attr.chunks is None
            and (old.size, old.mtime_ns, old.ctime_ns, old.ino, old.dev)
            == (attr.size, attr.mtime_ns, attr.ctime_ns, attr.ino, attr.dev)
        ):
            attr.chunks = old.chunks  # a listing carries fewer details than a lookup: keep ours
        if old is not None and stat.S_IFMT(old.mode) != stat.S_IFMT(attr.mode):
            node.children, node.missing = None, set()
        if old is not None and (old.size, old.mtime_ns, old.ctime_ns) != (
            attr.size,
            attr.mtime_ns,
            attr.ctime_ns,
        ):
            node.data = None
        node.attr, node.entry = attr, None

    def _install_listing(self, node: _Node, listing: DirListing) -> None:
        children = {}
        for item in listing.entries:
            name = item.name
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                log.warning("ignoring bad name %r in the listing of %r", name, node.path)
                continue
            children[name] = self._node_for(join(node.path, name), node.ino, item.attr).ino
        node.children, node.missing = children, set()
        node.digest = listing.digest

    def _id(self, value: int) -> int:
        mapped = value + self.id_offset
        return mapped if 0 <= mapped < 0xFFFFFFFF else OVERFLOW_ID

    def _entry(self, node: _Node) -> pyfuse3.EntryAttributes:
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

    def _negative(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0  # a negative entry: the kernel caches the absence for entry_timeout
        e.entry_timeout = self.timeout
        return e

    # --- filling the table ---------------------------------------------------------------

    async def _ensure_attr(self, node: _Node, content: bool = False) -> Attr:
        """The node's attributes; with `content`, its chunk hashes too (asking the client if needed)."""

        def enough() -> bool:
            a = node.attr
            return a is not None and not (content and a.chunks is None and stat.S_ISREG(a.mode))

        async def work() -> None:
            attr = await self._ask(Lookup(path=node.path, content=content), Attr)
            self._set_attr(node, attr)
            if attr.chunks is not None:
                self._learned.add(node.parent)

        for _ in range(2):  # the second round, when another task's request failed
            if enough():
                break
            await self._once(("attr", node.ino, content), work)
        if not enough():
            # Known, but the client could not read it for us: the process may not either.
            raise pyfuse3.FUSEError(errno.EACCES if node.attr is not None else errno.EIO)
        assert node.attr is not None
        return node.attr

    async def _ensure_listing(self, node: _Node) -> None:
        while node.children is None and not node.unlistable:

            async def work() -> None:
                try:
                    listing = await self._read_dir(node.path)
                except pyfuse3.FUSEError as exc:
                    if exc.errno not in (errno.EACCES, errno.EPERM):
                        raise
                    node.unlistable = True
                    return
                self._install_listing(node, listing)

            await self._once(("list", node.ino), work)

    async def _read_dir(self, path: bytes) -> DirListing:
        """A directory's listing: one sent ahead, or the one kept from an earlier run if the
        client said (ahead, or now) that it still holds, or the client's answer."""
        sent = self._ahead.pop(path, None)
        if isinstance(sent, DirListing):
            return sent
        if sent is not None and self.kept is not None and self.kept.digest(path) == sent:
            entries = self.kept.load(path)
            if entries is not None:
                return DirListing(path=path, entries=entries, digest=sent)
        known = self.kept.digest(path) if self.kept else None
        listing = await self._ask(ReadDir(path=path, known=known), DirListing)
        if listing.unchanged:
            entries = self.kept.load(path) if self.kept else None
            if entries is not None:
                return DirListing(path=path, entries=entries, digest=listing.digest)
            listing = await self._ask(ReadDir(path=path), DirListing)  # lost here meanwhile
        if self.kept is not None and listing.digest is not None:
            self.kept.keep(path, listing.digest, listing.entries)
        return listing

    async def prefetch(self, paths: Iterable[bytes | str], max_entries: int = 100_000) -> int:
        """Ask the client for the listings of whole trees ahead of use; return how many were installed."""
        tops = [check_path(p) for p in paths]
        recent = self.kept.recently_used() if self.kept else {}
        # A tree the last run worked in is not walked again: the folders it used are
        # rechecked (walking a big project, a venv inside it, costs a second per start);
        # what this run uses beyond them is asked for when reached.
        tops = [t for t in tops if t not in recent]
        known = {**recent, **self.kept.under(tops)} if self.kept and tops else recent
        reply = await self._ask(Prefetch(paths=tops, max_entries=max_entries, known=known), Tree)
        return self.install(reply)

    def install(self, tree: Tree) -> int:
        """Take listings sent ahead; return how many.

        They are built into the tree only when the process reaches them (`_read_dir`):
        a warm start's rechecked folders hold thousands of entries (/usr/bin,
        /usr/lib/...) of which a process looks at a few.
        """
        root = self._nodes[pyfuse3.ROOT_INODE]
        if tree.root is not None and root.attr is None and stat.S_ISDIR(tree.root.mode):
            self._set_attr(root, tree.root)
        taken = 0
        for listing in tree.listings:
            try:
                path = check_path(listing.path)
            except BadPath:
                log.warning("ignoring a listing of bad path %r", listing.path)
                continue
            if listing.unchanged:
                if listing.digest is None or self.kept is None or self.kept.digest(path) != listing.digest:
                    continue  # not kept after all: asked for on demand
                self._ahead[path] = listing.digest  # the client vouched for the kept one
            else:
                if self.kept is not None and listing.digest is not None:
                    self.kept.keep(path, listing.digest, listing.entries, used=False)
                self._ahead[path] = listing
            taken += 1
        return taken

    def _consulted(self, node: _Node) -> None:
        """The process used this directory's listing: the next run rechecks it up front."""
        if self.kept is not None and not node.consulted and node.digest is not None:
            node.consulted = True
            self.kept.used(node.path)

    def keep_learned(self) -> None:
        """Keep the hashes learned this run with the kept listings of their directories.

        A listing is re-kept only when its entries, with what we know now, still have
        the digest the client gave (the digest leaves hashes out): then the next run
        opens those files without asking, as long as the client says the listing holds.
        """
        if self.kept is None:
            return
        for ino in self._learned:
            node = self._nodes.get(ino)
            if node is None or node.children is None or node.digest is None:
                continue
            if self.kept.digest(node.path) != node.digest:
                continue
            entries = []
            for name, child_ino in node.children.items():
                attr = self._nodes[child_ino].attr
                if attr is None:
                    break
                entries.append(DirEntry(name=name, attr=msgspec.structs.replace(attr, data=None)))
            else:
                if listing_digest(entries) == node.digest:
                    self.kept.keep(node.path, node.digest, entries, used=False)
        self._learned.clear()

    # --- metadata operations --------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._op("lookup")
        parent = self._node(parent_inode)
        node: _Node | None
        if name == b".":
            node = parent
        elif name == b"..":
            node = self._node(parent.parent)
        else:
            node = await self._child(parent, name)
        if node is None:
            return self._negative()
        await self._ensure_attr(node)
        return self._entry(node)

    async def _child(self, parent: _Node, name: bytes) -> _Node | None:
        attr = await self._ensure_attr(parent)
        if not stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if parent.children is None and name not in parent.missing:
            await self._ensure_listing(parent)
        if parent.children is not None:
            self._consulted(parent)
            ino = parent.children.get(name)
            return None if ino is None else self._nodes[ino]
        # A directory we may enter but not list: one name at a time.
        path = join(parent.path, name)
        if path in self._by_path:
            return self._nodes[self._by_path[path]]
        if name in parent.missing:
            return None
        try:
            attr = await self._ask(Lookup(path=check_path(path), content=False), Attr)
        except pyfuse3.FUSEError as exc:
            if exc.errno == errno.ENOENT:
                parent.missing.add(name)
                return None
            raise
        except BadPath:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        return self._node_for(path, parent.ino, attr)

    async def stat_path(self, path: bytes | str, *, follow: bool = False) -> Attr | None:
        """The attributes of a client path, resolved by this tree itself; None when it does not exist.

        For code in the serving process that must know what the client has: going
        through the mount from the serving thread would deadlock.  Symlinks in the
        middle of the path are followed as the kernel would (within the client's
        tree), the last one only with `follow`.
        """
        clean = check_path(path)
        parts: deque[bytes] = deque(clean[1:].split(b"/") if clean != b"/" else ())
        node, hops = self._nodes[pyfuse3.ROOT_INODE], 0
        try:
            while parts:
                name = parts.popleft()
                if name in (b"", b"."):
                    continue
                if name == b"..":
                    node = self._nodes[node.parent]
                    continue
                child = await self._child(node, name)
                if child is None:
                    return None
                attr = await self._ensure_attr(child)
                if stat.S_ISLNK(attr.mode) and (parts or follow):
                    hops += 1
                    if hops > 40:  # as the kernel: ELOOP after 40 links
                        return None
                    if attr.target is None:
                        attr.target = (await self._ask(ReadLink(path=child.path), LinkTarget)).target
                    if attr.target.startswith(b"/"):
                        node = self._nodes[pyfuse3.ROOT_INODE]
                    parts.extendleft(reversed(attr.target.split(b"/")))
                    continue
                node = child
            return await self._ensure_attr(node)
        except pyfuse3.FUSEError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    async def forget(self, inode_list) -> None:
        pass  # inode numbers are kept for the life of the tree: they must stay stable

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._op("getattr")
        node = self._node(inode)
        await self._ensure_attr(node)
        return self._entry(node)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self._op("readlink")
        node = self._node(inode)
        attr = await self._ensure_attr(node)
        if not stat.S_ISLNK(attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if attr.target is None:
            reply = await self._ask(ReadLink(path=node.path), LinkTarget)
            attr.target = reply.target
        return attr.target

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._op("opendir")
        node = self._node(inode)
        attr = await self._ensure_attr(node)
        if not stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ensure_listing(node)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        self._consulted(node)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self._op("readdir")
        node = self._node(fh)
        entries = list(node.children.items()) if node.children else []
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(self._nodes[ino]), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self._op("statfs")
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0  # read-only and of unknown size: say nothing is free
        s.f_files, s.f_ffree, s.f_favail = len(self._nodes), 0, 0
        s.f_namemax = 255
        return s

    # --- content ---------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._op("open")
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        attr = await self._ensure_attr(node)
        if stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not stat.S_ISREG(attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        attr = await self._ensure_attr(node, content=True)
        self._keep_inline(node, attr)
        node.read_end = 0
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    def _keep_inline(self, node: _Node, attr: Attr) -> None:
        """Put a small file's inline data into the store (or keep it here if the store refuses)."""
        if attr.data is None:
            return
        data, attr.data = attr.data, None
        self.stats.bytes_fetched += len(data)
        if not data:
            return
        if attr.chunks and len(attr.chunks) == 1:
            try:
                self.store.put(attr.chunks[0], data)
                return
            except StoreFull:
                self.stats.store_full += 1
            except HashMismatch:
                log.warning("inline data of %r does not match its hash", node.path)
        node.data = data

    async def release(self, fh: int) -> None:
        pass

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self._op("read")
        node = self._node(fh)
        try:
            return await self._read(node, off, size)
        except _Changed:
            # The client's file changed under us: take its new description and try once more.
            log.warning("%r changed on the client during the run; reading it again", node.path)
            attr = await self._ask(Lookup(path=node.path, content=True), Attr)
            self._set_attr(node, attr)
            self._keep_inline(node, attr)
            try:
                return await self._read(node, off, size)
            except _Changed:
                raise pyfuse3.FUSEError(errno.EIO) from None

    async def _read(self, node: _Node, off: int, size: int) -> bytes:
        attr = node.attr
        assert attr is not None
        end = min(attr.size, off + size)
        if off >= end:
            return b""
        if node.data is not None:
            return node.data[off:end]
        chunks = attr.chunks
        if chunks is None or len(chunks) != chunk_count(attr.size):
            raise pyfuse3.FUSEError(errno.EIO)
        sequential = off == node.read_end
        last = (end - 1) // CHUNK_SIZE
        if sequential:
            self._read_ahead(node, last + 1)
        parts = []
        for i in range(off // CHUNK_SIZE, last + 1):
            base = i * CHUNK_SIZE
            lo, hi = max(off, base) - base, min(end, base + CHUNK_SIZE) - base
            parts.append(await self._piece(node, i, lo, hi, sequential))
        node.read_end = end
        return b"".join(parts)

    def _read_ahead(self, node: _Node, start: int) -> None:
        """For a sequential reader: fetch the missing chunks of the next `ahead_chunks` in the background.

        Several requests are in flight at once (one per `batch_chunks`), so that the
        client reading, the link and this side storing overlap instead of taking turns.
        """
        if self.background is None or not self.ahead_chunks:
            return
        assert node.attr is not None and node.attr.chunks is not None
        chunks = node.attr.chunks
        batch: list[int] = []

        def flush() -> None:
            if batch:
                # Registered now, not when the task starts: the next read must see them in flight.
                events = self._register(chunks, batch)
                assert self.background is not None
                self.background.start_soon(self._fetch_quietly, node, list(batch), events)
                batch.clear()

        for i in range(start, min(len(chunks), start + self.ahead_chunks)):
            digest = chunks[i]
            if self._here_or_coming(digest):
                flush()  # requests stay runs of consecutive chunks
                continue
            batch.append(i)
            if len(batch) == self.batch_chunks:
                flush()
        flush()

    def _here_or_coming(self, digest: bytes) -> bool:
        """The chunk is stored, in memory, or being fetched: nothing to ask for."""
        return ("chunk", digest) in self._inflight or digest in self._recent or self.store.has(digest)

    def _register(self, chunks: list[bytes], indexes: list[int]) -> dict[object, trio.Event]:
        """Mark chunks as in flight (those not already: a file may repeat a chunk)."""
        events: dict[object, trio.Event] = {}
        for i in indexes:
            key = ("chunk", chunks[i])
            if key not in self._inflight:
                events[key] = self._inflight[key] = trio.Event()
        return events

    async def _fetch_quietly(self, node: _Node, indexes: list[int], events: dict[object, trio.Event]) -> None:
        try:
            await self._fetch_chunks(node, indexes, events)
        except (pyfuse3.FUSEError, _Changed):
            pass  # the reader's own fetch will try again and report

    def _local_piece(self, digest: bytes, lo: int, hi: int) -> bytes | None:
        data = self._recent.get(digest)
        if data is not None:
            return bytes(data[lo:hi])
        piece = self.store.read(digest, lo, hi - lo)
        return piece if piece is not None and len(piece) == hi - lo else None

    async def _piece(self, node: _Node, index: int, lo: int, hi: int, sequential: bool) -> bytes:
        """Bytes [lo, hi) of chunk `index` of the node's file, fetching it if need be."""
        assert node.attr is not None and node.attr.chunks is not None
        digest = node.attr.chunks[index]
        piece = self._local_piece(digest, lo, hi)
        if piece is not None:
            self.stats.chunk_hits += 1
            return piece
        self.stats.chunk_misses += 1
        for _ in range(3):  # another task's fetch may fail, or the store may lose it at once
            if ("chunk", digest) in self._inflight:
                await self._inflight[("chunk", digest)].wait()
            else:
                await self._fetch_run(node, index, sequential)
            piece = self._local_piece(digest, lo, hi)
            if piece is not None:
                return piece
        log.warning("chunk %d of %r could not be read back after fetching it", index, node.path)
        raise pyfuse3.FUSEError(errno.EIO)

    async def _fetch_run(self, node: _Node, index: int, sequential: bool) -> None:
        """Fetch chunk `index` and, for a sequential reader, the missing chunks after it, in one request."""
        attr = node.attr
        assert attr is not None and attr.chunks is not None
        chunks = attr.chunks
        wanted = [index]
        if sequential:
            for i in range(index + 1, min(len(chunks), index + self.batch_chunks)):
                digest = chunks[i]
                if self._here_or_coming(digest):
                    break  # keep runs consecutive: what is there ends the run
                wanted.append(i)
        await self._fetch_chunks(node, wanted)

    async def _fetch_chunks(
        self, node: _Node, wanted: list[int], events: dict[object, trio.Event] | None = None
    ) -> None:
        """Fetch chunks `wanted` (ascending indexes) of the node's file in one request, and store them.

        `events`: their in-flight marks, when the caller registered them already.
        """
        attr = node.attr
        assert attr is not None and attr.chunks is not None
        chunks = attr.chunks
        if events is None:
            events = self._register(chunks, wanted)
        try:
            reply = await self._ask(ReadChunks(path=node.path, indexes=wanted, framed=True), Chunks)
            if len(reply.data) != len(wanted):
                raise pyfuse3.FUSEError(errno.EIO)
            self.stats.chunks_fetched += len(wanted)
            self.stats.bytes_fetched += sum(map(len, reply.data))
            pairs = [(chunks[i], data) for i, data in zip(wanted, reply.data, strict=True)]
            results = await trio.to_thread.run_sync(self._store_chunks, pairs)
            for (digest, data), result in zip(pairs, results, strict=True):
                if result == "full":
                    # Verified by put before it found no room: safe to serve from memory.
                    self.stats.store_full += 1
                    self._recent[digest] = data
                    while len(self._recent) > RECENT_CHUNKS:
                        self._recent.popitem(last=False)
        finally:
            for key, event in events.items():
                del self._inflight[key]
                event.set()
        if "mismatch" in results:
            raise _Changed()

    def _store_chunks(self, pairs: list[tuple[bytes, bytes]]) -> list[str]:
        """Store fetched chunks (in a worker thread: hashing takes time); each: stored, full or mismatch."""
        results = []
        for digest, data in pairs:
            try:
                self.store.put(digest, data)
                results.append("stored")
            except HashMismatch:
                results.append("mismatch")
            except StoreFull:
                results.append("full")
        return results

    # --- figures ------------------------------------------------------------------------------

    def cache_counts(self) -> tuple[int, int]:
        """(chunk pieces read locally, chunk pieces that had to be fetched)."""
        return self.stats.chunk_hits, self.stats.chunk_misses

    def request_count(self) -> int:
        """Requests sent to the client so far."""
        return sum(self.stats.requests.values())


# --- mounting -------------------------------------------------------------------------------


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
            tree.background = background  # read-ahead fetches
            if ready is not None:
                ready()
            task_status.started()
            await pyfuse3.main()
            background.cancel_scope.cancel()
    finally:
        tree.background = None
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
