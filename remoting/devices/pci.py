"""Accelerators the machine has but no backend can use: PCI GPUs with no driver bound.

An appliance gets its GPUs by DirectPath; NVIDIA's and AMD's drivers are not in the image
(they are not redistributable: a driver hook adds them, see appliance/README.md).  Without
one, the GPU is on the PCI bus but invisible to NVML, OpenCL and ROCm, and radiumd would
simply not list it.  These are listed instead, as failed devices that say why, so that
`radium list-gpus`, `radium health` and the first boot's log tell the operator.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..schema import Device

VENDORS = {0x10DE: "NVIDIA", 0x1002: "AMD", 0x8086: "Intel"}
DRIVERS = {
    "NVIDIA": "NVIDIA's driver (nvidia.ko and its user-space libraries)",
    "AMD": "AMD's amdgpu driver with ROCm",
    "Intel": "Intel's GPU driver (i915 or xe) with its compute runtime",
}


def _accelerator_class(code: int, vendor: int) -> bool:
    base, sub = code >> 16, (code >> 8) & 0xFF
    if base == 0x12:  # processing accelerator
        return True
    if base != 0x03:  # display controllers: VGA 00, XGA 01, 3D 02, other 80
        return False
    return vendor != 0x8086 or sub in (0x02, 0x80)  # Intel VGA is a host's own integrated graphics


def _hex(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def undriven(sys_root: Path = Path("/sys")) -> list[Device]:
    """Every NVIDIA, AMD or Intel accelerator on the PCI bus with no driver bound, as a failed device."""
    found = []
    for dev in sorted((sys_root / "bus/pci/devices").glob("*")):
        vendor, code, device = _hex(dev / "vendor"), _hex(dev / "class"), _hex(dev / "device")
        if vendor not in VENDORS or code is None or not _accelerator_class(code, vendor):
            continue
        if (dev / "driver").exists():
            continue
        name = VENDORS[vendor]
        model = f"{name} GPU {vendor:04x}:{device or 0:04x}"
        found.append(
            Device(
                id=f"pci-{dev.name}",
                backend="pci",
                vendor=name,
                model=model,
                memory_bytes=0,
                pci_address=dev.name,
                health="failed",
                health_detail=f"no driver: {DRIVERS[name]} is not installed on this appliance "
                "(add it to the image with a driver hook: appliance/README.md)",
            )
        )
    return found


NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")


def device_nodes(pci_address: str | None, sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc"),
                 dev_root: Path = Path("/dev")) -> list[str]:  # fmt: skip
    """The device nodes a process needs to use the accelerator at this PCI address (a run's
    cgroup lets it open these, run/devicefilter.py): its DRM nodes (`/dev/dri/renderD*`,
    `card*`), and by vendor NVIDIA's `/dev/nvidiaN` (N its minor, from the driver's /proc
    entry) with the driver's shared nodes, AMD's `/dev/kfd` (ROCm).  None without an address
    (a CPU device: PoCL's needs no node).  Only nodes that exist."""
    if not pci_address:
        return []
    device = sys_root / "bus/pci/devices" / pci_address
    found = [dev_root / "dri" / d.name for d in sorted((device / "drm").glob("*"))]
    vendor = VENDORS.get(_hex(device / "vendor") or 0)
    if vendor == "NVIDIA":
        with contextlib.suppress(OSError):
            information = (proc_root / "driver/nvidia/gpus" / pci_address / "information").read_text()
            for line in information.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Device Minor" and value.strip().isdigit():
                    found.append(dev_root / f"nvidia{int(value)}")
        found += [dev_root / name for name in NVIDIA_SHARED]
        found += sorted((dev_root / "nvidia-caps").glob("*"))  # MIG's capabilities
    elif vendor == "AMD":
        found.append(dev_root / "kfd")
    return [str(path) for path in found if path.exists()]
