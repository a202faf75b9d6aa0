"""The appliance's content-addressed store of file chunks.

A chunk is stored once under its BLAKE3 digest, whichever file or client it came
from, so content seen before never crosses the network again.  One file per
chunk, `<dir>/<2 hex>/<62 hex>`, written to `<dir>/tmp/` and renamed into place,
so a reader never sees half a chunk.  Least recently used chunks are removed
when the store would grow past its limit.  The order of use survives restarts:
each write and each access sets the chunk file's atime (an access at most once per
`TOUCH_INTERVAL` per chunk), and a new store rebuilds its index by scanning the
folder, oldest atime first.

Chunks put with `direct=True` (of DIRECT_MIN bytes or more) are written with O_DIRECT,
past the page cache: a cold read stores a dataset it streams at the link's pace, and
buffered writes would cost the CPU a copy into fresh page-cache memory each (0.25-2.5
CPU-s a GiB on the lab's VM, measured; O_DIRECT ~0.2, the disk doing the rest), and evict
what the processes use.  Reading such a chunk back costs the disk, not the page cache:
the caller asks for it only for content unlikely to be read again soon.  Where the file
system refuses O_DIRECT, chunks are written buffered.

Small content that comes by the thousand (the files that come with a listing, kept listings)
is put with `put_soon`: served from memory at once and written by one writer thread, so that
creating a file per chunk (tens of µs each, and on a file system without a journal up to a
millisecond after many files were deleted: ext4 then skips recently freed inodes one by one)
is never on the path of a process waiting for its files.  `flush` waits for those writes.

Without `durable=True` nothing is fsync'ed: after a crash a chunk may be left
empty, and the scan drops empty files (no chunk is empty).  Data is checked
against its digest when it is put, not when it is read back.

Scanning costs ~16 µs a chunk (half a second for 30,000), too much for every run:
radiumd scans once when it starts and saves the index (`index.bin`, `save_index`);
each run's supervisor opens the store from that snapshot (`scan=False`) and saves
its own view when it ends.  Several supervisors share the folder, so a snapshot is
a hint: a chunk another one stored since is adopted when first asked for (one stat),
a chunk another one evicted is forgotten when its file is found gone.  The size
limit is therefore kept per supervisor, over what it knows of: runs going on at
once may together pass it by what they fetch; radiumd's next scan (when it is
idle, or restarts) brings the folder back under it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import msgspec

from radium.remoting import _threads
from radium.remoting._errors import ProtocolError, RadiumError
from radium.remoting._keys import write_atomic
from radium.remoting.run.fsproto import chunk_hash

log = logging.getLogger(__name__)

TOUCH_INTERVAL = 10.0  # seconds: LRU order on disk need not be finer than this
INDEX = "index.bin"  # the saved index: [(hex digest, size)], least recently used first
_index_decoder = msgspec.msgpack.Decoder(list[tuple[str, int]])
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DIRECT_MIN = 256 << 10  # chunks at least this big may be written past the page cache (O_DIRECT)
_ALIGN = 4096  # O_DIRECT's alignment of memory, offsets and lengths (the largest block size in use)


class _Aligned(threading.local):
    """A page-aligned buffer per thread, for O_DIRECT writes."""

    buffer: mmap.mmap | None = None

    def get(self, size: int) -> mmap.mmap:
        if self.buffer is None or len(self.buffer) < size:
            if self.buffer is not None:
                self.buffer.close()
            self.buffer = mmap.mmap(-1, size)
        return self.buffer


_aligned = _Aligned()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_all(src: int, dst: int) -> int:
    """All of `src` from its start, appended to `dst`: by the kernel where it can, else read and written."""
    copied = 0
    try:
        while n := os.copy_file_range(src, dst, 1 << 24):
            copied += n
        return copied
    except OSError as exc:  # a file system or kernel without it (EXDEV, EOPNOTSUPP, ENOSYS, EINVAL)
        if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL) or copied:
            raise
    while data := os.read(src, 1 << 20):
        _write_all(dst, data)
        copied += len(data)
    return copied


class StoreFull(RadiumError):
    """The store's disk is full: the chunk was not stored (nothing partial was left)."""

    code = "store-full"


class HashMismatch(ProtocolError):
    """Data offered to the store does not have the hash it was offered under."""

    code = "hash-mismatch"


@dataclass
class StoreStats:
    """Counters of a ContentStore since it was opened, and its current size."""

    hits: int = 0
    misses: int = 0
    bytes_in: int = 0  # bytes of new chunks stored
    bytes_out: int = 0  # bytes read from stored chunks
    evictions: int = 0
    entries: int = 0
    bytes_used: int = 0


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that names a temporary file `<key>.<pid>.<thread>` still runs."""
    parts = tmp_name.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    return os.path.exists(f"/proc/{parts[1]}")


def _page_aligned(data: bytes | memoryview) -> bool:
    """Whether `data` starts at a page boundary (a writable buffer: a chunk the direct channel
    opened into one of its own; bytes are read-only, and copied)."""
    try:
        return len(data) > 0 and ctypes.addressof(ctypes.c_char.from_buffer(data)) % _ALIGN == 0
    except TypeError:
        return False


def _write_direct(fd: int, data: bytes | memoryview) -> None:
    """Write `data` to a new file opened with O_DIRECT: from an aligned buffer, in whole blocks,
    the file then cut to its size. Data already aligned, whole blocks of it, is written from
    where it lies."""
    size = len(data)
    if size % _ALIGN == 0 and _page_aligned(data):
        _write_all(fd, data)
        return
    padded = -(-size // _ALIGN) * _ALIGN
    buffer = _aligned.get(padded)
    buffer[:size] = data
    buffer[size:padded] = bytes(padded - size)
    with memoryview(buffer) as whole:
        view = whole[:padded]
        try:
            while view:
                view = view[os.write(fd, view) :]
        finally:
            view.release()  # before the buffer may be replaced (a bigger chunk) or reused
    if padded != size:
        os.ftruncate(fd, size)


def _hex(digest: bytes | str) -> str:
    key = digest.hex() if isinstance(digest, bytes) else digest.lower()
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"not a BLAKE3 digest: {digest!r}")
    return key


class ContentStore:
    """Chunks by BLAKE3 digest in folder `path`, at most `limit_bytes` of them; thread-safe.

    Digests may be given as 32 raw bytes or 64 hex characters.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        limit_bytes: int,
        *,
        durable: bool = False,
        scan: bool = True,
        opened: bool = True,
    ) -> None:
        """`scan=False`: start from the saved index when there is one (see the module's notes).
        `opened=False`: not usable until `open()` (a run opens it beside its first request)."""
        self.path = Path(path)
        self.limit_bytes = limit_bytes
        self.durable = durable
        self._direct = hasattr(os, "O_DIRECT")  # until the file system refuses it
        self._lock = threading.Lock()
        # hex digest -> [size, monotonic time of the last atime update]; oldest use first.
        self._index: OrderedDict[str, list] = OrderedDict()
        self._used = 0
        self._last_stamp = 0
        self._stats = StoreStats()
        # put_soon: hex digest -> data not yet written (served from here), in the order to write
        self._pending: dict[str, bytes] = {}
        self._written = threading.Condition(self._lock)  # the writer took one off _pending
        self._writer: threading.Thread | None = None
        self._tmp = self.path / "tmp"
        self._scan = scan
        if opened:
            self.open()

    def open(self) -> None:
        """Make its folders and read its index: 3-5 ms for a few thousand chunks on the lab VM,
        more for a bigger store."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        for i in range(256):  # made up front, so that a put never has to create a folder
            (self.path / f"{i:02x}").mkdir(exist_ok=True)
        if self._scan or not self._load_index():
            self._rebuild()

    def _load_index(self) -> bool:
        try:
            rows = _index_decoder.decode((self.path / INDEX).read_bytes())
        except (OSError, msgspec.DecodeError):
            return False  # none yet, or damaged: scan
        for key, size in rows:
            if key not in self._index and size > 0:
                self._index[key] = [size, 0.0]
                self._used += size
        self._unlink(self._evict(0))
        return True

    def save_index(self) -> None:
        """Save this store's index (least recently used first), for the next one to start from."""
        with self._lock:
            rows = [(key, entry[0]) for key, entry in self._index.items()]
        write_atomic(self.path / INDEX, msgspec.msgpack.encode(rows), 0o600)

    def _adopt(self, key: str) -> list | None:
        """The index entry of a chunk another process stored since our index was made (its file is there)."""
        try:
            st = os.stat(self._file(key))
        except OSError:
            return None
        if st.st_size == 0:
            return None  # being written by another process, or cut short by a crash
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                entry = self._index[key] = [st.st_size, 0.0]
                self._used += st.st_size
                self._index.move_to_end(key, last=False)  # no use known here: first to go
        return entry

    def _stamp(self) -> int:
        """A strictly increasing time for atimes (lock held): file times are coarse, the LRU order is not."""
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / key[2:]

    def _rebuild(self) -> None:
        """Index what is on disk, oldest access first; drop leftovers of interrupted writes."""
        for leftover in self._tmp.iterdir():
            if not _writer_alive(leftover.name):  # never another process's write in progress
                leftover.unlink(missing_ok=True)
        found = []
        for sub in self.path.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            with os.scandir(sub) as it:
                for item in it:
                    try:
                        st = item.stat(follow_symlinks=False)
                        key = _hex(sub.name + item.name)
                    except (OSError, ValueError):
                        continue
                    if st.st_size == 0:  # no chunk is empty: a write cut short by a crash
                        os.unlink(item.path)
                        continue
                    found.append((st.st_atime_ns, key, st.st_size))
        found.sort()
        for _, key, size in found:
            self._index[key] = [size, 0.0]
            self._used += size
        self._unlink(self._evict(0))  # the limit may have been lowered since

    # --- reading

    def has(self, digest: bytes | str) -> bool:
        """Whether the chunk is stored or being written (counts neither hit nor miss)."""
        key = _hex(digest)
        return key in self._index or key in self._pending or self._adopt(key) is not None

    def get(self, digest: bytes | str) -> bytes | None:
        """The whole chunk, or None when it is not stored."""
        return self.read(digest, 0, -1)

    def read(self, digest: bytes | str, offset: int, size: int) -> bytes | None:
        """`size` bytes of the chunk from `offset` (the rest when size < 0); None when not stored."""
        key = _hex(digest)
        found = self._open(key)
        if found is None:
            return None
        if isinstance(found, bytes):
            data = found[offset:] if size < 0 else found[offset : offset + size]
        else:
            with open(found, "rb", buffering=0) as f:  # closes the descriptor
                if offset:
                    f.seek(offset)
                data = f.read() if size < 0 else f.read(size)
        self._served(len(data))
        return data

    def copy_into(self, digest: bytes | str, fd: int) -> int | None:
        """Append the whole chunk to the file open at `fd`; its size, or None when not stored.

        File to file in the kernel (`copy_file_range`): no pass through this process's memory.
        Laying out a run's libraries in the warm tree read each chunk into a new buffer and
        wrote it out: ~360 MB/s on the lab VM, where a buffer's pages cost a fault each when
        first touched; the kernel's copy ~3 GB/s."""
        key = _hex(digest)
        found = self._open(key)
        if found is None:
            return None
        if isinstance(found, bytes):
            _write_all(fd, found)
            copied = len(found)
        else:
            try:
                copied = _copy_all(found, fd)
            finally:
                os.close(found)
        self._served(copied)
        return copied

    def _served(self, size: int) -> None:
        with self._lock:
            self._stats.hits += 1
            self._stats.bytes_out += size

    def _open(self, key: str) -> bytes | int | None:
        """A chunk to read: its bytes while it is being written, else its file opened (a
        descriptor, LRU order kept); None when it is not stored (a miss counted)."""
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        if key not in self._index:
            self._adopt(key)
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                self._stats.misses += 1
                return None
            self._index.move_to_end(key)
            now = time.monotonic()
            touch = now - entry[1] >= TOUCH_INTERVAL
            if touch:
                entry[1] = now
                stamp = self._stamp()
        try:
            fd = os.open(self._file(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # evicted meanwhile, or removed behind our back
            with self._lock:
                self._forget(key)
                self._stats.misses += 1
            return None
        if touch:
            os.utime(fd, ns=(stamp, stamp))  # the on-disk LRU order, for the next rebuild
        return fd

    def will_need(self, digest: bytes | str) -> None:
        """Have the kernel read a stored chunk into the page cache in the background (a reader
        will ask for it next: a chunk written past the page cache is otherwise read from the
        disk when asked, one at a time)."""
        try:
            fd = os.open(self._file(_hex(digest)), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint
        finally:
            os.close(fd)

    # --- writing

    def put(self, digest: bytes | str, data: bytes, *, verified: bool = False, direct: bool = False) -> bool:
        """Store `data` under `digest` after checking that it is its BLAKE3 digest
        (`verified`: the caller just did); past the page cache with `direct` (see the module).

        Returns True when stored, False when it was already there.  Raises
        `HashMismatch` when the data does not match, `StoreFull` when the chunk
        does not fit (larger than the limit, or the disk is full).
        """
        key = _hex(digest)
        if not verified and chunk_hash(data).hex() != key:
            raise HashMismatch(f"data of {len(data)} bytes does not hash to {key}")
        if key in self._pending:
            return False  # being written (put_soon)
        return self._store(key, data, direct)

    def _store(self, key: str, data: bytes, direct: bool = False) -> bool:
        """Write a chunk and index it (put's, and the writer thread's); False when it was there."""
        if key not in self._index:
            self._adopt(key)  # stored by another process meanwhile: nothing to write
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)  # a use, for the LRU order
                return False
            if len(data) > self.limit_bytes:
                raise StoreFull(f"a chunk of {len(data)} bytes exceeds the limit of {self.limit_bytes}")
            victims = self._evict(len(data))
            self._used += len(data)  # reserved while it is written, so that concurrent puts respect the limit
        self._unlink(victims)
        try:
            self._write(key, data, direct)
        except BaseException:
            with self._lock:
                self._used -= len(data)
            raise
        with self._lock:
            if key in self._index:  # another thread stored the same chunk meanwhile
                self._used -= len(data)
            else:
                self._index[key] = [len(data), 0.0]  # its next read sets the atime again
                self._stats.bytes_in += len(data)
        return True

    def put_soon(self, digest: bytes | str, data: bytes) -> None:
        """Store `data`, known to hash to `digest`, in the background: readable at once, written
        by the store's writer thread (see the module).  A chunk the store cannot take (full) is
        dropped: a later read finds it missing, as if evicted."""
        key = _hex(digest)
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)  # a use, for the LRU order
                return
            if key in self._pending:
                return
            self._pending[key] = data
            if self._writer is None or not self._writer.is_alive():
                self._writer = _threads.Thread(
                    target=self._write_pending, name="radium-store-writer", daemon=True
                )
                self._writer.start()
            self._written.notify_all()

    def flush(self) -> None:
        """Return once what `put_soon` was given is written (or dropped)."""
        with self._lock:
            while self._pending:
                self._written.wait()

    def _write_pending(self) -> None:
        """The writer thread: writes what put_soon was given, oldest first, then waits for more."""
        while True:
            with self._lock:
                while not self._pending:
                    self._written.wait()
                key = next(iter(self._pending))
                data = self._pending[key]
            try:
                self._store(key, data)  # indexed before it leaves _pending: always readable
            except (OSError, StoreFull) as exc:  # no room: dropped, as if evicted
                log.debug("a chunk was not stored: %s", exc)
            except Exception:  # a bug: this chunk is lost (fetched again when asked), not the rest
                log.exception("could not store a chunk")
            finally:
                with self._lock:
                    del self._pending[key]
                    self._written.notify_all()

    def _write(self, key: str, data: bytes, direct: bool = False) -> None:
        tmp = self._tmp / f"{key}.{os.getpid()}.{threading.get_ident()}"
        try:
            fd, direct = self._create(tmp, direct=direct and self._direct and len(data) >= DIRECT_MIN)
            try:
                if direct:
                    _write_direct(fd, data)
                else:
                    _write_all(fd, data)
                with self._lock:
                    stamp = self._stamp()
                os.utime(fd, ns=(stamp, stamp))
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._file(key))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _FULL_ERRNOS:
                raise StoreFull(
                    f"content store {self.path} is full ({os.strerror(exc.errno)}); "
                    f"it holds {self._used} bytes in {len(self._index)} chunks"
                ) from None
            raise

    def _create(self, tmp: Path, direct: bool) -> tuple[int, bool]:
        """A new file to write a chunk into; with O_DIRECT when asked and the file system allows."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if direct:
            try:
                return os.open(tmp, flags | os.O_DIRECT, 0o644), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False  # not here: buffered from now on
                tmp.unlink(missing_ok=True)
        return os.open(tmp, flags, 0o644), False

    # --- eviction

    def _forget(self, key: str) -> None:
        entry = self._index.pop(key, None)
        if entry is not None:
            self._used -= entry[0]

    def _evict(self, incoming: int) -> list[str]:
        """Drop least recently used chunks from the index until `incoming` more bytes fit (lock held)."""
        victims = []
        while self._index and self._used + incoming > self.limit_bytes:
            key, (size, _) = self._index.popitem(last=False)
            self._used -= size
            self._stats.evictions += 1
            victims.append(key)
        return victims

    def _unlink(self, victims: list[str]) -> None:
        for key in victims:
            try:
                os.unlink(self._file(key))
            except FileNotFoundError:
                pass

    def trim(self, target_bytes: int) -> int:
        """Evict least recently used chunks until at most `target_bytes` are held; return bytes freed."""
        with self._lock:
            before = self._used
            victims = self._evict(max(0, self.limit_bytes - target_bytes))
            freed = before - self._used
        self._unlink(victims)
        return freed

    def stats(self) -> StoreStats:
        """A snapshot of the counters."""
        with self._lock:
            s = StoreStats(**vars(self._stats))
            s.entries, s.bytes_used = len(self._index), self._used
        return s
