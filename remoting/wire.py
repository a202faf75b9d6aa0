"""Wire framing: how a message becomes ZeroMQ frames and back.

A message is two frames: a header and a body.  The header is a msgpack array
`["radium", protocol, id]`: the protocol version is stamped on every message,
and `id` pairs a reply with its request (0 for notices).  The body is the
msgpack encoding of one tagged struct from `schema`.  Bulk payloads (issue 3)
travel as extra frames after the body, never inside it.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from ._errors import MessageTooLarge, ProtocolError
from .schema import PROTOCOL_VERSION, AnyMessage, Notice, Reply, Request

MAGIC = "radium"
# Control messages are small; anything larger is refused before decoding.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20


class Header(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    magic: str
    protocol: int
    id: int


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(Header)
_decoders: dict[object, msgspec.msgpack.Decoder] = {
    Request: msgspec.msgpack.Decoder(Request),
    Reply: msgspec.msgpack.Decoder(Reply),
    Notice: msgspec.msgpack.Decoder(Notice),
    AnyMessage: msgspec.msgpack.Decoder(AnyMessage),
}

T = TypeVar("T")


def encode(
    msg: msgspec.Struct,
    msg_id: int,
    extra: tuple[bytes, ...] | list[bytes] = (),
    protocol: int = PROTOCOL_VERSION,
) -> list[bytes]:
    """The frames for one message; `extra` are bulk payload frames, sent as they are."""
    return [_encoder.encode(Header(MAGIC, protocol, msg_id)), _encoder.encode(msg), *extra]


def encode_body(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_header(frame: bytes) -> Header:
    """Decode a header frame; a wrong magic or shape is a `ProtocolError`."""
    try:
        header = _header_decoder.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets bad UTF-8 through as the latter
        raise ProtocolError(f"malformed header: {exc}") from None
    if header.magic != MAGIC:
        raise ProtocolError("not a radium message")
    return header


def decode_body(frame: bytes, kind: object, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):  # type: ignore[no-untyped-def]
    """Decode a body frame as one of the unions `Request`, `Reply`, `Notice`."""
    if len(frame) > max_bytes:
        raise MessageTooLarge(
            f"message of {len(frame)} bytes is over the limit of {max_bytes}",
            limit=max_bytes,
        )
    try:
        return _decoders[kind].decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets bad UTF-8 through as the latter
        raise ProtocolError(f"malformed message: {exc}") from None
