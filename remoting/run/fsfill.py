"""Folders a process listed, made whole for the warm tree (docs/run.md, "Folders listed,
made whole").

The overlay asks FUSE below every warm-tree folder that lacks entries of its listing: a warm
`import torch` still made ~840 FUSE operations, 168 lookups of `__init__.py` (Python stats a
package's sources and reads only their bytecode, so no run fetched them), ~200 lookups of
package folders (the overlay merges each with FUSE's) and 155 listings of two readdirs each.
When the process lists a folder whose files this side lacks are all small, it is asked for
again with their content once the process is quiet (or at its exit:
`Contents.when_quiet_soon`), one ReadDir with content for it and one for its `__pycache__`,
and each file too big to come with a listing but not bigger than a chunk alone;
the run's end lays them out, and a folder then holding every entry (its subfolders as
folders) is marked opaque: the next runs find its entries in the warm tree, and its
subfolders are merged with FUSE's only through their redirects (warmtree.py).
"""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import pyfuse3
import trio

from radium.remoting.run.fsnodes import Node, unchanged
from radium.remoting.run.fsproto import CHUNK_SIZE, INLINE_MAX, LISTING_CONTENT_MOST, DirListing, ReadDir

if TYPE_CHECKING:
    from radium.remoting.run.fs import ClientTree

FILL_RUN_BYTES = 64 << 20  # the most content a run asks for to make listed folders whole
# The biggest file a listed folder may lack and still be made whole: bigger than a listing
# carries (INLINE_MAX), it is asked for alone, hashes then its one chunk (a Python stdlib
# folder's biggest modules, 70-400 KiB, kept /usr/lib/python3.11 from being made whole).
FILL_FILE_MAX = CHUNK_SIZE
PYCACHE = b"__pycache__"


class Filler:
    """Makes whole, for the warm tree, the folders `tree`'s process lists."""

    def __init__(self, tree: ClientTree) -> None:
        self.tree = tree
        self.budget = 0  # bytes of content it may still ask for: FILL_RUN_BYTES with a warm tree
        self._seen: set[int] = set()
        self.filled = 0  # folders asked for again with their content
        self.fetched: set[int] = set()  # the files that came so, by inode (the warm tree adds them last)
        self._one_at_a_time = trio.Lock()  # a process lists folders by the hundred: no burst of asks

    def listed(self, node: Node) -> None:
        """The process listed this folder (opendir): make it whole later, if it can be."""
        if self.budget <= 0 or node.ino in self._seen or node.path.endswith(b"/" + PYCACHE):
            return
        self._seen.add(node.ino)
        if self.lacking(node) is not None:  # decided again when quiet: the listing may change
            self.tree.contents.when_quiet_soon(lambda: self._fill_listed(node))

    def lacking(self, node: Node) -> tuple[list[Node], int] | None:
        """The files of a listed folder whose content this side lacks, and their bytes; None
        when the folder could not be made whole so: a file bigger than FILL_FILE_MAX, or
        something the warm tree never holds (a socket, a device)."""
        if node.children is None:
            return None
        here_or_coming = self.tree.contents.here_or_coming
        files, size = [], 0
        for ino in node.children.values():
            child = self.tree.nodes.by_ino.get(ino)
            a = child.attr if child is not None else None
            if child is None or a is None:
                return None
            if stat.S_ISDIR(a.mode):
                continue  # the warm tree holds it as a folder of its own (redirected below)
            elif stat.S_ISREG(a.mode):
                if a.chunks is not None and child.data is None and all(map(here_or_coming, a.chunks)):
                    continue
                if a.size > FILL_FILE_MAX:
                    return None
                files.append(child)
                size += a.size
            elif not stat.S_ISLNK(a.mode):
                return None
        return files, size

    async def _fill_listed(self, node: Node) -> None:
        async with self._one_at_a_time:
            await self._fill_with_pycache(node)

    async def _fill_with_pycache(self, node: Node) -> None:
        try:
            if self.lacking(node) is None:
                return
            assert node.children is not None
            ino = node.children.get(PYCACHE)
            pycache = self.tree.nodes.by_ino.get(ino) if ino is not None else None
            if pycache is not None:
                await self.tree.list_folder(pycache)  # asked with its small files' content
                if not await self._fill(pycache):
                    return
            await self._fill(node)
        except pyfuse3.FUSEError:
            pass  # the process's own operations will say what is wrong

    async def _fill(self, node: Node) -> bool:
        """Ask for the folder with its small files' content, and for each bigger file alone;
        whether it can be made whole."""
        got = self.lacking(node)
        if got is None:
            return False
        files, size = got
        if not files:
            return True
        small: list[Node] = []  # what comes with a listing
        big: list[Node] = []  # what is asked for alone
        for child in files:
            (small if child.attr is not None and child.attr.size <= INLINE_MAX else big).append(child)
        small_size = sum(child.attr.size for child in small if child.attr is not None)
        if size > self.budget or small_size > LISTING_CONTENT_MOST:
            return False
        self.budget -= size
        self.filled += 1
        if small:
            ask = ReadDir(path=node.path, content=True, budget=max(small_size, 1))
            self._install(node, small, await self.tree.ask_listing(ask))
        for child in big:
            attr = await self.tree.hashed(child)
            if attr.chunks is None or not await self.tree.contents.fetch_into_store(child):
                return False  # the client could not read it: the folder stays as it is
            self.fetched.add(child.ino)
        return True

    def _install(self, node: Node, files: list[Node], listing: DirListing) -> None:
        assert node.children is not None
        wanted = {child.ino for child in files}
        for entry in listing.entries:
            ino = node.children.get(entry.name)
            child = self.tree.nodes.by_ino.get(ino) if ino is not None else None
            if child is None or child.ino not in wanted or child.attr is None or entry.attr.chunks is None:
                continue
            if unchanged(child.attr, entry.attr):  # else the client's file changed: left to FUSE
                self.tree.nodes.set_attr(child, entry.attr)
                self.tree.contents.keep_inline(child, entry.attr)
                self.fetched.add(child.ino)
        self.tree.learned(node)
