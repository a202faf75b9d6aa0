"""Send a SOAP request through pyVmomi's stub, but decode a large answer ourselves.

pyVmomi builds a typed Python object for every XML element of an answer, at
about 20 µs each.  The inventory's single property collection holds some 130,000
elements for 64 hosts and 500 VMs (every PCI function of every host, every
virtual device of every VM), which pyVmomi takes 3 s to decode; ElementTree's C
parser reads the same bytes in a quarter of a second, and the inventory then
looks only at what it needs.

The request itself is still pyVmomi's: its serializer, its connection pool, its
session cookie, and its decoding of faults (an HTTP 500 answer), so errors are
the same typed faults as everywhere else.  `supported()` says whether the stub
has what this needs; callers fall back to plain pyVmomi when it has not.
"""

from __future__ import annotations

import gzip
import http.client
import io
import zlib
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

if TYPE_CHECKING:
    from .connection import Session

VIM = "{urn:vim25}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
SOAP_BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"
_STUB_API = ("SerializeRequest", "GetConnection", "ReturnConnection", "DropConnections", "cookie", "path")


def supported(stub: Any) -> bool:
    return all(hasattr(stub, name) for name in _STUB_API)


def _method_info(mo: Any, method: str) -> Any:
    for cls in type(mo).__mro__:
        info = getattr(cls, "_methodInfo", {}).get(method)
        if info is not None:
            return info
    raise AttributeError(f"{type(mo).__name__} has no method {method}")


def invoke(session: Session, mo: Any, method: str, args: list[Any]) -> ElementTree.Element:
    """Call `method` on managed object `mo`; return the answer's ``returnval`` element.

    A fault answer raises the pyVmomi fault, as a normal call would.
    """
    return call(session, mo, method, args).returnval()


class Answer:
    """An answer as it came (`call`); `returnval()` parses it, or raises its fault."""

    def __init__(self, stub: Any, info: Any, status: int, body: bytes) -> None:
        self.stub, self.info, self.status, self.body = stub, info, status, body

    def returnval(self) -> ElementTree.Element:
        from pyVmomi.SoapAdapter import SoapResponseDeserializer

        if self.status == 500:
            raise SoapResponseDeserializer(self.stub).Deserialize(io.BytesIO(self.body), self.info.result)
        root = ElementTree.fromstring(self.body)
        body_el = root.find(SOAP_BODY)
        response = body_el[0] if body_el is not None and len(body_el) else None
        returnval = response.find(VIM + "returnval") if response is not None else None
        if returnval is None:
            return ElementTree.Element(VIM + "returnval")  # an empty answer (no objects)
        return returnval


def call(session: Session, mo: Any, method: str, args: list[Any]) -> Answer:
    """Send the request and read its answer, unparsed: the network part of `invoke`, which a
    thread can do while another parses the previous answer (it waits on the socket, without the GIL)."""
    stub = session.stub
    info = _method_info(mo, method)
    session.count(method)
    request = stub.SerializeRequest(mo, info, args)
    headers = {
        "Cookie": stub.cookie,
        "SOAPAction": getattr(stub, "versionId", None) or "",
        "Content-Type": "text/xml; charset=UTF-8",
        "Accept-Encoding": "gzip, deflate",
    }
    headers.update(getattr(stub, "_customHeaders", None) or {})
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, request, headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        stub.DropConnections()
        raise
    cookie = resp.getheader("Set-Cookie")
    if cookie:
        stub.cookie = cookie
    encoding = (resp.getheader("Content-Encoding") or "identity").lower()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        try:
            body = zlib.decompress(body)
        except zlib.error:
            body = zlib.decompress(body, -zlib.MAX_WBITS)
    if resp.status not in (200, 500):
        conn.close()
        raise http.client.HTTPException(f"{resp.status} {resp.reason}")
    stub.ReturnConnection(conn)
    return Answer(stub, info, resp.status, body)


def local(tag: str) -> str:
    """``{urn:vim25}name`` → ``name``."""
    return tag.rpartition("}")[2]


def xsi_type(el: ElementTree.Element) -> str:
    """The element's ``xsi:type`` without a namespace prefix, or ''."""
    return (el.get(XSI_TYPE) or "").rpartition(":")[2]


def fields(el: ElementTree.Element) -> dict[str, str]:
    """The leaf children of a data object as ``{name: text}`` (nested objects are skipped)."""
    return {local(c.tag): c.text or "" for c in el if not len(c)}
