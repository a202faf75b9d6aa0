"""The appliance's content store (`remoting/run/cas.py`): chunks verified, stored, evicted,
written past the page cache, and never left half-written on a full disk."""

from __future__ import annotations

import errno
import os
import subprocess
import threading

import pytest
from support import wait_until
from test_runfs import mount_tmpfs, needs_root, umount

from radium.remoting.run.cas import ContentStore, HashMismatch, StoreFull
from radium.remoting.run.fsproto import (
    CHUNK_SIZE,
    chunk_hash,
)


def test_store_verifies_and_serves_chunks(tmp_path):
    store = ContentStore(tmp_path / "store", 10 * CHUNK_SIZE)
    data = os.urandom(5000)
    digest = chunk_hash(data)
    with pytest.raises(HashMismatch):
        store.put(digest, data + b"!")
    assert not store.has(digest) and store.get(digest) is None
    assert store.put(digest, data) is True
    assert store.put(digest.hex(), data) is False  # already there
    assert store.get(digest) == data and store.read(digest, 100, 10) == data[100:110]
    s = store.stats()
    assert (s.hits, s.misses, s.bytes_in, s.entries, s.bytes_used) == (2, 1, 5000, 1, 5000)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_big_chunks_can_be_stored_past_the_page_cache_and_read_back_whole(tmp_path):
    from radium.remoting.run.cas import DIRECT_MIN

    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        pytest.skip(f"the file system under {tmp_path} refuses O_DIRECT: the store writes buffered there")
    store = ContentStore(tmp_path / "store", 10 * CHUNK_SIZE)
    blobs = [os.urandom(n) for n in (CHUNK_SIZE, DIRECT_MIN, DIRECT_MIN + 4097, CHUNK_SIZE - 1, 5000)]
    for data in blobs:
        assert store.put(chunk_hash(data), data, direct=True) is True
    through = os.urandom(CHUNK_SIZE)  # not asked for: through the page cache
    assert store.put(chunk_hash(through), through) is True

    def cached(data: bytes) -> int:
        """Bytes of the stored chunk's file in the page cache (util-linux fincore)."""
        path = tmp_path / "store" / chunk_hash(data).hex()[:2] / chunk_hash(data).hex()[2:]
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return int(out.stdout)

    assert [cached(data) for data in blobs[:-1]] == [0, 0, 0, 0]  # O_DIRECT, sizes in whole blocks or not
    assert cached(blobs[-1]) > 0 and cached(through) == CHUNK_SIZE  # small, or not asked for
    # A reader coming for such a chunk next: the kernel reads it in ahead (in the background).
    store.will_need(chunk_hash(blobs[0]))
    wait_until(lambda: cached(blobs[0]) == CHUNK_SIZE, 10, "the chunk read into the page cache", poll=0.01)
    for data in blobs:  # byte for byte, cut to its size
        assert store.get(chunk_hash(data)) == data
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_a_chunk_the_direct_channel_opened_is_stored_past_the_page_cache_from_where_it_lies(
    tmp_path, monkeypatch
):
    """The direct channel opens a chunk into a page-aligned buffer of its own: the store writes
    it with O_DIRECT from there, not from a copy in its own aligned buffer."""
    from radium.remoting.run import cas, direct

    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        pytest.skip(f"the file system under {tmp_path} refuses O_DIRECT: the store writes buffered there")
    store = ContentStore(tmp_path / "store", 10 * CHUNK_SIZE)
    data = os.urandom(CHUNK_SIZE)
    opened = direct.uninitialised(CHUNK_SIZE)
    opened[:] = data

    def no_copy(size: int) -> None:
        raise AssertionError("copied into the store's aligned buffer")

    monkeypatch.setattr(cas._aligned, "get", no_copy)
    assert store.put(chunk_hash(data), opened, verified=True, direct=True) is True
    assert store.get(chunk_hash(data)) == data
    other = os.urandom(CHUNK_SIZE)  # bytes: read-only, wherever they lie, so copied
    with pytest.raises(AssertionError, match="copied"):
        store.put(chunk_hash(other), other, direct=True)


def test_store_evicts_least_recently_used_also_after_a_restart(tmp_path, monkeypatch):
    from radium.remoting.run import cas

    monkeypatch.setattr(cas, "TOUCH_INTERVAL", 0.0)  # record every access on disk
    blobs = {name: os.urandom(1000) + name.encode() for name in "abcdef"}
    digests = {name: chunk_hash(blob) for name, blob in blobs.items()}
    store = ContentStore(tmp_path, 3000 + 3 * 1)
    for name in "abc":
        store.put(digests[name], blobs[name])
    assert store.get(digests["a"]) == blobs["a"]  # a is now the most recent
    store.put(digests["d"], blobs["d"])  # evicts b, the least recently used
    assert [store.has(digests[n]) for n in "abcd"] == [True, False, True, True]
    assert store.stats().evictions == 1

    reopened = ContentStore(tmp_path, 3000 + 3 * 1)  # order rebuilt from the files' atimes: c, a, d
    assert reopened.stats().entries == 3
    reopened.put(digests["e"], blobs["e"])
    assert [reopened.has(digests[n]) for n in "acde"] == [True, False, True, True]
    assert reopened.trim(1001) == 2002 and [reopened.has(digests[n]) for n in "ade"] == [False, False, True]
    assert ContentStore(tmp_path, 500).stats().entries == 0  # a lower limit applies at once
    assert [f for sub in tmp_path.iterdir() for f in sub.iterdir()] == []


def test_a_store_opened_from_its_saved_index_sees_what_others_did_since(tmp_path):
    blobs = {name: os.urandom(1000) + name.encode() for name in "abcd"}
    digests = {name: chunk_hash(blob) for name, blob in blobs.items()}
    first = ContentStore(tmp_path, 10_000)  # radiumd: scans, then saves the index
    for name in "ab":
        first.put(digests[name], blobs[name])
    first.save_index()

    # Two runs' supervisors start from the snapshot, without scanning, and share the folder.
    one, two = ContentStore(tmp_path, 10_000, scan=False), ContentStore(tmp_path, 10_000, scan=False)
    assert one.stats().entries == 2 and one.get(digests["a"]) == blobs["a"]
    one.put(digests["c"], blobs["c"])  # stored by one after two opened: two adopts it on use
    assert two.has(digests["c"]) and two.get(digests["c"]) == blobs["c"]
    assert two.put(digests["c"], blobs["c"]) is False  # already there: not written again
    one.trim(0)  # one evicts everything: two finds the files gone when it reads, and forgets them
    assert two.get(digests["a"]) is None and two.get(digests["b"]) is None
    assert not two.has(digests["a"]) and not two.has(digests["b"])
    two.put(digests["d"], blobs["d"])
    two.save_index()
    hinted = ContentStore(tmp_path, 10_000, scan=False)  # two's view: d, and c which one evicted
    assert hinted.stats().entries == 2
    assert hinted.get(digests["c"]) is None and hinted.get(digests["d"]) == blobs["d"]
    assert hinted.stats().entries == 1  # the stale hint is gone once read
    assert ContentStore(tmp_path, 10_000).stats().entries == 1  # a scan agrees

    # A write in progress by another live process is never swept away as a leftover of a crash.
    busy = tmp_path / "tmp" / f"{'0' * 64}.{os.getppid()}.1"
    dead = tmp_path / "tmp" / f"{'1' * 64}.999999999.1"
    busy.write_bytes(b"half")
    dead.write_bytes(b"half")
    ContentStore(tmp_path, 10_000)
    assert busy.exists() and not dead.exists()
    # A damaged snapshot: scan instead.
    (tmp_path / "index.bin").write_bytes(b"\xc1 not msgpack")
    assert ContentStore(tmp_path, 10_000, scan=False).stats().entries == 1


def test_chunks_put_soon_are_read_at_once_and_written_by_the_stores_writer(tmp_path):
    store = ContentStore(tmp_path, 10_000)
    writers = []  # the threads that wrote chunk files
    write = store._write
    store._write = lambda *a: writers.append(threading.get_ident()) or write(*a)
    blobs = [os.urandom(n) for n in (100, 2000, 3000)]
    for blob in blobs:
        store.put_soon(chunk_hash(blob), blob)
    for blob in blobs:  # written or not yet, they are there
        assert store.has(chunk_hash(blob)) and store.get(chunk_hash(blob)) == blob
        assert store.read(chunk_hash(blob), 10, 20) == blob[10:30]
    store.put_soon(chunk_hash(blobs[0]), blobs[0])  # again: nothing more to write
    assert store.put(chunk_hash(blobs[1]), blobs[1]) is False  # there already (being written)
    store.flush()
    assert len(writers) == 3 and threading.get_ident() not in writers  # never the caller's thread
    assert store.stats().entries == 3 and store.stats().bytes_used == 5100
    on_disk = sorted(
        sub.name + p.name for sub in tmp_path.iterdir() if len(sub.name) == 2 for p in sub.iterdir()
    )
    assert on_disk == sorted(chunk_hash(b).hex() for b in blobs) and list((tmp_path / "tmp").iterdir()) == []
    reopened = ContentStore(tmp_path, 10_000)  # a scan finds them
    assert all(reopened.get(chunk_hash(b)) == b for b in blobs)

    # What does not fit is dropped without an error (as if evicted: a later read fetches it);
    # what does makes room as put does, least recently used first.
    for blob in blobs:  # used in this order: the first is the least recently used
        store.get(chunk_hash(blob))
    too_big, newer = os.urandom(10_001), os.urandom(6000)
    store.put_soon(chunk_hash(too_big), too_big)
    store.put_soon(chunk_hash(newer), newer)
    store.flush()
    assert not store.has(chunk_hash(too_big)) and store.get(chunk_hash(newer)) == newer
    assert [store.has(chunk_hash(b)) for b in blobs] == [False, False, True]
    assert store.stats().bytes_used == 9000


def test_a_chunk_is_copied_into_a_file_by_the_kernel_or_else_read_and_written(tmp_path, monkeypatch):
    """`copy_into` (how the warm tree lays files out) appends a stored chunk to a file with
    `copy_file_range`, one still being written from memory, and reads and writes where the
    kernel cannot copy (another file system, an old kernel)."""
    store = ContentStore(tmp_path / "store", 10 * CHUNK_SIZE)
    stored, pending = os.urandom(CHUNK_SIZE), os.urandom(3000)
    assert store.put(chunk_hash(stored), stored)
    release = threading.Event()
    write = store._write
    store._write = lambda *a: release.wait(10) and write(*a)  # held back: still in memory
    store.put_soon(chunk_hash(pending), pending)
    copies: list[int] = []
    kernels_copy = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: copies.append(a[2]) or kernels_copy(*a))
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert store.copy_into(chunk_hash(stored), fd) == CHUNK_SIZE
        assert store.copy_into(chunk_hash(pending), fd) == len(pending)
        assert store.copy_into(chunk_hash(b"never stored"), fd) is None
        assert copies  # the stored chunk went file to file
        release.set()
        store.flush()

        def cannot(*a):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", cannot)
        assert store.copy_into(chunk_hash(pending), fd) == len(pending)  # now a file: read and written
    finally:
        os.close(fd)
    assert out.read_bytes() == stored + pending + pending
    s = store.stats()
    assert (s.hits, s.misses, s.bytes_out) == (3, 1, CHUNK_SIZE + 2 * len(pending))


def test_store_is_thread_safe(tmp_path):
    store = ContentStore(tmp_path, 40 * 1024)
    blobs = [os.urandom(1024) for _ in range(100)]
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(k, k + 60):
                blob = blobs[i % 100]
                store.put(chunk_hash(blob), blob)
                got = store.get(chunk_hash(blobs[(i * 7) % 100]))
                assert got is None or got == blobs[(i * 7) % 100]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 10,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = store.stats()
    on_disk = sum(1 for sub in tmp_path.iterdir() if sub.name != "tmp" for _ in sub.iterdir())
    assert s.bytes_used <= 40 * 1024 and s.entries == on_disk


@needs_root
def test_store_full_disk_raises_store_full_and_leaves_nothing_partial(tmp_path):
    disk = mount_tmpfs(tmp_path / "small", "2m")
    try:
        store = ContentStore(disk, 100 * CHUNK_SIZE)  # the limit is not what stops it: the disk is
        stored = []
        with pytest.raises(StoreFull, match="full"):
            for _ in range(5):
                blob = os.urandom(CHUNK_SIZE)
                store.put(chunk_hash(blob), blob)
                stored.append(blob)
        assert stored and not store.has(chunk_hash(blob))
        assert list((disk / "tmp").iterdir()) == []  # no partial file
        assert all(store.get(chunk_hash(b)) == b for b in stored)  # still usable
        store.trim(0)
        assert store.put(chunk_hash(blob), blob) and store.get(chunk_hash(blob)) == blob
    finally:
        umount(disk)
