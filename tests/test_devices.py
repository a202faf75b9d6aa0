"""Device backends against real drivers: PoCL (OpenCL on the CPU) here, NVML on a GPU host.

PoCL reads POCL_DEVICES when the ICD is loaded, so anything that needs a
particular device set runs in a fresh Python process with that environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from radium.remoting.devices import discover_all, load_backends
from radium.remoting.devices.base import MpsLimits
from radium.remoting.devices.nvml import NvmlBackend, normalise_pci
from radium.remoting.devices.opencl import OpenCLBackend, _raw_device_info
from radium.remoting.schema import Device, LeasePart

pytestmark = pytest.mark.timeout(60)

_DISCOVER = """
import json, sys
from radium.remoting.devices.opencl import OpenCLBackend
backend = OpenCLBackend()
devices = backend.discover()
wanted = [d for d in devices if d.id in sys.argv[1:]]
print(json.dumps({
    "ids": [d.id for d in devices],
    "platforms": [d.vendor for d in devices],
    "visibility": backend.visibility(wanted).environment if wanted else None,
}))
"""

_SEE = """
import json, os, pyopencl as cl
seen = []
for p in cl.get_platforms():
    if "pocl" in (p.name + p.vendor).lower() or "portable" in p.name.lower():
        seen.extend(d.name for d in p.get_devices())
print(json.dumps({"pocl_devices": seen, "radium": os.environ.get("RADIUM_OPENCL_DEVICES")}))
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    full_env = dict(os.environ)
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def opencl() -> OpenCLBackend:
    backend = OpenCLBackend()
    if not backend.available():
        pytest.fail("no OpenCL platform: PoCL should be installed on this machine")
    return backend


@pytest.fixture(scope="module")
def devices(opencl: OpenCLBackend) -> list[Device]:
    return opencl.discover()


def test_discovery_finds_devices_with_sane_fields(devices: list[Device]) -> None:
    assert devices, "PoCL exposes at least one CPU device"
    for d in devices:
        assert d.id.startswith("ocl-") and len(d.id) == 4 + 16
        assert d.backend == "opencl"
        assert d.vendor and d.model
        assert d.memory_bytes > 0
        assert d.compute_units is not None and d.compute_units >= 1
        assert d.pci_address is None or len(d.pci_address) == len("0000:3b:00.0")
        assert d.health == "unknown"
    assert len({d.id for d in devices}) == len(devices)


def test_raw_device_info_reads_what_pyopencl_reads(opencl: OpenCLBackend) -> None:
    # The ctypes path used for PCI extensions pyopencl does not wrap, checked on a plain query.
    import pyopencl as cl

    cl_device = cl.get_platforms()[0].get_devices()[0]
    raw = _raw_device_info(cl_device, 0x1002, 4)  # CL_DEVICE_MAX_COMPUTE_UNITS
    assert raw is not None
    assert int.from_bytes(raw, "little") == cl_device.max_compute_units
    assert _raw_device_info(cl_device, 0x7FFF, 4) is None  # unknown query: no exception


def test_ids_stable_across_processes(devices: list[Device]) -> None:
    first = _python(_DISCOVER)["ids"]
    second = _python(_DISCOVER)["ids"]
    assert first == second == [d.id for d in devices]


def test_identical_devices_get_distinct_stable_ids() -> None:
    one = _python(_DISCOVER, env={"POCL_DEVICES": "pthread"})["ids"]
    two = _python(_DISCOVER, env={"POCL_DEVICES": "pthread pthread"})["ids"]
    again = _python(_DISCOVER, env={"POCL_DEVICES": "pthread pthread"})["ids"]
    assert len(one) >= 1 and len(two) == len(one) + 1
    assert len(set(two)) == len(two), "two identical CPU devices must not share an id"
    assert two == again
    assert two[0] == one[0], "the first device keeps its id when a second one appears"


def test_health_check_runs_a_kernel(opencl: OpenCLBackend, devices: list[Device]) -> None:
    result = opencl.check_health(devices[0])
    assert result.ok, result.detail
    assert "verified" in result.detail
    again = opencl.check_health(devices[0])  # cached context and program
    assert again.ok, again.detail


def test_health_check_of_unknown_device_is_not_ok(opencl: OpenCLBackend) -> None:
    ghost = Device(id="ocl-0000000000000000", backend="opencl", vendor="x", model="y", memory_bytes=1)
    result = opencl.check_health(ghost)
    assert not result.ok and "not found" in result.detail


def test_usage_is_empty_for_opencl(opencl: OpenCLBackend, devices: list[Device]) -> None:
    usage = opencl.usage(devices[0])
    assert usage.memory_used_bytes is None and usage.utilization_percent is None


def test_visibility_limits_pocl_to_the_chosen_device() -> None:
    env = {"POCL_DEVICES": "pthread pthread"}
    ids = _python(_DISCOVER, env=env)["ids"]
    assert len(ids) >= 2
    second = _python(_DISCOVER, ids[1], env=env)["visibility"]
    assert second == {"POCL_DEVICES": "pthread", "RADIUM_OPENCL_DEVICES": "0:0"}
    both = _python(_DISCOVER, ids[0], ids[1], env=env)["visibility"]
    assert both["POCL_DEVICES"] == "pthread pthread"
    assert both["RADIUM_OPENCL_DEVICES"] == "0:0,0:1"

    # A program started with that environment sees just the one PoCL device.
    seen = _python(_SEE, env={**env, **second})
    assert len(seen["pocl_devices"]) == 1
    assert seen["radium"] == "0:0"


def test_skip_vendors_hides_a_platform(devices: list[Device]) -> None:
    import pyopencl as cl

    vendor = cl.get_platforms()[0].vendor
    hidden = OpenCLBackend(skip_vendors={vendor.upper()}).discover()
    assert len(hidden) < len(devices)


def test_load_backends_and_discover_all(devices: list[Device]) -> None:
    backends = load_backends(["nvml", "opencl"])
    names = [b.name for b in backends]
    assert "opencl" in names
    assert names == [n for n in ["nvml", "opencl"] if n in names]  # order kept
    if "nvml" in names:
        opencl = backends[names.index("opencl")]
        assert isinstance(opencl, OpenCLBackend) and "nvidia" in opencl.skip_vendors
    pairs = discover_all(backends)
    assert {d.id for _, d in pairs} >= {d.id for d in devices}
    assert all(d.backend == b.name for b, d in pairs)
    with pytest.raises(ValueError):
        load_backends(["cuda"])


def test_nvml_helpers_without_a_gpu() -> None:
    assert normalise_pci("00000000:3B:00.0") == "0000:3b:00.0"
    assert normalise_pci(b"0000:AF:00.1") == "0000:af:00.1"
    gpus = [
        Device(id=f"nvidia-GPU-{n}", backend="nvml", vendor="NVIDIA", model="m", memory_bytes=1)
        for n in ("aaaa", "bbbb")
    ]
    env = NvmlBackend().visibility(gpus).environment
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_a_partial_nvidia_lease_is_held_to_its_share_by_mps_limits() -> None:
    gpus = [
        Device(id=f"nvidia-GPU-{n}", backend="nvml", vendor="NVIDIA", model="m", memory_bytes=16 << 30)
        for n in ("aaaa", "bbbb")
    ]
    half = [LeasePart(device_id=g.id, memory_bytes=8 << 30, fraction=0.5) for g in gpus]
    seen = NvmlBackend().visibility(gpus, half)
    assert seen.environment["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    # Indexes as the process enumerates them (its CUDA_VISIBLE_DEVICES order), memory in MiB.
    assert seen.mps == MpsLimits(memory_mib={0: 8192, 1: 8192}, threads=50)
    third = [LeasePart(device_id=gpus[1].id, memory_bytes=(16 << 30) // 3, fraction=1 / 3)]
    assert NvmlBackend().visibility(gpus[1:], third).mps == MpsLimits(memory_mib={0: 5461}, threads=34)
    whole = [LeasePart(device_id=g.id, memory_bytes=16 << 30, fraction=1.0) for g in gpus]
    assert NvmlBackend().visibility(gpus, whole).mps is None  # a whole device needs no MPS
    assert NvmlBackend().visibility(gpus).mps is None


def test_nvml_backend_on_a_gpu_host() -> None:
    backend = NvmlBackend()
    if not backend.available():
        pytest.skip(
            "no NVIDIA driver (libnvidia-ml) on this machine: NVML backend checked only on a GPU host"
        )
    gpus = backend.discover()
    assert gpus
    for gpu in gpus:
        assert gpu.id.startswith("nvidia-GPU-")
        assert gpu.vendor == "NVIDIA" and gpu.model and gpu.memory_bytes > 0
        assert gpu.pci_address and gpu.pci_address == gpu.pci_address.lower()
        health = backend.check_health(gpu)
        assert health.ok, health.detail
        usage = backend.usage(gpu)
        assert usage.memory_used_bytes is not None
    assert [g.id for g in backend.discover()] == [g.id for g in gpus]


def test_a_passed_through_gpu_without_a_driver_is_listed_as_failed_saying_why(tmp_path) -> None:
    """The PCI bus as sysfs shows it (a copy of its layout): GPUs no backend sees are reported."""
    from pathlib import Path

    from radium.remoting.devices.pci import undriven

    bus = tmp_path / "sys/bus/pci/devices"

    def pci(address: str, vendor: int, device: int, code: int, driver: str | None = None) -> None:
        d = bus / address
        d.mkdir(parents=True)
        for name, value in (("vendor", vendor), ("device", device), ("class", code)):
            (d / name).write_text(f"0x{value:04x}\n" if name != "class" else f"0x{value:06x}\n")
        if driver:
            (tmp_path / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(tmp_path / "drivers" / driver)

    pci("0000:0b:00.0", 0x10DE, 0x20B5, 0x030200)  # an A100 passed through, no nvidia.ko
    pci("0000:13:00.0", 0x1002, 0x738C, 0x038000, driver="amdgpu")  # an MI100 with its driver
    pci("0000:00:0f.0", 0x15AD, 0x0405, 0x030000)  # the VM's own SVGA adapter
    pci("0000:00:02.0", 0x8086, 0x9BC8, 0x030000)  # a host's integrated VGA
    pci("0000:1b:00.0", 0x1002, 0x74A1, 0x120000)  # an MI300 (processing accelerator), no driver
    found = undriven(tmp_path / "sys")
    assert [(d.id, d.vendor, d.health) for d in found] == [
        ("pci-0000:0b:00.0", "NVIDIA", "failed"),
        ("pci-0000:1b:00.0", "AMD", "failed"),
    ]
    assert found[0].model == "NVIDIA GPU 10de:20b5" and found[0].pci_address == "0000:0b:00.0"
    assert "no driver: NVIDIA's driver" in found[0].health_detail and "driver hook" in found[0].health_detail
    assert undriven(Path(tmp_path / "nothing")) == []
