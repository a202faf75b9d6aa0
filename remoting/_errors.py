"""The exception tree of the data plane.

Every error a caller of `radium.remoting` can see is a `RadiumError`; ZeroMQ,
msgspec and OS errors are translated at the boundary and never leak.  Each
error carries a stable `code` (the same string travels on the wire in an
`Error` reply) and an `exit_code` the command-line tools return.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RadiumError(Exception):
    """Base of every error raised by Radium's data plane."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class ConfigError(RadiumError):
    """A configuration file or value is invalid; the message names file and key."""

    code = "config"
    exit_code = 2


class UsageError(RadiumError):
    """The user asked for something malformed (a bad filter, a bad fraction)."""

    code = "usage"
    exit_code = 2


class TransportError(RadiumError):
    """The appliance could not be reached or stopped answering."""

    code = "unreachable"
    exit_code = 69  # EX_UNAVAILABLE


class ApplianceShutdown(TransportError):
    """The appliance told us it is shutting down."""

    code = "shutdown"


class AuthError(RadiumError):
    """The appliance refused our key, or its key is not the one we trust."""

    code = "auth"
    exit_code = 77  # EX_NOPERM


class ProtocolError(RadiumError):
    """A message could not be decoded, or the peers speak different versions."""

    code = "protocol"
    exit_code = 76  # EX_PROTOCOL


class MessageTooLarge(ProtocolError):
    code = "message-too-large"


class AllocationError(RadiumError):
    """A lease request cannot be met."""

    code = "allocation"
    exit_code = 3


class Unsatisfiable(AllocationError):
    """The request can never be met by this appliance (too many devices, no match)."""

    code = "unsatisfiable"


class NotAvailable(AllocationError):
    """The request could be met, but not now, and the caller would not wait (longer)."""

    code = "not-available"


class LeaseNotFound(AllocationError):
    code = "lease-not-found"


class SessionExpired(RadiumError):
    """The session's heartbeat stopped and the appliance dropped it and its leases."""

    code = "session-expired"
    exit_code = 3


class NotPermitted(AuthError):
    """The caller's key is valid but lacks the role the request needs."""

    code = "not-permitted"


class RunsUnavailable(RadiumError):
    """The appliance cannot start a run now (what it lacks is in the message)."""

    code = "run-unavailable"
    exit_code = 69  # EX_UNAVAILABLE


class RemoteError(RadiumError):
    """An unexpected error inside the appliance, reported back to the caller."""

    code = "remote"


_BY_CODE: dict[str, type[RadiumError]] = {}


def _register(cls: type[RadiumError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(RadiumError)


def error_from_code(code: str, message: str, detail: dict[str, Any] | None = None) -> RadiumError:
    """Rebuild the typed error named by a wire `Error` reply."""
    cls = _BY_CODE.get(code, RemoteError)
    return cls(message, **(detail or {}))
