"""The direct file channel: a run's file traffic between the client and its supervisor, past radiumd.

radiumd relays everything of a run between the client's CURVE connection and the
supervisor's Unix socket.  File content is nearly all of those bytes, and relaying it
cost radiumd's event loop a pass over each byte and CurveZMQ's cipher (XSalsa20-Poly1305,
~0.5 GB/s here, both ends on the same two cores) another two.  So the supervisor offers
the client a TCP connection of its own: it listens on a fresh port and sends `RunDirect`
(the port and a one-time 32-byte key) through radiumd, which carries it to the client
inside the CURVE session that authenticated the client.  Whoever connects must prove it
holds the key before anything is served; the file protocol then travels over it, sealed
with AES-256-GCM (several GB/s a core with AES-NI).  Nothing is ever sent unsealed.

Handshake (client C, supervisor S, K the run's key):

    C -> S   MAGIC, nc (16 random bytes)
    S -> C   ns (16 random bytes)
    both     k_cs | k_sc = HKDF-SHA256(K, salt = nc + ns, info = INFO), 64 bytes
    C -> S   sealed b"client"        S -> C   sealed b"supervisor"

Each side closes on a record that does not open.  A record is a u32 length (big-endian,
also the AES-GCM associated data), then the ciphertext and its tag; the nonce is the
direction's record counter.  Keys are fresh per connection (ns), one per direction, so a
recorded or reflected record never opens, and no nonce repeats under a key.

A message is a record holding [u64 id, u32 frame count] and the first frame, then one
record per further frame (file content: 1 MiB chunks, each sealed and sent uncopied).

The supervisor accepts connections until one completes the handshake (for
`ACCEPT_WAIT_S`), then closes its listener: the key opens one connection.  When the
channel fails (cut, reset, a record that does not open), the supervisor asks again
through radiumd whatever was in flight on it, and the run goes on over the relayed path.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import _threads

MAGIC = b"RADIUMD1"
INFO = b"radium direct file channel 1"
KEY_BYTES = 32
NONCE_BYTES = 16
TAG = 16
MAX_RECORD = (80 << 20) + TAG  # a ReadChunks reply's frames are 1 MiB each; its body is small
MAX_FRAMES = 128
HANDSHAKE_S = 5.0  # for a connection to prove it holds the key
ACCEPT_WAIT_S = 20.0  # for the client to connect at all; after that the run stays relayed
SEND_TIMEOUT_S = 30  # the supervisor's sends: a client that reads nothing that long loses the channel

# A record at least this big is opened into a buffer of its own, uninitialised and page-aligned
# (`uninitialised`); smaller ones into the bytes `AESGCM.decrypt` makes.
BIG_RECORD = 64 << 10
PAGE = 4096

_u32 = struct.Struct("!I")
_head = struct.Struct("!QI")

Frame = bytes | bytearray | memoryview

__all__ = ["ACCEPT_WAIT_S", "DirectError", "Link", "Offer", "connect"]


class DirectError(Exception):
    """The direct channel failed: closed, cut, or a record that did not open."""


def _keys(key: bytes, nc: bytes, ns: bytes) -> tuple[bytes, bytes]:
    both = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=nc + ns, info=INFO).derive(key)
    return both[:KEY_BYTES], both[KEY_BYTES:]


def _recv_exact_into(sock: socket.socket, buf: bytearray | memoryview) -> None:
    """Fill `buf` from the socket: in one system call where the socket blocks (MSG_WAITALL), so
    that a MiB costs one return to Python (one wait for the GIL), not one per segment batch."""
    view = memoryview(buf)
    have, n = 0, len(view)
    while have < n:
        try:
            got = sock.recv_into(view[have:], n - have, socket.MSG_WAITALL)
        except OSError as exc:  # a timeout too (the handshake's)
            raise DirectError(f"receive failed: {exc}") from None
        if not got:
            raise DirectError("closed by the other end")
        have += got


def _send(sock: socket.socket, data: memoryview) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:  # a timeout too: the other end stopped reading
        raise DirectError(f"send failed: {exc}") from None


_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.restype = ctypes.py_object
_new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def uninitialised(size: int) -> memoryview:
    """A writable buffer of `size` bytes that starts at a page boundary, its content whatever the
    allocator left there: for a record about to be opened into it whole.

    `bytearray(n)` (and the bytes `AESGCM.decrypt` returns) are cleared first: a pass over a MiB
    of memory not in the cache just to overwrite it, as long as the decryption itself (measured
    on the lab VM, chunks kept as the supervisor keeps them: 0.19-0.32 ms a MiB, 0.15 without).
    Page-aligned, so that the content store writes a chunk past the page cache (O_DIRECT) from
    where it lies, not from a copy (`cas._write_direct`). What the memory held before (this
    process's own) is never seen: `Link.receive_record` fills it whole with the opened record,
    or drops it when the record does not open.
    """
    raw = _new_bytearray(None, size + PAGE)  # CPython's API: NULL leaves the content as it is
    offset = -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % PAGE
    return memoryview(raw)[offset : offset + size]


@functools.cache
def steady_allocator() -> None:
    """Keep buffers of a MiB or more in the heap, reused, instead of mapped afresh each time.

    glibc maps each allocation above its threshold (128 KiB, or what it last freed) and
    unmaps it when freed: every 1 MiB chunk would cost 256 page faults and the kernel
    zeroing its pages, twice per end (measured: 3-5 % of both cores on a cold read). Fixed
    thresholds keep them in the process, as a long-lived server wants.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: its own allocator's defaults


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


class Link:
    """A keyed connection: whole messages out (any thread, one at a time) and in (one thread)."""

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self._seal, self._open = AESGCM(send_key), AESGCM(recv_key)
        self._sent = self._received = 0
        self._lock = threading.Lock()
        # Reused: records are sealed into _out (under the lock, sent before it is released),
        # and received into _in before they are opened into a new buffer of their own.
        self._out = bytearray()
        self._in = bytearray()
        self.closed = False

    def _seal_all(self, frames: Sequence[Frame]) -> memoryview:
        """The frames as consecutive sealed records, in the reused buffer (lock held)."""
        need = sum(4 + len(f) + TAG for f in frames)
        if len(self._out) < need:
            self._out = bytearray(need)
        view, at = memoryview(self._out), 0
        for frame in frames:
            size = len(frame) + TAG
            header = _u32.pack(size)
            view[at : at + 4] = header
            self._seal.encrypt_into(
                self._sent.to_bytes(12, "big"), frame, header, view[at + 4 : at + 4 + size]
            )
            self._sent += 1
            at += 4 + size
        return view[:at]

    def send_record(self, data: Frame) -> None:
        with self._lock:
            _send(self.sock, self._seal_all([data]))

    def receive_record(
        self, limit: int = MAX_RECORD, started: Callable[[], None] | None = None
    ) -> bytes | memoryview:
        """The next record, opened (a big one into a buffer of its own: `uninitialised`);
        `started` is called once its first bytes have come."""
        header = bytearray(4)
        _recv_exact_into(self.sock, header)
        if started is not None:
            started()
        (size,) = _u32.unpack(header)
        if not TAG <= size <= limit:
            raise DirectError(f"a record of {size} bytes")
        if len(self._in) < size:
            self._in = bytearray(size)
        sealed = memoryview(self._in)[:size]
        _recv_exact_into(self.sock, sealed)
        nonce = self._received.to_bytes(12, "big")
        self._received += 1
        try:
            if size - TAG < BIG_RECORD:
                return self._open.decrypt(nonce, sealed, bytes(header))
            opened = uninitialised(size - TAG)
            self._open.decrypt_into(nonce, sealed, bytes(header), opened)
            return opened
        except InvalidTag:
            raise DirectError("a record did not open (wrong key, or altered on the way)") from None

    def _message(self, call_id: int, frames: Sequence[Frame]) -> list[Frame]:
        if not 1 <= len(frames) <= MAX_FRAMES:
            raise ValueError(f"a message of {len(frames)} frames")
        return [_head.pack(call_id, len(frames)) + bytes(frames[0]), *frames[1:]]

    def send(self, call_id: int, frames: Sequence[Frame]) -> None:
        """One message: an id and its frames (the first one small)."""
        message = self._message(call_id, frames)
        with self._lock:
            _send(self.sock, self._seal_all(message))

    def send_nowait(self, call_id: int, frames: Sequence[Frame]) -> bytes | None:
        """One message, sent as far as the socket takes it without waiting: what it did not take
        (to be sent with `send_rest` before anything else), or None when all went."""
        message = self._message(call_id, frames)
        with self._lock:
            sealed = self._seal_all(message)
            try:
                sent = self.sock.send(sealed, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise DirectError(f"send failed: {exc}") from None
            return None if sent == len(sealed) else bytes(sealed[sent:])

    def send_rest(self, rest: bytes) -> None:
        with self._lock:
            _send(self.sock, memoryview(rest))

    def receive(self, started: Callable[[], None] | None = None) -> tuple[int, list[bytes | memoryview]]:
        """The next message: its id and frames; `started` is called once its first bytes have come."""
        first = self.receive_record(started=started)
        if len(first) < _head.size:
            raise DirectError("a message without its header")
        call_id, count = _head.unpack_from(first)
        if not 1 <= count <= MAX_FRAMES:
            raise DirectError(f"a message of {count} frames")
        return call_id, [first[_head.size :], *(self.receive_record() for _ in range(count - 1))]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked receiving
            except OSError:
                pass
            self.sock.close()


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(host: str, port: int, key: bytes, timeout: float = HANDSHAKE_S) -> Link:
    """The client's end: connect and prove the key (DirectError, or OSError, when it cannot)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        _tune(sock)
        nc = os.urandom(NONCE_BYTES)
        sock.sendall(MAGIC + nc)
        ns = bytearray(NONCE_BYTES)
        _recv_exact_into(sock, ns)
        k_cs, k_sc = _keys(key, nc, bytes(ns))
        link = Link(sock, k_cs, k_sc)
        link.send_record(b"client")
        if link.receive_record(limit=64) != b"supervisor":
            raise DirectError("the supervisor did not prove the key")
        sock.settimeout(None)
        steady_allocator()
        return link
    except BaseException:
        sock.close()
        raise


class Offer:
    """The supervisor's end before the client comes: a listening socket and the key it gave out."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family, backlog=8)
        self.port: int = self.listener.getsockname()[1]
        self.key = os.urandom(KEY_BYTES)

    def accept(self, wait: float = ACCEPT_WAIT_S) -> Link | None:
        """The first connection that proves the key, within `wait` seconds (None: none did).

        Connections that do not are closed and the next one is awaited; the listener is
        closed either way, so the key opens at most one connection.
        """
        deadline = time.monotonic() + wait
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.listener.settimeout(left)
                try:
                    sock, _ = self.listener.accept()
                except TimeoutError:
                    return None
                except OSError:
                    return None  # closed: the run ended first
                try:
                    return self._handshake(sock)
                except (OSError, DirectError):
                    sock.close()
            return None
        finally:
            self.close()

    def _handshake(self, sock: socket.socket) -> Link:
        sock.settimeout(HANDSHAKE_S)
        _tune(sock)
        hello = bytearray(len(MAGIC) + NONCE_BYTES)
        _recv_exact_into(sock, hello)
        if hello[: len(MAGIC)] != MAGIC:
            raise DirectError("not a radium client")
        ns = os.urandom(NONCE_BYTES)
        sock.sendall(ns)
        k_cs, k_sc = _keys(self.key, bytes(hello[len(MAGIC) :]), ns)
        link = Link(sock, k_sc, k_cs)
        if link.receive_record(limit=64) != b"client":
            raise DirectError("the client did not prove the key")
        link.send_record(b"supervisor")
        # Receiving waits as long as the run lasts; a send gives up after SEND_TIMEOUT_S (the
        # client stopped reading: the channel is dropped, and the run goes on relayed).
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT_S, 0))
        steady_allocator()
        return link

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked accepting
        except OSError:
            pass
        self.listener.close()


class Sender:
    """Messages sent without ever blocking the caller (trio's loop): straight from its thread
    when the socket takes them whole, else by a thread of their own, in order.

    Handing every request to the thread cost ~150 µs a round trip on the lab VM (its wake-up,
    and the GIL it waits for while trio's thread runs on): a fifth of a metadata request's.
    The supervisor's side carries requests only, so its socket nearly always has room."""

    def __init__(self, link: Link, lost: Callable[[str], None]) -> None:
        self.link = link
        self._queue: queue.SimpleQueue[tuple[int, list[Frame]] | bytes | None] = queue.SimpleQueue()
        self._lost = lost
        self._mutex = threading.Lock()
        self._backlog = 0  # messages (or a message's rest) queued or being sent by the thread
        self.thread = _threads.Thread(target=self._run, name="radium-direct-send", daemon=True)
        self.thread.start()

    def send(self, call_id: int, frames: list[Frame]) -> None:
        with self._mutex:
            if self._backlog == 0:  # nothing before it: straight out, as far as the socket takes it
                try:
                    rest = self.link.send_nowait(call_id, frames)
                except (DirectError, ValueError) as exc:
                    self._lost(str(exc))
                    return
                if rest is None:
                    return
                item: tuple[int, list[Frame]] | bytes = rest
            else:
                item = (call_id, frames)
            self._backlog += 1
            self._queue.put(item)

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if isinstance(item, bytes):
                    self.link.send_rest(item)
                else:
                    self.link.send(*item)
            except (DirectError, ValueError) as exc:
                self._lost(str(exc))
                return
            with self._mutex:
                self._backlog -= 1


def serve(
    link: Link, answer: Callable[[bytes | memoryview], Sequence[Frame]], threads: int, name: str
) -> None:
    """Answer the requests that come over `link` until it closes, up to `threads` at once (the
    client's end): the calling thread, and more (named `name_1`, `name_2`, ...) as requests
    come while every thread is busy.

    Leader and followers: the thread that holds the turn reads the next request, hands the turn
    on, and answers the request itself. Handed from one reading thread to a pool, each request
    first waited for a worker to wake up and get the GIL (~55 µs a metadata round trip on the
    lab VM, which a cold `import torch` makes ~700 times one after another). A thread is
    started only when one takes a request with no other waiting for the turn: starting all of
    them with the channel cost a warm start ~8 ms of its ~100."""
    turn = threading.Lock()
    counts = threading.Lock()
    waiting, started = 0, 1

    def follow() -> None:
        """Start another thread when none is waiting to read the next request."""
        nonlocal started
        with counts:
            if waiting or started >= threads:
                return
            started += 1
            number = started - 1
        _threads.Thread(target=answering, name=f"{name}_{number}", daemon=True).start()

    def answering() -> None:
        nonlocal waiting
        try:
            while True:
                with counts:
                    waiting += 1
                with turn:
                    with counts:
                        waiting -= 1
                    call_id, frames = link.receive()
                follow()
                link.send(call_id, answer(frames[0]))
        except (DirectError, ValueError):  # closed, cut, or a reply that cannot be sent
            link.close()  # the other end notices, and asks again another way

    answering()
