"""The appliance's OVF 2.0 descriptor, its package (.ovf + .mf + disk, or one .ova), and checks.

`descriptor()` is the one source of the descriptor: hardware (CPUs, memory, a
paravirtual SCSI controller with the system disk, one vmxnet3 NIC, EFI firmware
without Secure Boot, memory reservation locked to the maximum as DirectPath
needs), and a ProductSection that declares every property of the first-boot
contract (`radium.appliance.properties.PROPERTIES`), delivered to the guest
through the `com.vmware.guestInfo` transport or the `iso` one (a CD-ROM).

`validate()` and `validate_package()` list what is wrong with a descriptor or a
package, so that a deploy can refuse it before creating anything in vCenter.
`environment()` writes an OVF environment document the way vSphere does (what
the guest reads from `guestinfo.ovfEnv`); tests and the lab use it.

    python -m radium.appliance.ovf descriptor            # print the descriptor
    python -m radium.appliance.ovf package OUT.ova [--disk built.vmdk]
    python -m radium.appliance.ovf package OUT-dir/ [--disk built.vmdk]
    python -m radium.appliance.ovf validate PATH         # .ovf, .ova or a package folder
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from radium.remoting import VERSION

from . import vmdk
from .properties import BY_KEY, PROPERTIES, REQUIRED, SECRET, PropertySpec

OVF = "http://schemas.dmtf.org/ovf/envelope/2"
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XML = "http://www.w3.org/XML/1998/namespace"
OE = "http://schemas.dmtf.org/ovf/environment/1"
VE = "http://www.vmware.com/schema/ovfenv"

TRANSPORT = "com.vmware.guestInfo"
ISO_TRANSPORT = "iso"  # also offered: the environment on a CD-ROM (the first boot reads either)
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
NETWORK = "VM Network"  # the OVF network name a deploy maps to a vSphere network
DISK_ID = "vmdisk1"
FILE_ID = "file1"

# Resource types (CIM_ResourceAllocationSettingData.ResourceType).
CPU, MEMORY, SCSI, NIC, DISK = 3, 4, 6, 10, 17

# Configuration a deploy may rely on, as the descriptor sets it (vmw:Config: VirtualMachineConfigSpec).
VM_CONFIG = {
    "firmware": "efi",
    # Debian's NVIDIA/AMD kernel modules are built on the appliance (DKMS) and not signed.
    "bootOptions.efiSecureBootEnabled": "false",
    # DirectPath I/O needs all guest memory reserved, and no memory hot-add.
    "memoryReservationLockedToMax": "true",
    "memoryHotAddEnabled": "false",
    "cpuHotAddEnabled": "false",
}

# The prefixes vSphere uses, for every document ElementTree writes (descriptors and environments).
for _prefix, _uri in (
    ("ovf", OVF),
    ("rasd", RASD),
    ("vssd", VSSD),
    ("vmw", VMW),
    ("xsi", XSI),
    ("oe", OE),
    ("ve", VE),
):
    ET.register_namespace(_prefix, _uri)


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _sub(parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, _q(ns, tag), attrs)
    if text is not None:
        el.text = text
    return el


def _item(hw: ET.Element, fields: Mapping[str, str]) -> ET.Element:
    """A hardware Item; CIM wants its elements in alphabetical order."""
    item = _sub(hw, OVF, "Item")
    for name in sorted(fields):
        _sub(item, RASD, name, fields[name])
    return item


def _property(product: ET.Element, spec: PropertySpec) -> None:
    attrs = {
        _q(OVF, "key"): spec.key,
        _q(OVF, "type"): spec.type,
        _q(OVF, "userConfigurable"): "true",
        _q(OVF, "value"): spec.default,
    }
    if spec.qualifiers:
        attrs[_q(OVF, "qualifiers")] = spec.qualifiers
    if spec.password:
        attrs[_q(OVF, "password")] = "true"
    prop = _sub(product, OVF, "Property", **attrs)
    _sub(prop, OVF, "Label", spec.label + (" (required)" if spec.required else ""))
    _sub(prop, OVF, "Description", spec.description)


def default_disk_file(name: str) -> str:
    return f"{name}-disk1.vmdk"


def descriptor(
    name: str = "radium-appliance",
    *,
    cpus: int = 4,
    memory_mib: int = 16384,
    disk_gib: int = 32,
    disk_file: str | None = None,
    disk_file_size: int | None = None,
    network: str = NETWORK,
    hardware_version: str = "vmx-17",
    os_type: str = "debian11_64Guest",
    version: str = VERSION,
) -> str:
    """The appliance's OVF 2.0 descriptor, as text.

    `disk_file` is the href of the disk in the package (default NAME-disk1.vmdk)
    and `disk_file_size` its size in bytes (omitted when None).  vmx-17 is
    vSphere 7.0 (dynamic DirectPath); `debian11_64Guest` is the closest guest
    type vSphere 7 knows for Debian 12 (vSphere 8 has debian12_64Guest).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", name):
        raise ValueError(f"invalid appliance name {name!r}: letters, digits, '.', '_', '-'")
    if cpus < 1 or memory_mib < 1024 or disk_gib < 1:
        raise ValueError("the appliance needs at least 1 CPU, 1024 MiB of memory and 1 GiB of disk")
    disk_file = disk_file or default_disk_file(name)

    env = ET.Element(_q(OVF, "Envelope"), {_q(OVF, "version"): "2.0", _q(XML, "lang"): "en-US"})
    refs = _sub(env, OVF, "References")
    file_attrs = {_q(OVF, "href"): disk_file, _q(OVF, "id"): FILE_ID}
    if disk_file_size is not None:
        file_attrs[_q(OVF, "size")] = str(disk_file_size)
    _sub(refs, OVF, "File", **file_attrs)

    disks = _sub(env, OVF, "DiskSection")
    _sub(disks, OVF, "Info", "The appliance's system disk")
    _sub(
        disks,
        OVF,
        "Disk",
        **{
            _q(OVF, "capacity"): str(disk_gib),
            _q(OVF, "capacityAllocationUnits"): "byte * 2^30",
            _q(OVF, "diskId"): DISK_ID,
            _q(OVF, "fileRef"): FILE_ID,
            _q(OVF, "format"): STREAM_OPTIMIZED,
        },
    )

    nets = _sub(env, OVF, "NetworkSection")
    _sub(nets, OVF, "Info", "The network radiumd serves clients on")
    net = _sub(nets, OVF, "Network", **{_q(OVF, "name"): network})
    _sub(net, OVF, "Description", "Clients reach radiumd on this network")

    vs = _sub(env, OVF, "VirtualSystem", **{_q(OVF, "id"): name})
    _sub(vs, OVF, "Info", "A Radium appliance: lends this VM's DirectPath accelerators to client VMs")
    _sub(vs, OVF, "Name", name)

    ann = _sub(vs, OVF, "AnnotationSection")
    _sub(ann, OVF, "Info", "Description")
    _sub(
        ann,
        OVF,
        "Annotation",
        f"Radium appliance {version}: radiumd lends this VM's GPUs to client VMs (`radium run`). "
        "Configured at first boot from its vApp properties.",
    )

    product = _sub(vs, OVF, "ProductSection", **{_q(OVF, "required"): "true"})
    _sub(product, OVF, "Info", "The appliance's configuration, read by radium-firstboot at first boot")
    _sub(product, OVF, "Product", "Radium appliance")
    _sub(product, OVF, "Vendor", "Radium")
    _sub(product, OVF, "Version", version.split("+")[0])
    _sub(product, OVF, "FullVersion", version)
    for category in dict.fromkeys(spec.category for spec in PROPERTIES):  # in first-seen order
        _sub(product, OVF, "Category", category)
        for spec in (p for p in PROPERTIES if p.category == category):
            _property(product, spec)
    os_section = _sub(vs, OVF, "OperatingSystemSection", **{_q(OVF, "id"): "96", _q(VMW, "osType"): os_type})
    _sub(os_section, OVF, "Info", "The guest operating system")
    _sub(os_section, OVF, "Description", "Debian GNU/Linux 12 (64-bit)")

    hw = _sub(vs, OVF, "VirtualHardwareSection", **{_q(OVF, "transport"): f"{TRANSPORT} {ISO_TRANSPORT}"})
    _sub(hw, OVF, "Info", "Virtual hardware")
    system = _sub(hw, OVF, "System")
    for tag, text in (
        ("ElementName", "Virtual Hardware Family"),
        ("InstanceID", "0"),
        ("VirtualSystemIdentifier", name),
        ("VirtualSystemType", hardware_version),
    ):
        _sub(system, VSSD, tag, text)
    _item(
        hw,
        {
            "AllocationUnits": "hertz * 10^6",
            "Description": "Number of virtual CPUs",
            "ElementName": f"{cpus} virtual CPU(s)",
            "InstanceID": "1",
            "ResourceType": str(CPU),
            "VirtualQuantity": str(cpus),
        },
    )
    _item(
        hw,
        {
            "AllocationUnits": "byte * 2^20",
            "Description": "Memory size",
            "ElementName": f"{memory_mib} MB of memory",
            "InstanceID": "2",
            "ResourceType": str(MEMORY),
            "VirtualQuantity": str(memory_mib),
        },
    )
    _item(
        hw,
        {
            "Address": "0",
            "Description": "SCSI controller",
            "ElementName": "SCSI controller 0",
            "InstanceID": "3",
            "ResourceSubType": "VirtualSCSI",
            "ResourceType": str(SCSI),
        },
    )
    _item(
        hw,
        {
            "AddressOnParent": "0",
            "ElementName": "Hard disk 1",
            "HostResource": f"ovf:/disk/{DISK_ID}",
            "InstanceID": "4",
            "Parent": "3",
            "ResourceType": str(DISK),
        },
    )
    _item(
        hw,
        {
            "AddressOnParent": "7",
            "AutomaticAllocation": "true",
            "Connection": network,
            "Description": "VmxNet3 ethernet adapter",
            "ElementName": "Network adapter 1",
            "InstanceID": "5",
            "ResourceSubType": "VmxNet3",
            "ResourceType": str(NIC),
        },
    )
    for key, value in VM_CONFIG.items():
        _sub(
            hw, VMW, "Config", **{_q(OVF, "required"): "false", _q(VMW, "key"): key, _q(VMW, "value"): value}
        )

    ET.indent(env)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env, encoding="unicode") + "\n"


# --- checking -------------------------------------------------------------------------


def validate(descriptor_xml: str | bytes) -> list[str]:
    """What is wrong with a descriptor, as sentences; empty when it is fit to deploy.

    Checks: well-formed XML; an OVF Envelope (OVF 2.0, or 1.x); one VirtualSystem;
    virtual hardware with CPUs, memory, a NIC and a disk whose reference leads to a
    file of the package; the com.vmware.guestInfo transport; a ProductSection that
    declares every required property of the first-boot contract, secret ones as
    passwords; file names that stay inside the package.
    """
    try:
        root = ET.fromstring(descriptor_xml)
    except ET.ParseError as exc:
        return [f"not well-formed XML: {exc}"]
    ns = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
    if ns not in (OVF, OVF1) or root.tag != _q(ns, "Envelope"):
        return [f"not an OVF descriptor: the root element is {root.tag!r}, expected {{{OVF}}}Envelope"]

    problems: list[str] = []

    def attr(el: ET.Element, name: str) -> str | None:
        return el.get(_q(ns, name))

    files: dict[str, ET.Element] = {}
    for f in root.findall(f"{{{ns}}}References/{{{ns}}}File"):
        fid, href = attr(f, "id"), attr(f, "href")
        if not fid or not href:
            problems.append("References: a File without ovf:id or ovf:href")
            continue
        if "/" in href or "\\" in href or href in (".", "..") or href.startswith("."):
            problems.append(f"References: file {href!r} is not a plain file name inside the package")
        files[fid] = f
    disks: dict[str, ET.Element] = {}
    for d in root.findall(f"{{{ns}}}DiskSection/{{{ns}}}Disk"):
        did = attr(d, "diskId")
        if not did:
            problems.append("DiskSection: a Disk without ovf:diskId")
            continue
        disks[did] = d
        ref = attr(d, "fileRef")
        if ref is not None and ref not in files:
            problems.append(f"DiskSection: disk {did!r} refers to file {ref!r}, which References lacks")
        if not (attr(d, "capacity") or "").isdigit():
            problems.append(f"DiskSection: disk {did!r} has no numeric ovf:capacity")

    if root.find(f"{{{ns}}}VirtualSystemCollection") is not None:
        problems.append("a VirtualSystemCollection: the appliance must be a single VirtualSystem")
    systems = root.findall(f"{{{ns}}}VirtualSystem")
    if len(systems) != 1:
        problems.append(f"expected one VirtualSystem, found {len(systems)}")
        return problems
    vs = systems[0]

    hw = vs.find(f"{{{ns}}}VirtualHardwareSection")
    if hw is None:
        problems.append("VirtualSystem: no VirtualHardwareSection")
    else:
        transports = (attr(hw, "transport") or "").split()
        if TRANSPORT not in transports:
            problems.append(
                f"VirtualHardwareSection: ovf:transport must include {TRANSPORT!r} (the first boot reads "
                f"its properties from guestinfo.ovfEnv), found {' '.join(transports) or 'none'}"
            )
        items: dict[int, list[ET.Element]] = {}
        for item in hw.findall(f"{{{ns}}}Item") + hw.findall(f"{{{ns}}}StorageItem"):
            # Item holds rasd:ResourceType, an OVF 2.0 StorageItem sasd:ResourceType.
            kind = next((el.text for el in item if _local(el.tag) == "ResourceType"), None)
            if kind and kind.strip().isdigit():
                items.setdefault(int(kind), []).append(item)
        for rtype, what in ((CPU, "virtual CPUs"), (MEMORY, "memory")):
            found = items.get(rtype, [])
            quantity = found[0].findtext(_q(RASD, "VirtualQuantity")) if found else None
            if not found:
                problems.append(f"VirtualHardwareSection: no {what} (an Item of ResourceType {rtype})")
            elif not (quantity or "").strip().isdigit() or int(quantity or 0) < 1:
                problems.append(
                    f"VirtualHardwareSection: {what}: VirtualQuantity {quantity!r} is not a count"
                )
        if not items.get(NIC):
            problems.append("VirtualHardwareSection: no network adapter (an Item of ResourceType 10)")
        if not items.get(DISK):
            problems.append("VirtualHardwareSection: no disk (an Item of ResourceType 17)")
        for item in items.get(DISK, []):
            host = "".join(el.text or "" for el in item if el.tag.endswith("}HostResource")).strip()
            did = host.rsplit("/", 1)[-1]
            if not host.startswith(("ovf:/disk/", "/disk/")) or did not in disks:
                problems.append(
                    f"VirtualHardwareSection: disk item refers to {host!r}, which DiskSection lacks"
                )
            elif attr(disks[did], "fileRef") is None:
                problems.append(f"DiskSection: disk {did!r} has no ovf:fileRef: the package carries no image")

    products = vs.findall(f"{{{ns}}}ProductSection")
    declared: dict[str, ET.Element] = {}
    for product in products:
        cls = attr(product, "class")
        for prop in product.findall(f"{{{ns}}}Property"):
            key = attr(prop, "key") or ""
            full = f"{cls}.{key}" if cls else key
            if full in declared:
                problems.append(f"ProductSection: property {full!r} is declared twice")
            declared[full] = prop
    if not products:
        problems.append("VirtualSystem: no ProductSection, so no properties for the first boot")
    missing = [k for k in REQUIRED if k not in declared]
    if missing:
        problems.append(f"ProductSection: required properties missing: {', '.join(missing)}")
    for key, prop in declared.items():
        spec = BY_KEY.get(key)
        if spec is None:
            continue
        if attr(prop, "type") != spec.type:
            problems.append(
                f"ProductSection: property {key!r} has type {attr(prop, 'type')!r}, expected {spec.type!r}"
            )
        if key in SECRET and (attr(prop, "password") or "").lower() != "true":
            problems.append(
                f'ProductSection: property {key!r} holds a secret and must be ovf:password="true"'
            )
        if (attr(prop, "userConfigurable") or "").lower() != "true":
            problems.append(f'ProductSection: property {key!r} must be ovf:userConfigurable="true"')
    return problems


def _manifest(names_and_data: Mapping[str, bytes]) -> str:
    return "".join(f"SHA256({n})= {hashlib.sha256(d).hexdigest()}\n" for n, d in names_and_data.items())


def _parse_manifest(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*", line)
        if m:
            out[m.group(2)] = (m.group(1), m.group(3).lower())
    return out


def _check_package(descriptor_name: str, read) -> list[str]:  # type: ignore[no-untyped-def]
    """Descriptor, referenced files and manifest of a package, through `read(name) -> bytes | None`."""
    text = read(descriptor_name)
    if text is None:
        return [f"{descriptor_name}: missing"]
    problems = [f"{descriptor_name}: {p}" for p in validate(text)]
    if problems:
        return problems
    root = ET.fromstring(text)
    ns = root.tag[1:].partition("}")[0]
    contents = {descriptor_name: text}
    for f in root.findall(f"{{{ns}}}References/{{{ns}}}File"):
        href, size = f.get(_q(ns, "href")) or "", f.get(_q(ns, "size"))
        data = read(href)
        if data is None:
            problems.append(f"{href}: referenced by the descriptor but not in the package")
            continue
        contents[href] = data
        if size is not None and size.isdigit() and int(size) != len(data):
            problems.append(f"{href}: {len(data)} bytes, the descriptor says {size}")
    mf_name = descriptor_name[: -len(".ovf")] + ".mf"
    mf = read(mf_name)
    if mf is None:
        return problems
    entries = _parse_manifest(mf.decode(errors="replace"))
    for name, data in contents.items():
        if name not in entries:
            problems.append(f"{mf_name}: no digest for {name}")
            continue
        algo, digest = entries[name]
        if hashlib.new(algo.lower(), data).hexdigest() != digest:
            problems.append(f"{name}: its {algo} digest does not match {mf_name}")
    return problems


def validate_package(path: Path) -> list[str]:
    """What is wrong with an OVF package: a .ova, a .ovf (files beside it), or a folder with one .ovf."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.ovf"))
        if len(found) != 1:
            return [f"{path}: expected one .ovf descriptor in the folder, found {len(found)}"]
        path = found[0]
    if not path.exists():
        return [f"{path}: no such file"]
    if path.suffix.lower() == ".ova":
        try:
            with tarfile.open(path, "r:") as tar:
                members = tar.getmembers()
                if not members or not members[0].name.endswith(".ovf"):
                    return [f"{path}: the first file of an OVA must be its .ovf descriptor"]
                by_name = {}
                for m in members:
                    if "/" in m.name or m.name.startswith(".") or not m.isfile():
                        return [f"{path}: {m.name!r} is not a plain file at the top of the archive"]
                    by_name[m.name] = m

                def read(name: str) -> bytes | None:
                    m = by_name.get(name)
                    f = tar.extractfile(m) if m else None
                    return f.read() if f else None

                return [f"{path}: {p}" for p in _check_package(members[0].name, read)]
        except tarfile.TarError as exc:
            return [f"{path}: not a valid OVA (tar) file: {exc}"]
    folder = path.parent

    def read_file(name: str) -> bytes | None:
        target = folder / name
        return target.read_bytes() if target.is_file() else None

    return [f"{folder}/{p}" for p in _check_package(path.name, read_file)]


# --- packages --------------------------------------------------------------------------


def write_ovf(folder: Path, name: str = "radium-appliance", *, disk: Path | None = None, **options) -> Path:  # type: ignore[no-untyped-def]
    """Write an OVF package into `folder`: NAME.ovf, NAME.mf (SHA256) and the disk.

    `disk` is a built stream-optimized VMDK (see the README: how the image is
    built); without it, an empty placeholder disk of `disk_gib` is written, which
    makes a package that deploys but does not boot.  Returns the .ovf's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    disk_file = options.pop("disk_file", None) or default_disk_file(name)
    target = folder / disk_file
    if disk is not None:
        if Path(disk).resolve() != target.resolve():
            shutil.copyfile(disk, target)
    else:
        vmdk.write_empty_disk(target, options.get("disk_gib", 32) << 30)
    text = descriptor(name, disk_file=disk_file, disk_file_size=target.stat().st_size, **options).encode()
    ovf_path = folder / f"{name}.ovf"
    ovf_path.write_bytes(text)
    with open(target, "rb") as f:  # a built disk is hundreds of MB: hashed as it is read
        disk_hash = hashlib.file_digest(f, "sha256").hexdigest()
    manifest = _manifest({ovf_path.name: text}) + f"SHA256({disk_file})= {disk_hash}\n"
    (folder / f"{name}.mf").write_text(manifest)
    return ovf_path


def write_ova(path: Path, name: str | None = None, *, disk: Path | None = None, **options) -> Path:  # type: ignore[no-untyped-def]
    """Write a single-file OVA (a tar: the .ovf first, then the .mf, then the disk)."""
    path = Path(path)
    name = name or path.stem
    with tempfile.TemporaryDirectory(prefix=".ova-", dir=path.parent) as tmp:
        ovf_path = write_ovf(Path(tmp), name, disk=disk, **options)
        disk_file = options.get("disk_file") or default_disk_file(name)
        partial = path.with_name(f".{path.name}.partial")
        with tarfile.open(partial, "w:", format=tarfile.USTAR_FORMAT) as tar:
            for member in (ovf_path.name, f"{name}.mf", disk_file):
                src = Path(tmp) / member
                info = tar.gettarinfo(str(src), arcname=member)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o644
                with open(src, "rb") as f:
                    tar.addfile(info, f)
        os.replace(partial, path)
    return path


def read_descriptor(path: Path) -> str:
    """The descriptor text of a .ova, a .ovf, or a package folder."""
    path = Path(path)
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.ovf"))), path / "missing.ovf")
    if path.suffix.lower() == ".ova":
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            f = tar.extractfile(first) if first else None
            if f is None:
                raise ValueError(f"{path}: empty archive")
            return f.read().decode()
    return path.read_text()


# --- the OVF environment ----------------------------------------------------------------


def environment(values: Mapping[str, str], *, vm_id: str = "vm-1", esx_id: str = "host-1") -> str:
    """An OVF environment document as vSphere writes it into guestinfo.ovfEnv."""
    root = ET.Element(
        _q(OE, "Environment"), {_q(OE, "id"): "", _q(VE, "esxId"): esx_id, _q(VE, "vCenterId"): vm_id}
    )
    platform = ET.SubElement(root, _q(OE, "PlatformSection"))
    for tag, text in (
        ("Kind", "VMware ESXi"),
        ("Version", "7.0.3"),
        ("Vendor", "VMware, Inc."),
        ("Locale", "en"),
    ):
        ET.SubElement(platform, _q(OE, tag)).text = text
    props = ET.SubElement(root, _q(OE, "PropertySection"))
    for key, value in values.items():
        ET.SubElement(props, _q(OE, "Property"), {_q(OE, "key"): key, _q(OE, "value"): value})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def environment_values(document: str | bytes) -> dict[str, str]:
    """The property values of an OVF environment document (whatever namespace prefixes its writer chose)."""
    root = ET.fromstring(document)
    if _local(root.tag) != "Environment":
        raise ValueError(f"not an OVF environment: the root element is {root.tag!r}")
    values: dict[str, str] = {}
    for section in root:
        if _local(section.tag) != "PropertySection":
            continue  # properties of other entities (a vApp's children) sit in <Entity> elements
        for prop in section:
            if _local(prop.tag) == "Property":
                attrs = {_local(k): v for k, v in prop.attrib.items()}
                if "key" in attrs:
                    values[attrs["key"]] = attrs.get("value", "")
    return values


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


# --- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radium.appliance.ovf", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("descriptor", "package"):
        p = sub.add_parser(cmd)
        if cmd == "package":
            p.add_argument("out", type=Path, help="NAME.ova, or a folder for NAME.ovf + .mf + disk")
            p.add_argument(
                "--disk", type=Path, help="the built stream-optimized VMDK (default: empty placeholder)"
            )
        p.add_argument("--name", default=None, help="the VirtualSystem's name (default radium-appliance)")
        p.add_argument("--cpus", type=int, default=4)
        p.add_argument("--memory-mib", type=int, default=16384)
        p.add_argument("--disk-gib", type=int, default=32)
        p.add_argument("--hardware-version", default="vmx-17")
    v = sub.add_parser("validate")
    v.add_argument("path", type=Path, help="a .ova, a .ovf with its files beside it, or a package folder")
    v.add_argument("--descriptor-only", action="store_true", help="check the descriptor, not the files")
    args = parser.parse_args(argv)

    if args.command == "validate":
        if args.descriptor_only:
            problems = [f"{args.path}: {p}" for p in validate(read_descriptor(args.path))]
        else:
            problems = validate_package(args.path)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{args.path}: valid")
        return 1 if problems else 0
    options = dict(
        cpus=args.cpus,
        memory_mib=args.memory_mib,
        disk_gib=args.disk_gib,
        hardware_version=args.hardware_version,
    )
    if args.command == "descriptor":
        sys.stdout.write(descriptor(args.name or "radium-appliance", **options))
        return 0
    if args.out.suffix.lower() == ".ova":
        out = write_ova(args.out, args.name or args.out.stem, disk=args.disk, **options)
    else:
        out = write_ovf(args.out, args.name or "radium-appliance", disk=args.disk, **options)
    problems = validate_package(out)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
