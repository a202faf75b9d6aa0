"""An empty stream-optimized VMDK: the placeholder disk of a development OVF package.

The format is VMware's "stream-optimized compressed sparse extent" (Virtual Disk
Format 5.0), the one OVF packages carry.  An empty disk is a header whose grain
directory is "at the end", the embedded descriptor, no grains, a grain
directory whose entries are all 0 (no grain table: every grain reads as zeros),
a footer (the header again, now pointing at the grain directory) and the
end-of-stream marker.  A 32 GiB disk is about 70 KiB.  `qemu-img info` reads it.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains
GTES_PER_GT = 512
DESCRIPTOR_SECTORS = 20
OVERHEAD_SECTORS = 128  # header and descriptor, padded to one grain
GD_AT_END = 0xFFFFFFFFFFFFFFFF

FLAG_NEWLINE_TEST = 1 << 0
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

_HEADER = struct.Struct("<4sIIQQQQIQQQBccccH433x")
assert _HEADER.size == SECTOR


def _header(capacity: int, gd_offset: int) -> bytes:
    return _HEADER.pack(
        b"KDMV",
        3,  # version: stream-optimized
        FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity,
        GRAIN_SECTORS,
        1,  # descriptor offset
        DESCRIPTOR_SECTORS,
        GTES_PER_GT,
        0,  # no redundant grain directory
        gd_offset,
        OVERHEAD_SECTORS,
        0,  # clean
        b"\n",
        b" ",
        b"\r",
        b"\n",
        1,  # deflate
    )


def _marker(sectors: int, kind: int) -> bytes:
    return struct.pack("<QII", sectors, 0, kind).ljust(SECTOR, b"\0")


def descriptor_text(capacity_sectors: int, file_name: str, cid: int) -> str:
    heads, sectors = 255, 63
    cylinders = min(capacity_sectors // (heads * sectors), 65535)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="streamOptimized"\n'
        "\n"
        "# Extent description\n"
        f'RW {capacity_sectors} SPARSE "{file_name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.adapterType = "lsilogic"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{sectors}"\n'
        'ddb.virtualHWVersion = "4"\n'
    )


def empty_disk(capacity_bytes: int, file_name: str = "disk.vmdk", cid: int | None = None) -> bytes:
    """The bytes of an empty stream-optimized VMDK of `capacity_bytes` (a multiple of 64 KiB)."""
    grain = GRAIN_SECTORS * SECTOR
    if capacity_bytes <= 0 or capacity_bytes % grain:
        raise ValueError(f"capacity must be a positive multiple of {grain} bytes, got {capacity_bytes}")
    capacity = capacity_bytes // SECTOR
    tables = -(-capacity // (GRAIN_SECTORS * GTES_PER_GT))
    gd_sectors = -(-tables * 4 // SECTOR)
    text = descriptor_text(capacity, file_name, cid if cid is not None else random.getrandbits(32)).encode()
    if len(text) > DESCRIPTOR_SECTORS * SECTOR:
        raise ValueError("the disk's descriptor does not fit its space")

    out = bytearray(_header(capacity, GD_AT_END))
    out += text.ljust(DESCRIPTOR_SECTORS * SECTOR, b"\0")
    out += bytes(OVERHEAD_SECTORS * SECTOR - len(out))
    out += _marker(gd_sectors, MARKER_GD)
    gd_offset = len(out) // SECTOR
    out += bytes(gd_sectors * SECTOR)  # every entry 0: no grain table, all zeros
    out += _marker(1, MARKER_FOOTER)
    out += _header(capacity, gd_offset)
    out += _marker(0, MARKER_EOS)
    return bytes(out)


def write_empty_disk(path: Path, capacity_bytes: int) -> Path:
    path = Path(path)
    path.write_bytes(empty_disk(capacity_bytes, path.name))
    return path
