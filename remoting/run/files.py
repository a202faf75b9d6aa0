"""The client end of the file plane: answer file requests from the real file system.

`FileServer.handle(request) -> reply` is synchronous and thread-safe; the caller
runs it in a worker thread.  It never follows a symlink it is asked about (lstat,
O_NOFOLLOW), answers failures with the errno (`FsError`), and remembers the chunk
hashes of each file it has read, keyed by (st_dev, st_ino, size, mtime_ns,
ctime_ns), so that a file is hashed again only when it changed.

Which mounts are served (the rule).  The served tree is the root's own file
system plus the file systems mounted inside it that pass this rule; every other
mount point appears as an EMPTY directory (lstat works, listing it yields
nothing, nothing below it exists):

1. a mount point named in `serve_mounts` is served;
2. a mount point that is the client's working directory, an ancestor of it, or
   inside it is served (the process must find its working directory, whatever
   holds it, even a tmpfs);
3. otherwise, under /proc, /sys, /dev or /run nothing is served: the appliance
   brings its own kernel interfaces and devices;
4. otherwise a disk or network file system (`DISK_FSTYPES`: ext4, xfs, btrfs,
   nfs, ...) is served when `serve_disk_mounts` (default) holds, so a separate
   /home or /data partition is there;
5. everything else (tmpfs, proc, cgroup, overlay, fuse, ...) is hidden.

The table comes from /proc/self/mountinfo when the server starts; a directory
whose st_dev differs from its parent's and that the table does not know makes
the server read the table again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from radium.remoting import _threads
from radium.remoting.run.exports import ExportPolicy
from radium.remoting.run.fsproto import (
    CHUNK_SIZE,
    INLINE_MAX,
    LISTING_CONTENT_MAX,
    LISTING_CONTENT_MOST,
    LOOKUP_INLINE_MAX,
    MAX_CHUNKS_PER_REQUEST,
    Attr,
    BadPath,
    Chunks,
    DirEntry,
    DirListing,
    FsError,
    FsReply,
    FsRequest,
    Headed,
    LinkTarget,
    Lookup,
    Prefetch,
    ReadChunks,
    ReadDir,
    ReadLink,
    Tree,
    ancestors,
    check_path,
    chunk_count,
    chunk_hash,
    join,
    listing_digest,
    shape_digest,
)

log = logging.getLogger(__name__)

DISK_FSTYPES = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "f2fs", "jfs", "reiserfs", "nilfs2", "zfs",
        "vfat", "exfat", "ntfs", "ntfs3", "fuseblk", "iso9660", "udf", "squashfs", "erofs",
        "nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "9p", "virtiofs",
    }
)  # fmt: skip
PSEUDO_TREES = (b"/proc", b"/sys", b"/dev", b"/run")

# Bytecode for `python -O`/`-OO` only: sent with a listing after every other small file (ReadDir).
_OPTIMISED_PYC = re.compile(rb"\.opt-[12]\.pyc$")
# Files of at least this size are hashed by HASH_THREADS threads at once (_hash_in_parallel).
PARALLEL_HASH_MIN = 8 * CHUNK_SIZE
HASH_THREADS = 2
# Content read to be hashed is kept, up to this many bytes, for the ReadChunks that asks for it
# next (`JustHashed`): a cold file is read once, not once to hash it and again to send it.
JUST_HASHED_BYTES = 64 * CHUNK_SIZE
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# --- the mount table -------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_point: bytes
    fstype: str
    source: str
    device: str  # "major:minor" of the mounted file system


def _unescape(field_: str) -> bytes:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    raw = field_.encode("utf-8", "surrogateescape")
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts this process sees, in mount order."""
    mounts = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], fields[sep + 2], fields[2]))
    return mounts


def _is_under(path: bytes, top: bytes) -> bool:
    """`path` is `top` or inside it."""
    return top == b"/" or path == top or path.startswith(top + b"/")


# --- the hash cache ----------------------------------------------------------------


class HashCache:
    """Chunk hashes of files already read, keyed by (st_dev, st_ino), valid while size and times hold.

    Bounded (least recently used entries go first); optionally saved to `path`
    so that a later run does not hash unchanged files again.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_entries: int = 500_000) -> None:
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int], tuple[int, int, int, list[bytes]]] = OrderedDict()
        self._dirty = False
        if self.path is not None:
            self._load()

    @staticmethod
    def _key(st: os.stat_result) -> tuple[tuple[int, int], tuple[int, int, int]]:
        return (st.st_dev, st.st_ino), (st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, st: os.stat_result) -> list[bytes] | None:
        """The hashes of the file `st` describes, if known and the file is unchanged."""
        key, version = self._key(st)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[:3] != version:
                return None
            self._entries.move_to_end(key)
            return entry[3]

    def put(self, st: os.stat_result, hashes: list[bytes]) -> None:
        """Remember the hashes of the file `st` describes."""
        key, version = self._key(st)
        with self._lock:
            self._entries[key] = (*version, hashes)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self._dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self) -> None:
        assert self.path is not None
        try:
            rows = msgspec.msgpack.decode(
                self.path.read_bytes(), type=list[tuple[int, int, int, int, int, list[bytes]]]
            )
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            # A cache is only an optimisation: a damaged one is started afresh.
            log.warning("ignoring hash cache %s: %s", self.path, exc)
            return
        for dev, ino, size, mtime, ctime, hashes in rows[-self.max_entries :]:
            self._entries[(dev, ino)] = (size, mtime, ctime, hashes)

    def save(self) -> None:
        """Write the cache to its file atomically (no-op without a file or without changes)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            rows = [(dev, ino, *entry) for (dev, ino), entry in self._entries.items()]
            self._dirty = False
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(msgspec.msgpack.encode(rows))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save hash cache %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)


class JustHashed:
    """Chunks of files just read to hash them, kept for the ReadChunks that usually follows: the
    appliance learns the hashes of a file it lacks, then asks for its chunks at once (a reader
    streaming a folder's files has the next one looked up, hashed and fetched ahead of it).

    Keyed as the hash cache is (file, size and times) and the chunk's index; a chunk is taken
    once, and the oldest go when the kept bytes pass `max_bytes`. A file changed since, with new
    times, misses; one changed without (written through a mapping) is sent as it was hashed,
    which is what the appliance expects of it.
    """

    def __init__(self, max_bytes: int = JUST_HASHED_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._chunks: OrderedDict[tuple[object, int], bytes] = OrderedDict()
        self._bytes = 0

    def keep(self, st: os.stat_result, index: int, data: bytes) -> None:
        key = (HashCache._key(st), index)
        with self._lock:
            old = self._chunks.pop(key, None)
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._chunks[key] = data
            while self._bytes > self.max_bytes:
                self._bytes -= len(self._chunks.popitem(last=False)[1])

    def take(self, st: os.stat_result, index: int) -> bytes | None:
        with self._lock:
            data = self._chunks.pop((HashCache._key(st), index), None)
            if data is not None:
                self._bytes -= len(data)
            return data

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._bytes = 0


# --- the server ----------------------------------------------------------------------


@dataclass
class ServerStats:
    """What a FileServer did: requests by kind, content bytes sent, bytes hashed."""

    requests: Counter = field(default_factory=Counter)
    content_bytes: int = 0  # chunk data and inline data sent
    hashed_bytes: int = 0  # bytes read to compute hashes (0 when the cache knew them)
    reread_bytes: int = 0  # chunk data read again to be sent (not kept from hashing: JustHashed)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # answering, by kind
    errors: int = 0


class FileServer:
    """Answers file requests from the tree under `root`, which the appliance sees as `/`.

    `root` is "/" in production; another root is presented as if it were "/"
    (symlinks in the middle of a path may not lead out of it).  `cwd` (default:
    this process's working directory) and `serve_mounts` select the mounts served
    beside the root's own, by the rule in the module's docstring.  `hash_cache`
    names a file that keeps chunk hashes across runs.
    """

    def __init__(
        self,
        root: str | os.PathLike = "/",
        *,
        serve_mounts: Iterable[str | os.PathLike] = (),
        cwd: str | os.PathLike | None = None,
        serve_disk_mounts: bool = True,
        hash_cache: str | os.PathLike | None = None,
        delivered: set[bytes] | None = None,
        exports: ExportPolicy | None = None,
    ) -> None:
        self.root = os.fsencode(os.path.realpath(root))
        self._prefix = b"" if self.root == b"/" else self.root
        self.cwd = self._client_path(os.fsencode(os.path.realpath(cwd if cwd is not None else os.getcwd())))
        self.serve_mounts = {
            p for m in serve_mounts if (p := self._client_path(os.fsencode(os.path.realpath(m)))) is not None
        }
        self.serve_disk_mounts = serve_disk_mounts
        self.exports = exports  # what is withheld (secrets): absent to the appliance
        self.hashes = HashCache(hash_cache)
        # Chunk hashes the appliance is believed to hold: small files whose only chunk
        # is among them are not sent inline again.  A wrong belief (evicted there)
        # costs a ReadChunks round trip, never a wrong answer.
        self.delivered = delivered if delivered is not None else set()
        self.stats = ServerStats()
        self._stats_lock = threading.Lock()
        self._mount_lock = threading.Lock()
        self.mount_points: frozenset[bytes] = frozenset()  # client paths of every mount inside root
        self.hidden: frozenset[bytes] = frozenset()  # client paths of mount points shown empty
        self._not_mounts: set[bytes] = set()  # st_dev changes that are no mount (btrfs subvolumes)
        self._hashers: ThreadPoolExecutor | None = None  # big files' hashing (_hash_in_parallel)
        self.just_hashed = JustHashed()
        self.refresh_mounts()

    # --- paths and mounts

    def _client_path(self, real: bytes) -> bytes | None:
        """The client path of a real path, None when it lies outside root."""
        if not _is_under(real, self.root):
            return None
        return real[len(self._prefix) :] or b"/"

    def _real(self, path: bytes) -> bytes:
        """The real path of a client path: every request's way in, so the export policy's check."""
        real = self._prefix + path if path != b"/" else self.root
        if self._prefix and path != b"/":
            # A symlink in the middle of the path must not lead out of root.
            parent = os.path.realpath(os.path.dirname(real))
            if not _is_under(os.fsencode(parent), self.root):
                raise OSError(errno.EACCES, "path leaves the served tree")
        if self.exports is not None and self.exports.denies(real):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))  # withheld: as if absent
        return real

    def _withheld(self, real_folder: bytes) -> Callable[[bytes, os.stat_result | None], bool]:
        """`hidden(name, st)` for the entries of a folder being listed."""
        if self.exports is None:
            return lambda name, st: False
        return self.exports.entries(real_folder)

    def _served(self, mount: Mount, point: bytes) -> bool:
        """The rule of the module docstring, for one mount point other than root's own."""
        if point in self.serve_mounts:
            return True
        if self.cwd is not None and (_is_under(self.cwd, point) or _is_under(point, self.cwd)):
            return True
        if any(_is_under(point, top) for top in PSEUDO_TREES):
            return False
        return self.serve_disk_mounts and mount.fstype in DISK_FSTYPES

    def refresh_mounts(self) -> None:
        """Read the mount table again and recompute which mount points are shown empty."""
        try:
            mounts = read_mountinfo()
        except OSError as exc:
            log.warning("cannot read the mount table, serving every mount: %s", exc)
            mounts = []
        points, hidden = set(), set()
        for mount in mounts:  # in mount order: a later mount on the same point hides the earlier
            point = self._client_path(mount.mount_point)
            if point is None or point == b"/":
                continue  # outside the tree, or the root's own file system (always served)
            points.add(point)
            if self._served(mount, point):
                hidden.discard(point)
            else:
                hidden.add(point)
        with self._mount_lock:
            self.mount_points, self.hidden = frozenset(points), frozenset(hidden)

    def _check_hidden(self, path: bytes) -> bool:
        """True when `path` is itself a hidden mount point; ENOENT when it lies below one."""
        hidden = self.hidden
        if not hidden:
            return False
        if any(a in hidden for a in ancestors(path)):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return path in hidden

    def _maybe_new_mount(self, path: bytes) -> bool:
        """A directory changed st_dev under its parent: reread the table if it is new; True when hidden."""
        if path in self.mount_points or path in self._not_mounts:
            return path in self.hidden
        self.refresh_mounts()
        if path not in self.mount_points:
            self._not_mounts.add(path)
        return path in self.hidden

    # --- attributes and content

    def _attr(self, st: os.stat_result, real: bytes, *, content: bool) -> Attr:
        attr = Attr(
            mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size,
            atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
            nlink=st.st_nlink, ino=st.st_ino, dev=st.st_dev, rdev=st.st_rdev,
        )  # fmt: skip
        if stat.S_ISLNK(st.st_mode):
            try:
                attr.target = os.readlink(real)
            except OSError:
                pass  # it went away or is unreadable: readlink will say why
        elif stat.S_ISREG(st.st_mode):
            attr.chunks = self.hashes.get(st)
            if content and (attr.chunks is None or self._comes_whole(attr)):
                self._read_content(attr, real, LOOKUP_INLINE_MAX)
        return attr

    def _read_content(self, attr: Attr, real: bytes, inline: int = INLINE_MAX) -> None:
        """Fill in hashes (and data for a file of up to `inline` bytes) by reading the file;
        leave them None if unreadable."""
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENXIO, errno.ETXTBSY):
                return  # the appliance will refuse to open it
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            hashes = self._hash_in_parallel(fd, st.st_size, keep_as=st) if st.st_size > inline else None
            pieces: list[bytes] = []  # its first chunks as read: its content, or kept (JustHashed)
            if hashes is not None:
                size = st.st_size
            else:
                hashes, size = [], 0
                keep = max(inline, self.just_hashed.max_bytes)  # a big file that changed: not whole
                while True:
                    piece = os.pread(fd, CHUNK_SIZE, size)
                    if not piece:
                        break
                    hashes.append(chunk_hash(piece))
                    if size < keep:
                        pieces.append(piece)
                    size += len(piece)
                if size > inline and size == st.st_size:  # not sent whole: asked for next
                    for index, piece in enumerate(pieces):
                        self.just_hashed.keep(st, index, piece)
            with self._stats_lock:
                self.stats.hashed_bytes += size
            # What was read is what the appliance will expect: describe exactly that.
            attr.size, attr.mtime_ns, attr.ctime_ns = size, st.st_mtime_ns, st.st_ctime_ns
            attr.chunks = hashes
            if size <= inline and not all(h in self.delivered for h in hashes):
                attr.data = b"".join(pieces)
                self.delivered.update(hashes)
                with self._stats_lock:
                    self.stats.content_bytes += size
            if size == st.st_size:
                self.hashes.put(st, hashes)
        finally:
            os.close(fd)

    def _hash_in_parallel(
        self, fd: int, size: int, keep_as: os.stat_result | None = None
    ) -> list[bytes] | None:
        """The chunk hashes of a big file, read and hashed by two threads (chunks taken in turn):
        a process opening a library waits for its hashes (`libtorch_cpu.so`, 434 MB: 115 ms on
        one core of the lab VM, 61 on two). None for a file under PARALLEL_HASH_MIN, or one that
        did not read as `size` bytes (it changes: hashed again in one pass, as it reads then).
        Its first chunks are kept for the ReadChunks that asks for them (`JustHashed`, as the
        file `keep_as` describes): a reader starts there."""
        if size < PARALLEL_HASH_MIN:
            return None
        count = chunk_count(size)
        with self._stats_lock:
            if self._hashers is None:
                self._hashers = ThreadPoolExecutor(
                    HASH_THREADS, thread_name_prefix="radium-hash", initializer=_threads.name_for_the_os
                )
            hashers = self._hashers

        kept = self.just_hashed.max_bytes // CHUNK_SIZE

        def every(first: int) -> list[bytes] | None:
            buf = bytearray(CHUNK_SIZE)
            view, out = memoryview(buf), []
            for i in range(first, count, HASH_THREADS):
                want = min(CHUNK_SIZE, size - i * CHUNK_SIZE)
                if keep_as is not None and i < kept:
                    piece = os.pread(fd, want, i * CHUNK_SIZE)  # a buffer of its own, to keep
                    if len(piece) != want:
                        return None  # shorter now
                    out.append(chunk_hash(piece))
                    self.just_hashed.keep(keep_as, i, piece)
                    continue
                if os.preadv(fd, [view[:want]], i * CHUNK_SIZE) != want:
                    return None  # shorter now
                out.append(chunk_hash(view[:want]))  # BLAKE3 lets go of the GIL: both threads hash
            return out

        try:
            parts = list(hashers.map(every, range(HASH_THREADS)))
        except RuntimeError:  # closed (the run ended meanwhile): in one pass
            return None
        if any(p is None for p in parts) or os.pread(fd, 1, size):  # shorter, or longer now
            if keep_as is not None:
                for i in range(min(count, kept)):
                    self.just_hashed.take(keep_as, i)  # not what the hashes will describe
            return None
        hashes: list[bytes] = [b""] * count
        for first, part in enumerate(parts):
            assert part is not None
            hashes[first::HASH_THREADS] = part
        return hashes

    # --- the requests

    def handle(self, request: FsRequest) -> FsReply:
        """Answer one request; failures become `FsError` with the errno."""
        kind = type(request).__name__
        with self._stats_lock:
            self.stats.requests[kind] += 1
        started = time.perf_counter()
        try:
            return self._answer(request, kind)
        finally:
            with self._stats_lock:
                self.stats.seconds[kind] += time.perf_counter() - started

    def _answer(self, request: FsRequest, kind: str) -> FsReply:
        try:
            match request:
                case Lookup():
                    path = check_path(request.path)
                    attr = self._lookup(path, request.content)
                    if request.head and request.content:
                        return self._with_head(path, attr, request.head)
                    return attr
                case ReadDir():
                    budget = (
                        min(request.budget or LISTING_CONTENT_MAX, LISTING_CONTENT_MOST)
                        if request.content
                        else 0
                    )
                    return self._readdir(check_path(request.path), request.known, budget, request.first)
                case ReadLink():
                    return self._readlink(check_path(request.path))
                case ReadChunks():
                    return self._read_chunks(check_path(request.path), request.indexes)
                case Prefetch():
                    return self._prefetch(
                        [check_path(p) for p in request.paths], request.max_entries, request.known
                    )
                case _:
                    return FsError(errno=errno.EINVAL, message=f"unknown request {kind}")
        except OSError as exc:
            reply = FsError.from_os(exc)
        except BadPath as exc:
            reply = FsError(errno=errno.EINVAL, message=str(exc))
        except Exception as exc:  # a bug must not take the client's file service down
            log.exception("file request %s failed", kind)
            reply = FsError(errno=errno.EIO, message=f"{type(exc).__name__}: {exc}")
        with self._stats_lock:
            self.stats.errors += 1
        return reply

    def _lookup(self, path: bytes, content: bool) -> Attr:
        hidden = self._check_hidden(path)
        real = self._real(path)
        st = os.lstat(real)
        return self._attr(st, real, content=content and not hidden)

    def _listing(
        self, path: bytes, real: bytes, dir_dev: int, budget: int = 0, first: bytes = b""
    ) -> list[DirEntry]:
        """The entries of a directory with their attributes (and the hashes this client knows);
        small files whose content the appliance is not believed to hold also with their hashes
        and content, up to `budget` bytes read (one round trip for a folder of them, not one per
        file): the file named `first`, then the smallest, optimised bytecode last (ReadDir)."""
        entries, small = [], []
        withheld = self._withheld(real)
        with os.scandir(real) as it:
            for item in it:
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing
                if withheld(item.name, st):
                    continue
                child = join(path, item.name)
                if stat.S_ISDIR(st.st_mode) and st.st_dev != dir_dev:
                    self._maybe_new_mount(child)
                attr = self._attr(st, item.path, content=False)
                entries.append(DirEntry(name=item.name, attr=attr))
                if budget and stat.S_ISREG(st.st_mode) and st.st_size <= INLINE_MAX and not self._sent(attr):
                    rank = 0 if item.name == first else 2 if _OPTIMISED_PYC.search(item.name) else 1
                    small.append((rank, st.st_size, item.path, len(entries) - 1))
        for _, size, real_child, i in sorted(small, key=lambda s: s[:2]):
            if size > budget:
                continue
            try:
                self._read_content(entries[i].attr, real_child)
            except OSError:
                continue  # unreadable or gone: its lookup will say
            budget -= size
        return entries

    def _comes_whole(self, attr: Attr) -> bool:
        """A file looked up with its content comes whole: up to a chunk, and not believed sent."""
        return attr.size <= LOOKUP_INLINE_MAX and not self._sent(attr)

    def _sent(self, attr: Attr) -> bool:
        """Whether the appliance is believed to hold the content of a file (its hashes known here)."""
        return attr.chunks is not None and all(h in self.delivered for h in attr.chunks)

    def _readdir(
        self, path: bytes, known: bytes | None = None, content: int = 0, first: bytes = b""
    ) -> DirListing:
        return self._readdir_against(path, known, content, first)[0]

    def _readdir_against(
        self, path: bytes, known: bytes | None, content: int = 0, first: bytes = b""
    ) -> tuple[DirListing, list[bytes]]:
        """`path`'s listing, or only `unchanged` when it still has digest `known` (rechecked by
        lstat alone); and the names of its subdirectories."""
        if known is not None:
            quick = self._quick_digest(path)
            if quick is not None and quick[0] == known:
                return DirListing(path=path, entries=[], digest=known, unchanged=True), quick[1]
        listing = self._readdir_full(path, content, first)
        listing.digest = listing_digest(listing.entries)
        subdirs = [e.name for e in listing.entries if stat.S_ISDIR(e.attr.mode)]
        if known == listing.digest:
            return DirListing(path=path, entries=[], digest=known, unchanged=True), subdirs
        return listing, subdirs

    def _quick_digest(self, path: bytes) -> tuple[bytes, list[bytes]] | None:
        """A directory's `listing_digest` and the names of its subdirectories, without the listing.

        For rechecking a listing the appliance kept: the same lstat of every entry,
        but no attributes built and no hash cache asked.  None for a hidden mount point.
        """
        if self._check_hidden(path):
            return None
        real = self._real(path)
        st = os.lstat(real)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        shape, subdirs = [], []
        withheld = self._withheld(real)
        with os.scandir(real) as it:
            for item in it:
                try:
                    e = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing, as in _listing
                if withheld(item.name, e):
                    continue
                target = None
                if stat.S_ISLNK(e.st_mode):
                    try:
                        target = os.readlink(item.path)
                    except OSError:
                        pass
                elif stat.S_ISDIR(e.st_mode):
                    subdirs.append(item.name)
                    if e.st_dev != st.st_dev:
                        self._maybe_new_mount(join(path, item.name))
                shape.append((item.name, e.st_mode, e.st_uid, e.st_gid, e.st_size, e.st_mtime_ns,
                              e.st_ctime_ns, e.st_nlink, e.st_ino, e.st_dev, e.st_rdev, target))  # fmt: skip
        return shape_digest(shape), subdirs

    def _readdir_full(self, path: bytes, content: int = 0, first: bytes = b"") -> DirListing:
        hidden = self._check_hidden(path)
        real = self._real(path)
        st = os.lstat(real)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        entries = [] if hidden else self._listing(path, real, st.st_dev, content, first)
        return DirListing(path=path, entries=entries)

    def _readlink(self, path: bytes) -> LinkTarget:
        self._check_hidden(path)
        return LinkTarget(target=os.readlink(self._real(path)))

    def _with_head(self, path: bytes, attr: Attr, head: int) -> Attr | Headed:
        """A looked-up file with its first `head` chunks (`Lookup.head`), read from what hashing
        it kept (`JustHashed`) or from the file; only the attributes for a file that came inline,
        one not hashed, or anything but a regular file."""
        if head > MAX_CHUNKS_PER_REQUEST:
            raise OSError(errno.E2BIG, f"at most {MAX_CHUNKS_PER_REQUEST} chunks per request")
        if not stat.S_ISREG(attr.mode) or not attr.chunks or attr.data is not None:
            return attr
        indexes = list(range(min(head, len(attr.chunks))))
        return Headed(attr=attr, data=self._read_chunks(path, indexes).data)

    def _read_chunks(self, path: bytes, indexes: list[int]) -> Chunks:
        if len(indexes) > MAX_CHUNKS_PER_REQUEST:
            raise OSError(errno.E2BIG, f"at most {MAX_CHUNKS_PER_REQUEST} chunks per request")
        if any(i < 0 for i in indexes):
            raise OSError(errno.EINVAL, "negative chunk index")
        if self._check_hidden(path):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        fd = os.open(self._real(path), _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            data, reread = [], 0
            for i in indexes:
                if (piece := self.just_hashed.take(st, i)) is None:
                    piece = os.pread(fd, CHUNK_SIZE, i * CHUNK_SIZE)
                    reread += len(piece)
                data.append(piece)
            known = self.hashes.get(st)
            if HashCache._key(os.fstat(fd)) != HashCache._key(st):
                known = None  # written to while we read: let the appliance's check decide
        finally:
            os.close(fd)
        with self._stats_lock:
            self.stats.content_bytes += sum(map(len, data))
            self.stats.reread_bytes += reread
        # Remember what the appliance now holds.  The hashes of the lookup are reused
        # when the file is the one they describe (hashing again would cost as much as
        # everything else the client does for a chunk); a chunk that does not match them
        # is refused by the appliance, and its hash here only costs a re-send later.
        if known is not None and all(i < len(known) for i in indexes):
            self.delivered.update(known[i] for i, d in zip(indexes, data, strict=True) if d)
        else:
            self.delivered.update(chunk_hash(d) for d in data if d)
        return Chunks(data=data)

    def _prefetch(
        self, paths: list[bytes], max_entries: int, known: dict[bytes, bytes] | None = None
    ) -> Tree:
        known = known or {}
        try:
            root = self._lookup(b"/", content=False)
        except OSError:
            root = None
        listings: list[DirListing] = []
        seen: set[bytes] = set()
        count = 0

        def add(path: bytes) -> list[bytes] | None:
            """List (or recheck) one directory; return the names of its subdirectories."""
            nonlocal count
            if path in seen:
                return None
            seen.add(path)
            try:
                listing, subdirs = self._readdir_against(path, known.get(path))
            except OSError:
                return None  # unreadable or gone: the appliance asks again on demand
            listings.append(listing)
            count += len(listing.entries)
            return subdirs

        for top in paths:
            for ancestor in reversed(list(ancestors(top))):
                add(ancestor)
            queue = deque([top])
            while queue:
                if count >= max_entries:
                    return Tree(listings=listings, truncated=True, root=root)
                path = queue.popleft()
                subdirs = add(path)
                for name in subdirs or ():
                    child = join(path, name)
                    if child not in self.hidden:  # the walk goes on through unchanged directories too
                        queue.append(child)
        # The other directories the appliance kept (those its last run used): each one
        # rechecked, not walked; parents first, so that the appliance can place them.
        for path in sorted(known):
            if count >= max_entries:
                return Tree(listings=listings, truncated=True, root=root)
            try:
                add(check_path(path))
            except BadPath:
                continue
        return Tree(listings=listings, truncated=False, root=root)

    def close(self) -> None:
        """Save the hash cache, if it has a file."""
        self.just_hashed.clear()
        self.hashes.save()
        if self._hashers is not None:
            self._hashers.shutdown(wait=False)
