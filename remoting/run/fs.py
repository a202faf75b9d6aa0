"""The appliance end of the file plane: the client's tree as a read-only FUSE file system.

`ClientTree(fetch, store)` is a pyfuse3 file system (it runs on trio) that shows
the client's whole tree, asking the client through `await fetch(request) -> reply`
(the `fsproto` messages) only for what it does not know yet:

- every client path gets an inode number of ours the first time it is seen and
  keeps it for the life of the tree (`fsnodes`: the inode table, and what the
  kernel is told of each node);
- a lookup lists the whole parent directory in one round trip (entries with their
  attributes), so siblings cost nothing; absent names are answered as negative
  entries, cached by the kernel and by us;
- attributes, listings and symlink targets, once known, are answered from memory:
  the client tree is taken as stable for the run (60 s kernel timeouts, keep_cache);
  listings may be sent ahead (`prefetch`) or kept from an earlier run (`listings`);
- content (`fscontent`) comes from the `ContentStore` by chunk hash, missing chunks
  fetched from the client; if the client's file changed since its hashes were
  sent, the tree asks for its attributes again and retries once, then fails with EIO.

`fsmount` mounts a tree and serves it.  The handlers never stat the mount point
(that would deadlock): anything the serving thread needs about it is read from
/proc/self/mountinfo.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable

import pyfuse3
import trio

from radium.remoting.run.cas import ContentStore
from radium.remoting.run.fscontent import NEXT_FILE_HEAD, Changed, Contents
from radium.remoting.run.fsfill import Filler
from radium.remoting.run.fsnodes import TIMEOUT, Node, NodeTable, TreeStats, unchanged
from radium.remoting.run.fsproto import (
    INLINE_MAX,
    LISTING_CONTENT_MAX,
    LISTING_CONTENT_MOST,
    Attr,
    BadPath,
    DirEntry,
    DirListing,
    FsError,
    FsReply,
    FsRequest,
    Headed,
    LinkTarget,
    Lookup,
    Prefetch,
    ReadDir,
    ReadLink,
    Tree,
    ancestors,
    check_path,
    join,
    listing_digest,
)
from radium.remoting.run.listings import KeptListings
from radium.remoting.run.tenants import OwnedChunks

log = logging.getLogger(__name__)

Fetch = Callable[[FsRequest], Awaitable[FsReply]]
NEXT_FILE_MAX = 256 << 20  # the largest next file looked up ahead (the client hashes it whole)
ABSENT_KEPT = 256  # names a listed folder remembers the process looked up in vain (warm tree whiteouts)

__all__ = ["ClientTree", "Fetch", "TreeStats"]


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
        owned: OwnedChunks | None = None,
    ) -> None:
        super().__init__()
        self._fetch = fetch
        self.kept = kept
        self.store = store
        self.stats = TreeStats()
        self.nodes = NodeTable(id_offset, timeout)
        self.contents = Contents(
            self._ask, store, self.stats, batch_chunks=batch_chunks, ahead_chunks=ahead_chunks, owned=owned
        )
        self.contents.reading_on = self._reading_on
        self._read_through: Node | None = None  # the last file a sequential reader reached the end of
        self._orders: tuple[tuple[int, int, int], list[tuple[list[int], dict[int, int]]]] | None = None
        self._inflight: dict[object, trio.Event] = {}
        self._learned: set[int] = set()  # directories with files whose hashes this run learned
        self._push_ok = True  # the kernel takes content pushed into its page cache (`_push`)
        self._content_asks: Counter[int] = Counter()  # folders asked for with content, by inode
        self.absent_noted = 0  # names looked up in vain in listed folders (the warm tree marks them)
        # Listings sent ahead (Prefetch), by path, until the process reaches them: a listing,
        # or the digest of the kept one the client said still holds.
        self._ahead: dict[bytes, DirListing | bytes] = {}
        # Folder -> digest of its listing as the client gave or confirmed it in the first request.
        self.confirmed: dict[bytes, bytes] = {}
        # Run once the kernel has finished its INIT handshake, i.e. at the first request after it.
        self.after_init: Callable[[], object] | None = None
        # Called at each FUSE operation (the supervisor's idle polling: run/wakeups.py).
        self.on_operation: Callable[[], object] | None = None
        self.filler = Filler(self)  # folders the process lists, made whole for the warm tree

    def _op(self, name: str) -> None:
        self.stats.ops[name] += 1
        self.contents.busy()  # files read in part are completed when the process is quiet
        if self.on_operation is not None:
            self.on_operation()
        if self.after_init is not None:
            hook, self.after_init = self.after_init, None
            hook()

    # --- asking the client --------------------------------------------------------

    async def _ask(self, request: FsRequest, expect: type | tuple[type, ...]) -> FsReply:
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
            log.warning("expected %s, got %s", expect, type(reply).__name__)
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

    # --- filling the table ---------------------------------------------------------------

    async def _ensure_attr(self, node: Node, content: bool = False, head: int = 0) -> Attr:
        """The node's attributes; with `content`, its chunk hashes too (asking the client if needed),
        and its content when it comes with them (LOOKUP_INLINE_MAX); with `head`, when asked,
        the first chunks of a bigger file with them (`Lookup.head`)."""

        def enough() -> bool:
            a = node.attr
            return a is not None and not (content and a.chunks is None and stat.S_ISREG(a.mode))

        async def work() -> None:
            if content and await self._small_files_of_folder(node) and enough():
                return
            expect = (Attr, Headed) if head else Attr
            reply = await self._ask(Lookup(path=node.path, content=content, head=head), expect)
            attr = reply.attr if isinstance(reply, Headed) else reply
            self.nodes.set_attr(node, attr)
            self.contents.keep_inline(node, attr)
            if isinstance(reply, Headed):  # in flight before a reader waiting for this lookup goes on
                self.contents.take_head(node, reply.data)
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

    def _lacks_content(self, node: Node | None) -> bool:
        """A small file whose hashes, or content, this side lacks (a cold store's, with the
        client's hash cache warm)."""
        a = node.attr if node is not None else None
        if node is None or a is None or not stat.S_ISREG(a.mode) or not 0 < a.size <= INLINE_MAX:
            return False
        if a.chunks is None:
            return True
        return node.data is None and a.data is None and not all(map(self.contents.here_or_coming, a.chunks))

    async def _small_files_of_folder(self, node: Node) -> bool:
        """A small file is opened whose hashes or content we lack, and so are others of its
        folder: ask for the folder with its small files' hashes and content (ReadDir, up to
        LISTING_CONTENT_MAX) instead of one request per file. False when it does not apply."""
        parent = self.nodes.by_ino.get(node.parent)
        if parent is None or parent.children is None or not self._lacks_content(node):
            return False
        lacking = sum(
            1 for ino in parent.children.values() if self._lacks_content(self.nodes.by_ino.get(ino))
        )
        if lacking < 2:
            return False

        async def work() -> None:
            assert parent is not None and parent.children is not None
            # Asked again: the process goes on opening this folder's files (the stdlib's
            # __pycache__: 5.7 MiB of bytecode), so each time twice as much comes.
            budget = min(LISTING_CONTENT_MAX << self._content_asks[parent.ino], LISTING_CONTENT_MOST)
            self._content_asks[parent.ino] += 1
            listing = await self._ask(
                ReadDir(path=parent.path, content=True, first=os.path.basename(node.path), budget=budget),
                DirListing,
            )
            for entry in listing.entries:
                ino = parent.children.get(entry.name)
                sibling = self.nodes.by_ino.get(ino) if ino is not None else None
                if sibling is None or sibling.attr is None or entry.attr.chunks is None:
                    continue
                if self._lacks_content(sibling) and unchanged(sibling.attr, entry.attr):
                    self.nodes.set_attr(sibling, entry.attr)
                    self.contents.keep_inline(sibling, entry.attr)
            self._learned.add(parent.ino)

        await self._once(("folder", parent.ino), work)  # files opened together: one request
        return True

    async def _ensure_listing(self, node: Node) -> None:
        while node.children is None and not node.unlistable:

            async def work() -> None:
                try:
                    listing = await self._read_dir(node.path)
                except pyfuse3.FUSEError as exc:
                    if exc.errno not in (errno.EACCES, errno.EPERM):
                        raise
                    node.unlistable = True
                    return
                self.nodes.install_listing(node, listing)
                for entry in listing.entries:  # small files' content, when it came: into the store
                    if entry.attr.data is not None and node.children and entry.name in node.children:
                        child = self.nodes.by_ino[node.children[entry.name]]
                        if child.attr is entry.attr:
                            self.contents.keep_inline(child, entry.attr)
                self._bytecode_soon(node, listing)

            await self._once(("list", node.ino), work)

    def _bytecode_soon(self, node: Node, listing: DirListing) -> None:
        """A folder of Python modules was listed (Python lists a package's folder to find a
        module in it): its `__pycache__`, where Python will open the module's bytecode next, is
        listed now with its content, beside the import instead of after it."""
        pycache = node.children.get(b"__pycache__") if node.children else None
        background = self.contents.background
        if pycache is None or background is None or self.nodes.by_ino[pycache].children is not None:
            return
        if any(e.name.endswith(b".py") and stat.S_ISREG(e.attr.mode) for e in listing.entries):
            background.start_soon(self._list_quietly, self.nodes.by_ino[pycache])

    async def _list_quietly(self, node: Node) -> None:
        try:
            await self.list_folder(node)
        except pyfuse3.FUSEError:
            pass  # the process's own lookups will say what is wrong

    async def list_folder(self, node: Node) -> None:
        """Have the listing of a node described as a folder (a `__pycache__` with its content)."""
        if node.attr is not None and stat.S_ISDIR(node.attr.mode):
            await self._ensure_listing(node)

    async def hashed(self, node: Node) -> Attr:
        """A file's attributes with its chunk hashes (asking the client if need be): for the fill."""
        return await self._ensure_attr(node, content=True)

    async def ask_listing(self, request: ReadDir) -> DirListing:
        reply = await self._ask(request, DirListing)
        assert isinstance(reply, DirListing)
        return reply

    def learned(self, node: Node) -> None:
        """This run learned hashes of files of this folder (`keep_learned` keeps them)."""
        self._learned.add(node.ino)

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
        # Python opens the bytecode of each module it imports from a `__pycache__` folder, a
        # file at a time, without listing it: their content comes with the listing (a cold
        # `import torch` lists 120 such folders; otherwise each costs a second request).
        content = path.rpartition(b"/")[2] == b"__pycache__"
        listing = await self._ask(ReadDir(path=path, known=known, content=content), DirListing)
        if listing.unchanged:
            entries = self.kept.load(path) if self.kept else None
            if entries is not None:
                return DirListing(path=path, entries=entries, digest=listing.digest)
            listing = await self._ask(ReadDir(path=path), DirListing)  # lost here meanwhile
        if self.kept is not None and listing.digest is not None:
            self.kept.keep(path, listing.digest, listing.entries)
        return listing

    async def prefetch(
        self,
        paths: Iterable[bytes | str],
        max_entries: int = 100_000,
        also: dict[bytes, bytes] | None = None,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> int:
        """Ask the client for the listings of whole trees ahead of use; return how many were installed.

        `also`: more folders to recheck, by digest, as those the last run used (the warm tree's);
        `ready`: awaited before the reply is installed (the content store opening meanwhile)."""
        tops = [check_path(p) for p in paths]
        recent = self.kept.recently_used() if self.kept else {}
        if also:
            recent = {**also, **recent}
        # A tree the last run worked in, or that a run walked before, is not walked again:
        # the folders the last run used are rechecked, and the tree's top with its
        # ancestors (walking a big project, a venv inside it, costs a second per start,
        # and rechecking it whole nearly as much); what this run uses beyond them is
        # asked for when reached.
        walked = [t for t in tops if t not in recent and self.kept is not None and self.kept.digest(t)]
        for path in (p for top in walked for p in (top, *ancestors(top))):
            if (digest := self.kept.digest(path) if self.kept else None) is not None:
                recent.setdefault(path, digest)
        tops = [t for t in tops if t not in recent]
        known = {**recent, **self.kept.under(tops)} if self.kept and tops else recent
        reply = await self._ask(Prefetch(paths=tops, max_entries=max_entries, known=known), Tree)
        if ready is not None:
            await ready()
        return self.install(reply)

    def install(self, tree: Tree) -> int:
        """Take listings sent ahead; return how many.

        They are built into the tree only when the process reaches them (`_read_dir`):
        a warm start's rechecked folders hold thousands of entries (/usr/bin,
        /usr/lib/...) of which a process looks at a few.
        """
        root = self.nodes.by_ino[pyfuse3.ROOT_INODE]
        if tree.root is not None and root.attr is None and stat.S_ISDIR(tree.root.mode):
            self.nodes.set_attr(root, tree.root)
        taken = 0
        for listing in tree.listings:
            try:
                path = check_path(listing.path)
            except BadPath:
                log.warning("ignoring a listing of bad path %r", listing.path)
                continue
            if listing.digest is not None:
                self.confirmed[path] = listing.digest
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

    def entries_ahead(self, path: bytes) -> list[DirEntry] | None:
        """The entries of a folder's listing as the first request found it (None: not at hand)."""
        sent = self._ahead.get(path)
        if isinstance(sent, DirListing):
            return sent.entries
        if sent is not None and self.kept is not None and self.kept.digest(path) == sent:
            return self.kept.load(path, used=False)
        return None

    def _consulted(self, node: Node) -> None:
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
            node = self.nodes.by_ino.get(ino)
            if node is None or node.children is None or node.digest is None:
                continue
            if self.kept.digest(node.path) != node.digest:
                continue
            entries = []
            for name, child_ino in node.children.items():
                attr = self.nodes.by_ino[child_ino].attr
                if attr is None:
                    break
                entries.append(DirEntry(name=name, attr=attr))  # kept without content (KeptListings.keep)
            else:
                if listing_digest(entries) == node.digest:
                    self.kept.keep(node.path, node.digest, entries, used=False)
        self._learned.clear()

    # --- metadata operations --------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._op("lookup")
        parent = self.nodes.get(parent_inode)
        node: Node | None
        if name == b".":
            node = parent
        elif name == b"..":
            node = self.nodes.get(parent.parent)
        else:
            node = await self._child(parent, name)
        if node is None:
            return self.nodes.negative()
        await self._ensure_attr(node)
        node.used = True
        return self.nodes.entry(node)

    async def _child(self, parent: Node, name: bytes) -> Node | None:
        attr = await self._ensure_attr(parent)
        if not stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if parent.children is None and name not in parent.missing:
            await self._ensure_listing(parent)
        if parent.children is not None:
            self._consulted(parent)
            ino = parent.children.get(name)
            if ino is None:
                if len(parent.absent) < ABSENT_KEPT and name not in parent.absent:  # warm tree whiteouts
                    parent.absent.add(name)
                    self.absent_noted += 1
                return None
            return self.nodes.by_ino[ino]
        # A directory we may enter but not list: one name at a time.
        path = join(parent.path, name)
        if path in self.nodes.by_path:
            return self.nodes.by_ino[self.nodes.by_path[path]]
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
        return self.nodes.add(path, parent.ino, attr)

    async def stat_path(self, path: bytes | str, *, follow: bool = False) -> Attr | None:
        """The attributes of a client path, resolved by this tree itself; None when it does not exist.

        For code in the serving process that must know what the client has: going
        through the mount from the serving thread would deadlock.  Symlinks in the
        middle of the path are followed as the kernel would (within the client's
        tree), the last one only with `follow`.
        """
        clean = check_path(path)
        parts: deque[bytes] = deque(clean[1:].split(b"/") if clean != b"/" else ())
        node, hops = self.nodes.by_ino[pyfuse3.ROOT_INODE], 0
        try:
            while parts:
                name = parts.popleft()
                if name in (b"", b"."):
                    continue
                if name == b"..":
                    node = self.nodes.by_ino[node.parent]
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
                        node = self.nodes.by_ino[pyfuse3.ROOT_INODE]
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
        node = self.nodes.get(inode)
        await self._ensure_attr(node)
        return self.nodes.entry(node)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self._op("readlink")
        node = self.nodes.get(inode)
        attr = await self._ensure_attr(node)
        if not stat.S_ISLNK(attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if attr.target is None:
            reply = await self._ask(ReadLink(path=node.path), LinkTarget)
            attr.target = reply.target
        return attr.target

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._op("opendir")
        node = self.nodes.get(inode)
        attr = await self._ensure_attr(node)
        if not stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ensure_listing(node)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        self._consulted(node)
        self.filler.listed(node)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self._op("readdir")
        node = self.nodes.get(fh)
        entries = list(node.children.items()) if node.children else []
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.nodes.entry(self.nodes.by_ino[ino]), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self._op("statfs")
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0  # read-only and of unknown size: say nothing is free
        s.f_files, s.f_ffree, s.f_favail = len(self.nodes), 0, 0
        s.f_namemax = 255
        return s

    # --- content ---------------------------------------------------------------------------

    def _reading_on(self, node: Node) -> None:
        """A sequential reader's read-ahead reached the end of `node`'s file (Contents calls this).

        When that file comes right after the previous one so read in their folder, in its
        listing's order or by name, the process walks the folder reading its files in that
        order (a dataset, a copy, an archive): the next file is looked up and its first chunks
        fetched now, so that the link does not idle while the process goes from one file to
        the next.  A wrong guess costs one lookup and NEXT_FILE_CHUNKS chunks per file read
        through; a process reading its files in another order causes none.
        """
        last, self._read_through = self._read_through, node
        if last is None or last.parent != node.parent or self.contents.background is None:
            return
        parent = self.nodes.by_ino.get(node.parent)
        if parent is None or parent.children is None:
            return
        for files, position in self._file_orders(parent):
            i, j = position.get(last.ino), position.get(node.ino)
            if i is not None and j == i + 1:
                if j + 1 < len(files):
                    following = self.nodes.by_ino.get(files[j + 1])
                    if following is not None and following.attr and following.attr.size <= NEXT_FILE_MAX:
                        self.contents.background.start_soon(self._read_next, following)
                return

    def _file_orders(self, parent: Node) -> list[tuple[list[int], dict[int, int]]]:
        """A folder's files whose content is read through FUSE (larger than INLINE_MAX) in the
        order of its listing and by name, each with their positions (kept for the last folder)."""
        children = parent.children
        assert children is not None
        key = (parent.ino, id(children), len(children))
        if self._orders is None or self._orders[0] != key:
            files = []
            for name, ino in children.items():
                child = self.nodes.by_ino.get(ino)
                a = child.attr if child is not None else None
                if a is not None and stat.S_ISREG(a.mode) and a.size > INLINE_MAX:
                    files.append((name, ino))
            listed = [ino for _, ino in files]
            named = [ino for _, ino in sorted(files)]
            self._orders = (
                key,
                [(order, {ino: i for i, ino in enumerate(order)}) for order in (listed, named)],
            )
        return self._orders[1]

    async def _read_next(self, node: Node) -> None:
        try:  # its first chunks come with its hashes, right behind them on the channel; the rest
            # of its first NEXT_FILE_CHUNKS are asked for when they are here
            await self._ensure_attr(node, content=True, head=NEXT_FILE_HEAD)
        except pyfuse3.FUSEError:
            return  # the process's own open will say what is wrong
        self.contents.fetch_head(node)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._op("open")
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.nodes.get(inode)
        node.used = True  # found through a listing (readdirplus), it was never looked up
        attr = await self._ensure_attr(node)
        if stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not stat.S_ISREG(attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        attr = await self._ensure_attr(node, content=True)
        if await self._small_files_of_folder(node):  # hashes known, content not here: the folder's
            attr = node.attr
            assert attr is not None
        self.contents.keep_inline(node, attr)
        node.read_end = 0
        if not node.pushed and self._push_ok:
            self._push(node)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    def _push(self, node: Node) -> None:
        """A file of one chunk whose content is here: put it into the kernel's page cache now,
        before the open's reply (which keeps that cache), so that the process's reads of it are
        not FUSE operations. A cold `import torch` opens ~1,000 such files (bytecode) and reads
        each right after its open: one round trip between the process and this loop each."""
        data = self.contents.whole_if_here(node)
        if data is None:
            return
        try:
            pyfuse3.notify_store(node.ino, 0, data)
        except OSError as exc:  # ENOSYS: a kernel without it; else the kernel forgot the inode
            if exc.errno == errno.ENOSYS:
                self._push_ok = False
            return
        node.pushed = True

    async def release(self, fh: int) -> None:
        pass

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]  # pyfuse3 takes any buffer
        self._op("read")
        node = self.nodes.get(fh)
        try:
            return await self.contents.read(node, off, size)
        except Changed:
            # The client's file changed under us: take its new description and try once more.
            log.warning("%r changed on the client during the run; reading it again", node.path)
            attr = await self._ask(Lookup(path=node.path, content=True), Attr)
            self.nodes.set_attr(node, attr)
            self.contents.keep_inline(node, attr)
            try:
                return await self.contents.read(node, off, size)
            except Changed:
                raise pyfuse3.FUSEError(errno.EIO) from None

    # --- figures ------------------------------------------------------------------------------

    def cache_counts(self) -> tuple[int, int]:
        """(chunk pieces read locally, chunk pieces that had to be fetched)."""
        return self.stats.chunk_hits, self.stats.chunk_misses

    def request_count(self) -> int:
        """Requests sent to the client so far."""
        return sum(self.stats.requests.values())
