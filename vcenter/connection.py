"""One logged-in session with a vCenter: TLS trust, login, round-trip counting, logout.

    from radium.vcenter import connect, resolve

    with connect(resolve(url="vc.example.com", user="ops@vsphere.local")) as vc:
        print(vc.about, vc.round_trips)

Before anything is sent, `connect` opens a TLS connection of its own (within
`ConnectionSettings.timeout`, so an unreachable vCenter fails in seconds) and
checks the server's certificate: against the pinned SHA-256 thumbprint, the CA
bundle, or the system's CAs; only `insecure` skips that.  With a pinned
thumbprint every later connection of the session is checked again.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import http.client
import socket
import ssl
import threading
from typing import Any

from .errors import CertificateError, Unreachable, VCenterError, translated
from .settings import ConnectionSettings, format_thumbprint

__all__ = ["REQUEST_TIMEOUT", "Session", "connect", "server_thumbprint", "thumbprint_of"]

#: Socket timeout of each request once connected (long property collections, task waits).
REQUEST_TIMEOUT = 120.0


def thumbprint_of(der: bytes) -> str:
    """The SHA-256 thumbprint of a DER certificate, ``AA:BB:...``."""
    return format_thumbprint(hashlib.sha256(der).hexdigest())


def _unverified_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _verifying_context(settings: ConnectionSettings) -> ssl.SSLContext:
    if settings.thumbprint or settings.insecure:
        return _unverified_context()  # pinned: checked by thumbprint instead
    try:
        return ssl.create_default_context(cafile=str(settings.ca) if settings.ca else None)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"cannot use CA bundle {settings.ca}: {exc}") from None


def _handshake(host: str, port: int, context: ssl.SSLContext, timeout: float, where: str) -> bytes:
    """Connect, do the TLS handshake, return the server's certificate (DER)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        raise
    except TimeoutError:
        raise Unreachable(f"{where} did not answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise Unreachable(f"{where} refused the connection: is the address right and vCenter up?") from None
    except socket.gaierror as exc:
        raise Unreachable(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise Unreachable(f"TLS with {where} failed: {exc.reason or exc}: is it a vCenter?") from None
    except OSError as exc:
        raise Unreachable(f"cannot reach {where}: {exc.strerror or exc}") from None
    if not der:
        raise CertificateError(f"{where} presented no certificate")
    return der


def server_thumbprint(settings: ConnectionSettings) -> str:
    """The SHA-256 thumbprint of the certificate the server presents now (not verified)."""
    der = _handshake(settings.host, settings.port, _unverified_context(), settings.timeout, settings.where)
    return thumbprint_of(der)


def check_server(settings: ConnectionSettings) -> str:
    """Reach the server and check its certificate as `settings` ask; return its thumbprint.

    Raises `Unreachable` or `CertificateError` (the latter naming the server's
    thumbprint, and the pinned one when they differ).
    """
    where = settings.where
    try:
        der = _handshake(settings.host, settings.port, _verifying_context(settings), settings.timeout, where)
    except ssl.SSLCertVerificationError as exc:
        actual = server_thumbprint(settings)
        trusted = f"the CA bundle {settings.ca}" if settings.ca else "the system's CAs"
        raise CertificateError(
            f"the certificate of {where} is not trusted by {trusted} ({exc.verify_message or exc}); "
            f"its SHA-256 thumbprint is {actual}. Pass the CA that signed it (--ca FILE), or pin "
            f"the thumbprint after checking it (--thumbprint {actual}); --insecure skips the check",
            thumbprint=actual,
        ) from None
    actual = thumbprint_of(der)
    if settings.thumbprint and actual != settings.thumbprint:
        raise CertificateError(
            f"{where} presented a certificate with SHA-256 thumbprint {actual}, but {settings.thumbprint} "
            "is pinned: refusing to log in. If the certificate was replaced on purpose, pin the new one "
            f"(--thumbprint {actual}) after checking it",
            thumbprint=actual,
            pinned=settings.thumbprint,
        )
    return actual


def _pinned_thumbprint(der: bytes, pin: str) -> str:
    """The thumbprint of `der` in the hash `pin` uses (SHA-1 for 40 hex digits, else SHA-256)."""
    if len(pin.replace(":", "")) == 40:  # what vSphere gives for ESXi hosts (HttpNfcLeaseDeviceUrl)
        return format_thumbprint(hashlib.sha1(der).hexdigest())
    return thumbprint_of(der)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that accepts only the certificate with the pinned thumbprint."""

    def __init__(self, *args: Any, pin: str, where: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin, self._where = format_thumbprint(pin), where

    def connect(self) -> None:
        super().connect()
        assert isinstance(self.sock, ssl.SSLSocket)
        actual = _pinned_thumbprint(self.sock.getpeercert(binary_form=True) or b"", self._pin)
        if actual != self._pin:
            self.close()
            raise CertificateError(
                f"{self._where} now presents a certificate with SHA-256 thumbprint {actual}, "
                f"not the pinned {self._pin}",
                thumbprint=actual,
                pinned=self._pin,
            )


class Session:
    """A logged-in vCenter session; `close()` logs out (also on `with` exit).

    `round_trips` counts the SOAP requests sent since login, `calls` them by
    method name: what a benchmark needs to show that a listing costs a
    constant number of requests.
    """

    def __init__(self, settings: ConnectionSettings, si: Any, stub: Any, thumbprint: str) -> None:
        self.settings = settings
        self.si = si
        self.stub = stub
        self.thumbprint = thumbprint  #: of the certificate the server presented
        self.content = si.RetrieveContent()
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def round_trips(self) -> int:
        return sum(self.calls.values())

    def count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1

    @property
    def about(self) -> dict[str, str]:
        a = self.content.about
        return {"name": a.fullName, "version": a.version, "build": a.build, "api_version": a.apiVersion}

    def close(self) -> None:
        """Log out and drop the connections (idempotent; errors while logging out are ignored)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.content.sessionManager.Logout()
        except Exception:  # the session may already be gone; nothing to report at exit
            pass
        try:
            self.stub.DropConnections()
        except Exception:
            pass

    def https_connection(
        self, host: str, port: int, *, thumbprint: str | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> http.client.HTTPSConnection:
        """An HTTPS connection to `host:port` (an NFC upload URL), trusted the way the session trusts vCenter.

        The session's own host and port get the same check as the session: the
        pinned thumbprint, the CA bundle or the system's CAs, or none with
        `insecure`.  Another host (an ESXi host serving an NFC lease) is verified
        with the CA bundle or the system's CAs (VMCA signs the hosts of a vCenter);
        when the session pins vCenter's thumbprint instead, that pin cannot apply
        to the host, so the host's `thumbprint` as vCenter reports it (the lease's
        ``sslThumbprint``) is pinned, and without one the connection is refused.
        """
        s = self.settings
        where = f"{host}:{port}"
        same = host.strip("[]").lower() == s.host.lower() and port == s.port
        pin = s.thumbprint if same else (thumbprint if s.thumbprint else None)
        if s.thumbprint and not same and not thumbprint:
            raise CertificateError(
                f"cannot verify {where}: the session pins vCenter's certificate, and vCenter gave no "
                f"thumbprint for {host}. Trust the CA that signs the hosts' certificates instead (--ca FILE)"
            )
        if pin:
            return _PinnedHTTPSConnection(
                host, port, pin=pin, where=where, context=_unverified_context(), timeout=timeout
            )
        return http.client.HTTPSConnection(host, port, context=_verifying_context(s), timeout=timeout)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _counting(stub: Any, session_ref: list[Session]) -> None:
    """Count every SOAP request the stub sends (property reads go through InvokeMethod too)."""
    invoke = stub.InvokeMethod

    def counted(mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N803 (pyVmomi's name)
        if session_ref:
            session_ref[0].count(getattr(info, "wsdlName", "?"))
        return invoke(mo, info, args, outerStub)

    stub.InvokeMethod = counted


def connect(settings: ConnectionSettings) -> Session:
    """Check the server's certificate, log in, and return the `Session`.

    Errors: `Unreachable` (nothing answered within `settings.timeout`),
    `CertificateError`, `LoginFailed` (wrong user name or password), or another
    `VCenterError` for whatever else vCenter answers.
    """
    if not settings.password:
        raise VCenterError(f"no password for {settings.user} at {settings.where}")
    thumbprint = check_server(settings)
    from pyVim.connect import SmartStubAdapter
    from pyVmomi import vim

    where = settings.where
    context = _verifying_context(settings)
    try:
        with translated(where):
            stub = SmartStubAdapter(
                host=settings.host,
                port=settings.port,
                path=settings.path,
                sslContext=context,
                httpConnectionTimeout=REQUEST_TIMEOUT,
            )
    except VCenterError:
        raise
    except Exception as exc:  # pyVim raises a bare Exception when no vSphere API answers
        raise Unreachable(
            f"{where} answered TLS but not as a vCenter (no vSphere API at {settings.path}): {exc}"
        ) from None
    if settings.thumbprint:
        stub.scheme = functools.partial(_PinnedHTTPSConnection, pin=settings.thumbprint, where=where)
    session_ref: list[Session] = []
    _counting(stub, session_ref)
    si = vim.ServiceInstance("ServiceInstance", stub)
    with translated(where):
        session = Session(settings, si, stub, thumbprint)
    session_ref.append(session)
    session.count("RetrieveServiceContent")
    try:
        with translated(where):
            session.content.sessionManager.Login(settings.user, settings.password, None)
    except VCenterError as exc:
        stub.DropConnections()
        if exc.code == "vcenter-login":
            source = (
                f" (the password came from {settings.password_source})" if settings.password_source else ""
            )
            exc.message = (
                f"{where} refused the login of {settings.user!r}: wrong user name or password{source}"
            )
            exc.args = (exc.message,)
        raise
    return session
