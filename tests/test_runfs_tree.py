"""The appliance's ClientTree called directly, without a mount: what it asks the client for
and when (read-ahead in file order, the next file of a walk, folders made whole, bytecode
with its folder, files read in part completed when the process is quiet, a page fault's
chunks side by side), answered by a FileServer in this process."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest
from test_runfs import make_plain_tree

from radium.remoting.run.cas import ContentStore
from radium.remoting.run.files import FileServer
from radium.remoting.run.fsfill import FILL_FILE_MAX, FILL_RUN_BYTES
from radium.remoting.run.fsproto import (
    CHUNK_SIZE,
    INLINE_MAX,
    Attr,
    Headed,
    Lookup,
    ReadChunks,
    ReadDir,
    chunk_hash,
)
from radium.remoting.run.listings import KeptListings


def test_client_tree_copes_with_a_full_store_changed_files_and_absent_names(tmp_path):
    pyfuse3 = pytest.importorskip("pyfuse3")
    import trio

    from radium.remoting.run.fs import ClientTree

    tree_dir = tmp_path / "tree"
    tree_dir.mkdir()
    make_plain_tree(tree_dir)
    os.symlink("sub", tree_dir / "sublink")
    big = (tree_dir / "big.bin").read_bytes()
    server = FileServer(tree_dir)
    asked = []

    async def fetch(request):
        asked.append(type(request).__name__)
        return server.handle(request)

    store = ContentStore(tmp_path / "store", 1000)  # smaller than any chunk: it refuses them all
    tree = ClientTree(fetch, store, id_offset=5000)
    root = pyfuse3.ROOT_INODE

    async def main():
        entry = await tree.lookup(root, b"big.bin", None)
        assert entry.st_uid == os.getuid() + 5000 and entry.st_size == len(big)
        assert (await tree.lookup(root, b"big.bin", None)).st_ino == entry.st_ino  # stable
        fh = (await tree.open(entry.st_ino, os.O_RDONLY, None)).fh
        assert await tree.read(fh, 0, 2 * CHUNK_SIZE) == big  # served from memory
        assert tree.stats.store_full == 2 and store.stats().entries == 0

        # The client's file changes during the run: the hashes no longer match, the tree asks again.
        changed = os.urandom(len(big))
        (tree_dir / "big.bin").write_bytes(changed)
        tree.contents.recent.clear()
        assert await tree.read(fh, CHUNK_SIZE, 1234) == changed[CHUNK_SIZE:]
        assert asked[-3:] == ["ReadChunks", "Lookup", "ReadChunks"]  # mismatch, new hashes, again

        small = await tree.lookup(root, b"small.txt", None)
        fh = (await tree.open(small.st_ino, os.O_RDONLY, None)).fh
        assert await tree.read(fh, 1, 100) == b"mall\n"

        n = len(asked)
        for _ in range(3):  # absent names are remembered: no second request
            assert (await tree.lookup(root, b"nope", None)).st_ino == 0
        assert len(asked) == n

        assert (await tree.stat_path(os.fsencode("/sublink/inner.txt"))).size == 6  # through a symlink
        assert stat.S_ISLNK((await tree.stat_path(b"/sublink")).mode)
        assert stat.S_ISDIR((await tree.stat_path(b"/sublink", follow=True)).mode)
        assert await tree.stat_path(b"/small.txt/x") is None and await tree.stat_path(b"/no/such") is None

    trio.run(main)


def test_a_sequential_reader_is_asked_for_in_file_order_and_the_next_file_of_its_walk_comes_early(tmp_path):
    pyfuse3 = pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree
    from radium.remoting.run.fscontent import NEXT_FILE_HEAD

    client = tmp_path / "client"
    contents: dict[str, bytes] = {}
    for folder in ("byname", "listed", "shuffled"):
        (client / folder).mkdir(parents=True)
        for i in range(5):
            contents[f"{folder}/f{i}"] = data = os.urandom(4 * CHUNK_SIZE)
            (client / folder / f"f{i}").write_bytes(data)
    listed = {folder: os.listdir(client / folder) for folder in ("listed", "shuffled")}

    def follows(a: str, b: str, order: list[str]) -> bool:
        return order.index(b) == order.index(a) + 1

    shuffled = next(  # an order in which no file follows the one before by name or in the listing
        list(p)
        for p in itertools.permutations(sorted(listed["shuffled"]))
        if not any(
            follows(a, b, sorted(p)) or follows(a, b, listed["shuffled"]) for a, b in itertools.pairwise(p)
        )
    )
    server = FileServer(client)
    asked: list[tuple] = []  # in the order the requests were sent

    async def fetch(request):
        reply = server.handle(request)
        # The chunks it asks for, or (a lookup with `head`) that come with its reply.
        got = range(len(reply.data)) if isinstance(reply, Headed) else getattr(request, "indexes", ())
        asked.append((type(request).__name__, request.path, tuple(got)))
        return reply

    tree = ClientTree(fetch, ContentStore(tmp_path / "store", 1 << 30), batch_chunks=1, ahead_chunks=3)

    async def read_whole(folder_ino: int, folder: str, name: str) -> None:
        asked.append(("open", f"/{folder}/{name}".encode(), ()))
        entry = await tree.lookup(folder_ino, name.encode(), None)
        fh = (await tree.open(entry.st_ino, os.O_RDONLY, None)).fh
        got = b"".join([await tree.read(fh, off, CHUNK_SIZE) for off in range(0, 4 * CHUNK_SIZE, CHUNK_SIZE)])
        assert got == contents[f"{folder}/{name}"]
        await trio.testing.wait_all_tasks_blocked()  # what it asked for ahead has come

    async def main():
        async with trio.open_nursery() as background:
            tree.contents.background = background
            # A walk by name, one in the listing's order (the client's scandir order), one in neither.
            for folder, names in (
                ("byname", [f"f{i}" for i in range(5)]),
                ("listed", listed["listed"]),
                ("shuffled", shuffled),
            ):
                folder_ino = (await tree.lookup(pyfuse3.ROOT_INODE, folder.encode(), None)).st_ino
                await tree.opendir(folder_ino, None)
                for name in names:
                    await read_whole(folder_ino, folder, name)
            background.cancel_scope.cancel()

    trio.run(main)
    for folder, names in (
        ("byname", [f"f{i}" for i in range(5)]),
        ("listed", listed["listed"]),
        ("shuffled", shuffled),
    ):
        for k, path in enumerate(f"/{folder}/{name}".encode() for name in names):
            chunks = [req[2] for req in asked if req[0] in ("ReadChunks", "Lookup") and req[1] == path]
            # Each chunk asked for once, and in the file's order: the reader's first, then those
            # ahead of it (started at once as tasks, which trio runs in no set order).
            assert [i for c in chunks for i in c] == [0, 1, 2, 3], (path, chunks)
            opened = asked.index(("open", path, ()))
            early = [req for req in asked[:opened] if req[1] == path]
            if k < 2 or folder == "shuffled":  # no walk seen: nothing of it before the process opens it
                assert early == [], early
            else:  # looked up while the process read the one before, its chunks with its hashes
                # (NEXT_FILE_HEAD ≥ 4: all of them), and nothing asked for after
                assert NEXT_FILE_HEAD >= 4
                assert early == [("Lookup", path, (0, 1, 2, 3))], early
                assert [req for req in asked[opened:] if req[1] == path and req[0] != "open"] == [], path


def test_a_file_opened_while_its_head_is_on_the_way_waits_for_it_and_a_bad_head_is_asked_again(tmp_path):
    """The next file of a walk is looked up with its first chunks (`Lookup.head`). A process
    opening it before that reply comes waits for it, and then reads those chunks from it, not
    asking for them again; a chunk of the reply that does not match its hash (the file written
    between its hashing and its reading) is not used: the reader asks for it itself."""
    pyfuse3 = pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree
    from radium.remoting.run.fscontent import NEXT_FILE_HEAD

    assert NEXT_FILE_HEAD >= 2
    client = tmp_path / "client"
    (client / "walk").mkdir(parents=True)
    contents = {f"f{i}": os.urandom(4 * CHUNK_SIZE) for i in range(4)}
    for name, data in contents.items():
        (client / "walk" / name).write_bytes(data)
    server = FileServer(client)
    asked: list[tuple] = []
    held: dict[bytes, trio.Event] = {}  # lookups with a head whose reply waits for the test

    async def fetch(request):
        reply = server.handle(request)
        if isinstance(reply, Headed):
            if request.path == b"/walk/f3":  # its first chunk as the file is now, not as hashed
                reply.data[0] = os.urandom(len(reply.data[0]))
            held[request.path] = trio.Event()
            await held[request.path].wait()
        asked.append((type(request).__name__, request.path, tuple(getattr(request, "indexes", ()))))
        return reply

    tree = ClientTree(fetch, ContentStore(tmp_path / "store", 1 << 30), batch_chunks=1, ahead_chunks=3)
    got: dict[str, bytes] = {}

    async def read_whole(folder_ino: int, name: str) -> None:
        entry = await tree.lookup(folder_ino, name.encode(), None)
        fh = (await tree.open(entry.st_ino, os.O_RDONLY, None)).fh
        got[name] = b"".join(
            [await tree.read(fh, off, CHUNK_SIZE) for off in range(0, 4 * CHUNK_SIZE, CHUNK_SIZE)]
        )

    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as background:
                tree.contents.background = background
                folder_ino = (await tree.lookup(pyfuse3.ROOT_INODE, b"walk", None)).st_ino
                await tree.opendir(folder_ino, None)
                for name in ("f0", "f1", "f2", "f3"):
                    async with trio.open_nursery() as reading:
                        # From f2 on, its lookup is out and held: the process opens it meanwhile.
                        reading.start_soon(read_whole, folder_ino, name)
                        await trio.testing.wait_all_tasks_blocked()
                        for event in held.values():
                            event.set()
                background.cancel_scope.cancel()

    trio.run(main)
    assert got == contents
    assert sorted(held) == [b"/walk/f2", b"/walk/f3"]

    def chunks_asked(path: bytes) -> list[int]:
        return [i for kind, p, indexes in asked if kind == "ReadChunks" and p == path for i in indexes]

    head = list(range(NEXT_FILE_HEAD))
    assert not set(chunks_asked(b"/walk/f2")) & set(head), asked  # all of its head from the lookup
    assert chunks_asked(b"/walk/f3")[:1] == [0] and not set(chunks_asked(b"/walk/f3")) & set(head[1:]), asked
    assert [p for kind, p, _ in asked if kind == "Lookup"].count(b"/walk/f2") == 1


def test_folders_the_process_lists_are_made_whole_when_quiet_but_not_with_a_big_file(tmp_path):
    """For the warm tree (run/fsfill.py): a listed folder whose files this side lacks are all
    small is asked for again with their content, and so is its `__pycache__`: then every file
    of both has its content here. A file too big to come with a listing is asked for alone
    (its hashes and its one chunk, in one Lookup); a folder lacking one bigger than
    FILL_FILE_MAX is left as it is: it could not be made whole so."""
    pyfuse3 = pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree

    client = tmp_path / "client"
    files = {
        "pkg/__init__.py": b"",
        "pkg/used.py": b"x = 1\n",
        "pkg/unused.py": b"y = 2\n" * 100,
        "pkg/py.typed": b"",
        "pkg/large.py": b"# a module bigger than a listing carries\n" * 4000,
        "pkg/__pycache__/used.cpython-311.pyc": os.urandom(3000),
        "pkg/__pycache__/unused.cpython-311.pyc": os.urandom(2000),
        "parent/__init__.py": b"",
        "parent/sub/__init__.py": b"",
        "big/__init__.py": b"",
        "big/data.bin": os.urandom(FILL_FILE_MAX + 1),
    }
    assert INLINE_MAX < len(files["pkg/large.py"]) <= FILL_FILE_MAX
    for rel, data in files.items():
        (client / rel).parent.mkdir(parents=True, exist_ok=True)
        (client / rel).write_bytes(data)
    server = FileServer(client)
    asked: list[tuple] = []

    async def fetch(request):
        asked.append((type(request).__name__, request.path, getattr(request, "content", None)))
        return server.handle(request)

    store = ContentStore(tmp_path / "store", 1 << 30)
    tree = ClientTree(fetch, store, kept=KeptListings(store))
    tree.filler.budget = FILL_RUN_BYTES

    async def main():
        async with trio.open_nursery() as background:
            tree.contents.background = background
            for name in (b"pkg", b"parent", b"big"):  # the process lists each (nothing fetched: quiet)
                await tree.opendir((await tree.lookup(pyfuse3.ROOT_INODE, name, None)).st_ino, None)
            # The fills verify and store in threads: wait for them (as a run's end does).
            assert await tree.contents.finish(10)
            background.cancel_scope.cancel()

    trio.run(main)
    content_asks = [(kind, path) for kind, path, content in asked if content]
    assert sorted(content_asks) == [
        ("Lookup", b"/pkg/large.py"),  # its hashes with its one chunk
        ("ReadDir", b"/parent"),
        ("ReadDir", b"/pkg"),
        ("ReadDir", b"/pkg/__pycache__"),
    ]
    assert not any(kind == "ReadChunks" for kind, _, _ in asked)
    assert not any(path.startswith(b"/big/") for _, path, _ in asked)  # nothing asked of it
    assert tree.filler.filled == 2  # the __pycache__ came whole with its listing (asked with content)
    for rel, data in files.items():
        if rel.startswith(("pkg/", "parent/__init__")):
            node = tree.nodes.by_ino[tree.nodes.by_path[b"/" + rel.encode()]]
            assert node.attr is not None and node.attr.chunks is not None, rel
            assert all(map(tree.contents.here_or_coming, node.attr.chunks)), rel
            assert b"".join(store.get(c) or b"" for c in node.attr.chunks) == data, rel


def test_a_cold_appliance_gets_a_pycache_folder_with_its_content_in_one_request_ahead(tmp_path):
    pyfuse3 = pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree

    cache = tmp_path / "client" / "pkg" / "__pycache__"
    cache.mkdir(parents=True)
    modules = {f"m{i}.cpython-311.pyc": os.urandom(1000 + 500 * i) for i in range(6)}
    for name, data in modules.items():
        (cache / name).write_bytes(data)
        (cache.parent / name.replace(".cpython-311.pyc", ".py")).write_text("# source\n")
    server = FileServer(tmp_path / "client")
    for name in modules:  # hashed by earlier runs (the client's hash cache), sent to another appliance
        server.handle(Lookup(path=b"/pkg/__pycache__/" + name.encode(), content=True))
    server.delivered.clear()
    asked: list[tuple] = []

    async def fetch(request):
        asked.append((type(request).__name__, request.path, getattr(request, "content", None)))
        return server.handle(request)

    store = ContentStore(tmp_path / "store", 1 << 30)
    kept = KeptListings(store)
    tree = ClientTree(fetch, store, kept=kept)

    async def main():  # as Python imports: the package's folder listed, then each module's
        # bytecode looked up and read, its folder not listed
        async with trio.open_nursery() as background:
            tree.contents.background = background
            pkg = (await tree.lookup(pyfuse3.ROOT_INODE, b"pkg", None)).st_ino
            await tree.opendir(pkg, None)
            await trio.testing.wait_all_tasks_blocked()
            listed_ahead = list(asked)  # the __pycache__ asked for beside the package's listing
            folder = (await tree.lookup(pkg, b"__pycache__", None)).st_ino
            for name, data in modules.items():
                entry = await tree.lookup(folder, name.encode(), None)
                fh = (await tree.open(entry.st_ino, os.O_RDONLY, None)).fh
                assert await tree.read(fh, 0, 1 << 16) == data
            background.cancel_scope.cancel()
        assert listed_ahead == asked

    trio.run(main)
    # The package folder listed plainly, its __pycache__ with content: nothing asked per module.
    assert asked == [
        ("Lookup", b"/", False),
        ("ReadDir", b"/", False),
        ("ReadDir", b"/pkg", False),
        ("ReadDir", b"/pkg/__pycache__", True),
    ]
    assert all(store.get(chunk_hash(data)) == data for data in modules.values())
    # The listing kept for the next runs holds the modules' hashes, not their content.
    entries = kept.load(b"/pkg/__pycache__")
    assert {e.name.decode() for e in entries} == set(modules)
    assert all(e.attr.data is None and e.attr.chunks for e in entries)


def test_a_folder_whose_small_files_are_opened_one_after_another_comes_with_more_content_each_time(
    tmp_path, monkeypatch
):
    pyfuse3 = pytest.importorskip("pyfuse3")
    import trio

    from radium.remoting.run import files, fs
    from radium.remoting.run.fs import ClientTree

    monkeypatch.setattr(files, "LISTING_CONTENT_MAX", 40_000)
    monkeypatch.setattr(files, "LISTING_CONTENT_MOST", 320_000)
    monkeypatch.setattr(fs, "LISTING_CONTENT_MAX", 40_000)
    monkeypatch.setattr(fs, "LISTING_CONTENT_MOST", 320_000)
    folder = tmp_path / "client" / "lib"
    folder.mkdir(parents=True)
    modules = {f"m{i:02}.py": os.urandom(20_000) for i in range(24)}
    for name, data in modules.items():
        (folder / name).write_bytes(data)
    server = FileServer(tmp_path / "client")
    asked: list[tuple[bytes, int]] = []

    async def fetch(request):
        if isinstance(request, ReadDir) and request.content:
            asked.append((request.first, request.budget))
        return server.handle(request)

    store = ContentStore(tmp_path / "store", 1 << 30)
    tree = ClientTree(fetch, store)

    async def main():  # the folder listed, then each file opened and read, one after another
        lib = (await tree.lookup(pyfuse3.ROOT_INODE, b"lib", None)).st_ino
        await tree.opendir(lib, None)
        for name, data in modules.items():
            entry = await tree.lookup(lib, name.encode(), None)
            fh = (await tree.open(entry.st_ino, os.O_RDONLY, None)).fh
            assert await tree.read(fh, 0, 1 << 16) == data

    trio.run(main)
    # 2 files' worth, then 4, 8, 16 (the file being opened first each time): 4 requests, not 12.
    assert [budget for _, budget in asked] == [40_000, 80_000, 160_000, 320_000]
    assert asked[0][0] == b"m00.py" and len({first for first, _ in asked}) == 4
    assert len(server.delivered) == len(modules)


def _library(tmp_path: Path, chunks: int = 6) -> tuple[bytes, FileServer]:
    """A client tree holding `lib.so` of `chunks` random chunks, and its file server."""
    client = tmp_path / "client"
    client.mkdir()
    (client / "lib.so").write_bytes(data := os.urandom(chunks * CHUNK_SIZE))
    return data, FileServer(client)


async def _opened(tree, name: bytes) -> int:
    """Look a file of the root up and open it, as the process does; its inode."""
    import pyfuse3

    ino = (await tree.lookup(pyfuse3.ROOT_INODE, name, None)).st_ino
    await tree.open(ino, os.O_RDONLY, None)
    return ino


def test_a_file_read_in_part_is_completed_once_the_process_has_been_quiet_for_a_while(tmp_path):
    """Quiet: no file operation of the process, nor fetch for its readers, for COMPLETE_QUIET_S. A
    completion's chunks in flight would delay the replies to its lookups and listings."""
    pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree
    from radium.remoting.run.fscontent import COMPLETE_QUIET_S

    _, server = _library(tmp_path)
    (tmp_path / "client" / "data.bin").write_bytes(os.urandom(8 * CHUNK_SIZE))
    (tmp_path / "client" / "module.pyc").write_bytes(os.urandom(300_000))  # comes with its lookup
    asked: list[tuple[float, bytes, tuple]] = []  # (trio's clock, path, chunks)

    async def fetch(request):
        if isinstance(request, ReadChunks):
            asked.append((trio.current_time(), request.path, tuple(request.indexes)))
        return server.handle(request)

    tree = ClientTree(fetch, ContentStore(tmp_path / "store", 1 << 30), batch_chunks=2, ahead_chunks=2)
    clock = trio.testing.MockClock()  # moves only when told
    early = []

    async def main():
        async with trio.open_nursery() as background:  # left when the completion is done
            tree.contents.background = background
            lib = await _opened(tree, b"lib.so")
            data = await _opened(tree, b"data.bin")
            await tree.read(lib, 3 * CHUNK_SIZE, 4096)  # out of order, as the loader maps it
            for off in range(0, 8 * CHUNK_SIZE, CHUNK_SIZE):  # and a reader fetching
                await tree.read(data, off, CHUNK_SIZE)
            clock.jump(COMPLETE_QUIET_S / 2)
            await trio.testing.wait_all_tasks_blocked()
            early.extend(req for req in asked if req[1] == b"/lib.so" and req[2] != (3,))
            # A module opened now brings its content with its lookup (no ReadChunks): the
            # quiet is counted again from its operations.
            await _opened(tree, b"module.pyc")
            clock.jump(COMPLETE_QUIET_S * 3 / 4)
            await trio.testing.wait_all_tasks_blocked()
            early.extend(req for req in asked if req[1] == b"/lib.so" and req[2] != (3,))
            # An operation that asks the client nothing is the process at work all the same.
            await tree.getattr(data, None)
            clock.jump(COMPLETE_QUIET_S * 3 / 4)
            await trio.testing.wait_all_tasks_blocked()
            early.extend(req for req in asked if req[1] == b"/lib.so" and req[2] != (3,))
            clock.jump(COMPLETE_QUIET_S)

    trio.run(main, clock=clock)
    assert early == []  # not while the process read or looked at files, nor right after
    assert not any(path == b"/module.pyc" for _, path, _ in asked)
    completion = [(t, chunks) for t, path, chunks in asked if path == b"/lib.so" and chunks != (3,)]
    assert sorted(i for _, chunks in completion for i in chunks) == [0, 1, 2, 4, 5]  # then, whole
    assert all(t >= COMPLETE_QUIET_S * 2 for t, _ in completion)


@pytest.mark.parametrize("stuck", [False, True], ids=["done", "time_up"])
def test_at_the_process_exit_files_read_in_part_are_fetched_whole_at_once_for_a_while(tmp_path, stuck):
    pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree

    data, server = _library(tmp_path)
    asked: list[tuple[int, ...]] = []

    async def fetch(request):
        if isinstance(request, ReadChunks):
            asked.append(tuple(request.indexes))
            if stuck and request.indexes != [3]:
                await trio.sleep_forever()  # a client that no longer answers
        return server.handle(request)

    store = ContentStore(tmp_path / "store", 1 << 30)
    tree = ClientTree(fetch, store, batch_chunks=2, ahead_chunks=2)
    clock = trio.testing.MockClock()  # moves only when told: readers are never quiet for long enough
    result = []

    async def main():
        async with trio.open_nursery() as background:
            tree.contents.background = background
            lib = await _opened(tree, b"lib.so")
            await tree.read(lib, 3 * CHUNK_SIZE, 4096)  # out of order, as the loader maps it
            await trio.testing.wait_all_tasks_blocked()
            assert asked == [(3,)] and tree.contents.completing  # waiting for readers to be quiet
            if stuck:
                clock.autojump_threshold = 0  # time passes when everything waits: the limit comes
            started = trio.current_time()
            result.append(await tree.contents.finish(5.0))
            result.append(trio.current_time() - started)
            background.cancel_scope.cancel()

    trio.run(main, clock=clock)
    done, took = result
    if stuck:
        assert not done and took == pytest.approx(5.0)  # no longer than it was given
    else:
        assert done and took == 0  # at once: the clock never moved, so readers were never quiet
        assert sorted(i for c in asked for i in c) == [0, 1, 2, 3, 4, 5]
        assert all(store.get(chunk_hash(data[i : i + CHUNK_SIZE])) for i in range(0, len(data), CHUNK_SIZE))


@pytest.mark.parametrize("elf", [True, False], ids=["elf", "data"])
def test_a_library_the_loader_maps_starts_no_read_ahead(tmp_path, elf):
    """The loader reads an ELF file's header, then faults its pages in here and there, and two
    faults side by side look like a sequential reader. Such a file (told by its first bytes)
    starts no read-ahead: a cold `import torch` fetched ~170 MiB ahead of its faults, its
    lookups waiting behind them. Any other file read so is read ahead."""
    pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree

    client = tmp_path / "client"
    client.mkdir()
    data = (b"\x7fELF" if elf else b"\x7fELE") + os.urandom(12 * CHUNK_SIZE - 4)
    (client / "lib.so").write_bytes(data)
    server = FileServer(client)
    fetched: set[int] = set()

    async def fetch(request):
        if isinstance(request, ReadChunks):
            fetched.update(request.indexes)
        return server.handle(request)

    tree = ClientTree(fetch, ContentStore(tmp_path / "store", 1 << 30), batch_chunks=2, ahead_chunks=4)

    async def main():
        async with trio.open_nursery() as background:
            tree.contents.background = background
            lib = await _opened(tree, b"lib.so")
            assert await tree.read(lib, 0, 832) == data[:832]  # the header
            for off in (5 * CHUNK_SIZE, 6 * CHUNK_SIZE):  # two faults' read-arounds side by side
                assert await tree.read(lib, off, CHUNK_SIZE) == data[off : off + CHUNK_SIZE]
            await trio.testing.wait_all_tasks_blocked()  # what was asked for ahead has come
            background.cancel_scope.cancel()  # the completion of the file, waiting for quiet

    trio.run(main, clock=trio.testing.MockClock())  # moves only when told: never quiet
    if elf:
        assert fetched == {0, 5, 6, 7}  # what the reads asked for (the last one's run of two)
    else:
        assert {1, 2, 3, 4, 7, 8, 9, 10} <= fetched  # ahead of the header's read and of the second fault


def test_a_file_of_up_to_a_chunk_opened_cold_comes_whole_with_its_lookup(tmp_path):
    """Opening a module bigger than a listing carries (64 KiB-1 MiB: ~100 bytecode files of a
    cold `import torch`) costs one round trip: the Lookup that hashes it brings its chunk.
    Bigger files, and those whose chunk the appliance is believed to hold, come without."""
    pytest.importorskip("pyfuse3")
    import trio

    from radium.remoting.run.fs import ClientTree

    client = tmp_path / "client"
    client.mkdir()
    module, big = os.urandom(300_000), os.urandom(CHUNK_SIZE + 1)
    (client / "module.pyc").write_bytes(module)
    (client / "big.bin").write_bytes(big)
    server = FileServer(client)
    asked: list[str] = []

    async def fetch(request):
        asked.append(f"{type(request).__name__} {os.fsdecode(request.path)}")
        return server.handle(request)

    store = ContentStore(tmp_path / "store", 1 << 30)
    tree = ClientTree(fetch, store)
    tree.contents.complete_budget = 0

    async def read_whole(name: bytes, size: int) -> bytes:
        fh = await _opened(tree, name)
        return await tree.read(fh, 0, size)

    async def main():
        assert await read_whole(b"module.pyc", len(module)) == module
        assert [a for a in asked if "module" in a] == ["Lookup /module.pyc"]
        assert await read_whole(b"big.bin", CHUNK_SIZE) == big[:CHUNK_SIZE]
        assert [a for a in asked if "big" in a] == ["Lookup /big.bin", "ReadChunks /big.bin"]

    trio.run(main)
    digest = chunk_hash(module)
    assert store.get(digest) == module  # stored as a chunk fetched by a read would be
    # The client believes the appliance holds it now: a second lookup carries only its hashes.
    again = server.handle(Lookup(path=b"/module.pyc", content=True))
    assert isinstance(again, Attr) and again.chunks == [digest] and again.data is None


def test_a_read_out_of_order_across_two_chunks_asks_for_both_at_once(tmp_path):
    pytest.importorskip("pyfuse3")
    import trio
    import trio.testing

    from radium.remoting.run.fs import ClientTree

    data, server = _library(tmp_path)
    asked: list[tuple[int, ...]] = []
    flying = [0, 0]  # requests in flight now, the most at once

    async def fetch(request):
        if isinstance(request, ReadChunks):
            asked.append(tuple(request.indexes))
        flying[0] += 1
        flying[1] = max(flying)
        await trio.testing.wait_all_tasks_blocked()  # the others' requests are sent meanwhile
        flying[0] -= 1
        return server.handle(request)

    tree = ClientTree(fetch, ContentStore(tmp_path / "store", 1 << 30), batch_chunks=2, ahead_chunks=2)
    tree.contents.complete_budget = 0  # not the completion of the rest (its own test)
    got = []

    async def main():
        async with trio.open_nursery() as background:
            tree.contents.background = background
            lib = await _opened(tree, b"lib.so")
            flying[1] = 0
            # A page fault's read-around: 1 MiB from the middle of chunk 3, out of order.
            got.append(await tree.read(lib, 3 * CHUNK_SIZE + CHUNK_SIZE // 2, CHUNK_SIZE))

    trio.run(main)
    assert got == [data[3 * CHUNK_SIZE + CHUNK_SIZE // 2 : 4 * CHUNK_SIZE + CHUNK_SIZE // 2]]
    assert sorted(asked) == [(3,), (4,)]  # each alone, so that the client and the link pipeline them
    assert flying[1] == 2  # in flight together, not one after the other
    assert tree.cache_counts() == (0, 2)  # two pieces, both fetched
