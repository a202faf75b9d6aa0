"""OpenCL backend: every device of every OpenCL platform (pyopencl).

Covers anything with an OpenCL driver: AMD and Intel GPUs, CPUs through PoCL,
and NVIDIA GPUs where NVML is not in use (the daemon skips NVIDIA platforms
when the NVML backend already reports them, see `load_backends`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..schema import Device, LeasePart
from .base import (
    HEALTH_A,
    HEALTH_B,
    HEALTH_N,
    HealthResult,
    Usage,
    Visibility,
    check_health_result,
    health_inputs,
)

# clGetDeviceInfo parameters that pyopencl does not wrap (or wraps unevenly).
_CL_DEVICE_PCI_BUS_INFO_KHR = 0x410F  # cl_khr_pci_bus_info: 4 x cl_uint
_CL_DEVICE_PCI_BUS_ID_NV = 0x4008  # cl_nv_device_attribute_query: cl_uint
_CL_DEVICE_PCI_SLOT_ID_NV = 0x4009  # cl_uint: device << 3 | function
_CL_DEVICE_PCI_DOMAIN_ID_NV = 0x400A  # cl_uint
_CL_DEVICE_TOPOLOGY_AMD = 0x4037  # cl_amd_device_attribute_query: 24-byte union
_CL_DEVICE_TOPOLOGY_TYPE_PCIE_AMD = 1

# PoCL drivers that can be named in POCL_DEVICES and show up as "<driver>-<cpu name>".
_POCL_CPU_DRIVERS = ("pthread", "basic", "cpu-minimal", "cpu", "tbb")

_HEALTH_SOURCE = """
__kernel void radium_axpb(__global const float *x, __global float *y,
                          const float a, const float b, const uint n)
{
    uint i = get_global_id(0);
    if (i < n) y[i] = a * x[i] + b;
}
"""


@dataclass
class _Found:
    platform_index: int
    device_index: int
    platform_name: str
    platform_vendor: str
    cl_device: Any  # pyopencl.Device


@dataclass
class _Prepared:
    context: Any
    queue: Any
    kernel: Any


def _load_cl_library() -> ctypes.CDLL | None:
    """The OpenCL ICD loader pyopencl itself uses (its wheel bundles one), else the system's."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "libOpenCL" in os.path.basename(path):
                    return ctypes.CDLL(path)
    except OSError:
        pass
    name = ctypes.util.find_library("OpenCL") or "libOpenCL.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_cl_lib: ctypes.CDLL | None = None
_cl_lib_loaded = False


def _raw_device_info(cl_device: Any, param: int, size: int) -> bytes | None:
    """clGetDeviceInfo through ctypes, for queries pyopencl cannot make; None on any error."""
    global _cl_lib, _cl_lib_loaded
    if not _cl_lib_loaded:
        _cl_lib = _load_cl_library()
        _cl_lib_loaded = True
    if _cl_lib is None:
        return None
    try:
        fn = _cl_lib.clGetDeviceInfo
        fn.restype = ctypes.c_int32
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        buf = ctypes.create_string_buffer(size)
        got = ctypes.c_size_t(0)
        err = fn(ctypes.c_void_p(cl_device.int_ptr), param, size, buf, ctypes.byref(got))
        if err != 0 or got.value < size:
            return None
        return buf.raw[:size]
    except Exception:
        return None


def _uint(raw: bytes | None) -> int | None:
    return None if raw is None else int.from_bytes(raw[:4], "little")


def _pci_address(cl_device: Any) -> str | None:
    """'DDDD:BB:DD.F' (lower-case hex) where the device reports it, else None."""
    try:
        extensions = set(cl_device.extensions.split())
    except Exception:
        return None
    if "cl_khr_pci_bus_info" in extensions:
        raw = _raw_device_info(cl_device, _CL_DEVICE_PCI_BUS_INFO_KHR, 16)
        if raw is not None:
            domain, bus, dev, fn = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8, 12))
            return f"{domain:04x}:{bus:02x}:{dev:02x}.{fn:x}"
    if "cl_nv_device_attribute_query" in extensions:
        nv_bus = _uint(_raw_device_info(cl_device, _CL_DEVICE_PCI_BUS_ID_NV, 4))
        nv_slot = _uint(_raw_device_info(cl_device, _CL_DEVICE_PCI_SLOT_ID_NV, 4))
        nv_domain = _uint(_raw_device_info(cl_device, _CL_DEVICE_PCI_DOMAIN_ID_NV, 4)) or 0
        if nv_bus is not None and nv_slot is not None:
            return f"{nv_domain:04x}:{nv_bus:02x}:{nv_slot >> 3:02x}.{nv_slot & 7:x}"
    if "cl_amd_device_attribute_query" in extensions:
        raw = _raw_device_info(cl_device, _CL_DEVICE_TOPOLOGY_AMD, 24)
        if raw is not None and int.from_bytes(raw[:4], "little") == (_CL_DEVICE_TOPOLOGY_TYPE_PCIE_AMD):
            # struct { cl_uint type; cl_char unused[17]; cl_char bus, device, function; }
            return f"0000:{raw[21]:02x}:{raw[22]:02x}.{raw[23]:x}"
    return None


def stable_id(platform_name: str, device_name: str, pci_address: str | None, index: int) -> str:
    """'ocl-' + 16 hex digits of SHA-256(platform, device name, PCI address or index)."""
    where = pci_address if pci_address else f"index:{index}"
    digest = hashlib.sha256(f"{platform_name}\0{device_name}\0{where}".encode()).hexdigest()
    return "ocl-" + digest[:16]


def _is_pocl(platform_name: str, platform_vendor: str) -> bool:
    text = f"{platform_name} {platform_vendor}".lower()
    return "portable computing language" in text or "pocl" in text


def _pocl_driver(device_name: str) -> str | None:
    for driver in _POCL_CPU_DRIVERS:
        if device_name.startswith(driver + "-"):
            return driver
    return None


class OpenCLBackend:
    """Devices seen through OpenCL; `skip_vendors` hides platforms whose vendor matches."""

    name = "opencl"

    def __init__(self, skip_vendors: set[str] | None = None) -> None:
        self.skip_vendors = {v.lower() for v in (skip_vendors or set())}
        self._lock = threading.Lock()
        self._found: dict[str, _Found] = {}
        self._prepared: dict[str, _Prepared] = {}

    # --- discovery ---------------------------------------------------------------

    def available(self) -> bool:
        try:
            import pyopencl as cl

            return len(cl.get_platforms()) > 0
        except Exception:  # ImportError, or pyopencl's LogicError/RuntimeError (no ICD)
            return False

    def _skipped(self, platform_vendor: str) -> bool:
        vendor = platform_vendor.lower()
        return any(s in vendor for s in self.skip_vendors)

    def _scan(self) -> list[tuple[Device, _Found]]:
        import pyopencl as cl

        out: list[tuple[Device, _Found]] = []
        try:
            platforms = cl.get_platforms()
        except Exception:
            return out
        for p_index, platform in enumerate(platforms):
            try:
                p_name = platform.name.strip()
                p_vendor = platform.vendor.strip()
            except Exception:
                continue
            if self._skipped(p_vendor):
                continue
            try:
                cl_devices = platform.get_devices()
            except Exception:  # CL_DEVICE_NOT_FOUND on a platform without devices
                continue
            for d_index, cl_device in enumerate(cl_devices):
                try:
                    name = cl_device.name.strip()
                    pci = _pci_address(cl_device)
                    device = Device(
                        id=stable_id(p_name, name, pci, d_index),
                        backend=self.name,
                        vendor=cl_device.vendor.strip(),
                        model=name,
                        memory_bytes=int(cl_device.global_mem_size),
                        pci_address=pci,
                        compute_units=int(cl_device.max_compute_units),
                    )
                except Exception:
                    continue
                out.append((device, _Found(p_index, d_index, p_name, p_vendor, cl_device)))
        return out

    def discover(self) -> list[Device]:
        try:
            scanned = self._scan()
        except Exception:
            return []
        with self._lock:
            self._found = {device.id: found for device, found in scanned}
        return [device for device, _ in scanned]

    def _lookup(self, device_id: str) -> _Found | None:
        with self._lock:
            found = self._found.get(device_id)
        if found is None:
            self.discover()
            with self._lock:
                found = self._found.get(device_id)
        return found

    # --- health ------------------------------------------------------------------

    def _prepare(self, device_id: str, found: _Found) -> _Prepared:
        import pyopencl as cl

        prepared = self._prepared.get(device_id)
        if prepared is None:
            context = cl.Context([found.cl_device])
            queue = cl.CommandQueue(context)
            program = cl.Program(context, _HEALTH_SOURCE).build()
            kernel = cl.Kernel(program, "radium_axpb")
            prepared = _Prepared(context, queue, kernel)
            self._prepared[device_id] = prepared
        return prepared

    def check_health(self, device: Device) -> HealthResult:
        """Build (once, cached) and run y = a*x + b over 4096 floats; verify every value."""
        try:
            import numpy as np
            import pyopencl as cl

            found = self._lookup(device.id)
            if found is None:
                return HealthResult(False, "device not found by OpenCL")
            with self._lock:
                try:
                    prepared = self._prepare(device.id, found)
                    x, y = health_inputs()
                    mf = cl.mem_flags
                    ctx = prepared.context
                    x_buf = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
                    y_buf = cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=y)
                    prepared.kernel.set_args(
                        x_buf,
                        y_buf,
                        np.float32(HEALTH_A),
                        np.float32(HEALTH_B),
                        np.uint32(HEALTH_N),
                    )
                    cl.enqueue_nd_range_kernel(prepared.queue, prepared.kernel, (HEALTH_N,), None)
                    cl.enqueue_copy(prepared.queue, y, y_buf)
                    prepared.queue.finish()
                    x_buf.release()
                    y_buf.release()
                except Exception:
                    self._prepared.pop(device.id, None)  # rebuild from scratch next time
                    raise
            return check_health_result(x, y, "OpenCL")
        except Exception as exc:
            return HealthResult(False, _short(exc))

    # --- usage and visibility -----------------------------------------------------

    def usage(self, device: Device) -> Usage:
        return Usage()  # OpenCL has no usage query

    def visibility(self, devices: list[Device], parts: list[LeasePart] | None = None) -> Visibility:
        """Environment that limits an OpenCL program to `devices`.

        OpenCL has no universal device-mask variable, so:

        * ``RADIUM_OPENCL_DEVICES`` is always set: a comma list of
          ``platform_index:device_index`` naming the allowed devices as the program
          will enumerate them (``clGetPlatformIDs`` order, then ``clGetDeviceIDs``
          order with CL_DEVICE_TYPE_ALL). Programs and wrappers that know Radium
          use only these; an unaware program still sees every platform and device
          except as narrowed below.
        * ``POCL_DEVICES`` is set when every allowed PoCL device is a CPU device of
          a known PoCL driver (pthread, basic, cpu, ...): PoCL then exposes only
          those devices, renumbered 0..k-1 in their original order, and
          RADIUM_OPENCL_DEVICES uses those new indices. If no PoCL device is
          allowed, POCL_DEVICES is left alone (PoCL cannot be told to expose none).
        * Other platforms are not narrowed: the program sees all their devices.

        OpenCL has no mechanism to hold a program to a share of a device: `parts`
        are the allocator's bookkeeping only.
        """
        env: dict[str, str] = {}
        chosen: list[_Found] = []
        for device in devices:
            found = self._lookup(device.id)
            if found is not None:
                chosen.append(found)
        chosen.sort(key=lambda f: (f.platform_index, f.device_index))

        pocl_platforms = {f.platform_index for f in chosen if _is_pocl(f.platform_name, f.platform_vendor)}
        renumber: dict[tuple[int, int], int] = {}
        for p_index in sorted(pocl_platforms):
            mine = [f for f in chosen if f.platform_index == p_index]
            drivers = self._pocl_drivers(mine)
            if drivers is None:
                continue
            env["POCL_DEVICES"] = " ".join(drivers)
            for new_index, f in enumerate(mine):
                renumber[(p_index, f.device_index)] = new_index
            break  # one PoCL installation per process

        env["RADIUM_OPENCL_DEVICES"] = ",".join(
            f"{f.platform_index}:{renumber.get((f.platform_index, f.device_index), f.device_index)}"
            for f in chosen
        )
        return Visibility(environment=env)

    @staticmethod
    def _pocl_drivers(found: list[_Found]) -> list[str] | None:
        """POCL_DEVICES entries, one per device, or None where one cannot be named."""
        configured = os.environ.get("POCL_DEVICES", "").split()
        drivers: list[str] = []
        for f in found:
            driver = None
            try:
                driver = _pocl_driver(f.cl_device.name.strip())
            except Exception:
                driver = None
            if driver is None and configured:
                # POCL_DEVICES lists one driver per device for CPU drivers; trust it by position.
                if f.device_index < len(configured) and configured[f.device_index] in _POCL_CPU_DRIVERS:
                    driver = configured[f.device_index]
            if driver is None:
                return None
            drivers.append(driver)
        return drivers


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
