"""`radium-firstboot`: make this VM an appliance from the properties vSphere gave it.

Run by `radium-firstboot.service` at every boot, before the network and radiumd
start.  The first time (no stamp file) it reads the appliance's properties (see
`properties.py` for the contract) and writes, under `--root` (default /):

    etc/radium/radiumd.toml           radiumd's configuration (validated by loading it like radiumd does)
    var/lib/radium/server.key         the server's public key (0644) ...
    var/lib/radium/server.key_secret  ... and its key pair (0600), from radium.server_secret_key
    etc/radium/admins.d/NAME.key      the operator's public key
    etc/radium/clients.d/             (created empty: enrolled clients go here)
    etc/systemd/network/10-radium.network   DHCP, or the static address, gateway and DNS
    etc/hostname, etc/hosts           the appliance's name as host name (when it is a valid one)
    etc/subuid, etc/subgid            root's delegated ids for `radium run` (added when missing)
    root/.ssh/authorized_keys         radium.ssh_authorized_keys (added to what is there)
    etc/issue.d/radium.issue          the console login banner: name, port, server public key
    etc/radium/firstboot.done         the stamp: later boots do not reconfigure (--force does)

Running it again with the same properties changes nothing.  Every boot, it also
blanks the server's secret key in the guest variables it came from
(guestinfo.ovfEnv, guestinfo.radium.server_secret_key) so that processes on the
appliance cannot read it back from the hypervisor; vSphere hands the VM its
properties again at each power-on, hence every boot.

Where the properties come from: `--ovf-env FILE` (an OVF environment document);
else the ISO transport, a CD-ROM labelled "OVF ENV" with `ovf-env.xml` (ejected
after reading, at every boot: it holds the secret key); else the hypervisor
through open-vm-tools' `vmware-rpctool`: the document in `guestinfo.ovfEnv`,
overridden property by property by `guestinfo.radium.*` variables that are set.
The secret key is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq.auth

from radium.remoting import (
    ConfigError,
    DaemonConfig,
    KeyDirectory,
    KeyPair,
    RadiumError,
    convert,
    dump_toml,
    load_daemon_config,
    save_keypair,
    undriven_gpus,
    write_atomic,
)

from . import ovf
from .properties import BY_KEY, GUESTINFO_PREFIX, Settings, parse, unknown

CONFIG = Path("etc/radium/radiumd.toml")
STAMP = Path("etc/radium/firstboot.done")
NETWORK_FILE = Path("etc/systemd/network/10-radium.network")
ISSUE_FILE = Path("etc/issue.d/radium.issue")
MARK = "# radium-firstboot"
SECRET_KEY = "radium.server_secret_key"


class NoEnvironment(ConfigError):
    """Neither an OVF environment nor guestinfo.radium.* variables could be read."""


# --- where the properties come from ----------------------------------------------------------


@dataclass
class Source:
    values: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        return self.origins.get(key, "not set")


class RpcTool:
    """open-vm-tools' vmware-rpctool: guest variables, through the hypervisor."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, key: str) -> str | None:
        try:
            out = subprocess.run([self.path, f"info-get {key}"], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None  # "No value found", or not running on VMware
        return out.stdout.removesuffix("\n")

    def set(self, key: str, value: str) -> bool:
        try:
            out = subprocess.run(
                [self.path, f"info-set {key} {value}"], capture_output=True, text=True, timeout=15
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0


def from_file(path: Path) -> Source:
    try:
        document = Path(path).read_bytes()
    except OSError as exc:
        raise NoEnvironment(f"{path}: cannot read the OVF environment: {exc.strerror or exc}") from None
    try:
        values = ovf.environment_values(document)
    except (ET.ParseError, ValueError) as exc:
        raise NoEnvironment(f"{path}: not an OVF environment document: {exc}") from None
    return Source(values, {k: f"OVF environment {path}" for k in values})


def from_hypervisor(tool: RpcTool) -> Source:
    source = Source()
    document = tool.get("guestinfo.ovfEnv")
    if document and document.strip():
        try:
            source.values = ovf.environment_values(document)
        except (ET.ParseError, ValueError) as exc:
            raise NoEnvironment(f"guestinfo.ovfEnv: not an OVF environment document: {exc}") from None
        source.origins = {k: "guestinfo.ovfEnv" for k in source.values}
    for spec in BY_KEY.values():
        value = tool.get(spec.guestinfo)
        if value:
            source.values[spec.key] = value
            source.origins[spec.key] = spec.guestinfo
    if not source.values:
        raise NoEnvironment(
            "no properties: guestinfo.ovfEnv is empty and no guestinfo.radium.* variable is set. Was this VM "
            "deployed from the Radium OVF (vApp options on, OVF environment transport 'VMware Tools'), or "
            "given guestinfo.radium.* variables? Give --ovf-env FILE to configure it by hand."
        )
    return source


ISO_LABEL = "OVF ENV"  #: vSphere's ISO transport: a CD-ROM with this label, ovf-env.xml at its root
ISO_FILE = "ovf-env.xml"


def find_iso(device: str | None = None) -> str | None:
    """The CD-ROM of the ISO transport (its device), if one is inserted.

    The first boot runs early: the CD-ROM's driver may still be loading, so it is asked for,
    and each CD-ROM is probed directly rather than through udev's links.
    """
    if device:
        return device if Path(device).exists() else None
    link = Path("/dev/disk/by-label/OVF\\x20ENV")  # udev's name for the label, space escaped
    if link.exists():
        return str(link.resolve())
    if not list(Path("/dev").glob("sr[0-9]*")) and Path("/sys/bus/scsi").exists():
        for argv in (["modprobe", "-q", "sr_mod"], ["udevadm", "settle", "--timeout=15"]):
            try:
                subprocess.run(argv, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
    for cdrom in sorted(Path("/dev").glob("sr[0-9]*")):
        try:
            probe = ["blkid", "-p", "-s", "LABEL", "-o", "value", str(cdrom)]
            out = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.stdout.strip() == ISO_LABEL:
            return str(cdrom)
    return None


def from_iso(device: str) -> Source:
    """The properties of the OVF environment on the ISO transport's CD-ROM (mounted read-only)."""
    with tempfile.TemporaryDirectory(prefix="radium-ovf-env-") as where:
        mount = subprocess.run(["mount", "-o", "ro", "-t", "iso9660", device, where], capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        if mount.returncode != 0:
            raise NoEnvironment(
                f"{device}: cannot mount the OVF environment's CD-ROM: {mount.stderr.strip()}"
            )
        try:
            found = [p for p in Path(where).iterdir() if p.name.lower() in (ISO_FILE, "ovf-env.xml;1")]
            if not found:
                raise NoEnvironment(f"{device}: the CD-ROM labelled {ISO_LABEL!r} has no {ISO_FILE}")
            source = from_file(found[0])
        finally:
            subprocess.run(["umount", where], capture_output=True, timeout=60)
    origin = f"OVF environment on {device} (ISO transport)"
    return Source(source.values, {k: origin for k in source.values})


def eject(device: str) -> bool:
    """Eject the CD-ROM (best effort); whether it is out.

    Linux closes an open tray when the drive is next opened (`dev.cdrom.autoclose`), which would
    load the disc again for whoever reads the device: that is turned off first.
    """
    try:
        Path("/proc/sys/dev/cdrom/autoclose").write_text("0\n")
    except OSError:
        pass  # no cdrom driver loaded (a file given as --iso-device), or not permitted
    try:
        return subprocess.run(["eject", device], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def on_vmware() -> bool:
    """Whether this machine is a VMware VM (guestinfo exists only there)."""
    try:
        return "VMware" in Path("/sys/class/dmi/id/sys_vendor").read_text()
    except OSError:
        return False


def scrub(tool: RpcTool) -> list[str]:
    """Blank the server's secret key in the guest variables; what was blanked (best effort)."""
    done = []
    document = tool.get("guestinfo.ovfEnv")
    if document and SECRET_KEY in document:
        try:
            root = ET.fromstring(document)
        except ET.ParseError:
            root = None
        changed = False
        for el in root.iter() if root is not None else ():
            names = {name.rpartition("}")[2]: name for name in el.attrib}  # oe:key, oe:value
            if el.get(names.get("key", "")) == SECRET_KEY and el.get(names.get("value", "")):
                el.set(names["value"], "")
                changed = True
        if changed and tool.set("guestinfo.ovfEnv", ET.tostring(root, encoding="unicode")):  # type: ignore[arg-type]
            done.append("guestinfo.ovfEnv")
    secret_var = GUESTINFO_PREFIX + SECRET_KEY
    if tool.get(secret_var) and tool.set(secret_var, ""):
        done.append(secret_var)
    return done


# --- writing -------------------------------------------------------------------------------


class Writer:
    """Writes files under a root, atomically, only when their content or mode changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.changed: list[str] = []

    def path(self, appliance_path: str | Path) -> Path:
        """Where a path of the appliance (absolute, or relative to /etc/radium) lies under the root."""
        p = Path(appliance_path)
        if not p.is_absolute():
            p = Path("/etc/radium") / p
        return self.root / p.relative_to("/")

    def write(self, rel: Path, data: str, mode: int = 0o644) -> bool:
        target = self.root / rel
        try:
            same = target.read_text() == data and (target.stat().st_mode & 0o7777) == mode
        except (OSError, UnicodeDecodeError):
            same = False
        if same:
            return False
        write_atomic(target, data, mode=mode)
        self.changed.append("/" + str(rel))
        return True

    def mkdir(self, rel: Path, mode: int) -> None:
        target = self.root / rel
        if not target.is_dir():
            target.mkdir(parents=True, mode=mode)
        elif (target.stat().st_mode & 0o7777) == mode:
            return
        os.chmod(target, mode)  # mkdir's mode is cut by the umask
        self.changed.append(f"/{rel}/")


def existing_config(path: Path) -> DaemonConfig:
    """radiumd's configuration already at `path`, or the defaults when there is none."""
    data = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"{path}: the existing configuration cannot be read ({exc}); move it away"
            ) from None
    return convert(data, DaemonConfig, str(path))


def daemon_config(settings: Settings, existing: Path) -> DaemonConfig:
    """radiumd's configuration: the one already there (if any), with what the properties decide."""
    config = existing_config(existing)
    config.server.name = settings.name
    config.server.listen = f"tcp://0.0.0.0:{settings.listen_port}"
    config.metrics.enabled = settings.metrics_listen is not None
    if settings.metrics_listen is not None:
        config.metrics.listen = settings.metrics_listen
    return config


def network_file(settings: Settings) -> str:
    net = settings.network
    lines = [
        f"{MARK}: from the appliance's radium.network.* properties; rewritten when they change.",
        "[Match]",
        "Type=ether",
        "Name=en* eth*",
        "",
        "[Network]",
    ]
    if net.dhcp:
        lines.append("DHCP=yes")
    else:
        assert net.address is not None
        lines.append(f"Address={net.address.with_prefixlen}")
        if net.gateway is not None:
            lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={server}" for server in net.dns]
    return "\n".join(lines) + "\n"


def _delegated(text: str, user: str, start: int, end: int) -> bool:
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
            if int(parts[1]) <= start and int(parts[1]) + int(parts[2]) >= end:
                return True
    return False


def _managed_lines(text: str, ours: list[str], replaces: str | None = None) -> str:
    """`text` without the lines we wrote before (or starting with `replaces`), plus `ours`, marked."""
    kept = [
        line
        for line in text.splitlines()
        if not line.rstrip().endswith(MARK) and not (replaces and line.startswith(replaces))
    ]
    return "\n".join(kept + [f"{line} {MARK}" for line in ours]) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def apply_radiumd(settings: Settings, w: Writer) -> DaemonConfig:
    """radiumd's part of the appliance under `w`'s root: its configuration, the server's key pair,
    the operator's key, the clients' folder and root's delegated ids.  What a VM's first boot and
    a plain Linux host's setup (`host.py`) share."""
    root = w.root
    config_path = root / CONFIG
    config = daemon_config(settings, config_path)

    # radiumd's configuration: written beside, loaded exactly as radiumd loads it, then put in place.
    text = dump_toml(config)
    if _read(config_path) != text:
        candidate = config_path.with_name(".radiumd.toml.firstboot")
        write_atomic(candidate, text, mode=0o644)
        try:
            load_daemon_config(candidate)
        except ConfigError as exc:
            candidate.unlink()
            raise ConfigError(f"the configuration made from the properties is invalid: {exc}") from None
        os.replace(candidate, config_path)
        w.changed.append("/" + str(CONFIG))
    elif (config_path.stat().st_mode & 0o777) != 0o644:
        os.chmod(config_path, 0o644)

    # The server's key pair, in radiumd's state folder (where load_or_create_server_keys looks).
    state = w.path(config.server.state_dir)
    # 0711, as radiumd keeps it (daemon/privileges.py): its user reaches the store, a run its folder.
    w.mkdir(state.relative_to(root), 0o711)
    pair = KeyPair(settings.server_public_key, settings.server_secret_key)
    key_file = state / "server.key"
    if (
        _keypair(Path(str(key_file) + "_secret")) != (pair.public, pair.secret)
        or _keypair(key_file)[0] != pair.public
    ):
        save_keypair(key_file, settings.name, pair)
        w.changed += [f"/{key_file.relative_to(root)}", f"/{key_file.relative_to(root)}_secret"]

    # Authorised keys: the operator's; the clients' folder starts empty.
    admins = w.path(config.server.admins_dir)
    clients = w.path(config.server.clients_dir)
    w.mkdir(admins.relative_to(root), 0o755)
    w.mkdir(clients.relative_to(root), 0o755)
    directory = KeyDirectory(admins, "admin")
    if directory.names().get(settings.admin_name) != settings.admin_public_key:
        directory.add(settings.admin_name, settings.admin_public_key)
        w.changed.append(f"/{(admins / settings.admin_name).relative_to(root)}.key")

    # Ids for carried processes: root must own id_base .. id_base + id_slots*65536 - 1.
    start = config.run.id_base
    end = start + config.run.id_slots * 65536
    for rel in (Path("etc/subuid"), Path("etc/subgid")):
        current = _read(root / rel)
        if not _delegated(current, "root", start, end):
            w.write(
                rel,
                current
                + ("" if not current or current.endswith("\n") else "\n")
                + f"root:{start}:{end - start}\n",
            )
    return config


def apply(settings: Settings, root: Path) -> list[str]:
    """Write the appliance's configuration under `root`; the files that changed."""
    w = Writer(root)
    apply_radiumd(settings, w)
    w.write(NETWORK_FILE, network_file(settings))

    hostname = settings.hostname
    if hostname:
        w.write(Path("etc/hostname"), hostname + "\n")
        hosts = _read(root / "etc/hosts") or "127.0.0.1\tlocalhost\n"
        short = hostname.split(".")[0]
        line = f"127.0.1.1\t{hostname}" + (f" {short}" if short != hostname else "")
        w.write(Path("etc/hosts"), _managed_lines(hosts, [line], replaces="127.0.1.1"))

    if settings.ssh_authorized_keys:
        w.mkdir(Path("root/.ssh"), 0o700)
        rel = Path("root/.ssh/authorized_keys")
        current = _read(root / rel)
        have = {line.strip() for line in current.splitlines()}
        missing = [k for k in settings.ssh_authorized_keys if k not in have]
        if missing or (root / rel).exists() and (root / rel).stat().st_mode & 0o077:
            w.write(
                rel,
                current
                + ("" if not current or current.endswith("\n") else "\n")
                + "".join(k + "\n" for k in missing),
                0o600,
            )

    w.write(
        ISSUE_FILE,
        f"Radium appliance {settings.name}: radiumd on port {settings.listen_port}, address \\4\n"
        f"Server public key: {settings.server_public_key}\n\n",
    )
    return w.changed


def _keypair(path: Path) -> tuple[str | None, str | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError):
        return None, None
    return public.decode(), secret.decode() if secret else None


def set_live_hostname(hostname: str | None) -> None:
    if not hostname:
        return
    try:
        if socket.gethostname() != hostname:
            socket.sethostname(hostname)
    except OSError:
        pass  # not permitted here (a container, a test): /etc/hostname is written, next boot has it


# --- the command ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="radium-firstboot",
        description="Configure this VM as a Radium appliance from its OVF environment or guestinfo.",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="write under this folder (default /)")
    parser.add_argument("--ovf-env", type=Path, help="read the properties from this OVF environment document")
    parser.add_argument("--rpctool", default=None, help="open-vm-tools' vmware-rpctool (default: from PATH)")
    parser.add_argument(
        "--iso-device", default=None, help="the ISO transport's CD-ROM (default: the one labelled 'OVF ENV')"
    )
    parser.add_argument("--force", action="store_true", help="configure even if the stamp says it was done")
    parser.add_argument("--no-scrub", action="store_true", help="leave the secret key in the guest variables")
    args = parser.parse_args(argv)
    return guarded("radium-firstboot", lambda: run(args))


def guarded(prog: str, body: Callable[[], int]) -> int:
    """`body()`'s exit status; a Radium error or a file system one said in a line, never a traceback."""
    try:
        return body()
    except RadiumError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a read-only or full disk, a file in the way
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    stamp = root / STAMP
    tool = None
    cdrom = None
    if args.ovf_env is None:
        cdrom = find_iso(args.iso_device)
        path = args.rpctool or shutil.which("vmware-rpctool")
        if path and (cdrom is None or on_vmware()):
            tool = RpcTool(path)
        elif cdrom is None:
            raise NoEnvironment(
                "no OVF environment: no CD-ROM labelled 'OVF ENV' (the ISO transport), and "
                "vmware-rpctool not found (Debian package open-vm-tools) to read guestinfo. "
                "Give --ovf-env FILE to configure from a file."
            )

    if stamp.exists() and not args.force:
        print(f"radium-firstboot: already configured ({stamp}); --force configures again")
    else:
        if args.ovf_env is not None:
            source = from_file(args.ovf_env)
        elif cdrom is not None:
            source = from_iso(cdrom)
        else:
            assert tool is not None
            source = from_hypervisor(tool)
        for key in unknown(source.values):
            print(
                f"radium-firstboot: warning: unknown property {key} ({source.origin(key)}) ignored",
                file=sys.stderr,
            )
        settings = parse(source.values, source.origin)
        changed = apply(settings, root)
        if changed or not stamp.exists():
            record = {
                "configured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "name": settings.name,
                "server_public_key": settings.server_public_key,
                "properties": {k: source.origin(k) for k in sorted(source.values) if k in BY_KEY},
            }
            write_atomic(stamp, json.dumps(record, indent=2) + "\n", mode=0o644)
        if root == Path("/"):
            set_live_hostname(settings.hostname)
        net = settings.network
        where = "DHCP" if net.dhcp else str(net.address)
        print(
            f"radium-firstboot: appliance {settings.name}: port {settings.listen_port}, network {where}, "
            f"server public key {settings.server_public_key}"
        )
        for path in changed:
            print(f"radium-firstboot: wrote {path}")
        if not changed:
            print("radium-firstboot: nothing to change")

    if root == Path("/"):
        # Every boot: a passed-through GPU with no driver is useless to radiumd; say so here too.
        for device in undriven_gpus():
            print(
                f"radium-firstboot: warning: {device.model} at {device.pci_address}: {device.health_detail}"
            )
    if tool is not None and not args.no_scrub:
        for var in scrub(tool):
            print(f"radium-firstboot: blanked the secret key in {var}")
    if cdrom is not None and not args.no_scrub:
        # The CD holds the secret key: out of reach of every process from now on (vSphere
        # inserts it again at the next power-on, hence every boot).
        if eject(cdrom):
            print(f"radium-firstboot: ejected the OVF environment's CD-ROM ({cdrom})")
        else:
            print(
                f"radium-firstboot: warning: could not eject {cdrom}; it holds the secret key",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
