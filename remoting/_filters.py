"""Device and server filters: `--filter device.name=V100`, `--filter device.memory>=16000`.

A filter is `KEY OP VALUE` with OP one of `= != < <= > >= ~` (`~` means
"contains", case-insensitive; `=` compares case-insensitively).  Keys name an
attribute of the device or of the server that holds it.
"""

from __future__ import annotations

import re

from ._errors import UsageError
from .schema import Device, Filter, ServerInfo

KEYS = {
    "device.id": "the device's stable id",
    "device.name": "the model name (same as device.model)",
    "device.model": "the model name",
    "device.vendor": "the vendor",
    "device.backend": "opencl or nvml",
    "device.memory": "memory in MiB (numeric)",
    "device.pci": "PCI address",
    "server.name": "the appliance's name",
    "server.hostname": "the appliance's host name",
}
NUMERIC = {"device.memory"}

_FILTER_RE = re.compile(r"^\s*([a-z]+\.[a-z]+)\s*(!=|<=|>=|=|<|>|~)\s*(.*?)\s*$")


def parse_filter(text: str) -> Filter:
    match = _FILTER_RE.match(text)
    if not match:
        raise UsageError(
            f"invalid filter {text!r}: expected KEY OP VALUE, e.g. device.name=V100 "
            "or device.memory>=16000 (OP is one of = != < <= > >= ~)"
        )
    key, op, value = match.groups()
    if key not in KEYS:
        known = ", ".join(KEYS)
        raise UsageError(f"unknown filter key {key!r}; known keys: {known}")
    if op in ("<", "<=", ">", ">=") and key not in NUMERIC:
        raise UsageError(f"filter {text!r}: {op} only applies to numeric keys ({', '.join(NUMERIC)})")
    if key in NUMERIC:
        try:
            float(value)
        except ValueError:
            raise UsageError(f"filter {text!r}: {key} takes a number, got {value!r}") from None
    return Filter(key=key, op=op, value=value)  # type: ignore[arg-type]


def _attribute(key: str, device: Device, server: ServerInfo) -> str | float | None:
    match key:
        case "device.id":
            return device.id
        case "device.name" | "device.model":
            return device.model
        case "device.vendor":
            return device.vendor
        case "device.backend":
            return device.backend
        case "device.memory":
            return device.memory_bytes / (1 << 20)
        case "device.pci":
            return device.pci_address
        case "server.name":
            return server.name
        case "server.hostname":
            return server.hostname
    return None


def matches(f: Filter, device: Device, server: ServerInfo) -> bool:
    actual = _attribute(f.key, device, server)
    if actual is None:
        return f.op == "!="
    if isinstance(actual, float):
        want = float(f.value)
        return {
            "=": actual == want,
            "!=": actual != want,
            "<": actual < want,
            "<=": actual <= want,
            ">": actual > want,
            ">=": actual >= want,
            "~": f.value in (str(int(actual)) if actual.is_integer() else repr(actual)),
        }[f.op]
    a, v = actual.casefold(), f.value.casefold()
    if f.op == "=":
        return a == v
    if f.op == "!=":
        return a != v
    if f.op == "~":
        return v in a
    return False


def matches_all(filters: list[Filter], device: Device, server: ServerInfo) -> bool:
    return all(matches(f, device, server) for f in filters)


def describe(filters: list[Filter]) -> str:
    return " and ".join(f"{f.key}{f.op}{f.value}" for f in filters)
