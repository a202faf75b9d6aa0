"""File content on the appliance end of the file plane: chunks from the content store, or fetched.

Content comes from the `ContentStore` by chunk hash; missing chunks are fetched
with ReadChunks, consecutive ones in one request (and ahead of a sequential
reader, several requests in flight), verified and stored; small files come
whole with their attributes on open (`keep_inline`).  A chunk the store cannot
take (full) is served from a few kept in memory.  If the client's file changed
since its hashes were sent, the data does not match them: `Changed` is raised
and the tree asks for the file's attributes again.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import pyfuse3
import trio

from radium.remoting.run.cas import ContentStore, StoreFull
from radium.remoting.run.fsnodes import Node, TreeStats
from radium.remoting.run.fsproto import (
    CHUNK_SIZE,
    MAX_CHUNKS_PER_REQUEST,
    Attr,
    Chunks,
    FsReply,
    FsRequest,
    ReadChunks,
    chunk_count,
    chunk_hash,
)
from radium.remoting.run.tenants import OwnedChunks

log = logging.getLogger(__name__)

# Fetched chunks kept in memory: a sequential reader is served from here (no open and read
# of the stored chunk per FUSE read), and reads the store could not keep (full) too. More
# than the read-ahead, so that what was fetched ahead is still here when it is read.
RECENT_CHUNKS = 48
# A file read here and there (a library the loader maps: only the pages it touches are read)
# is fetched whole in the background while the process runs, so that the client's warm tree
# can take it and its next runs map it from the kernel, not through FUSE (a warm pyopencl
# program's PoCL start: 0.115 s → 0.03 s). Not the smallest files (read whole anyway) nor the
# biggest (a dataset read at random), and at most so many bytes a run.
COMPLETE_SIZES = (4 * CHUNK_SIZE, 1 << 30)
COMPLETE_RUN_BYTES = 1 << 30
# The completion waits until the process has made no file operation (and its readers' read-ahead
# fetched nothing) for this long: it takes the link and both ends' CPU when the process computes,
# not while it waits for its files (a cold `import torch` reads 390 MiB of libraries in part:
# completing them meanwhile cost 0.6 s). Not only fetches: a completion's chunks in flight
# delay the replies to the import's lookups and listings behind them on the channel (median
# 1.0 → 6.3 ms a request, ~0.5 s of a cold import, when only content fetches counted).
COMPLETE_QUIET_S = 0.2
# Chunks of a file at least this big that a reader streams (reads in order) are stored past the
# page cache (ContentStore's O_DIRECT): a dataset read through, whose copy in the page cache
# would cost CPU now (the cold read) and little later. Others (libraries, modules: read in
# part, and copied into the warm tree at the end of the run) are stored through it.
STREAMED_DIRECT_MIN = 8 * CHUNK_SIZE
# Chunks of the next file fetched ahead when a process reads a folder's files in order (the
# tree's `ClientTree._reading_on`): enough to keep the link busy while the process closes one
# file, opens the next and its own read-ahead starts.
NEXT_FILE_CHUNKS = 8
# Of those, the first come with the next file's lookup (`Lookup.head`), right behind its hashes
# on the channel, not asked for when the hashes arrive; not all of them: the lookup's reply is
# whole before it is used, and the process, opening the file, waits for it. Measured on the
# cold read (21 reads each, alternating): 4 0.784 of iperf3, 8 0.72 (6 reads), none 0.762.
NEXT_FILE_HEAD = 4
# A file that starts so is mapped by the loader, whose page faults come here and there, and
# two side by side look like a sequential reader: no read of it starts a read-ahead. A cold
# `import torch` fetched ~170 MiB ahead of such faults, and its lookups waited behind them.
ELF_MAGIC = b"\x7fELF"

#: Sends a request to the client: its reply, of the type expected, or a FUSEError.
Ask = Callable[[FsRequest, type], Awaitable[FsReply]]

__all__ = ["Changed", "Contents"]


class Changed(Exception):
    """The client's file no longer matches the hashes we hold."""


class Contents:
    """Reading files' content for a `ClientTree`: from the store, from memory, or asked for."""

    def __init__(
        self,
        ask: Ask,
        store: ContentStore,
        stats: TreeStats,
        *,
        batch_chunks: int = 4,
        ahead_chunks: int = 32,
        owned: OwnedChunks | None = None,
    ) -> None:
        self._ask = ask
        # The chunks this run's tenant sent itself: the only stored ones it is served (tenants.py).
        # None: every stored chunk (one tenant: tests and tools; a supervisor always gives one).
        self.owned = owned
        self.store = store
        self.stats = stats
        self.batch_chunks = max(1, min(batch_chunks, MAX_CHUNKS_PER_REQUEST))
        self.ahead_chunks = max(0, ahead_chunks)
        # Where read-ahead fetches run; set by mount_and_serve while it serves.
        self.background: trio.Nursery | None = None
        self._inflight: dict[object, trio.Event] = {}
        self.recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._seconds_lock = threading.Lock()
        self._completing: set[int] = set()  # files being fetched whole (by inode)
        self._completions = 0  # _complete and when_quiet_soon jobs scheduled and not ended
        self._completion_ended = trio.Event()  # set (and replaced) as each ends
        self._exited = trio.Event()  # the process exited: no reader will fetch again (`finish`)
        self._advised: dict[int, int] = {}  # by inode: stored chunks read ahead (will_need) up to here
        # When the process last made a file operation, or its read-ahead a fetch (trio's clock):
        # the completion waits until it is quiet.
        self._busy_at = -COMPLETE_QUIET_S
        self.complete_budget = COMPLETE_RUN_BYTES  # 0: files read in part are left so
        # Told of each file whose read-ahead has reached its end (once a file): the tree may then
        # fetch the start of the file it expects next (`fetch_head`).
        self.reading_on: Callable[[Node], None] | None = None
        self._reached_end: set[int] = set()  # those files, by inode

    def keep_inline(self, node: Node, attr: Attr) -> None:
        """Put a small file's inline data into the store (or keep it with the node when it does
        not match its hash: the client's file changed since it was hashed)."""
        if attr.data is None:
            return
        data, attr.data = attr.data, None
        self.stats.bytes_fetched += len(data)
        if not data:
            return
        if attr.chunks and len(attr.chunks) == 1:
            if chunk_hash(data) == attr.chunks[0]:
                # Written by the store's writer thread (a file created per chunk: not on this
                # loop's thread, which serves the process's file operations); read from memory until.
                self.store.put_soon(attr.chunks[0], data)
                self._owns(attr.chunks[0])
                return
            log.warning("inline data of %r does not match its hash", node.path)
        node.data = data

    async def read(self, node: Node, off: int, size: int) -> bytes | memoryview:
        """Bytes [off, off+size) of the node's file; `Changed` when the client's file no longer matches.

        A read within one chunk held in memory is a view of it, not a copy (pyfuse3 replies
        from any buffer): a cold read copied every byte once more on the thread serving FUSE."""
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
        # A first read from the start: whether the file is ELF is known once its first bytes
        # are here, and only then may a read-ahead start.
        telling = off == 0 and node.elf is None
        first, last = off // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        fetched: list[int] = []
        if sequential and not telling and not node.elf:
            self._ahead_of(node, last, len(chunks))
        elif not sequential:
            self._complete_soon(node)
            fetched = await self._fetch_missing(node, first, last)
        parts = []
        for i in range(first, last + 1):
            base = i * CHUNK_SIZE
            lo, hi = max(off, base) - base, min(end, base + CHUNK_SIZE) - base
            parts.append(await self._piece(node, i, lo, hi, sequential and not telling, i in fetched))
        if telling:
            node.elf = bytes(parts[0][:4]) == ELF_MAGIC
            if sequential and not node.elf:
                self._ahead_of(node, last, len(chunks))
        node.read_end = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _ahead_of(self, node: Node, last: int, count: int) -> None:
        """A sequential reader has asked for up to chunk `last` of `count`: read ahead of it."""
        self._read_ahead(node, last + 1)
        if last + 1 + self.ahead_chunks >= count and node.ino not in self._reached_end:
            self._reached_end.add(node.ino)
            if self.reading_on is not None:
                self.reading_on(node)

    async def _fetch_missing(self, node: Node, first: int, last: int) -> list[int]:
        """A read out of order across chunks `first`..`last` (a page fault's read-around is 1 MiB
        around the page, so it spans two chunks): ask for the missing ones all at once, each in
        a request of its own, not one after another as the pieces are copied. A cold chunk costs
        ~3 ms on the lab VM, mostly the client's and this side's work on it, not the round trip:
        one request for both took as long as two in turn; two side by side, ~6 ms for both."""
        assert node.attr is not None and node.attr.chunks is not None
        chunks = node.attr.chunks
        if first == last:
            return []  # _piece fetches it, as for any read
        missing = [i for i in range(first, last + 1) if not self.here_or_coming(chunks[i])]
        if not missing:
            return []

        async def fetch(index: int) -> None:
            try:
                await self._fetch_chunks(node, [index])
            except (pyfuse3.FUSEError, Changed):
                pass  # _piece fetches it again and reports

        async with trio.open_nursery() as nursery:
            for i in missing:  # one request each: the client and the link work on both at once
                nursery.start_soon(fetch, i)
        return missing

    def fetch_head(self, node: Node) -> None:
        """Fetch the first NEXT_FILE_CHUNKS chunks of a file the process is expected to read next."""
        self._read_ahead(node, 0, NEXT_FILE_CHUNKS)

    def _read_ahead(self, node: Node, start: int, count: int | None = None) -> None:
        """For a sequential reader: fetch the missing chunks of the next `ahead_chunks` (or `count`)
        in the background.

        Several requests are in flight at once (one per `batch_chunks`), so that the
        client reading, the link and this side storing overlap instead of taking turns.
        """
        if self.background is None or not self.ahead_chunks:
            return
        assert node.attr is not None and node.attr.chunks is not None
        chunks = node.attr.chunks
        batch: list[int] = []
        batches: list[tuple[list[int], dict[object, trio.Event]]] = []

        def flush() -> None:
            if batch:
                # Registered now, not when the task starts: the next read must see them in flight.
                batches.append((list(batch), self._register(chunks, batch)))
                batch.clear()

        end = min(len(chunks), start + (self.ahead_chunks if count is None else count))
        advised = self._advised.get(node.ino, 0)
        for i in range(start, end):
            digest = chunks[i]
            if self._coming(digest):
                flush()  # requests stay runs of consecutive chunks
                continue
            if self._stored(digest):
                flush()
                if i >= advised:
                    self.store.will_need(digest)  # have the kernel read it ahead of the reader
                continue
            batch.append(i)
            if len(batch) == self.batch_chunks:
                flush()
        flush()
        self._advised[node.ino] = max(advised, end)
        if batches:
            self.background.start_soon(self._fetch_in_order, node, batches)

    async def _fetch_in_order(
        self, node: Node, batches: list[tuple[list[int], dict[object, trio.Event]]]
    ) -> None:
        """Ask for the batches in file order, all in flight at once: the first is answered first,
        so that the reader goes on while the rest comes (trio starts tasks in no set order)."""
        assert self.background is not None
        started = 0
        try:
            for indexes, events in batches:
                await self.background.start(self._fetch_started, node, indexes, events)
                started += 1
        finally:  # cancelled (the tree is unmounted): what was not asked for is no longer coming
            for _, events in batches[started:]:
                self._release(events)

    async def _fetch_started(
        self,
        node: Node,
        indexes: list[int],
        events: dict[object, trio.Event],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # started() wakes the caller, but this task runs on until its first checkpoint, which
        # comes after its request is sent (FileAsks.fetch sends before it waits).
        task_status.started()
        await self._fetch_quietly(node, indexes, events)

    def _complete_soon(self, node: Node) -> None:
        """A file read out of order: fetch the rest of it in the background (COMPLETE_SIZES)."""
        a = node.attr
        assert a is not None
        low, high = COMPLETE_SIZES
        if self.background is None or self.complete_budget <= 0 or node.ino in self._completing:
            return
        if not low <= a.size <= high:
            return
        self._completing.add(node.ino)
        self._completions += 1  # counted from now: `finish` waits for it even before it starts
        self.background.start_soon(self._complete, node)

    def busy(self) -> None:
        """The process made a file operation, or a fetch for a reader was asked for: not quiet."""
        self._busy_at = trio.current_time()

    def when_quiet_soon(self, job: Callable[[], Awaitable[None]]) -> bool:
        """Run `job` in the background when the process is quiet (COMPLETE_QUIET_S), or once the
        process has exited; counted as a completion (`finish` waits for it). False: not here."""
        if self.background is None:
            return False
        self._completions += 1
        self.background.start_soon(self._quietly, job)
        return True

    async def _quietly(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await self._quiet()
            await job()
        finally:
            self._completion_done()

    async def _quiet(self) -> None:
        """Until the process has been quiet for COMPLETE_QUIET_S (`busy`), or has exited."""
        while (
            not self._exited.is_set() and (left := self._busy_at + COMPLETE_QUIET_S - trio.current_time()) > 0
        ):
            with trio.move_on_after(left):
                await self._exited.wait()

    def _completion_done(self) -> None:
        self._completions -= 1
        self._completion_ended.set()
        self._completion_ended = trio.Event()

    async def _complete(self, node: Node) -> None:
        """Fetch the chunks of the node's file that are neither here nor coming, in order, one
        request at a time when the process is quiet (COMPLETE_QUIET_S), into the store only."""
        try:
            assert node.attr is not None and node.attr.chunks is not None
            chunks = node.attr.chunks
            for start in range(0, len(chunks), self.batch_chunks):
                await self._quiet()
                end = min(len(chunks), start + self.batch_chunks)
                batch = [i for i in range(start, end) if not self.here_or_coming(chunks[i])]
                if not batch:
                    continue
                if len(batch) * CHUNK_SIZE > self.complete_budget:
                    return
                self.complete_budget -= len(batch) * CHUNK_SIZE
                events = self._register(chunks, batch)
                try:
                    await self._fetch_chunks(node, batch, events, remember=False)
                except (pyfuse3.FUSEError, Changed):
                    return  # the process's own reads will say what is wrong
        finally:
            self._completion_done()

    async def fetch_into_store(self, node: Node) -> bool:
        """Every chunk of the node's file this side lacks, into the store only (not kept in
        memory: for the warm tree, not for a reader); whether it all came."""
        assert node.attr is not None and node.attr.chunks is not None
        chunks = node.attr.chunks
        wanted = [i for i, digest in enumerate(chunks) if not self.here_or_coming(digest)]
        for start in range(0, len(wanted), self.batch_chunks):
            batch = wanted[start : start + self.batch_chunks]
            try:
                await self._fetch_chunks(node, batch, self._register(chunks, batch), remember=False)
            except (pyfuse3.FUSEError, Changed):
                return False
        return True

    @property
    def completing(self) -> bool:
        """Files read in part are being fetched whole."""
        return self._completions > 0

    async def finish(self, seconds: float) -> bool:
        """The process has exited: fetch the rest of the files being completed now, without
        waiting for quiet, for at most `seconds`; whether all were done. A short process (a
        script that imports torch and exits) has no quiet time, and its next run would fault
        its libraries in through FUSE again; what is left when the time is up stays for the
        client's next runs."""
        self._exited.set()
        with trio.move_on_after(seconds):
            while self._completions:
                await self._completion_ended.wait()
        return not self._completions

    def here_or_coming(self, digest: bytes) -> bool:
        """The chunk is stored, in memory, or being fetched: nothing to ask for."""
        return self._coming(digest) or self._stored(digest)

    def _coming(self, digest: bytes) -> bool:
        """In memory, or being fetched."""
        return ("chunk", digest) in self._inflight or digest in self.recent

    def _stored(self, digest: bytes) -> bool:
        """In the store, and this run may be served it."""
        return self.serves(digest) and self.store.has(digest)

    def serves(self, digest: bytes) -> bool:
        """Whether this run may be served the stored chunk `digest` (its tenant sent it)."""
        return self.owned is None or digest in self.owned

    def _owns(self, digest: bytes) -> None:
        if self.owned is not None:
            self.owned.add(digest)

    def _register(self, chunks: list[bytes], indexes: list[int]) -> dict[object, trio.Event]:
        """Mark chunks as in flight (those not already: a file may repeat a chunk)."""
        events: dict[object, trio.Event] = {}
        for i in indexes:
            key = ("chunk", chunks[i])
            if key not in self._inflight:
                events[key] = self._inflight[key] = trio.Event()
        return events

    def _release(self, events: dict[object, trio.Event]) -> None:
        """Chunks are no longer in flight: wake those waiting for them (once: a second call is a no-op)."""
        for key, event in events.items():
            if self._inflight.get(key) is event:
                del self._inflight[key]
            event.set()

    async def _fetch_quietly(self, node: Node, indexes: list[int], events: dict[object, trio.Event]) -> None:
        try:
            await self._fetch_chunks(node, indexes, events, streamed=True)
        except (pyfuse3.FUSEError, Changed):
            pass  # the reader's own fetch will try again and report

    def whole_if_here(self, node: Node) -> bytes | memoryview | None:
        """The content of a file of one chunk when it is here (in memory or stored), else None."""
        a = node.attr
        if a is None or not 0 < a.size <= CHUNK_SIZE:
            return None
        if node.data is not None:
            return node.data
        if a.chunks is None or len(a.chunks) != 1:
            return None
        return self._local_piece(a.chunks[0], 0, a.size)

    def _local_piece(self, digest: bytes, lo: int, hi: int) -> bytes | memoryview | None:
        data = self.recent.get(digest)
        if data is not None:
            return memoryview(data)[lo:hi]
        if not self.serves(digest):
            return None  # another tenant's, perhaps: this client must send it itself
        piece = self.store.read(digest, lo, hi - lo)
        return piece if piece is not None and len(piece) == hi - lo else None

    async def _piece(
        self, node: Node, index: int, lo: int, hi: int, sequential: bool, fetched: bool = False
    ) -> bytes | memoryview:
        """Bytes [lo, hi) of chunk `index` of the node's file, fetching it if need be (`fetched`:
        the read fetched it already, a miss)."""
        assert node.attr is not None and node.attr.chunks is not None
        digest = node.attr.chunks[index]
        piece = self._local_piece(digest, lo, hi)
        if piece is not None:
            if fetched:
                self.stats.chunk_misses += 1
            else:
                self.stats.chunk_hits += 1
            return piece
        self.stats.chunk_misses += 1
        waiting = time.perf_counter()
        for _ in range(3):  # another task's fetch may fail, or the store may lose it at once
            if ("chunk", digest) in self._inflight:
                await self._inflight[("chunk", digest)].wait()
            else:
                await self._fetch_run(node, index, sequential)
            piece = self._local_piece(digest, lo, hi)
            if piece is not None:
                self.stats.seconds["wait"] += time.perf_counter() - waiting
                return piece
        log.warning("chunk %d of %r could not be read back after fetching it", index, node.path)
        raise pyfuse3.FUSEError(errno.EIO)

    async def _fetch_run(self, node: Node, index: int, sequential: bool) -> None:
        """Fetch chunk `index` and, for a sequential reader, the missing chunks after it, in one request."""
        attr = node.attr
        assert attr is not None and attr.chunks is not None
        chunks = attr.chunks
        wanted = [index]
        if sequential:
            for i in range(index + 1, min(len(chunks), index + self.batch_chunks)):
                digest = chunks[i]
                if self.here_or_coming(digest):
                    break  # keep runs consecutive: what is there ends the run
                wanted.append(i)
        await self._fetch_chunks(node, wanted, streamed=sequential)

    async def _fetch_chunks(
        self,
        node: Node,
        wanted: list[int],
        events: dict[object, trio.Event] | None = None,
        remember: bool = True,
        streamed: bool = False,
    ) -> None:
        """Fetch chunks `wanted` (ascending indexes) of the node's file in one request, and store them.

        `events`: their in-flight marks, when the caller registered them already; `remember`:
        keep them in memory too (False: fetched for the store, not to be read now); `streamed`:
        for a reader reading the file in order (STREAMED_DIRECT_MIN).
        """
        attr = node.attr
        assert attr is not None and attr.chunks is not None
        chunks = attr.chunks
        if events is None:
            events = self._register(chunks, wanted)
        if remember:
            self.busy()
        try:
            reply = await self._ask(ReadChunks(path=node.path, indexes=wanted, framed=True), Chunks)
            if len(reply.data) != len(wanted):
                raise pyfuse3.FUSEError(errno.EIO)
            self.stats.chunks_fetched += len(wanted)
            self.stats.bytes_fetched += sum(map(len, reply.data))
            pairs = [(chunks[i], data) for i, data in zip(wanted, reply.data, strict=True)]
            kept = await self._keep(pairs, remember, direct=streamed and attr.size >= STREAMED_DIRECT_MIN)
        finally:
            self._release(events)
        if kept < len(pairs):
            raise Changed()

    def take_head(self, node: Node, data: list[bytes]) -> None:
        """The first chunks of a file, come with its lookup (`Lookup.head`): marked in flight now,
        so that a reader opening the file waits for them rather than asking for them again, then
        verified, kept in memory and stored as a sequential reader's are. One that does not match
        its hash is left to the reader's own fetch, which finds the file changed."""
        a = node.attr
        if a is None or a.chunks is None or len(data) > len(a.chunks) or self.background is None:
            return
        chunks = a.chunks
        self.busy()
        self.stats.chunks_fetched += len(data)
        self.stats.bytes_fetched += sum(map(len, data))
        indexes = [i for i in range(len(data)) if not self.here_or_coming(chunks[i])]
        if indexes:
            events = self._register(chunks, indexes)
            pairs = [(chunks[i], data[i]) for i in indexes]
            self.background.start_soon(self._keep_head, pairs, events, a.size >= STREAMED_DIRECT_MIN)

    async def _keep_head(
        self, pairs: list[tuple[bytes, bytes]], events: dict[object, trio.Event], direct: bool
    ) -> None:
        try:
            await self._keep(pairs, remember=True, direct=direct)
        finally:
            self._release(events)

    async def _keep(self, pairs: list[tuple[bytes, bytes]], remember: bool, direct: bool) -> int:
        """Verify fetched chunks (digest, content) and keep those that match: in memory too with
        `remember` (served from there at once, stored meanwhile, off the reader's path), else
        stored before this returns (the caller's in-flight marks go after). How many matched."""
        started = time.perf_counter()
        verified = await trio.to_thread.run_sync(_verified, pairs)
        self.stats.seconds["verify"] += time.perf_counter() - started
        for digest, data in verified:
            self._owns(digest)
            if remember:
                self.recent[digest] = data
                while len(self.recent) > RECENT_CHUNKS:
                    self.recent.popitem(last=False)
        if verified and remember:
            self._store_soon(verified, direct=direct)
        elif verified:
            await trio.to_thread.run_sync(self._store_chunks, verified)
        return len(verified)

    def _store_soon(self, verified: list[tuple[bytes, bytes]], direct: bool = False) -> None:
        if self.background is None:
            self._store_chunks(verified, direct)
        else:
            self.background.start_soon(trio.to_thread.run_sync, self._store_chunks, verified, direct)

    def _store_chunks(self, verified: list[tuple[bytes, bytes]], direct: bool = False) -> None:
        """Store chunks whose hashes were checked (in a worker thread, in the background: a
        failure costs a later fetch, never the run)."""
        started = time.perf_counter()
        self._store_each(verified, direct)
        with self._seconds_lock:  # stores run in several threads at once
            self.stats.seconds["store"] += time.perf_counter() - started

    def _store_each(self, verified: list[tuple[bytes, bytes]], direct: bool = False) -> None:
        for digest, data in verified:
            try:
                self.store.put(digest, data, verified=True, direct=direct)
            except StoreFull:
                self.stats.store_full += 1  # served from memory while it lasts, fetched again after
            except OSError as exc:
                log.warning("could not store a chunk: %s", exc)


def _verified(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The chunks whose content has their hash (in a worker thread: hashing takes time)."""
    return [(digest, data) for digest, data in pairs if chunk_hash(data) == digest]
