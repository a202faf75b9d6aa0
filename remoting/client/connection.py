"""One encrypted connection from a client to one appliance.

A DEALER socket with CURVE keys; replies are matched to requests by id, so
many requests can be in flight.  A socket monitor watches the handshake, so
that when the appliance does not answer the error says why: unreachable,
refused our key, or not the key we trust.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from .. import schema as s
from .. import wire as wire
from .._config import ApplianceEntry
from .._errors import (
    ApplianceShutdown,
    AuthError,
    ProtocolError,
    RadiumError,
    TransportError,
    error_from_code,
)
from .._keys import KeyPair

DEFAULT_TIMEOUT = 5.0


class Connection:
    def __init__(
        self,
        appliance: ApplianceEntry,
        keys: KeyPair,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.appliance = appliance
        self.keys = keys
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[s.Message]] = {}
        self._notice_handlers: list[Callable[[s.Message, list[bytes]], None]] = []
        self._failed: RadiumError | None = None
        self._tasks: list[asyncio.Task] = []
        # What the monitor saw, for diagnosing silence.
        self.connected = False
        self.handshake_ok = False
        self.auth_refused = False
        self.handshake_failed = False
        self.last_reply_at: float | None = None

    @property
    def label(self) -> str:
        return f"appliance {self.appliance.name} ({self.appliance.address})"

    async def open(self) -> Connection:
        sock = self.ctx.socket(zmq.DEALER)
        sock.curve_serverkey = self.appliance.public_key.encode()
        sock.curve_publickey = self.keys.public.encode()
        sock.curve_secretkey = (self.keys.secret or "").encode()
        sock.linger = 0
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        monitor = sock.get_monitor_socket()
        try:
            sock.connect(self.appliance.address)
        except zmq.ZMQError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {self.label}: {exc}") from None
        self.socket = sock
        self._monitor = monitor
        self._tasks = [
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._watch(monitor)),
        ]
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail(TransportError(f"connection to {self.label} closed"))
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self.socket.close(linger=0)

    async def __aenter__(self) -> Connection:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def on_notice(self, handler: Callable[[s.Message, list[bytes]], None]) -> None:
        """Call `handler(notice, extra_frames)` for every notice the appliance sends."""
        self._notice_handlers.append(handler)

    # --- requests -------------------------------------------------------------

    def post(self, msg: s.Message, extra: tuple[bytes, ...] | list[bytes] = ()) -> None:
        """Send a message that gets no reply (run traffic)."""
        if self._failed is not None:
            raise self._failed
        self.socket.send_multipart(wire.encode(msg, 0, extra), copy=False)

    def send(self, msg: s.Message) -> asyncio.Future[s.Message]:
        """Send a request; the future resolves to its reply (or a typed error)."""
        if self._failed is not None:
            raise self._failed
        msg_id = next(self._ids)
        future: asyncio.Future[s.Message] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        self.socket.send_multipart(wire.encode(msg, msg_id))
        future.add_done_callback(lambda _: self._pending.pop(msg_id, None))
        return future

    async def request(self, msg: s.Message, timeout: float | None = DEFAULT_TIMEOUT) -> s.Message:
        future = self.send(msg)
        try:
            # Not asyncio.wait_for: in Python 3.11 it returns the reply when its task is
            # cancelled as the reply arrives (CPython gh-86296): a session's heartbeat cancelled
            # so by Session.close() beat on, and the `radium run` closing it waited for ever.
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise self.silence_error(timeout) from None

    def silence_error(self, waited: float | None) -> RadiumError:
        """Why the appliance has not answered, as far as the monitor can tell."""
        after = f" after {waited:g}s" if waited else ""
        if self.auth_refused:
            return AuthError(
                f"{self.label} refused this client's key (not enrolled, or revoked): "
                "ask your operator to run `radium-admin enroll`"
            )
        if self.handshake_failed or (self.connected and not self.handshake_ok):
            return AuthError(
                f"{self.label} accepted the connection but the encrypted handshake failed: "
                "the appliance's public key in your configuration is not the one it has "
                "(or it is not a radium appliance)"
            )
        if not self.connected:
            return TransportError(f"cannot reach {self.label}{after}: no connection could be made")
        return TransportError(f"{self.label} stopped answering{after}")

    def fail(self, error: RadiumError) -> None:
        """Fail everything in flight and everything sent later with `error`."""
        self._fail(error)

    def _fail(self, error: RadiumError) -> None:
        if self._failed is None:
            self._failed = error
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frames = await self.socket.recv_multipart()
            self.last_reply_at = loop.time()
            if len(frames) < 2:
                continue
            try:
                header = wire.decode_header(frames[0])
                body = wire.decode_body(frames[1], s.AnyMessage, max_bytes=1 << 26)
            except ProtocolError:
                continue  # not ours to crash on; the request it answered will time out
            if header.id == 0:
                self._notice(body, frames[2:])
                continue
            future = self._pending.get(header.id)
            if future is None or future.done():
                continue
            if isinstance(body, s.Error):
                future.set_exception(error_from_code(body.code, body.message, body.detail))
            else:
                future.set_result(body)

    def _notice(self, notice: s.Message, extra: list[bytes]) -> None:
        if isinstance(notice, s.Shutdown):
            self._fail(
                ApplianceShutdown(f"{self.label} is shutting down ({notice.reason}); leases on it are gone")
            )
        for handler in self._notice_handlers:
            handler(notice, extra)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            try:
                msg = await recv_monitor_message(monitor)
            except zmq.ZMQError:
                return
            ev = msg["event"]
            if ev == zmq.EVENT_CONNECTED:
                self.connected = True
            elif ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_ok = True
                self.auth_refused = False
                self.handshake_failed = False
            elif ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.auth_refused = True
            elif ev in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.handshake_failed = True
            elif ev == zmq.EVENT_MONITOR_STOPPED:
                return
