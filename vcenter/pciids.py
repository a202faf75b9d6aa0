"""Names for accelerator PCI ids: a small table of the vendors and models Radium meets.

Not the whole pci.ids database: the vendors that make data-centre accelerators
and their current models (including those the simulator's hosts carry).  An id
not in the table is named by what the host reports, else ``unknown 0xVVVV:0xDDDD``.
"""

from __future__ import annotations

__all__ = [
    "ACCELERATOR_VENDORS",
    "DEFAULT_MEMORY_GIB",
    "MEMORY_GIB",
    "MODELS",
    "VENDORS",
    "is_accelerator",
    "memory_gib",
    "model_name",
    "vendor_name",
]

NVIDIA, AMD, INTEL = 0x10DE, 0x1002, 0x8086

VENDORS: dict[int, str] = {NVIDIA: "NVIDIA", AMD: "AMD", INTEL: "Intel"}

#: Vendors whose VGA-class (0x0300) devices are GPUs rather than a server's console adapter.
ACCELERATOR_VENDORS = frozenset(VENDORS)

MODELS: dict[tuple[int, int], str] = {
    (NVIDIA, 0x1DB1): "Tesla V100 SXM2 16GB",
    (NVIDIA, 0x1DB4): "Tesla V100 PCIe 16GB",
    (NVIDIA, 0x1DB6): "Tesla V100 PCIe 32GB",
    (NVIDIA, 0x1EB8): "Tesla T4",
    (NVIDIA, 0x20B0): "A100 SXM4 40GB",
    (NVIDIA, 0x20B5): "A100 PCIe 80GB",
    (NVIDIA, 0x20F1): "A100 PCIe 40GB",
    (NVIDIA, 0x2236): "A10",
    (NVIDIA, 0x2330): "H100 SXM5 80GB",
    (NVIDIA, 0x2331): "H100 PCIe",
    (AMD, 0x738C): "Instinct MI100",
    (AMD, 0x740C): "Instinct MI250X/MI250",
    (AMD, 0x74A1): "Instinct MI300X",
    (INTEL, 0x0BD5): "Data Center GPU Max 1550",
    (INTEL, 0x56C0): "Data Center GPU Flex 170",
}

#: Device memory in GiB by model: what a VM's 64-bit MMIO window must map (BAR sizes follow memory).
MEMORY_GIB: dict[tuple[int, int], int] = {
    (NVIDIA, 0x1DB1): 16,
    (NVIDIA, 0x1DB4): 16,
    (NVIDIA, 0x1DB6): 32,
    (NVIDIA, 0x1EB8): 16,
    (NVIDIA, 0x20B0): 40,
    (NVIDIA, 0x20B5): 80,
    (NVIDIA, 0x20F1): 40,
    (NVIDIA, 0x2236): 24,
    (NVIDIA, 0x2330): 80,
    (NVIDIA, 0x2331): 80,
    (AMD, 0x738C): 32,
    (AMD, 0x740C): 128,
    (AMD, 0x74A1): 192,
    (INTEL, 0x0BD5): 128,
    (INTEL, 0x56C0): 16,
}

#: For a model not in the table: enough for most current data-centre GPUs' BARs (an oversized
#: MMIO window costs only guest physical address space; an undersized one stops the driver).
DEFAULT_MEMORY_GIB = 48

DISPLAY, PROCESSING_ACCELERATOR = 0x03, 0x12
VGA = 0x0300


def is_accelerator(class_id: int, vendor_id: int) -> bool:
    """A display controller (class 0x03xx) or processing accelerator (0x12xx).

    A plain VGA controller (0x0300) counts only from a GPU vendor: the VGA
    adapter of a server's management controller (Matrox, ASPEED, VMware SVGA)
    is not something to pass through.
    """
    base = (class_id & 0xFFFF) >> 8
    if base == PROCESSING_ACCELERATOR:
        return True
    if base != DISPLAY:
        return False
    return (class_id & 0xFFFF) != VGA or (vendor_id & 0xFFFF) in ACCELERATOR_VENDORS


def vendor_name(vendor_id: int, reported: str = "") -> str:
    v = vendor_id & 0xFFFF
    return VENDORS.get(v) or reported or f"unknown 0x{v:04x}"


def model_name(vendor_id: int, device_id: int, reported: str = "") -> str:
    v, d = vendor_id & 0xFFFF, device_id & 0xFFFF
    return MODELS.get((v, d)) or reported or f"unknown 0x{v:04x}:0x{d:04x}"


def memory_gib(vendor_id: int, device_id: int) -> tuple[int, bool]:
    """The device's memory in GiB, and whether it is known (False: `DEFAULT_MEMORY_GIB`)."""
    known = MEMORY_GIB.get((vendor_id & 0xFFFF, device_id & 0xFFFF))
    return (known, True) if known is not None else (DEFAULT_MEMORY_GIB, False)
