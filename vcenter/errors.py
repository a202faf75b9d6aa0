"""The exception tree of `radium.vcenter`.

Every error a caller of `radium.vcenter` sees is a `VCenterError` (itself a
`radium.remoting._errors.RadiumError`, so `radium-admin` reports both kinds the
same way: one line, or `{"error": {"code", "message"}}` with `--json`).  pyVmomi
faults, socket and TLS errors are translated at the boundary by `translated()`
and never leak.

    VCenterError        "vcenter"
    ├── Unreachable     "vcenter-unreachable"  nothing answered at the URL (in time)
    ├── CertificateError "vcenter-certificate" TLS verification failed, or the pinned thumbprint differs
    ├── LoginFailed     "vcenter-login"        wrong user name or password
    ├── NotPermitted    "vcenter-permission"   the user lacks a privilege
    ├── NotFound        "not-found"            no host/VM/device of that name (close matches listed)
    ├── Refused         "refused"              the request does not fit the object (says what to do)
    ├── TaskFailed      "task-failed"          a vCenter task ended in error (the task's own text)
    └── Fault           "vcenter-fault"        any other fault vCenter answered with
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from radium.remoting import RadiumError

__all__ = [
    "CertificateError",
    "Fault",
    "LoginFailed",
    "NotFound",
    "NotPermitted",
    "Refused",
    "TaskFailed",
    "Unreachable",
    "VCenterError",
    "fault_message",
    "translatable",
    "translate",
    "translated",
]


class VCenterError(RadiumError):
    """Base of every error raised by `radium.vcenter`."""

    code = "vcenter"
    exit_code = 1


class Unreachable(VCenterError):
    """Nothing answered at the vCenter's address, or not in time, or not as vCenter."""

    code = "vcenter-unreachable"
    exit_code = 69  # EX_UNAVAILABLE


class CertificateError(VCenterError):
    """The server's certificate could not be verified, or is not the one pinned."""

    code = "vcenter-certificate"
    exit_code = 77  # EX_NOPERM


class LoginFailed(VCenterError):
    """vCenter refused the user name or password."""

    code = "vcenter-login"
    exit_code = 77


class NotPermitted(VCenterError):
    """Logged in, but the user lacks a privilege the request needs."""

    code = "vcenter-permission"
    exit_code = 77


class NotFound(VCenterError):
    """No object of that name; `matches` holds the close ones (also in the message)."""

    code = "not-found"
    exit_code = 2


class Refused(VCenterError):
    """The request does not fit the object's state; the message says what to do instead."""

    code = "refused"
    exit_code = 3


class TaskFailed(VCenterError):
    """A vCenter task ended in error; the message is the task's own error text."""

    code = "task-failed"
    exit_code = 1


class Fault(VCenterError):
    """Any other fault vCenter answered with (its type and message)."""

    code = "vcenter-fault"
    exit_code = 1


def fault_message(fault: Any) -> str:
    """The text vCenter gave for a fault: its `msg`, else its localized messages, else its type."""
    msg = getattr(fault, "msg", None) or getattr(fault, "localizedMessage", None)
    if not msg:
        parts = [getattr(m, "message", "") for m in getattr(fault, "faultMessage", None) or []]
        msg = "; ".join(p for p in parts if p)
    return msg or _fault_name(fault)


def _fault_name(fault: Any) -> str:
    name = getattr(type(fault), "_wsdlName", None) or type(fault).__name__
    return str(name)


def translate(exc: BaseException, where: str = "vCenter") -> VCenterError:
    """The `VCenterError` for a pyVmomi fault, socket or TLS error raised while talking to `where`."""
    if isinstance(exc, VCenterError):
        return exc
    from pyVmomi import vim, vmodl  # imported late: `radium-admin version` need not load pyVmomi

    if isinstance(exc, vim.fault.InvalidLogin):
        return LoginFailed(f"{where} refused the login: wrong user name or password")
    if isinstance(exc, vim.fault.NoPermission):
        privilege = getattr(exc, "privilegeId", None)
        what = f" (privilege {privilege})" if privilege else ""
        return NotPermitted(f"{where}: permission denied{what}: {fault_message(exc)}")
    if isinstance(exc, vim.fault.NotAuthenticated):
        return LoginFailed(f"{where}: the session is not (or no longer) logged in")
    if isinstance(exc, vmodl.MethodFault):
        return Fault(f"{where}: {_fault_name(exc)}: {fault_message(exc)}", fault=_fault_name(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateError(f"cannot verify the certificate of {where}: {exc.verify_message or exc}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return Unreachable(f"{where} did not answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return Unreachable(f"{where} refused the connection: is the address right and vCenter up?")
    if isinstance(exc, socket.gaierror):
        return Unreachable(f"cannot resolve the name of {where}: {exc.strerror or exc}")
    if isinstance(exc, ssl.SSLError):
        return Unreachable(f"TLS with {where} failed: {exc.reason or exc}")
    if isinstance(exc, OSError):
        return Unreachable(f"cannot reach {where}: {exc.strerror or exc}")
    if isinstance(exc, http.client.HTTPException):
        return Unreachable(f"{where} gave an unexpected HTTP answer: {exc or type(exc).__name__}")
    return VCenterError(f"{where}: {type(exc).__name__}: {exc}")


def translatable(exc: BaseException) -> bool:
    """Whether `exc` comes from talking to vCenter (a fault, the network, TLS, HTTP, XML)."""
    from xml.etree.ElementTree import ParseError
    from xml.parsers.expat import ExpatError

    from pyVmomi import vmodl

    return isinstance(exc, vmodl.MethodFault | OSError | http.client.HTTPException | ExpatError | ParseError)


@contextlib.contextmanager
def translated(where: str = "vCenter") -> Iterator[None]:
    """Run a block that talks to vCenter; re-raise its faults and I/O errors as `VCenterError`s.

    Anything else (a bug) passes through untouched, with its traceback.
    """
    try:
        yield
    except RadiumError:
        raise
    except Exception as exc:
        if not translatable(exc):
            raise
        raise translate(exc, where) from exc
