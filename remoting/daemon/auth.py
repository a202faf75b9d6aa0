"""Who may talk to radiumd: CurveZMQ keys, checked at the handshake and on every message.

The ZAP handler (ZeroMQ's authentication protocol, RFC 27) admits a connection
only if its CURVE public key is in the clients or admins directory, and stamps
the connection with that key as its User-Id.  Since keys can be revoked while a
connection is open, the server looks the User-Id up again for each message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils import z85

from .._keys import KeyDirectory
from .logs import event

ZAP_ENDPOINT = "inproc://zeromq.zap.01"


@dataclass(frozen=True)
class Peer:
    role: str  # "client" or "admin"
    name: str
    key: str  # Z85 public key


class KeyStore:
    """The authorised keys of clients and operators, re-read when their folders change."""

    def __init__(self, clients_dir: Path, admins_dir: Path) -> None:
        self.clients = KeyDirectory(clients_dir, "client")
        self.admins = KeyDirectory(admins_dir, "admin")

    def lookup(self, key: str) -> Peer | None:
        for directory in (self.admins, self.clients):
            name = directory.name_of(key)
            if name is not None:
                return Peer(directory.role, name, key)
        return None

    def directory(self, role: str) -> KeyDirectory:
        return self.admins if role == "admin" else self.clients


class ZapHandler:
    """Answers libzmq's authentication requests for CURVE connections."""

    def __init__(
        self, ctx: zmq.asyncio.Context, keys: KeyStore, log: logging.Logger, on_refused=None
    ) -> None:
        self.keys = keys
        self.log = log
        self.on_refused = on_refused
        self.socket = ctx.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)

    async def run(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            try:
                reply = self._answer(frames)
            except Exception:  # a malformed ZAP request must not stop authentication
                self.log.exception("zap request failed")
                reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"error", b"", b""]
            await self.socket.send_multipart(reply)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        version, request_id, _domain, address, _identity, mechanism, *credentials = frames
        if mechanism != b"CURVE" or not credentials:
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        key = z85.encode(credentials[0]).decode()
        peer = self.keys.lookup(key)
        if peer is None:
            event(
                self.log,
                "warning",
                "refused unknown client key",
                key=key,
                address=address.decode(errors="replace"),
            )
            if self.on_refused:
                self.on_refused()
            return [version, request_id, b"400", b"unknown client key", b"", b""]
        event(self.log, "debug", "client authenticated", client=peer.name, role=peer.role)
        return [version, request_id, b"200", b"OK", key.encode(), b""]

    def close(self) -> None:
        self.socket.close(linger=0)


async def run_zap(handler: ZapHandler) -> None:
    try:
        await handler.run()
    except (asyncio.CancelledError, zmq.ContextTerminated):
        pass
