"""A client's warm tree: the files its earlier runs read, as real files beneath the overlay.

Through FUSE every lookup, open and read of a run is a request answered in Python
(~70 µs each), and the kernel forgets them all with the run's mount: a warm
`import torch` cost 5,000 of them, 0.7 s over local.  So the files a client's runs
have read (content in the store, chunk hashes known) are also laid out as a real
tree, `<warm_dir>/<client>/tree/<client path>`, owned on disk by the client's own
ids, and mounted for each run as the overlay's upper lower layer: idmapped onto the
run's id slot, read-only, above the FUSE tree (`lowerdir=warm:fuse`).  The kernel
serves what it holds, its page cache survives the run, and FUSE answers the rest.

It must never show what the client no longer has.  Each folder in it was made
from a listing of the client's (its digest kept here); every run's first request
rechecks all of them (`Prefetch.known`), and before the overlay is mounted each
folder whose listing changed is brought in line with the new one (entries gone or
changed are removed, a folder's own attributes updated), and a folder the client
could not vouch for is removed whole.  A folder holding every entry of its
listing (its subfolders at least as folders) is marked opaque, so that the overlay
never asks FUSE about its entries, and each of its subfolders gets a redirect to its
own path (`trusted.overlay.redirect`, which overlayfs follows into the layers below):
one that is not complete itself is still merged with FUSE's.  Names a run looked up
in vain in a folder whose listing it had (Python's and ld.so's probes) are laid out as
whiteouts, so that the overlay stops at them too; a listing that later has such a name
removes its whiteout.

Runs of one client share it: a run uses it under a shared lock, and changes it
(pruning at its start, adding what it read when it ends) only under an exclusive
one, which it takes only when no other run holds the tree; a run that cannot have
the tree as it needs it goes without (FUSE serves everything, as before).  A
`busy` mark is made before any change and removed after the index is saved: a tree
found marked (a crash mid-change) is not used, and is discarded by the next run that
may change it.  What a run adds is bounded by the client's `limit` and by `BUDGET`
seconds; a full disk stops it, leaving what was complete.  A file of several chunks is
written aside (`<warm_dir>/<client>/partial/`) and renamed into the tree whole; one the
budget cuts short (`OVERRUN` past it: a big library on a slow disk, a dataset) stays
aside, and the next run's end goes on from where it stopped, so that no run's end holds
the client's next run for a big file's copy.  The copy aside counts against the limit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TypeVar

import blake3
import msgspec

from .._keys import write_atomic
from .fscontent import Contents
from .fsnodes import Node, NodeTable
from .fsproto import CHUNK_SIZE, Attr, DirEntry

log = logging.getLogger(__name__)

OPAQUE = "trusted.overlay.opaque"
REDIRECT = "trusted.overlay.redirect"  # an absolute one: the same path in the layers below
# Seconds a run may spend adding to its client's tree after it ended (the client's next run
# waits for it): a big tree (a dataset read once) is laid out over several runs' ends.
BUDGET = 1.0
# Seconds past BUDGET a file being copied may take before it is set aside for the next run's
# end (the client's next run waits up to 2 s): one that nearly fits is finished now.
OVERRUN = 0.5
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # a tree file, or one aside
WHITEOUTS = 256  # the most names one folder of the tree marks absent
Identity = tuple[int, int, int, int, int, int, int, int]
T = TypeVar("T")
EntriesOf = Callable[[bytes], "list[DirEntry] | None"]


def identity(a: Attr) -> Identity:
    """What a file in the warm tree must still be on the client for its copy to stand."""
    return (a.mode, a.uid, a.gid, a.size, a.mtime_ns, a.ctime_ns, a.ino, a.dev)


class _Dir(msgspec.Struct, array_like=True):
    mode: int  # the folder's own attributes, as its parent's listing gave them
    uid: int
    gid: int
    mtime_ns: int
    files: dict[bytes, Identity] = {}  # the files and symlinks copied here, as the client described them
    complete: bool = False  # every entry of its listing is here, subfolders complete: opaque
    absent: set[bytes] = set()  # whiteouts: names runs looked up in vain, not in its listing
    # An empty stand-in for a subfolder no run listed, so that its parent can be whole (and
    # opaque): not opaque itself and redirected to its own path, the overlay merges it with
    # FUSE's. It has no listing of its own (no digest) until a run lists it.
    placeholder: bool = False


class _Index(msgspec.Struct, array_like=True):
    generation: int = 0
    size: int = 0  # bytes of the files
    files: int = 0
    digests: dict[bytes, bytes] = {}  # folder -> digest of the listing its entries agree with
    detail: msgspec.Raw = msgspec.Raw(b"\x80")  # dict[bytes, _Dir], decoded only when needed


_encoder = msgspec.msgpack.Encoder()
_index_decoder = msgspec.msgpack.Decoder(_Index)
_detail_decoder = msgspec.msgpack.Decoder(dict[bytes, _Dir])


def _dir_attrs(a: Attr | _Dir) -> tuple[int, int, int, int]:
    return (a.mode, a.uid, a.gid, a.mtime_ns)


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"


def _below(path: bytes, folder: bytes) -> bool:
    return folder == b"/" or path == folder or path.startswith(folder + b"/")


def _aside_name(a: Attr) -> str:
    """The name of a file's copy aside (`WarmTree._aside`): its content's."""
    assert a.chunks is not None
    return blake3.blake3(b"".join(a.chunks)).hexdigest()


class WarmTree:
    """One client's warm tree in `folder`; `limit`: the most bytes of files it may hold."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.files = folder / "tree"
        self.partial = folder / "partial"  # a file being copied, the budget having cut it short
        self.limit = limit
        self._root = os.fsencode(self.files)
        self._fd: int | None = None
        self._held = 0  # fcntl.LOCK_SH or LOCK_EX while held
        self.index = _Index()
        self._detail: dict[bytes, _Dir] | None = None
        self.usable = False  # this run mounts it

    # --- locking and the index ---------------------------------------------------------

    def share(self) -> bool:
        """Take the shared lock (made on first use) and read the index; False while another run changes it."""
        if self._fd is None:
            self.folder.parent.mkdir(mode=0o700, exist_ok=True)
            self.folder.mkdir(mode=0o700, exist_ok=True)
            self.files.mkdir(mode=0o700, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.folder / "lock", flags, 0o600)
        if not self._lock(fcntl.LOCK_SH):
            return False
        self._load()
        return True

    def _lock(self, how: int) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            self._held = 0  # a conversion that fails may have dropped the lock held
            return False
        self._held = how
        return True

    def _exclusive(self) -> bool:
        """From shared to exclusive: only when no other run holds the tree."""
        if self._held == fcntl.LOCK_EX:
            return True
        self._unlock()
        return self._lock(fcntl.LOCK_EX)

    def _unlock(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._held = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # and the lock with it
            self._fd, self._held = None, 0

    def remove(self, still_due: Callable[[], bool], wait: float) -> bool:
        """Remove the whole tree (its client's enrolment was revoked) once no run holds it
        (waiting up to `wait` seconds) and `still_due()` says so under the lock; renamed
        aside first, so that nothing ever finds it half-removed.  False: left for later."""
        try:
            self._fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._fd = None  # never used by a run, or its lock gone with a crash: nothing holds it
        try:
            deadline = time.monotonic() + wait
            while self._fd is not None and not self._lock(fcntl.LOCK_EX):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            if not still_due():
                return False
            aside = self.folder.with_name(f".gone-{self.folder.name}-{os.getpid()}")
            os.rename(self.folder, aside)
        finally:
            self.close()
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def _busy(self) -> Path:
        return self.folder / "busy"

    def _load(self) -> None:
        try:
            self.index = _index_decoder.decode((self.folder / "index").read_bytes())
        except (OSError, msgspec.DecodeError):
            self.index = _Index()
        self._detail = None

    def _dirs(self) -> dict[bytes, _Dir]:
        if self._detail is None:
            try:
                self._detail = _detail_decoder.decode(self.index.detail)
            except msgspec.DecodeError:
                self._detail = {}
        return self._detail

    def _save(self) -> None:
        dirs = self._dirs()
        self.index.detail = msgspec.Raw(_encoder.encode(dirs))
        self.index.files = sum(len(d.files) for d in dirs.values())
        write_atomic(self.folder / "index", _encoder.encode(self.index), 0o600)

    def _where(self, path: bytes) -> bytes:
        return self._root if path == b"/" else self._root + path

    # --- a run's start -----------------------------------------------------------------

    def known(self) -> dict[bytes, bytes]:
        """The folders this tree holds, by the digest of the listing they agree with."""
        return dict(self.index.digests)

    def complete_files(self, most: int, first: bytes = b"/") -> list[bytes]:
        """Up to `most` paths of files in the tree's complete folders, which the overlay serves
        without asking FUSE: those below `first` (the run's working directory: its project)
        first, each part in the order they were laid out (parents first)."""
        out: list[bytes] = []
        dirs = self._dirs()
        ordered = sorted(dirs, key=lambda path: not _below(path, first))  # stable: laid-out order kept
        for path in ordered:
            d = dirs[path]
            if d.complete:
                base = b"" if path == b"/" else path
                out += [base + b"/" + name for name in d.files]
                if len(out) >= most:
                    break
        return out[:most]

    def holds(self, path: bytes) -> bool:
        """Whether client path `path`, its symlinks followed as the kernel would within the
        client's tree, names a regular file this tree holds: then the client has it (once reconciled,
        the tree agrees with the client). False says nothing: the tree holds only what runs read.
        Only lstat and readlink under the tree: nothing of the appliance's own is followed."""
        parts = deque(path.split(b"/"))
        at, hops = b"", 0
        while parts:
            name = parts.popleft()
            if name in (b"", b"."):
                continue
            if name == b"..":
                at = at[: at.rfind(b"/")]
                continue
            try:
                st = os.lstat(self._root + at + b"/" + name)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    target = os.readlink(self._root + at + b"/" + name)
                    if hops > 40 or not target:
                        return False
                    if target.startswith(b"/"):
                        at = b""
                    parts.extendleft(reversed(target.split(b"/")))
                    continue
            except OSError:
                return False
            at += b"/" + name
        return bool(at) and stat.S_ISREG(st.st_mode)  # not a whiteout (a device 0:0), nor a folder

    def reconcile(self, confirmed: dict[bytes, bytes], entries_of: EntriesOf) -> bool:
        """Make the tree agree with the client as this run's first request found it; whether
        this run may mount it.

        `confirmed`: folder -> digest of its listing now, as the client answered;
        `entries_of(folder)`: that listing's entries (None if not at hand)."""
        self.usable = False
        if self._busy().exists() and not self._exclusive():
            return False
        if self._busy().exists():
            self._discard()
        stale = [p for p, d in self.index.digests.items() if confirmed.get(p) != d]
        if stale:
            if not self._exclusive():
                return False  # another run holds it as it is: this one goes without
            generation = self.index.generation
            self._load()  # as it is now that nobody else may change it
            if self.index.generation != generation:
                stale = [p for p, d in self.index.digests.items() if confirmed.get(p) != d]
            self._change(lambda: self._prune_all(stale, confirmed, entries_of))
        if self._held == fcntl.LOCK_EX:
            generation = self.index.generation
            self._unlock()  # to shared: not atomic, so check nobody changed it
            if not self._lock(fcntl.LOCK_SH):
                return False
            self._load()
            if self.index.generation != generation or self._busy().exists():
                return False
        self.usable = True
        return True

    def _change(self, work: Callable[[], T]) -> T:
        """Run `work` (exclusive lock held) between the busy mark and the saved index."""
        self._busy().touch(mode=0o600)
        result = work()
        self.index.generation += 1
        self._save()
        self._busy().unlink()
        return result

    def _discard(self) -> None:
        """A change was cut short (the mark is there): start afresh."""
        log.warning("warm tree %s was left mid-change: discarding it", self.folder)
        shutil.rmtree(self.files, ignore_errors=True)
        self.files.mkdir(mode=0o700, exist_ok=True)
        self.index = _Index(generation=self.index.generation + 1)
        self._detail = {}
        self._save()
        self._busy().unlink()

    def _prune_all(self, stale: list[bytes], confirmed: dict[bytes, bytes], entries_of: EntriesOf) -> None:
        dirs = self._dirs()
        for path in sorted(stale):  # parents first: a removed parent takes its children
            if path not in self.index.digests:
                continue
            digest = confirmed.get(path)
            entries = entries_of(path) if digest is not None and path in dirs else None
            if digest is None or entries is None:
                self._remove_dir(path)
            else:
                self._prune(path, digest, {e.name: e.attr for e in entries})
        for path in [p for p in dirs if p not in self.index.digests and not dirs[p].placeholder]:
            self._remove_dir(path)  # an index at odds with itself

    def _prune(self, path: bytes, digest: bytes, listing: dict[bytes, Attr]) -> None:
        """Bring one folder in line with its listing now."""
        dirs = self._dirs()
        here = dirs[path]
        where = self._where(path)
        for name, ident in list(here.files.items()):
            a = listing.get(name)
            if a is None or identity(a) != ident:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(where, name))
                del here.files[name]
                self.index.size -= ident[3]
        for name in [n for n in here.absent if n in listing]:  # there now: its whiteout goes
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(where, name))
            here.absent.discard(name)
        for sub in [p for p in dirs if p != path and _parent(p) == path]:
            a = listing.get(sub.rsplit(b"/", 1)[1])
            if a is None or not stat.S_ISDIR(a.mode):
                self._remove_dir(sub)
            elif _dir_attrs(a) != _dir_attrs(dirs[sub]):
                self._set_dir(sub, a)
        self.index.digests[path] = digest
        here.placeholder = False  # listed now: a folder of its own
        self._incomplete(path)
        self._touch_dir(path)

    def _remove_dir(self, path: bytes) -> None:
        dirs = self._dirs()
        for p in [p for p in dirs if _below(p, path)]:
            self.index.size -= sum(ident[3] for ident in dirs[p].files.values())
            del dirs[p]
            self.index.digests.pop(p, None)
        if path == b"/":
            shutil.rmtree(self.files, ignore_errors=True)
            self.files.mkdir(mode=0o700, exist_ok=True)
        else:
            shutil.rmtree(self._where(path), ignore_errors=True)
            parent = _parent(path)
            self._incomplete(parent)
            self._touch_dir(parent)

    def _incomplete(self, path: bytes) -> None:
        """`path` lacks something now: neither it nor any folder above it is opaque."""
        dirs = self._dirs()
        while True:
            here = dirs.get(path)
            if here is not None and here.complete:
                here.complete = False
                with contextlib.suppress(OSError):
                    os.removexattr(self._where(path), OPAQUE)
            if path == b"/":
                return
            path = _parent(path)

    def _set_dir(self, path: bytes, a: Attr) -> None:
        here = self._dirs()[path]
        where = self._where(path)
        os.chown(where, a.uid, a.gid, follow_symlinks=False)
        os.chmod(where, stat.S_IMODE(a.mode), follow_symlinks=False)
        here.mode, here.uid, here.gid, here.mtime_ns = a.mode, a.uid, a.gid, a.mtime_ns
        self._touch_dir(path)

    def _touch_dir(self, path: bytes) -> None:
        """Set a folder's time back to the client's (changing its entries moved it)."""
        here = self._dirs().get(path)
        if here is not None and path != b"/":
            with contextlib.suppress(OSError):
                os.utime(self._where(path), ns=(here.mtime_ns, here.mtime_ns), follow_symlinks=False)

    # --- a run's end ----------------------------------------------------------------------

    def claim(self) -> bool:
        """Take the tree to add what this run read, before the run's end is reported: the
        client's next run then waits for it (a little) rather than going without it.  False
        while another run holds it (its own end will add what it read)."""
        return self._fd is not None and self._exclusive()

    def grow(
        self, nodes: NodeTable, contents: Contents, budget: float = BUDGET, later: Collection[int] = ()
    ) -> int:
        """With the tree claimed: add what this run knows and the tree lacks (its listed
        folders, their files whose content the store holds, their symlinks); return how many
        files were added. `later`: files the run only looked at, fetched to make their folders
        whole (fsfill.py), by inode: laid out after those it read."""
        if self._held != fcntl.LOCK_EX:
            return 0
        self._load()
        if self._busy().exists():
            self._discard()
        folders = self._folders(nodes)
        if not self._lacking(folders, nodes, contents):
            return 0
        deadline = time.monotonic() + budget
        return self._change(lambda: self._add(folders, nodes, contents, deadline, later))

    def _folders(self, nodes: NodeTable) -> list[Node]:
        """The run's listed folders that the tree may hold (their parents listed too), parents first."""
        out, todo = [], [nodes.root]
        while todo:
            node = todo.pop()
            if node.children is None or node.digest is None:
                continue
            out.append(node)
            for ino in node.children.values():
                child = nodes.by_ino[ino]
                if child.attr is not None and stat.S_ISDIR(child.attr.mode) and child.children is not None:
                    todo.append(child)
        return out

    def _wanted(self, child: Node, contents: Contents) -> bool:
        """Whether the tree should hold this entry: a symlink, or a file whose content the store
        has and this run's tenant sent (never another tenant's content, see tenants.py)."""
        a = child.attr
        if a is None:
            return False
        if stat.S_ISLNK(a.mode):
            return a.target is not None
        # A file with other hard links is copied alone: its link count shows as 1 (as a copy's).
        if not stat.S_ISREG(a.mode) or a.chunks is None:
            return False
        return all(contents.serves(c) and contents.store.has(c) for c in a.chunks)

    def _missing(self, node: Node, nodes: NodeTable, contents: Contents) -> Iterator[tuple[bytes, Attr, int]]:
        """The entries of a listed folder the tree should hold and does not, with their
        attributes and inode numbers."""
        here = self._dirs().get(node.path)
        assert node.children is not None
        for name, ino in node.children.items():
            child = nodes.by_ino[ino]
            if (here is None or name not in here.files) and self._wanted(child, contents):
                assert child.attr is not None  # _wanted: described
                yield name, child.attr, ino

    def _lacking(self, folders: list[Node], nodes: NodeTable, contents: Contents) -> bool:
        for node in folders:
            if node.path not in self._dirs() or self.index.digests.get(node.path) != node.digest:
                return True
            if any(
                self.index.size + a.size <= self.limit for _, a, _ in self._missing(node, nodes, contents)
            ):
                return True
            if self._unmarked(node):
                return True
            if self._stand_ins(node, nodes):
                return True
        return False

    def _stand_ins(self, node: Node, nodes: NodeTable) -> list[Node]:
        """The subfolders no run listed of a listed folder that holds every other entry: made
        as placeholders, they let it be whole. Empty while a file is missing (most folders), or
        a subfolder was listed but not made."""
        dirs = self._dirs()
        here = dirs.get(node.path)
        if here is None or here.complete or node.path == b"/" or node.children is None:
            return []
        out = []
        for name, ino in node.children.items():
            child = nodes.by_ino[ino]
            a = child.attr
            if a is not None and stat.S_ISDIR(a.mode):
                if child.path not in dirs:
                    if child.children is not None:
                        return []  # listed, yet not made: its own parent could not be
                    out.append(child)
            elif name not in here.files:
                return []
        return out

    def _unmarked(self, node: Node) -> list[bytes]:
        """Names the run looked up in vain in this folder that the tree has no whiteout for."""
        here = self._dirs().get(node.path)
        if here is None or here.complete or len(here.absent) >= WHITEOUTS:
            return []
        assert node.children is not None
        new = [n for n in node.absent - here.absent if n not in node.children and n not in here.files]
        return sorted(new)[: WHITEOUTS - len(here.absent)]

    def _whiteouts(self, folders: list[Node]) -> None:
        """Mark what the run looked up in vain as absent in the tree (an overlay whiteout: a
        character device 0:0), so that the next runs' lookups of it stop here, not in FUSE.
        Only in a folder whose listing this run had (the names are absent from it); a later
        listing with such a name removes its whiteout (`_prune`)."""
        dirs = self._dirs()
        for node in folders:
            if self.index.digests.get(node.path) != node.digest:
                continue
            for name in self._unmarked(node):
                os.mknod(os.path.join(self._where(node.path), name), stat.S_IFCHR, os.makedev(0, 0))
                dirs[node.path].absent.add(name)

    def _add(
        self,
        folders: list[Node],
        nodes: NodeTable,
        contents: Contents,
        deadline: float,
        later: Collection[int],
    ) -> int:
        """The folders first, then their lacking files smallest first (the most FUSE operations
        saved for the bytes written) within the limit, until the deadline: those the process
        looked up by name or opened before the others (a listed /usr/bin holds 700 symlinks it
        never used: on a slow disk they took the time of the libraries it read), and of those,
        the files it read before those it only looked at (`later`)."""
        dirs = self._dirs()
        added = 0
        touched: list[bytes] = []
        # not used (looked up or opened)?, only looked at (later)?, size, folder, name, attributes
        lacking: list[tuple[bool, bool, int, bytes, bytes, Attr]] = []
        try:
            for node in folders:
                assert node.children is not None and node.digest is not None
                path = node.path
                if path != b"/" and _parent(path) not in dirs:
                    continue  # its parent could not be made
                if path in dirs and self.index.digests.get(path) != node.digest:
                    listing = {n: nodes.by_ino[i].attr for n, i in node.children.items()}
                    self._prune(path, node.digest, {n: a for n, a in listing.items() if a is not None})
                if path not in dirs:
                    self._make_dir(node)
                touched.append(path)
                for name, a, ino in self._missing(node, nodes, contents):
                    lacking.append((not nodes.by_ino[ino].used, ino in later, a.size, path, name, a))
            lacking.sort(key=lambda item: item[:3])
            aside = self._aside_sizes()  # a copy cut short: its bytes count against the limit too
            for _, _, size, path, name, a in lacking:
                several = a.chunks is not None and len(a.chunks) > 1
                held = sum(aside.values())
                if held and several:
                    held -= aside.get(_aside_name(a), 0)  # its own copy, which goes on
                if self.index.size + held + size > self.limit:
                    continue  # a smaller one of a later group may fit
                if time.monotonic() > deadline:
                    break
                where = os.path.join(self._where(path), name)
                copied = self._copy(where, a, contents, deadline + OVERRUN)
                if copied is None:
                    break  # out of time mid-file: the next run's end goes on with it
                if several:
                    aside = {}  # what was aside is in the tree now, or was dropped (`_aside`)
                if copied:
                    dirs[path].files[name] = identity(a)
                    self.index.size += size
                    added += 1
            self._whiteouts(folders)
            for node in folders:
                if time.monotonic() > deadline:
                    break
                for child in self._stand_ins(node, nodes):  # node.path is in `touched` already
                    self._make_dir(child, stand_in=True)
        except OSError as exc:  # a full disk, most likely: what is complete stays
            log.warning("warm tree %s: stopped adding: %s", self.folder, exc)
        self._mark_complete(folders, nodes)
        for path in reversed(touched):  # children first: each change moved its parent's time
            self._touch_dir(path)
        return added

    def _make_dir(self, node: Node, stand_in: bool = False) -> None:
        """A listed folder, with its listing's digest; or an unlisted one's empty stand-in."""
        a = node.attr
        if node.path == b"/":
            self._dirs()[b"/"] = _Dir(mode=0o40755, uid=0, gid=0, mtime_ns=0)
        else:
            assert a is not None
            os.mkdir(self._where(node.path), 0o700)
            self._dirs()[node.path] = _Dir(a.mode, a.uid, a.gid, a.mtime_ns, placeholder=stand_in)
            self._set_dir(node.path, a)
        if not stand_in:
            assert node.digest is not None
            self.index.digests[node.path] = node.digest

    def _copy(self, where: bytes, a: Attr, contents: Contents, deadline: float) -> bool | None:
        """Lay one file (or symlink) out; False when its content is gone from the store, None
        when `deadline` came first (what was copied stays aside for the next run's end).

        A file of one chunk is written in place; a bigger one chunk by chunk into `partial/`
        (at least one chunk each time), then given its owner, mode and times and renamed into
        place, so that no run's end overruns its budget by much. Only one file is kept aside:
        another's copy in progress is dropped."""
        if stat.S_ISLNK(a.mode):
            assert a.target is not None
            os.symlink(a.target, where)
            os.chown(where, a.uid, a.gid, follow_symlinks=False)
            os.utime(where, ns=(a.atime_ns, a.mtime_ns), follow_symlinks=False)
            return True
        assert a.chunks is not None
        if len(a.chunks) <= 1:
            target, fd, written = where, os.open(where, _NEW_FILE | os.O_EXCL, 0o600), 0
        else:
            target, fd, written = self._aside(a)
        try:
            for i, digest in enumerate(a.chunks[written // CHUNK_SIZE :]):
                if i and time.monotonic() > deadline:
                    os.close(fd)
                    return None
                copied = contents.store.copy_into(digest, fd)
                if copied is None:
                    break
                written += copied
            if written != a.size:
                raise FileNotFoundError(errno.ENOENT, "a chunk is gone from the store")
            os.fchown(fd, a.uid, a.gid)
            os.fchmod(fd, stat.S_IMODE(a.mode))  # after chown, which clears set-id bits
            os.utime(fd, ns=(a.atime_ns, a.mtime_ns))
            if target != where:
                os.rename(target, where)
        except BaseException as exc:
            os.close(fd)
            os.unlink(target)
            if isinstance(exc, FileNotFoundError):
                return False
            raise
        os.close(fd)
        return True

    def _aside(self, a: Attr) -> tuple[bytes, int, int]:
        """Where a file of several chunks is copied before it goes into the tree (named by its
        content), opened at its end: the path, the descriptor and the bytes already there."""
        self.partial.mkdir(mode=0o700, exist_ok=True)
        name = _aside_name(a)
        for other in os.listdir(self.partial):
            if other != name:
                os.unlink(self.partial / other)
        path = os.fsencode(self.partial / name)
        fd = os.open(path, _NEW_FILE, 0o600)
        written = os.lseek(fd, 0, os.SEEK_END)
        if written % CHUNK_SIZE or written >= a.size:  # not as a cut-short copy leaves it
            os.ftruncate(fd, 0)
            written = os.lseek(fd, 0, os.SEEK_SET)
        return path, fd, written

    def _aside_sizes(self) -> dict[str, int]:
        """The copies aside (one at most), by name: their bytes so far."""
        try:
            with os.scandir(self.partial) as entries:
                return {e.name: e.stat(follow_symlinks=False).st_size for e in entries}
        except FileNotFoundError:
            return {}

    def _mark_complete(self, folders: list[Node], nodes: NodeTable) -> None:
        """Opaque: the folders this run listed that hold every entry, subfolders as folders
        (each redirected to its own path first, so that overlayfs still merges one that is
        not complete itself with FUSE's)."""
        dirs = self._dirs()
        for node in sorted(folders, key=lambda n: n.path.count(b"/"), reverse=True):
            here = dirs.get(node.path)
            if here is None or node.path == b"/" or self.index.digests.get(node.path) != node.digest:
                continue
            assert node.children is not None
            complete, subfolders = True, []
            for name, ino in node.children.items():
                child = nodes.by_ino[ino]
                if child.attr is not None and stat.S_ISDIR(child.attr.mode):
                    subfolders.append(child.path)
                    complete = child.path in dirs
                else:
                    complete = name in here.files
                if not complete:
                    break
            if complete and not here.complete:
                for path in subfolders:
                    os.setxattr(self._where(path), REDIRECT, path)
                os.setxattr(self._where(node.path), OPAQUE, b"y")
                here.complete = True
            elif not complete and here.complete:
                self._incomplete(node.path)
