"""Importing an OVF package through vCenter's NFC service: the import lease, and the upload of its disks.

``ResourcePool.ImportVApp`` answers with an ``HttpNfcLease``; once it is ready,
each file goes to its ``deviceUrl`` (``*`` replaced by the vCenter's host:port)
over TLS trusted the way the session trusts vCenter (`Session.https_connection`),
with bytes reported to the caller and percent to the lease; the caller then
completes (or aborts) the lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .connection import Session
from .errors import TaskFailed, fault_message, translated
from .package import OvfPackage
from .progress import Progress, Transfer

__all__ = ["upload", "wait_ready"]

CHUNK = 1 << 20
STREAM_VMDK = "application/x-vnd.vmware-streamVmdk"


def wait_ready(
    session: Session, lease: Any, name: str, check: Callable[[], None], timeout: float = 300.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        check()
        with translated(session.settings.where):
            state = str(lease.state)
            if state == "ready":
                return
            if state == "error":
                error = lease.error
                text = (
                    getattr(error, "localizedMessage", None) or fault_message(error)
                    if error
                    else "no reason given"
                )
                raise TaskFailed(f"importing {name} failed: {text}", error=text)
        if state == "done":
            return
        if time.monotonic() > deadline:
            raise TaskFailed(
                f"importing {name}: vCenter did not make the import lease ready within {timeout:g} s"
            )
        time.sleep(0.2)


def upload(
    session: Session,
    lease: Any,
    package: OvfPackage,
    items: list[Any],
    progress: Progress,
    check: Callable[[], None],
) -> None:
    """Send each file of the import to its device URL, reporting bytes (`Transfer`) and lease progress."""
    urls = {u.importKey: u for u in lease.info.deviceUrl or []}
    total = sum(package.size(item.path) for item in items)
    description = f"uploading {package.path.name}"
    sent = 0
    last_percent, last_report = -1, 0.0

    def sent_more(n: int, force: bool = False) -> None:
        nonlocal sent, last_percent, last_report
        sent += n
        if n:
            progress(Transfer(description, sent, total))
        percent = int(100 * sent / total) if total else 100
        now = time.monotonic()
        if percent != last_percent and (force or now - last_report >= 1.0):
            with translated(session.settings.where):
                lease.HttpNfcLeaseProgress(percent=min(percent, 99))
            last_percent, last_report = percent, now
        check()

    progress(Transfer(description, 0, total))
    for item in items:
        device = urls.get(item.deviceId)
        if device is None:
            raise TaskFailed(f"the import lease has no upload URL for {item.path} ({item.deviceId})")
        _send(session, device, item, package, sent_more)
    sent_more(0, force=True)


def _send(session: Session, device: Any, item: Any, package: OvfPackage, sent: Callable[[int], None]) -> None:
    """PUT (or POST) one file of the package to its device URL."""
    url = device.url.replace("*", f"{session.settings.host}:{session.settings.port}", 1)
    parts = urlsplit(url)
    conn = session.https_connection(
        parts.hostname or "",
        parts.port or 443,
        thumbprint=getattr(device, "sslThumbprint", None) or None,
    )
    method = "PUT" if item.create else "POST"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    where = f"{parts.hostname}:{parts.port or 443}"
    try:
        with package.open(item.path) as (f, size), translated(where):
            conn.putrequest(method, target)
            conn.putheader("Content-Type", STREAM_VMDK)
            conn.putheader("Content-Length", str(size))
            if (parts.hostname, parts.port or 443) == (session.settings.host, session.settings.port):
                conn.putheader("Cookie", session.stub.cookie)  # vCenter's own NFC service only
            conn.endheaders()
            left = size
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise TaskFailed(f"{package.path}: {item.path} ended {left} bytes early")
                conn.send(chunk)
                left -= len(chunk)
                sent(len(chunk))
            resp = conn.getresponse()
            body = resp.read()
            if resp.status not in (200, 201, 204):
                raise TaskFailed(
                    f"uploading {item.path} to {where} failed: HTTP {resp.status} {resp.reason}: "
                    f"{body[:200].decode(errors='replace').strip()}"
                )
    finally:
        conn.close()
