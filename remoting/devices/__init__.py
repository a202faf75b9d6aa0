"""Vendor device backends behind one interface (see `base.Backend`)."""

from __future__ import annotations

import logging

from ..schema import Device
from .base import Backend, HealthResult, Usage, Visibility

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "HealthResult",
    "Usage",
    "Visibility",
    "discover_all",
    "load_backends",
]

log = logging.getLogger(__name__)

BACKEND_NAMES = ("nvml", "opencl")


def load_backends(names: list[str]) -> list[Backend]:
    """The available backends among `names`, in the order given.

    When "nvml" is listed and available, the OpenCL backend skips NVIDIA
    platforms, so a GPU is not offered twice (once per backend).
    """
    unknown = [n for n in names if n not in BACKEND_NAMES]
    if unknown:
        raise ValueError(f"unknown device backend(s) {unknown}; known: {list(BACKEND_NAMES)}")

    from .nvml import NvmlBackend
    from .opencl import OpenCLBackend

    nvml: Backend | None = None
    if "nvml" in names:
        candidate = NvmlBackend()
        nvml = candidate if candidate.available() else None

    out: list[Backend] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        if name == "nvml":
            if nvml is not None:
                out.append(nvml)
        elif name == "opencl":
            opencl = OpenCLBackend(skip_vendors={"nvidia"} if nvml is not None else set())
            if opencl.available():
                out.append(opencl)
    return out


def discover_all(backends: list[Backend]) -> list[tuple[Backend, Device]]:
    """Every device of every backend, paired with its backend; a failing backend is logged."""
    out: list[tuple[Backend, Device]] = []
    for backend in backends:
        try:
            devices = backend.discover()
        except Exception:
            log.exception("device discovery failed in backend %s", backend.name)
            continue
        out.extend((backend, device) for device in devices)
    return out
