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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import trio

from .. import schema as s
from . import direct, fsproto

Relay = Callable[[msgspec.Struct, Sequence[Any]], Awaitable[None]]

__all__ = ["FileAsks"]


class FileAsks:
    def __init__(self, run: str, relay: Relay, stats: s.RunStats, log: Callable[..., None]) -> None:
        self.run = run
        self._relay = relay
        self.stats = stats
        self._log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._via_direct: dict[int, bytes] = {}  # in flight on the direct channel: the request
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
            self._via_direct[call_id] = body
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
        threading.Thread(
            target=self._receive, args=(link, to_trio), name="radium-direct-receive", daemon=True
        ).start()

    def _receive(self, link: direct.Link, to_trio: Callable[..., None]) -> None:
        """The direct channel's reader thread: each whole reply handed to trio's loop."""
        try:
            while True:
                call_id, frames = link.receive()
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
        for call_id, body in again.items():
            self._nursery.start_soon(self._relay, s.FsCall(run=self.run, id=call_id), [body])

    def _drop_link(self) -> None:
        if self._sender is not None:
            self._sender.stop()
        if self._link is not None:
            self._link.close()
        self._sender = self._link = None

    def close(self) -> None:
        """The run is over: close the direct channel."""
        self._closed = True
        self._drop_link()
