"""The file plane of `radium run`: protocol, client FileServer, and the FUSE ClientTree end to
end (the ContentStore: test_cas.py; the ClientTree called directly: test_runfs_tree.py).

The end-to-end tests run a FileServer over a real tree (on tmpfs mounts) and the
ClientTree that asks it, in one serving subprocess ("python test_runfs.py serve
CONFIG"): requests and replies go through msgpack as on the wire, the mount is
read with ordinary os calls from the test process.  The subprocess prints one
JSON line when mounted and answers "stats" lines with its counters.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from radium.remoting.run.cas import ContentStore
from radium.remoting.run.files import FileServer
from radium.remoting.run.fsproto import (
    CHUNK_SIZE,
    INLINE_MAX,
    LOOKUP_INLINE_MAX,
    MAX_CHUNKS_PER_REQUEST,
    Attr,
    BadPath,
    Chunks,
    DirEntry,
    DirListing,
    FsError,
    Headed,
    LinkTarget,
    Lookup,
    Prefetch,
    ReadChunks,
    ReadDir,
    ReadLink,
    Tree,
    check_path,
    chunk_hash,
    decode_reply,
    decode_reply_frames,
    decode_request,
    encode,
    reply_frames,
)
from radium.remoting.run.listings import KeptListings

IS_ROOT = os.geteuid() == 0


def _fuse_unavailable() -> str | None:
    if not IS_ROOT:
        return "needs root (mounts tmpfs and FUSE)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed"
    return None


needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mounts tmpfs)")
needs_fuse = pytest.mark.skipif(_fuse_unavailable() is not None, reason=str(_fuse_unavailable()))


def mount_tmpfs(path: Path, size: str = "64m") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(path)], check=True)
    return path


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# --- the protocol ----------------------------------------------------------------------------


def test_check_path_accepts_normal_absolute_paths():
    assert check_path(b"/") == b"/"
    assert check_path("/usr/lib/python3") == b"/usr/lib/python3"
    assert check_path(b"/caf\xe9/x") == b"/caf\xe9/x"  # not UTF-8, still a path
    assert check_path("/a/.hidden/..x") == b"/a/.hidden/..x"


@pytest.mark.parametrize(
    "bad",
    [b"", b"relative", b"a/b", b"/a/../b", b"/..", b"/a/..", b"/a/./b", b"/a//b", b"/a/", b"/a\0b",
     b"/" + b"x" * 256, b"/" + b"a/" * 2100, "../etc"],
)  # fmt: skip
def test_check_path_refuses_relative_dotdot_nul_and_unnormalised(bad):
    with pytest.raises(BadPath):
        check_path(bad)


def test_messages_round_trip_and_refuse_unknown_fields():
    attr = Attr(mode=0o100644, uid=1000, gid=1000, size=3, atime_ns=1, mtime_ns=2, ctime_ns=3, nlink=1,
                ino=9, dev=8, chunks=[chunk_hash(b"abc")], data=b"abc")  # fmt: skip
    replies = [
        attr,
        DirListing(path=b"/d", entries=[DirEntry(name=b"\xff", attr=attr)]),
        LinkTarget(target=b"../x"),
        Chunks(data=[b"a", b""]),
        Tree(listings=[DirListing(path=b"/", entries=[])], truncated=True),
        FsError(errno=errno.ENOENT, message="No such file or directory"),
    ]
    for reply in replies:
        back = decode_reply(encode(reply))
        if isinstance(reply, Chunks):  # decoded as views into the received buffer, not copies
            assert isinstance(back, Chunks) and all(isinstance(d, memoryview) for d in back.data)
            back = Chunks(data=[bytes(d) for d in back.data])
        assert back == reply
    requests = [Lookup(path=b"/a"), ReadDir(path=b"/"), ReadLink(path=b"/l"),
                ReadChunks(path=b"/f", indexes=[0, 1]), Prefetch(paths=[b"/x"], max_entries=10)]  # fmt: skip
    for request in requests:
        assert decode_request(encode(request)) == request
    import msgspec

    from radium.remoting._errors import ProtocolError

    with pytest.raises(ProtocolError):
        decode_request(msgspec.msgpack.encode({"kind": "fs-lookup", "path": b"/", "extra": 1}))
    with pytest.raises(ProtocolError):
        decode_request(encode(LinkTarget(target=b"/")))  # a reply is no request
    with pytest.raises(ProtocolError):
        decode_request(msgspec.msgpack.encode({"kind": "fs-lookup", "path": b"/", "head": -1}))
    # Chunks asked for `framed` travel as frames of their own after the reply.
    framed = reply_frames(ReadChunks(path=b"/f", indexes=[0, 1], framed=True), Chunks(data=[b"a", b"bc"]))
    assert framed[1:] == [b"a", b"bc"] and len(framed[0]) < 20
    back = decode_reply_frames(framed)
    assert [bytes(d) for d in back.data] == [b"a", b"bc"]
    assert all(isinstance(d, memoryview) for d in back.data)
    assert len(reply_frames(ReadChunks(path=b"/f", indexes=[0]), Chunks(data=[b"a"]))) == 1  # not asked
    with pytest.raises(ProtocolError):
        decode_reply_frames(framed[:2])  # a chunk missing
    # A lookup's first chunks (`Lookup.head`) too.
    attr = Attr(
        mode=0o100644, uid=0, gid=0, size=3, atime_ns=0, mtime_ns=0, ctime_ns=0, nlink=1, ino=1, dev=9
    )
    framed = reply_frames(Lookup(path=b"/f", head=2), Headed(attr=attr, data=[b"a", b"bc"]))
    assert framed[1:] == [b"a", b"bc"]
    back = decode_reply_frames(framed)
    assert isinstance(back, Headed) and back.attr == attr and [bytes(d) for d in back.data] == [b"a", b"bc"]
    with pytest.raises(ProtocolError):
        decode_reply_frames(framed[:2])


# --- the client's FileServer ---------------------------------------------------------------------


def make_plain_tree(top: Path) -> None:
    (top / "sub").mkdir()
    (top / "small.txt").write_bytes(b"small\n")
    (top / "big.bin").write_bytes(os.urandom(CHUNK_SIZE + 1234))
    (top / "sub" / "inner.txt").write_bytes(b"inner\n")
    os.symlink("small.txt", top / "link")
    os.symlink("/etc", top / "escape")


def test_file_server_answers_from_the_tree(tmp_path):
    make_plain_tree(tmp_path)
    server = FileServer(tmp_path)  # presented as "/"
    big = (tmp_path / "big.bin").read_bytes()

    attr = server.handle(Lookup(path=b"/small.txt"))
    assert isinstance(attr, Attr) and attr.data == b"small\n" and attr.chunks == [chunk_hash(b"small\n")]
    attr = server.handle(Lookup(path=b"/big.bin"))
    assert attr.size == len(big) and attr.data is None
    assert attr.chunks == [chunk_hash(big[:CHUNK_SIZE]), chunk_hash(big[CHUNK_SIZE:])]
    assert server.handle(Lookup(path=b"/big.bin", content=False)).chunks == attr.chunks  # known by now

    link = server.handle(Lookup(path=b"/link"))  # lstat: the link itself
    assert stat.S_ISLNK(link.mode) and link.target == b"small.txt" and link.chunks is None
    assert server.handle(ReadLink(path=b"/link")) == LinkTarget(target=b"small.txt")

    listing = server.handle(ReadDir(path=b"/"))
    names = {e.name: e.attr for e in listing.entries}
    assert set(names) == {b"sub", b"small.txt", b"big.bin", b"link", b"escape"}
    assert names[b"link"].target == b"small.txt"
    assert names[b"big.bin"].chunks == attr.chunks and names[b"big.bin"].data is None

    chunks = server.handle(ReadChunks(path=b"/big.bin", indexes=[1, 0]))
    assert chunks.data == [big[CHUNK_SIZE:], big[:CHUNK_SIZE]]

    def err(request):
        reply = server.handle(request)
        assert isinstance(reply, FsError), reply
        return reply.errno

    assert err(Lookup(path=b"/nope")) == errno.ENOENT
    assert err(ReadDir(path=b"/small.txt")) == errno.ENOTDIR
    assert err(ReadLink(path=b"/small.txt")) == errno.EINVAL
    assert err(ReadChunks(path=b"/link", indexes=[0])) == errno.ELOOP  # never follows a symlink
    assert err(Lookup(path=b"/escape/passwd")) == errno.EACCES  # a symlink may not lead out of root
    assert err(Lookup(path=b"/sub/../small.txt")) == errno.EINVAL
    assert err(Lookup(path=b"sub")) == errno.EINVAL
    assert err(ReadChunks(path=b"/big.bin", indexes=list(range(65)))) == errno.E2BIG
    assert server.stats.errors == 8


def test_file_server_hashes_each_version_once_and_keeps_hashes_across_runs(tmp_path):
    tree, cache = tmp_path / "tree", tmp_path / "hashes"
    tree.mkdir()
    make_plain_tree(tree)
    server = FileServer(tree, hash_cache=cache)
    server.handle(Lookup(path=b"/big.bin"))
    hashed = server.stats.hashed_bytes
    assert hashed == CHUNK_SIZE + 1234
    server.handle(Lookup(path=b"/big.bin"))
    assert server.stats.hashed_bytes == hashed  # unchanged: the cache answered
    server.close()

    again = FileServer(tree, hash_cache=cache)  # a later run
    entries = {e.name: e.attr for e in again.handle(ReadDir(path=b"/")).entries}
    assert entries[b"big.bin"].chunks is not None and again.stats.hashed_bytes == 0

    with open(tree / "big.bin", "r+b") as f:  # changed: hashed again
        f.write(b"X")
    attr = again.handle(Lookup(path=b"/big.bin"))
    assert again.stats.hashed_bytes == CHUNK_SIZE + 1234
    assert attr.chunks[0] == chunk_hash((tree / "big.bin").read_bytes()[:CHUNK_SIZE])


def test_a_big_file_is_hashed_by_two_threads_and_a_file_that_changes_meanwhile_in_one_pass(tmp_path):
    """A library the process opens waits for its hashes: a big file's chunks are read and hashed
    by two threads at once. The hashes are those of its chunks in order; a file that is not the
    size it was when the hashing began (it changed meanwhile) is hashed in one pass, as read."""
    from radium.remoting.run.files import PARALLEL_HASH_MIN

    data = os.urandom(PARALLEL_HASH_MIN + 2 * CHUNK_SIZE + 777)  # 11 chunks: one thread hashes more
    (tmp_path / "lib.so").write_bytes(data)
    server = FileServer(tmp_path)
    attr = server.handle(Lookup(path=b"/lib.so", content=True))
    want = [chunk_hash(data[i : i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]
    assert attr.chunks == want and attr.size == len(data) and attr.data is None
    assert server._hashers is not None  # by the threads, not in one pass
    assert server.stats.hashed_bytes == len(data)

    fd = os.open(tmp_path / "lib.so", os.O_RDONLY)
    try:
        assert server._hash_in_parallel(fd, len(data)) == want
        assert server._hash_in_parallel(fd, len(data) - 1) is None  # longer than it was: again
        assert server._hash_in_parallel(fd, len(data) + CHUNK_SIZE) is None  # shorter than it was
        assert server._hash_in_parallel(fd, PARALLEL_HASH_MIN - 1) is None  # small: in one pass
    finally:
        os.close(fd)
    server.close()
    # Closed while a request still hashes (the run ended): it hashes in one pass, not fails.
    with open(tmp_path / "lib.so", "ab") as f:
        f.write(b"more")
    attr = server.handle(Lookup(path=b"/lib.so", content=True))
    grown = data + b"more"
    assert attr.chunks == [chunk_hash(grown[i : i + CHUNK_SIZE]) for i in range(0, len(grown), CHUNK_SIZE)]


def test_a_cold_files_chunks_are_read_once_kept_from_its_hashing_for_the_request_that_follows(tmp_path):
    """The appliance learns a cold file's hashes (its lookup hashes it), then asks for its chunks:
    they are sent as read to be hashed, not read again; by the one pass of a file under
    PARALLEL_HASH_MIN and the two threads of a bigger one (its first chunks, as many as the
    budget holds). A chunk is kept for one request; a file written since is read as it is now."""
    from radium.remoting.run.files import PARALLEL_HASH_MIN, JustHashed

    small = os.urandom(3 * CHUNK_SIZE + 5)
    big = os.urandom(PARALLEL_HASH_MIN + 3 * CHUNK_SIZE + 7)  # 12 chunks
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "big").write_bytes(big)
    server = FileServer(tmp_path)
    server.just_hashed = JustHashed(max_bytes=8 * CHUNK_SIZE)

    def fetch(path: bytes) -> bytes:
        attr = server.handle(Lookup(path=path, content=True))
        assert attr.data is None
        return b"".join(server.handle(ReadChunks(path=path, indexes=list(range(len(attr.chunks))))).data)

    assert fetch(b"/small") == small and server.stats.reread_bytes == 0
    assert fetch(b"/big") == big and server.stats.reread_bytes == len(big) - 8 * CHUNK_SIZE
    assert server.stats.hashed_bytes == len(small) + len(big)

    again = server.stats.reread_bytes
    chunk = server.handle(ReadChunks(path=b"/small", indexes=[1])).data[0]  # taken already: read
    assert chunk == small[CHUNK_SIZE : 2 * CHUNK_SIZE] and server.stats.reread_bytes == again + CHUNK_SIZE

    (tmp_path / "other").write_bytes(small)
    server.handle(Lookup(path=b"/other", content=True))  # kept, then the file is written
    changed = os.urandom(len(small) + 1)  # another size: told apart whatever the clock's grain
    (tmp_path / "other").write_bytes(changed)
    chunk = server.handle(ReadChunks(path=b"/other", indexes=[0])).data[0]
    assert chunk == changed[:CHUNK_SIZE]

    # A big file hashed in one pass (it changed while two threads hashed it): its first chunks
    # are kept, as many as the budget holds, not the whole file read into memory.
    (tmp_path / "again").write_bytes(big)
    server._hash_in_parallel = lambda *args, **kwargs: None  # type: ignore[method-assign]
    server.handle(Lookup(path=b"/again", content=True))
    again = server.stats.reread_bytes
    data = server.handle(ReadChunks(path=b"/again", indexes=list(range(8)))).data
    assert b"".join(data) == big[: 8 * CHUNK_SIZE] and server.stats.reread_bytes == again


def test_a_listing_asked_with_content_carries_small_files_the_appliance_lacks_smallest_first(
    tmp_path, monkeypatch
):
    from radium.remoting.run import files

    monkeypatch.setattr(files, "LISTING_CONTENT_MAX", 10_000)
    sizes = {"a": 100, "b": 3000, "c": 5000, "d": 4000, "big": INLINE_MAX + 1}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    server = FileServer(tmp_path, hash_cache=tmp_path / ".cache")
    plain = {e.name: e.attr for e in server.handle(ReadDir(path=b"/")).entries}
    assert all(a.chunks is None and a.data is None for a in plain.values())  # as before: no content
    server.handle(Lookup(path=b"/a"))  # hashed (and delivered) before
    full = {e.name.decode(): e.attr for e in server.handle(ReadDir(path=b"/", content=True)).entries}
    # a: hashes known, content delivered already; then b (3000) and d (4000) fit in 10,000, c does
    # not (7000 + 5000); big is not small. What came is what the files hold.
    assert full["a"].chunks is not None and full["a"].data is None
    assert [n for n in "bcd" if full[n].data is not None] == ["b", "d"]
    for n in "bd":
        assert full[n].data == (tmp_path / n).read_bytes() and full[n].chunks == [chunk_hash(full[n].data)]
    assert full["c"].chunks is None and full["big"].chunks is None and full["big"].data is None
    # Unchanged, the digest is the plain listing's: content does not make a directory look changed.
    assert server.handle(ReadDir(path=b"/", content=True)).digest == server.handle(ReadDir(path=b"/")).digest

    # (c came with the listing just asked for, b and d being delivered.) Hashed here (the hash
    # cache of earlier runs) but not sent to this appliance: a's content comes with its hashes, once.
    server.delivered.discard(chunk_hash((tmp_path / "a").read_bytes()))
    again = {e.name.decode(): e.attr for e in server.handle(ReadDir(path=b"/", content=True)).entries}
    assert [n for n in "abcd" if again[n].data is not None] == ["a"]
    assert again["a"].data == (tmp_path / "a").read_bytes()
    assert all(e.attr.data is None for e in server.handle(ReadDir(path=b"/", content=True)).entries)


def test_a_content_listing_sends_the_file_opened_first_and_optimised_bytecode_last(tmp_path, monkeypatch):
    from radium.remoting.run import files

    monkeypatch.setattr(files, "LISTING_CONTENT_MAX", 10_000)
    sizes = {
        "m.cpython-311.opt-2.pyc": 1000,  # read by `python -OO` only
        "m.cpython-311.opt-1.pyc": 1500,  # `python -O`
        "m.cpython-311.pyc": 2000,
        "other.cpython-311.pyc": 3000,
        "wanted.cpython-311.pyc": 6000,  # the one being opened
    }
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))

    def sent(**ask) -> list[str]:
        server = FileServer(tmp_path)  # a fresh client: nothing delivered yet
        reply = server.handle(ReadDir(path=b"/", content=True, **ask))
        for e in reply.entries:
            assert e.attr.data is None or e.attr.data == (tmp_path / os.fsdecode(e.name)).read_bytes()
        return sorted(os.fsdecode(e.name) for e in reply.entries if e.attr.data is not None)

    # The opened file first (6000), then the smallest that fit, optimised bytecode after the rest.
    assert sent(first=b"wanted.cpython-311.pyc") == [
        "m.cpython-311.opt-2.pyc",
        "m.cpython-311.pyc",
        "wanted.cpython-311.pyc",
    ]
    # Without a first: 2000 + 3000, then what fits of the optimised (1000 + 1500), not the 6000.
    assert sent() == [
        "m.cpython-311.opt-1.pyc",
        "m.cpython-311.opt-2.pyc",
        "m.cpython-311.pyc",
        "other.cpython-311.pyc",
    ]


def test_a_lookup_asked_with_a_head_brings_the_files_first_chunks_as_hashed(tmp_path):
    """`Lookup.head`: a file of several chunks comes with its first ones, read as it was hashed
    (not read again); a small file comes inline as ever, a folder as its attributes; more than
    a request's worth of chunks is refused."""
    big = os.urandom(5 * CHUNK_SIZE + 7)
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "small").write_bytes(b"small")
    (tmp_path / "sub").mkdir()
    server = FileServer(tmp_path)
    reply = server.handle(Lookup(path=b"/big", head=3))
    assert isinstance(reply, Headed) and reply.attr.size == len(big) and len(reply.attr.chunks) == 6
    assert b"".join(reply.data) == big[: 3 * CHUNK_SIZE] and server.stats.reread_bytes == 0
    assert [chunk_hash(d) for d in reply.data] == reply.attr.chunks[:3]
    assert set(reply.attr.chunks[:3]) <= server.delivered
    whole = server.handle(Lookup(path=b"/big", head=64))  # hashes known now: read from the file
    assert isinstance(whole, Headed) and b"".join(whole.data) == big
    small = server.handle(Lookup(path=b"/small", head=3))
    assert isinstance(small, Attr) and small.data == b"small"
    assert isinstance(server.handle(Lookup(path=b"/sub", head=3)), Attr)
    assert isinstance(server.handle(Lookup(path=b"/big", content=False, head=3)), Attr)
    refused = server.handle(Lookup(path=b"/big", head=MAX_CHUNKS_PER_REQUEST + 1))
    assert isinstance(refused, FsError) and refused.errno == errno.E2BIG


def test_reading_chunks_reuses_the_lookups_hashes_for_what_the_appliance_holds(tmp_path, monkeypatch):
    from radium.remoting.run import files

    make_plain_tree(tmp_path)
    server = FileServer(tmp_path)
    attr = server.handle(Lookup(path=b"/big.bin"))  # hashes the file once
    hashed = []
    monkeypatch.setattr(files, "chunk_hash", lambda data: hashed.append(data) or chunk_hash(data))
    reply = server.handle(ReadChunks(path=b"/big.bin", indexes=[1, 0]))
    assert [chunk_hash(d) for d in reply.data] == [attr.chunks[1], attr.chunks[0]]
    assert set(attr.chunks) <= server.delivered and hashed == []  # named by the lookup's hashes

    with open(tmp_path / "big.bin", "r+b") as f:  # changed since the lookup: hashed afresh
        f.write(b"X")
    reply = server.handle(ReadChunks(path=b"/big.bin", indexes=[0]))
    assert hashed == reply.data and chunk_hash(reply.data[0]) in server.delivered


def test_prefetch_sends_trees_with_their_ancestors(tmp_path):
    make_plain_tree(tmp_path)
    (tmp_path / "sub" / "deeper").mkdir()
    server = FileServer(tmp_path)
    tree = server.handle(Prefetch(paths=[b"/sub"]))
    assert [listing.path for listing in tree.listings] == [b"/", b"/sub", b"/sub/deeper"]
    assert not tree.truncated
    assert server.handle(Prefetch(paths=[b"/"], max_entries=2)).truncated


def test_kept_listings_are_rechecked_in_one_prefetch_and_changes_are_sent_whole(tmp_path):
    make_plain_tree(tmp_path)
    (tmp_path / "sub" / "deeper").mkdir()
    os.symlink("big.bin", tmp_path / "link-to-big")
    server = FileServer(tmp_path)
    first = server.handle(Prefetch(paths=[b"/sub"]))
    digests = {listing.path: listing.digest for listing in first.listings}
    # Kept from an earlier run: /sub and its subfolder (walked), and / (rechecked alone).
    again = server.handle(Prefetch(paths=[b"/sub"], known=digests))
    assert [(x.path, x.unchanged, x.entries) for x in again.listings] == [
        (b"/", True, []), (b"/sub", True, []), (b"/sub/deeper", True, [])
    ]  # fmt: skip
    assert again.root is not None and stat.S_ISDIR(again.root.mode)
    only_kept = server.handle(Prefetch(paths=[], known={b"/sub/deeper": digests[b"/sub/deeper"]}))
    assert [(x.path, x.unchanged) for x in only_kept.listings] == [(b"/sub/deeper", True)]

    # A change: that listing comes whole, and its parent's (the folder's times changed).
    (tmp_path / "sub" / "deeper" / "new.txt").write_text("new")
    changed = server.handle(Prefetch(paths=[b"/sub"], known=digests))
    by_path = {x.path: x for x in changed.listings}
    deeper = by_path[b"/sub/deeper"]
    assert not deeper.unchanged and [e.name for e in deeper.entries] == [b"new.txt"]
    assert not by_path[b"/sub"].unchanged and by_path[b"/"].unchanged
    # The quick recheck and a full listing agree on every digest.
    for path in by_path:
        full = server.handle(ReadDir(path=path))
        assert server._quick_digest(path)[0] == full.digest
        assert server.handle(ReadDir(path=path, known=full.digest)).unchanged


def test_only_the_folders_a_run_used_are_rechecked_by_the_next_and_its_tree_is_not_walked(tmp_path):
    import trio

    from radium.remoting.run.fs import ClientTree

    client = tmp_path / "client"
    for folder in ("used/deep", "unused/deep", "unused/other"):
        (client / folder).mkdir(parents=True)
    server = FileServer(client)
    store = ContentStore(tmp_path / "store", 1 << 20)
    fetch, replies = _answered_by(server)

    async def first_run() -> None:
        kept = KeptListings(store, tmp_path / "kept.idx")
        tree = ClientTree(fetch, store, kept=kept)
        await tree.prefetch([b"/"])  # a cold start walks the whole tree...
        assert {x.path for x in replies[-1].listings} >= {b"/unused/deep", b"/unused/other"}
        assert await tree.stat_path(b"/used/deep") is not None  # ...the process uses / and /used
        kept.save()

    async def second_run() -> None:
        kept = KeptListings(store, tmp_path / "kept.idx")
        assert sorted(kept.previous) == [b"/", b"/used"]
        tree = ClientTree(fetch, store, kept=kept)
        replies.clear()
        await tree.prefetch([b"/"])  # the same tree: not walked again, those two rechecked
        (tree_reply,) = replies
        assert [(x.path, x.unchanged) for x in tree_reply.listings] == [(b"/", True), (b"/used", True)]
        assert await tree.stat_path(b"/unused/other") is not None  # the rest, on demand
        assert len(replies) == 2 and isinstance(replies[-1], DirListing)

    trio.run(first_run)
    trio.run(second_run)


def test_a_tree_walked_before_is_only_rechecked_at_its_top_when_the_last_run_used_none_of_it(tmp_path):
    """A run in a big project whose process never lists it (`python -c`, a shell script): the
    next run does not walk or recheck the whole project again, only its top and ancestors."""
    import trio

    from radium.remoting.run.fs import ClientTree

    for folder in ("project/src/deep", "project/.venv/lib", "elsewhere"):
        (tmp_path / "client" / folder).mkdir(parents=True)
    store = ContentStore(tmp_path / "store", 1 << 20)
    fetch, replies = _answered_by(FileServer(tmp_path / "client"))

    async def run(check) -> None:
        kept = KeptListings(store, tmp_path / "kept.idx")
        replies.clear()
        await ClientTree(fetch, store, kept=kept).prefetch([b"/project"])
        check([(x.path, x.unchanged) for x in replies[-1].listings])
        kept.save()

    def walked(listings) -> None:
        assert {p for p, _ in listings} >= {b"/", b"/project", b"/project/src/deep", b"/project/.venv/lib"}

    def rechecked(listings) -> None:
        assert listings == [(b"/", True), (b"/project", True)]

    trio.run(run, walked)
    trio.run(run, rechecked)
    (tmp_path / "client/project/new").mkdir()  # a change of the top: sent whole, still not walked

    def changed(listings) -> None:  # its entry in / changed too (its link count)
        assert listings == [(b"/", False), (b"/project", False)]

    trio.run(run, changed)
    trio.run(run, rechecked)


def _answered_by(server: FileServer):
    """A ClientTree's fetch answered by `server` through the wire encoding, and its replies."""
    replies: list = []

    async def fetch(request):
        reply = decode_reply(encode(server.handle(decode_request(encode(request)))))
        replies.append(reply)
        return reply

    return fetch, replies


@needs_root
def test_mount_rule_shows_foreign_mounts_empty_but_serves_cwd_and_named_ones(tmp_path):
    mounts = [mount_tmpfs(tmp_path / name, "1m") for name in ("cwd", "named", "other")]
    try:
        nested = mount_tmpfs(tmp_path / "cwd" / "nested", "1m")
        mounts.append(nested)
        for m in mounts:
            (m / "f").write_bytes(b"x")
        server = FileServer("/", cwd=tmp_path / "cwd", serve_mounts=[tmp_path / "named"])

        def names(path: Path):
            reply = server.handle(ReadDir(path=os.fsencode(path)))
            assert isinstance(reply, DirListing), reply
            return {e.name for e in reply.entries}

        assert names(tmp_path / "cwd") == {b"f", b"nested"}
        assert names(tmp_path / "cwd" / "nested") == {b"f"}  # inside the working directory
        assert names(tmp_path / "named") == {b"f"}  # named explicitly
        assert names(tmp_path / "other") == set()  # a tmpfs elsewhere: empty
        reply = server.handle(Lookup(path=os.fsencode(tmp_path / "other" / "f")))
        assert isinstance(reply, FsError) and reply.errno == errno.ENOENT
        assert stat.S_ISDIR(server.handle(Lookup(path=os.fsencode(tmp_path / "other"))).mode)
        assert b"proc" in names(Path("/")) and names(Path("/proc")) == set() and names(Path("/sys")) == set()
        assert server.handle(Lookup(path=b"/proc/self/status")).errno == errno.ENOENT

        late = mount_tmpfs(tmp_path / "late", "1m")  # mounted after the server started
        mounts.append(late)
        (late / "f").write_bytes(b"x")
        assert b"late" in names(tmp_path)  # listing the parent notices the new mount
        assert names(late) == set()
    finally:
        for m in reversed(mounts):
            umount(m)


# --- end to end through FUSE ------------------------------------------------------------------------


@dataclass
class World:
    """A client tree on tmpfs mounts, and what the appliance side should see of it."""

    base: Path
    client: Path  # the client's working directory (a tmpfs: served by the cwd rule)
    named: Path  # a tmpfs named in serve_mounts
    hidden: Path  # a tmpfs neither: shown empty
    files: dict[bytes, bytes] = field(default_factory=dict)  # client path -> content
    distinct_chunks: int = 0  # chunks of files too big to come with their lookup, counted once per content

    def config(self, mountpoint: Path, store: Path, hash_cache: Path | None) -> dict:
        return {
            "mountpoint": str(mountpoint),
            "cwd": str(self.client),
            "serve_mounts": [str(self.named)],
            "store": str(store),
            "store_limit": 64 * CHUNK_SIZE,
            "hash_cache": str(hash_cache) if hash_cache else None,
            "id_offset": 100_000,
        }


MTIME = 1_600_000_000_123_456_789


def _populate(world: World) -> None:
    c = world.client
    big = os.urandom(2 * CHUNK_SIZE + CHUNK_SIZE // 2)
    contents = {
        "small.txt": b"hello radium\n" * 5,
        "empty": b"",
        "exact64k": os.urandom(INLINE_MAX),
        "medium.bin": os.urandom(300_000),
        "big.bin": big,
        "dup.bin": big,  # the same content: no chunk of it may cross twice
        "run.sh": b"#!/bin/sh\necho hi\n",
        "sub/deeper/nested.txt": b"nested\n",
        "inner/x.txt": b"on a tmpfs inside the working directory\n",
    }
    (c / "sub" / "deeper").mkdir(parents=True)
    mount_tmpfs(c / "inner", "1m")
    for rel, data in contents.items():
        (c / rel).write_bytes(data)
        world.files[os.fsencode(c / rel)] = data
    odd = os.fsencode(c) + b"/caf\xe9.bin"  # not UTF-8
    with open(odd, "wb") as f:
        f.write(b"latin-1 name\n")
    world.files[odd] = b"latin-1 name\n"
    (world.named / "data.txt").write_bytes(b"named mount\n")
    world.files[os.fsencode(world.named / "data.txt")] = b"named mount\n"
    (world.hidden / "secret.txt").write_bytes(b"must not be seen\n")
    os.chmod(c / "run.sh", 0o755)
    os.chmod(c / "sub" / "deeper" / "nested.txt", 0o640)
    os.chmod(c / "sub", 0o750)
    os.symlink("small.txt", c / "link")
    os.symlink("sub/deeper", c / "dirlink")
    os.symlink(c / "big.bin", c / "abslink")
    os.mkfifo(c / "fifo")
    for rel in ("small.txt", "big.bin", "sub/deeper/nested.txt", "sub/deeper", "sub"):
        os.utime(c / rel, ns=(MTIME, MTIME + len(rel)))
    sizes = {rel: len(d) for rel, d in contents.items() if len(d) > LOOKUP_INLINE_MAX and rel != "dup.bin"}
    world.distinct_chunks = sum((n + CHUNK_SIZE - 1) // CHUNK_SIZE for n in sizes.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = _fuse_unavailable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("runfs")
    w = World(base, *(mount_tmpfs(base / name) for name in ("client", "named", "hidden")))
    try:
        _populate(w)
        yield w
    finally:
        for m in (w.client / "inner", w.client, w.named, w.hidden):
            umount(m)


class Served:
    """The serving subprocess: a FileServer and a ClientTree mounted at `mountpoint`."""

    def __init__(self, config: dict, log: Path) -> None:
        self.mountpoint = Path(config["mountpoint"])
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.final: dict | None = None
        try:
            self._expect("ready")
        except BaseException:
            self.stop()
            raise

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def _expect(self, kind: str, timeout: float = 20.0) -> dict:
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            msg = None
        if msg is None or kind not in msg:
            self._log.flush()
            raise AssertionError(f"serving process: expected {kind}, got {msg}; its log: {self._log.name}")
        return msg

    def at(self, client_path: bytes | str | Path) -> bytes:
        """Where a client path appears through the mount."""
        return os.fsencode(self.mountpoint) + os.fsencode(client_path)

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._expect("stats")

    def stop(self) -> dict | None:
        from radium.remoting.run.fsmount import unmount

        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.final = self._expect("final")
                self.proc.wait(timeout=10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            unmount(self.mountpoint)  # a no-op when the server unmounted itself
            self._log.close()
        return self.final


def _read_everything(served: Served, world: World) -> None:
    for path, data in world.files.items():
        with open(served.at(path), "rb") as f:
            assert f.read() == data, path


def _drop_page_cache(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def served(world, tmp_path_factory):
    base = tmp_path_factory.mktemp("appliance")
    s = Served(world.config(base / "mnt" / "m", base / "store", None), base / "serve.log")
    try:
        yield s
    finally:
        s.stop()


@needs_fuse
@pytest.mark.timeout(60)
def test_mount_shows_the_client_tree_byte_for_byte(served, world):
    _read_everything(served, world)
    for top in (world.client, world.named):
        for dirpath, dirnames, filenames in os.walk(os.fsencode(top)):
            for name in [b"", *dirnames, *filenames]:
                real = os.path.join(dirpath, name) if name else dirpath
                mine, theirs = os.lstat(real), os.lstat(served.at(real))
                assert stat.S_IFMT(theirs.st_mode) == stat.S_IFMT(mine.st_mode), real
                assert stat.S_IMODE(theirs.st_mode) == stat.S_IMODE(mine.st_mode), real
                assert (theirs.st_size, theirs.st_mtime_ns, theirs.st_nlink) == (
                    mine.st_size, mine.st_mtime_ns, mine.st_nlink), real  # fmt: skip
                assert (theirs.st_uid, theirs.st_gid) == (mine.st_uid + 100_000, mine.st_gid + 100_000)
                if stat.S_ISLNK(mine.st_mode):
                    assert os.readlink(served.at(real)) == os.readlink(real)
            assert sorted(os.listdir(served.at(dirpath))) == sorted(dirnames + filenames), dirpath
    c = world.client
    assert os.lstat(served.at(c / "sub")).st_mtime_ns == MTIME + 3
    assert stat.S_IMODE(os.stat(served.at(c / "sub")).st_mode) == 0o750
    assert stat.S_ISFIFO(os.lstat(served.at(c / "fifo")).st_mode)
    assert Path(os.fsdecode(served.at(c / "dirlink" / "nested.txt"))).read_bytes() == b"nested\n"
    # Inode numbers are stable: the same path, the same number, each time.
    assert os.stat(served.at(c / "sub")).st_ino == os.stat(served.at(c / "sub")).st_ino


@needs_fuse
@pytest.mark.timeout(60)
def test_mount_hides_foreign_mounts_refuses_writes_and_reports_enoent(served, world):
    assert os.listdir(served.at(world.hidden)) == []
    assert not os.path.exists(served.at(world.hidden / "secret.txt"))
    assert os.listdir(served.at(world.named)) == [b"data.txt"]
    assert os.listdir(served.at("/proc")) == []
    for missing in (world.client / "nope", world.client / "sub" / "nope", world.client / "small.txt" / "x"):
        with pytest.raises((FileNotFoundError, NotADirectoryError)):
            os.stat(served.at(missing))
    with pytest.raises(OSError) as exc:
        open(served.at(world.client / "small.txt"), "ab")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(OSError) as exc:
        os.mkdir(served.at(world.client / "newdir"))
    assert exc.value.errno == errno.EROFS


@needs_fuse
@pytest.mark.timeout(60)
def test_what_is_known_never_crosses_the_network_again(served, world):
    _read_everything(served, world)  # whatever this test runs after, everything is known now
    everything = [served.at(p) for p in world.files]
    for p in everything:
        _drop_page_cache(p)  # so that reads reach the file system again, not only the page cache
    before = served.stats()
    _read_everything(served, world)
    for dirpath, _, _ in os.walk(os.fsencode(world.client)):
        os.listdir(served.at(dirpath))
    os.readlink(served.at(world.client / "link"))
    for _ in range(3):
        assert not os.path.exists(served.at(world.client / "nope"))
    after = served.stats()
    assert after["server"]["requests"] == before["server"]["requests"]
    assert after["tree"]["requests"] == before["tree"]["requests"]
    # ...yet the reads did reach the file system: it answered them from the store.
    assert after["tree"]["ops"]["read"] > before["tree"]["ops"]["read"]
    assert after["tree"]["chunk_hits"] > before["tree"]["chunk_hits"]


@needs_fuse
@pytest.mark.timeout(60)
def test_a_second_mount_with_the_same_store_fetches_no_content(world, tmp_path):
    store, hashes = tmp_path / "store", tmp_path / "hashes"
    first = Served(world.config(tmp_path / "mnt1" / "m", store, hashes), tmp_path / "serve1.log")
    try:
        _read_everything(first, world)
        _read_everything(first, world)
    finally:
        cold = first.stop()
    # Identical content crosses once: dup.bin's chunks came with big.bin's.
    assert cold["tree"]["chunks_fetched"] == world.distinct_chunks
    # medium.bin with its lookup; big.bin's 3 chunks in two: the first read's own chunk, and
    # the two after it, asked for ahead of the reader at the same time.
    assert cold["server"]["requests"]["ReadChunks"] == 2
    assert cold["server"]["content_bytes"] > 0

    second = Served(world.config(tmp_path / "mnt2" / "m", store, hashes), tmp_path / "serve2.log")
    try:
        _read_everything(second, world)
    finally:
        warm = second.stop()
    assert warm["server"]["requests"].get("ReadChunks", 0) == 0
    assert warm["server"]["content_bytes"] == 0 and warm["tree"]["bytes_fetched"] == 0
    assert warm["server"]["hashed_bytes"] == 0  # the hash cache knew every file
    assert warm["store"]["hits"] > 0


@needs_fuse
@pytest.mark.timeout(60)
def test_a_small_file_here_at_its_open_is_read_from_the_page_cache_not_through_fuse(world, tmp_path):
    """A file of one chunk whose content came with its lookup or listing is put into the
    kernel's page cache as it is opened (`ClientTree._push`): reading it costs no FUSE
    operation (a cold `import torch` reads ~1,000 bytecode files so). A bigger file is read
    through FUSE; a pushed file whose pages the kernel dropped is read through FUSE again."""
    c = world.client
    small = [c / "small.txt", c / "exact64k", c / "medium.bin"]
    mounted = Served(world.config(tmp_path / "mnt" / "m", tmp_path / "store", None), tmp_path / "serve.log")
    try:
        for path in small:
            with open(mounted.at(path), "rb") as f:
                assert f.read() == world.files[os.fsencode(path)], path
        assert mounted.stats()["tree"]["ops"].get("read", 0) == 0
        with open(mounted.at(c / "big.bin"), "rb") as f:
            assert f.read() == world.files[os.fsencode(c / "big.bin")]
        pushed_once = mounted.stats()["tree"]["ops"]
        assert pushed_once["read"] > 0 and pushed_once["open"] == 4
        for path in small:
            _drop_page_cache(mounted.at(path))
            with open(mounted.at(path), "rb") as f:
                assert f.read() == world.files[os.fsencode(path)], path
        assert mounted.stats()["tree"]["ops"]["read"] >= pushed_once["read"] + len(small)
    finally:
        mounted.stop()


@needs_fuse
@pytest.mark.timeout(60)
def test_a_warm_mount_with_kept_listings_asks_once_for_all_the_last_mount_used(world, tmp_path):
    store, hashes, kept = tmp_path / "store", tmp_path / "hashes", tmp_path / "kept.idx"

    def mount(n: int) -> Served:
        config = world.config(tmp_path / f"mnt{n}" / "m", store, hashes)
        config["kept"] = str(kept)
        return Served(config, tmp_path / f"serve{n}.log")

    first = mount(1)
    try:
        _read_everything(first, world)
    finally:
        cold = first.stop()
    assert cold["tree"]["requests"]["Lookup"] > 0 and cold["tree"]["requests"]["ReadDir"] > 0

    second = mount(2)
    try:
        _read_everything(second, world)
        for dirpath, _, _ in os.walk(os.fsencode(world.client)):
            os.listdir(second.at(dirpath))
    finally:
        warm = second.stop()
    # One Prefetch rechecked every directory the first mount listed, and the files' hashes
    # were kept with the listings: no lookup, no listing, no content asked for one by one.
    assert warm["tree"]["requests"] == {"Prefetch": 1}, warm["tree"]["requests"]
    assert warm["tree"]["bytes_fetched"] == 0

    # A file changed on the client: its directory's listing no longer holds, and the new
    # content is what the third mount reads (the kept hashes are not trusted blindly).
    changed = world.client / "small.txt"
    before = changed.stat()
    changed.write_bytes(b"changed on the client\n")
    third = mount(3)
    try:
        assert Path(os.fsdecode(third.at(changed))).read_bytes() == b"changed on the client\n"
    finally:
        after = third.stop()
        changed.write_bytes(world.files[os.fsencode(changed)])
        os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert after["tree"]["requests"].get("Lookup", 0) >= 1


# --- the serving subprocess ---------------------------------------------------------------------------


def _serve(config: dict) -> int:
    """Mount a ClientTree fed by a FileServer in this process; report on stdout (see Served)."""
    import trio

    from radium.remoting.run.fs import ClientTree
    from radium.remoting.run.fsmount import mount_and_serve

    server = FileServer(
        "/", cwd=config["cwd"], serve_mounts=config["serve_mounts"], hash_cache=config["hash_cache"]
    )
    store = ContentStore(config["store"], config["store_limit"])

    async def fetch(request):
        # Exactly what would cross the network, and on the client a worker thread answers.
        decoded = decode_request(encode(request))
        reply = await trio.to_thread.run_sync(server.handle, decoded)
        return decode_reply_frames(reply_frames(decoded, reply))

    kept = KeptListings(store, Path(config["kept"])) if config.get("kept") else None
    tree = ClientTree(fetch, store, id_offset=config["id_offset"], kept=kept)

    def report(kind: str) -> None:
        s, t = server.stats, tree.stats
        print(json.dumps({
            kind: True,
            "server": {"requests": dict(s.requests), "content_bytes": s.content_bytes,
                       "hashed_bytes": s.hashed_bytes, "errors": s.errors},
            "tree": {"requests": dict(t.requests), "ops": dict(t.ops), "bytes_fetched": t.bytes_fetched,
                     "chunks_fetched": t.chunks_fetched, "chunk_hits": t.chunk_hits,
                     "chunk_misses": t.chunk_misses},
            "store": vars(store.stats()),
        }), flush=True)  # fmt: skip

    async def commands(cancel: trio.CancelScope) -> None:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if line.strip() != "stats":
                cancel.cancel()  # "quit" or end of input: unmount and leave
                return
            report("stats")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if kept is not None:  # as the supervisor does: one request before mounting
                await tree.prefetch([], max_entries=1000)
            await nursery.start(mount_and_serve, tree, config["mountpoint"])
            report("ready")
            nursery.start_soon(commands, nursery.cancel_scope)

    trio.run(main)
    if kept is not None:  # as the supervisor does when its run ends
        tree.keep_learned()
        store.flush()  # the listings the index names are on disk (put_soon) before it is saved
        kept.save()
    store.flush()
    server.close()
    report("final")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(_serve(json.loads(sys.argv[2])))
