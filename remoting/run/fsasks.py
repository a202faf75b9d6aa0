"""The supervisor asking the client for files: over the direct file channel, or through radiumd.

Every file-protocol request of a run goes through `FileAsks.fetch`.  Until the client
has connected the direct channel (run/direct.py), and after that channel fails,
requests are relayed by radiumd as `FsCall`/`FsAnswer`; while it is up, they go over
it.  A request in flight on a channel that fails is asked again through radiumd, so a
cut channel costs time, never an answer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import trio

from .. import _threads
from .. import schema as s
from . import direct, fsproto

Relay = Callable[[msgspec.Struct, Sequence[Any]], Awaitable[None]]

__all__ = ["FileAsks", "LinkTimes"]


class LinkTimes:
    """Where the direct channel's time went, seen from the supervisor's receiving thread, from the
    first request to the last reply: receiving a reply (from its first bytes to its last), or
    between replies with file content asked for and none arriving yet (the client reading and
    sealing it, the request or reply queued behind others, or this side's thread not yet
    running to read what came), with only metadata asked for (the client looking up, and
    hashing, a file), or with nothing asked (this side had nothing to ask: its read-ahead, or
    the process busy elsewhere).  Summed event by event, no timeline kept; the tree's
    `Prefetch` (answered in the background) counts as nothing asked.

    When the channel is lost its requests are asked again through radiumd, and the sums stop.
    """

    KEYS = (
        "link_receiving",
        "link_idle_content_asked",
        "link_idle_metadata_asked",
        "link_idle_nothing_asked",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # trio's loop asks, the receiving thread receives
        self._since: float | None = None
        self._content = self._metadata = 0
        self._receiving = self._stopped = False
        self._sums = dict.fromkeys(self.KEYS, 0.0)
        self._last_reply = dict(self._sums)  # the sums at the last reply: what `totals` gives

    def _advance(self) -> None:  # the lock held
        now = self._clock()
        if self._since is not None:
            if self._receiving:
                key = "link_receiving"
            elif self._content:
                key = "link_idle_content_asked"
            elif self._metadata:
                key = "link_idle_metadata_asked"
            else:
                key = "link_idle_nothing_asked"
            self._sums[key] += now - self._since
        self._since = now

    def asked(self, kind: str) -> None:
        with self._lock:
            if self._stopped or kind == "background":
                return
            self._advance()
            if kind == "content":
                self._content += 1
            else:
                self._metadata += 1

    def receiving(self) -> None:
        with self._lock:
            if not self._stopped and self._since is not None:
                self._advance()
                self._receiving = True

    def received(self, kind: str | None) -> None:
        """A whole reply came; `kind`: what its request was (None: nothing waited for it)."""
        with self._lock:
            if self._stopped or self._since is None:
                return
            self._advance()
            self._receiving = False
            if kind == "content":
                self._content = max(0, self._content - 1)
            elif kind == "metadata":
                self._metadata = max(0, self._metadata - 1)
            self._last_reply = dict(self._sums)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def totals(self) -> dict[str, float]:
        """The sums up to the last reply (the time after it, the run ending, is left out); empty when
        nothing came over the channel."""
        with self._lock:
            return dict(self._last_reply) if any(self._last_reply.values()) else {}


def _kind(request: fsproto.FsRequest) -> str:
    if isinstance(request, fsproto.ReadChunks) or isinstance(request, fsproto.Lookup) and request.head:
        return "content"
    return "background" if isinstance(request, fsproto.Prefetch) else "metadata"


class FileAsks:
    def __init__(self, run: str, relay: Relay, stats: s.RunStats, log: Callable[..., None]) -> None:
        self.run = run
        self._relay = relay
        self.stats = stats
        self._log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        # In flight on the direct channel: the request, and what it asks for (LinkTimes).
        self._via_direct: dict[int, tuple[bytes, str]] = {}
        self.link_times = LinkTimes()
        self._sender: direct.Sender | None = None
        self._link: direct.Link | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False

    async def fetch(self, request: fsproto.FsRequest) -> fsproto.FsReply:
        """One file-protocol round trip to the client."""
        call_id = next(self._ids)
        done = trio.Event()
        self._pending[call_id] = (done, [])
        self.stats.fs_requests += 1
        body = fsproto.encode(request)
        if self._sender is not None:
            kind = _kind(request)
            self._via_direct[call_id] = (body, kind)
            self.link_times.asked(kind)
            self._sender.send(call_id, [body])
        else:
            await self._relay(s.FsCall(run=self.run, id=call_id), [body])
        try:
            await done.wait()
        finally:
            _, frames = self._pending.pop(call_id)
            self._via_direct.pop(call_id, None)
        self.stats.bytes_fetched += sum(len(f) for f in frames)
        return fsproto.decode_reply_frames(frames)

    def answered(self, call_id: int, frames: Sequence[Any], *, directly: bool = False) -> None:
        """A reply came (from radiumd's relay, or the direct channel's reader)."""
        entry = self._pending.get(call_id)
        if entry is None or entry[0].is_set() or not frames:
            return  # a late or repeated answer
        if directly:
            if self._via_direct.pop(call_id, None) is None:
                return  # asked again through radiumd meanwhile: that answer counts
            self.stats.fs_direct += 1
        entry[1].extend(frames)
        entry[0].set()

    # --- the direct channel ------------------------------------------------------

    async def offer_direct(
        self, host: str, nursery: trio.Nursery, wait: float = direct.ACCEPT_WAIT_S
    ) -> None:
        """Offer the client a direct channel (RunDirect, through radiumd) and use it once it connects."""
        self._nursery = nursery
        try:
            offer = direct.Offer(host)
        except OSError as exc:
            self._log("no direct file channel", run=self.run, error=str(exc))
            return
        try:
            await self._relay(s.RunDirect(run=self.run, port=offer.port, key=offer.key), [])
            link = await trio.to_thread.run_sync(offer.accept, wait, abandon_on_cancel=True)
        finally:
            offer.close()  # wakes an abandoned accept
        if link is None:
            self._log("the client did not take the direct file channel", run=self.run)
            return
        if self._closed:
            link.close()
            return
        token = trio.lowlevel.current_trio_token()

        def to_trio(fn: Callable[..., None], *args: Any) -> None:
            try:
                token.run_sync_soon(fn, *args)
            except trio.RunFinishedError:
                pass  # the supervisor has ended

        self._link = link
        self._sender = direct.Sender(link, lambda why: to_trio(self._lost, link, why))
        _threads.Thread(
            target=self._receive, args=(link, to_trio), name="radium-direct-receive", daemon=True
        ).start()

    def _receive(self, link: direct.Link, to_trio: Callable[..., None]) -> None:
        """The direct channel's reader thread: each whole reply handed to trio's loop."""
        times = self.link_times
        try:
            while True:
                call_id, frames = link.receive(started=times.receiving)
                asked = self._via_direct.get(call_id)
                times.received(asked[1] if asked is not None else None)
                to_trio(self._answered_directly, call_id, frames)
        except direct.DirectError as exc:
            to_trio(self._lost, link, str(exc))

    def _answered_directly(self, call_id: int, frames: list[bytes]) -> None:
        self.answered(call_id, frames, directly=True)

    def _lost(self, link: direct.Link, why: str) -> None:
        """The direct channel failed: ask again through radiumd whatever was in flight on it."""
        if link is not self._link:
            return  # already handled
        self._drop_link()
        if self._closed:
            return
        self._log("direct file channel lost: going on through radiumd", run=self.run, why=why)
        again, self._via_direct = self._via_direct, {}
        assert self._nursery is not None
        for call_id, (body, _) in again.items():
            self._nursery.start_soon(self._relay, s.FsCall(run=self.run, id=call_id), [body])

    def _drop_link(self) -> None:
        self.link_times.stop()
        if self._sender is not None:
            self._sender.stop()
        if self._link is not None:
            self._link.close()
        self._sender = self._link = None

    def close(self) -> None:
        """The run is over: close the direct channel."""
        self._closed = True
        self._drop_link()
