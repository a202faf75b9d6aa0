"""The package a deploy imports: an OVA, or an OVF with its files, checked before anything is made."""

from __future__ import annotations

import contextlib
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from radium import appliance

from .errors import Refused

__all__ = ["OvfPackage"]


class OvfPackage:
    """A checked OVF package: its descriptor, its networks, and each file it references (size, bytes).

    Refused, naming every problem (`radium.appliance.validate_package`: descriptor,
    referenced files and sizes, manifest digests), when it is not fit to deploy.
    """

    def __init__(self, path: Path) -> None:
        problems = appliance.validate_package(path)
        if problems:
            lines = "\n  ".join(problems)
            raise Refused(
                f"the OVF package {path} is not fit to deploy ({len(problems)} problem"
                f"{'s' if len(problems) > 1 else ''}); nothing was created in vCenter:\n  {lines}",
                problems=problems,
            )
        self.path = Path(path)
        self.descriptor = appliance.read_descriptor(self.path)
        self.networks = _networks(self.descriptor)
        self._tar: dict[str, tuple[int, int]] = {}
        if self.path.suffix.lower() == ".ova" and self.path.is_file():
            with tarfile.open(self.path, "r:") as tar:
                for m in tar.getmembers():
                    self._tar[m.name] = (m.offset_data, m.size)
            self.folder = self.path.parent
        else:
            ovf_path = next(iter(sorted(self.path.glob("*.ovf")))) if self.path.is_dir() else self.path
            self.folder = ovf_path.parent

    def size(self, name: str) -> int:
        if self._tar:
            return self._tar[name][1]
        return (self.folder / name).stat().st_size

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[BinaryIO, int]]:
        """The file's bytes as a stream positioned at its start, and its size."""
        if self._tar:
            offset, size = self._tar[name]
            with open(self.path, "rb") as f:
                f.seek(offset)
                yield f, size
        else:
            path = self.folder / name
            with open(path, "rb") as f:
                yield f, path.stat().st_size


def _networks(descriptor: str) -> list[str]:
    """The network names of the descriptor's NetworkSection (what networkMapping maps)."""
    names = []
    for section in ET.fromstring(descriptor):
        if section.tag.rpartition("}")[2] != "NetworkSection":
            continue
        for el in section:
            if el.tag.rpartition("}")[2] == "Network":
                name = next((v for k, v in el.attrib.items() if k.rpartition("}")[2] == "name"), "")
                if name:
                    names.append(name)
    return names
