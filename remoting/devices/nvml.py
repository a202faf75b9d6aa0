"""NVIDIA backend: discovery, health and usage through NVML (nvidia-ml-py).

Health is NVML's own view (queries answer, no pending page retirement or row
remapping, no uncorrected volatile ECC errors) plus, where pycuda is installed,
a tiny kernel really run on the device.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from ..schema import Device, LeasePart
from .base import (
    HEALTH_A,
    HEALTH_B,
    HEALTH_N,
    HealthResult,
    MpsLimits,
    Usage,
    Visibility,
    check_health_result,
    health_inputs,
)

# y[i] = a * x[i] + b for i < n; loaded through the driver's PTX JIT, so no nvcc is needed.
_PTX = """
.version {version}
.target sm_{target}
.address_size 64

.visible .entry radium_axpb(
    .param .u64 y_ptr,
    .param .u64 x_ptr,
    .param .f32 a,
    .param .f32 b,
    .param .u32 n
)
{{
    .reg .pred p;
    .reg .b32 r<5>;
    .reg .f32 f<5>;
    .reg .b64 rd<6>;

    ld.param.u64 rd1, [y_ptr];
    ld.param.u64 rd2, [x_ptr];
    ld.param.f32 f1, [a];
    ld.param.f32 f2, [b];
    ld.param.u32 r1, [n];
    mov.u32 r2, %ctaid.x;
    mov.u32 r3, %ntid.x;
    mov.u32 r4, %tid.x;
    mad.lo.s32 r2, r2, r3, r4;
    setp.ge.u32 p, r2, r1;
    @p bra DONE;
    cvta.to.global.u64 rd1, rd1;
    cvta.to.global.u64 rd2, rd2;
    mul.wide.u32 rd3, r2, 4;
    add.s64 rd4, rd2, rd3;
    ld.global.f32 f3, [rd4];
    fma.rn.f32 f4, f3, f1, f2;
    add.s64 rd5, rd1, rd3;
    st.global.f32 [rd5], f4;
DONE:
    ret;
}}
"""

# (compute capability, PTX target, the first PTX ISA version that knows that target)
_PTX_TARGETS = [
    ((3, 0), "30", "3.0"),
    ((3, 5), "35", "3.1"),
    ((5, 0), "50", "4.0"),
    ((6, 0), "60", "5.0"),
    ((7, 0), "70", "6.0"),
    ((7, 5), "75", "6.3"),
    ((8, 0), "80", "7.0"),
    ((8, 6), "86", "7.1"),
    ((8, 9), "89", "7.8"),
    ((9, 0), "90", "7.8"),
    ((10, 0), "100", "8.6"),
    ((12, 0), "120", "8.7"),
]


def _ptx_for(capability: tuple[int, int]) -> str:
    target, version = "30", "3.0"
    for cc, t, v in _PTX_TARGETS:
        if cc <= capability:
            target, version = t, v
    return _PTX.format(version=version, target=target)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def normalise_pci(bus_id: str) -> str:
    """NVML's '00000000:3B:00.0' (or '0000:3b:00.0') -> '0000:3b:00.0'."""
    bus_id = _text(bus_id).strip().lower()
    parts = bus_id.split(":")
    if len(parts) == 3:
        domain, bus, devfn = parts
        return f"{int(domain, 16) & 0xFFFF:04x}:{int(bus, 16):02x}:{devfn}"
    if len(parts) == 2:  # no domain
        bus, devfn = parts
        return f"0000:{int(bus, 16):02x}:{devfn}"
    return bus_id


def mps_limits(parts: list[LeasePart]) -> MpsLimits | None:
    """What MPS must enforce for a lease of `parts` (None when every device is whole).

    Memory: each device's leased bytes, rounded down to MiB (MPS takes M units).
    Compute: the largest leased fraction, as a percentage rounded up (a share of
    0.5 may use half the SMs; never 0).
    """
    if not parts or all(p.fraction >= 1.0 for p in parts):
        return None
    return MpsLimits(
        memory_mib={i: max(1, p.memory_bytes >> 20) for i, p in enumerate(parts)},
        threads=max(1, min(100, math.ceil(max(p.fraction for p in parts) * 100 - 1e-9))),
    )


def _uuid_of(device: Device) -> str:
    return device.id.removeprefix("nvidia-")


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NvmlBackend:
    """NVIDIA GPUs through NVML; ids are 'nvidia-' + the GPU's UUID."""

    name = "nvml"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialised = False
        self._cuda_ready: bool | None = None

    # --- NVML session -------------------------------------------------------------

    def _init(self) -> Any:
        """pynvml, initialised once for the backend's lifetime (raises where it cannot)."""
        import pynvml

        with self._lock:
            if not self._initialised:
                pynvml.nvmlInit()
                self._initialised = True
        return pynvml

    def available(self) -> bool:
        try:
            self._init()
            return True
        except ImportError:
            return False
        except Exception:  # pynvml.NVMLError: library not found, driver not loaded, ...
            return False

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                try:
                    import pynvml

                    pynvml.nvmlShutdown()
                except Exception:
                    pass
                self._initialised = False

    # --- discovery ---------------------------------------------------------------

    def discover(self) -> list[Device]:
        try:
            nv = self._init()
            count = nv.nvmlDeviceGetCount()
        except Exception:
            return []
        out: list[Device] = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                out.append(self._describe(nv, handle))
            except Exception:
                continue  # a GPU NVML cannot describe (lost, no permission) is not offered
        return out

    def _describe(self, nv: Any, handle: Any) -> Device:
        uuid = _text(nv.nvmlDeviceGetUUID(handle))
        try:
            pci: str | None = normalise_pci(nv.nvmlDeviceGetPciInfo(handle).busId)
        except Exception:
            pci = None
        return Device(
            id="nvidia-" + uuid,
            backend=self.name,
            vendor="NVIDIA",
            model=_text(nv.nvmlDeviceGetName(handle)),
            memory_bytes=int(nv.nvmlDeviceGetMemoryInfo(handle).total),
            pci_address=pci,
            compute_units=self._multiprocessors(nv, handle),
        )

    @staticmethod
    def _multiprocessors(nv: Any, handle: Any) -> int | None:
        try:
            count = int(nv.nvmlDeviceGetAttributes(handle).multiprocessorCount)
        except Exception:  # older drivers answer only for MIG instances
            return None
        return count or None

    # --- health ------------------------------------------------------------------

    def check_health(self, device: Device) -> HealthResult:
        try:
            nv = self._init()
        except Exception as exc:
            return HealthResult(False, "NVML unavailable: " + _short(exc))
        try:
            handle = nv.nvmlDeviceGetHandleByUUID(_uuid_of(device))
            nv.nvmlDeviceGetName(handle)
            nv.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            return HealthResult(False, "NVML query failed: " + _short(exc))

        skippable = tuple(
            getattr(nv, n)
            for n in (
                "NVMLError_NotSupported",
                "NVMLError_NoPermission",
                "NVMLError_FunctionNotFound",
            )
            if hasattr(nv, n)
        )
        problems: list[str] = []
        notes: list[str] = []
        try:
            if nv.nvmlDeviceGetRetiredPagesPendingStatus(handle) == nv.NVML_FEATURE_ENABLED:
                problems.append("retired pages pending (GPU reset needed)")
        except skippable:
            pass
        except Exception as exc:
            problems.append("retired-pages query failed: " + _short(exc))
        try:
            _corr, _unc, pending, failure = nv.nvmlDeviceGetRemappedRows(handle)
            if failure:
                problems.append("row remapping failed")
            elif pending:
                problems.append("row remapping pending (GPU reset needed)")
        except skippable:
            pass
        except Exception as exc:
            problems.append("row-remapping query failed: " + _short(exc))
        try:
            errors = nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            )
            if errors:
                problems.append(f"{errors} uncorrected ECC errors since driver load")
        except skippable:
            pass
        except Exception as exc:
            problems.append("ECC query failed: " + _short(exc))
        if problems:
            return HealthResult(False, "; ".join(problems))

        kernel = self._cuda_check(device)
        if kernel is not None:
            if not kernel.ok:
                return kernel
            notes.append(kernel.detail)
        else:
            notes.append("pycuda not installed: no kernel run")
        return HealthResult(True, "NVML queries ok; " + "; ".join(notes))

    def _cuda_check(self, device: Device) -> HealthResult | None:
        """Run y = a*x + b on the device through pycuda; None where pycuda is not usable."""
        try:
            import numpy as np
            import pycuda.driver as cuda
        except Exception:
            return None
        if device.pci_address is None:
            return HealthResult(True, "no PCI address to find the GPU in CUDA: no kernel run")
        try:
            if self._cuda_ready is None:
                cuda.init()
                self._cuda_ready = True
        except Exception as exc:
            self._cuda_ready = None
            return HealthResult(False, "CUDA init failed: " + _short(exc))

        try:
            target = None
            for i in range(cuda.Device.count()):
                candidate = cuda.Device(i)
                if normalise_pci(candidate.pci_bus_id()) == device.pci_address:
                    target = candidate
                    break
            if target is None:
                return HealthResult(False, "GPU not visible to CUDA (check CUDA_VISIBLE_DEVICES)")

            # A fresh context per check, released afterwards: a cached one would hold GPU memory.
            ctx = target.retain_primary_context()
            ctx.push()
            try:
                return self._run_kernel(cuda, np, target)
            finally:
                ctx.pop()
                ctx.detach()
        except Exception as exc:
            return HealthResult(False, "CUDA check failed: " + _short(exc))

    @staticmethod
    def _run_kernel(cuda: Any, np: Any, target: Any) -> HealthResult:
        x, y = health_inputs()
        x_gpu = cuda.mem_alloc(x.nbytes)
        y_gpu = cuda.mem_alloc(y.nbytes)
        try:
            cuda.memcpy_htod(x_gpu, x)
            cuda.memcpy_htod(y_gpu, y)
            try:
                module = cuda.module_from_buffer(_ptx_for(target.compute_capability()).encode())
            except Exception as exc:
                # The driver's JIT refused our PTX: fall back to a memory round trip so a
                # healthy GPU is not condemned for a PTX version mismatch.
                cuda.memcpy_dtod(y_gpu, x_gpu, x.nbytes)
                cuda.memcpy_dtoh(y, y_gpu)
                if not np.array_equal(x, y):
                    return HealthResult(False, "device memory round trip returned wrong data")
                return HealthResult(True, f"memory round trip ok (PTX JIT unavailable: {_short(exc, 80)})")
            func = module.get_function("radium_axpb")
            block = 256
            func(
                y_gpu,
                x_gpu,
                np.float32(HEALTH_A),
                np.float32(HEALTH_B),
                np.uint32(HEALTH_N),
                block=(block, 1, 1),
                grid=((HEALTH_N + block - 1) // block, 1),
            )
            cuda.Context.synchronize()
            cuda.memcpy_dtoh(y, y_gpu)
            del func, module
        finally:
            x_gpu.free()
            y_gpu.free()
        return check_health_result(x, y, "CUDA")

    # --- usage and visibility -----------------------------------------------------

    def usage(self, device: Device) -> Usage:
        try:
            nv = self._init()
            handle = nv.nvmlDeviceGetHandleByUUID(_uuid_of(device))
        except Exception:
            return Usage()
        memory_used: int | None
        utilization: float | None
        try:
            memory_used = int(nv.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:
            memory_used = None
        try:
            utilization = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            utilization = None
        return Usage(memory_used_bytes=memory_used, utilization_percent=utilization)

    def visibility(self, devices: list[Device], parts: list[LeasePart] | None = None) -> Visibility:
        """CUDA_VISIBLE_DEVICES as GPU UUIDs (robust to renumbering, and to MPS's own
        remapping), PCI bus order; for a partial lease, the limits MPS is to enforce."""
        return Visibility(
            environment={
                "CUDA_VISIBLE_DEVICES": ",".join(_uuid_of(d) for d in devices),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            },
            mps=mps_limits(parts or []),
        )
