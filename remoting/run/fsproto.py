"""The file protocol between the appliance (asking) and the client (answering).

The appliance presents the client's whole file system to a carried process and
asks for what the process touches; the client answers from its real file system.
Every request has exactly one reply: the reply named beside it, or `FsError`.

    Lookup(path)            -> Attr          lstat semantics; hashes and small data for files
    ReadDir(path)           -> DirListing    every entry with its attributes: one round trip
    ReadLink(path)          -> LinkTarget
    ReadChunks(path, idxs)  -> Chunks        content of whole chunks, in the order asked
    Prefetch(paths)         -> Tree          listings of whole trees (and their ancestors)

Paths are absolute *client* paths as bytes: Linux names are bytes, not text, and a
file whose name is not UTF-8 must still be reachable.  Every path is checked with
`check_path` by both ends.

Content is cut in chunks of `CHUNK_SIZE`; a chunk is named by its BLAKE3 digest
(32 raw bytes), so the appliance can tell from the hashes alone which content it
already holds.  Files up to `INLINE_MAX` bytes travel whole inside `Attr.data`
in listings, and up to `LOOKUP_INLINE_MAX` when looked up with their content, so opening
one costs no further round trip.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterator, Sequence
from typing import Annotated

import blake3
import msgspec

from radium.remoting._errors import ProtocolError

CHUNK_SIZE = 1 << 20  # 1 MiB: big enough that one round trip moves a lot, small enough to dedupe
INLINE_MAX = 64 * 1024  # files up to this size come whole with their attributes
# A file looked up with its content (Lookup.content: the process opens it) comes whole up to
# one chunk: opening a module of 64 KiB-1 MiB (a cold `import torch` opens ~100 such bytecode
# files) costs one round trip, not a Lookup and then a ReadChunks.
LOOKUP_INLINE_MAX = CHUNK_SIZE
# A directory's listing asked with its content (ReadDir.content) carries its small files' hashes,
# and the content of those the appliance lacks, up to this many bytes: reading a folder of small
# files costs a round trip for the folder, not one per file.
LISTING_CONTENT_MAX = 512 * 1024
# A folder asked for again with content (its files opened one after another) gets a bigger
# budget each time (`ReadDir.budget`), up to this (a reply travels in frames of its own, relayed
# or direct, which may carry up to 80 MiB).
LISTING_CONTENT_MOST = 8 * LISTING_CONTENT_MAX
MAX_CHUNKS_PER_REQUEST = 64  # bounds one reply at 64 MiB
PATH_MAX = 4096  # Linux's limit for a whole path
NAME_MAX = 255  # and for one component


class BadPath(ProtocolError):
    """A path in a file request is not absolute, not normalised, or contains `..` or NUL."""

    code = "bad-path"


def check_path(path: bytes | str) -> bytes:
    """Return `path` as bytes if it is a valid absolute client path, else raise `BadPath`.

    Valid means: absolute, normalised (no empty, `.` or `..` components, no
    trailing slash except for the root itself), free of NUL, within Linux's
    length limits.  A `str` is encoded as the file system would (surrogateescape).
    """
    if isinstance(path, str):
        path = os.fsencode(path)
    if not isinstance(path, bytes):
        raise BadPath(f"path must be bytes, not {type(path).__name__}")
    if b"\0" in path:
        raise BadPath(f"path contains NUL: {path!r}")
    if not path.startswith(b"/"):
        raise BadPath(f"path is not absolute: {path!r}")
    if len(path) > PATH_MAX:
        raise BadPath(f"path longer than {PATH_MAX} bytes")
    if path == b"/":
        return path
    for part in path[1:].split(b"/"):
        if part in (b"", b".", b".."):
            raise BadPath(f"path is not normalised (empty, '.' or '..' component): {path!r}")
        if len(part) > NAME_MAX:
            raise BadPath(f"path component longer than {NAME_MAX} bytes: {path!r}")
    return path


def join(parent: bytes, name: bytes) -> bytes:
    """The client path of `name` inside directory `parent` (both already valid)."""
    return parent + name if parent == b"/" else parent + b"/" + name


def ancestors(path: bytes) -> Iterator[bytes]:
    """The strict ancestors of a valid client path, nearest first."""
    while path != b"/":
        path = path[: path.rindex(b"/")] or b"/"
        yield path


def chunk_hash(data: bytes) -> bytes:
    """The name of a chunk: its BLAKE3 digest, 32 raw bytes."""
    return blake3.blake3(data).digest()


def chunk_count(size: int) -> int:
    """How many chunks a file of `size` bytes has (an empty file has none)."""
    return (size + CHUNK_SIZE - 1) // CHUNK_SIZE


class FsMessage(msgspec.Struct, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    """Base of every file-protocol message."""


# --- requests (appliance -> client) -------------------------------------------


class Lookup(FsMessage, tag="fs-lookup"):
    """Attributes of one path, without following a final symlink.

    With `content` (the default), a regular file's reply carries its chunk hashes
    and, when small, its data; without it only the metadata (cheap for big files
    that are only stat'ed).
    """

    path: bytes
    content: bool = True
    # With `content`: the first `head` chunks of a regular file too big to come inline come
    # with the reply (`Headed`), as frames after it. The appliance asks so for the file it
    # expects a process to read next, so that the content follows the hashes on the channel
    # instead of being asked for when they arrive (a round trip per file of a folder read in turn).
    head: Annotated[int, msgspec.Meta(ge=0)] = 0


class ReadDir(FsMessage, tag="fs-readdir"):
    """The entries of a directory with their attributes (no `.` or `..`).

    `known` is the `listing_digest` of the listing the appliance kept from an earlier
    run; if the directory still matches it, the reply is an empty listing marked
    `unchanged`, and the appliance uses what it kept.  With `content`, the small files whose
    content the appliance is not believed to hold come with their hashes and content
    (`LISTING_CONTENT_MAX`: the file named `first`, then the smallest; optimised bytecode,
    `*.opt-1.pyc`/`*.opt-2.pyc`, which only `python -O` reads, last): the appliance asks so
    when a process opens small files of a folder one after another (`first`: the one it
    opens), and at once for a `__pycache__` folder.  `budget`: content bytes asked for (0:
    LISTING_CONTENT_MAX; at most LISTING_CONTENT_MOST).
    """

    path: bytes
    content: bool = False
    known: bytes | None = None
    first: bytes = b""
    budget: int = 0


class ReadLink(FsMessage, tag="fs-readlink"):
    path: bytes


class ReadChunks(FsMessage, tag="fs-read-chunks"):
    """Content of chunks `indexes` (ascending, at most MAX_CHUNKS_PER_REQUEST) of a regular file."""

    path: bytes
    indexes: list[int]
    framed: bool = False  # the content may come as frames of its own after the reply (see Chunks)


class Prefetch(FsMessage, tag="fs-prefetch"):
    """Listings of whole trees, sent ahead so that start-up pays no round trip per directory.

    The reply holds the listing of every directory under each path (not crossing
    into hidden mounts) and of each ancestor of each path, then of every other
    directory named in `known` (rechecked alone, not walked), up to `max_entries`
    entries in all.  A directory in `known` that still matches its digest is
    answered `unchanged`, with no entries.
    """

    paths: list[bytes]
    max_entries: int = 100_000
    known: dict[bytes, bytes] = {}  # path -> listing_digest kept by the appliance, as in ReadDir


# --- replies (client -> appliance) ---------------------------------------------


class FsReplyMessage(FsMessage, array_like=True):
    """Base of replies: encoded as arrays (tag first), since a listing holds thousands of `Attr`.

    Fields may only ever be added at the end, with defaults.
    """


class Attr(FsReplyMessage, tag="fs-attr"):
    """What lstat says about one path, plus what it takes to read it without asking again.

    - `chunks`: for a regular file, the BLAKE3 digest of each CHUNK_SIZE piece;
      None when the sender has not hashed it (listings only carry hashes already
      known) or could not read it.
    - `data`: a small regular file's whole content (Lookup with content only).
    - `target`: a symlink's target, so that readlink costs no round trip.
    """

    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    ino: int  # the client's inode number: only for telling files apart; the appliance numbers its own
    dev: int  # the client's st_dev, same use
    rdev: int = 0
    chunks: list[bytes] | None = None
    data: bytes | None = None
    target: bytes | None = None


class DirEntry(msgspec.Struct, kw_only=True, array_like=True, forbid_unknown_fields=True):
    name: bytes
    attr: Attr


class DirListing(FsReplyMessage, tag="fs-listing"):
    path: bytes
    entries: list[DirEntry]
    digest: bytes | None = None  # listing_digest(entries)
    unchanged: bool = False  # entries omitted: the appliance's kept listing with this digest holds


_digest_encoder = msgspec.msgpack.Encoder()


def listing_digest(entries: list[DirEntry]) -> bytes:
    """What identifies a directory's state: names and attributes, not access times or hashes.

    Reading files changes their access times and lets the client learn their hashes;
    neither makes a kept listing wrong, so neither changes the digest.
    """
    shape = [
        (
            e.name,
            a.mode,
            a.uid,
            a.gid,
            a.size,
            a.mtime_ns,
            a.ctime_ns,
            a.nlink,
            a.ino,
            a.dev,
            a.rdev,
            a.target,
        )
        for e in entries
        for a in (e.attr,)
    ]
    return shape_digest(shape)


def shape_digest(shape: list[tuple]) -> bytes:
    """The digest of a listing's shape: per entry, the tuple `listing_digest` makes of it."""
    return blake3.blake3(_digest_encoder.encode(shape)).digest()


class LinkTarget(FsReplyMessage, tag="fs-link"):
    target: bytes


class Chunks(FsReplyMessage, tag="fs-chunks"):
    """Content of the chunks asked for, in the same order; the last chunk of a file may be short.

    Asked with `framed`, the client sends `data` empty and the content as `framed` frames
    after this one (`reply_frames`): no copy of it into the message on either end."""

    data: list[bytes]
    framed: int = 0


class Headed(FsReplyMessage, tag="fs-headed"):
    """A `Lookup`'s reply with the first chunks of the file (`Lookup.head`): its attributes,
    then the content as `framed` frames after this one, as `Chunks` asked with `framed`."""

    attr: Attr
    data: list[bytes]
    framed: int = 0


class Tree(FsReplyMessage, tag="fs-tree"):
    listings: list[DirListing]
    truncated: bool = False  # max_entries was reached: the rest is fetched on demand
    root: Attr | None = None  # the attributes of "/" itself (no listing carries them)


class FsError(FsReplyMessage, tag="fs-error"):
    """The request failed on the client with this errno (ENOENT, EACCES, ...)."""

    errno: int
    message: str = ""

    @classmethod
    def from_os(cls, exc: OSError) -> FsError:
        """The FsError for an OSError raised while answering."""
        code = exc.errno if exc.errno else _errno.EIO
        return cls(errno=code, message=exc.strerror or os.strerror(code))


FsRequest = Lookup | ReadDir | ReadLink | ReadChunks | Prefetch
FsReply = Attr | DirListing | LinkTarget | Chunks | Headed | Tree | FsError


class ChunksView(Chunks, tag="fs-chunks"):
    """`Chunks` as the appliance decodes it: each chunk a view into the received buffer,
    not a copy (4 MiB of copies per reply cost more than everything else done with them)."""

    data: list[memoryview]  # type: ignore[assignment]


class HeadedView(Headed, tag="fs-headed"):
    """`Headed` as the appliance decodes it: each chunk a view into the received buffer."""

    data: list[memoryview]  # type: ignore[assignment]


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(FsRequest)
_reply_decoder = msgspec.msgpack.Decoder(
    Attr | DirListing | LinkTarget | ChunksView | HeadedView | Tree | FsError
)


def encode(message: FsMessage) -> bytes:
    """A request or reply as msgpack."""
    return _encoder.encode(message)


def reply_frames(request: FsRequest, reply: FsReply) -> list[bytes]:
    """The frames that carry `reply` to `request`: chunk content in frames of its own when asked so."""
    if isinstance(request, ReadChunks) and request.framed and type(reply) is Chunks and reply.data:
        return [encode(Chunks(data=[], framed=len(reply.data))), *reply.data]
    if isinstance(request, Lookup) and type(reply) is Headed:
        return [encode(Headed(attr=reply.attr, data=[], framed=len(reply.data))), *reply.data]
    return [encode(reply)]


def decode_reply_frames(frames: Sequence[bytes | bytearray | memoryview]) -> FsReply:
    """Decode a reply and the frames of content that follow it; `ProtocolError` when malformed."""
    reply = decode_reply(frames[0])
    if isinstance(reply, ChunksView) and reply.framed or isinstance(reply, HeadedView):
        if reply.data or len(frames) != 1 + reply.framed:
            raise ProtocolError(f"malformed file reply: {len(frames) - 1} frames for {reply.framed} chunks")
        reply.data = [memoryview(f) for f in frames[1:]]
    return reply


def decode_request(buf: bytes | memoryview) -> FsRequest:
    """Decode one request; raise `ProtocolError` when it is malformed (paths are not checked here)."""
    try:
        return _request_decoder.decode(buf)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed file request: {exc}") from None


def decode_reply(buf: bytes | bytearray | memoryview) -> FsReply:
    """Decode one reply; raise `ProtocolError` when it is malformed."""
    try:
        return _reply_decoder.decode(buf)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed file reply: {exc}") from None
